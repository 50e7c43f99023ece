"""The loss matches the reference formulation computed from probabilities; device set-up on CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ablation.errors import AblationError
from ablation.train.device import autocast, setup_device
from ablation.train.evaluate import logit_threshold
from ablation.train.losses import segmentation_loss


def _reference_loss(probs: np.ndarray, truth: np.ndarray) -> float:
    """0.5 * class-balanced BCE over the batch + 0.5 * per-image squared soft Dice (weights 0.5), in numpy."""
    bce = -(truth * np.log(probs) + (1 - truth) * np.log(1 - probs))
    positive, negative = truth > 0.5, truth < 0.5
    balanced = 0.5 * bce[positive].sum() / (positive.sum() + 1e-12) + 0.5 * bce[negative].sum() / (
        negative.sum() + 1e-12
    )
    dices = []
    for p, t in zip(0.5 * probs.reshape(len(probs), -1), 0.5 * truth.reshape(len(truth), -1)):
        dices.append(1 - (2 * (p * t).sum() + 1e-5) / ((p * p).sum() + (t * t).sum() + 1e-5))
    return 0.5 * balanced + 0.5 * float(np.mean(dices))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_matches_reference_formulation(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 1, 8, 8, generator=generator, dtype=torch.float64) * 2
    targets = (torch.rand(3, 1, 8, 8, generator=generator) < 0.3).double()
    got = segmentation_loss(logits, targets).item()
    expected = _reference_loss(torch.sigmoid(logits).numpy(), targets.numpy())
    assert got == pytest.approx(expected, rel=1e-6)


def test_per_image_loss_is_independent_of_the_batch() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 1, 8, 8, generator=generator)
    targets = (torch.rand(4, 1, 8, 8, generator=generator) < 0.3).float()
    together = segmentation_loss(logits, targets, per_image=True)
    alone = torch.cat(
        [segmentation_loss(logits[i : i + 1], targets[i : i + 1], per_image=True) for i in range(4)]
    )
    assert together.shape == (4,)
    torch.testing.assert_close(together, alone)
    # With a single image the batch loss and the per-image loss coincide.
    torch.testing.assert_close(segmentation_loss(logits[:1], targets[:1]), alone[0])


def test_loss_gradient_is_finite_for_extreme_logits() -> None:
    logits = torch.tensor([[[[80.0, -80.0], [80.0, -80.0]]]], requires_grad=True)
    targets = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])
    loss = segmentation_loss(logits, targets)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_cpu_setup_is_plain_fp32() -> None:
    setup = setup_device("cpu")
    assert setup.dtype is None and not setup.channels_last and setup.name == "cpu"
    with autocast(setup):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with pytest.raises(AblationError, match="precision"):
        setup_device("cpu", precision="fp16")
    with pytest.raises(AblationError, match="device"):
        setup_device("tpu-ish")


def test_logit_threshold() -> None:
    assert logit_threshold(0.5) == 0.0
    assert torch.sigmoid(torch.tensor(logit_threshold(0.8))).item() == pytest.approx(0.8)
    with pytest.raises(AblationError):
        logit_threshold(1.0)
