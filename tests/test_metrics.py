"""Metrics agree with straightforward independent computations and with a hand-worked GlaS example."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ablation.train.metrics import dice_iou, evaluate_predictions, hd95, image_metrics, object_metrics


def _random_masks(seed: int, shape=(24, 20), density=0.4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random(shape) < density, rng.random(shape) < density


def _set_dice_iou(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    a = {tuple(p) for p in np.argwhere(pred)}
    b = {tuple(p) for p in np.argwhere(target)}
    return 2 * len(a & b) / (len(a) + len(b) + 1e-5), len(a & b) / (len(a | b) + 1e-5)


def _loop_boundary(mask: np.ndarray) -> list[tuple[int, int]]:
    """Foreground pixels with a 4-neighbour outside the mask or outside the image."""
    h, w = mask.shape
    out = []
    for y in range(h):
        for x in range(w):
            if not mask[y, x]:
                continue
            for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                ny, nx = y + dy, x + dx
                if not (0 <= ny < h and 0 <= nx < w) or not mask[ny, nx]:
                    out.append((y, x))
                    break
    return out


def _brute_hd95(pred: np.ndarray, target: np.ndarray) -> float:
    a = np.array(_loop_boundary(pred), dtype=float)
    b = np.array(_loop_boundary(target), dtype=float)
    d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    return float(np.percentile(np.concatenate([d.min(1), d.min(0)]), 95))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("density", [0.05, 0.4, 0.8])
def test_dice_iou_hd95_match_independent_computation(seed: int, density: float) -> None:
    pred, target = _random_masks(seed, density=density)
    dice, iou = dice_iou(pred, target)
    ref_dice, ref_iou = _set_dice_iou(pred, target)
    assert dice == pytest.approx(ref_dice, abs=1e-12)
    assert iou == pytest.approx(ref_iou, abs=1e-12)
    assert hd95(pred, target) == pytest.approx(_brute_hd95(pred, target), abs=1e-9)


def test_hd95_of_shifted_square_is_the_shift() -> None:
    target = np.zeros((32, 32), bool)
    target[8:20, 8:20] = True
    pred = np.roll(target, 3, axis=1)
    # Every boundary pixel of a square shifted by 3 lies 3 px (columns) or 0 px (shared rows) from the other's
    # boundary; far more than 5% of them are on the vertical sides at exactly 3 px.
    assert hd95(pred, target) == pytest.approx(3.0)
    assert hd95(target, target) == 0.0


def test_empty_mask_conventions() -> None:
    empty = np.zeros((10, 20), bool)
    full = np.ones((10, 20), bool)
    assert dice_iou(empty, empty) == (0.0, 0.0)  # the paper's formula: 0 / (0 + 1e-5)
    assert dice_iou(empty, full) == (0.0, 0.0)
    assert hd95(empty, empty) == 0.0
    assert hd95(empty, full) == pytest.approx(math.hypot(10, 20))
    assert object_metrics(empty, np.zeros((10, 20), int)) == {
        "object_f1": 1.0,
        "object_dice": 1.0,
        "object_hausdorff": 0.0,
    }
    assert object_metrics(empty, full.astype(int)) == {
        "object_f1": 0.0,
        "object_dice": 0.0,
        "object_hausdorff": pytest.approx(math.hypot(10, 20)),
    }


def _hand_worked_example() -> tuple[np.ndarray, np.ndarray]:
    """A 10 x 12 image (rows y, columns x; ranges inclusive).

    Ground truth (instance ids 1, 2, 5 - the gap checks that ids need not be consecutive):
        G1 = y 0-3, x 0-3   (16 px)
        G2 = y 0-1, x 8-11  (8 px)
        G3 = y 7-9, x 9-11  (9 px, id 5)
    Prediction (three 8-connected components):
        S1 = y 0-3, x 0-2   (12 px, inside G1)
        S2 = y 1-2, x 10-11 (4 px, 2 of them in G2)
        S3 = y 7-8, x 4-5   (4 px, touching nothing)
    """
    truth = np.zeros((10, 12), np.int32)
    truth[0:4, 0:4] = 1
    truth[0:2, 8:12] = 2
    truth[7:10, 9:12] = 5
    pred = np.zeros((10, 12), np.uint8)
    pred[0:4, 0:3] = 1
    pred[1:3, 10:12] = 1
    pred[7:9, 4:6] = 1
    return pred, truth


def test_glas_object_metrics_match_hand_worked_example() -> None:
    pred, truth = _hand_worked_example()
    got = object_metrics(pred, truth)

    # F1. S1 covers 12/16 = 75% of G1 -> TP. S2's best match is G2, covering 2/8 = 25% -> FP. S3 overlaps nothing
    # -> FP. TP = 1, FP = 2, FN = 3 - 1 = 2 (G2, G3): precision = recall = 1/3, F1 = 1/3.
    assert got["object_f1"] == pytest.approx(1 / 3)

    # Object Dice. Dice(S1, G1) = 2*12/(12+16) = 6/7; Dice(S2, G2) = 2*2/(4+8) = 1/3; S3 and G3 have no match -> 0.
    # Segmented side, weights |S_i| / 20:   (12 * 6/7 + 4 * 1/3 + 4 * 0) / 20 = 61/105
    # Ground-truth side, weights |G_j| / 33: (16 * 6/7 + 8 * 1/3 + 9 * 0) / 33 = 344/693
    assert got["object_dice"] == pytest.approx(0.5 * (61 / 105 + 344 / 693))

    # Object Hausdorff (Euclidean, between pixel centres).
    # H(S1, G1) = 1: S1 lies in G1 and G1's column x=3 is 1 px from S1's x=2.
    # H(S2, G2) = sqrt(5): G2's corner (0, 8) is sqrt(1 + 4) from S2's nearest pixel (1, 10).
    # S3 overlaps nothing, so it is matched to the GT object nearest in Hausdorff distance:
    #   H(S3, G1) = sqrt(65) [(0,0)->(7,4)], H(S3, G2) = sqrt(85) [(0,11)->(7,5)], H(S3, G3) = sqrt(37)
    #   [(9,11)->(8,5)]; the minimum is sqrt(37).
    # G3 overlaps nothing, so it takes the nearest segmented object:
    #   H(S1, G3) = sqrt(130) [(0,0)->(7,9)], H(S2, G3) = sqrt(50) [(9,9)->(2,10)], H(S3, G3) = sqrt(37) -> sqrt(37).
    segmented_side = (12 * 1 + 4 * math.sqrt(5) + 4 * math.sqrt(37)) / 20
    truth_side = (16 * 1 + 8 * math.sqrt(5) + 9 * math.sqrt(37)) / 33
    assert got["object_hausdorff"] == pytest.approx(0.5 * (segmented_side + truth_side))


def test_prediction_objects_are_eight_connected() -> None:
    truth = np.zeros((8, 8), np.int32)
    truth[0:4, 0:4] = 1
    pred = np.zeros((8, 8), np.uint8)
    pred[0:2, 0:2] = 1
    pred[2:4, 2:4] = 1  # touches the first block only at a corner: still one object (8-connectivity)
    got = object_metrics(pred, truth)
    # One segmented object of 8 px inside G1 (16 px): overlap 8/16 = 50%, not more than half -> FP, so F1 = 0.
    assert got["object_f1"] == 0.0
    assert got["object_dice"] == pytest.approx(2 * 8 / (8 + 16))


def test_evaluate_predictions_summary() -> None:
    rng = np.random.default_rng(7)
    preds = rng.random((5, 16, 16)) < 0.3
    masks = rng.random((5, 16, 16)) < 0.3
    instances = np.stack([np.where(m, 1 + (np.arange(16)[None, :] >= 8), 0) for m in masks]).astype(np.int32)
    rows, summary = evaluate_predictions(preds, masks, instances, names=[f"img{i}" for i in range(5)])
    assert [r["image"] for r in rows] == [f"img{i}" for i in range(5)]
    dices = [_set_dice_iou(p, m)[0] for p, m in zip(preds, masks)]
    assert summary["dice_mean"] == pytest.approx(np.mean(dices))
    assert summary["dice_std"] == pytest.approx(np.std(dices))
    pooled_inter = sum(np.sum(p & m) for p, m in zip(preds, masks))
    assert summary["dice_micro"] == pytest.approx(2 * pooled_inter / (preds.sum() + masks.sum() + 1e-5))
    assert summary["iou_micro"] == pytest.approx(pooled_inter / ((preds | masks).sum() + 1e-5))
    assert {"object_f1_mean", "object_dice_mean", "object_hausdorff_mean"} <= set(summary)
    assert rows[2]["object_f1"] == image_metrics(preds[2], masks[2], instances[2])["object_f1"]
    _, no_instances = evaluate_predictions(preds, masks)
    assert "object_f1_mean" not in no_instances
