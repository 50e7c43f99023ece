"""Load checkpoints saved by the reference UCTransNet code (McGregorWwww/UCTransNet) into :class:`SkipUNet`.

The reference training script saves a dict with ``state_dict``, ``epoch``, ``best_model``, ``model``,
``val_loss`` and ``optimizer`` (usually ``*.pth.tar``); its models end in a sigmoid for one class, ours return
logits, so
``torch.sigmoid(model(x))`` reproduces the reference output. The reference read images with OpenCV, so its
weights expect **BGR** channel order: the returned model has ``channel_order == "BGR"``; flip RGB batches with
``x.flip(1)`` before calling it.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ablation.config import ModelConfig
from ablation.errors import AblationError
from ablation.models.unet import SkipUNet, build_model, encoder_channels
from ablation.skips import NUM_SKIPS

_LAYER_KEY = re.compile(r"^mtc\.encoder\.layer\.(\d+)\.")


def load_reference_checkpoint(
    source: str | Path | Mapping[str, torch.Tensor], *, img_size: int = 224
) -> SkipUNet:
    """Build the model a reference-format checkpoint describes, load its weights strictly, in eval mode.

    U-Net vs UCTransNet (and our cct/cca variants and skip subsets), base channels, input channels, classes
    and the CCT shape are read off the keys and shapes. Loading uses ``torch.load(weights_only=True)``.

    Args:
        source: path to a checkpoint (a dict with a ``state_dict`` entry, or a bare state dict), or a state
            dict in memory.
        img_size: input resolution the checkpoint was trained at (fixes CCT's position embeddings).

    Returns:
        The model in eval mode; ``torch.sigmoid(model(x))`` for ``x`` of shape ``(B, C, img_size, img_size)``
        with values in [0, 1], in BGR order, equals the reference model's output.
        ``model.channel_order == "BGR"``.

    Raises:
        AblationError: missing or unreadable file, or contents that are not a U-Net/UCTransNet state dict.
    """
    where = "state dict"
    if isinstance(source, Mapping):
        state_dict = source
    else:
        where = str(source)
        state_dict = _state_dict_of(read_checkpoint(source), where)
    state_dict = _strip_data_parallel_prefix(dict(state_dict))
    config = reference_model_config(state_dict, img_size=img_size, where=where)
    model = build_model(config)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:300]
        raise AblationError(
            f"{where}: weights do not fit the inferred {config.connector} model: {detail}"
        ) from None
    model.channel_order = "BGR"
    return model.eval()


def read_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; any failure becomes a one-line :class:`AblationError`.

    torch raises many exception types for files that are not checkpoints (``UnpicklingError``, ``KeyError``,
    ``EOFError``, ``RuntimeError``, ...) with multi-line messages; the error names the file and gives a short
    reason. Checkpoints holding Python objects beyond tensors and plain containers are refused: loading those
    could run arbitrary code.

    Raises:
        AblationError: a missing or unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise AblationError(f"checkpoint {path} not found")
    # torch warns about odd pickle protocols before failing on them: pass its warnings on only on success.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            loaded = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as error:  # noqa: BLE001 - torch raises many types for non-checkpoints
            reason = _load_failure(error)
        else:
            reason = None
    if reason is not None:
        raise AblationError(f"cannot read checkpoint {path}: {reason}")
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return loaded


def _load_failure(error: Exception) -> str:
    """A short reason for a failed ``torch.load``, without torch's advice on ``weights_only``."""
    text = " ".join(str(error).split())
    if "WeightsUnpickler error:" in text:  # torch's wrapper text around the actual cause
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0].strip()
        if text.startswith("Unsupported global:"):
            name = text.removeprefix("Unsupported global:").split()[1:2] or ["?"]
            return (
                f"it stores Python objects ({name[0]}) besides tensors and plain values, "
                "which are not loaded because unpickling them could run arbitrary code"
            )
        text = text.split(". Please", 1)[0]
    detail = f"{type(error).__name__}: {text}" if text else type(error).__name__
    if len(detail) > 120:
        detail = detail[:117] + "..."
    return f"not a PyTorch checkpoint ({detail})"


def _state_dict_of(loaded: object, where: str) -> Mapping[str, torch.Tensor]:
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        return loaded["state_dict"]
    if isinstance(loaded, Mapping) and loaded and all(isinstance(v, torch.Tensor) for v in loaded.values()):
        return loaded
    keys = ", ".join(map(str, list(loaded)[:6])) if isinstance(loaded, Mapping) else type(loaded).__name__
    raise AblationError(
        f"{where}: expected a checkpoint dict with a 'state_dict' entry or a state dict, got {keys}"
    )


def _strip_data_parallel_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``nn.DataParallel`` checkpoints prefix every key with ``module.``."""
    if state_dict and all(key.startswith("module.") for key in state_dict):
        return {key[len("module.") :]: value for key, value in state_dict.items()}
    return state_dict


def reference_model_config(
    state_dict: Mapping[str, torch.Tensor], *, img_size: int = 224, where: str = "state dict"
) -> ModelConfig:
    """The :class:`ModelConfig` of a reference-layout state dict (see :func:`load_reference_checkpoint`).

    Raises:
        AblationError: when the keys are not a U-Net/UCTransNet layout or CCT was built for another img_size.
    """
    for key in (
        "inc.conv.weight",
        "outc.weight",
        *(f"up{level}.nConvs.0.conv.weight" for level in range(1, 5)),
    ):
        if key not in state_dict:
            raise AblationError(f"{where}: not a U-Net/UCTransNet state dict (no {key!r})")
    in_channels = state_dict["inc.conv.weight"].shape[1]
    base_channels = state_dict["inc.conv.weight"].shape[0]
    widths = encoder_channels(base_channels)
    decoder_inputs = {4: widths[4], 3: widths[2], 2: widths[1], 1: widths[0]}  # channels coming from below
    skips = "".join(
        "1" if state_dict[f"up{level}.nConvs.0.conv.weight"].shape[1] > decoder_inputs[level] else "0"
        for level in range(1, NUM_SKIPS + 1)
    )
    connector = _connector_of(state_dict, skips, where)
    options: dict = {}
    if any(key.startswith("mtc.") for key in state_dict):
        try:
            options = _transformer_options(state_dict, skips, img_size, where)
        except (KeyError, IndexError, ValueError) as error:
            raise AblationError(f"{where}: incomplete CCT weights ({error})") from None
    return ModelConfig(
        connector=connector,
        skips=skips,
        in_channels=in_channels,
        num_classes=state_dict["outc.weight"].shape[0],
        base_channels=base_channels,
        img_size=img_size,
        **options,
    )


def _connector_of(state_dict: Mapping[str, torch.Tensor], skips: str, where: str) -> str:
    has_cct = any(key.startswith("mtc.") for key in state_dict)
    has_cca = any(".coatt." in key for key in state_dict)
    if "up4.up.weight" in state_dict:  # transposed-conv upsampling: the U-Net decoder
        if has_cct or has_cca:
            raise AblationError(f"{where}: U-Net decoder keys mixed with CCT/CCA keys")
        return "unet"
    if has_cct:
        return "uctransnet" if has_cca else "cct"
    if has_cca:
        return "cca"
    if skips == "0000":  # without skips cct, cca and uctransnet are the same network
        return "uctransnet"
    raise AblationError(f"{where}: nearest-upsampling decoder with skips but neither CCT nor CCA keys")


def _transformer_options(
    state_dict: Mapping[str, torch.Tensor], skips: str, img_size: int, where: str
) -> dict[str, object]:
    levels = [
        level
        for level in range(1, NUM_SKIPS + 1)
        if f"mtc.embeddings_{level}.patch_embeddings.weight" in state_dict
    ]
    if "".join("1" if level in levels else "0" for level in range(1, NUM_SKIPS + 1)) != skips:
        raise AblationError(f"{where}: CCT levels {levels} do not match the decoder's skips {skips}")
    patch_sizes = list(ModelConfig().patch_sizes)
    for level in levels:
        patch_sizes[level - 1] = state_dict[f"mtc.embeddings_{level}.patch_embeddings.weight"].shape[-1]
    first = levels[0]
    num_tokens = state_dict[f"mtc.embeddings_{first}.position_embeddings"].shape[1]
    trained_size = math.isqrt(num_tokens) * patch_sizes[first - 1] * 2 ** (first - 1)
    if trained_size != img_size:
        raise AblationError(
            f"{where}: this checkpoint was trained at img_size {trained_size} (its CCT has {num_tokens} "
            f"tokens per level), not {img_size}: use --img-size {trained_size} "
            f"(img_size={trained_size} in Python)"
        )
    attention = "mtc.encoder.layer.0.channel_attn."
    per_head = [key for key in state_dict if re.fullmatch(re.escape(attention) + r"key\.\d+\.weight", key)]
    num_heads = len(per_head) if per_head else state_dict[attention + "key_heads"].shape[0]
    num_layers = 1 + max(int(match[1]) for key in state_dict if (match := _LAYER_KEY.match(key)))
    width = state_dict[f"mtc.encoder.layer.0.ffn{first}.fc1.weight"]
    return {
        "num_heads": num_heads,
        "num_layers": num_layers,
        "expand_ratio": width.shape[0] // width.shape[1],
        "patch_sizes": tuple(patch_sizes),
    }
