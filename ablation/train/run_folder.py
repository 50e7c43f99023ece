"""One run of a pack and its folder: prepared at the start, updated after each epoch, finished at the end.

Everything a run folder holds (:mod:`ablation.store`) is written from here, through the store's writers (JSON and
CSV) and :mod:`ablation.train.checkpoint` (``.pt`` files): config.json when the run starts (a resumed run keeps
it), history.csv rewritten on start/resume and appended once per epoch (with ``train.tensorboard`` the same
numbers go to TensorBoard, :mod:`ablation.train.tensorboard_log`), checkpoint_last.pt and status.json every
``checkpoint_every`` epochs and at the end, then checkpoint_best.pt, test_metrics.csv, predictions.npz,
masked_metrics.csv and metrics.json last. Training alone or in a pack writes the same files.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ablation.config import RunConfig, TrainConfig
from ablation.errors import AblationError
from ablation.io import environment_record
from ablation.store.layout import (
    BEST_CHECKPOINT,
    HISTORY_COLUMNS,
    LAST_CHECKPOINT,
    MASKED_METRICS_FILE,
    TEST_METRICS_FILE,
    metrics_identity,
    run_id,
    run_name,
)
from ablation.store.writers import (
    append_history,
    write_history,
    write_image_metrics,
    write_metrics,
    write_predictions,
    write_run_config,
    write_status,
)
from ablation.train.checkpoint import (
    copy_source_weights,
    load_last_checkpoint,
    new_run_state,
    save_best_checkpoint,
    save_last_checkpoint,
)
from ablation.train.device import DeviceSetup, to_memory_format
from ablation.train.evaluate import score_test
from ablation.train.tensorboard_log import PREVIEW_IMAGES, TensorBoardLog


@dataclasses.dataclass
class Variant:
    """One run inside a pack: its config, folder, own network, data and early-stopping state."""

    position: int  # index in the caller's lists
    config: RunConfig
    out_dir: Path
    model: torch.nn.Module  # its own network (build_model) on the device; receives the packed weights to save
    generator: torch.Generator  # batch order and augmentation
    train: tuple[torch.Tensor, torch.Tensor]  # (N, 3, H, W), (N, 1, H, W) uint8 on the device
    val: tuple[torch.Tensor, torch.Tensor]
    test: Any  # PreparedSplit
    state: dict[str, Any]  # epoch, best_dice, best_epoch, best_model, history (checkpoint_last.pt's keys)
    setup_seconds: float = 0.0  # preparing this variant (splits, network, checkpoint), this session
    optimizer_state: dict[str, Any] | None = None  # from checkpoint_last.pt when resuming
    scheduler_state: dict[str, Any] | None = None
    stopped_early: bool = False
    log: TensorBoardLog | None = None  # with train.tensorboard
    # status.json's record of the pack it trains in this session: pack_size and, on CUDA, peak_memory_gib (the
    # peak allocated in the pack's first epoch, for the memory estimates of ablation/packing.py)
    memory: dict[str, Any] = dataclasses.field(default_factory=dict)


def check_trainable(config: RunConfig) -> None:
    """Refuse model settings that are valid for a network but not for training on the prepared data.

    Every prepared dataset holds RGB images and binary masks, and the loss is one-channel BCE + soft Dice.

    Raises:
        AblationError: ``model.in_channels`` other than 3 or ``model.num_classes`` other than 1.
    """
    if config.model.in_channels != 3:
        raise AblationError(
            f"config key 'model.in_channels' must be 3 for training (the prepared images are RGB), "
            f"got {config.model.in_channels}"
        )
    if config.model.num_classes != 1:
        raise AblationError(
            f"config key 'model.num_classes' must be 1 for training (binary masks, one-channel BCE + Dice "
            f"loss), got {config.model.num_classes}"
        )


def has_stopped(state: dict[str, Any], cfg: TrainConfig) -> tuple[bool, bool]:
    """``(done, stopped_early)`` for an early-stopping state after ``state["epoch"]`` epochs.

    A run is done when its patience ran out (``stopped_early``) or it reached ``max_epochs``; a resumed run in
    that state is finished without training further.
    """
    stopped_early = state["best_epoch"] > 0 and state["epoch"] - state["best_epoch"] > cfg.patience
    return stopped_early or state["epoch"] >= cfg.max_epochs, stopped_early


def derived_seed(seed: int, purpose: str) -> int:
    """A seed for one purpose, decorrelated from ``seed`` itself (which seeds the global RNG)."""
    return int(np.random.SeedSequence([seed, sum(map(ord, purpose))]).generate_state(1)[0])


def split_to_device(split: Any, setup: DeviceSetup) -> tuple[torch.Tensor, torch.Tensor]:
    """A PreparedSplit's arrays as (N, 3, H, W) and (N, 1, H, W) uint8 tensors on the device."""
    images = torch.from_numpy(np.ascontiguousarray(split.images)).permute(0, 3, 1, 2).contiguous()
    masks = torch.from_numpy(np.ascontiguousarray(split.masks))[:, None]
    return images.to(setup.device), masks.to(setup.device)


def clone_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's state dict (the best model so far), kept on the device (no host sync)."""
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def prepare_variant(
    position: int,
    config: RunConfig,
    out_dir: Path,
    prepared: Any,
    setup: DeviceSetup,
    on_device: dict[tuple[str, ...], tuple[torch.Tensor, torch.Tensor]],
) -> Variant:
    """A run's splits, config.json, network (seeded: ``torch.manual_seed(seed)`` then ``build_model``; at a fresh
    start of a run with ``train.init_from``, its source's matching weights copied in), generator and, from its
    checkpoint_last.pt, its resumed state.

    ``on_device`` caches split tensors by image names, so variants of one split share them.
    """
    from ablation.data import run_splits
    from ablation.models import build_model

    started = time.perf_counter()
    train, val, test, record = run_splits(
        prepared, fold=config.fold, repeat=config.repeat, num_folds=config.num_folds
    )
    env = {**environment_record(), "device": setup.name, "dataset_fingerprint": prepared.fingerprint}
    torch.manual_seed(config.seed)  # weight init and dropout
    model = to_memory_format(build_model(config.model).to(setup.device), setup)
    resuming = (out_dir / LAST_CHECKPOINT).exists()
    init_weights = None
    if config.train.init_from and not resuming:  # a fresh start from the source run's best weights
        init_weights = copy_source_weights(model, config, out_dir, record)
    write_run_config(out_dir, config, {**env, "splits": record}, init_weights)
    # The run's own stream for batch order and augmentation, independent of the global RNG used for init.
    generator = torch.Generator(device=setup.device).manual_seed(derived_seed(config.seed, "data"))
    splits = []
    for split in (train, val):
        key = tuple(split.names)
        if key not in on_device:
            on_device[key] = split_to_device(split, setup)
        splits.append(on_device[key])
    variant = Variant(
        position, config, out_dir, model, generator, splits[0], splits[1], test, new_run_state()
    )
    if resuming:
        variant.state, variant.optimizer_state, variant.scheduler_state = load_last_checkpoint(
            out_dir / LAST_CHECKPOINT, config, model, generator, setup
        )
    write_history(out_dir, variant.state["history"])  # epochs after the checkpoint are redone
    write_status(out_dir, "running", epoch=variant.state["epoch"])
    if config.train.tensorboard:
        variant.log = TensorBoardLog(
            out_dir, resume_epoch=variant.state["epoch"], images_every=config.train.tensorboard_images_every
        )
    variant.setup_seconds = time.perf_counter() - started
    return variant


def end_epoch(
    variant: Variant,
    row: tuple,
    *,
    export: Callable[[], torch.nn.Module],
    optimizer_states: Callable[[], tuple[dict[str, Any], dict[str, Any]]],
) -> bool:
    """A run's bookkeeping after a finite epoch: history row, best model, early stop, checkpoint.

    Args:
        variant: the run; its state is updated in place.
        row: the epoch's :data:`ablation.store.layout.HISTORY_COLUMNS` values.
        export: returns the run's own network holding the weights after this epoch (called at most once).
        optimizer_states: returns its Adam and schedule state dicts (called only to checkpoint).

    Returns:
        Whether the run is done (patience spent or ``max_epochs`` reached).
    """
    cfg, state = variant.config.train, variant.state
    epoch, val_dice = row[0], row[3]
    record = dict(zip(HISTORY_COLUMNS, row))
    state["history"].append(record)
    append_history(variant.out_dir, [record])
    if variant.log is not None:
        variant.log.scalars(record)
    state["epoch"] = epoch
    model = None
    if epoch > cfg.min_best_epoch and val_dice > state["best_dice"]:
        model = export()
        state.update(best_dice=val_dice, best_epoch=epoch, best_model=clone_state(model))
    done, variant.stopped_early = has_stopped(state, cfg)
    if done or epoch % cfg.checkpoint_every == 0:
        if model is None:
            model = export()
        optimizer_state, scheduler_state = optimizer_states()
        save_last_checkpoint(
            variant.out_dir / LAST_CHECKPOINT, variant.config, model.state_dict(), optimizer_state,
            scheduler_state, variant.generator, state,
        )  # fmt: skip
        write_status(variant.out_dir, "running", epoch=epoch, **variant.memory)
    return done


def record_non_finite(variant: Variant, epoch: int, train_loss: float, val_loss: float) -> dict | None:
    """When an epoch's loss is not finite, record the failure in status.json and return the run's result.

    Returns:
        ``{"status": "failed: non-finite loss at epoch E", "run_id": ..., "run_name": ...}``, or None.
    """
    if math.isfinite(train_loss) and math.isfinite(val_loss):
        return None
    reason = f"failed: non-finite loss at epoch {epoch}"
    write_status(variant.out_dir, reason, epoch=epoch, train_loss=str(train_loss), val_loss=str(val_loss))
    close_log(variant)
    return {"status": reason, "run_id": run_id(variant.config), "run_name": run_name(variant.config)}


def finish_variant(variant: Variant, setup: DeviceSetup) -> dict[str, Any]:
    """End a run after its last epoch: best checkpoint, test evaluation, status.json, metrics.json (last).

    ``variant.model`` must hold the final weights; it is left holding the best ones. When no epoch qualified as
    best (all within ``min_best_epoch``), the final weights are the best model.

    Returns:
        The content of ``metrics.json``. ``seconds`` is the run's share of the pack's epochs (earlier sessions
        included), its own set-up, and this evaluation.
    """
    from ablation.models import model_summary

    started = time.perf_counter()
    config, state, out_dir, model = variant.config, variant.state, variant.out_dir, variant.model
    if state["best_model"] is None:
        state.update(best_dice=state["history"][-1]["val_dice"], best_epoch=state["epoch"])
        state["best_model"] = clone_state(model)
    save_best_checkpoint(out_dir / BEST_CHECKPOINT, config, state)
    model.load_state_dict(state["best_model"])

    rows, summary, preds, masked_rows = score_test(model, variant.test, setup, config.train)
    write_image_metrics(out_dir / TEST_METRICS_FILE, rows)
    keep = min(config.train.save_predictions, len(variant.test.names))
    if keep > 0:
        test = variant.test
        write_predictions(
            out_dir,
            list(test.names[:keep]),
            test.images[:keep],
            test.masks[:keep],
            preds[:keep],
        )
    if masked_rows is not None:
        write_image_metrics(out_dir / MASKED_METRICS_FILE, masked_rows)
    seconds_before = sum(row["seconds"] for row in state["history"]) + variant.setup_seconds
    result = {
        **metrics_identity(config),
        "best_epoch": state["best_epoch"],
        "best_val_dice": state["best_dice"],
        "epochs_run": state["epoch"],
        "stopped_early": variant.stopped_early,
        **model_summary(config.model),
        "seconds": seconds_before + time.perf_counter() - started,
        "device": setup.name,
        **summary,
    }
    write_status(out_dir, "done", epoch=state["epoch"], **variant.memory)
    close_log(variant)
    write_metrics(out_dir, result)  # last: the run is done exactly when this exists
    return result


def log_predictions(
    variants: list[Variant],
    epoch: int,
    images: torch.Tensor,
    masks: torch.Tensor,
    probabilities: Callable[[torch.Tensor], torch.Tensor],
) -> None:
    """At the epochs ``train.tensorboard_images_every`` names, log the first few validation images with their
    masks and predictions for each run that logs to TensorBoard (one small forward pass, off the step path).

    Args:
        variants: the pack's runs, in the pack's order.
        images: ``uint8 (K, N, 3, H, W)`` validation images; masks: ``uint8 (K, N, 1, H, W)``.
        probabilities: the pack's ``(K, n, 1, H, W)`` foreground probabilities for ``uint8 (K, n, 3, H, W)``.
    """
    due = [
        k for k, variant in enumerate(variants) if variant.log is not None and variant.log.images_due(epoch)
    ]
    if not due:
        return
    count = min(PREVIEW_IMAGES, images.shape[1])
    shown = [tensor[:, :count].cpu().numpy() for tensor in (images, masks, probabilities(images[:, :count]))]
    for k in due:
        variants[k].log.predictions(epoch, *(array[k] for array in shown))  # type: ignore[union-attr]


def close_log(variant: Variant) -> None:
    """Close the run's TensorBoard event file, if it has one."""
    if variant.log is not None:
        variant.log.close()
