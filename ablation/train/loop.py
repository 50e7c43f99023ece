"""One training run, end to end: the protocol of UCTransNet (Wang et al., AAAI 2022) on one split.

Adam (lr 1e-3) with CosineAnnealingWarmRestarts(T_0=10, T_mult=1, eta_min=1e-4) stepped once per epoch, loss
0.5 * BCE + 0.5 * soft Dice (:mod:`ablation.train.losses`), early stopping on the validation Dice with patience 50,
the best model kept only after epoch 5, then the best model scored on the test set (:mod:`ablation.train.metrics`).
Every number is a :class:`ablation.config.TrainConfig` field.

The run folder follows :mod:`ablation.store`: every file is written atomically and ``metrics.json`` last.
``checkpoint_last.pt`` holds everything a killed run needs to continue exactly where the checkpoint was taken:
weights, optimiser and scheduler, the global torch RNGs (dropout) and the run's own generator (batch order and
augmentation), the early-stopping state with the best weights so far, and the history.

Speed: the training split lives on the device as uint8; batches are gathered by index with the run's generator,
augmented on the device, and cast there. The step never waits for the host: losses accumulate in a device
tensor that is read once per epoch, which is also when non-finite losses are detected.
"""

from __future__ import annotations

import copy
import csv
import io
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ablation.config import RunConfig, TrainConfig, to_dict
from ablation.errors import AblationError
from ablation.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    environment_record,
    read_json,
)
from ablation.skips import ALL_SUBSETS
from ablation.store import (
    BEST_CHECKPOINT,
    CONFIG_FILE,
    HISTORY_FILE,
    LAST_CHECKPOINT,
    MASKED_METRICS_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    TEST_METRICS_FILE,
    run_id,
    run_name,
    write_status,
)
from ablation.train.device import (
    DeviceSetup,
    autocast,
    determinism,
    maybe_compile,
    setup_device,
    to_memory_format,
)
from ablation.train.evaluate import (
    first_state_dict_mismatch,
    logit_threshold,
    predict_masks,
    to_input,
    write_metrics_csv,
    write_predictions,
)
from ablation.train.losses import segmentation_loss
from ablation.train.metrics import EPSILON, evaluate_predictions

HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_dice", "lr", "seconds")
# The early-stopping state of a run, as checkpoint_last.pt holds it (see :func:`new_run_state`).
STATE_KEYS = ("epoch", "best_dice", "best_epoch", "best_model", "history")


class RunFailed(AblationError):
    """A run stopped without a result (e.g. a non-finite loss); its status.json says why."""


def train_run(
    config: RunConfig, out_dir: str | Path, *, device: str | torch.device | None = None, progress: bool = True
) -> dict[str, Any]:
    """Train, select on validation, score on test; resume from ``checkpoint_last.pt`` when the folder has one.

    Args:
        config: the resolved run configuration.
        out_dir: the run folder (conventionally ``<results>/<ablation.store.run_name(config)>``).
        device: ``cpu``, ``cuda``, ``cuda:N`` or None (CUDA when available).
        progress: show a tqdm bar (epoch, loss, validation Dice).

    Returns:
        The content of ``metrics.json`` (returned as is when the run is already done).

    Raises:
        RunFailed: a non-finite loss; ``status.json`` holds ``failed: non-finite loss at epoch E``.
        AblationError: bad input (unknown dataset, a folder that belongs to another config, ...).
    """
    out_dir = Path(out_dir)
    check_trainable(config)
    # The device is checked even for a finished run: a wrong --device must not pass silently.
    setup = setup_device(device, precision=config.train.precision, channels_last=config.train.channels_last)
    if (out_dir / METRICS_FILE).exists():
        return read_json(out_dir / METRICS_FILE)
    with determinism(config.train.deterministic):
        try:
            return _train(config, out_dir, setup, progress)
        except RunFailed:
            raise
        except Exception as error:
            if (out_dir / CONFIG_FILE).exists():  # started: record why it stopped (it stays resumable)
                write_status(out_dir, f"failed: {type(error).__name__}: {error}")
            raise


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
    that state goes straight to :func:`finish_run` instead of training further.
    """
    stopped_early = state["best_epoch"] > 0 and state["epoch"] - state["best_epoch"] > cfg.patience
    return stopped_early or state["epoch"] >= cfg.max_epochs, stopped_early


def new_run_state() -> dict[str, Any]:
    """The early-stopping state of a run before its first epoch (the keys of :data:`STATE_KEYS`)."""
    return {"epoch": 0, "best_dice": -math.inf, "best_epoch": 0, "best_model": None, "history": []}


def make_optimizer(params: Iterable[torch.Tensor], cfg: TrainConfig, setup: DeviceSetup) -> torch.optim.Adam:
    """The paper's Adam (``cfg.lr``, ``cfg.weight_decay``); the fused implementation on CUDA."""
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=setup.is_cuda)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> Any:
    """CosineAnnealingWarmRestarts with the ``cfg.scheduler_*`` settings, stepped once per epoch."""
    return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=cfg.scheduler_t0, T_mult=cfg.scheduler_t_mult, eta_min=cfg.scheduler_eta_min
    )


def record_non_finite(out_dir: Path, epoch: int, train_loss: float, val_loss: float) -> str | None:
    """When an epoch's loss is not finite, write the failure to ``status.json`` and return it, else None.

    The returned status reads ``failed: non-finite loss at epoch E``.
    """
    if math.isfinite(train_loss) and math.isfinite(val_loss):
        return None
    reason = f"failed: non-finite loss at epoch {epoch}"
    write_status(out_dir, reason, epoch=epoch, train_loss=str(train_loss), val_loss=str(val_loss))
    return reason


def end_epoch(
    state: dict[str, Any],
    row: tuple,
    *,
    config: RunConfig,
    out_dir: Path,
    model: torch.nn.Module,
    generator: torch.Generator,
    optimizer_states: Callable[[], tuple[dict[str, Any], dict[str, Any]]],
) -> tuple[bool, bool]:
    """A run's bookkeeping after a finite epoch: history, best model, early stop, checkpoint.

    Shared by :func:`train_run` and :func:`ablation.train.packed.train_packed`, so both write the same files.

    Args:
        state: the early-stopping state (:data:`STATE_KEYS`, other keys are ignored); updated in place.
        row: the epoch's :data:`HISTORY_COLUMNS` values (``epoch``, losses, Dice, lr, seconds).
        config: the run's configuration.
        out_dir: the run folder.
        model: the network holding the weights after this epoch.
        generator: the run's data generator (saved in the checkpoint).
        optimizer_states: returns the optimiser's and the scheduler's state dicts; called only to checkpoint.

    Returns:
        ``(done, stopped_early)`` as :func:`has_stopped` after this epoch.
    """
    cfg = config.train
    epoch, val_dice = row[0], row[3]
    state["history"].append(dict(zip(HISTORY_COLUMNS, row)))
    write_history(out_dir, state["history"])
    state["epoch"] = epoch
    if epoch > cfg.min_best_epoch and val_dice > state["best_dice"]:
        state.update(best_dice=val_dice, best_epoch=epoch, best_model=clone_state(model))
    done, stopped_early = has_stopped(state, cfg)
    if done or epoch % cfg.checkpoint_every == 0:
        optimizer_state, scheduler_state = optimizer_states()
        checkpoint_state = {key: state[key] for key in STATE_KEYS}
        save_checkpoint(
            out_dir / LAST_CHECKPOINT,
            config,
            model,
            optimizer_state,
            scheduler_state,
            generator,
            checkpoint_state,
        )
        write_status(out_dir, "running", epoch=epoch)
    return done, stopped_early


def _train(config: RunConfig, out_dir: Path, setup: DeviceSetup, progress: bool) -> dict[str, Any]:
    from ablation.data import load_prepared, run_splits
    from ablation.data.augment import augment_batch
    from ablation.models import build_model

    cfg = config.train
    started = time.perf_counter()
    prepared = load_prepared(
        config.dataset,
        img_size=config.model.img_size,
        data_root=config.data_root,
        interpolation=config.interpolation,
    )
    train, val, test, record = run_splits(
        prepared, fold=config.fold, repeat=config.repeat, num_folds=config.num_folds
    )
    write_run_config(out_dir, config, setup, prepared.fingerprint, record)

    torch.manual_seed(config.seed)  # weight init and dropout
    model = to_memory_format(build_model(config.model).to(setup.device), setup)
    step_model = maybe_compile(model, setup, cfg.compile)
    optimizer = make_optimizer(model.parameters(), cfg, setup)
    scheduler = make_scheduler(optimizer, cfg)
    # The run's own stream for batch order and augmentation, independent of the global RNG used for init.
    generator = torch.Generator(device=setup.device).manual_seed(derived_seed(config.seed, "data"))
    train_images, train_masks = split_to_device(train, setup)
    val_images, val_masks = split_to_device(val, setup)

    state = new_run_state()
    if (out_dir / LAST_CHECKPOINT).exists():
        state, optimizer_state, scheduler_state = load_checkpoint(
            out_dir / LAST_CHECKPOINT, config, model, generator, setup
        )
        optimizer.load_state_dict(optimizer_state)
        scheduler.load_state_dict(scheduler_state)
        write_history(out_dir, state["history"])
    previous_seconds = sum(row["seconds"] for row in state["history"])  # epochs trained before a resume
    write_status(out_dir, "running", epoch=state["epoch"])

    # A run that crashed after its last checkpoint but before metrics.json (e.g. in the test evaluation) has
    # nothing left to train: it only needs finishing.
    done, stopped_early = has_stopped(state, cfg)
    bar = tqdm(total=cfg.max_epochs, initial=state["epoch"], desc=run_name(config), disable=not progress)
    last_epoch = state["epoch"] if done else cfg.max_epochs
    for epoch in range(state["epoch"] + 1, last_epoch + 1):
        epoch_start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        train_loss = _train_epoch(step_model, optimizer, train_images, train_masks, generator, setup, cfg,
                                  augment_batch if cfg.augment else None)  # fmt: skip
        scheduler.step()
        val_loss, val_dice = validate(step_model, val_images, val_masks, setup, cfg)
        train_loss, val_loss, val_dice = torch.stack(
            [train_loss, val_loss, val_dice]
        ).tolist()  # the one sync
        if record_non_finite(out_dir, epoch, train_loss, val_loss) is not None:
            bar.close()
            raise RunFailed(f"run {out_dir.name}: non-finite loss at epoch {epoch}")
        seconds = time.perf_counter() - epoch_start
        _, stopped_early = end_epoch(
            state,
            (epoch, train_loss, val_loss, val_dice, lr, seconds),
            config=config,
            out_dir=out_dir,
            model=model,
            generator=generator,
            optimizer_states=lambda: (optimizer.state_dict(), scheduler.state_dict()),
        )
        bar.set_postfix(
            loss=f"{train_loss:.4f}", val_dice=f"{val_dice:.4f}", best=state["best_epoch"], refresh=False
        )
        bar.update(1)
        if stopped_early:
            break
    bar.close()

    # Wall time of this session (set-up, training, evaluation) plus the epochs of earlier sessions.
    return finish_run(
        config,
        out_dir,
        model,
        test,
        setup,
        state,
        stopped_early=stopped_early,
        seconds_before=previous_seconds,
        started=started,
    )


def finish_run(
    config: RunConfig,
    out_dir: Path,
    model: torch.nn.Module,
    test: Any,
    setup: DeviceSetup,
    state: dict[str, Any],
    *,
    stopped_early: bool,
    seconds_before: float,
    started: float,
) -> dict[str, Any]:
    """End a run after its last epoch: best checkpoint, test evaluation, ``status.json``, ``metrics.json``.

    Shared by :func:`train_run` and :func:`ablation.train.packed.train_packed`, so both write the same files.

    Args:
        config: the run's configuration.
        out_dir: the run folder.
        model: the run's network with its final weights; it is left holding the best weights.
        test: the test split (a PreparedSplit).
        setup: device, autocast dtype and memory format.
        state: early-stopping state (``epoch``, ``best_dice``, ``best_epoch``, ``best_model``, ``history``);
            when no epoch qualified as best, the final weights become the best model (``state`` is updated).
        stopped_early: the patience ran out before ``max_epochs``.
        seconds_before: seconds already spent on the run (earlier sessions, set-up not timed by ``started``).
        started: ``time.perf_counter()`` when the timed part of this session began; ``metrics.json`` records
            ``seconds_before`` plus the time since ``started``.

    Returns:
        The content of ``metrics.json``, written last: the run is done exactly when that file exists.
    """
    from ablation.models import model_summary

    if state["best_model"] is None:  # no epoch after min_best_epoch: fall back to the final weights
        state.update(best_dice=state["history"][-1]["val_dice"], best_epoch=state["epoch"])
        state["best_model"] = clone_state(model)
    best = {"model": state["best_model"], "config": to_dict(config), "epoch": state["best_epoch"]}
    _save(out_dir / BEST_CHECKPOINT, {**best, "val_dice": state["best_dice"], "run_id": run_id(config)})
    model.load_state_dict(state["best_model"])

    summary = evaluate_test(model, test, setup, config.train, out_dir)
    result = {
        "status": "done",
        "run_id": run_id(config),
        "run_name": run_name(config),
        "dataset": config.dataset,
        "connector": config.model.connector,
        "skips": config.model.skips,
        "seed": config.seed,
        "fold": config.fold,
        "repeat": config.repeat,
        "best_epoch": state["best_epoch"],
        "best_val_dice": state["best_dice"],
        "epochs_run": state["epoch"],
        "stopped_early": stopped_early,
        **model_summary(config.model),
        "seconds": seconds_before + time.perf_counter() - started,
        "device": setup.name,
        **summary,
    }
    write_status(out_dir, "done", epoch=state["epoch"])
    atomic_write_json(out_dir / METRICS_FILE, result)  # last: the run is done exactly when this exists
    return result


def _train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    masks: torch.Tensor,
    generator: torch.Generator,
    setup: DeviceSetup,
    cfg: TrainConfig,
    augment: Any,
) -> torch.Tensor:
    """One pass over the training split in a random order; returns the mean batch loss as a device scalar.

    Args:
        images: (N, 3, H, W) uint8 on the device.
        masks: (N, 1, H, W) uint8 on the device.
        augment: ``augment_batch(images, masks, generator)`` or None.
    """
    model.train()
    count = images.shape[0]
    order = torch.randperm(count, generator=generator, device=setup.device)
    loss_sum = torch.zeros((), device=setup.device)
    for start in range(0, count, cfg.batch_size):
        index = order[start : start + cfg.batch_size]
        batch_images, batch_masks = images[index], masks[index]
        if augment is not None:
            batch_images, batch_masks = augment(batch_images, batch_masks, generator)
        with autocast(setup):
            logits = model(to_input(batch_images, setup))
        loss = segmentation_loss(logits, batch_masks, cfg.bce_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * index.numel()
    return loss_sum / count


@torch.no_grad()
def validate(
    model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, setup: DeviceSetup, cfg: TrainConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean per-image loss and Dice (the paper's formula at the threshold) as device scalars.

    Args:
        images: (N, 3, H, W) uint8 on the device.
        masks: (N, 1, H, W) uint8 on the device.

    Returns:
        The mean loss and mean Dice over the N images, each a 0-d tensor on the device (no host sync).
    """
    model.eval()
    cut = logit_threshold(cfg.threshold)
    loss_sum = torch.zeros((), device=setup.device)
    dice_sum = torch.zeros((), device=setup.device)
    for start in range(0, images.shape[0], cfg.eval_batch_size):
        batch_masks = masks[start : start + cfg.eval_batch_size]
        with autocast(setup):
            logits = model(to_input(images[start : start + cfg.eval_batch_size], setup))
        loss_sum += segmentation_loss(logits, batch_masks, cfg.bce_weight, per_image=True).sum()
        pred = (logits.float() > cut).flatten(1)  # (B, H*W)
        truth = batch_masks.flatten(1).bool()
        intersection = (pred & truth).sum(1)
        dice_sum += (2.0 * intersection / (pred.sum(1) + truth.sum(1) + EPSILON)).sum()
    return loss_sum / images.shape[0], dice_sum / images.shape[0]


def evaluate_test(
    model: torch.nn.Module, test: Any, setup: DeviceSetup, cfg: TrainConfig, out_dir: Path
) -> dict[str, float]:
    """Score the best model on the test split; write test_metrics.csv, predictions.npz, masked_metrics.csv.

    Returns:
        The summary of :func:`ablation.train.metrics.evaluate_predictions` (``dice_mean``, ...).
    """
    options = {"batch_size": cfg.eval_batch_size, "threshold": cfg.threshold}
    preds = predict_masks(model, test.images, setup, **options)
    rows, summary = evaluate_predictions(preds, test.masks, test.instances, names=list(test.names))
    write_metrics_csv(out_dir / TEST_METRICS_FILE, rows)
    keep = min(cfg.save_predictions, len(test.names))
    if keep > 0:
        names = list(test.names[:keep])
        write_predictions(
            out_dir / PREDICTIONS_FILE, names, test.images[:keep], test.masks[:keep], preds[:keep]
        )
    # Runtime masking only makes sense for a model that was trained with every skip (see ARCHITECTURE.md).
    if cfg.test_time_masks and getattr(model, "skips", None) == "1111":
        masked_rows = []
        for spec in ALL_SUBSETS:
            model.set_test_time_mask(spec)
            masked = predict_masks(model, test.images, setup, **options)
            spec_rows, _ = evaluate_predictions(masked, test.masks, test.instances, names=list(test.names))
            masked_rows += [{"eval_skips": spec, **row} for row in spec_rows]
        model.set_test_time_mask(None)
        write_metrics_csv(out_dir / MASKED_METRICS_FILE, masked_rows)
    return summary


def split_to_device(split: Any, setup: DeviceSetup) -> tuple[torch.Tensor, torch.Tensor]:
    """A PreparedSplit's arrays as (N, 3, H, W) and (N, 1, H, W) uint8 tensors on the device."""
    images = torch.from_numpy(np.ascontiguousarray(split.images)).permute(0, 3, 1, 2).contiguous()
    masks = torch.from_numpy(np.ascontiguousarray(split.masks))[:, None]
    return images.to(setup.device), masks.to(setup.device)


def derived_seed(seed: int, purpose: str) -> int:
    """A seed for one purpose, decorrelated from ``seed`` itself (which seeds the global RNG)."""
    return int(np.random.SeedSequence([seed, sum(map(ord, purpose))]).generate_state(1)[0])


def clone_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's state dict (the best model so far), kept on the device.

    A device-side copy: no host transfer, no synchronisation.
    """
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def write_run_config(
    out_dir: Path, config: RunConfig, setup: DeviceSetup, fingerprint: str, record: dict
) -> None:
    """config.json at the start of a run; a resumed run keeps the original but must have the same identity."""
    path = out_dir / CONFIG_FILE
    if path.exists():
        existing = read_json(path).get("run_id")
        if existing != run_id(config):
            raise AblationError(
                f"{path} belongs to run {existing}, not {run_id(config)}: use another output folder"
            )
        return
    env = {**environment_record(), "device": setup.name, "dataset_fingerprint": fingerprint, "splits": record}
    atomic_write_json(
        path, {"run_id": run_id(config), "run_name": run_name(config), **to_dict(config), "env": env}
    )


def write_history(out_dir: Path, history: list[dict[str, float]]) -> None:
    """Rewrite history.csv with one row per epoch (the columns of :data:`HISTORY_COLUMNS`)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(out_dir / HISTORY_FILE, buffer.getvalue())


def _save(path: Path, obj: dict[str, Any]) -> None:
    # torch.save into memory first so the file appears whole (atomic write) or not at all.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _rng_states(generator: torch.Generator) -> dict[str, Any]:
    states = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if generator.device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(generator.device)
    return states


def save_checkpoint(
    path: Path,
    config: RunConfig,
    model: torch.nn.Module,
    optimizer_state: dict[str, Any],
    scheduler_state: dict[str, Any],
    generator: torch.Generator,
    state: dict[str, Any],
) -> None:
    """checkpoint_last.pt: everything to continue after ``state["epoch"]`` exactly as if never stopped.

    Args:
        path: the checkpoint file.
        config: the run's configuration (its run id guards against resuming another run).
        model: the network; its state dict is saved.
        optimizer_state: ``optimizer.state_dict()`` of the run's Adam.
        scheduler_state: ``scheduler.state_dict()`` of its CosineAnnealingWarmRestarts.
        generator: the run's data generator; its state is saved with the global torch RNG states.
        state: ``epoch``, ``best_dice``, ``best_epoch``, ``best_model``, ``history``.
    """
    _save(
        path,
        {
            "run_id": run_id(config),
            "config": to_dict(config),
            "model": model.state_dict(),
            "optimizer": optimizer_state,
            "scheduler": scheduler_state,
            "rng": _rng_states(generator),
            **state,
        },
    )


def load_checkpoint(
    path: Path, config: RunConfig, model: torch.nn.Module, generator: torch.Generator, setup: DeviceSetup
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Restore a checkpoint_last.pt into the model, the global torch RNGs and the run's data generator.

    Returns:
        The early-stopping state (``epoch``, ``best_dice``, ``best_epoch``, ``best_model``, ``history``), the
        optimiser's state dict and the scheduler's state dict (for their ``load_state_dict``).

    Raises:
        AblationError: an unreadable checkpoint, or one that belongs to another run.
    """
    from ablation.models.reference import read_checkpoint

    restart = "delete it to restart the run"
    try:
        saved = read_checkpoint(path, map_location=setup.device)
    except AblationError as error:
        raise AblationError(f"{error}; {restart}") from None
    if not isinstance(saved, dict) or "run_id" not in saved:
        raise AblationError(f"checkpoint {path} is not a checkpoint_last.pt of a run (no run_id); {restart}")
    if saved["run_id"] != run_id(config):
        raise AblationError(f"checkpoint {path} belongs to run {saved['run_id']}, not {run_id(config)}")
    missing = [key for key in ("model", "optimizer", "scheduler", "rng", *STATE_KEYS) if key not in saved]
    if missing:
        raise AblationError(f"checkpoint {path} lacks {', '.join(missing)}; {restart}")
    mismatch = first_state_dict_mismatch(model.state_dict(), saved["model"])
    if mismatch is not None:
        raise AblationError(
            f"checkpoint {path}: its weights do not fit the run's model ({mismatch}); {restart}"
        )
    model.load_state_dict(saved["model"])
    torch.set_rng_state(saved["rng"]["torch"].cpu())
    generator.set_state(saved["rng"]["generator"].cpu())
    if setup.is_cuda and "cuda" in saved["rng"]:
        torch.cuda.set_rng_state(saved["rng"]["cuda"].cpu(), setup.device)
    return {key: copy.copy(saved[key]) for key in STATE_KEYS}, saved["optimizer"], saved["scheduler"]
