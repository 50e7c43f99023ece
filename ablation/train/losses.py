"""The training loss of UCTransNet (Wang et al., AAAI 2022): 0.5 * BCE + 0.5 * soft Dice, here from logits.

The reference code's two terms, reproduced exactly but computed from logits (numerically safer under bf16
autocast and without a sigmoid inside the model):

- BCE is class-balanced with weights (0.5, 0.5): half the mean BCE over foreground pixels plus half the mean
  over background pixels of the batch, so the ~20% foreground of MoNuSeg weighs as much as its background.
- soft Dice per image, ``1 - (2 sum(p t) + s) / (sum(p^2) + sum(t^2) + s)`` with p = sigmoid(logits) and both p
  and t scaled by the reference's constant pixel weight 0.5 (which only changes the effect of s = 1e-5),
  averaged over the batch.

No ``.item()`` here: the per-class pixel counts stay on the device, so a training step never waits for the host.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SMOOTH = 1e-5
PIXEL_WEIGHT = 0.5  # the reference's WeightedDiceLoss(weights=[0.5, 0.5]) scales p and t by this constant


def balanced_bce_with_logits(
    logits: torch.Tensor, targets: torch.Tensor, *, per_image: bool = False
) -> torch.Tensor:
    """Half the mean BCE over foreground pixels plus half over background pixels.

    Args:
        logits: (..., B, 1, H, W) raw model outputs; leading axes (e.g. the K variants of a pack) are kept.
        targets: (..., B, 1, H, W) float masks in {0, 1}.
        per_image: pool the pixels of each image separately and return (..., B) values; by default the whole
            batch is pooled, as in the reference code, and (...) returned (a scalar for 4-D inputs).
    """
    per_pixel = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").flatten(
        -3
    )  # (..., B, P)
    positive = (targets > 0.5).to(per_pixel.dtype).flatten(-3)
    negative = 1.0 - positive
    dims = (-1,) if per_image else (-2, -1)
    # The reference adds 1e-12 to each count so a batch without foreground (or background) does not divide by 0.
    positive_term = (per_pixel * positive).sum(dims) / (positive.sum(dims) + 1e-12)
    negative_term = (per_pixel * negative).sum(dims) / (negative.sum(dims) + 1e-12)
    return 0.5 * positive_term + 0.5 * negative_term


def soft_dice_loss(logits: torch.Tensor, targets: torch.Tensor, *, per_image: bool = False) -> torch.Tensor:
    """Per-image squared soft Dice loss, averaged over the batch (or (..., B) values with ``per_image``).

    Args:
        logits: (..., B, 1, H, W) raw model outputs.
        targets: (..., B, 1, H, W) float masks in {0, 1}.
    """
    probs = PIXEL_WEIGHT * torch.sigmoid(logits).flatten(-3)  # (..., B, P)
    truth = PIXEL_WEIGHT * targets.flatten(-3)
    intersection = (probs * truth).sum(-1)
    denominator = (probs * probs).sum(-1) + (truth * truth).sum(-1)
    loss = 1.0 - (2.0 * intersection + SMOOTH) / (denominator + SMOOTH)  # (..., B)
    return loss if per_image else loss.mean(-1)


def segmentation_loss(
    logits: torch.Tensor, targets: torch.Tensor, bce_weight: float = 0.5, *, per_image: bool = False
) -> torch.Tensor:
    """``bce_weight * BCE + (1 - bce_weight) * soft Dice``, computed in fp32 whatever the autocast dtype.

    Args:
        logits: (..., B, 1, H, W) raw model outputs (any float dtype); a pack's are (K, B, 1, H, W).
        targets: (..., B, 1, H, W) masks in {0, 1} (any dtype).
        bce_weight: weight of the BCE term (the paper: 0.5).
        per_image: return (..., B) per-image losses (validation uses these so its loss does not depend on the
            evaluation batch size); by default the reference's batch loss, (...) (a scalar for one model).

    Returns:
        A (...) (or (..., B)) tensor on the logits' device: for a pack, one loss per variant.
    """
    logits = logits.float()
    targets = targets.float()
    bce = balanced_bce_with_logits(logits, targets, per_image=per_image)
    return bce_weight * bce + (1.0 - bce_weight) * soft_dice_loss(logits, targets, per_image=per_image)
