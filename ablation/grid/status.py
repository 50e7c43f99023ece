"""Where each run of a results folder stands: done, running, failed, pending or damaged. No torch import.

The run folder's files decide (:func:`ablation.store.state.read_run_state`, shared with the report); a live lock
(:mod:`ablation.grid.locks`) makes an unfinished run ``running``. A done run is also checked against today's
data and splits files (:class:`ablation.store.state.StaleCheck`): a stale run is still done, with a note saying why.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ablation.config import RunConfig
from ablation.store.layout import CONFIG_FILE, METRICS_FILE, STATUS_FILE, run_dir_in, run_name
from ablation.store.state import StaleCheck, read_run_state, recorded_runs

from . import locks

RERUN_STALE = "`ablation run --rerun-stale` trains it again"


@dataclass(frozen=True)
class RunState:
    """Where one run stands in a results folder.

    Attributes:
        name: the run folder's name.
        status: ``done``, ``running`` (a live runner holds its lock), ``failed``, ``pending`` or ``damaged``
            (a file of the run folder cannot be read or does not describe the run; see
            :func:`ablation.store.state.read_run_state`).
        detail: the error of a failed run, the lock owner of a running one, ``interrupted at epoch E`` for a
            pending run that will resume from its checkpoint, the file and reason for a damaged one, and for a
            stale done run why it is stale.
        stale: a done run whose data or split changed since it ran (kept; see :class:`ablation.store.state.StaleCheck`).
    """

    name: str
    status: str
    detail: str = ""
    stale: bool = False


def stale_check() -> StaleCheck:
    """A :class:`~ablation.store.state.StaleCheck` with today's dataset fingerprints (file names, sizes, times)."""
    from ablation.data.prepare import dataset_fingerprint

    return StaleCheck(dataset_fingerprint)


def run_state(results_dir: str | Path, name: str, stale: StaleCheck | None = None) -> RunState:
    """The state of the run folder ``results_dir/name`` (which need not exist), with its lock owner if running.

    Args:
        results_dir: the results folder.
        name: the run folder's name (checked to stay inside ``results_dir``).
        stale: checks a done run against today's data and splits files; None: not checked.

    Raises:
        AblationError: ``name`` leads outside ``results_dir`` (:func:`ablation.store.layout.run_dir_in`).
    """
    run_dir = run_dir_in(results_dir, name)
    status, detail, record = read_run_state(run_dir)
    if (run_dir / METRICS_FILE).exists():
        if status == "damaged":
            return RunState(name, status, f"{detail}; `ablation run` trains it again")
        reasons = stale.reasons(run_dir) if stale is not None else []
        if reasons:
            return RunState(name, status, f"stale: {'; '.join(reasons)}; {RERUN_STALE}", stale=True)
        return RunState(name, status)
    if locks.lock_path(run_dir).exists() and locks.is_locked(run_dir):
        owner = locks.read_owner(run_dir)
        return RunState(name, "running", owner.describe() if owner else "lock being written")
    if status == "damaged":  # nothing finished is lost: the next run rewrites the status and resumes
        again = "restarts it from epoch 0" if "cannot resume" in detail else "trains it again"
        return RunState(name, "damaged", f"{detail}; `ablation run` {again}")
    if status == "failed":
        return RunState(name, "failed", detail)
    if status == "pending":
        return RunState(name, "pending")
    epoch = record.get("epoch")
    return RunState(
        name, "pending", "interrupted" + (f" at epoch {epoch}" if epoch is not None else "") + ", resumes"
    )


def iter_grid_status(
    results_dir: str | Path, configs: Sequence[RunConfig] | None = None, *, stale: bool = True
) -> Iterator[RunState]:
    """The states of :func:`grid_status`, one at a time (a long listing starts printing at once)."""
    if configs is not None:
        names: Iterable[str] = (run_name(config) for config in configs)  # named one at a time, too
    else:
        names = list(dict.fromkeys([*recorded_runs(results_dir), *_run_folders(results_dir)]))
    check = stale_check() if stale else None
    for name in names:
        yield run_state(results_dir, name, check)


def grid_status(
    results_dir: str | Path, configs: Sequence[RunConfig] | None = None, *, stale: bool = True
) -> list[RunState]:
    """States of the runs of ``configs`` in ``results_dir``; without configs, of every run the folder knows.

    A folder knows the runs in its run folders and those recorded in ``grid.json`` by ``ablation run``. With
    ``stale`` (the default), done runs are checked against today's data and splits files.

    Raises:
        AblationError: a damaged grid.json, or a run folder name that leads outside ``results_dir``.
    """
    return list(iter_grid_status(results_dir, configs, stale=stale))


def _run_folders(results_dir: str | Path) -> list[str]:
    root = Path(results_dir)
    if not root.is_dir():
        return []
    marks = (CONFIG_FILE, locks.LOCK_FILE, STATUS_FILE)
    return sorted(
        p.name
        for p in root.iterdir()
        if not p.name.startswith(".") and p.is_dir() and any((p / m).exists() for m in marks)
    )
