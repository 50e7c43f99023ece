"""Test-set metrics of a binary segmentation, per image and pooled. numpy/scipy only (no torch).

Pixel metrics follow the UCTransNet paper's evaluation code (Wang et al., AAAI 2022): a prediction is the
probability map thresholded at 0.5, and each test image is scored with

    Dice = 2|A∩B| / (|A| + |B| + 1e-5)        IoU = |A∩B| / (|A∪B| + 1e-5)

then averaged over the test images. Empty-mask convention: the epsilon sits only in the denominator, so when the
prediction and the ground truth are both empty the formulas give 0 / 1e-5 = 0, not 1: an image without
foreground can never count as a hit. (Every MoNuSeg and GlaS test image has foreground, so this only matters for
synthetic or user data.) A perfect non-empty prediction scores 1 - O(1e-5 / area).

HD95 (pixels) is the 95th percentile of the symmetric boundary distances: every boundary pixel of one mask
(a foreground pixel with a 4-neighbour in the background or on the image border) contributes its Euclidean
distance to the nearest boundary pixel of the other mask, both directions pooled (as in MedPy's ``hd95``).
Convention: both masks empty -> 0; exactly one empty -> the image diagonal, the largest distance the image can
hold, so that the mean stays finite and an empty prediction is penalised as hard as possible.

Object-level metrics of the GlaS challenge (Sirinukunwattana et al., "Gland segmentation in colon histology
images: The GlaS challenge contest", Medical Image Analysis 2017), computed between the ground-truth instance ids
and the 8-connected components of the binary prediction:

- F1: each segmented object is matched to the ground-truth object it overlaps most; it is a true positive when
  the overlap covers more than 50% of that ground-truth object's area (the official code's test), otherwise a
  false positive. FN = ground-truth objects - TP.
- Object Dice: (1/2) [ sum_i w_i Dice(S_i, G*(S_i)) + sum_j v_j Dice(G_j, S*(G_j)) ] with w_i = |S_i| / sum|S|,
  v_j = |G_j| / sum|G|, and * the maximally overlapping object on the other side (Dice 0 when there is none).
- Object Hausdorff: the same weighting of the Hausdorff distance between the pixel sets of matched objects; an
  object that overlaps nothing is matched to the object on the other side with the smallest Hausdorff distance.

Object conventions: no objects on either side -> F1 1, object Dice 1, object Hausdorff 0; objects on one side
only -> F1 0, object Dice 0, object Hausdorff the image diagonal (as for HD95).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

EPSILON = 1e-5  # the paper's denominator term
PIXEL_METRICS = ("dice", "iou", "hd95")
OBJECT_METRICS = ("object_f1", "object_dice", "object_hausdorff")

_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)
_EIGHT_CONNECTED = ndimage.generate_binary_structure(2, 2)


def dice_iou(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two binary masks with the paper's formula.

    Args:
        pred: (H, W) binary prediction (bool or {0, 1}).
        target: (H, W) binary ground truth.

    Returns:
        ``(dice, iou)``; both are 0 when both masks are empty (see the module docstring).
    """
    pred, target = pred.astype(bool), target.astype(bool)
    intersection = float(np.count_nonzero(pred & target))
    pred_area, target_area = float(np.count_nonzero(pred)), float(np.count_nonzero(target))
    dice = 2.0 * intersection / (pred_area + target_area + EPSILON)
    iou = intersection / (pred_area + target_area - intersection + EPSILON)
    return dice, iou


def _diagonal(shape: tuple[int, ...]) -> float:
    return float(np.hypot(*shape))


def _boundary(mask: np.ndarray) -> np.ndarray:
    # Erosion treats outside the image as background, so foreground on the border counts as boundary.
    return mask & ~ndimage.binary_erosion(mask, structure=_FOUR_CONNECTED, border_value=0)


def hd95(pred: np.ndarray, target: np.ndarray) -> float:
    """95th percentile of the symmetric boundary distances, in pixels.

    Args:
        pred: (H, W) binary prediction.
        target: (H, W) binary ground truth.

    Returns:
        The distance; 0 when both are empty, the image diagonal when exactly one is.
    """
    pred, target = pred.astype(bool), target.astype(bool)
    if not pred.any() and not target.any():
        return 0.0
    if not pred.any() or not target.any():
        return _diagonal(pred.shape)
    pred_edge, target_edge = _boundary(pred), _boundary(target)
    # distance_transform_edt measures the distance of each non-zero pixel to the nearest zero pixel.
    to_target = ndimage.distance_transform_edt(~target_edge)[pred_edge]
    to_pred = ndimage.distance_transform_edt(~pred_edge)[target_edge]
    return float(np.percentile(np.concatenate([to_target, to_pred]), 95))


def _consecutive_labels(instances: np.ndarray) -> tuple[np.ndarray, int]:
    """Relabel instance ids to 0 (background), 1..K."""
    ids, inverse = np.unique(instances, return_inverse=True)
    inverse = inverse.reshape(instances.shape)
    if ids[0] == 0:
        return inverse, len(ids) - 1
    return inverse + 1, len(ids)


def _hausdorff(distance_to_a: np.ndarray, a: np.ndarray, distance_to_b: np.ndarray, b: np.ndarray) -> float:
    """Hausdorff distance between pixel sets ``a`` and ``b`` given each set's distance map."""
    return float(max(distance_to_b[a].max(), distance_to_a[b].max()))


def object_metrics(pred: np.ndarray, instances: np.ndarray) -> dict[str, float]:
    """GlaS object-level F1, object Dice and object Hausdorff of one image.

    Args:
        pred: (H, W) binary prediction; its 8-connected components are the segmented objects.
        instances: (H, W) integer ground-truth instance ids, 0 = background.

    Returns:
        ``{"object_f1", "object_dice", "object_hausdorff"}`` (definitions and conventions in the module docstring).
    """
    segmented, num_seg = ndimage.label(pred.astype(bool), structure=_EIGHT_CONNECTED)
    truth, num_gt = _consecutive_labels(np.asarray(instances))
    if num_seg == 0 and num_gt == 0:
        return {"object_f1": 1.0, "object_dice": 1.0, "object_hausdorff": 0.0}
    if num_seg == 0 or num_gt == 0:
        return {"object_f1": 0.0, "object_dice": 0.0, "object_hausdorff": _diagonal(pred.shape)}

    # overlap[i, j]: pixels in segmented object i and ground-truth object j (row/column 0: background).
    flat = segmented.ravel().astype(np.int64) * (num_gt + 1) + truth.ravel()
    overlap = np.bincount(flat, minlength=(num_seg + 1) * (num_gt + 1)).reshape(num_seg + 1, num_gt + 1)
    inter = overlap[1:, 1:].astype(np.float64)  # (num_seg, num_gt)
    seg_area, gt_area = overlap[1:, :].sum(1).astype(np.float64), overlap[:, 1:].sum(0).astype(np.float64)
    best_gt = inter.argmax(axis=1)  # ties go to the lowest id, like the official code's mode()
    best_seg = inter.argmax(axis=0)
    seg_hits = inter[np.arange(num_seg), best_gt] > 0
    gt_hits = inter[best_seg, np.arange(num_gt)] > 0

    true_positives = int(np.sum(seg_hits & (inter[np.arange(num_seg), best_gt] / gt_area[best_gt] > 0.5)))
    precision = true_positives / num_seg
    recall = true_positives / num_gt
    f1 = 0.0 if true_positives == 0 else 2 * precision * recall / (precision + recall)

    seg_dice = np.where(seg_hits, 2 * inter[np.arange(num_seg), best_gt] / (seg_area + gt_area[best_gt]), 0.0)
    gt_dice = np.where(gt_hits, 2 * inter[best_seg, np.arange(num_gt)] / (gt_area + seg_area[best_seg]), 0.0)
    object_dice = 0.5 * (
        np.sum(seg_area * seg_dice) / seg_area.sum() + np.sum(gt_area * gt_dice) / gt_area.sum()
    )

    seg_masks = [segmented == i + 1 for i in range(num_seg)]
    gt_masks = [truth == j + 1 for j in range(num_gt)]
    seg_distance = [ndimage.distance_transform_edt(~m) for m in seg_masks]
    gt_distance = [ndimage.distance_transform_edt(~m) for m in gt_masks]
    pair = np.full((num_seg, num_gt), np.nan)

    def hausdorff(i: int, j: int) -> float:
        if np.isnan(pair[i, j]):
            pair[i, j] = _hausdorff(seg_distance[i], seg_masks[i], gt_distance[j], gt_masks[j])
        return float(pair[i, j])

    seg_h = [
        hausdorff(i, int(best_gt[i])) if seg_hits[i] else min(hausdorff(i, j) for j in range(num_gt))
        for i in range(num_seg)
    ]
    gt_h = [
        hausdorff(int(best_seg[j]), j) if gt_hits[j] else min(hausdorff(i, j) for i in range(num_seg))
        for j in range(num_gt)
    ]
    object_hausdorff = 0.5 * (
        np.dot(seg_area, seg_h) / seg_area.sum() + np.dot(gt_area, gt_h) / gt_area.sum()
    )
    return {
        "object_f1": float(f1),
        "object_dice": float(object_dice),
        "object_hausdorff": float(object_hausdorff),
    }


def image_metrics(
    pred: np.ndarray, mask: np.ndarray, instances: np.ndarray | None = None
) -> dict[str, float]:
    """All per-image metrics: dice, iou, hd95 and, given instance ids, the GlaS object metrics.

    Args:
        pred: (H, W) binary prediction.
        mask: (H, W) binary ground truth.
        instances: (H, W) ground-truth instance ids or None.
    """
    dice, iou = dice_iou(pred, mask)
    row = {"dice": dice, "iou": iou, "hd95": hd95(pred, mask)}
    if instances is not None:
        row.update(object_metrics(pred, instances))
    return row


def evaluate_predictions(
    preds: np.ndarray,
    masks: np.ndarray,
    instances: np.ndarray | None = None,
    names: list[str] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Score a test set: one row per image and the summary that goes into metrics.json.

    Args:
        preds: (N, H, W) binary predictions.
        masks: (N, H, W) binary ground truth.
        instances: (N, H, W) instance ids, or None when the dataset has none.
        names: N image names (default ``"0"``, ``"1"``, ...).

    Returns:
        ``(rows, summary)``: rows ``{"image", "dice", "iou", "hd95"[, object metrics]}``; the summary holds the
        per-image mean and (population) standard deviation of each metric (``dice_mean``, ``dice_std``, ...) and
        the pooled ("micro") ``dice_micro`` / ``iou_micro`` over all test pixels, with the same epsilon.
    """
    if preds.shape != masks.shape or preds.ndim != 3:
        raise ValueError(f"preds {preds.shape} and masks {masks.shape} must both be (N, H, W)")
    names = names if names is not None else [str(i) for i in range(len(preds))]
    rows = []
    for index, name in enumerate(names):
        row = image_metrics(preds[index], masks[index], None if instances is None else instances[index])
        rows.append({"image": name, **row})

    summary: dict[str, float] = {"num_test_images": len(rows)}
    metrics = PIXEL_METRICS + (OBJECT_METRICS if instances is not None else ())
    for metric in metrics:
        values = np.array([row[metric] for row in rows], dtype=np.float64)
        summary[f"{metric}_mean"] = float(values.mean())
        summary[f"{metric}_std"] = float(values.std())
    pred_b, mask_b = preds.astype(bool), masks.astype(bool)
    intersection = float(np.count_nonzero(pred_b & mask_b))
    total = float(np.count_nonzero(pred_b)) + float(np.count_nonzero(mask_b))
    summary["dice_micro"] = 2.0 * intersection / (total + EPSILON)
    summary["iou_micro"] = intersection / (total - intersection + EPSILON)
    return rows, summary
