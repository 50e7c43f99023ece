"""Frozen, typed configuration of a run. No torch import: reports and the grid runner read these too.

A run is (dataset, split, model, training settings, seed). Variants come from ``dataclasses.replace``; dictionaries
from JSON/TOML go through :func:`from_dict`, which rejects unknown keys with the list of valid ones.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from ablation.errors import AblationError
from ablation.skips import parse_skips

CONNECTORS: dict[str, str] = {
    "unet": "plain skip connections (U-Net)",
    "cct": "CCT channel transformer on the skips, plain concatenation in the decoder (Base+CCT)",
    "cca": "plain skips, channel-wise cross attention in each decoder block (Base+CCA)",
    "uctransnet": "CCT + CCA (UCTransNet)",
}


PRECISIONS = ("auto", "bf16", "fp32")
PACK_CONVS = ("grouped", "per_variant")  # how a fused pack runs its 3x3 convolutions (ablation.models.fused)
INTERPOLATIONS = ("reference", "bilinear", "bicubic")  # see ablation.data.prepare


def _check_range(
    key: str,
    value: float,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    below: float | None = None,
    exclusive_minimum: bool = False,
) -> None:
    """Raise AblationError naming ``key`` unless ``value`` is a finite number inside the bounds."""
    bounds = []
    if minimum is not None:
        bounds.append(f"{'>' if exclusive_minimum else '>='} {minimum}")
    if maximum is not None:
        bounds.append(f"<= {maximum}")
    if below is not None:
        bounds.append(f"< {below}")
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if exclusive_minimum else value >= minimum
    if ok and maximum is not None:
        ok = value <= maximum
    if ok and below is not None:
        ok = value < below
    if not ok:
        raise AblationError(f"config key {key!r} must be {' and '.join(bounds)}, got {value!r}")


def check_connector(name: str) -> str:
    if name not in CONNECTORS:
        raise AblationError(f"unknown connector {name!r}: choose one of {', '.join(CONNECTORS)}")
    return name


@dataclass(frozen=True)
class ModelConfig:
    connector: str = "unet"
    skips: str = "1111"  # L1..L4, L1 shallowest; any form parse_skips accepts, stored canonical
    in_channels: int = 3
    num_classes: int = 1
    base_channels: int = 64
    img_size: int = 224  # training/eval resolution; CCT token grids depend on it
    num_heads: int = 4  # CCT heads
    num_layers: int = 4  # CCT layers
    expand_ratio: int = 4  # CCT MLP width multiplier
    patch_sizes: tuple[int, int, int, int] = (16, 8, 4, 2)  # CCT patch size per level, L1..L4
    embedding_dropout: float = 0.1
    attention_dropout: float = 0.1
    mlp_dropout: float = 0.0

    def __post_init__(self) -> None:
        check_connector(self.connector)
        object.__setattr__(self, "skips", parse_skips(self.skips))
        object.__setattr__(self, "patch_sizes", tuple(self.patch_sizes))
        if self.img_size < 16 or self.img_size % 16:
            raise AblationError(
                f"model.img_size {self.img_size} must be a positive multiple of 16 (four 2x poolings)"
            )
        for key in ("in_channels", "num_classes", "base_channels", "num_heads", "num_layers", "expand_ratio"):
            _check_range(f"model.{key}", getattr(self, key), minimum=1)
        for key in ("embedding_dropout", "attention_dropout", "mlp_dropout"):
            _check_range(f"model.{key}", getattr(self, key), minimum=0.0, below=1.0)


@dataclass(frozen=True)
class TrainConfig:
    """Defaults follow the paper's protocol (shared/reference/README.md)."""

    max_epochs: int = 2000
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.0
    scheduler_t0: int = 10  # CosineAnnealingWarmRestarts, stepped once per epoch
    scheduler_t_mult: int = 1
    scheduler_eta_min: float = 1e-4
    bce_weight: float = 0.5  # loss = bce_weight * BCE + (1 - bce_weight) * soft Dice
    patience: int = 50  # early stopping on validation Dice
    min_best_epoch: int = 5  # the best checkpoint is only kept after this epoch
    threshold: float = 0.5
    augment: bool = True  # the paper's rot90+flip / small-rotation scheme, on the device
    checkpoint_every: int = 10  # epochs between resumable checkpoints
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 elsewhere), bf16, fp32
    channels_last: bool = True  # only applied on CUDA
    compile: bool = False  # torch.compile the model (CUDA only)
    deterministic: bool = True  # deterministic algorithms (bit-exact reruns on CPU)
    eval_batch_size: int = 16
    save_predictions: int = 8  # first N test images' predictions kept for qualitative figures
    test_time_masks: bool = False  # also evaluate a model trained with all skips under all 16 runtime masks
    # 3x3 convolutions of a fused pack (K >= 2 variants): one grouped convolution ("grouped") or K dense ones,
    # on K CUDA streams on a GPU ("per_variant"). The same arithmetic up to summation order.
    pack_conv: str = "grouped"
    cuda_graphs: bool = (
        False  # capture the training step (forward, backward, Adam) in a CUDA graph (CUDA only)
    )

    def __post_init__(self) -> None:
        for key in ("max_epochs", "batch_size", "scheduler_t0", "scheduler_t_mult", "checkpoint_every"):
            _check_range(f"train.{key}", getattr(self, key), minimum=1)
        _check_range("train.eval_batch_size", self.eval_batch_size, minimum=1)
        for key in ("patience", "min_best_epoch", "save_predictions"):
            _check_range(f"train.{key}", getattr(self, key), minimum=0)
        _check_range("train.lr", self.lr, minimum=0.0, exclusive_minimum=True)
        for key in ("weight_decay", "scheduler_eta_min"):
            _check_range(f"train.{key}", getattr(self, key), minimum=0.0)
        _check_range("train.bce_weight", self.bce_weight, minimum=0.0, maximum=1.0)
        _check_range("train.threshold", self.threshold, minimum=0.0, exclusive_minimum=True, below=1.0)
        if self.precision not in PRECISIONS:
            raise AblationError(
                f"unknown train.precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}"
            )
        if self.pack_conv not in PACK_CONVS:
            raise AblationError(
                f"unknown train.pack_conv {self.pack_conv!r}: choose one of {', '.join(PACK_CONVS)}"
            )


@dataclass(frozen=True)
class RunConfig:
    dataset: str = "synthetic-nuclei"  # a known name (see ablation.data) or a folder in the reference layout
    seed: int = 0
    fold: int | None = None  # None: the layout's own train/val split; else the k-fold index
    repeat: int = 0  # k-fold repeat index (the paper: 3 repeats x 5 folds)
    num_folds: int = 5
    data_root: str | None = None  # where named datasets live; default $ABLATION_DATA or ./data
    # Image resizing: "reference" (OpenCV-style bilinear, masks thresholded after resizing, as the reference
    # code), or Pillow's "bilinear" / "bicubic" (antialiased images, nearest masks). Part of the run's identity.
    interpolation: str = "reference"
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise AblationError(
                f"unknown interpolation {self.interpolation!r}: choose one of {', '.join(INTERPOLATIONS)}"
            )
        _check_range("num_folds", self.num_folds, minimum=2)
        _check_range("repeat", self.repeat, minimum=0)
        if self.fold is not None and not 0 <= self.fold < self.num_folds:
            raise AblationError(f"fold {self.fold} out of range: choose 0..{self.num_folds - 1}")


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass."""
    out = dataclasses.asdict(config)
    return _lists(out)


def _lists(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _lists(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return [_lists(v) for v in obj]
    return obj


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build a config dataclass from a dict; unknown keys and wrong types raise AblationError naming the key."""
    if not isinstance(data, dict):
        raise AblationError(f"{where or cls.__name__}: expected a table of keys, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{where}.{key}" if where else key
        if key not in fields:
            raise AblationError(f"unknown config key {name!r}: valid keys are {', '.join(fields)}")
        kwargs[key] = _coerce(hints[key], value, name)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, name: str) -> Any:
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        return from_dict(hint, value, name)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, name)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise AblationError(f"config key {name!r}: expected a list, got {value!r}")
        return tuple(_coerce(args[0], v, name) for v in value)
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise AblationError(f"config key {name!r}: expected true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise AblationError(f"config key {name!r}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise AblationError(f"config key {name!r}: expected an integer, got {value!r}") from None
    if hint is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise AblationError(f"config key {name!r}: expected a number, got {value!r}") from None
    if hint is str:
        if not isinstance(value, str):
            raise AblationError(f"config key {name!r}: expected a string, got {value!r}")
        return value
    return value


def apply_overrides(config: Any, overrides: dict[str, Any]) -> Any:
    """Return a copy with dotted-key overrides applied, e.g. ``{"train.lr": 1e-4, "model.skips": "1011"}``."""
    data = to_dict(config)
    for dotted, value in overrides.items():
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            if part not in node or not isinstance(node[part], dict):
                raise AblationError(f"unknown config key {dotted!r}: {part!r} is not a section")
            node = node[part]
        node[parts[-1]] = value
    return from_dict(type(config), data)
