"""Run a grid of runs: skip what is done, resume what was interrupted, isolate failures, never train twice.

The results folder holds one folder per run, named by :func:`ablation.store.run_name` (readable fields plus a hash
of the resolved config), so rerunning a grid finds its finished runs by name. A run is done exactly when its
``metrics.json`` exists; an interrupted run keeps ``checkpoint_last.pt`` and ``train_run`` resumes from it.

Work is scheduled in *units*: a list of runs one worker executes together. A unit of several runs trains as
one pack (``ablation.train.train_packed``: K variants in one fused model pass); :func:`plan_units` groups runs
that can share a pack (:mod:`ablation.packing`). Each run of a unit is claimed with a lock file
(:mod:`ablation.grid.locks`) before it starts, so concurrent runners on one folder split the work. No torch import
here: worker processes import it after pinning their GPU.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablation.config import RunConfig
from ablation.errors import AblationError
from ablation.io import atomic_write_json, read_json_table
from ablation.packing import auto_pack_size, group_for_packing
from ablation.store import (
    CONFIG_FILE,
    GRID_FILE,
    METRICS_FILE,
    STATUS_FILE,
    read_run_state,
    recorded_runs,
    run_name,
    write_status,
)

from . import locks

# train_run's signature: (config, out_dir, *, device=None, progress=True) -> metrics dict.
RunFunction = Callable[..., Any]
BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class RunState:
    """Where one run stands in a results folder.

    Attributes:
        name: the run folder's name.
        status: ``done``, ``running`` (a live runner holds its lock), ``failed``, ``pending`` or ``damaged``
            (a file of the run folder cannot be read; see :func:`done_run_problem`).
        detail: the error of a failed run, the lock owner of a running one, ``interrupted at epoch E`` for a
            pending run that will resume from its checkpoint, the file and reason for a damaged one.
    """

    name: str
    status: str
    detail: str = ""


@dataclass(frozen=True)
class RunOutcome:
    """What one runner did with one run: ``done``, ``failed``, ``skipped`` (already done), ``busy`` or
    ``damaged`` (finished, but its metrics.json, config.json or test_metrics.csv cannot be read)."""

    name: str
    outcome: str
    error: str = ""
    seconds: float = 0.0


@dataclass
class GridSummary:
    """The end-of-grid record: what was trained, skipped, failed or left to another runner."""

    results_dir: Path
    total: int
    outcomes: list[RunOutcome] = field(default_factory=list)

    def names(self, outcome: str) -> list[str]:
        return [o.name for o in self.outcomes if o.outcome == outcome]

    @property
    def failed(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.outcome == "failed"]

    @property
    def damaged(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.outcome == "damaged"]

    @property
    def exit_code(self) -> int:
        """1 when any run failed (or was left failed) or is damaged, else 0."""
        return 1 if self.failed or self.damaged else 0

    def format(self) -> str:
        counts = {kind: len(self.names(kind)) for kind in ("done", "skipped", "failed", "busy", "damaged")}
        damaged = f", damaged {counts['damaged']}" if counts["damaged"] else ""
        lines = [
            f"grid finished in {self.results_dir}: {self.total} runs; trained {counts['done']}, "
            f"skipped {counts['skipped']} (already done), failed {counts['failed']}{damaged}, "
            f"left to another runner {counts['busy']}"
        ]
        lines += [f"  failed: {o.name}: {o.error}" for o in self.failed]
        lines += [f"  damaged: {o.name}: {o.error}" for o in self.damaged]
        if self.failed:
            lines.append("  rerun the same command to retry the failed runs (completed runs are kept)")
        if self.damaged:
            lines.append("  a damaged run is not retrained: delete its folder to train it again")
        return "\n".join(lines)


# status -------------------------------------------------------------------------------------------------------


def run_state(results_dir: str | Path, name: str) -> RunState:
    """The state of the run folder ``results_dir/name`` (which need not exist), with its lock owner if running."""
    run_dir = Path(results_dir) / name
    status, detail, record = read_run_state(run_dir)
    finished = (run_dir / METRICS_FILE).exists()
    if finished:
        return RunState(name, status, detail or None)  # done, or damaged
    if locks.lock_path(run_dir).exists() and locks.is_locked(run_dir):
        owner = locks.read_owner(run_dir)
        return RunState(name, "running", owner.describe() if owner else "lock being written")
    if status == "damaged":  # nothing finished is lost: the next run rewrites the status and resumes
        return RunState(name, "damaged", f"{detail}; `ablation run` trains it again")
    if status == "failed":
        return RunState(name, "failed", detail)
    if status == "pending":
        return RunState(name, "pending")
    epoch = record.get("epoch")
    return RunState(
        name, "pending", "interrupted" + (f" at epoch {epoch}" if epoch is not None else "") + ", resumes"
    )


def grid_status(results_dir: str | Path, configs: Sequence[RunConfig] | None = None) -> list[RunState]:
    """States of the runs of ``configs`` in ``results_dir``; without configs, of every run the folder knows.

    A folder knows the runs in its run folders and those recorded in ``grid.json`` by ``ablation run``.
    """
    if configs is not None:
        names = [run_name(config) for config in configs]
    else:
        names = list(dict.fromkeys([*recorded_runs(results_dir), *_run_folders(results_dir)]))
    return [run_state(results_dir, name) for name in names]


def _record_grid(results_dir: Path, names: Iterable[str], spec_name: str | None) -> None:
    runs = list(dict.fromkeys([*recorded_runs(results_dir), *names]))
    record = {"runs": runs}
    if spec_name is not None:
        previous = []
        if (results_dir / GRID_FILE).exists():
            try:
                previous = read_json_table(results_dir / GRID_FILE).get("specs", [])
            except AblationError:
                previous = []
        previous = [spec for spec in previous if isinstance(spec, str)] if isinstance(previous, list) else []
        record["specs"] = list(dict.fromkeys([*previous, spec_name]))
    atomic_write_json(results_dir / GRID_FILE, record)


def _run_folders(results_dir: str | Path) -> list[str]:
    root = Path(results_dir)
    if not root.is_dir():
        return []
    marks = (CONFIG_FILE, locks.LOCK_FILE, STATUS_FILE)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and any((p / m).exists() for m in marks))


# units --------------------------------------------------------------------------------------------------------


def plan_units(configs: Sequence[RunConfig], pack_size: int = 1) -> list[list[RunConfig]]:
    """Group pending runs into units of work, each executed by one worker.

    With ``pack_size`` 1 every unit is one run. Larger values group runs that can train as one pack (same
    dataset, connector and settings; different seeds, folds and, for ``unet``/``cca``, skip subsets) into units of
    at most ``pack_size`` (:func:`ablation.packing.group_for_packing`).
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
    from .local import detect_gpus, gpu_memory_bytes

    devices = list(gpus) if gpus is not None else detect_gpus()
    memory = gpu_memory_bytes(devices)
    return auto_pack_size(configs, memory) if memory else 1


def resolve_run_function(run_fn: RunFunction | None) -> RunFunction:
    """``run_fn`` itself, or ``ablation.train.train_run`` (imported here, so torch loads only when needed)."""
    if run_fn is not None:
        return run_fn
    try:
        from ablation.train import train_run
    except ImportError as error:
        raise AblationError(f"the training module is not available ({error}); cannot run the grid") from None
    return train_run


def execute_unit(
    unit: Sequence[RunConfig],
    results_dir: str | Path,
    *,
    run_fn: RunFunction | None = None,
    device: str | None = None,
    progress: bool = False,
    retry_failed: bool = True,
) -> list[RunOutcome]:
    """Claim and run each run of a unit in turn; an exception fails that run only.

    Args:
        unit: the runs to execute (one today; see :func:`plan_units`).
        results_dir: the grid's results folder; run ``r`` lives in ``results_dir / run_name(r)``.
        run_fn: called as ``run_fn(config, run_dir, device=device, progress=progress)``; default ``train_run``.
        device: passed through (None: the run function picks CUDA when visible, else CPU).
        progress: show the run function's own progress bar.
        retry_failed: re-attempt runs whose status.json says failed; False leaves them failed.

    Returns:
        One outcome per run. Every failure is also written to the run's status.json.
    """
    results_dir = Path(results_dir)
    if len(unit) > 1 and run_fn is None:
        return _execute_pack(unit, results_dir, device=device, progress=progress, retry_failed=retry_failed)
    outcomes = []
    for config in unit:
        name = run_name(config)
        run_dir = results_dir / name
        state = run_state(results_dir, name)
        if state.status == "done":
            outcomes.append(RunOutcome(name, "skipped"))
        elif _left_as_is(state, run_dir, retry_failed):
            outcomes.append(RunOutcome(name, state.status, state.detail))
        elif not locks.try_lock(run_dir):
            outcomes.append(RunOutcome(name, "busy"))
        else:
            try:
                outcomes.append(_run_locked(config, run_dir, run_fn, device, progress))
            finally:
                locks.release_lock(run_dir)
    return outcomes


def _left_as_is(state: RunState, run_dir: Path, retry_failed: bool) -> bool:
    """A failed run under ``retry_failed=False``, or a finished run whose files are damaged: never retrained
    here (that would overwrite what it computed); the user deletes the folder to train it again."""
    if state.status == "failed":
        return not retry_failed
    return state.status == "damaged" and (run_dir / METRICS_FILE).exists()


def _execute_pack(
    unit: Sequence[RunConfig], results_dir: Path, *, device: str | None, progress: bool, retry_failed: bool
) -> list[RunOutcome]:
    """Claim the runs of a pack that still need training and train them together with ``train_packed``."""
    outcomes: list[RunOutcome] = []
    claimed: list[RunConfig] = []
    for config in unit:
        name = run_name(config)
        state = run_state(results_dir, name)
        if state.status == "done":
            outcomes.append(RunOutcome(name, "skipped"))
        elif _left_as_is(state, results_dir / name, retry_failed):
            outcomes.append(RunOutcome(name, state.status, state.detail))
        elif not locks.try_lock(results_dir / name):
            outcomes.append(RunOutcome(name, "busy"))
        else:
            claimed.append(config)
    if not claimed:
        return outcomes
    dirs = [results_dir / run_name(config) for config in claimed]
    started = time.time()
    try:
        for run_dir in dirs:
            for leftover in run_dir.glob(
                ".*.tmp"
            ):  # an atomic write cut short by a kill; we own the folder now
                leftover.unlink(missing_ok=True)
        try:
            from ablation.train import train_packed

            train_packed(claimed, dirs, device=device, progress=progress)
        except Exception as error:  # noqa: BLE001 - a failing pack fails its runs, not the grid
            for run_dir in dirs:
                if not (run_dir / METRICS_FILE).exists():
                    _record_failure(run_dir, error, started)
        seconds = (time.time() - started) / len(dirs)
        for run_dir in dirs:
            state = run_state(results_dir, run_dir.name)
            if state.status == "done":
                outcomes.append(RunOutcome(run_dir.name, "done", seconds=seconds))
            else:
                detail = state.detail or f"the packed trainer returned without writing {METRICS_FILE}"
                outcomes.append(RunOutcome(run_dir.name, "failed", detail, seconds))
    finally:
        for run_dir in dirs:
            locks.release_lock(run_dir)
    return outcomes


def _run_locked(
    config: RunConfig, run_dir: Path, run_fn: RunFunction | None, device: str | None, progress: bool
) -> RunOutcome:
    name = run_dir.name
    if (run_dir / METRICS_FILE).exists():  # another runner finished it between our check and our claim
        return RunOutcome(name, "skipped")
    for leftover in run_dir.glob(".*.tmp"):  # an atomic write cut short by a kill; we own the folder now
        leftover.unlink(missing_ok=True)
    started = time.time()
    try:
        resolve_run_function(run_fn)(config, run_dir, device=device, progress=progress)
    except Exception as error:  # noqa: BLE001 - any failure of one run must not stop the grid
        reason = _record_failure(run_dir, error, started)
        return RunOutcome(name, "failed", reason, time.time() - started)
    seconds = time.time() - started
    if not (run_dir / METRICS_FILE).exists():
        reason = f"the run function returned without writing {METRICS_FILE}"
        write_status(run_dir, f"failed: {reason}", error=reason, host=socket.gethostname())
        return RunOutcome(name, "failed", reason, seconds)
    return RunOutcome(name, "done", seconds=seconds)


def _record_failure(run_dir: Path, error: Exception, started: float) -> str:
    """Write status.json for a failed run, unless the run function already wrote its own failed status."""
    status_path = run_dir / STATUS_FILE
    try:
        status = read_json_table(status_path) if status_path.exists() else {}
        written_now = status_path.exists() and status_path.stat().st_mtime >= started - 1.0
    except (OSError, AblationError):
        status, written_now = {}, False
    text = str(status.get("status", ""))
    if written_now and text.startswith("failed"):
        return text.removeprefix("failed").lstrip(": ")
    reason = f"{type(error).__name__}: {error}".strip().splitlines()[0]
    write_status(
        run_dir,
        f"failed: {reason}",
        error=reason,
        traceback="".join(traceback.format_exception(error)),
        host=socket.gethostname(),
        pid=os.getpid(),
    )
    return reason


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
    pack_size: int | None = 1,
    retry_failed: bool = True,
    run_fn: RunFunction | None = None,
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
        pack_size: runs trained together as one pack (see :func:`plan_units`); None picks automatically: as many
            as fit the GPU's memory on a local GPU grid, else 1. Ignored (1) when ``run_fn`` is given.
        retry_failed: re-attempt runs that failed before (the default), or leave them failed.
        run_fn: the function that executes one run; default ``ablation.train.train_run``. It must be picklable
            (a module-level function) for worker processes and Ray.
        progress: show the grid's progress bar (and, in-process, each run's).
        spec_name: recorded in ``grid.json`` beside the run names.

    Returns:
        The summary; ``summary.exit_code`` is 1 when any run failed.
    """
    if backend not in BACKENDS:
        raise AblationError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    results_dir = make_results_dir(results_dir)
    names = [run_name(config) for config in configs]
    _record_grid(results_dir, names, spec_name)
    summary = GridSummary(results_dir=results_dir, total=len(configs))
    todo = []
    for config, name in zip(configs, names):
        state = run_state(results_dir, name)
        if state.status == "done":
            summary.outcomes.append(RunOutcome(name, "skipped"))
        elif _left_as_is(state, results_dir / name, retry_failed=True):  # damaged: reported, left as is
            summary.outcomes.append(RunOutcome(name, "damaged", state.detail))
        else:
            todo.append(config)
    pack_size = 1 if run_fn is not None else resolve_pack_size(pack_size, todo, backend, gpus)
    units = plan_units(todo, pack_size)
    bar = _grid_bar(len(configs), len(configs) - len(todo), progress)

    def record(outcomes: list[RunOutcome]) -> None:
        summary.outcomes.extend(outcomes)
        bar.update(len(outcomes))
        bar.set_postfix(failed=len(summary.failed), refresh=False)

    try:
        if backend == "ray":
            from .ray_backend import run_units_ray

            run_units_ray(
                units,
                results_dir,
                address=ray_address,
                cpus_per_run=cpus_per_run,
                run_fn=run_fn,
                retry_failed=retry_failed,
                on_outcomes=record,
            )
        else:
            from .local import run_units_local

            run_units_local(
                units,
                results_dir,
                workers=workers,
                gpus=gpus,
                workers_per_gpu=workers_per_gpu,
                run_fn=run_fn,
                retry_failed=retry_failed,
                progress=progress,
                on_outcomes=record,
            )
    finally:
        bar.close()
    return summary


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
