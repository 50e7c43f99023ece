"""Execute one unit of work: claim its runs, train the claimed ones with ``train_unit``, record what happened.

Every backend (in-process, local worker processes, Ray tasks) calls :func:`execute_unit`, the one owner of the
run-claiming protocol:

1. a done run is skipped (``stale`` when its data or split changed since it ran, unless ``rerun_stale``); a
   failed run under ``retry_failed=False`` is left failed (:func:`settled_outcome`);
2. every other run is claimed with its lock file (:mod:`ablation.grid.locks`): a run another runner holds is
   ``busy``, one it finished between our check and our claim is skipped;
3. in the claimed folders, temporary files of atomic writes cut short by a kill are removed (we own them now),
   and the files of a run that is trained again from the start (a finished run whose files are damaged, a
   stale run under ``rerun_stale``, a checkpoint that cannot be resumed from) are moved to
   ``<results>/.replaced/`` (:func:`ablation.store.state.set_aside`): nothing is deleted; a claimed run whose source
   (``train.init_from``) is not done fails with a reason naming the source
   (:func:`ablation.grid.order.source_problem`);
4. ``train_unit`` trains the claimed runs, all together;
5. a run is done exactly when its metrics.json exists afterwards; any other run failed: with the failed status
   the trainer wrote for it (a diverged variant), else with the exception the trainer raised (status.json gets
   the error and traceback, where the disk still takes it), else as having returned without metrics.json. The
   grid goes on; the locks are released.

The ``train_unit`` contract: ``train_unit(configs: list[RunConfig], dirs: list[Path], *, device: str | None,
progress: bool) -> None`` writes run folder ``dirs[i]`` for ``configs[i]`` as :func:`ablation.train.train_run`
does (resuming from a checkpoint found there, metrics.json last), may write a failed status.json for a run that
fails alone, and may raise. It owns those folders while it runs. The default, :func:`train_runs`, is the
package's engine; tests pass stand-ins. Worker processes and Ray tasks receive it pickled, so it must be a
module-level function. No torch import here.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ablation.config import RunConfig
from ablation.errors import AblationError
from ablation.io import read_json_table
from ablation.store.layout import LAST_CHECKPOINT, METRICS_FILE, STATUS_FILE, run_dir_in, run_name
from ablation.store.state import StaleCheck, checkpoint_problem, read_run_state, set_aside
from ablation.store.writers import write_status

from . import locks
from .order import source_problem
from .status import run_state, stale_check

TrainUnit = Callable[..., None]  # train_unit(configs, dirs, *, device, progress); see the module docstring


@dataclass(frozen=True)
class RunOutcome:
    """What one runner did with one run: ``done``, ``failed``, ``skipped`` (already done), ``stale`` (already
    done, kept, but its data or split changed since; ``error`` says how) or ``busy`` (another runner holds it)."""

    name: str
    outcome: str
    error: str = ""
    seconds: float = 0.0


def train_runs(
    configs: Sequence[RunConfig], dirs: Sequence[Path], *, device: str | None = None, progress: bool = False
) -> None:
    """The default ``train_unit``: the engine's ``train_packed`` (a single run is a pack of one; torch loads here).

    A variant whose loss becomes non-finite writes its own failed status; the others carry on.
    """
    from ablation.train import train_packed

    train_packed(list(configs), list(dirs), device=device, progress=progress)


def settled_outcome(
    results_dir: Path,
    name: str,
    retry_failed: bool,
    stale: StaleCheck | None = None,
    rerun_stale: bool = False,
) -> RunOutcome | None:
    """The outcome of a run that needs no training (done, or left as it is), or None when it needs training.

    A failed run is retried unless ``retry_failed`` is False. A finished run whose files are damaged is trained
    again (its files are set aside when it is claimed). A done run checked by ``stale`` whose data or split
    changed is kept (``stale``), or trained again with ``rerun_stale``.
    """
    state = run_state(results_dir, name, stale)
    if state.status == "done":
        if not state.stale:
            return RunOutcome(name, "skipped")
        return None if rerun_stale else RunOutcome(name, "stale", state.detail)
    if state.status == "failed" and not retry_failed:
        return RunOutcome(name, state.status, state.detail)
    return None


def execute_unit(
    unit: Sequence[RunConfig],
    results_dir: str | Path,
    *,
    train_unit: TrainUnit | None = None,
    device: str | None = None,
    progress: bool = False,
    retry_failed: bool = True,
    rerun_stale: bool = False,
) -> list[RunOutcome]:
    """Claim the runs of a unit that need training, train them together, and say what happened to each.

    Args:
        unit: the runs (one, or a pack from :func:`ablation.grid.runner.plan_units`).
        results_dir: the grid's results folder; run ``r`` lives in ``results_dir / run_name(r)``.
        train_unit: trains the claimed runs (see the module docstring); default :func:`train_runs`.
        device: passed through (None: the trainer picks CUDA when visible, else CPU).
        progress: show the trainer's own progress bar.
        retry_failed: re-attempt runs whose status.json says failed; False leaves them failed.
        rerun_stale: train again done runs whose data or split changed since they ran; False keeps them.

    Returns:
        One outcome per run, in unit order. Every failure is also written to the run's status.json.
    """
    results_dir = Path(results_dir)
    outcomes: list[RunOutcome | None] = []
    claimed: list[RunConfig] = []
    stale = stale_check() if rerun_stale else None
    for config in unit:
        name = run_name(config)
        try:
            outcome = settled_outcome(results_dir, name, retry_failed, stale, rerun_stale)
            outcome = outcome or _claim(results_dir, name, stale)
            if outcome is None and (reason := source_problem(config, results_dir)) is not None:
                outcome = _fail_unclaimed(results_dir / name, reason)
        except (
            AblationError
        ) as error:  # e.g. a full disk refuses the lock file: this run fails, the grid goes on
            locks.release_lock(results_dir / name)
            outcome = RunOutcome(name, "failed", str(error))
        outcomes.append(outcome)
        if outcome is None:
            claimed.append(config)
    trained: list[RunOutcome] = []
    if claimed:
        dirs = [results_dir / run_name(config) for config in claimed]
        try:
            trained = _train_claimed(claimed, dirs, train_unit or train_runs, device, progress)
        finally:
            for run_dir in dirs:
                locks.release_lock(run_dir)
    fresh = iter(trained)  # the claimed runs' outcomes fill their places in unit order
    return [outcome or next(fresh) for outcome in outcomes]


def _claim(results_dir: Path, name: str, stale: StaleCheck | None) -> RunOutcome | None:
    """Lock the run for this process and clean its folder; an outcome instead when it is not ours to train.

    Under the lock the run's files are read again: one another runner finished meanwhile is skipped; the files
    of a run trained again from the start (finished but damaged, stale when ``stale`` is given, a checkpoint
    that cannot be resumed from) are set aside first.
    """
    run_dir = run_dir_in(results_dir, name)
    if not locks.try_lock(run_dir):
        return RunOutcome(name, "busy")
    try:
        status, detail, _ = read_run_state(run_dir)
        reasons = stale.reasons(run_dir) if stale is not None and status == "done" else []
        if status == "done" and not reasons:  # another runner finished it between our check and our claim
            locks.release_lock(run_dir)
            return RunOutcome(name, "skipped")
        finished = (run_dir / METRICS_FILE).exists()
        if finished or checkpoint_problem(run_dir / LAST_CHECKPOINT):
            why = f"stale: {'; '.join(reasons)}" if reasons else f"damaged: {detail}"
            set_aside(run_dir, f"{name} trained again from the start; {why}", keep=(locks.LOCK_FILE,))
        for leftover in run_dir.glob(".*.tmp"):  # an atomic write cut short by a kill
            leftover.unlink(missing_ok=True)
    except BaseException:
        locks.release_lock(run_dir)
        raise
    return None


def _fail_unclaimed(run_dir: Path, reason: str) -> RunOutcome:
    """Record in a claimed run's status.json why it cannot train (its source failed), and release it."""
    write_status(run_dir, f"failed: {reason}", error=reason, host=socket.gethostname())
    locks.release_lock(run_dir)
    return RunOutcome(run_dir.name, "failed", reason)


def _train_claimed(
    configs: list[RunConfig], dirs: list[Path], train_unit: TrainUnit, device: str | None, progress: bool
) -> list[RunOutcome]:
    started = time.time()
    error: Exception | None = None
    try:
        train_unit(configs, dirs, device=device, progress=progress)
    except Exception as caught:  # noqa: BLE001 - a failing unit fails its unfinished runs, not the grid
        error = caught
    seconds = (time.time() - started) / len(dirs)
    outcomes = []
    for run_dir in dirs:
        if (run_dir / METRICS_FILE).exists():
            outcomes.append(RunOutcome(run_dir.name, "done", seconds=seconds))
        else:
            reason = _record_failure(run_dir, error, started)
            outcomes.append(RunOutcome(run_dir.name, "failed", reason, seconds))
    return outcomes


def _record_failure(run_dir: Path, error: Exception | None, started: float) -> str:
    """The reason a claimed run did not finish, written to its status.json unless the trainer wrote its own
    failed status during this attempt (then that reason is kept). When status.json cannot be written either (a
    full disk), the reason says so and is only reported."""
    try:
        return _write_failure(run_dir, error, started)
    except AblationError as write_error:
        reason = (
            _reason(error) if error is not None else f"the trainer returned without writing {METRICS_FILE}"
        )
        return f"{reason} (and {write_error})"


def _reason(error: Exception) -> str:
    return f"{type(error).__name__}: {error}".strip().splitlines()[0]


def _write_failure(run_dir: Path, error: Exception | None, started: float) -> str:
    status_path = run_dir / STATUS_FILE
    try:
        status = read_json_table(status_path) if status_path.exists() else {}
        written_now = status_path.exists() and status_path.stat().st_mtime >= started - 1.0
    except (OSError, AblationError):
        status, written_now = {}, False
    text = str(status.get("status", ""))
    if written_now and text.startswith("failed"):
        return text.removeprefix("failed").lstrip(": ")
    if error is None:
        reason = f"the trainer returned without writing {METRICS_FILE}"
        write_status(run_dir, f"failed: {reason}", error=reason, host=socket.gethostname())
        return reason
    reason = _reason(error)
    write_status(
        run_dir,
        f"failed: {reason}",
        error=reason,
        traceback="".join(traceback.format_exception(error)),
        host=socket.gethostname(),
        pid=os.getpid(),
    )
    return reason


def fail_abandoned_runs(
    unit: Sequence[RunConfig], results_dir: Path, pid: int, reason: str
) -> list[RunOutcome]:
    """Outcomes of a unit whose worker process ``pid`` died mid-way (out of memory, segfault).

    Its finished runs are done; every other run is failed, and those the dead process held get ``reason`` in
    their status.json and lose their lock, so the next runner retries them at once.
    """
    outcomes = []
    for config in unit:
        run_dir = results_dir / run_name(config)
        if (run_dir / METRICS_FILE).exists():
            outcomes.append(RunOutcome(run_dir.name, "done"))
            continue
        owner = locks.read_owner(run_dir)
        if owner is not None and owner.pid == pid:
            try:
                write_status(run_dir, f"failed: {reason}", error=reason)
            except AblationError:  # a full disk: the outcome still says why; the stale lock goes regardless
                pass
            locks.lock_path(run_dir).unlink(missing_ok=True)
        outcomes.append(RunOutcome(run_dir.name, "failed", reason))
    return outcomes
