"""Ray backend: every unit of work is a Ray task, on a local Ray instance or a cluster (``pip install .[ray]``).

A task reserves one GPU when the cluster has GPUs (Ray then sets its CUDA_VISIBLE_DEVICES) and ``cpus_per_run``
CPUs. Tasks write run folders straight into the results folder, which on a multi-node cluster must be a shared
file system mounted at the same path on every node (``--storage``). Tasks claim runs with the same lock files as
local workers, so a Ray grid and a local runner can share one folder; a lock held by a task on another node
cannot be checked for liveness and is respected until removed. A unit is submitted only once the units holding
its runs' sources have finished (:class:`ablation.grid.order.UnitOrder`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ablation.config import RunConfig
from ablation.errors import AblationError
from ablation.store import run_name

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
) -> None:
    """Submit one task per unit, sources first, and report outcomes as tasks finish.

    Connects to ``address`` (a cluster), or to an already initialised Ray, or starts a local instance that is
    shut down again at the end.
    """
    if cpus_per_run < 1:
        raise AblationError(f"--cpus-per-run must be >= 1, got {cpus_per_run}")
    if not units:
        return
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=True)
        except (ConnectionError, ValueError, RuntimeError) as error:
            raise AblationError(
                f"cannot connect to Ray at {address or 'a new local instance'}: {error}"
            ) from None
    try:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        task = ray.remote(_ray_task).options(num_cpus=cpus_per_run, num_gpus=gpus, max_retries=0)
        order = UnitOrder(units)
        pending: dict[Any, int] = {}

        def submit() -> None:
            for index in order.ready():
                ref = task.remote(
                    list(units[index]), str(results_dir), train_unit, retry_failed, cpus_per_run
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
    finally:
        if started_here:
            ray.shutdown()


def _ray_task(
    unit: list[RunConfig], results_dir: str, train_unit: TrainUnit | None, retry_failed: bool, threads: int
) -> list[RunOutcome]:
    """Runs inside a Ray worker: Ray has set CUDA_VISIBLE_DEVICES; limit torch's threads to the CPUs reserved."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    return execute_unit(unit, results_dir, train_unit=train_unit, progress=False, retry_failed=retry_failed)
