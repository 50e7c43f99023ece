"""The paper's augmentation on the device: exact quarter turns and flips, aligned masks, seeded."""

from __future__ import annotations

import pytest
import torch

from ablation.data.augment import apply_affine, augment_batch, random_affine


def _batch(batch_size: int = 64, size: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images whose first channel encodes the mask (255 on the mask), so alignment can be checked."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch_size, 3, size, size), generator=generator, dtype=torch.uint8)
    masks = torch.randint(0, 2, (batch_size, 1, size, size), generator=generator, dtype=torch.uint8)
    images[:, 0] = masks[:, 0] * 255
    return images, masks


def _reflections(x: torch.Tensor) -> list[torch.Tensor]:
    """The four reflections of the square (what rot90 followed by a flip can give), for ``(C, H, W)``."""
    out = []
    for k in range(4):
        turned = torch.rot90(x, k, (1, 2))
        out += [torch.flip(turned, (1,)), torch.flip(turned, (2,))]
    return out


def test_outputs_are_floats_and_stay_aligned() -> None:
    images, masks = _batch()
    out_images, out_masks = augment_batch(images, masks, torch.Generator().manual_seed(1))
    assert out_images.dtype == torch.float32 and out_masks.dtype == torch.float32
    assert out_images.shape == images.shape and out_masks.shape == masks.shape
    assert 0 <= out_images.min() and out_images.max() <= 1
    assert set(out_masks.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(out_images[:, 0], out_masks[:, 0])  # the mask moved with the image, pixel for pixel


def test_each_sample_gets_one_of_the_papers_transforms() -> None:
    images, masks = _batch(batch_size=96)
    theta = random_affine(96, torch.Generator().manual_seed(2))
    out_images, out_masks = apply_affine(images, masks, theta)
    out_bytes = (out_images * 255).round()  # back to the 0..255 values, to compare pixels exactly
    linear = theta[:, :, :2]
    counts = {"identity": 0, "reflection": 0, "rotation": 0}
    for b in range(96):
        x = images[b].float()
        if torch.equal(linear[b], torch.eye(2)):
            assert torch.equal(out_bytes[b], x)
            counts["identity"] += 1
        elif torch.equal(linear[b].abs().round(), linear[b].abs()):  # 0/1 entries: the rot90 + flip branch
            assert any(torch.equal(out_bytes[b], r) for r in _reflections(x))  # an exact permutation
            assert any(torch.equal(out_masks[b], r) for r in _reflections(masks[b].float()))
            counts["reflection"] += 1
        else:
            degrees = torch.rad2deg(torch.atan2(linear[b, 1, 0], linear[b, 0, 0])).item()
            assert -20 <= round(degrees) < 20 and abs(degrees - round(degrees)) < 1e-4
            counts["rotation"] += 1
    assert min(counts.values()) > 0


def test_branch_probabilities_follow_the_paper() -> None:
    theta = random_affine(20000, torch.Generator().manual_seed(3))
    linear = theta[:, :, :2]
    integer = (linear.abs().round() == linear.abs()).all(dim=(1, 2))
    identity = (linear == torch.eye(2)).all(dim=(1, 2))
    reflection = integer & ~identity
    rotation = ~integer
    assert abs(reflection.float().mean().item() - 0.5) < 0.02
    assert abs(rotation.float().mean().item() - 0.25 * 39 / 40) < 0.02  # angle 0 looks like the identity
    assert torch.equal(theta[:, :, 2], torch.zeros(20000, 2))


def test_determined_by_the_generator() -> None:
    images, masks = _batch()
    first = augment_batch(images, masks, torch.Generator().manual_seed(5))
    second = augment_batch(images, masks, torch.Generator().manual_seed(5))
    other = augment_batch(images, masks, torch.Generator().manual_seed(6))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], other[0])


def test_non_square_images_are_refused() -> None:
    with pytest.raises(ValueError, match="square"):
        augment_batch(
            torch.zeros(1, 3, 8, 6, dtype=torch.uint8), torch.zeros(1, 1, 8, 6, dtype=torch.uint8), None
        )


@pytest.mark.gpu
def test_cuda_matches_cpu() -> None:
    images, masks = _batch(batch_size=32, size=32)
    theta = random_affine(32, torch.Generator().manual_seed(7))
    cpu = apply_affine(images, masks, theta)
    cuda = apply_affine(images.cuda(), masks.cuda(), theta.cuda())
    # Quarter turns and flips sample exact pixel centres, so both devices pick the same pixels there (small
    # rotations may round a coordinate near .5 differently); pixels are compared as 0..255 values, since this
    # checks which pixels are picked, not the scaling.
    exact = (theta[:, :, :2].abs().round() == theta[:, :, :2].abs()).all(dim=(1, 2))
    assert torch.equal((cuda[0].cpu()[exact] * 255).round(), (cpu[0][exact] * 255).round())
    assert torch.equal(cuda[1].cpu()[exact], cpu[1][exact])
    generator = torch.Generator(device="cuda").manual_seed(7)
    out_images, out_masks = augment_batch(images.cuda(), masks.cuda(), generator)
    assert out_images.is_cuda and torch.equal(out_images[:, 0], out_masks[:, 0])


@pytest.mark.gpu
def test_augmentation_never_waits_for_the_gpu() -> None:
    """No host-device synchronisation in the hot path: any sync raises under the debug mode."""
    import torch

    from ablation.data.augment import augment_batch

    generator = torch.Generator(device="cuda").manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8, device="cuda")
    masks = torch.randint(0, 2, (8, 1, 64, 64), dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        augment_batch(images, masks, generator)
    finally:
        torch.cuda.set_sync_debug_mode("default")
