"""The models that predict: checkpoint loading, probabilities (optionally with TTA), resizing back.

Inputs are fed as in training (RGB in [0, 1]); reference checkpoints get BGR, as the UCTransNet code (Wang et
al., AAAI 2022) read images with OpenCV. Test-time augmentation averages over the 8 flips and quarter turns of
the square input, each prediction turned back first. Probability maps go back to an image's own size
bilinearly with half-pixel centres and no antialiasing (OpenCV's ``INTER_LINEAR``, as the reference code's
preprocessing resizes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ablation.errors import AblationError
from ablation.store.layout import BEST_CHECKPOINT, find_runs, run_name
from ablation.train.checkpoint import load_model_checkpoint
from ablation.train.device import DeviceSetup, autocast, to_memory_format
from ablation.train.evaluate import to_input

# The dihedral group of the square: (quarter turns, then a left-right flip).
DIHEDRAL = tuple((turns, flip) for flip in (False, True) for turns in range(4))


@dataclass(frozen=True)
class Predictor:
    """One trained model and how its inputs must be prepared.

    Attributes:
        model: in eval mode on the device; returns logits (B, 1, img_size, img_size).
        img_size: the square size images are resized to (the training size unless ``img_size`` asked another).
        interpolation: how its training images were resized (``reference``, ``bilinear``, ``bicubic``).
        bgr: feed BGR instead of RGB.
        threshold: foreground where the probability exceeds it.
        source: the checkpoint file.
        kind: ``run`` (our checkpoint, config stored inside) or ``reference`` (the reference code's).
        run_name: the run folder name its stored config gives (:func:`ablation.store.layout.run_name`); None for
            reference checkpoints.
    """

    model: torch.nn.Module
    img_size: int
    interpolation: str
    bgr: bool
    threshold: float
    source: Path
    kind: str
    run_name: str | None = None

    def to_record(self) -> dict[str, Any]:
        return {
            "checkpoint": str(self.source), "kind": self.kind, "run_name": self.run_name,
            "img_size": self.img_size, "interpolation": self.interpolation,
            "channel_order": "BGR" if self.bgr else "RGB", "threshold": self.threshold,
        }  # fmt: skip


def find_checkpoint(source: str | Path) -> Path:
    """A run folder's ``checkpoint_best.pt``, or ``source`` itself when it is a file.

    Raises:
        AblationError: a missing path, or a folder without checkpoint_best.pt (naming the run folders below
            it that have one, when it is a results folder).
    """
    path = Path(source)
    if path.is_file():
        return path
    if not path.is_dir():
        raise AblationError(f"{path} does not exist: give a run folder or a checkpoint file")
    if (path / BEST_CHECKPOINT).is_file():
        return path / BEST_CHECKPOINT
    below = [run.name for run in find_runs(path) if (run / BEST_CHECKPOINT).is_file()]
    if below:
        more = f" (and {len(below) - 5} more)" if len(below) > 5 else ""
        hint = f"run folders below it with one: {', '.join(below[:5])}{more}"
    else:
        hint = (
            "give a trained run folder (it holds checkpoint_best.pt) or a checkpoint file with --checkpoint"
        )
    raise AblationError(f"run folder {path} has no {BEST_CHECKPOINT}: {hint}")


def load_predictor(
    source: str | Path, setup: DeviceSetup, *, bgr: bool | None = None, img_size: int | None = None
) -> Predictor:
    """Load a run folder's best checkpoint, one of our checkpoint files or a reference checkpoint.

    Loading is :func:`ablation.train.checkpoint.load_model_checkpoint` (``torch.load(weights_only=True)``): our
    checkpoints rebuild the model from the run config stored inside, others are read as reference checkpoints.

    Args:
        source: a run folder, our ``checkpoint_*.pt`` or a reference ``*.pth.tar``.
        bgr: channel order override; None follows the model (ours RGB, reference BGR).
        img_size: the size to predict at: a reference checkpoint's training size (default 224); for ours,
            default its training size, another one only without CCT (as ``ablation evaluate --img-size``).

    Raises:
        AblationError: one line naming the file: unreadable, a stored config that is invalid or does not fit
            the weights, or another ``img_size`` for a model with CCT.
    """
    path = find_checkpoint(source)
    model, record = load_model_checkpoint(path, img_size=img_size, device=setup.device)
    model = to_memory_format(model, setup)  # in eval mode on the device
    order = bgr if bgr is not None else getattr(model, "channel_order", "RGB") == "BGR"
    if record.config is None:  # the reference code thresholds probabilities at 0.5
        return Predictor(model, record.img_size, "reference", order, 0.5, path, "reference")
    config = record.config
    return Predictor(
        model, record.img_size, config.interpolation, order, config.train.threshold, path, "run",
        run_name(config),
    )  # fmt: skip


def _dihedral(x: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    """Rotate the last two axes by ``turns`` quarter turns, then flip left-right."""
    x = torch.rot90(x, turns, dims=(-2, -1))
    return x.flip(-1) if flip else x


def _undo_dihedral(x: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    x = x.flip(-1) if flip else x
    return torch.rot90(x, -turns, dims=(-2, -1))


@torch.no_grad()
def predict_probabilities(
    model: torch.nn.Module, images: np.ndarray, setup: DeviceSetup, *, bgr: bool = False, tta: bool = False
) -> torch.Tensor:
    """Foreground probabilities of a batch of square images, on the device.

    Args:
        model: returns logits (B, 1, S, S); already in eval mode.
        images: (B, S, S, 3) uint8 RGB.
        tta: average over the 8 flips and quarter turns (each prediction turned back before averaging).

    Returns:
        (B, S, S) float32 in [0, 1].
    """
    batch = torch.from_numpy(np.ascontiguousarray(images)).to(setup.device).permute(0, 3, 1, 2)
    x = to_input(batch, setup, bgr=bgr)  # (B, 3, S, S) float in [0, 1]
    views = DIHEDRAL if tta else DIHEDRAL[:1]
    total = torch.zeros(x.shape[0], *x.shape[2:], device=setup.device)
    for turns, flip in views:
        with autocast(setup):
            logits = model(to_memory_format(_dihedral(x, turns, flip), setup))
        total += _undo_dihedral(torch.sigmoid(logits[:, 0].float()), turns, flip)
    return total / len(views)


def resize_probability(probability: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(S, S) -> (height, width): bilinear, half-pixel centres, no antialiasing (OpenCV's INTER_LINEAR)."""
    if tuple(probability.shape) == (height, width):
        return probability
    resized = F.interpolate(
        probability[None, None], size=(height, width), mode="bilinear", align_corners=False
    )
    return resized[0, 0]
