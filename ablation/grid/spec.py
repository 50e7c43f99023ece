"""Experiment specs: TOML (or JSON) files in ``experiments/`` that expand into a grid of runs.

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
    # or, instead of crossing seeds, folds and repeats, the replicates one by one:
    # replicates = [{seed = 0, fold = 0}, {seed = 1, fold = 1}, {seed = 2, fold = 2}]

    [train]
    max_epochs = 2000

    [train.init_from]          # per connector (or one string for all): the run to start from, see
    uctransnet = "unet/1111"   # ablation.sources; connectors not listed start from random weights

    [model]
    img_size = 224

Parsing has two steps. :func:`_normalise` turns the keys that take several forms (``datasets``, ``connectors``
and ``subsets``, ``folds`` and ``num_folds``, ``replicates``, ``pack_size``, a ``train.init_from`` table) into the
fields of :class:`GridSpec`; then
:func:`ablation.config.from_dict` checks every field's type, and builds ``[train]`` and ``[model]`` as the
:class:`~ablation.config.TrainConfig` and :class:`~ablation.config.ModelConfig` every run starts from, exactly
as ``ablation train --config`` does. Unknown keys and invalid values raise an AblationError naming the file and
the key and listing the valid choices. Expanding resolves each ``train.init_from`` to a run of the grid
(:func:`ablation.sources.resolve_sources`): a missing source or a cycle is an error before any run starts. No
torch import here.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

from ablation.config import (
    CONNECTORS,
    INTERPOLATIONS,
    MAX_INT,
    ModelConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
    check_connector,
    check_interpolation,
    from_dict,
    parse_init_from,
    read_config_file,
)
from ablation.errors import AblationError
from ablation.skips import expand_subsets
from ablation.sources import resolve_sources
from ablation.store.layout import run_name

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
# The most runs one spec may expand to (docs/grid.md): ~30x the paper's whole study (600 runs), and a grid that
# still expands and lists in seconds. A larger study is split into several specs sharing one results folder.
MAX_GRID_RUNS = 20_000
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

    def __post_init__(self) -> None:
        if not self.name or self.data_root == "":
            raise AblationError(f"'datasets' entries need a non-empty name and data_root, got {self!r}")


@dataclass(frozen=True)
class Replicate:
    """One replicate of every setting of a grid: a seed and a split."""

    seed: int
    fold: int | None = None  # None: the layout's own train/val split; else the k-fold index
    repeat: int = 0  # k-fold repeat

    def __str__(self) -> str:
        fold = "official" if self.fold is None else self.fold
        return f"{{seed = {self.seed}, fold = {fold}, repeat = {self.repeat}}}"


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
    # Given, these replicates replace the product of repeats x folds x seeds (pairing seeds with folds).
    replicates: tuple[Replicate, ...] = ()
    test_time_masks: bool = False
    interpolation: str = "reference"  # how images are resized (RunConfig.interpolation)
    pack_size: int | None = None  # None: automatic (packs on GPU sized to its memory, single runs on CPU)
    train: TrainConfig = field(default_factory=TrainConfig)  # test_time_masks comes from the spec's own key
    # (connector, train.init_from) pairs that replace train.init_from for that connector's runs
    init_from: tuple[tuple[str, str], ...] = ()
    model: ModelConfig = field(default_factory=ModelConfig)  # connector and skips come from ``variants``
    description: str = ""
    source: str | None = None  # the spec file, for messages

    def __post_init__(self) -> None:
        for key in ("name", "out", "datasets", "variants", "seeds", "folds"):
            if not getattr(self, key):
                raise AblationError(f"{key!r} must not be empty")
        _check_folder_name(self.name)
        _check_out(self.out)
        for connector, _ in self.variants:
            check_connector(connector)
        for seed in self.seeds:
            if not 0 <= seed <= MAX_INT:
                raise AblationError(f"'seeds' must be integers in 0..2**63 - 1, got {seed}")
        for key in ("num_folds", "repeats"):
            if getattr(self, key) > MAX_INT:
                raise AblationError(f"{key!r} must be at most 2**63 - 1, got {getattr(self, key)}")
        check_interpolation(self.interpolation)
        for key, minimum in (("num_folds", 2), ("repeats", 1)):
            if getattr(self, key) < minimum:
                raise AblationError(f"{key!r} must be an integer >= {minimum}, got {getattr(self, key)!r}")
        object.__setattr__(self, "folds", tuple(dict.fromkeys(self.folds)))
        if None in self.folds and self.folds != (None,):
            raise AblationError(f"'folds' mixes the official split with fold indices: {list(self.folds)}")
        bad = [fold for fold in self.folds if fold is not None and not 0 <= fold < self.num_folds]
        if bad:
            raise AblationError(
                f"fold {bad[0]} out of range for num_folds = {self.num_folds}: choose 0..{self.num_folds - 1}"
            )
        if self.folds == (None,) and self.repeats != 1:
            raise AblationError(
                f"'repeats' = {self.repeats} needs k-fold 'folds' (repeats re-split the folds)"
            )
        self._check_replicates()
        self._check_size()
        connectors = dict.fromkeys(connector for connector, _ in self.variants)
        init_from = []
        for connector, value in self.init_from:
            if connector not in connectors:
                raise AblationError(
                    f"unknown key 'train.init_from.{connector}': valid keys are the connectors "
                    f"{', '.join(connectors)}"
                )
            init_from.append((connector, parse_init_from(value, f"train.init_from.{connector}")))
        object.__setattr__(self, "init_from", tuple(init_from))

    def _check_replicates(self) -> None:
        """Seeds >= 0, folds in range, official and k-fold splits not mixed, no replicate twice."""
        for replicate in self.replicates:
            if not (0 <= replicate.seed <= MAX_INT and 0 <= replicate.repeat <= MAX_INT):
                raise AblationError(
                    f"'replicates': seed and repeat must be integers in 0..2**63 - 1, got {replicate}"
                )
            if replicate.fold is not None and not 0 <= replicate.fold < self.num_folds:
                raise AblationError(
                    f"'replicates': fold {replicate.fold} out of range for num_folds = {self.num_folds}: "
                    f"choose 0..{self.num_folds - 1}"
                )
            if replicate.fold is None and replicate.repeat != 0:
                raise AblationError(f"'replicates': repeat {replicate.repeat} needs a k-fold 'fold'")
        if len({r.fold is None for r in self.replicates}) > 1:
            raise AblationError("'replicates' mixes the official split with fold indices")
        if len(set(self.replicates)) != len(self.replicates):
            twice = next(r for r in self.replicates if self.replicates.count(r) > 1)
            raise AblationError(f"'replicates' lists {twice} twice")

    def replicate_list(self) -> list[Replicate]:
        """The replicates in grid order: ``replicates`` as given, else repeat, fold, seed (slowest first)."""
        if self.replicates:
            return list(self.replicates)
        grid = itertools.product(range(self.repeats), self.folds, self.seeds)
        return [Replicate(seed=seed, fold=fold, repeat=repeat) for repeat, fold, seed in grid]

    def _check_size(self) -> None:
        """At most :data:`MAX_GRID_RUNS` runs, counted from the axes before anything is expanded."""
        replicates = (
            {"replicates": len(self.replicates)}
            if self.replicates
            else {
                "repeats": self.repeats,
                "folds": len(self.folds),
                "seeds": len(self.seeds),
            }
        )
        axes = {**replicates, "datasets": len(self.datasets), "connectors x subsets": len(self.variants)}
        if math.prod(axes.values()) > MAX_GRID_RUNS:
            sizes = " x ".join(f"{count} {axis}" for axis, count in axes.items())
            raise AblationError(
                f"the grid has {math.prod(axes.values())} runs ({sizes}), more than the {MAX_GRID_RUNS} one spec "
                "may hold: split it into several specs that share one results folder ('out')"
            )

    def expand(self) -> list[RunConfig]:
        """One RunConfig per run, without duplicates, each ``train.init_from`` resolved to a run of the grid.

        Replicates (repeat, fold, seed, or ``replicates`` as listed) vary slowest, so a partly finished grid
        already covers every subset and connector for the first replicates.

        Raises:
            AblationError: a ``train.init_from`` that names no run of the grid (or several), or a cycle.
        """
        configs: dict[str, RunConfig] = {}
        init_from = dict(self.init_from)
        grid = itertools.product(self.replicate_list(), self.datasets, self.variants)
        for replicate, entry, (connector, skips) in grid:
            config = RunConfig(
                dataset=entry.name,
                seed=replicate.seed,
                fold=replicate.fold,
                repeat=replicate.repeat,
                num_folds=self.num_folds,
                data_root=entry.data_root,
                interpolation=self.interpolation,
                model=dataclasses.replace(self.model, connector=connector, skips=skips),
                train=dataclasses.replace(
                    self.train,
                    test_time_masks=self.test_time_masks and skips == "1111",
                    init_from=init_from.get(connector, self.train.init_from),
                ),
            )
            configs.setdefault(run_name(config), config)
        return resolve_sources(list(configs.values()))


def load_spec(spec: str | Path | dict[str, Any]) -> GridSpec:
    """Parse and validate a spec file (``.toml`` or ``.json``) or an already-loaded dict.

    Raises:
        AblationError: for a missing or malformed file, an unknown key, or an invalid value; the message names
            the file and key and lists the valid choices.
    """
    if isinstance(spec, dict):
        data, where, default_name, source = dict(spec), "spec", "grid", None
    else:
        path = Path(spec)
        data, where, default_name, source = (
            read_config_file(path, "spec file"),
            str(path),
            path.stem,
            str(path),
        )
    try:
        fields = _normalise(data, default_name)
        return from_dict(GridSpec, {**fields, "source": source})
    except AblationError as error:
        raise AblationError(f"{where}: {error}") from None


def expand_spec(spec: str | Path | dict[str, Any] | GridSpec) -> list[RunConfig]:
    """The runs of a spec file, a spec dict or a parsed :class:`GridSpec`, in grid order."""
    grid = spec if isinstance(spec, GridSpec) else load_spec(spec)
    try:
        return grid.expand()
    except AblationError as error:
        raise AblationError(f"{grid.source or 'spec'}: {error}") from None


def override_spec(grid: GridSpec, overrides: dict[str, Any]) -> GridSpec:
    """The spec with ``--set`` overrides of its ``[model]`` and ``[train]`` tables, so of every run.

    Values are text or typed values, as :func:`ablation.config.apply_overrides` takes them. Overridden settings
    are part of each run's identity: the runs get their own folders.

    Raises:
        AblationError: a key outside ``model.*`` and ``train.*``, a grid axis (``model.connector``,
            ``model.skips``, ``train.test_time_masks``), or what ``apply_overrides`` raises.
    """
    for key in overrides:
        section, _, name = key.partition(".")
        if section not in _AXIS_KEYS or not name:
            raise AblationError(
                f"--set {key}: only model.* and train.* keys can be set for every run of a spec; datasets, "
                "seeds and folds come from the spec (select runs with --only)"
            )
        if name in _AXIS_KEYS[section]:
            raise AblationError(f"--set {key}: set by the spec's key {_AXIS_KEYS[section][name]!r}; use that")
    tables = apply_overrides(RunConfig(model=grid.model, train=grid.train), overrides)
    return dataclasses.replace(grid, model=tables.model, train=tables.train)


def check_datasets(
    grid: GridSpec, configs: Sequence[RunConfig] | None = None, *, strict: bool = True
) -> list[str]:
    """Check that every dataset of a spec can be found and split as asked, before any run starts.

    A dataset must be a known name (:data:`ablation.data.DATASETS`) or an existing folder; a named real
    dataset (glas, monuseg) must have its folder under its data root (the entry's ``data_root``, else
    $ABLATION_DATA, else ./data) or its one prepared file at the spec's size in the cache
    (:func:`ablation.data.cache.find_prepared_cache`). Resolution is as in training. With k-fold ``folds``,
    ``num_folds`` must not exceed the images of a dataset's training pool (train + val), counted from its file
    names or from the names its prepared file holds (:func:`ablation.data.prepare.split_sizes`).

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
    from ablation.data.cache import find_prepared_cache
    from ablation.data.prepare import split_sizes
    from ablation.data.resolve import DATASET_FOLDERS, resolve_dataset
    from ablation.data.splits import check_num_folds

    where = grid.source or "spec"
    warnings = []
    used = None if configs is None else {(config.dataset, config.data_root) for config in configs}
    for entry in dict.fromkeys(grid.datasets):
        if used is not None and (entry.name, entry.data_root) not in used:
            continue
        try:
            resolve_dataset(entry.name, entry.data_root)
        except AblationError as error:
            try:
                cached = find_prepared_cache(
                    entry.name, img_size=grid.model.img_size, interpolation=grid.interpolation
                )
            except AblationError as ambiguous:
                raise AblationError(f"{where}: {ambiguous}") from None
            if cached is None:
                if strict or entry.name.lower() not in DATASET_FOLDERS:
                    raise AblationError(f"{where}: {error}") from None
                warnings.append(f"warning: {where}: {error}")
                continue
        if any(replicate.fold is not None for replicate in grid.replicate_list()):
            try:
                sizes = split_sizes(
                    entry.name, entry.data_root, img_size=grid.model.img_size, interpolation=grid.interpolation
                )
                check_num_folds(grid.num_folds, sizes["train"] + sizes.get("val", 0), setting="'folds'")
            except AblationError as error:
                raise AblationError(f"{where}: dataset {entry.name!r}: {error}") from None
    return warnings


def _check_folder_name(name: str) -> None:
    """A spec's ``name`` names its results folder (``results/<name>``): one plain folder name."""
    if name in (".", "..") or any(sep in name for sep in ("/", "\\", "\0")) or name.startswith("."):
        raise AblationError(
            f"'name' {name!r} must be a plain folder name (no '/', '..' or leading '.'): it names the results "
            "folder results/<name>"
        )


def _check_out(out: str) -> None:
    """A spec's ``out`` stays below the working folder: relative, without ``..``. A results folder elsewhere is
    chosen on the command line (``--out``/``--storage``), not by a spec file that may come from someone else."""
    path = PurePath(out)
    if path.is_absolute() or ".." in path.parts or out.startswith("~"):
        raise AblationError(
            f"'out' {out!r} must be a relative folder without '..' (results/<name> by default); give a folder "
            "elsewhere with --out on the command line"
        )


# the keys that take several forms ------------------------------------------------------------------------------


def _normalise(data: dict[str, Any], default_name: str) -> dict[str, Any]:
    """The spec's keys as :class:`GridSpec` fields (types are checked afterwards by ``from_dict``)."""
    unknown = [key for key in data if key not in SPEC_KEYS]
    if unknown:
        raise AblationError(f"unknown key {unknown[0]!r}: valid keys are {', '.join(SPEC_KEYS)}")
    if "datasets" not in data:
        raise AblationError("missing key 'datasets' (a list of dataset names or folders)")
    for section, axes in _AXIS_KEYS.items():
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
