"""Predict masks for a folder of new images with a trained run, a reference checkpoint or a study's ensemble.

Each image is read in any format the data readers support (PNG, JPEG, BMP, TIFF; grey, palette and alpha
images become RGB), resized whole to each model's training size with that run's own interpolation (as its
training data was, :func:`ablation.data.resize.resize_image`), predicted (:mod:`ablation.predict.inference`,
optionally with test-time augmentation), and its probability map is resized back to the image's own size
before thresholding. An ensemble averages its members' probability maps at the image's size.

Output folder::

    masks/<stem>.png      0/255 mask, the image's own size
    overlays/<stem>.png   the image with the predicted outline drawn in green
    metrics.csv           with masks: one row per image, the training metrics at the image's own size
    prediction.json       what predicted (checkpoints, sizes, channel order, threshold, tta), the images
                          written, the per-image errors, the score summary and, for a study, how its runs
                          were chosen
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from ablation.data import readers
from ablation.data.resize import resize_image
from ablation.errors import AblationError
from ablation.io import atomic_write_bytes, atomic_write_json, ensure_folder
from ablation.predict.inference import Predictor, load_predictor, predict_probabilities, resize_probability
from ablation.predict.study import StudyChoice, choose_study_runs
from ablation.store.writers import write_image_metrics
from ablation.train.device import DeviceSetup, setup_device
from ablation.train.metrics import EPSILON, image_metrics

MASKS_FOLDER = "masks"
OVERLAYS_FOLDER = "overlays"
METRICS_CSV = "metrics.csv"
RECORD_FILE = "prediction.json"
OUTLINE_COLOUR = (0, 255, 0)


@dataclass
class PredictionResult:
    """What :func:`predict_folder` did.

    Attributes:
        written: stems of the images whose mask and overlay were written, in reading order.
        errors: one line per image that could not be predicted or scored (naming the file).
        rows: with masks, one metrics row per scored image (``image``, ``dice``, ``iou``, ``hd95``[, object]).
        summary: with masks, per-metric means/stds over the scored images and pooled Dice/IoU; else None.
    """

    out_dir: Path
    written: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, float] | None = None


def draw_outline(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image with the mask's outline drawn over it.

    Args:
        image: (H, W, 3) uint8 RGB.
        mask: (H, W) bool.

    Returns:
        (H, W, 3) uint8; the outline is about 1/300 of the shorter side wide (at least 1 pixel).
    """
    edge = mask & ~ndimage.binary_erosion(mask, border_value=0)
    width = max(1, min(mask.shape) // 300)
    if width > 1:
        edge = ndimage.binary_dilation(edge, iterations=width - 1)
    overlay = image.copy()
    overlay[edge] = OUTLINE_COLOUR
    return overlay


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def list_images(folder: str | Path, what: str = "--images") -> dict[str, Path]:
    """The image files of a folder by stem, in natural order (hidden files and other suffixes ignored).

    Raises:
        AblationError: a missing folder, no image in it, or two files with the same stem.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise AblationError(f"{what} folder {folder} does not exist or is not a folder")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in readers.IMAGE_EXTENSIONS:
            continue
        if path.stem in files:
            raise AblationError(f"{files[path.stem]} and {path} have the same name: keep one")
        files[path.stem] = path
    if not files and what == "--images":
        raise AblationError(f"{folder} holds no images ({', '.join(readers.IMAGE_EXTENSIONS)})")
    return {stem: files[stem] for stem in sorted(files, key=readers.natural_key)}


def _match_masks(images: dict[str, Path], masks_dir: Path) -> tuple[dict[str, Path], str]:
    """Each image's mask file and the label kind of the set (``binary`` or ``instance``), decided as in
    training (:func:`ablation.data.readers.check_mask_codings`).

    Raises:
        AblationError: an image without a mask, an unreadable mask, or masks that mix codings.
    """
    masks = list_images(masks_dir, "--masks")
    codings = []
    for stem, image in images.items():
        if stem not in masks:
            raise AblationError(f"image {image} has no mask: expected {masks_dir / (stem + '.png')}")
        label = readers.read_label(masks[stem])
        coding = readers.mask_coding(label, masks[stem])
        codings.append((readers.Sample(stem, image, masks[stem]), coding, np.unique(label)))
    return {stem: masks[stem] for stem in images}, readers.check_mask_codings(codings)


def _check_outputs(out_dir: Path, inputs: dict[str, Path | None]) -> None:
    """Outputs never go into an input folder, so they cannot replace an input file.

    Inputs are read from the top level of their folders only, and atomic writes replace a link rather than
    write through it, so keeping the output folders apart from the input folders is enough.
    """
    out = out_dir.resolve()
    own = {out, out / MASKS_FOLDER, out / OVERLAYS_FOLDER}
    for flag, folder in inputs.items():
        if folder is not None and folder.resolve() in own:
            raise AblationError(
                f"--out {out_dir} would write into the {flag} folder {folder}: choose another"
            )


def _summarize(rows: list[dict[str, Any]], pooled: np.ndarray) -> dict[str, float]:
    """Per-metric means and (population) stds over the rows, and Dice/IoU pooled over all scored pixels.

    Args:
        pooled: (3,) intersection, predicted and true foreground pixel counts summed over the images.
    """
    summary: dict[str, float] = {"num_images": len(rows)}
    for metric in [key for key in rows[0] if key != "image"] if rows else []:
        values = np.array([row[metric] for row in rows], dtype=np.float64)
        summary[f"{metric}_mean"], summary[f"{metric}_std"] = float(values.mean()), float(values.std())
    intersection, total = float(pooled[0]), float(pooled[1] + pooled[2])
    summary["dice_micro"] = 2.0 * intersection / (total + EPSILON)
    summary["iou_micro"] = intersection / (total - intersection + EPSILON)
    return summary


def predict_folder(
    models: str | Path | Sequence[str | Path],
    images_dir: str | Path,
    out_dir: str | Path,
    *,
    masks_dir: str | Path | None = None,
    tta: bool = False,
    bgr: bool | None = None,
    img_size: int | None = None,
    threshold: float | None = None,
    device: str | None = None,
    batch_size: int = 8,
    study: StudyChoice | None = None,
) -> PredictionResult:
    """Predict (and with ``masks_dir`` score) every image of a folder; several models form an ensemble.

    Args:
        models: run folders (their checkpoint_best.pt) or checkpoint files (ours or the reference code's).
        images_dir: the images (PNG, JPEG, BMP, TIFF), any size; sub-folders are not read.
        out_dir: where masks/, overlays/, metrics.csv and prediction.json go (may exist; files are replaced
            atomically). Must not be an input folder.
        masks_dir: ground-truth masks named like the images (``<stem>.png``, or any readable suffix), coded as
            training data is (0/255 or 0/1, or instance ids for the object metrics).
        tta: average each model over the 8 flips and quarter turns.
        bgr: channel order override for every model; None follows each model.
        img_size: training size of reference checkpoints (default 224).
        threshold: foreground cut on the averaged probability; None takes the models' (which must agree).
        device: ``cpu``, ``cuda`` or ``cuda:N`` (default CUDA when available).
        study: how the runs were chosen, recorded in prediction.json.

    Returns:
        The result. An image (or its mask) that cannot be read is named in ``errors`` and the others are still
        written; the caller decides what that means (the CLI exits non-zero).

    Raises:
        AblationError: bad input found before predicting: no images, two images with one stem, a missing mask
            or mask folder, an unreadable checkpoint, disagreeing thresholds, outputs that would hit inputs.
    """
    sources = [models] if isinstance(models, (str, Path)) else list(models)
    if not sources:
        raise AblationError("no model to predict with: give a run folder or a checkpoint")
    if batch_size < 1:
        raise AblationError(f"batch size must be at least 1, got {batch_size}")
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    images = list_images(images_dir)
    masks, label_kind = _match_masks(images, Path(masks_dir)) if masks_dir is not None else ({}, "binary")
    _check_outputs(
        out_dir, {"--images": images_dir, "--masks": None if masks_dir is None else Path(masks_dir)}
    )
    setup = setup_device(device)
    predictors = [load_predictor(source, setup, bgr=bgr, img_size=img_size) for source in sources]
    if threshold is None:
        cuts = {p.threshold for p in predictors}
        if len(cuts) > 1:
            raise AblationError(f"the models' thresholds differ ({sorted(cuts)}): give one with --threshold")
        threshold = cuts.pop()
    if not 0.0 < threshold < 1.0:
        raise AblationError(f"threshold must lie strictly between 0 and 1, got {threshold}")
    for folder in (MASKS_FOLDER, OVERLAYS_FOLDER):
        ensure_folder(out_dir / folder)

    result = PredictionResult(out_dir)
    pooled = np.zeros(3)
    stems = list(images)
    for start in range(0, len(stems), batch_size):
        batch: dict[str, np.ndarray] = {}
        for stem in stems[start : start + batch_size]:
            try:
                batch[stem] = readers.read_image(images[stem])
            except AblationError as error:
                result.errors.append(_one_line(error))
        if not batch:
            continue
        for stem, probability in zip(batch, _ensemble(predictors, list(batch.values()), setup, tta)):
            pred = probability > threshold
            atomic_write_bytes(out_dir / MASKS_FOLDER / f"{stem}.png", _png(pred.astype(np.uint8) * 255))
            atomic_write_bytes(
                out_dir / OVERLAYS_FOLDER / f"{stem}.png", _png(draw_outline(batch[stem], pred))
            )
            result.written.append(stem)
            if masks:
                try:
                    row, counts = _score(pred, masks[stem], images[stem], label_kind)
                except AblationError as error:
                    result.errors.append(_one_line(error))
                    continue
                result.rows.append({"image": stem, **row})
                pooled += counts
    if masks:
        write_image_metrics(out_dir / METRICS_CSV, result.rows)
        result.summary = _summarize(result.rows, pooled)
    atomic_write_json(
        out_dir / RECORD_FILE, _record(result, predictors, images_dir, masks_dir, tta, threshold, study)
    )
    return result


def _ensemble(
    predictors: list[Predictor], images: list[np.ndarray], setup: DeviceSetup, tta: bool
) -> list[np.ndarray]:
    """Mean probability of every model for each image, at the image's own size: a list of (H, W) float32."""
    sums = [torch.zeros(image.shape[:2], device=setup.device) for image in images]
    for predictor in predictors:
        resized = np.stack(
            [resize_image(image, predictor.img_size, predictor.interpolation) for image in images]
        )
        probabilities = predict_probabilities(predictor.model, resized, setup, bgr=predictor.bgr, tta=tta)
        for total, probability in zip(sums, probabilities):
            total += resize_probability(probability, *total.shape)
    return [(total / len(predictors)).cpu().numpy() for total in sums]


def _score(
    pred: np.ndarray, mask_path: Path, image_path: Path, label_kind: str
) -> tuple[dict[str, float], np.ndarray]:
    """One image's metrics and its (intersection, predicted, true) pixel counts."""
    label = readers.read_label(mask_path)
    if label.shape != pred.shape:
        raise AblationError(
            f"mask {mask_path} is {label.shape[1]}x{label.shape[0]} but its image {image_path.name} is "
            f"{pred.shape[1]}x{pred.shape[0]} (width x height)"
        )
    truth = label > 0
    row = image_metrics(pred, truth, label if label_kind == "instance" else None)
    counts = np.array([np.count_nonzero(pred & truth), np.count_nonzero(pred), np.count_nonzero(truth)])
    return row, counts


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def _record(
    result: PredictionResult,
    predictors: list[Predictor],
    images_dir: Path,
    masks_dir: str | Path | None,
    tta: bool,
    threshold: float,
    study: StudyChoice | None,
) -> dict[str, Any]:
    return {
        "models": [predictor.to_record() for predictor in predictors],
        "ensemble": len(predictors) > 1,
        "images_dir": str(images_dir),
        "masks_dir": None if masks_dir is None else str(masks_dir),
        "tta": tta,
        "threshold": threshold,
        "written": result.written,
        "errors": result.errors,
        "summary": result.summary,
        "study": None if study is None else study.to_record(),
    }


def predict_study(
    results_dir: str | Path,
    dataset: str,
    connector: str,
    images_dir: str | Path,
    out_dir: str | Path,
    *,
    subset: str | None = None,
    **options: Any,
) -> tuple[StudyChoice, PredictionResult]:
    """Predict with the ensemble of a study's best subset on validation Dice (:func:`choose_study_runs`).

    ``options`` are those of :func:`predict_folder`.
    """
    choice = choose_study_runs(results_dir, dataset, connector, subset=subset)
    result = predict_folder([run.path for run in choice.runs], images_dir, out_dir, study=choice, **options)
    return choice, result
