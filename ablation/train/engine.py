"""The training engine: K >= 1 runs of the UCTransNet protocol (Wang et al., AAAI 2022) trained in lockstep.

Adam (lr 1e-3) with CosineAnnealingWarmRestarts(T_0=10, T_mult=1, eta_min=1e-4) stepped once per epoch, loss
0.5 * BCE + 0.5 * soft Dice (:mod:`ablation.train.losses`), early stopping on the validation Dice with patience 50,
the best model kept only after epoch 5, then the best model scored on the test set (:mod:`ablation.train.metrics`).
Every number is a :class:`ablation.config.TrainConfig` field.

:func:`train_run` is the engine with one run, whose network is its own ``build_model`` network; with several runs
(:func:`train_packed`) the network is a fused pack (:class:`ablation.train.pack.Pack`). Either way there is one
epoch loop, one step, one way to report a failed run and one place that writes a run folder
(:mod:`ablation.train.run_folder`). Each run keeps its own initialisation (``torch.manual_seed(seed)`` then
``build_model``), its own generator for batch order and augmentation, its own early stopping and its own folder;
a run that stops (patience, non-finite loss) is written out and sliced out of the pack. A pack that runs out of
device memory in its first epoch is trained in halves from the same start (:func:`_train_pack`).

Speed: train splits live on the device as uint8; batches are gathered by index with each run's generator and
augmented there in one batched resampling; losses accumulate on the device and are read once per epoch, which is
also when non-finite losses are detected.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from tqdm.auto import tqdm

from ablation.config import RunConfig, TrainConfig
from ablation.errors import AblationError
from ablation.io import read_json
from ablation.packing import MASKABLE_CONNECTORS, can_pack
from ablation.store.layout import CONFIG_FILE, METRICS_FILE, run_id, run_name
from ablation.store.writers import write_status
from ablation.train.checkpoint import plain_scheduler_state
from ablation.train.device import DeviceSetup, determinism, setup_device
from ablation.train.pack import Pack
from ablation.train.run_folder import (
    Variant,
    check_trainable,
    close_log,
    end_epoch,
    finish_variant,
    has_stopped,
    log_predictions,
    prepare_variant,
    record_non_finite,
)
from ablation.train.tensorboard_log import check_tensorboard

T = TypeVar("T")


class RunFailed(AblationError):
    """A run stopped without a result (e.g. a non-finite loss); its status.json says why."""


def train_run(
    config: RunConfig, out_dir: str | Path, *, device: str | torch.device | None = None, progress: bool = True
) -> dict[str, Any]:
    """Train one run, select on validation, score on test; resume from ``checkpoint_last.pt`` when present.

    Args:
        config: the resolved run configuration.
        out_dir: the run folder (conventionally ``<results>/<ablation.store.layout.run_name(config)>``).
        device: ``cpu``, ``cuda``, ``cuda:N`` or None (CUDA when available).
        progress: show a tqdm bar (epoch, loss, validation Dice).

    Returns:
        The content of ``metrics.json`` (returned as is when the run is already done).

    Raises:
        RunFailed: a non-finite loss; ``status.json`` holds ``failed: non-finite loss at epoch E``.
        AblationError: bad input (unknown dataset, a folder that belongs to another config, ...).
    """
    (result,) = train_packed([config], [out_dir], device=device, progress=progress)
    if result["status"] != "done":
        raise RunFailed(f"run {Path(out_dir).name}: {result['status'].removeprefix('failed: ')}")
    return result


def train_packed(
    configs: Sequence[RunConfig],
    out_dirs: Sequence[str | Path],
    *,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train K runs together; each writes its own run folder, the same files as when trained alone.

    Runs already done are returned as they are. Interrupted runs resume from their own ``checkpoint_last.pt``
    (written alone or in any pack): runs at the same epoch with train and validation sets of the same size
    resume as one pack, others as separate packs, one after another.

    Args:
        configs: the runs; :func:`ablation.packing.can_pack` must accept them.
        out_dirs: one run folder per config (conventionally ``<results>/<ablation.store.layout.run_name(config)>``).
        device: ``cpu``, ``cuda``, ``cuda:N`` or None (CUDA when available).
        progress: a tqdm bar per pack (epoch, runs still training, best validation Dice).

    Returns:
        Per run, in the given order: the content of its ``metrics.json``, or for a run whose loss became
        non-finite ``{"status": "failed: non-finite loss at epoch E", "run_id": ..., "run_name": ...}`` (that
        run's status.json says the same; the others carry on).

    Raises:
        AblationError: runs that cannot share a pack, a folder that belongs to another run, bad input.
    """
    configs = list(configs)
    out_dirs = [Path(out_dir) for out_dir in out_dirs]
    if len(configs) != len(out_dirs):
        raise AblationError(f"train_packed: {len(configs)} configs but {len(out_dirs)} run folders")
    if len({path.resolve() for path in out_dirs}) != len(out_dirs):
        raise AblationError("train_packed: two runs of a pack share a run folder")
    if not can_pack(configs):
        raise AblationError(
            "train_packed: these runs cannot share a pack (they must differ only in seed, split and, for "
            f"{' and '.join(MASKABLE_CONNECTORS)}, skip subset): group them with group_for_packing"
        )
    for config in configs:
        check_trainable(config)
    check_tensorboard(configs)
    cfg = configs[0].train
    # The device is checked even when every run is done: a wrong device must not pass silently.
    setup = setup_device(device, precision=cfg.precision, channels_last=cfg.channels_last)
    results: list[dict[str, Any] | None] = [None] * len(configs)
    pending = []
    for position, out_dir in enumerate(out_dirs):
        if (out_dir / METRICS_FILE).exists():
            record, own_id = read_json(out_dir / METRICS_FILE), run_id(configs[position])
            if (
                not isinstance(record, dict)
                or record.get("status") != "done"
                or record.get("run_id") != own_id
            ):
                raise AblationError(  # done only when its own finished record says so
                    f"{out_dir / METRICS_FILE} is not the finished record of run {own_id}: move the folder away "
                    "to train it again (`ablation run` does so itself)"
                )
            results[position] = record
        else:
            pending.append(position)
    if pending:
        with determinism(cfg.deterministic):
            _train_pending([(p, configs[p], out_dirs[p]) for p in pending], setup, progress, results)
    return results  # type: ignore[return-value]


def _train_pending(
    runs: list[tuple[int, RunConfig, Path]],
    setup: DeviceSetup,
    progress: bool,
    results: list[dict[str, Any] | None],
) -> None:
    """Prepare every pending run (resuming from its checkpoint), then train them in compatible packs."""
    from ablation.data import load_prepared

    first = runs[0][1]
    prepared = load_prepared(
        first.dataset, img_size=first.model.img_size, data_root=first.data_root,
        interpolation=first.interpolation,
    )  # fmt: skip
    variants: list[Variant] = []
    on_device: dict[tuple[str, ...], tuple[torch.Tensor, torch.Tensor]] = {}
    try:
        for position, config, out_dir in runs:
            variants.append(prepare_variant(position, config, out_dir, prepared, setup, on_device))
        packs: dict[tuple[int, int, int], list[Variant]] = {}
        for variant in variants:
            done, variant.stopped_early = has_stopped(variant.state, variant.config.train)
            if done:  # crashed after its last checkpoint but before metrics.json: nothing left to train
                results[variant.position] = finish_variant(variant, setup)
                continue
            key = (variant.train[0].shape[0], variant.val[0].shape[0], variant.state["epoch"])
            packs.setdefault(key, []).append(variant)
        for members in packs.values():
            _train_pack(members, setup, progress, results)
    except Exception as error:
        for position, _, out_dir in runs:  # record why they stopped; each stays resumable from its checkpoint
            if results[position] is None and (out_dir / CONFIG_FILE).exists():
                write_status(out_dir, f"failed: {type(error).__name__}: {error}")
        raise
    finally:
        for variant in variants:
            close_log(variant)


def _pack_data(variants: list[Variant]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The runs' train and validation splits as ``[(K, N, 3, H, W) images, (K, N, 1, H, W) masks]`` each.

    Runs of one split share its memory (an expanded view, no copy).
    """

    def stack(tensors: list[torch.Tensor]) -> torch.Tensor:
        if all(tensor is tensors[0] for tensor in tensors):
            return tensors[0].expand(len(tensors), *tensors[0].shape)
        return torch.stack(tensors)

    train = [stack([v.train[i] for v in variants]) for i in (0, 1)]
    val = [stack([v.val[i] for v in variants]) for i in (0, 1)]
    return train, val


class PackOutOfMemory(Exception):
    """The device ran out of memory before a pack's first epoch ended, so nothing of its runs has changed yet."""


def _train_pack(
    variants: list[Variant], setup: DeviceSetup, progress: bool, results: list[dict[str, Any] | None]
) -> None:
    """Train runs at the same epoch (and split sizes) in lockstep until each stops; write each one out.

    A pack too large for the device's memory fails within its first epoch (every peak, CUDA-graph capture and
    validation included, is reached there), before any run's weights, state or folder changed: it is split in
    halves, trained one after the other, recursively; a single run that does not fit fails with one line.
    """
    generators = [variant.generator.get_state() for variant in variants]
    global_rng = torch.get_rng_state(), torch.cuda.get_rng_state(setup.device) if setup.is_cuda else None
    try:
        _train_lockstep(variants, setup, progress, results)
        return
    except PackOutOfMemory as error:
        reason = str(error)
    gc.collect()  # the failed attempt's tensors, also any held in reference cycles, go back to the allocator
    if setup.is_cuda:
        torch.cuda.empty_cache()
    if len(variants) == 1:
        raise AblationError(
            f"run {variants[0].out_dir.name} does not fit in the memory of {setup.name} even alone ({reason}): "
            "lower train.batch_size, model.img_size or model.base_channels"
        )
    for variant, state in zip(variants, generators):  # each half starts where the whole pack started
        variant.generator.set_state(state)
    torch.set_rng_state(global_rng[0])
    if global_rng[1] is not None:
        torch.cuda.set_rng_state(global_rng[1], setup.device)
    half = (len(variants) + 1) // 2
    for part in (variants[:half], variants[half:]):
        _train_pack(part, setup, progress, results)


def _train_lockstep(
    variants: list[Variant], setup: DeviceSetup, progress: bool, results: list[dict[str, Any] | None]
) -> None:
    """The epoch loop of one pack; raises PackOutOfMemory for a CUDA out-of-memory error in its first epoch."""
    cfg = variants[0].config.train
    start_epoch = variants[0].state["epoch"]
    if setup.is_cuda:
        torch.cuda.reset_peak_memory_stats(setup.device)
    pack = _within_memory(True, _open_pack, variants, setup)
    name = run_name(variants[0].config) if len(variants) == 1 else f"pack of {len(variants)}"
    bar = tqdm(total=cfg.max_epochs, initial=start_epoch, desc=name, disable=not progress)
    train, val = _pack_data(variants)
    try:
        for epoch in range(start_epoch + 1, cfg.max_epochs + 1):
            epoch_start = time.perf_counter()
            first = epoch == start_epoch + 1
            lr, numbers = _within_memory(first, _run_epoch, pack, train, val, variants, cfg)
            if first:
                _record_memory(variants, setup, bar)
            seconds = (time.perf_counter() - epoch_start) / len(variants)  # the epoch's wall time, shared
            log_predictions(variants, epoch, *val, pack.probabilities)  # TensorBoard previews, every N epochs
            finished = []
            for k, (variant, (train_loss, val_loss, dice)) in enumerate(zip(variants, numbers)):
                failure = record_non_finite(variant, epoch, train_loss, val_loss)
                done = failure is None and end_epoch(
                    variant,
                    (epoch, train_loss, val_loss, dice, lr, seconds),
                    export=lambda k=k, variant=variant: pack.export(k, variant.model),
                    optimizer_states=lambda k=k, variant=variant: (
                        pack.optimizer_state(k, variant.model),
                        plain_scheduler_state(pack.scheduler),
                    ),
                )
                if failure is not None or done:
                    results[variant.position] = failure or finish_variant(variant, setup)
                    finished.append(k)
            if len(variants) == 1:
                bar.set_postfix(loss=f"{numbers[0][0]:.4f}", val_dice=f"{numbers[0][2]:.4f}", refresh=False)
            else:
                bar.set_postfix(
                    runs=len(variants) - len(finished), best=max(v.state["best_dice"] for v in variants)
                )
            bar.update(1)
            if finished:
                keep = [k for k in range(len(variants)) if k not in finished]
                if not keep:
                    break
                pack.select(keep)
                variants = [variants[k] for k in keep]
                train, val = _pack_data(variants)
    finally:
        bar.close()


# How cuDNN and cuBLAS report a failed workspace allocation: a RuntimeError, not torch.cuda.OutOfMemoryError.
ALLOCATION_FAILURES = ("CUDNN_STATUS_ALLOC_FAILED", "CUBLAS_STATUS_ALLOC_FAILED")


def _within_memory(first_epoch: bool, work: Callable[..., T], *args: Any) -> T:
    """``work(*args)``; running out of device memory during a pack's first epoch becomes PackOutOfMemory.

    Out of memory is ``torch.cuda.OutOfMemoryError`` or a RuntimeError naming one of :data:`ALLOCATION_FAILURES`.
    """
    try:
        return work(*args)
    except RuntimeError as error:  # torch.cuda.OutOfMemoryError is a RuntimeError
        memory = isinstance(error, torch.cuda.OutOfMemoryError) or any(
            failure in str(error) for failure in ALLOCATION_FAILURES
        )
        if not (first_epoch and memory):
            raise
        reason = ". ".join(str(error).split(". ")[:2])  # "CUDA out of memory. Tried to allocate X GiB"
    # Raised outside the handler, so the failed attempt's frames (and their tensors) are not kept alive.
    raise PackOutOfMemory(reason)


def _open_pack(variants: list[Variant], setup: DeviceSetup) -> Pack:
    """The runs' pack, with their saved Adam states and schedule when they resume."""
    pack = Pack(
        [v.model for v in variants], [v.config.model for v in variants], setup=setup,
        train=variants[0].config.train,
    )  # fmt: skip
    if variants[0].optimizer_state is not None:
        pack.load_optimizer_states(
            [v.optimizer_state for v in variants], [v.model for v in variants], variants[0].scheduler_state
        )
    return pack


def _run_epoch(
    pack: Pack,
    train: list[torch.Tensor],
    val: list[torch.Tensor],
    variants: list[Variant],
    cfg: TrainConfig,
) -> tuple[float, list[list[float]]]:
    """One epoch of every run: ``(lr, [[train_loss, val_loss, val_dice] per run])``, read in one host sync."""
    lr = pack.lr
    train_losses = train_epoch(pack, *train, [v.generator for v in variants], cfg)
    pack.step_schedule()
    val_losses, val_dice = pack.validate(*val)
    return lr, torch.stack([train_losses, val_losses, val_dice], dim=1).tolist()


def _record_memory(variants: list[Variant], setup: DeviceSetup, bar: Any) -> None:
    """After a pack's first epoch: its size and, on CUDA, the peak memory it took (status.json, progress bar)."""
    memory: dict[str, Any] = {"pack_size": len(variants)}
    if setup.is_cuda:
        memory["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(setup.device) / 2**30, 3)
        if not bar.disable:
            bar.write(f"{bar.desc}: peak memory {memory['peak_memory_gib']:.2f} GiB on {setup.name}")
    for variant in variants:
        variant.memory = memory


def draw_epoch(
    generators: Sequence[torch.Generator], count: int, augment: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each run's batch order and augmentation for one epoch, from its own generator only.

    Each generator draws ``randperm(count)`` then, with ``augment``, ``random_affine(count)`` (the transform of
    each position of the epoch), so a run draws the same numbers alone or in a pack of any size.

    Returns:
        ``(K, N)`` sample indices on the generators' device and ``float32 (K, N, 2, 3)`` affine matrices, or None.
    """
    from ablation.data.augment import random_affine

    device = generators[0].device
    order = torch.stack([torch.randperm(count, generator=g, device=device) for g in generators])
    if not augment:
        return order, None
    return order, torch.stack([random_affine(count, g) for g in generators])


def sample_batch(
    images: torch.Tensor,
    masks: torch.Tensor,
    index: torch.Tensor,
    rows: torch.Tensor,
    theta: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather each run's batch and resample it with its transforms, all K * B samples in one ``apply_affine``.

    Args:
        images: ``uint8 (K, N, 3, H, W)`` train sets on the device.
        masks: ``uint8 (K, N, 1, H, W)``.
        index: ``(K, B)`` sample indices per run.
        rows: ``(K, 1)`` = ``arange(K)[:, None]``, made once per epoch.
        theta: ``(K, B, 2, 3)`` the batch's affine matrices (:func:`draw_epoch`), or None for no augmentation.

    Returns:
        images ``(K, B, 3, H, W)`` float in [0, 1] and masks ``(K, B, 1, H, W)`` float.
    """
    from ablation.data.augment import apply_affine

    batch_images, batch_masks = images[rows, index], masks[rows, index]  # (K, B, C, H, W)
    if theta is None:
        return batch_images.float().div_(255.0), batch_masks.float()
    flat_images, flat_masks = apply_affine(
        batch_images.flatten(0, 1), batch_masks.flatten(0, 1), theta.flatten(0, 1)
    )  # (K*B, ...) -> (K, B, ...)
    return flat_images.unflatten(0, index.shape), flat_masks.unflatten(0, index.shape)


def train_epoch(
    pack: Pack, images: torch.Tensor, masks: torch.Tensor, generators: list[torch.Generator], cfg: TrainConfig
) -> torch.Tensor:
    """One pass over every run's train set in its own random order; returns the ``(K,)`` mean batch losses.

    Args:
        images: ``uint8 (K, N, 3, H, W)``; masks: ``uint8 (K, N, 1, H, W)``, on the device.
    """
    count, device = images.shape[1], images.device
    order, theta = draw_epoch(generators, count, cfg.augment)  # (K, N), (K, N, 2, 3)
    rows = torch.arange(len(generators), device=device)[:, None]
    loss_sum = torch.zeros(len(generators), device=device)
    for start in range(0, count, cfg.batch_size):
        stop = min(start + cfg.batch_size, count)
        batch = None if theta is None else theta[:, start:stop]
        batch_images, batch_masks = sample_batch(images, masks, order[:, start:stop], rows, batch)
        loss_sum += pack.step(batch_images, batch_masks) * (stop - start)
    return loss_sum / count
