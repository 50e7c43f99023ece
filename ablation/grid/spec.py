"""Experiment specs: TOML files in ``experiments/`` that expand into a grid of runs.

A spec names the scientific knobs of a skip-connection study (connector, skip subset; UCTransNet, Wang et al.,
AAAI 2022, Fig. 3 and Table 3), the data and the replicates (seeds, folds, repeats), and overrides of the fixed
training and model settings. It expands into one :class:`~ablation.config.RunConfig` per run::

    name = "paper_skip_study"
    datasets = ["glas", "monuseg"]
    connectors = ["unet"]
    subsets = "all"            # "all" (16), "paper" (Fig. 3 settings) or a list such as ["1011", "L1+L2"]
    seeds = [0]
    folds = 5                  # "official", an integer k (k-fold cross-validation) or a list of fold indices
    repeats = 3                # k-fold repeats (the paper: 3 x 5-fold)

    [train]
    max_epochs = 2000

    [model]
    img_size = 224

Unknown keys, at the top level or in ``[train]``/``[model]``, raise an AblationError naming the key and listing
the valid ones. No torch import here.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import itertools
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablation.config import (
    CONNECTORS,
    INTERPOLATIONS,
    ModelConfig,
    RunConfig,
    TrainConfig,
    check_connector,
    from_dict,
    to_dict,
)
from ablation.errors import AblationError
from ablation.skips import expand_subsets, parse_skips
from ablation.store import (
    dataset_slug,  # the dataset part of run folder names
    name_fields,
    run_id,
    run_name,
    split_name,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 only
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None

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
    "test_time_masks": "evaluate every all-skips model under all 16 runtime masks too (default: false)",
    "pack_size": "runs trained together in one model pass: 'auto' (as many as fit on a GPU, 1 on CPU) or an "
    "integer (default: 'auto')",
    "train": "table of TrainConfig overrides",
    "model": "table of ModelConfig overrides (connector and skips come from the grid axes)",
}
DATASET_KEYS = ("name", "data_root")
# Set by the grid's own axes; an override in [model]/[train] would be silently replaced, so it is refused.
_AXIS_KEYS = {
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


@dataclass(frozen=True)
class DatasetEntry:
    name: str  # a known dataset name or a folder in the reference layout
    data_root: str | None = None


@dataclass(frozen=True)
class GridSpec:
    """A parsed experiment spec; :meth:`expand` gives its runs."""

    name: str
    out: str
    datasets: tuple[DatasetEntry, ...]
    # (connector, skip subset) pairs in grid order: every subset for every connector, or a table per connector
    variants: tuple[tuple[str, str], ...] = (("unet", "1111"),)
    seeds: tuple[int, ...] = (0,)
    folds: tuple[int | None, ...] = (None,)  # None: the layout's own train/val split
    num_folds: int = 5
    repeats: int = 1
    test_time_masks: bool = False
    interpolation: str = "reference"  # how images are resized (RunConfig.interpolation)
    pack_size: int | None = None  # None: automatic (packs on GPU sized to its memory, single runs on CPU)
    train: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    source: str | None = None  # the spec file, for messages

    def expand(self) -> list[RunConfig]:
        """One RunConfig per run, without duplicates.

        Replicates (repeat, fold, seed) vary slowest, so a partly finished grid already covers every subset and
        connector for the first replicates.
        """
        train = from_dict(TrainConfig, self.train, "train")
        base_model = to_dict(from_dict(ModelConfig, self.model, "model"))
        configs: dict[str, RunConfig] = {}
        grid = itertools.product(range(self.repeats), self.folds, self.seeds, self.datasets, self.variants)
        for repeat, fold, seed, entry, (connector, skips) in grid:
            model = from_dict(ModelConfig, {**base_model, "connector": connector, "skips": skips})
            masked = self.test_time_masks and skips == "1111"
            config = RunConfig(
                dataset=entry.name,
                seed=seed,
                fold=fold,
                repeat=repeat,
                num_folds=self.num_folds,
                data_root=entry.data_root,
                interpolation=self.interpolation,
                model=model,
                train=dataclasses.replace(train, test_time_masks=True) if masked else train,
            )
            configs.setdefault(run_name(config), config)
        return list(configs.values())


def load_spec(spec: str | Path | dict[str, Any]) -> GridSpec:
    """Parse and validate a spec file (or an already-loaded dict).

    Raises:
        AblationError: for a missing or malformed file, an unknown key, or an invalid value; the message names
            the file and key and lists the valid choices.
    """
    if isinstance(spec, dict):
        data, where, default_name = dict(spec), "spec", "grid"
    else:
        path = Path(spec)
        where, default_name = str(path), path.stem
        data = _read_toml(path)
    unknown = [key for key in data if key not in SPEC_KEYS]
    if unknown:
        raise AblationError(f"{where}: unknown key {unknown[0]!r}: valid keys are {', '.join(SPEC_KEYS)}")

    name = _string(data.get("name", default_name), "name", where)
    out = _string(data.get("out", f"results/{name}"), "out", where)
    data_root = data.get("data_root")
    if data_root is not None:
        data_root = _string(data_root, "data_root", where)
    if "datasets" not in data:
        raise AblationError(f"{where}: missing key 'datasets' (a list of dataset names or folders)")
    datasets = tuple(
        _dataset_entry(item, data_root, where) for item in _list(data["datasets"], "datasets", where)
    )
    variants = _variants(data.get("connectors"), data.get("subsets", "all"), where)
    seeds = tuple(_integer(s, "seeds", where) for s in _list(data.get("seeds", [0]), "seeds", where))
    folds, num_folds = _folds(data.get("folds", "official"), data.get("num_folds"), where)
    repeats = _integer(data.get("repeats", 1), "repeats", where, minimum=1)
    if folds == (None,) and repeats != 1:
        raise AblationError(
            f"{where}: 'repeats' = {repeats} needs k-fold 'folds' (repeats re-split the folds)"
        )
    test_time_masks = data.get("test_time_masks", False)
    if not isinstance(test_time_masks, bool):
        raise AblationError(f"{where}: 'test_time_masks' must be true or false, got {test_time_masks!r}")
    pack_size = parse_pack_size(data.get("pack_size", "auto"), f"{where}: 'pack_size'")
    interpolation = _string(data.get("interpolation", "reference"), "interpolation", where)
    if interpolation not in INTERPOLATIONS:
        raise AblationError(
            f"{where}: unknown interpolation {interpolation!r}: choose one of {', '.join(INTERPOLATIONS)}"
        )
    overrides = {}
    for section, cls in (("train", TrainConfig), ("model", ModelConfig)):
        table = data.get(section, {})
        if not isinstance(table, dict):
            raise AblationError(f"{where}: [{section}] must be a table of {cls.__name__} keys")
        for key, axis in _AXIS_KEYS[section].items():
            if key in table:
                raise AblationError(
                    f"{where}: '{section}.{key}' is set by the top-level key {axis!r}; use that"
                )
        _checked(from_dict, cls, table, section, where=where)  # unknown keys and bad values, early
        overrides[section] = dict(table)
    return GridSpec(
        name=name,
        out=out,
        datasets=datasets,
        variants=variants,
        seeds=seeds,
        folds=folds,
        num_folds=num_folds,
        repeats=repeats,
        test_time_masks=test_time_masks,
        interpolation=interpolation,
        pack_size=pack_size,
        train=overrides["train"],
        model=overrides["model"],
        source=None if isinstance(spec, dict) else where,
    )


def expand_spec(spec: str | Path | dict[str, Any] | GridSpec) -> list[RunConfig]:
    """The runs of a spec file, a spec dict or a parsed :class:`GridSpec`, in grid order."""
    grid = spec if isinstance(spec, GridSpec) else load_spec(spec)
    where = grid.source or "spec"
    return _checked(grid.expand, where=where)


def check_datasets(
    grid: GridSpec, configs: Sequence[RunConfig] | None = None, *, strict: bool = True
) -> list[str]:
    """Check that every dataset of a spec can be found, before any run starts.

    A dataset must be a known name (:data:`ablation.data.DATASETS`) or an existing folder; a named real
    dataset (glas, monuseg) must have its folder under its data root (the entry's ``data_root``, else
    $ABLATION_DATA, else ./data). Resolution is :func:`ablation.data.prepare.resolve_dataset`, as in
    training.

    Args:
        grid: the parsed spec.
        configs: check only the datasets these runs use (the runs ``--only`` kept); default every dataset.
        strict: raise for a named dataset whose folder is missing; False turns that into a warning (for
            ``--dry-run``, which lists runs without reading data). Unknown names always raise.

    Returns:
        Warning lines, one per missing dataset folder (empty when ``strict`` or when every folder exists).

    Raises:
        AblationError: naming the spec file and the dataset, where it looked, and the valid names.
    """
    from ablation.data.prepare import DATASET_FOLDERS, resolve_dataset

    where = grid.source or "spec"
    warnings = []
    used = None if configs is None else {(config.dataset, config.data_root) for config in configs}
    for entry in dict.fromkeys(grid.datasets):
        if used is not None and (entry.name, entry.data_root) not in used:
            continue
        try:
            resolve_dataset(entry.name, entry.data_root)
        except AblationError as error:
            if strict or entry.name.lower() not in DATASET_FOLDERS:
                raise AblationError(f"{where}: {error}") from None
            warnings.append(f"warning: {where}: {error}")
    return warnings


# --only filters ---------------------------------------------------------------------------------------------

FILTER_KEYS: dict[str, str] = {
    "dataset": "dataset name or folder",
    "connector": "connector name",
    "skips": "skip subset (any form parse_skips accepts)",
    "seed": "seed",
    "fold": "fold index or 'official'",
    "repeat": "k-fold repeat",
    "split": "official or r<repeat>f<fold>",
    "run_id": "the 8-character config hash",
}


def run_fields(config: RunConfig) -> dict[str, str]:
    """The values ``--only key=value`` filters match, as strings."""
    return {
        "dataset": config.dataset,
        "connector": config.model.connector,
        "skips": config.model.skips,
        "seed": str(config.seed),
        "fold": "official" if config.fold is None else str(config.fold),
        "repeat": str(config.repeat),
        "split": split_name(config),
        "run_id": run_id(config),
    }


def select_runs(configs: list[RunConfig], filters: list[str] | None) -> list[RunConfig]:
    """Keep the runs matching every filter.

    A filter is ``key=value`` (keys: see :data:`FILTER_KEYS`; several values as ``key=a|b``), a glob on the run
    name when it holds ``*``, ``?`` or ``[``, else a substring of the run name. A comma separates filters that
    must all match, like repeating ``--only``.
    """
    terms = _terms(filters)
    return [
        config
        for config in configs
        if all(_matches(run_fields(config), run_name(config), term) for term in terms)
    ]


def select_names(names: list[str], filters: list[str] | None) -> list[str]:
    """Keep the run folder names matching every filter, as :func:`select_runs` does, without the configs.

    ``key=value`` filters read the fields from the name (:func:`name_fields`); a name in another form matches
    substring and glob filters only.
    """
    terms = _terms(filters)
    return [name for name in names if all(_matches(name_fields(name), name, term) for term in terms)]


def _terms(filters: list[str] | None) -> list[str]:
    return [term.strip() for text in filters or [] for term in text.split(",") if term.strip()]


def _matches(fields: dict[str, str] | None, name: str, term: str) -> bool:
    if "=" in term:
        key, _, value = term.partition("=")
        key = key.strip()
        if key not in FILTER_KEYS:
            raise AblationError(f"--only: unknown key {key!r}: valid keys are {', '.join(FILTER_KEYS)}")
        wanted = [v.strip() for v in value.split("|")]
        if key == "skips":
            wanted = [parse_skips(v) for v in wanted]
        if fields is None:
            return False
        if key == "dataset":  # a name holds the dataset's short form; "glas" and "data/GlaS" both match it
            return fields[key] in wanted or dataset_slug(fields[key]) in {dataset_slug(w) for w in wanted}
        return fields[key] in wanted
    if any(char in term for char in "*?["):
        return fnmatch.fnmatchcase(name, term)
    return term in name


# helpers ----------------------------------------------------------------------------------------------------


def _read_toml(path: Path) -> dict[str, Any]:
    if tomllib is None:  # pragma: no cover - Python 3.10 without tomli
        raise AblationError("reading TOML specs on Python 3.10 needs tomli: pip install tomli")
    if not path.is_file():
        raise AblationError(f"spec file not found: {path}")
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise AblationError(f"{path}: invalid TOML: {error}") from None
    except UnicodeDecodeError as error:  # tomllib decodes the bytes itself and lets this through
        raise AblationError(
            f"{path}: not a TOML text file (byte {error.start} is not UTF-8); give an experiment spec"
        ) from None
    except OSError as error:
        raise AblationError(f"cannot read spec file {path}: {error.strerror or error}") from None


def _checked(function: Any, *args: Any, where: str, **kwargs: Any) -> Any:
    """Call ``function``, prefixing any AblationError with the spec file it came from."""
    try:
        return function(*args, **kwargs)
    except AblationError as error:
        raise AblationError(f"{where}: {error}") from None


def _string(value: Any, key: str, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise AblationError(f"{where}: {key!r} must be a non-empty string, got {value!r}")
    return value


def _list(value: Any, key: str, where: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise AblationError(f"{where}: {key!r} must be a non-empty list, got {value!r}")
    return value


def _integer(value: Any, key: str, where: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise AblationError(f"{where}: {key!r} must be an integer >= {minimum}, got {value!r}")
    return value


def _dataset_entry(item: Any, data_root: str | None, where: str) -> DatasetEntry:
    if isinstance(item, str):
        return DatasetEntry(name=_string(item, "datasets", where), data_root=data_root)
    if isinstance(item, dict):
        unknown = [key for key in item if key not in DATASET_KEYS]
        if unknown:
            raise AblationError(
                f"{where}: unknown key {('datasets.' + unknown[0])!r}: valid keys are {', '.join(DATASET_KEYS)}"
            )
        if "name" not in item:
            raise AblationError(f"{where}: a dataset table needs 'name'")
        root = item.get("data_root", data_root)
        return DatasetEntry(
            name=_string(item["name"], "datasets.name", where),
            data_root=None if root is None else _string(root, "datasets.data_root", where),
        )
    raise AblationError(f"{where}: 'datasets' entries must be names, folders or tables, got {item!r}")


def _variants(connectors: Any, subsets: Any, where: str) -> tuple[tuple[str, str], ...]:
    """(connector, subset) pairs from ``connectors`` and ``subsets`` (a selection, or a table per connector)."""
    if connectors is None:
        connectors = list(subsets) if isinstance(subsets, dict) else ["unet"]
    names = [
        _checked(check_connector, _string(c, "connectors", where), where=where)
        for c in _list(connectors, "connectors", where)
    ]
    if not isinstance(subsets, dict):
        selection = _checked(expand_subsets, subsets, where=where)
        return tuple((name, skips) for name in dict.fromkeys(names) for skips in selection)
    for key in subsets:
        if key not in names:
            raise AblationError(
                f"{where}: unknown key 'subsets.{key}': valid keys are the connectors {', '.join(names)}"
            )
    missing = [name for name in names if name not in subsets]
    if missing:
        raise AblationError(f"{where}: 'subsets' has no entry for connector {missing[0]!r}")
    return tuple(
        (name, skips)
        for name in dict.fromkeys(names)
        for skips in _checked(expand_subsets, subsets[name], where=where)
    )


def _folds(value: Any, num_folds: Any, where: str) -> tuple[tuple[int | None, ...], int]:
    """``(fold indices, k)`` from the spec's ``folds`` and ``num_folds`` keys."""
    if value == "official":
        if num_folds is not None:
            raise AblationError(f"{where}: 'num_folds' needs k-fold 'folds' (an integer k or a list)")
        return (None,), 5
    if isinstance(value, int) and not isinstance(value, bool):
        k = _integer(value, "folds", where, minimum=2)
        if num_folds is not None and num_folds != k:
            raise AblationError(
                f"{where}: 'folds' = {k} and 'num_folds' = {num_folds} disagree; drop num_folds"
            )
        return tuple(range(k)), k
    if isinstance(value, list) and value:
        k = _integer(5 if num_folds is None else num_folds, "num_folds", where, minimum=2)
        indices = tuple(dict.fromkeys(_integer(v, "folds", where) for v in value))
        bad = [i for i in indices if i >= k]
        if bad:
            raise AblationError(f"{where}: fold {bad[0]} out of range for num_folds = {k}: choose 0..{k - 1}")
        return indices, k
    raise AblationError(f"{where}: 'folds' must be 'official', an integer k >= 2 or a list of fold indices")
