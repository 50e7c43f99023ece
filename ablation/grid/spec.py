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

Parsing has two steps. :func:`ablation.grid.spec_keys.normalise` turns the keys that take several forms
(``datasets``, ``connectors`` and ``subsets``, ``folds`` and ``num_folds``, ``replicates``, ``pack_size``, a
``train.init_from`` table) into the fields of :class:`GridSpec`; then :func:`ablation.config.from_dict` checks
every field's type, and builds ``[train]`` and ``[model]`` as the
:class:`~ablation.config.TrainConfig` and :class:`~ablation.config.ModelConfig` every run starts from, exactly
as ``ablation train --config`` does. Unknown keys and invalid values raise an AblationError naming the file and
the key and listing the valid choices. Expanding resolves each ``train.init_from`` to a run of the grid
(:func:`ablation.sources.resolve_sources`): a missing source or a cycle is an error before any run starts. No
torch import here; the datasets a spec needs are checked in :mod:`ablation.grid.datasets`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

from ablation.config import (
    ModelConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
    check_connector,
    check_interpolation,
    from_dict,
    parse_init_from,
)
from ablation.config_text import read_config_file
from ablation.errors import AblationError
from ablation.limits import MAX_INT
from ablation.sources import resolve_sources
from ablation.store.layout import run_name

from .spec_keys import AXIS_KEYS, normalise

# The most runs one spec may expand to (docs/grid.md): ~30x the paper's whole study (600 runs), and a grid that
# still expands and lists in seconds. A larger study is split into several specs sharing one results folder.
MAX_GRID_RUNS = 20_000


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
        fields = normalise(data, default_name)
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
        if section not in AXIS_KEYS or not name:
            raise AblationError(
                f"--set {key}: only model.* and train.* keys can be set for every run of a spec; datasets, "
                "seeds and folds come from the spec (select runs with --only)"
            )
        if name in AXIS_KEYS[section]:
            raise AblationError(f"--set {key}: set by the spec's key {AXIS_KEYS[section][name]!r}; use that")
    tables = apply_overrides(RunConfig(model=grid.model, train=grid.train), overrides)
    return dataclasses.replace(grid, model=tables.model, train=tables.train)


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
