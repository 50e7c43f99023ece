"""Local scheduling: worker processes on this machine, one (or a few) per GPU, or CPU workers without a GPU.

Workers are started with the ``spawn`` context, so each is a fresh interpreter: it sets CUDA_VISIBLE_DEVICES to
its GPU and the thread count *before* torch is imported there (``train_unit`` is sent pickled and unpickled
only after that), then executes units with :func:`ablation.grid.execute.execute_unit`. A unit is handed out only once the units
holding its runs' sources have finished (:class:`ablation.grid.order.UnitOrder`). GPUs are found by
:mod:`ablation.grid.gpus` without torch. Workers die with the runner (Linux ``PR_SET_PDEATHSIG``), so a killed
runner leaves stale locks that the next runner breaks, not orphans that keep training.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ablation.config import RunConfig
from ablation.errors import AblationError

from .execute import RunOutcome, TrainUnit, execute_unit, fail_abandoned_runs
from .gpus import available_cores, detect_gpus
from .order import UnitOrder

POLL_SECONDS = 0.2
# The most worker processes one runner starts (each imports torch, ~0.3 GB of memory before any data): as many
# as the largest machines have cores. More would exhaust memory, not train faster.
MAX_WORKERS = 256


def check_workers(value: int | None, flag: str) -> None:
    """``--workers``-like counts are None (the default) or in 1..:data:`MAX_WORKERS`.

    Raises:
        AblationError: naming ``flag`` and the valid range.
    """
    if value is not None and not 1 <= value <= MAX_WORKERS:
        shown = value if abs(value) < 10**12 else f"an integer of {len(str(abs(value)))} digits"
        raise AblationError(f"{flag} must be in 1..{MAX_WORKERS}, got {shown}")


def worker_devices(workers: int | None, gpus: Sequence[str] | None, workers_per_gpu: int) -> list[str | None]:
    """The GPU each worker is pinned to (None: a CPU worker), round-robin over the GPUs."""
    check_workers(workers_per_gpu, "--workers-per-gpu")
    check_workers(workers, "--workers")
    devices = list(gpus) if gpus is not None else detect_gpus()
    if not devices:
        return [None] * (workers or 1)
    count = workers or len(devices) * workers_per_gpu
    check_workers(count, "--workers (GPUs x --workers-per-gpu)")
    return [devices[index % len(devices)] for index in range(count)]


def run_units_local(
    units: Sequence[Sequence[RunConfig]],
    results_dir: Path,
    *,
    workers: int | None,
    gpus: Sequence[str] | None,
    workers_per_gpu: int,
    train_unit: TrainUnit | None,
    retry_failed: bool,
    progress: bool,
    on_outcomes: Callable[[list[RunOutcome]], None],
    rerun_stale: bool = False,
) -> None:
    """Execute the units here (one worker, no GPUs named) or in spawned worker processes, sources first."""
    if not units:
        return
    devices = [None] if gpus is None and workers == 1 else worker_devices(workers, gpus, workers_per_gpu)
    if gpus is None and devices == [None]:  # one CPU worker (or --workers 1): simplest to debug in-process
        show_run_bars = progress and sys.stderr.isatty()
        order = UnitOrder(units)
        while not order.all_started:
            for index in order.ready():
                outcomes = execute_unit(
                    units[index], results_dir, train_unit=train_unit, progress=show_run_bars,
                    retry_failed=retry_failed, rerun_stale=rerun_stale,
                )  # fmt: skip
                order.finish(index)
                on_outcomes(outcomes)
        return
    options = {"retry_failed": retry_failed, "rerun_stale": rerun_stale}
    _run_in_workers(units, results_dir, devices[: len(units)], train_unit, options, on_outcomes)


def _run_in_workers(
    units: Sequence[Sequence[RunConfig]],
    results_dir: Path,
    devices: list[str | None],
    train_unit: TrainUnit | None,
    options: dict[str, bool],
    on_outcomes: Callable[[list[RunOutcome]], None],
) -> None:
    """``options``: the keyword flags every worker passes to :func:`execute_unit` (retry_failed, rerun_stale)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    tasks = context.Queue()
    # A SimpleQueue's put writes to the pipe before returning, so a worker's "start" message is never lost when
    # the worker is killed right after sending it (a Queue's feeder thread would die with it).
    results = context.SimpleQueue()
    order = UnitOrder(units)

    def hand_out() -> None:
        """Queue the units that may start now; once every unit is queued, one stop sign per worker."""
        if order.all_started:
            return
        for index in order.ready():
            tasks.put((index, list(units[index])))
        if order.all_started:
            for _ in devices:
                tasks.put(None)

    hand_out()
    threads = max(1, available_cores() // len(devices))
    payload = pickle.dumps(train_unit)

    def start(slot: int) -> Any:
        process = context.Process(
            target=_worker_main,
            args=(
                slot,
                devices[slot],
                threads,
                os.getpid(),
                str(results_dir),
                payload,
                options,
                tasks,
                results,
            ),
            name=f"ablation-grid-worker-{slot}",
            daemon=True,
        )
        process.start()
        return process

    processes = {slot: start(slot) for slot in range(len(devices))}
    in_flight: dict[int, int] = {}  # slot -> unit index
    remaining = set(range(len(units)))

    def finish(index: int, outcomes: list[RunOutcome]) -> None:
        remaining.discard(index)
        order.finish(index)
        on_outcomes(outcomes)
        hand_out()

    try:
        while remaining:
            if results.empty():  # messages of a worker that died are read before it is declared dead
                _replace_dead_workers(processes, in_flight, units, results_dir, finish, start)
                if not any(p.is_alive() for p in processes.values()) and remaining:
                    raise AblationError("every grid worker exited before the grid finished")
                time.sleep(POLL_SECONDS)
                continue
            kind, slot, index, outcomes = results.get()
            if kind == "start":
                in_flight[slot] = index
            else:
                in_flight.pop(slot, None)
                finish(index, outcomes)
    finally:
        for process in processes.values():
            if process.is_alive() and remaining:
                process.terminate()  # interrupted: their runs stay resumable (status running, stale lock)
        for process in processes.values():
            process.join(timeout=30)
        tasks.cancel_join_thread()
        results.close()


def _replace_dead_workers(
    processes: dict[int, Any],
    in_flight: dict[int, int],
    units: Sequence[Sequence[RunConfig]],
    results_dir: Path,
    finish: Callable[[int, list[RunOutcome]], None],
    start: Callable[[int], Any],
) -> None:
    """A worker that died mid-unit (out of memory, segfault) fails that unit's unfinished runs; it is replaced."""
    for slot, process in list(processes.items()):
        if process.is_alive() or slot not in in_flight:
            continue
        index = in_flight.pop(slot)
        reason = f"worker process died with exit code {process.exitcode}"
        processes[slot] = start(slot)
        finish(index, fail_abandoned_runs(units[index], results_dir, process.pid, reason))


def _worker_main(
    slot: int,
    device: str | None,
    threads: int,
    parent_pid: int,
    results_dir: str,
    payload: bytes,
    options: dict[str, bool],
    tasks: Any,
    results: Any,
) -> None:
    """A worker process: pin the GPU and threads, then execute units from ``tasks`` until the stop sign."""
    _die_with_parent(parent_pid)
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(threads)
    import torch  # only now: CUDA_VISIBLE_DEVICES and the thread variables are read at import

    torch.set_num_threads(threads)
    train_unit = pickle.loads(payload)
    while True:
        task = tasks.get()
        if task is None:
            return
        index, unit = task
        results.put(("start", slot, index, None))
        outcomes = execute_unit(unit, results_dir, train_unit=train_unit, progress=False, **options)
        results.put(("outcomes", slot, index, outcomes))


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this worker when the runner dies, so no orphan keeps training (and holding locks)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: an orphan may go on with the units left in the queue
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
