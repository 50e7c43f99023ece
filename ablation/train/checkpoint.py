"""A run's checkpoints: ``checkpoint_last.pt`` (resume exactly) and ``checkpoint_best.pt`` (the selected model).

Both are plain dicts of tensors and Python values, written atomically and read back with
``torch.load(weights_only=True)`` (:func:`ablation.models.reference.read_checkpoint`). Weights are always in the
run's own structural layout, whether the run trained alone or in a fused pack, so ``build_model(config.model)``
loads them and a run can resume alone or in a pack from either.

``checkpoint_last.pt`` holds everything a killed run needs to continue exactly where the checkpoint was taken:
weights, the Adam state (in ``torch.optim.Adam(model.parameters()).state_dict()`` form), the schedule, the global
torch RNGs (dropout) and the run's own generator (batch order and augmentation), the early-stopping state with the
best weights so far, and the history. The generator's state is that of one device type (a CPU generator's state
is 5,056 bytes, a CUDA Philox one 16), so the file records the device type it was written on and resumes only
there.

A run with ``train.init_from`` starts from its source run's ``checkpoint_best.pt`` (:func:`copy_source_weights`).
:func:`load_model_checkpoint` is the one reader of a trained model for scoring and prediction: ours (the run
config stored inside) or the reference code's.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ablation.config import RunConfig, from_dict, to_dict
from ablation.errors import AblationError
from ablation.io import atomic_write_bytes
from ablation.store.layout import BEST_CHECKPOINT, run_id
from ablation.train.device import DeviceSetup

# The early-stopping state of a run, as checkpoint_last.pt holds it (see :func:`new_run_state`).
STATE_KEYS = ("epoch", "best_dice", "best_epoch", "best_model", "history")
REFERENCE_IMG_SIZE = 224  # the reference code's default training size


def new_run_state() -> dict[str, Any]:
    """The early-stopping state of a run before its first epoch (the keys of :data:`STATE_KEYS`)."""
    return {"epoch": 0, "best_dice": -math.inf, "best_epoch": 0, "best_model": None, "history": []}


def save_torch(path: Path, obj: dict[str, Any]) -> None:
    """``torch.save`` into memory first, so the file appears whole (atomic write) or not at all."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def plain_scheduler_state(scheduler: Any) -> dict[str, Any]:
    """The scheduler's state dict with tensor learning rates (CUDA-graph runs) as floats, so it loads anywhere."""

    def plain(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            return float(value)
        if isinstance(value, list):
            return [plain(item) for item in value]
        return value

    return {key: plain(value) for key, value in scheduler.state_dict().items()}


def save_last_checkpoint(
    path: Path,
    config: RunConfig,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    scheduler_state: dict[str, Any],
    generator: torch.Generator,
    state: dict[str, Any],
) -> None:
    """checkpoint_last.pt: everything to continue after ``state["epoch"]`` exactly as if never stopped.

    Args:
        path: the checkpoint file.
        config: the run's configuration (its run id guards against resuming another run).
        model_state: the run's network's ``state_dict()``.
        optimizer_state: the run's Adam state in single-network form.
        scheduler_state: its CosineAnnealingWarmRestarts state (:func:`plain_scheduler_state`).
        generator: the run's data generator; its state is saved with the global torch RNG states.
        state: ``epoch``, ``best_dice``, ``best_epoch``, ``best_model``, ``history``.
    """
    rng = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if generator.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(generator.device)
    save_torch(
        path,
        {
            "run_id": run_id(config),
            "config": to_dict(config),
            "device_type": generator.device.type,  # the generator's state resumes only on this device type
            "model": model_state,
            "optimizer": optimizer_state,
            "scheduler": scheduler_state,
            "rng": rng,
            **{key: state[key] for key in STATE_KEYS},
        },
    )


def load_last_checkpoint(
    path: Path, config: RunConfig, model: torch.nn.Module, generator: torch.Generator, setup: DeviceSetup
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Restore a checkpoint_last.pt into the model, the global torch RNGs and the run's data generator.

    Returns:
        The early-stopping state (:data:`STATE_KEYS`), the optimiser's state dict (single-network form) and the
        scheduler's state dict.

    Raises:
        AblationError: an unreadable checkpoint, one of another run, one written on another device type (its
            generator state cannot be restored here), or weights that do not fit the model.
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
    written_on = saved.get("device_type") or _generator_device_type(saved["rng"]["generator"])
    if written_on != generator.device.type:
        raise AblationError(
            f"checkpoint {path} was written on {written_on}: resume it on {written_on}, or {restart}"
        )
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


def _generator_device_type(state: Any) -> str:
    """The device type a saved generator state comes from, for checkpoints written before ``device_type`` was
    recorded: a CPU generator's state has the size of today's CPU state, a CUDA one (seed and offset) another."""
    cpu_size = torch.Generator().get_state().numel()
    return "cpu" if isinstance(state, torch.Tensor) and state.numel() == cpu_size else "cuda"


def first_state_dict_mismatch(
    expected: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor]
) -> str | None:
    """The first difference between a model's state dict and saved weights, in words; None when they fit."""
    for key, tensor in expected.items():
        if key not in weights:
            return f"{key!r} is missing"
        if tuple(weights[key].shape) != tuple(tensor.shape):
            return f"{key!r} has shape {tuple(weights[key].shape)}, the model needs {tuple(tensor.shape)}"
    extra = [key for key in weights if key not in expected]
    if extra:
        return f"unexpected key {extra[0]!r}"
    return None


@dataclasses.dataclass(frozen=True)
class CheckpointRecord:
    """What :func:`load_model_checkpoint` read besides the weights.

    Attributes:
        kind: ``run`` (our checkpoint_best.pt or checkpoint_last.pt, the run config inside) or ``reference``
            (the reference code's checkpoint, or a bare state dict).
        img_size: the input size the model was built for.
        config: our run config as stored (its own ``model.img_size`` is the training size); None for reference
            checkpoints.
    """

    kind: str
    img_size: int
    config: RunConfig | None = None


def load_model_checkpoint(
    path: str | Path, *, img_size: int | None = None, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, CheckpointRecord]:
    """Load a trained model from our checkpoint or the reference code's, in eval mode on ``device``.

    A file is ours when it is a dict with a ``config`` entry and ``model`` weights or a ``run_id``: the model is
    rebuilt from that run config and its weights are checked against it before loading. Anything else is read
    by :func:`ablation.models.load_reference_checkpoint` (the network inferred from the keys and shapes). Files
    are read with ``torch.load(weights_only=True)``.

    Args:
        path: the checkpoint file.
        img_size: the input size to build the model for. Ours: default its training size; another size only for
            models without CCT (CCT's position embeddings fix the token grid). Reference checkpoints: their
            training size, default 224.
        device: where the model goes.

    Returns:
        ``(model, record)``: the model returns logits ``(B, 1, img_size, img_size)``; reference models have
        ``channel_order == "BGR"``.

    Raises:
        AblationError: one line naming the file: unreadable, a stored config that is invalid, no weights,
            weights that do not fit, or another size for a model with CCT.
    """
    from ablation.models import build_model, load_reference_checkpoint
    from ablation.models.reference import read_checkpoint

    path = Path(path)
    saved = read_checkpoint(path)
    if not (isinstance(saved, Mapping) and "config" in saved and ("model" in saved or "run_id" in saved)):
        size = img_size if img_size is not None else REFERENCE_IMG_SIZE
        model = load_reference_checkpoint(path, img_size=size)
        return model.to(device).eval(), CheckpointRecord("reference", size)
    try:
        config = from_dict(RunConfig, saved["config"])
    except AblationError as error:
        raise AblationError(f"checkpoint {path}: its stored config is invalid: {error}") from None
    weights = saved.get("model")
    if not isinstance(weights, Mapping) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise AblationError(f"checkpoint {path}: no model weights (expected a state dict under 'model')")
    model_config = config.model
    if img_size is not None and img_size != model_config.img_size:
        if any(key.endswith("position_embeddings") for key in weights):
            raise AblationError(
                f"checkpoint {path}: this checkpoint was trained at img_size {model_config.img_size}: "
                f"use --img-size {model_config.img_size}"
            )
        model_config = dataclasses.replace(model_config, img_size=img_size)
    model = build_model(model_config)
    mismatch = first_state_dict_mismatch(model.state_dict(), weights)
    if mismatch is not None:
        raise AblationError(
            f"checkpoint {path}: its weights do not fit the {config.model.connector} model of its config: "
            f"{mismatch}"
        )
    model.load_state_dict(weights)
    return model.to(device).eval(), CheckpointRecord("run", model_config.img_size, config)


def save_best_checkpoint(path: Path, config: RunConfig, state: dict[str, Any]) -> None:
    """checkpoint_best.pt: the best weights, the run config, their epoch and validation Dice."""
    save_torch(
        path,
        {
            "model": state["best_model"],
            "config": to_dict(config),
            "epoch": state["best_epoch"],
            "val_dice": state["best_dice"],
            "run_id": run_id(config),
        },
    )


def copy_matching_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Copy into ``model`` every entry of ``weights`` whose name and shape its state dict has (the reference's
    ``UCTransNet_pretrain`` start: the state-dict entries of a trained U-Net that UCTransNet has too).

    Args:
        model: the new network, at its random initialisation.
        weights: a state dict (parameters and buffers such as BatchNorm statistics).

    Returns:
        ``copied_tensors`` (state-dict entries copied), ``copied_parameters`` and ``parameters`` (learnable
        values copied, and in the model), ``not_copied`` (the model's entries left at their initial values) and
        ``source_unused`` (the source's entries without a same-name, same-shape entry in the model).
    """
    own = model.state_dict()
    copied = [name for name, tensor in weights.items() if name in own and own[name].shape == tensor.shape]
    with torch.no_grad():
        for name in copied:
            own[name].copy_(weights[name])
    learnable = dict(model.named_parameters())
    return {
        "copied_tensors": len(copied),
        "copied_parameters": sum(learnable[name].numel() for name in copied if name in learnable),
        "parameters": sum(tensor.numel() for tensor in learnable.values()),
        "not_copied": [name for name in own if name not in set(copied)],
        "source_unused": [name for name in weights if name not in set(copied)],
    }


def copy_source_weights(
    model: torch.nn.Module, config: RunConfig, run_dir: Path, splits: dict[str, Any]
) -> dict[str, Any]:
    """Start a run from its source run's ``checkpoint_best.pt`` (``config.train.init_from``; see
    :mod:`ablation.sources`): copy the entries whose names and shapes match (:func:`copy_matching_weights`).

    Args:
        model: the run's own network (``build_model(config.model)``), at its random initialisation.
        config: the run; ``train.init_from_run`` names the source folder beside ``run_dir``.
        run_dir: the run's folder.
        splits: the run's split record (``run_splits``): the source must have trained and validated on the
            same images.

    Returns:
        The config.json ``init_weights`` record: the source's ``run_id``, ``run_name``, ``checkpoint``, its
        ``epoch`` and ``val_dice``, and what :func:`copy_matching_weights` copied.

    Raises:
        AblationError: the source is missing, not done, does not fit (:func:`ablation.sources.check_source`), was
            split differently, or its checkpoint cannot be read or belongs to another run.
    """
    from ablation.models.reference import read_checkpoint
    from ablation.sources import check_source

    folder, record = check_source(config, run_dir)
    source_splits = record.get("env", {}).get("splits", {})
    for part in ("train", "val", "test"):
        if source_splits.get(part) != splits.get(part):
            raise AblationError(
                f"source run {folder} was trained on other {part} images than run {run_dir.name} "
                "(its splits file changed since): retrain the source"
            )
    path = folder / BEST_CHECKPOINT
    if not path.exists():  # e.g. results unpacked from a slim export, which carries no checkpoints
        raise AblationError(
            f"source run {folder.name} is done but has no {BEST_CHECKPOINT} here (slim exports carry no "
            f"checkpoints): train run {run_dir.name} where its source was trained, or move the source's folder "
            "away so that it is trained again"
        )
    saved = read_checkpoint(path)
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
        raise AblationError(f"checkpoint {path} is not a checkpoint_best.pt of a run (no model weights)")
    if saved.get("run_id") != record.get("run_id"):
        raise AblationError(
            f"checkpoint {path} belongs to run {saved.get('run_id')}, not {record.get('run_id')}"
        )
    return {
        "run_id": record.get("run_id"),
        "run_name": folder.name,
        "checkpoint": BEST_CHECKPOINT,
        "epoch": saved.get("epoch"),
        "val_dice": saved.get("val_dice"),
        **copy_matching_weights(model, saved["model"]),
    }
