"""Predicting and scoring a test set with a trained model (ours or a reference checkpoint).

Inputs follow the reference code of UCTransNet (Wang et al., AAAI 2022): RGB uint8 scaled to [0, 1] with no
mean/std normalisation; the reference code reads images with OpenCV, so its released checkpoints expect BGR
(``bgr=True``). A pixel is foreground when sigmoid(logit) > threshold.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ablation.config import TrainConfig
from ablation.errors import AblationError
from ablation.skips import ALL_SUBSETS
from ablation.store.writers import write_image_metrics
from ablation.train.checkpoint import load_model_checkpoint
from ablation.train.device import DeviceSetup, autocast, setup_device, to_memory_format
from ablation.train.metrics import evaluate_predictions


def to_input(images: torch.Tensor, setup: DeviceSetup, *, bgr: bool = False) -> torch.Tensor:
    """Images on the device -> the model's float input.

    Args:
        images: (B, 3, H, W) uint8 RGB, or float RGB already in [0, 1] (as ``augment_batch`` returns).
        bgr: reverse the channels for models trained on OpenCV-read images.

    Returns:
        (B, 3, H, W) float32 in [0, 1], channels_last when the setup asks for it.
    """
    if images.dtype == torch.uint8:
        images = images.float().div_(255.0)
    if bgr:
        images = images.flip(1)
    return to_memory_format(images, setup)


def logit_threshold(threshold: float) -> float:
    """The logit above which sigmoid(logit) > threshold (thresholding logits skips the sigmoid)."""
    if not 0.0 < threshold < 1.0:
        raise AblationError(f"threshold must lie strictly between 0 and 1, got {threshold}")
    return math.log(threshold / (1.0 - threshold))


@torch.no_grad()
def predict_masks(
    model: torch.nn.Module,
    images: np.ndarray,
    setup: DeviceSetup,
    *,
    batch_size: int = 16,
    threshold: float = 0.5,
    bgr: bool = False,
) -> np.ndarray:
    """Binary predictions of a whole split, batched on the device, copied to the host once.

    Args:
        model: returns logits (B, 1, H, W); put in eval mode here.
        images: (N, H, W, 3) uint8 RGB.

    Returns:
        (N, H, W) uint8 in {0, 1}.
    """
    model.eval()
    cut = logit_threshold(threshold)
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(images[start : start + batch_size]).to(setup.device, non_blocking=True)
        with autocast(setup):
            logits = model(to_input(batch.permute(0, 3, 1, 2), setup, bgr=bgr))
        outputs.append((logits[:, 0].float() > cut).to(torch.uint8))
    return torch.cat(outputs).cpu().numpy()


def score_test(
    model: torch.nn.Module, test: Any, setup: DeviceSetup, cfg: TrainConfig
) -> tuple[list[dict[str, Any]], dict[str, float], np.ndarray, list[dict[str, Any]] | None]:
    """Score a trained network on a test split (a PreparedSplit).

    Returns:
        ``(rows, summary, predictions, masked_rows)``: per-image metric rows and their summary
        (:func:`ablation.train.metrics.evaluate_predictions`), the ``(N, H, W)`` uint8 predictions and, with
        ``cfg.test_time_masks`` and a model trained with all four skips, the rows under each of the 16 runtime
        masks (column ``eval_skips`` first), else None.
    """
    options = {"batch_size": cfg.eval_batch_size, "threshold": cfg.threshold}
    preds = predict_masks(model, test.images, setup, **options)
    rows, summary = evaluate_predictions(preds, test.masks, test.instances, names=list(test.names))
    masked_rows = None
    # Runtime masking only makes sense for a model that was trained with every skip (see ARCHITECTURE.md).
    if cfg.test_time_masks and getattr(model, "skips", None) == "1111":
        masked_rows = []
        for spec in ALL_SUBSETS:
            model.set_test_time_mask(spec)
            masked = predict_masks(model, test.images, setup, **options)
            spec_rows, _ = evaluate_predictions(masked, test.masks, test.instances, names=list(test.names))
            masked_rows += [{"eval_skips": spec, **row} for row in spec_rows]
        model.set_test_time_mask(None)
    return rows, summary, preds, masked_rows


def _check_output_path(path: Path) -> None:
    """Fail before the evaluation, not after it, when the CSV cannot be written where asked."""
    if path.is_dir():
        raise AblationError(
            f"--out {path} is a folder: give the path of a CSV file, e.g. {path / 'metrics.csv'}"
        )
    existing = next((parent for parent in path.parents if parent.exists()), None)
    if existing is not None and not existing.is_dir():
        raise AblationError(f"--out {path}: {existing} is a file, not a folder")


def evaluate_checkpoint(
    checkpoint: str | Path,
    root: str,
    *,
    split: str = "test",
    bgr: bool | None = None,
    img_size: int | None = None,
    device: str | None = None,
    batch_size: int = 16,
    threshold: float = 0.5,
    out_csv: str | Path | None = None,
    data_root: str | Path | None = None,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Score a checkpoint on one split of a dataset.

    Args:
        checkpoint: our ``checkpoint_best.pt`` (the run config is stored inside) or a reference checkpoint.
        root: a dataset name or a folder in the reference layout.
        split: ``train``, ``val`` or ``test``.
        bgr: feed BGR; None follows the model's ``channel_order`` (reference checkpoints: BGR, ours: RGB).
        img_size: evaluation size; default the checkpoint's training size (224 for reference checkpoints). A
            model with CCT runs only at its training size: another size raises AblationError.
        out_csv: where to write the per-image rows (optional).
        data_root: where ``GlaS/`` and ``MoNuSeg/`` live when ``root`` is a name; default the ``data_root``
            stored in our checkpoint's run config, else ``$ABLATION_DATA`` or ``./data``.

    Returns:
        ``(rows, summary)`` as :func:`ablation.train.metrics.evaluate_predictions`.
    """
    from ablation.data import load_prepared

    path = Path(checkpoint)
    if not path.is_file():
        raise AblationError(f"checkpoint {path} not found")
    if out_csv is not None:
        _check_output_path(Path(out_csv))
    setup = setup_device(device, precision="fp32" if device == "cpu" else "auto")
    model, record = load_model_checkpoint(path, img_size=img_size, device=setup.device)
    model, size, trained = to_memory_format(model, setup), record.img_size, record.config
    # A run trained with --data-root stores it, so its checkpoint finds the same named dataset again; and its
    # images are prepared as they were in training.
    trained_root = trained.data_root if trained is not None else None
    prepared = load_prepared(
        root,
        img_size=size,
        data_root=data_root if data_root is not None else trained_root,
        interpolation=trained.interpolation if trained is not None else "reference",
    )
    if split not in prepared.splits:
        raise AblationError(
            f"split {split!r} not in dataset {root!r}: choose one of {', '.join(prepared.splits)}"
        )
    data = prepared.splits[split]
    if bgr is None:
        bgr = getattr(model, "channel_order", "RGB") == "BGR"
    preds = predict_masks(model, data.images, setup, batch_size=batch_size, threshold=threshold, bgr=bgr)
    rows, summary = evaluate_predictions(preds, data.masks, data.instances, names=list(data.names))
    if out_csv is not None:
        write_image_metrics(out_csv, rows)
    return rows, summary
