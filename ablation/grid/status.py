"""Where each run of a results folder stands: done, running, failed, pending or damaged. No torch import.

The run folder's files decide (:func:`ablation.store.read_run_state`, shared with the report); a live lock
(:mod:`ablation.grid.locks`) makes an unfinished run ``running``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ablation.config import RunConfig
from ablation.store import CONFIG_FILE, METRICS_FILE, STATUS_FILE, read_run_state, recorded_runs, run_name

from . import locks


@dataclass(frozen=True)
class RunState:
    """Where one run stands in a results folder.

    Attributes:
        name: the run folder's name.
        status: ``done``, ``running`` (a live runner holds its lock), ``failed``, ``pending`` or ``damaged``
            (a file of the run folder cannot be read; see :func:`ablation.store.done_run_problem`).
        detail: the error of a failed run, the lock owner of a running one, ``interrupted at epoch E`` for a
            pending run that will resume from its checkpoint, the file and reason for a damaged one.
    """

    name: str
    status: str
    detail: str = ""


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


def _run_folders(results_dir: str | Path) -> list[str]:
    root = Path(results_dir)
    if not root.is_dir():
        return []
    marks = (CONFIG_FILE, locks.LOCK_FILE, STATUS_FILE)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and any((p / m).exists() for m in marks))
