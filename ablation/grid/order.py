"""The order of a grid's units: a run that starts from another run's weights (``train.init_from``, see
:mod:`ablation.sources`) is trained only after that source run is settled.

:class:`UnitOrder` tells a backend which units may start: a unit waits until every unit holding the source of
one of its runs has finished. :func:`check_sources` refuses, before any run starts, a run whose source is neither
among the runs to train nor done in the results folder (a ``--only`` that left it out). When a dependent unit
starts, :func:`source_problem` says whether a run's source is done; a run whose source failed is failed with a
one-line reason naming the source (:func:`ablation.grid.execute.execute_unit`). No torch import here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ablation.config import RunConfig
from ablation.errors import AblationError
from ablation.sources import run_label
from ablation.store.layout import run_name

from .status import run_state


def _unresolved(config: RunConfig) -> AblationError:
    return AblationError(
        f"run {run_label(config)}: train.init_from {config.train.init_from!r} is not resolved to a run; expand "
        "grids with ablation.grid.expand_spec (or ablation.sources.resolve_sources)"
    )


def check_sources(configs: Sequence[RunConfig], results_dir: str | Path) -> None:
    """Refuse runs whose source will not be there: unresolved, or neither among ``configs`` nor done.

    Raises:
        AblationError: one line naming the run, its init_from value, the source and what to do.
    """
    names = {run_name(config) for config in configs}
    for config in configs:
        source = config.train.init_from_run
        if config.train.init_from and not source:
            raise _unresolved(config)
        if not source or source in names:
            continue
        state = run_state(results_dir, source)
        if state.status != "done":
            raise AblationError(
                f"run {run_name(config)} starts from run {source} (train.init_from "
                f"{config.train.init_from!r}), which is {state.status} in {results_dir} and not among the runs "
                "to train: select it too (widen --only) or train it first"
            )


def source_problem(config: RunConfig, results_dir: str | Path) -> str | None:
    """Why ``config`` cannot start from its source now (a one-line reason naming it), or None."""
    source = config.train.init_from_run
    if not config.train.init_from:
        return None
    if not source:
        raise _unresolved(config)
    state = run_state(results_dir, source)
    if state.status == "done":
        return None
    detail = f": {state.detail}" if state.detail and state.status in ("failed", "damaged") else ""
    return f"source run {source} (train.init_from {config.train.init_from!r}) is {state.status}{detail}"


class UnitOrder:
    """Which units of a grid may start: those whose runs' sources are in finished units (or in none).

    Args:
        units: the grid's units in planned order (:func:`ablation.grid.runner.plan_units`).

    Raises:
        AblationError: a unit holding a run and its source (units must never mix them).
    """

    def __init__(self, units: Sequence[Sequence[RunConfig]]) -> None:
        holder = {run_name(config): index for index, unit in enumerate(units) for config in unit}
        self.waits: list[set[int]] = []
        for index, unit in enumerate(units):
            sources = {holder[c.train.init_from_run] for c in unit if c.train.init_from_run in holder}
            if index in sources:
                raise AblationError(f"a unit holds a run and its source: {[run_name(c) for c in unit]}")
            self.waits.append(sources)
        self.unstarted = list(range(len(units)))
        self.finished: set[int] = set()

    def ready(self) -> list[int]:
        """The units that may start now, in planned order; they count as started.

        Raises:
            AblationError: when nothing can start although units remain and none is running (a cycle).
        """
        ready = [index for index in self.unstarted if self.waits[index] <= self.finished]
        self.unstarted = [index for index in self.unstarted if index not in ready]
        running = len(self.waits) - len(self.unstarted) - len(self.finished) - len(ready)
        if not ready and self.unstarted and not running:
            raise AblationError(f"units {self.unstarted} wait for each other's runs (train.init_from cycle)")
        return ready

    def finish(self, index: int) -> None:
        """Record that unit ``index`` is finished (whatever its runs' outcomes)."""
        self.finished.add(index)

    @property
    def all_started(self) -> bool:
        return not self.unstarted
