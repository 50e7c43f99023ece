"""Which run a run starts from (``train.init_from``): the reference's ``UCTransNet_pretrain`` as grid settings.

The reference code trains UCTransNet (Wang et al., AAAI 2022) by default after copying into it the weights of a
trained U-Net whose state-dict names and shapes match. Here any run may start that way: ``train.init_from =
"unet/1111"`` names its *source*, the run with that connector and skip subset that shares the dependent run's
:data:`SHARED_SETTINGS`:

- the data: ``dataset`` and ``interpolation`` (how images are resized);
- the split and the seed: ``fold``, ``repeat``, ``num_folds``, ``seed``, so the source never saw the dependent's
  validation or test images (the engine also compares the image names of both runs' splits);
- the network's size: ``model.base_channels``, ``model.img_size``, ``model.in_channels``, ``model.num_classes``.

Its other settings (epoch budget, learning rate, precision, CCT settings, its own ``init_from``) are its own; in
a grid they are the grid's, and a grid holds one run per connector, subset, dataset, split and seed. The source
is a run of the same results folder, so a results folder stays self-contained; its folder name (which ends with
its run id) is the dependent's ``train.init_from_run``, part of the dependent's identity: a source whose config
changes makes its dependents new runs. No torch import.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ablation.config import RunConfig
from ablation.errors import AblationError
from ablation.store.layout import METRICS_FILE, run_name
from ablation.store.readers import read_run_config
from ablation.store.state import read_run_state

# What a source shares with the runs that start from it (dotted RunConfig keys).
SHARED_SETTINGS = (
    "dataset",
    "interpolation",
    "fold",
    "repeat",
    "num_folds",
    "seed",
    "model.base_channels",
    "model.img_size",
    "model.in_channels",
    "model.num_classes",
)


def _setting(config: RunConfig, key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def setting_mismatch(source: RunConfig, dependent: RunConfig) -> str | None:
    """The first of :data:`SHARED_SETTINGS` in which ``source`` and ``dependent`` differ, as text, or None."""
    for key in SHARED_SETTINGS:
        if _setting(source, key) != _setting(dependent, key):
            return f"{key} {_setting(source, key)!r} (the run: {_setting(dependent, key)!r})"
    return None


def run_label(config: RunConfig) -> str:
    """A run's name without its hash (``glas_uctransnet_1111_s0_r0f0``): stable while its source is resolved."""
    return run_name(config).rsplit("_", 1)[0]


def selector(config: RunConfig) -> str:
    """The ``<connector>/<skips>`` of a config itself, the form ``train.init_from`` names it by."""
    return f"{config.model.connector}/{config.model.skips}"


def find_source(config: RunConfig, candidates: Sequence[RunConfig], where: str) -> int:
    """The index among ``candidates`` of the run ``config`` starts from (``config.train.init_from``).

    Args:
        config: a run with a non-empty ``train.init_from``.
        candidates: the runs it may start from (a grid's runs, which may include ``config`` itself, or the runs
            of a results folder).
        where: how messages name the candidates (``of this grid``, ``in results/x``).

    Raises:
        AblationError: one line naming the run, its init_from value and the valid choices, when no candidate
            or several candidates match.
    """
    wanted = config.train.init_from
    sharing = [i for i, c in enumerate(candidates) if setting_mismatch(c, config) is None]
    named = [i for i in sharing if selector(candidates[i]) == wanted]
    if len(named) == 1:
        return named[0]
    label = run_label(config)
    if not named:
        others = [i for i in sharing if run_label(candidates[i]) != label]
        choices = ", ".join(f"'{c}'" for c in dict.fromkeys(selector(candidates[i]) for i in others))
        raise AblationError(
            f"run {label}: train.init_from {wanted!r} names no run {where} with its dataset, split, seed, width "
            f"and image size; valid choices: {choices + ', ' if choices else ''}'' for random weights"
        )
    names = ", ".join(run_name(candidates[i]) for i in named)
    raise AblationError(
        f"run {label}: train.init_from {wanted!r} matches {len(named)} runs {where} ({names}); name one run "
        "folder (ablation train --init-from RUN_DIR)"
    )


def resolve_sources(configs: Sequence[RunConfig]) -> list[RunConfig]:
    """The runs of a grid with ``train.init_from_run`` filled in: each source is found among ``configs``.

    Sources are resolved before their dependents (a source's own name depends on its source), so chains work.

    Raises:
        AblationError: one line naming the run and its init_from value, for a missing or ambiguous source
            (with the valid choices), a run that starts from itself, or a cycle (with the chain).
    """
    configs = list(configs)
    source_of = {
        index: find_source(config, configs, "of this grid")
        for index, config in enumerate(configs)
        if config.train.init_from
    }
    resolved: dict[int, RunConfig] = {}
    for start in range(len(configs)):
        chain: list[int] = []
        index = start
        while index not in resolved and index in source_of:  # walk to a resolved run or a random start
            if index in chain:
                raise _cycle_error([configs[i] for i in chain[chain.index(index) :]])
            chain.append(index)
            index = source_of[index]
        if index not in resolved:
            resolved[index] = _with_source(configs[index], "")
        for dependent in reversed(chain):
            resolved[dependent] = _with_source(configs[dependent], run_name(resolved[source_of[dependent]]))
    return [resolved[index] for index in range(len(configs))]


def _cycle_error(loop: list[RunConfig]) -> AblationError:
    """The error for runs that start from each other in a loop (``loop[i]`` starts from ``loop[i + 1]``)."""
    first = loop[0]
    where = f"run {run_label(first)}: train.init_from {first.train.init_from!r}"
    if len(loop) == 1:
        return AblationError(f"{where} names the run itself: name another run or '' (random weights)")
    steps = " -> ".join(selector(config) for config in [*loop, first])
    return AblationError(f"{where} forms a cycle ({steps}): give one of them '' (random weights)")


def _with_source(config: RunConfig, name: str) -> RunConfig:
    if config.train.init_from_run == name:
        return config
    return dataclasses.replace(config, train=dataclasses.replace(config.train, init_from_run=name))


def source_dir(config: RunConfig, run_dir: str | Path) -> Path | None:
    """The folder of the run ``config`` starts from (beside its own ``run_dir``), or None for random weights."""
    if not config.train.init_from:
        return None
    if not config.train.init_from_run:
        raise AblationError(
            f"run {run_label(config)}: train.init_from {config.train.init_from!r} is not resolved to a run; "
            "expand grids with ablation.grid.expand_spec (or ablation.sources.resolve_sources)"
        )
    return Path(run_dir).parent / config.train.init_from_run


def check_source(config: RunConfig, run_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    """The source run's folder and config.json record, after checking it is done and fits ``config``.

    Raises:
        AblationError: one line naming the source folder: missing, not done, its config.json unreadable or of
            another run, or a shared setting that differs.
    """
    folder = source_dir(config, run_dir)
    if folder is None:
        raise AblationError(f"run {run_label(config)} starts from random weights (no train.init_from)")
    what = f"source run {folder} (train.init_from {config.train.init_from!r})"
    status, detail, _ = read_run_state(folder)  # done only when its files prove it
    if status != "done":
        reason = f"no {METRICS_FILE}" if status != "damaged" else f"damaged: {detail}"
        raise AblationError(f"{what} is not done ({reason}): train it first")
    source, record = read_run_config(folder)
    if run_name(source) != folder.name:
        raise AblationError(f"{what}: its config.json is of run {run_name(source)}, not of that folder")
    mismatch = setting_mismatch(source, config)
    if mismatch is not None or selector(source) != config.train.init_from:
        raise AblationError(f"{what} does not fit: {mismatch or 'connector/skips ' + selector(source)}")
    return folder, record


def resolve_in_folder(
    config: RunConfig, results_dir: str | Path, run_folder: str | Path | None = None
) -> RunConfig:
    """``config`` with its source found among the runs of ``results_dir`` (``ablation train``, outside a grid).

    Args:
        config: the run; its ``train.init_from`` names the source by connector and skip subset (unless
            ``run_folder`` is given).
        results_dir: the results folder the run goes to; the source must be one of its runs.
        run_folder: a run folder of ``results_dir`` to start from instead (its connector and skip subset become
            ``train.init_from``).

    Returns:
        ``config`` with ``train.init_from`` and ``train.init_from_run`` set (unchanged without either).

    Raises:
        AblationError: one line: no or several matching runs (with the valid choices), a run folder outside
            ``results_dir`` or one that does not fit, or a source that is not done.
    """
    results_dir = Path(results_dir)
    if run_folder is not None:
        folder = Path(run_folder)
        if folder.resolve().parent != results_dir.resolve():
            raise AblationError(
                f"--init-from {folder}: the run to start from must be a run folder of the results folder "
                f"{results_dir} (a results folder holds its runs' sources)"
            )
        source, _ = read_run_config(folder)
        mismatch = setting_mismatch(source, config)
        if mismatch is not None:
            raise AblationError(f"--init-from {folder} does not fit this run: {mismatch}")
        config = _with_init_from(config, selector(source))
        names = [folder.name]
    elif not config.train.init_from:
        return config
    else:
        own = _with_init_from(config, config.train.init_from)
        found = []
        for folder in sorted(results_dir.iterdir()) if results_dir.is_dir() else []:
            try:
                candidate, _ = read_run_config(folder)
            except AblationError:
                continue  # not a run folder, or a damaged one: never a source
            if _with_init_from(candidate, candidate.train.init_from) != own:  # the run itself, started before
                found.append((folder.name, candidate))
        index = find_source(config, [candidate for _, candidate in found], f"in {results_dir}")
        names = [found[index][0]]
    resolved = _with_source(config, names[0])
    if not (results_dir / names[0] / METRICS_FILE).exists():
        raise AblationError(
            f"source run {results_dir / names[0]} (train.init_from {resolved.train.init_from!r}) is not done: "
            "train it first"
        )
    return resolved


def _with_init_from(config: RunConfig, init_from: str) -> RunConfig:
    """``config`` with ``train.init_from`` set and ``train.init_from_run`` cleared."""
    train = dataclasses.replace(config.train, init_from=init_from, init_from_run="")
    return dataclasses.replace(config, train=train)
