"""Training-step throughput: our step against a straightforward eager fp32 loop, in the same process.

Ours (what ``ablation.train.loop`` runs): training data resident on the device as uint8, batches gathered by index
with a seeded generator, the paper's augmentation batched on the device (``ablation.data.augment``), bf16 autocast
and channels_last on CUDA, fused Adam on CUDA, the loss summed on the device and read once at the end.

Baseline (what the reference code's loop amounts to): uint8 arrays on the host, per-sample numpy/scipy
augmentation (rot90 + flip, else a small nearest-neighbour rotation), batch stacked and copied to the device,
eager fp32 in NCHW, Adam, and ``loss.item()`` after every step (a host synchronisation).

Reported per model: images/s of each, their ratio, peak device memory (CUDA only), and on CUDA the model FLOPs
utilisation of our step: FLOPs of one training step (forward + backward, from ``torch.utils.flop_counter``)
times steps/s, over the device's dense bf16 peak (``--peak-tflops``; 989 for H100/H200 SXM).

    python benchmarks/train_step.py --base 8 --size 64 --batch 4 --steps 5          # quick, CPU
    python benchmarks/train_step.py --base 64 --size 224 --batch 4 --steps 50 --json out.json   # GPU
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch.utils.flop_counter import FlopCounterMode

from ablation.config import ModelConfig
from ablation.data.augment import augment_batch
from ablation.models import build_model
from ablation.train.device import DeviceSetup, autocast, setup_device, to_memory_format
from ablation.train.evaluate import to_input
from ablation.train.losses import segmentation_loss


def reference_augment(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One sample, the reference way: (H, W, 3) and (H, W) numpy arrays on the host."""
    if rng.random() > 0.5:
        k, axis = int(rng.integers(0, 4)), int(rng.integers(0, 2))
        image, mask = np.flip(np.rot90(image, k), axis), np.flip(np.rot90(mask, k), axis)
    elif rng.random() > 0.5:
        angle = int(rng.integers(-20, 20))
        image = ndimage.rotate(image, angle, order=0, reshape=False)
        mask = ndimage.rotate(mask, angle, order=0, reshape=False)
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def run_ours(config: ModelConfig, images: np.ndarray, masks: np.ndarray, setup: DeviceSetup, args) -> dict:
    torch.manual_seed(0)
    model = to_memory_format(build_model(config).to(setup.device), setup)
    step_model = torch.compile(model) if args.compile and setup.is_cuda else model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=setup.is_cuda)
    generator = torch.Generator(device=setup.device).manual_seed(0)
    device_images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(setup.device)
    device_masks = torch.from_numpy(masks)[:, None].contiguous().to(setup.device)
    loss_sum = torch.zeros((), device=setup.device)

    def step() -> None:
        nonlocal loss_sum
        index = torch.randint(0, len(images), (args.batch,), generator=generator, device=setup.device)
        batch_images, batch_masks = augment_batch(device_images[index], device_masks[index], generator)
        with autocast(setup):
            logits = step_model(to_input(batch_images, setup))
        loss = segmentation_loss(logits, batch_masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach()

    result = _time(step, setup.device, args)
    float(loss_sum)  # the one read
    return result


def run_baseline(
    config: ModelConfig, images: np.ndarray, masks: np.ndarray, device: torch.device, args
) -> dict:
    torch.manual_seed(0)
    model = build_model(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)

    def step() -> None:
        picks = rng.integers(0, len(images), args.batch)
        pairs = [reference_augment(images[i], masks[i], rng) for i in picks]
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
        loss.item()  # a host sync per step, as a logging loop does

    return _time(step, device, args)


def _time(step, device: torch.device, args) -> dict[str, Any]:
    for _ in range(args.warmup):
        step()
    _synchronize(device)
    _reset_memory(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    _synchronize(device)
    seconds = time.perf_counter() - start
    return {"images_per_s": args.steps * args.batch / seconds, "peak_memory_gib": _peak_memory(device)}


def step_flops(config: ModelConfig, setup: DeviceSetup, batch: int) -> int:
    """FLOPs of one training step (forward + backward) at this batch size, counted on the meta device."""
    with torch.device("meta"):
        model = build_model(config)
    x = torch.empty(batch, config.in_channels, config.img_size, config.img_size, device="meta")
    with FlopCounterMode(display=False) as counter:
        model(x).float().sum().backward()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="unet,uctransnet", help="comma-separated connectors")
    parser.add_argument("--base", type=int, default=64, help="base channels")
    parser.add_argument("--size", type=int, default=224, help="image side")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", help="cpu or cuda (default: CUDA when available)")
    parser.add_argument("--compile", action="store_true", help="torch.compile our model (CUDA)")
    parser.add_argument(
        "--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200 SXM: 989)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    setup = setup_device(args.device)
    rng = np.random.default_rng(0)
    count = max(32, args.batch)
    images = rng.integers(0, 256, (count, args.size, args.size, 3), dtype=np.uint8)
    masks = (rng.random((count, args.size, args.size)) < 0.3).astype(np.uint8)
    records = []
    print(f"device: {setup.name}; base {args.base}, {args.size} px, batch {args.batch}, {args.steps} steps")
    for connector in args.models.split(","):
        config = ModelConfig(connector=connector.strip(), base_channels=args.base, img_size=args.size)
        ours = run_ours(config, images, masks, setup, args)
        baseline = run_baseline(config, images, masks, setup.device, args)
        record = {
            "model": config.connector, "base": args.base, "size": args.size, "batch": args.batch,
            "device": setup.name, "precision": "bf16" if setup.dtype is not None else "fp32",
            "compile": bool(args.compile and setup.is_cuda),
            "ours_images_per_s": ours["images_per_s"], "baseline_images_per_s": baseline["images_per_s"],
            "speedup": ours["images_per_s"] / baseline["images_per_s"],
            "ours_peak_memory_gib": ours["peak_memory_gib"], "baseline_peak_memory_gib": baseline["peak_memory_gib"],
            "step_gflops": step_flops(config, setup, args.batch) / 1e9,
        }  # fmt: skip
        record["mfu"] = None
        if setup.is_cuda:
            steps_per_s = ours["images_per_s"] / args.batch
            record["mfu"] = record["step_gflops"] * 1e9 * steps_per_s / (args.peak_tflops * 1e12)
        records.append(record)
        memory = ""
        if setup.is_cuda:
            memory = f", peak memory {record['ours_peak_memory_gib']:.2f} vs {record['baseline_peak_memory_gib']:.2f} GiB"
        mfu = (
            f", MFU {100 * record['mfu']:.1f}% of {args.peak_tflops:.0f} TFLOP/s"
            if record["mfu"] is not None
            else ""
        )
        print(
            f"{config.connector:11s} ours {record['ours_images_per_s']:8.1f} img/s | baseline "
            f"{record['baseline_images_per_s']:8.1f} img/s | ratio {record['speedup']:.2f}x{memory}{mfu}"
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(records, indent=2) + "\n")


if __name__ == "__main__":
    main()
