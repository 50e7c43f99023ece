"""Ray backend: every unit of work is a Ray task, on a local Ray instance or a cluster (``pip install .[ray]``).

A task reserves one GPU when the cluster has GPUs (Ray then sets its CUDA_VISIBLE_DEVICES) and ``cpus_per_run``
CPUs. Tasks write run folders straight into the results folder, which on a multi-node cluster must be a shared
file system mounted at the same path on every node (``--storage``). Tasks claim runs with the same lock files as
local workers, so a Ray grid and a local runner can share one folder; a lock held by a task on another node
cannot be checked for liveness and is respected until removed. A unit is submitted only once the units holding
its runs' sources have finished (:class:`ablation.grid.order.UnitOrder`).

A local instance this runner starts is shut down however the runner ends: normally, on an error, on Ctrl-C
(SIGINT) or SIGTERM, also while Ray is still starting, so no Ray process outlives it. Tasks it interrupts leave
their runs resumable (a stale lock, a checkpoint), as a killed local worker does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ablation.config import RunConfig
from ablation.errors import AblationError
from ablation.store.layout import run_name

from .execute import RunOutcome, TrainUnit, execute_unit
from .order import UnitOrder


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise AblationError("the Ray backend needs ray: pip install '.[ray]' (or pip install ray)") from None
    return ray


def run_units_ray(
    units: Sequence[Sequence[RunConfig]],
    results_dir: Path,
    *,
    address: str | None,
    cpus_per_run: int,
    train_unit: TrainUnit | None,
    retry_failed: bool,
    on_outcomes: Callable[[list[RunOutcome]], None],
    rerun_stale: bool = False,
) -> None:
    """Submit one task per unit, sources first, and report outcomes as tasks finish.

    Connects to ``address`` (a cluster), or to an already initialised Ray, or starts a local instance that is
    shut down again at the end (also when interrupted: SIGTERM ends the runner as Ctrl-C does).

    Raises:
        AblationError: Ray cannot be reached, or ``cpus_per_run`` exceeds the CPUs of the cluster (a task
            could never be scheduled).
    """
    if cpus_per_run < 1:
        raise AblationError(f"--cpus-per-run must be >= 1, got {cpus_per_run}")
    if not units:
        return
    ray = import_ray()
    started_here = not ray.is_initialized()
    with _terminate_as_exit():
        try:
            if started_here:
                _init(ray, address)
            _run(ray, units, results_dir, cpus_per_run, train_unit, retry_failed, rerun_stale, on_outcomes)
        finally:
            if started_here:
                ray.shutdown()  # however this ends: an error, Ctrl-C or SIGTERM


def _init(ray: Any, address: str | None) -> None:
    """``ray.init``, with Ctrl-C and SIGTERM held back until it returns: interrupted half-way, it leaves Ray's
    agent processes running with nothing to shut them down (a second signal still interrupts at once)."""
    with _signals_deferred() as received:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=True)
        except (ConnectionError, ValueError, RuntimeError) as error:
            raise AblationError(
                f"cannot connect to Ray at {address or 'a new local instance'}: {error}"
            ) from None
    if received:
        raise KeyboardInterrupt(f"signal {received[0]}")


@contextlib.contextmanager
def _signals_deferred() -> Iterator[list[int]]:
    """Record SIGINT and SIGTERM instead of acting on them (a repeated one acts at once); afterwards SIGINT
    raises KeyboardInterrupt again and SIGTERM gets :func:`_exit_on_sigterm` (ray.init installs its own SIGTERM
    handler, which aborts the process and skips the shutdown)."""
    received: list[int] = []
    if not _in_main_thread():
        yield received
        return

    def defer(signum: int, frame: Any) -> None:
        if received:
            raise KeyboardInterrupt(f"signal {signum}")
        received.append(signum)

    previous = signal.signal(signal.SIGINT, defer)
    signal.signal(signal.SIGTERM, defer)
    try:
        yield received
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _run(
    ray: Any,
    units: Sequence[Sequence[RunConfig]],
    results_dir: Path,
    cpus_per_run: int,
    train_unit: TrainUnit | None,
    retry_failed: bool,
    rerun_stale: bool,
    on_outcomes: Callable[[list[RunOutcome]], None],
) -> None:
    resources = ray.cluster_resources()
    if cpus_per_run > resources.get("CPU", 0):
        raise AblationError(
            f"--cpus-per-run {cpus_per_run} exceeds the {resources.get('CPU', 0):g} CPUs of the Ray cluster: "
            "no task could ever start; choose at most that many"
        )
    gpus = 1 if resources.get("GPU", 0) >= 1 else 0
    task = ray.remote(_ray_task).options(num_cpus=cpus_per_run, num_gpus=gpus, max_retries=0)
    order = UnitOrder(units)
    pending: dict[Any, int] = {}

    def submit() -> None:
        for index in order.ready():
            ref = task.remote(
                list(units[index]), str(results_dir), train_unit, retry_failed, rerun_stale, cpus_per_run
            )
            pending[ref] = index

    submit()
    while pending:
        finished, _ = ray.wait(list(pending), num_returns=1)
        index = pending.pop(finished[0])
        unit = units[index]
        try:
            outcomes = ray.get(finished[0])
        except ray.exceptions.RayError as error:  # the task's worker died (node lost, out of memory)
            reason = f"Ray task failed: {type(error).__name__}: {str(error).splitlines()[0]}"
            outcomes = [RunOutcome(run_name(config), "failed", reason) for config in unit]
        order.finish(index)
        on_outcomes(outcomes)
        submit()


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    # KeyboardInterrupt, not SystemExit: Ray's blocking calls turn a SystemExit into SystemExit(1), but let an
    # interrupt through, and the CLI reports it as one (exit status 130).
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """While Ray runs from here, SIGTERM raises KeyboardInterrupt as SIGINT does (so ``finally`` blocks shut Ray
    down) instead of killing the process at once; the previous handler comes back afterwards. Only the main
    thread can set it."""
    if not _in_main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _ray_task(
    unit: list[RunConfig],
    results_dir: str,
    train_unit: TrainUnit | None,
    retry_failed: bool,
    rerun_stale: bool,
    threads: int,
) -> list[RunOutcome]:
    """Runs inside a Ray worker: Ray has set CUDA_VISIBLE_DEVICES; limit torch's threads to the CPUs reserved."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    return execute_unit(
        unit,
        results_dir,
        train_unit=train_unit,
        progress=False,
        retry_failed=retry_failed,
        rerun_stale=rerun_stale,
    )
