"""An experiment spec's keys, and the ones that take several forms turned into :class:`~ablation.grid.spec.GridSpec`
fields (the first of the two parsing steps; :func:`ablation.config.from_dict` checks the fields' types next).

``datasets`` (names, folders or tables), ``connectors`` and ``subsets`` (a selection, or a table per connector),
``folds`` and ``num_folds``, ``replicates``, ``pack_size`` and a per-connector ``train.init_from`` table each
become the plain fields :class:`~ablation.grid.spec.GridSpec` holds. Unknown keys raise an AblationError listing
the valid ones. No torch import.
"""

from __future__ import annotations

from typing import Any

from ablation.config import CONNECTORS, INTERPOLATIONS, check_connector
from ablation.errors import AblationError
from ablation.skips import expand_subsets

SPEC_KEYS: dict[str, str] = {
    "name": "grid name (default: the spec file's stem)",
    "description": "free text, shown nowhere but kept for readers",
    "out": "results folder (default: results/<name>)",
    "datasets": "list of dataset names or folders, or tables {name = ..., data_root = ...}",
    "data_root": "where named datasets live (default: $ABLATION_DATA or ./data)",
    "connectors": f"list of connectors: {', '.join(CONNECTORS)} (default: ['unet'])",
    "subsets": "'all' (16), 'paper' (Fig. 3 settings), a list of skip subsets, or a table of those per "
    "connector (default: 'all')",
    "seeds": "list of seeds (default: [0])",
    "folds": "'official', an integer k for k-fold cross-validation, or a list of fold indices (default: official)",
    "num_folds": "k when folds is a list of indices (default: 5)",
    "interpolation": f"image resizing: {', '.join(INTERPOLATIONS)} (default: reference, as the reference code)",
    "repeats": "k-fold repeats (default: 1)",
    "replicates": "list of tables {seed = S, fold = F, repeat = R}, one per replicate, instead of crossing seeds, "
    "folds and repeats (fold: an index, or 'official' when absent; repeat: default 0)",
    "test_time_masks": "evaluate every all-skips model under all 16 runtime masks too (default: false)",
    "pack_size": "runs trained together in one model pass: 'auto' (as many as fit on a GPU, 1 on CPU) or an "
    "integer (default: 'auto')",
    "train": "table of TrainConfig overrides; train.init_from may be a table per connector",
    "model": "table of ModelConfig overrides (connector and skips come from the grid axes)",
}
# Spec keys that are GridSpec fields as they are; the others are normalised first.
_PLAIN_KEYS = ("description", "seeds", "repeats", "test_time_masks", "interpolation", "model")
DATASET_KEYS = ("name", "data_root")
REPLICATE_KEYS = ("seed", "fold", "repeat")
# Set by the grid's own axes; an override in [model]/[train] would be silently replaced, so it is refused.
AXIS_KEYS = {
    "model": {"connector": "connectors", "skips": "subsets"},
    "train": {"test_time_masks": "test_time_masks"},
}


def parse_pack_size(value: Any, where: str) -> int | None:
    """``"auto"`` -> None; a positive integer (or its text) -> itself; anything else is an error."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    try:
        size = int(value)
    except (TypeError, ValueError):
        size = 0
    if isinstance(value, bool) or size < 1 or (isinstance(value, float) and not value.is_integer()):
        raise AblationError(f"{where} must be 'auto' or a positive integer, got {value!r}")
    return size


def normalise(data: dict[str, Any], default_name: str) -> dict[str, Any]:
    """The spec's keys as :class:`~ablation.grid.spec.GridSpec` fields (types are checked afterwards by
    ``from_dict``)."""
    unknown = [key for key in data if key not in SPEC_KEYS]
    if unknown:
        raise AblationError(f"unknown key {unknown[0]!r}: valid keys are {', '.join(SPEC_KEYS)}")
    if "datasets" not in data:
        raise AblationError("missing key 'datasets' (a list of dataset names or folders)")
    for section, axes in AXIS_KEYS.items():
        table = data.get(section, {})
        for key, axis in axes.items():
            if isinstance(table, dict) and key in table:
                raise AblationError(f"'{section}.{key}' is set by the top-level key {axis!r}; use that")
    fields = {key: data[key] for key in _PLAIN_KEYS if key in data}
    fields["name"] = data.get("name", default_name)
    fields["out"] = data.get("out", f"results/{fields['name']}")
    fields["datasets"] = [_dataset_entry(item, data.get("data_root")) for item in _listed(data, "datasets")]
    fields["variants"] = _variants(data.get("connectors"), data.get("subsets", "all"))
    if "replicates" in data:
        crossed = [key for key in ("seeds", "folds", "repeats") if key in data]
        if crossed:
            raise AblationError(f"'replicates' replaces 'seeds', 'folds' and 'repeats': drop {crossed[0]!r}")
        fields["replicates"] = [_replicate(item) for item in _listed(data, "replicates")]
        fields["num_folds"] = data.get("num_folds", 5)
    else:
        fields["folds"], fields["num_folds"] = _folds(data.get("folds", "official"), data.get("num_folds"))
    fields["train"], fields["init_from"] = _train_table(data.get("train", {}))
    fields["pack_size"] = parse_pack_size(data.get("pack_size", "auto"), "'pack_size'")
    return fields


def _replicate(item: Any) -> dict[str, Any]:
    """A ``replicates`` entry: a table with ``seed`` and, for k-fold splits, ``fold`` (and ``repeat``)."""
    if not isinstance(item, dict):
        raise AblationError(
            f"'replicates' entries must be tables such as {{seed = 0, fold = 0}}, got {item!r}"
        )
    unknown = [key for key in item if key not in REPLICATE_KEYS]
    if unknown:
        raise AblationError(
            f"unknown key {('replicates.' + unknown[0])!r}: valid keys are {', '.join(REPLICATE_KEYS)}"
        )
    if "seed" not in item:
        raise AblationError(f"'replicates' entry {item!r} needs 'seed'")
    return {**item, "fold": None} if item.get("fold") == "official" else item


def _train_table(train: Any) -> tuple[Any, list[list[Any]]]:
    """The ``[train]`` table without a per-connector ``init_from`` table, and that table as pairs."""
    if not isinstance(train, dict):
        return train, []
    if "init_from_run" in train:
        raise AblationError(
            "'train.init_from_run' is filled in by the grid (the source run's name): set train.init_from"
        )
    if not isinstance(train.get("init_from"), dict):
        return train, []
    table = train["init_from"]
    return {k: v for k, v in train.items() if k != "init_from"}, [[k, v] for k, v in table.items()]


def _listed(data: dict[str, Any], key: str, default: Any = None) -> list[Any]:
    value = data.get(key, default)
    if not isinstance(value, list) or not value:
        raise AblationError(f"{key!r} must be a non-empty list, got {value!r}")
    return value


def _dataset_entry(item: Any, data_root: Any) -> dict[str, Any]:
    """A dataset name or folder, or a table ``{name, data_root}``; the top-level data_root is the default."""
    if isinstance(item, str):
        return {"name": item, "data_root": data_root}
    if isinstance(item, dict):
        unknown = [key for key in item if key not in DATASET_KEYS]
        if unknown:
            raise AblationError(
                f"unknown key {('datasets.' + unknown[0])!r}: valid keys are {', '.join(DATASET_KEYS)}"
            )
        if "name" not in item:
            raise AblationError("a dataset table needs 'name'")
        return {"data_root": data_root, **item}
    raise AblationError(f"'datasets' entries must be names, folders or tables, got {item!r}")


def _variants(connectors: Any, subsets: Any) -> list[tuple[str, str]]:
    """(connector, subset) pairs from ``connectors`` and ``subsets`` (a selection, or a table per connector)."""
    if connectors is None:
        connectors = list(subsets) if isinstance(subsets, dict) else ["unet"]
    names = list(dict.fromkeys(check_connector(c) for c in _listed({"connectors": connectors}, "connectors")))
    if not isinstance(subsets, dict):
        selection = _subsets(subsets, "subsets")
        return [(name, skips) for name in names for skips in selection]
    for key in subsets:
        if key not in names:
            raise AblationError(
                f"unknown key 'subsets.{key}': valid keys are the connectors {', '.join(names)}"
            )
    missing = [name for name in names if name not in subsets]
    if missing:
        raise AblationError(f"'subsets' has no entry for connector {missing[0]!r}")
    return [(name, skips) for name in names for skips in _subsets(subsets[name], f"subsets.{name}")]


def _subsets(selection: Any, key: str) -> list[str]:
    """The skip subsets of a ``subsets`` value (or a connector's entry), naming ``key`` when it is bad."""
    if isinstance(selection, list) and not selection:
        raise AblationError(
            f"{key!r} is an empty list: give 'all', 'paper' or a list of skip subsets such as ['1011', 'none']"
        )
    try:
        return expand_subsets(selection)
    except AblationError as error:
        raise AblationError(f"{key!r}: {error}") from None


def _folds(value: Any, num_folds: Any) -> tuple[Any, Any]:
    """``(fold indices, k)`` from the spec's ``folds`` and ``num_folds`` keys."""
    if value == "official":
        if num_folds is not None:
            raise AblationError("'num_folds' needs k-fold 'folds' (an integer k or a list)")
        return [None], 5
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 2:
            raise AblationError(f"'folds' must be an integer >= 2, got {value!r}")
        if num_folds is not None and num_folds != value:
            raise AblationError(f"'folds' = {value} and 'num_folds' = {num_folds} disagree; drop num_folds")
        return list(range(value)), value
    if isinstance(value, list) and value:
        return value, 5 if num_folds is None else num_folds
    raise AblationError("'folds' must be 'official', an integer k >= 2 or a list of fold indices")
