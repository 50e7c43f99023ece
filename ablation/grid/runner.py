"""Run a grid of runs: skip what is done, resume what was interrupted, isolate failures, never train twice.

The results folder holds one folder per run, named by :func:`ablation.store.layout.run_name` (readable fields plus a hash
of the resolved config), so rerunning a grid finds its finished runs by name. A run is done exactly when its
``metrics.json`` exists; an interrupted run keeps ``checkpoint_last.pt`` and the trainer resumes from it.

Work is scheduled in *units*: a list of runs one worker trains together. :func:`plan_units` groups runs that can
share a pack (:mod:`ablation.packing`); a backend (:mod:`ablation.grid.local`, :mod:`ablation.grid.ray_backend`)
hands each unit to :func:`ablation.grid.execute.execute_unit`, which claims its runs with lock files and trains
them with ``train_unit``. A run that starts from another run's weights (``train.init_from``) is trained after
its source (:mod:`ablation.grid.order`). The layers point one way: ``locks``, ``gpus``, ``status`` -> ``order``
-> ``execute`` -> ``local``, ``ray_backend`` -> ``runner`` -> ``cli``. No torch import here: worker processes import it after pinning their GPU.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablation.config import RunConfig
from ablation.errors import AblationError
from ablation.io import atomic_write_json
from ablation.packing import auto_pack_size, group_for_packing
from ablation.store.layout import GRID_FILE, run_name
from ablation.store.state import read_grid_record

from . import locks
from .execute import RunOutcome, TrainUnit, settled_outcome
from .gpus import detect_gpus, gpu_memory_bytes
from .local import run_units_local
from .order import check_sources
from .ray_backend import run_units_ray
from .status import stale_check

BACKENDS = ("local", "ray")
WAIT_SECONDS = 1.0  # how often a runner looks at runs another live runner on this host holds


@dataclass
class GridSummary:
    """The end-of-grid record: what was trained, skipped (``stale`` ones flagged), failed or left to another
    runner that had not finished it when this runner ended."""

    results_dir: Path
    total: int
    outcomes: list[RunOutcome] = field(default_factory=list)

    def names(self, outcome: str) -> list[str]:
        return [o.name for o in self.outcomes if o.outcome == outcome]

    def of(self, outcome: str) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.outcome == outcome]

    @property
    def failed(self) -> list[RunOutcome]:
        return self.of("failed")

    @property
    def exit_code(self) -> int:
        """1 when any run failed (or was left failed) or is still held unfinished by another runner, else 0."""
        return 1 if self.failed or self.of("busy") else 0

    def format(self) -> str:
        counts = {kind: len(self.names(kind)) for kind in ("done", "skipped", "stale", "failed", "busy")}
        stale = f"; {counts['stale']} of them stale" if counts["stale"] else ""
        lines = [
            f"grid finished in {self.results_dir}: {self.total} runs; trained {counts['done']}, "
            f"skipped {counts['skipped'] + counts['stale']} (already done{stale}), failed {counts['failed']}, "
            f"left to another runner {counts['busy']}"
        ]
        lines += [f"  failed: {o.name}: {o.error}" for o in self.failed]
        lines += [f"  stale: {o.name}: {o.error.split('; `ablation run')[0]}" for o in self.of("stale")]
        lines += [f"  not finished by another runner: {o.name}: {o.error}" for o in self.of("busy")]
        if self.failed:
            lines.append("  rerun the same command to retry the failed runs (completed runs are kept)")
        if counts["stale"]:
            lines.append(
                "  stale runs are kept: `ablation run --rerun-stale` trains them again on today's data"
            )
        if counts["busy"]:
            lines.append(
                "  runs another runner holds are not finished: rerun this command once it has ended "
                "(`ablation status` shows the owners; remove the run.lock of a lost machine by hand)"
            )
        return "\n".join(lines)


# grid.json ----------------------------------------------------------------------------------------------------


def _record_grid(results_dir: Path, names: Iterable[str], spec_name: str | None) -> None:
    """Add runs (and the spec's name) to grid.json: a merge, so a grid run with --only never shrinks it.

    Raises:
        AblationError: a damaged grid.json (:func:`ablation.store.state.read_grid_record`); it is left as it is.
    """
    previous = read_grid_record(results_dir)
    record = {"runs": list(dict.fromkeys([*previous["runs"], *names]))}
    if spec_name is not None or previous["specs"]:
        record["specs"] = list(dict.fromkeys([*previous["specs"], *([spec_name] if spec_name else [])]))
    atomic_write_json(results_dir / GRID_FILE, record)


# units --------------------------------------------------------------------------------------------------------


def plan_units(configs: Sequence[RunConfig], pack_size: int = 1) -> list[list[RunConfig]]:
    """Group pending runs into units of work, each executed by one worker.

    With ``pack_size`` 1 every unit is one run. Larger values group runs that can train as one pack (same
    dataset, connector and settings; different seeds, folds and, for ``unet``/``cca``, skip subsets) into units of
    at most ``pack_size`` (:func:`ablation.packing.group_for_packing`). A run and its source (``train.init_from``)
    never share a unit: their ``init_from`` settings differ, so they never share a pack.
    """
    if pack_size < 1:
        raise AblationError(f"pack_size must be >= 1, got {pack_size}")
    if pack_size == 1:
        return [[config] for config in configs]
    return group_for_packing(configs, pack_size)


def resolve_pack_size(
    pack_size: int | None, configs: Sequence[RunConfig], backend: str, gpus: Sequence[str] | None
) -> int:
    """``pack_size`` itself, or for None (automatic) as many variants as fit a GPU's memory; 1 without a GPU."""
    if pack_size is not None:
        return pack_size
    if backend != "local":
        return 1
    devices = list(gpus) if gpus is not None else detect_gpus()
    memory = gpu_memory_bytes(devices)
    return auto_pack_size(configs, memory) if memory else 1


# the grid -----------------------------------------------------------------------------------------------------


def run_grid(
    configs: Sequence[RunConfig],
    results_dir: str | Path,
    *,
    backend: str = "local",
    workers: int | None = None,
    gpus: Sequence[str] | None = None,
    workers_per_gpu: int = 1,
    ray_address: str | None = None,
    cpus_per_run: int = 1,
    pack_size: int | None = None,
    retry_failed: bool = True,
    rerun_stale: bool = False,
    train_unit: TrainUnit | None = None,
    progress: bool = True,
    spec_name: str | None = None,
) -> GridSummary:
    """Run every run of the grid that is not done yet.

    Args:
        configs: the grid's runs (``expand_spec``, maybe filtered by ``select_runs``).
        results_dir: where run folders live; for Ray on several machines, a path every node sees.
        backend: ``local`` (worker processes on this machine) or ``ray`` (one Ray task per unit).
        workers: local worker processes; default one per GPU (times ``workers_per_gpu``), else 1. With one
            worker and no ``gpus`` given, runs execute in this process.
        gpus: GPU ids to pin workers to (CUDA_VISIBLE_DEVICES entries); default all visible GPUs.
        workers_per_gpu: local workers sharing each GPU (small models leave a GPU idle otherwise).
        ray_address: a Ray cluster's address; None starts a local Ray instance (unless one is running).
        cpus_per_run: CPUs each Ray task reserves (and torch threads it uses).
        pack_size: runs trained together as one pack (see :func:`plan_units`); None (the default, a spec's
            ``"auto"``) picks as many as fit the GPU's memory on a local GPU grid, else 1.
        retry_failed: re-attempt runs that failed before (the default), or leave them failed.
        rerun_stale: train again done runs whose data or split changed since they ran (their files are moved
            to ``.replaced/``); by default they are kept and listed as stale.
        train_unit: trains the claimed runs of a unit (contract: :mod:`ablation.grid.execute`); default the
            package's trainer. It must be picklable (a module-level function) for worker processes and Ray.
        progress: show the grid's progress bar (and, in-process, each run's).
        spec_name: recorded in ``grid.json`` beside the run names.

    Returns:
        The summary; ``summary.exit_code`` is 1 when any run failed or another runner still holds one
        unfinished. Runs held by a live runner on this host are waited for (and trained here if it leaves
        them unfinished); runs held from another host cannot be checked and are left to their owner.

    Raises:
        AblationError: before any run starts, for a run whose source (``train.init_from``) is neither among
            ``configs`` nor done in ``results_dir`` (:func:`ablation.grid.order.check_sources`).
    """
    if backend not in BACKENDS:
        raise AblationError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    check_sources(configs, check_results_dir(results_dir))
    results_dir = make_results_dir(results_dir)
    names = [run_name(config) for config in configs]
    _record_grid(results_dir, names, spec_name)
    summary = GridSummary(results_dir=results_dir, total=len(configs))
    todo = []
    stale = stale_check()
    for config, name in zip(configs, names):
        # failed runs: decided by the unit
        settled = settled_outcome(results_dir, name, True, stale, rerun_stale)
        if settled is None:
            todo.append(config)
        else:
            summary.outcomes.append(settled)
    pack_size = resolve_pack_size(pack_size, todo, backend, gpus)
    units = plan_units(todo, pack_size)
    bar = _grid_bar(len(configs), len(configs) - len(todo), progress)
    by_name = dict(zip(names, configs))

    def record(outcomes: list[RunOutcome]) -> None:
        summary.outcomes.extend(outcomes)
        bar.update(len(outcomes))
        bar.set_postfix(failed=len(summary.failed), refresh=False)

    try:
        while units:
            if backend == "ray":
                run_units_ray(
                    units,
                    results_dir,
                    address=ray_address,
                    cpus_per_run=cpus_per_run,
                    train_unit=train_unit,
                    retry_failed=retry_failed,
                    rerun_stale=rerun_stale,
                    on_outcomes=record,
                )
            else:
                run_units_local(
                    units,
                    results_dir,
                    workers=workers,
                    gpus=gpus,
                    workers_per_gpu=workers_per_gpu,
                    train_unit=train_unit,
                    retry_failed=retry_failed,
                    rerun_stale=rerun_stale,
                    progress=progress,
                    on_outcomes=record,
                )
            freed = _await_other_runners(summary, results_dir, bar)
            bar.update(-len(freed))
            units = plan_units([by_name[name] for name in freed], pack_size)
    finally:
        bar.close()
    return summary


def _await_other_runners(summary: GridSummary, results_dir: Path, bar: Any) -> list[str]:
    """Wait for the runs other live runners on this host hold; return those they left unfinished and unlocked
    (their outcomes are dropped from ``summary``: they are to be trained here). Runs held from another host
    stay ``busy``."""
    busy = summary.of("busy")
    waiting = [o.name for o in busy if locks.held_by_live_process(results_dir / o.name)]
    if waiting:
        bar.write(f"waiting for {len(waiting)} runs other runners on this host are training", file=sys.stderr)
    freed = []
    for outcome in busy:
        run_dir = results_dir / outcome.name
        while locks.held_by_live_process(run_dir):
            time.sleep(WAIT_SECONDS)
        if locks.is_locked(run_dir):
            owner = locks.read_owner(run_dir)
            summary.outcomes[summary.outcomes.index(outcome)] = RunOutcome(
                outcome.name, "busy", f"held by {owner.describe() if owner else 'an unreadable lock'}"
            )
            continue
        summary.outcomes.remove(outcome)
        freed.append(outcome.name)
    return freed


def check_results_dir(results_dir: str | Path) -> Path:
    """``results_dir`` as a Path, after checking it is a folder or does not exist yet.

    Raises:
        AblationError: when it, or a folder above it, is a file.
    """
    path = Path(results_dir).expanduser()
    for where in (path, *path.parents):
        if where.exists() and not where.is_dir():
            inside = "" if where == path else f": {where}"  # a file above the folder, e.g. --out afile.txt/x
            raise AblationError(f"results folder {path}{inside} is a file, not a folder; choose another one")
    return path


def make_results_dir(results_dir: str | Path) -> Path:
    """Create the results folder (and its parents) and return its absolute path.

    Raises:
        AblationError: when it, or a folder above it, is a file, or it cannot be created.
    """
    path = check_results_dir(results_dir).resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise AblationError(f"cannot create results folder {path}: {error.strerror or error}") from None
    return path


def _grid_bar(total: int, initial: int, progress: bool) -> Any:
    from tqdm.auto import tqdm

    # disable=None hides the bar when stderr is not a terminal (logs, CI) instead of filling them with redraws.
    return tqdm(
        total=total, initial=initial, desc="grid", unit="run", position=0, disable=None if progress else True
    )
