"""What the training benchmarks share: the reference-like baseline step, FLOPs, timing, memory.

The baseline is what the reference code's training loop (UCTransNet, Wang et al. AAAI 2022) amounts to: uint8
arrays on the host, per-sample numpy/scipy augmentation (with p=0.5 rot90 + flip, else with p=0.25 a
nearest-neighbour rotation in [-20, 20) degrees), the batch stacked and copied to the device, eager fp32 in
NCHW, Adam, and ``loss.item()`` after every step (a host synchronisation).

The scripts beside this file import it as ``common`` (a script's own folder is first on ``sys.path``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import numpy as np
import torch
from scipy import ndimage
from torch.utils.flop_counter import FlopCounterMode

from ablation.config import ModelConfig
from ablation.models import build_model
from ablation.train.losses import segmentation_loss


def synthetic_arrays(size: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images ``(count, size, size, 3)`` and binary masks ``(count, size, size)``, seed 0."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    masks = (rng.random((count, size, size)) < 0.3).astype(np.uint8)
    return images, masks


def reference_augment(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One sample, the reference way: ``(H, W, 3)`` and ``(H, W)`` uint8 numpy arrays on the host."""
    if rng.random() > 0.5:
        k, axis = int(rng.integers(0, 4)), int(rng.integers(0, 2))
        image, mask = np.flip(np.rot90(image, k), axis), np.flip(np.rot90(mask, k), axis)
    elif rng.random() > 0.5:
        angle = int(rng.integers(-20, 20))
        image = ndimage.rotate(image, angle, order=0, reshape=False)
        mask = ndimage.rotate(mask, angle, order=0, reshape=False)
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def baseline_step(
    config: ModelConfig, images: np.ndarray, masks: np.ndarray, device: torch.device, batch: int
) -> Callable[[], None]:
    """A training step the reference way, on host arrays ``(N, H, W, 3)`` and ``(N, H, W)`` uint8."""
    torch.manual_seed(0)
    model = build_model(config).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)

    def step() -> None:
        pairs = [reference_augment(images[i], masks[i], rng) for i in rng.integers(0, len(images), batch)]
        x = (
            torch.from_numpy(np.stack([p[0] for p in pairs]))
            .permute(0, 3, 1, 2)
            .float()
            .div(255.0)
            .to(device)
        )
        y = torch.from_numpy(np.stack([p[1] for p in pairs]))[:, None].float().to(device)
        loss = segmentation_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()  # a host sync every step, as a logging training loop does

    return step


def train_step_flops(config: ModelConfig, batch: int = 1) -> int:
    """FLOPs of one training step (forward + backward) at this batch size, counted on the meta device."""
    with torch.device("meta"):
        model = build_model(config)
        image = torch.empty(batch, config.in_channels, config.img_size, config.img_size)
    with FlopCounterMode(display=False) as counter:
        model(image).float().sum().backward()
    return counter.get_total_flops()


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; CPU needs nothing)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    """Free cached blocks and start a new peak-memory count (CUDA only)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    """Peak allocated device memory since the last reset, GiB; None off CUDA."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def measure(
    step: Callable[[], None], device: torch.device, warmup: int, steps: int
) -> dict[str, float | None]:
    """Time ``steps`` calls of ``step`` after ``warmup`` untimed ones.

    Returns:
        ``{"ms_per_step": ..., "peak_memory_gib": ...}``, the memory None off CUDA.
    """
    for _ in range(warmup):
        step()
    synchronize(device)
    reset_peak_memory(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    seconds = (time.perf_counter() - start) / steps
    return {"ms_per_step": 1000 * seconds, "peak_memory_gib": peak_memory_gib(device)}


def device_slug(name: str) -> str:
    """A device name as a file-name part: ``"NVIDIA H200"`` -> ``"nvidia-h200"``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
