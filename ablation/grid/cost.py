"""What a grid costs before it runs: image passes, FLOPs and, where a throughput is known, an estimated wall time.

Every run follows the protocol of UCTransNet (Wang et al., AAAI 2022): each epoch passes every training image
once through a training step and every validation image once through a forward pass, for at most
``train.max_epochs`` epochs (early stopping may end a run sooner, so the totals are upper bounds); then the best
model scores the test set once, or 17 times with test-time masks (the 16 runtime masks and the plain model).

Image counts come from the dataset layout without decoding an image: the files that
:func:`ablation.data.prepare.split_sizes` counts (or the names the prepared file holds that stands in for a
dataset folder absent here) and the fold sizes of :func:`ablation.data.splits.kfold` (GlaS: k folds of its
training images; MoNuSeg: of Train + Val); the synthetic datasets have fixed sizes. FLOPs
use each variant's forward GFLOPs (:func:`ablation.models.model_summary`, the one place that needs torch,
imported when first used): a training step counts :data:`TRAIN_STEP_FACTOR` x forward (forward + backward), an
evaluation 1 x forward.

Wall time needs a training throughput: ``--throughput IMG_PER_S``, or a table measured on this device by
``benchmarks/packed_training.py`` in ``results/benchmarks/`` (read by :mod:`ablation.grid.throughput`). Each pack
the grid will train takes the measurement closest to it (same connector, single run or pack, nearest pack size),
scaled by FLOPs when the measured model's width or image size differ. Evaluation is taken as
:data:`EVAL_SPEEDUP` x the training rate. ``ablation run SPEC --dry-run`` prints :func:`format_cost` of
:func:`estimate_cost` after its listing.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ablation.config import ModelConfig, RunConfig
from ablation.data.prepare import split_sizes
from ablation.data.resolve import DATASET_FOLDERS, default_data_root, resolve_dataset
from ablation.data.splits import kfold
from ablation.errors import AblationError
from ablation.packing import group_for_packing
from ablation.skips import ALL_SUBSETS

from .throughput import ALL_SKIPS, BENCHMARKS_DIR, ThroughputRow, load_throughput_tables, pick_throughput

TRAIN_STEP_FACTOR = 3  # FLOPs of a training step per image, in forward passes (backward ~ 2 x forward)
EVAL_SPEEDUP = 3  # evaluation images/s relative to training images/s: a forward pass only


@dataclass(frozen=True)
class SplitSizes:
    """Images of one run: ``train`` and ``val`` are passed every epoch, ``test`` once at the end."""

    train: int
    val: int
    test: int


@dataclass(frozen=True)
class Passes:
    """Image passes of one run, at most: ``train`` through a training step, ``val`` and ``test`` forward only."""

    train: int
    val: int
    test: int

    @property
    def eval(self) -> int:
        return self.val + self.test


@dataclass(frozen=True)
class GridCost:
    """The estimate for a grid; :func:`format_cost` prints it.

    Attributes:
        runs: runs asked for.
        unknown: runs that could not be counted, by reason (e.g. ``dataset not found: data/GlaS``).
        train_passes: training-image passes of the counted runs, at most (every epoch to ``max_epochs``).
        val_passes, test_passes: evaluation image passes (validation every epoch, at most; test at the end).
        epochs: the distinct epoch budgets of the counted runs.
        flop: FLOPs of those passes (training step = :data:`TRAIN_STEP_FACTOR` x forward), None when unknown.
        flop_note: why ``flop`` is None.
        device: the device the wall time is for (None: not known).
        devices: devices training in parallel (the wall time is divided among them).
        wall_seconds: estimated wall time, None without a throughput.
        train_images_per_s: the training rate that wall time implies, over all packs.
        rates: one line per (connector, pack size) group saying which throughput timed it.
        wall_note: why ``wall_seconds`` is None.
    """

    runs: int
    unknown: dict[str, int]
    train_passes: int
    val_passes: int
    test_passes: int
    epochs: tuple[int, ...]
    flop: float | None
    flop_note: str
    device: str | None
    devices: int
    wall_seconds: float | None
    train_images_per_s: float | None
    rates: tuple[str, ...]
    wall_note: str

    @property
    def eval_passes(self) -> int:
        return self.val_passes + self.test_passes


def forward_gflops(model: ModelConfig) -> float:
    """Forward GFLOPs of one image (:func:`ablation.models.model_summary`; imports torch)."""
    from ablation.models import model_summary

    return model_summary(model)["gflops"]


def estimate_cost(
    configs: Sequence[RunConfig],
    *,
    device: str | None = None,
    throughput: float | None = None,
    pack_size: int = 1,
    devices: int = 1,
    benchmarks_dir: str | Path | None = None,
    gflops: Callable[[ModelConfig], float] = forward_gflops,
) -> GridCost:
    """Count a grid's image passes and FLOPs and, with a throughput, estimate its wall time.

    Args:
        configs: the runs (from :func:`ablation.grid.spec.expand_spec`, after ``--only``).
        device: this device's name as the benchmark tables record it (``NVIDIA H200``, ``cpu``); None when
            unknown (then only ``throughput`` gives a wall time).
        throughput: training images per second as the grid will train (``--throughput``); overrides the tables.
        pack_size: the largest pack the grid will train (1: single runs); runs are grouped as the runner groups
            them (:func:`ablation.packing.group_for_packing`).
        devices: devices training in parallel; the wall time is the total divided among them (at least the
            longest pack or run).
        benchmarks_dir: where the throughput tables are (default :data:`BENCHMARKS_DIR`, the repository's
            ``results/benchmarks``).
        gflops: forward GFLOPs per image of a model (cached per model); the default needs torch.

    Returns:
        The estimate. Runs whose dataset is missing or unreadable are counted in ``unknown``, not raised.

    Raises:
        AblationError: ``throughput``, ``pack_size`` or ``devices`` out of range.
    """
    if throughput is not None and not (math.isfinite(throughput) and throughput > 0):
        raise AblationError(f"--throughput must be a positive number of images per second, got {throughput}")
    if pack_size < 1 or devices < 1:
        raise AblationError(f"pack_size and devices must be >= 1, got {pack_size} and {devices}")
    flops = _FlopCounter(gflops)
    datasets: dict[tuple[str, str | None, int, str], dict[str, int] | str] = {}
    counted: dict[RunConfig, Passes] = {}  # specs never repeat a run (expand_spec drops duplicates)
    unknown: Counter[str] = Counter()
    for config in configs:
        key = (config.dataset, config.data_root, config.model.img_size, config.interpolation)
        if key not in datasets:
            datasets[key] = _dataset_counts(*key)
        sizes = _split_sizes(config, datasets[key])
        if isinstance(sizes, str):
            unknown[sizes] += 1
        else:
            counted[config] = _passes(config, sizes)

    flop: float | None = 0.0
    for config, passes in counted.items():
        forward = flops(config.model)
        if forward is None:
            flop = None
            break
        flop += forward * 1e9 * (TRAIN_STEP_FACTOR * passes.train + passes.eval)
    tables = Path(BENCHMARKS_DIR if benchmarks_dir is None else benchmarks_dir)
    wall, rate, rates, note = _wall_time(counted, device, throughput, pack_size, devices, tables, flops)
    return GridCost(
        runs=len(configs),
        unknown=dict(unknown),
        train_passes=sum(passes.train for passes in counted.values()),
        val_passes=sum(passes.val for passes in counted.values()),
        test_passes=sum(passes.test for passes in counted.values()),
        epochs=tuple(sorted({config.train.max_epochs for config in counted})),
        flop=flop,
        flop_note=flops.problem,
        device=device,
        devices=devices,
        wall_seconds=wall,
        train_images_per_s=rate,
        rates=rates,
        wall_note=note,
    )


def format_cost(cost: GridCost) -> list[str]:
    """A few lines for ``ablation run --dry-run``: passes and FLOPs, then the wall time (labelled an estimate)."""
    counted = cost.runs - sum(cost.unknown.values())
    epochs = "/".join(str(e) for e in cost.epochs)
    flop = f"at most {_scientific(cost.flop)} FLOP" if cost.flop is not None else f"FLOP {cost.flop_note}"
    lines = [f"cost: {_count(cost.runs, 'run')}, none of them countable"]
    if counted:
        lines = [
            f"cost: {_count(cost.runs, 'run')}, at most {cost.train_passes:,} training-image passes "
            f"(+ {cost.eval_passes:,} eval) over at most {epochs} epochs; early stopping may end runs sooner",
            f"cost: eval = {cost.val_passes:,} validation + {cost.test_passes:,} test image passes; {flop} "
            f"(training step = {TRAIN_STEP_FACTOR} x forward, eval = 1 x forward)",
        ]
    for reason, runs in sorted(cost.unknown.items()):
        rest = f"; the totals count the other {counted}" if counted else ""
        lines.append(f"cost: {_count(runs, 'run')} unknown ({reason}){rest}")
    if cost.wall_seconds is None:
        lines.append(f"wall time: {cost.wall_note}")
        return lines
    where = f"{cost.devices} x {cost.device or 'device'}"
    lines.append(
        f"estimated wall time: {_duration(cost.wall_seconds)} on {where} at {_rate(cost.train_images_per_s)} "
        f"training img/s, eval at {EVAL_SPEEDUP} x that (no backward) - an estimate"
    )
    lines += [f"  {rate}" for rate in cost.rates]
    return lines


# image counts ------------------------------------------------------------------------------------------------


def _dataset_counts(
    dataset: str, data_root: str | None, img_size: int, interpolation: str
) -> dict[str, int] | str:
    """Images per split (``train``, ``val`` when the layout has one, ``test``), or why they cannot be counted.

    Counted as :func:`ablation.data.prepare.split_sizes` counts them: from the dataset folder's file names, or
    from the names the prepared file holds that stands in for a named dataset whose folder is absent.
    """
    try:
        return split_sizes(dataset, data_root, img_size=img_size, interpolation=interpolation)
    except AblationError as error:
        try:
            resolve_dataset(dataset, data_root)
        except AblationError:  # no folder here, and no prepared file stood in for it
            key = dataset.lower()
            if key in DATASET_FOLDERS:
                root = Path(data_root) if data_root is not None else default_data_root()
                return f"dataset not found: {root / DATASET_FOLDERS[key]}"
            return f"dataset not found: {dataset}"
        return str(error)


def _split_sizes(config: RunConfig, counts: dict[str, int] | str) -> SplitSizes | str:
    """The sizes :func:`ablation.data.splits.run_splits` gives this run, or why they are unknown."""
    if isinstance(counts, str):
        return counts
    pool = counts["train"] + counts.get("val", 0)
    if config.fold is None and "val" in counts:
        return SplitSizes(counts["train"], counts["val"], counts["test"])
    # k-fold over the pool (also the official split of a layout without Val_Folder: fold 0 of repeat 0). Fold
    # sizes depend only on how many names there are, so placeholders stand in for the image names.
    fold = 0 if config.fold is None else config.fold
    try:
        folds = kfold([str(i) for i in range(pool)], num_folds=config.num_folds, repeat=config.repeat)
    except AblationError as error:
        return f"{config.dataset}: {error}"
    val = len(folds[fold])
    return SplitSizes(pool - val, val, counts["test"])


def _passes(config: RunConfig, sizes: SplitSizes) -> Passes:
    """Image passes of one run at most: train and validation every epoch, then the test set once, or with
    test-time masks on an all-skips model 17 times (the 16 runtime masks and the plain model)."""
    masked = config.train.test_time_masks and config.model.skips == ALL_SKIPS
    epochs = config.train.max_epochs
    return Passes(
        sizes.train * epochs, sizes.val * epochs, sizes.test * (1 + len(ALL_SUBSETS) if masked else 1)
    )


# throughput and wall time ------------------------------------------------------------------------------------


class _FlopCounter:
    """Forward GFLOPs per model config, computed once each; ``problem`` says why they are unknown."""

    def __init__(self, gflops: Callable[[ModelConfig], float]) -> None:
        self._gflops = gflops
        self._cache: dict[ModelConfig, float] = {}
        self.problem = ""

    def __call__(self, model: ModelConfig) -> float | None:
        if self.problem:
            return None
        if model not in self._cache:
            try:
                self._cache[model] = float(self._gflops(model))
            # The FLOP counter needs torch, which a results-only install lacks; a model may not build.
            except (ImportError, AblationError) as error:
                self.problem = f"unknown (cannot count FLOPs: {error})"
                return None
        return self._cache[model]


def _wall_time(
    counted: dict[RunConfig, Passes],
    device: str | None,
    throughput: float | None,
    pack_size: int,
    devices: int,
    benchmarks_dir: Path,
    flops: _FlopCounter,
) -> tuple[float | None, float | None, tuple[str, ...], str]:
    """``(wall seconds, training img/s overall, lines naming the rates used, why no estimate)``.

    Units of work (packs or single runs) are shared among ``devices``: the wall time is their total divided
    among the devices, but never less than the longest unit.
    """
    if not counted:
        return None, None, (), "nothing to estimate (no run could be counted)"
    rows: list[ThroughputRow] = []
    if throughput is None:
        if device is None:
            return None, None, (), "device unknown; pass --throughput IMG_PER_S"
        rows = load_throughput_tables(benchmarks_dir, device)
        if not rows:
            return None, None, (), f"no throughput measured for {device}; pass --throughput IMG_PER_S"
    units = group_for_packing(list(counted), pack_size) if pack_size > 1 else [[config] for config in counted]
    train_seconds = eval_seconds = longest = 0.0
    groups: Counter[tuple[str, int, str]] = Counter()
    for unit in units:
        if throughput is not None:
            rate, source = throughput, "--throughput"
        else:
            chosen = pick_throughput(rows, unit[0], len(unit), flops)
            if chosen is None:
                return None, None, (), f"no usable throughput for {device} ({flops.problem or 'no row fits'})"
            rate, source = chosen
        unit_train = sum(counted[config].train for config in unit) / rate
        unit_eval = sum(counted[config].eval for config in unit) / (EVAL_SPEEDUP * rate)
        train_seconds, eval_seconds = train_seconds + unit_train, eval_seconds + unit_eval
        longest = max(longest, unit_train + unit_eval)
        groups[(unit[0].model.connector, len(unit), f"{_rate(rate)} img/s from {source}")] += 1
    lines = tuple(
        f"{connector}, {_count(count, 'single run' if k == 1 else 'pack')}{'' if k == 1 else f' of {k}'}: {source}"
        for (connector, k, source), count in groups.items()
    )
    total_train = sum(passes.train for passes in counted.values())
    wall = max((train_seconds + eval_seconds) / devices, longest)
    return wall, total_train / train_seconds, lines, ""


def _scientific(value: float) -> str:
    """``1.2e17``."""
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _count(number: int, noun: str) -> str:
    """``1 pack``, ``30 packs``."""
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def _rate(images_per_s: float) -> str:
    """``442``, ``12.5``, ``0.291``: three significant digits, whole numbers from 100 up."""
    return f"{images_per_s:,.0f}" if images_per_s >= 100 else f"{images_per_s:.3g}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:,.1f} days ({seconds / 3600:,.0f} h)"
