"""The paper's augmentation, batched on the device (the only torch module in ``ablation.data``).

The UCTransNet training code (Wang et al., AAAI 2022) augments each sample independently: with p = 0.5 a random
``rot90`` (k in 0..3) followed by a flip along a random axis; otherwise with p = 0.5 (0.25 overall) a rotation by
an integer angle in [-20, 20) degrees (``scipy.ndimage.rotate``, order 0, zero fill); otherwise nothing. Both
image and mask are resampled with nearest neighbour.

Here every sample's transform is one 2x3 affine matrix and the whole batch is resampled by a single
``F.affine_grid`` + ``F.grid_sample(mode="nearest")`` call, with image and mask stacked as channels of one tensor so
they cannot come apart. The rot90/flip matrices hold exact 0/+-1 entries, so on square images that branch is an
exact permutation of pixels. All randomness comes from the ``torch.Generator`` passed in.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ROT_FLIP_PROBABILITY = 0.5
ROTATE_PROBABILITY = 0.5  # of the samples that were not rot90-flipped, i.e. 0.25 overall
MAX_ANGLE_DEGREES = 20


def random_affine(batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """Draw the paper's transform for each sample as a matrix for ``F.affine_grid``.

    Returns:
        ``float32 (B, 2, 3)`` on the generator's device, mapping output to input coordinates in [-1, 1].
    """
    device = generator.device
    draws = torch.rand(batch_size, 2, generator=generator, device=device)
    k = torch.randint(0, 4, (batch_size,), generator=generator, device=device)
    flip_rows = torch.randint(0, 2, (batch_size,), generator=generator, device=device).bool()
    degrees = torch.randint(
        -MAX_ANGLE_DEGREES, MAX_ANGLE_DEGREES, (batch_size,), generator=generator, device=device
    )
    rot_flip = draws[:, 0] < ROT_FLIP_PROBABILITY
    rotate = ~rot_flip & (draws[:, 1] < ROTATE_PROBABILITY)

    # rot90 by k quarter turns, exact: cos/sin of multiples of 90 degrees chosen, not computed with float trig.
    # Built with torch.where rather than a torch.tensor lookup table: copying a host list to the GPU would make
    # every training step wait for the device.
    cos = torch.where(k == 0, 1.0, torch.where(k == 2, -1.0, 0.0))
    sin = torch.where(k == 1, 1.0, torch.where(k == 3, -1.0, 0.0))
    quarter = _rotation(cos, sin)
    # A flip along rows (axis 0, y) or columns (axis 1, x), applied after the rotation like np.flip(np.rot90(.)).
    flip = torch.diag_embed(
        torch.stack([torch.where(flip_rows, 1.0, -1.0), torch.where(flip_rows, -1.0, 1.0)], 1)
    )
    radians = degrees.float() * (math.pi / 180)
    small = _rotation(torch.cos(radians), torch.sin(radians))

    identity = torch.eye(2, device=device).expand(batch_size, 2, 2)
    # affine_grid maps output to input coordinates, so the input-side transform comes last: R_k^-1 F^-1 = R_k^T F.
    linear = torch.where(rot_flip[:, None, None], quarter.transpose(1, 2) @ flip, identity)
    linear = torch.where(rotate[:, None, None], small, linear)
    return torch.cat([linear, torch.zeros(batch_size, 2, 1, device=device)], dim=2)


def _rotation(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``(B,)`` cosines and sines -> ``(B, 2, 2)`` rotation matrices in (x, y) grid coordinates."""
    return torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)


def apply_affine(
    images: torch.Tensor, masks: torch.Tensor, theta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample images and masks with per-sample affine matrices, nearest neighbour, zero outside.

    Args:
        images: ``uint8 (B, 3, H, W)``.
        masks: ``uint8 (B, 1, H, W)`` in {0, 1}.
        theta: ``(B, 2, 3)`` as from :func:`random_affine`.

    Returns:
        ``float32 (B, 3, H, W)`` images in [0, 1] and ``float32 (B, 1, H, W)`` masks in {0, 1}.
    """
    stacked = torch.cat([images, masks], dim=1).float()  # (B, 4, H, W): one resampling keeps them aligned
    grid = F.affine_grid(theta.to(stacked.device, torch.float32), list(stacked.shape), align_corners=False)
    warped = F.grid_sample(stacked, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    # Multiply by 1/255 rather than divide: CUDA turns a division by a scalar into this multiplication anyway, so
    # CPU and GPU give bit-identical images (255 * float32(1/255) is exactly 1.0).
    return warped[:, :3] * (1.0 / 255.0), warped[:, 3:]


def augment_batch(
    images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch with the paper's scheme, on the batch's device, without a per-sample loop.

    Nearest-neighbour resampling for both image and mask, as in the reference code. Images must be square (the
    prepared data always is) for the quarter turns to be exact.

    Args:
        images: ``uint8 (B, 3, H, W)`` on any device.
        masks: ``uint8 (B, 1, H, W)`` in {0, 1}, same device.
        generator: the run's seeded generator (CPU, or on the batch's device); the only source of randomness.

    Returns:
        ``float32 (B, 3, H, W)`` images in [0, 1] and ``float32 (B, 1, H, W)`` masks in {0, 1}.
    """
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"augment_batch needs square images, got {tuple(images.shape[-2:])}")
    theta = random_affine(images.shape[0], generator)
    return apply_affine(images, masks, theta)
