"""Which runs can train together as one pack (``ablation.train.train_packed``), and how many fit. No torch import.

The grid runner groups pending runs with :func:`group_for_packing`; the engine checks its input with
:func:`can_pack`. Runs of a pack share dataset, model settings and training settings; they may differ in seed,
fold and repeat and, for connectors whose skips can be zeroed without changing the function (``unet``, ``cca``),
in skip subset. So one pack can hold all 16 subsets x 3 seeds of a dataset (48 runs), and runs of different folds.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from ablation.config import CONNECTORS, RunConfig, to_dict
from ablation.errors import AblationError
from ablation.skips import NUM_SKIPS
from ablation.store.layout import run_id

# Connectors whose skips can be zeroed instead of removed without changing the function (Connector.maskable).
MASKABLE_CONNECTORS = tuple(name for name, connector in CONNECTORS.items() if connector.maskable)
MAX_AUTO_PACK = 48  # 16 skip subsets x 3 seeds of one dataset


def pack_key(config: RunConfig) -> str:
    """What all variants of a pack share: everything but seed and split, and the skips where they can be masked."""
    model = config.model
    if model.connector in MASKABLE_CONNECTORS:
        model = dataclasses.replace(model, skips="1" * NUM_SKIPS)
    shared = {
        "dataset": config.dataset,
        "data_root": config.data_root,
        "interpolation": config.interpolation,
        "num_folds": config.num_folds,
        "model": to_dict(model),
        # test_time_masks only adds an evaluation after training, so it does not keep runs from sharing a pack;
        # init_from_run is each run's own source (of its seed and split): init_from, shared, says which kind
        "train": {
            k: v for k, v in to_dict(config.train).items() if k not in ("test_time_masks", "init_from_run")
        },
    }
    return repr(sorted(shared.items()))


def can_pack(configs: Sequence[RunConfig]) -> bool:
    """Whether these runs can train as one pack.

    They must share dataset, data root, model settings (connector, width, size, ...) and every training setting;
    they may differ in seed, fold and repeat, and (``unet`` and ``cca`` only) in skip subset. Runs with the same
    identity cannot share a pack. Runs that start from other runs share ``train.init_from`` and may differ in
    ``train.init_from_run`` (each starts from the run of its own seed and split), so a run and its source,
    whose ``init_from`` always differ, never share a pack. Train sets of unequal size (folds of a pool that does not divide evenly) are
    allowed: the packed trainer splits them into sub-packs of equal size.
    """
    if not configs:
        return False
    keys = {pack_key(config) for config in configs}
    ids = {run_id(config) for config in configs}
    return len(keys) == 1 and len(ids) == len(configs)


def group_for_packing(configs: Sequence[RunConfig], max_pack: int) -> list[list[RunConfig]]:
    """Split runs into packs of at most ``max_pack`` that :func:`can_pack` accepts.

    Runs are grouped by what they must share; within a group they are ordered by split (repeat, fold) so that a
    pack tends to hold one train set, and cut into packs of nearly equal size (no small leftover pack). Every run
    lands in exactly one pack; a duplicate run (same identity) starts a pack of its own.

    Raises:
        AblationError: ``max_pack`` below 1.
    """
    if max_pack < 1:
        raise AblationError(f"pack_size must be >= 1, got {max_pack}")
    groups: dict[tuple[str, int], list[RunConfig]] = {}
    seen: dict[str, int] = {}
    for config in configs:
        identity = run_id(config)
        copy_index = seen.get(identity, 0)  # duplicates go to separate groups, never into one pack
        seen[identity] = copy_index + 1
        groups.setdefault((pack_key(config), copy_index), []).append(config)
    packs: list[list[RunConfig]] = []
    for members in groups.values():
        members = sorted(members, key=lambda c: (c.repeat, -1 if c.fold is None else c.fold))
        count = math.ceil(len(members) / max_pack)
        size, extra = divmod(len(members), count)
        start = 0
        for index in range(count):
            stop = start + size + (1 if index < extra else 0)
            packs.append(members[start:stop])
            start = stop
    return packs


def estimated_variant_bytes(config: RunConfig) -> float:
    """Rough peak training memory of one packed variant: ``Connector.packed_gib`` (base 64, 224 px, batch 4)
    scaled by batch, area and width."""
    model = config.model
    scale = (config.train.batch_size / 4) * (model.img_size / 224) ** 2 * (model.base_channels / 64)
    return CONNECTORS[model.connector].packed_gib * 1024**3 * scale


def auto_pack_size(configs: Sequence[RunConfig], device_bytes: float, fraction: float = 0.7) -> int:
    """Variants per pack that fit ``fraction`` of a GPU's memory, between 1 and :data:`MAX_AUTO_PACK`."""
    if not configs:
        return 1
    largest = max(estimated_variant_bytes(config) for config in configs)
    return max(1, min(MAX_AUTO_PACK, int(fraction * device_bytes // max(largest, 1.0))))
