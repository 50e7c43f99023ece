"""Frozen, typed configuration of a run. No torch import: reports and the grid runner read these too.

A run is (dataset, split, model, training settings, seed). Variants come from ``dataclasses.replace``; settings
files (TOML or JSON, read by :func:`ablation.config_text.read_config_file`) become configs through
:func:`from_dict`, which rejects unknown keys with the list of valid ones and values of the wrong type;
``--set KEY=VALUE`` texts (:func:`ablation.config_text.parse_assignments`) go through :func:`apply_overrides`,
which reads each value as its field's type. Experiment specs (:mod:`ablation.grid.spec`) are checked by the same
:func:`from_dict`. The bounds every value is checked against are :mod:`ablation.limits`'. :data:`CONNECTORS` is
the one table of what each connector is.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from ablation.errors import AblationError
from ablation.limits import MAX_BASE_CHANNELS, MAX_INT, check_img_size, check_integers, check_range, shown
from ablation.skips import parse_skips


@dataclass(frozen=True)
class Connector:
    """What one connector of the study is (UCTransNet, Wang et al., AAAI 2022, Table 3 module ablation).

    Attributes:
        description: one line for help texts.
        upsampling: the decoder's 2x upsampling: ``transpose`` (ConvTranspose2d, then concat ``[up, skip]``, the
            reference U-Net) or ``nearest`` (then concat ``[skip, up]``, the reference UCTransNet).
        channel_attention: CCA (channel-wise cross attention) gates the skip in every decoder block.
        transformer: CCT (the channel transformer) fuses all skips before the decoder.
        paper_names: how the paper names it with all skips: the module-ablation label (Table 3) first, then any
            other name in ``ablation/resources/paper_results.csv`` (Table 1).
        paper_init: the weights the paper starts it from: ``random``, what they come from (``a trained U-Net``:
            the reference's ``UCTransNet_pretrain``), or None where the paper does not say (CCT and CCA alone).
        packed_gib: peak training memory of one packed variant at base 64, 224 px, batch 4, in GiB; sizes
            ``auto`` packs (:func:`ablation.packing.auto_pack_size`). Measured on an H200 with 16 variants and
            the earlier vmap engine for ``unet`` and ``uctransnet`` (results/benchmarks/, the vmap tables);
            ``cca`` and ``cct`` are not measured, only estimated from those two. The fused engine's own figures
            come from benchmarks/packed_training.py (peak GiB per row).
    """

    description: str
    upsampling: str
    channel_attention: bool
    transformer: bool
    paper_names: tuple[str, ...]
    paper_init: str | None
    packed_gib: float

    @property
    def label(self) -> str:
        """The paper's module-ablation label: ``Base``, ``Base+CCT``, ``Base+CCA``, ``Base+CCT+CCA``."""
        return self.paper_names[0]

    @property
    def maskable(self) -> bool:
        """Whether zeroing a built skip equals removing it, so runs of different skip subsets can share a pack.

        True without CCT: with it, a zeroed level still takes part in the transformer's attention and norms.
        """
        return not self.transformer


CONNECTORS: dict[str, Connector] = {
    "unet": Connector(
        description="plain skip connections (U-Net)",
        upsampling="transpose",
        channel_attention=False,
        transformer=False,
        paper_names=("Base", "U-Net"),
        paper_init="random",
        packed_gib=1.7,  # 26.6 GiB / 16
    ),
    "cct": Connector(
        description="CCT channel transformer on the skips, plain concatenation in the decoder (Base+CCT)",
        upsampling="nearest",
        channel_attention=False,
        transformer=True,
        paper_names=("Base+CCT",),
        paper_init=None,
        packed_gib=4.3,  # not measured: as uctransnet
    ),
    "cca": Connector(
        description="plain skips, channel-wise cross attention in each decoder block (Base+CCA)",
        upsampling="nearest",
        channel_attention=True,
        transformer=False,
        paper_names=("Base+CCA",),
        paper_init=None,
        packed_gib=1.9,  # not measured: unet plus the CCA gates
    ),
    "uctransnet": Connector(
        description="CCT + CCA (UCTransNet)",
        upsampling="nearest",
        channel_attention=True,
        transformer=True,
        paper_names=("Base+CCT+CCA", "UCTransNet"),
        paper_init="a trained U-Net",
        packed_gib=4.3,  # 68.3 GiB / 16
    ),
}
# The connectors whose starting weights the paper states: None for random weights, else what they come from
# (:attr:`Connector.paper_init`, as the report's protocol statement compares runs with it).
PAPER_INIT = {
    name: None if connector.paper_init == "random" else connector.paper_init
    for name, connector in CONNECTORS.items()
    if connector.paper_init is not None
}

PRECISIONS = ("auto", "bf16", "fp32")
PACK_CONVS = ("grouped", "per_variant")  # how a fused pack runs its 3x3 convolutions (ablation.models.fused)
INTERPOLATIONS = ("reference", "bilinear", "bicubic")  # see ablation.data.resize


def check_connector(name: Any) -> str:
    """``name`` itself when it is a connector of :data:`CONNECTORS`; else an error listing them."""
    if not isinstance(name, str) or name not in CONNECTORS:
        raise AblationError(f"unknown connector {name!r}: choose one of {', '.join(CONNECTORS)}")
    return name


def parse_init_from(value: Any, key: str = "train.init_from") -> str:
    """A ``train.init_from`` value in canonical form: ``""`` (random weights) or ``"<connector>/<skips>"``.

    ``"uctransnet/L1+L2+L3+L4"`` becomes ``"uctransnet/1111"``; the skips take any form :func:`parse_skips`
    accepts.

    Raises:
        AblationError: naming ``key``, for anything else (listing the connectors).
    """
    if value == "":
        return ""
    connector, sep, skips = value.partition("/") if isinstance(value, str) else ("", "", "")
    if not sep or connector not in CONNECTORS:
        raise AblationError(
            f"config key {key!r}: expected '<connector>/<skips>' such as 'unet/1111' (connectors: "
            f"{', '.join(CONNECTORS)}), or '' for random weights; got {value!r}"
        )
    try:
        return f"{connector}/{parse_skips(skips)}"
    except AblationError as error:
        raise AblationError(f"config key {key!r}: {error}") from None


def check_interpolation(name: Any) -> str:
    """``name`` itself when it is one of :data:`INTERPOLATIONS`; else an error listing them."""
    if not isinstance(name, str) or name not in INTERPOLATIONS:
        raise AblationError(f"unknown interpolation {name!r}: choose one of {', '.join(INTERPOLATIONS)}")
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
        check_integers(self, "model")
        if len(self.patch_sizes) != 4:
            raise AblationError(
                f"config key 'model.patch_sizes' needs 4 sizes (L1..L4), got {list(self.patch_sizes)}"
            )
        for size in self.patch_sizes:
            check_range("model.patch_sizes", size, minimum=1)
        check_img_size(self.img_size)
        for key in ("in_channels", "num_classes", "base_channels", "num_heads", "num_layers", "expand_ratio"):
            check_range(f"model.{key}", getattr(self, key), minimum=1)
        check_range("model.base_channels", self.base_channels, maximum=MAX_BASE_CHANNELS)
        for key in ("embedding_dropout", "attention_dropout", "mlp_dropout"):
            check_range(f"model.{key}", getattr(self, key), minimum=0.0, below=1.0)


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
    # The run to start from (the reference's UCTransNet_pretrain): "" for random weights, or
    # "<connector>/<skips>" such as "unet/1111", the run of the same dataset, split and seed with that connector
    # and skip subset (ablation.sources). At a fresh start the weights of its checkpoint_best.pt whose names and
    # shapes match are copied into the new network.
    init_from: str = ""
    # The source run's folder name (its run id is the last part), filled in from init_from by the grid or
    # `ablation train`, never by hand: part of the run's identity, so a changed source makes a new run.
    init_from_run: str = ""
    # TensorBoard event files in <run>/tensorboard (the optional `tensorboard` extra): losses, validation Dice
    # and learning rate once per epoch, and every `tensorboard_images_every` epochs (0: never) a few validation
    # images with their masks and predictions. Not part of the run's identity.
    tensorboard: bool = False
    tensorboard_images_every: int = 10

    def __post_init__(self) -> None:
        check_integers(self, "train")
        for key in ("max_epochs", "batch_size", "scheduler_t0", "scheduler_t_mult", "checkpoint_every"):
            check_range(f"train.{key}", getattr(self, key), minimum=1)
        check_range("train.eval_batch_size", self.eval_batch_size, minimum=1)
        for key in ("patience", "min_best_epoch", "save_predictions", "tensorboard_images_every"):
            check_range(f"train.{key}", getattr(self, key), minimum=0)
        check_range("train.lr", self.lr, minimum=0.0, exclusive_minimum=True)
        for key in ("weight_decay", "scheduler_eta_min"):
            check_range(f"train.{key}", getattr(self, key), minimum=0.0)
        check_range("train.bce_weight", self.bce_weight, minimum=0.0, maximum=1.0)
        check_range("train.threshold", self.threshold, minimum=0.0, exclusive_minimum=True, below=1.0)
        if self.precision not in PRECISIONS:
            raise AblationError(
                f"unknown train.precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}"
            )
        object.__setattr__(self, "init_from", parse_init_from(self.init_from))
        if not isinstance(self.init_from_run, str) or (self.init_from_run and not self.init_from):
            raise AblationError(
                f"config key 'train.init_from_run' ({self.init_from_run!r}) is filled in from train.init_from "
                "by the grid or `ablation train`: set train.init_from instead"
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
        check_interpolation(self.interpolation)
        check_range("seed", self.seed, minimum=0, maximum=MAX_INT)
        check_range("num_folds", self.num_folds, minimum=2, maximum=MAX_INT)
        check_range("repeat", self.repeat, minimum=0, maximum=MAX_INT)
        if self.fold is not None and not 0 <= self.fold < self.num_folds:
            raise AblationError(f"fold {self.fold} out of range: choose 0..{self.num_folds - 1}")


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass (tuples become lists)."""
    return _plain(config)


def _plain(obj: Any) -> Any:
    # Not dataclasses.asdict: it deep-copies every value, and run names (hashes of this dict) are computed for
    # every run of a grid, up to tens of thousands for a dry run. The values here are immutable.
    kind = type(obj)
    if kind in (str, int, float, bool, type(None)):
        return obj
    if kind in (tuple, list):
        return [_plain(value) for value in obj]
    if isinstance(obj, dict):
        return {key: _plain(value) for key, value in obj.items()}
    names = _FIELD_NAMES.get(kind)
    if names is None and dataclasses.is_dataclass(kind):
        names = _FIELD_NAMES.setdefault(kind, tuple(item.name for item in dataclasses.fields(kind)))
    return obj if names is None else {name: _plain(getattr(obj, name)) for name in names}


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}  # a config dataclass's field names, looked up once


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build a config dataclass from a dict (TOML/JSON types); nested dataclass fields take nested dicts.

    Raises:
        AblationError: for an unknown key (listing the valid ones) or a value of the wrong type, naming the key
            (``where.key``), or whatever the dataclass's own checks raise.
    """
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
    """``value`` checked against the field type ``hint`` (ints are accepted as floats, lists as tuples)."""
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else from_dict(hint, value, name)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _coerce(_not_none(hint), value, name)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise AblationError(f"config key {name!r}: expected a list, got {value!r}")
        return tuple(_coerce(args[0], v, name) for v in value)
    if hint is bool and not isinstance(value, bool):
        raise AblationError(f"config key {name!r} must be true or false, got {value!r}")
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise AblationError(f"config key {name!r}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise AblationError(f"config key {name!r}: expected a number, got {value!r}")
        try:
            return float(value)
        except OverflowError:
            raise AblationError(f"config key {name!r}: {shown(value)} is too large for a number") from None
    if hint is str and not isinstance(value, str):
        raise AblationError(f"config key {name!r}: expected a string, got {value!r}")
    return value


def _not_none(hint: Any) -> Any:
    """``X`` for ``X | None``; other hints unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(hint) if a is not type(None)][0]
    return hint


def _from_text(hint: Any, text: str) -> Any:
    """A ``--set`` value read as its field's type (``"1e-4"``, ``"3"``, ``"yes"``); text that does not parse
    is returned as it is, for :func:`from_dict` to reject with the key's name."""
    hint = _not_none(hint)
    word = text.strip().lower()
    if hint is bool and word in ("true", "1", "yes", "false", "0", "no"):
        return word in ("true", "1", "yes")
    for kind in (int, float):
        if hint is kind:
            try:
                return kind(text)
            except ValueError:
                return text
    return text


def apply_overrides(config: Any, overrides: dict[str, Any]) -> Any:
    """Return a copy with dotted-key overrides applied, e.g. ``{"train.lr": 1e-4, "model.skips": "1011"}``.

    Text values (``--set train.lr=1e-4`` on the command line) are read as their field's type first.
    """
    data = to_dict(config)
    for dotted, value in overrides.items():
        node, cls = data, type(config)
        parts = dotted.split(".")
        for part in parts[:-1]:
            if part not in node or not isinstance(node[part], dict):
                raise AblationError(f"unknown config key {dotted!r}: {part!r} is not a section")
            node, cls = node[part], typing.get_type_hints(cls)[part]
        hint = typing.get_type_hints(cls).get(parts[-1])
        node[parts[-1]] = _from_text(hint, value) if isinstance(value, str) and hint is not None else value
    return from_dict(type(config), data)
