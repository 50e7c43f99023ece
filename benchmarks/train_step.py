"""Training-step throughput: our step against a straightforward eager fp32 loop, in the same process.

Ours (what ``ablation.train.loop`` runs): training data resident on the device as uint8, batches gathered by
index with a seeded generator, the paper's augmentation batched on the device (``ablation.data.augment``),
bf16 autocast and channels_last on CUDA, fused Adam on CUDA, the loss summed on the device and never read in
the step.

Baseline (what the reference code's loop amounts to): uint8 arrays on the host, per-sample numpy/scipy
augmentation (rot90 + flip, else a small nearest-neighbour rotation), batch stacked and copied to the device,
eager fp32 in NCHW, Adam, and ``loss.item()`` after every step (a host synchronisation).

Both steps come from ``common.py`` beside this script (``our_step``, ``baseline_step``).

Reported per model: images/s of each, their ratio, peak device memory (CUDA only), and on CUDA the model FLOPs
utilisation of our step: FLOPs of one training step (forward + backward, from ``torch.utils.flop_counter``)
times steps/s, over the device's dense bf16 peak (``--peak-tflops``; 989 for H100/H200 SXM).

    python benchmarks/train_step.py --base 8 --size 64 --batch 4 --steps 5          # quick, CPU
    python benchmarks/train_step.py --base 64 --size 224 --batch 4 --steps 50 --json out.json   # GPU
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from common import baseline_step, measure, our_step, synthetic_arrays, train_step_flops

from ablation.config import ModelConfig
from ablation.io import atomic_write_text
from ablation.train.device import setup_device


def images_per_s(timing: dict[str, Any], batch: int) -> dict[str, Any]:
    """Throughput and peak memory of one timed run (``common.measure``) at this batch size."""
    return {
        "images_per_s": batch * 1000 / timing["ms_per_step"],
        "peak_memory_gib": timing["peak_memory_gib"],
    }


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
    images, masks = synthetic_arrays(args.size, max(32, args.batch))  # host (N, H, W, 3), (N, H, W)
    device_images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(setup.device)
    device_masks = torch.from_numpy(masks)[:, None].contiguous().to(setup.device)
    records = []
    print(f"device: {setup.name}; base {args.base}, {args.size} px, batch {args.batch}, {args.steps} steps")
    for connector in args.models.split(","):
        config = ModelConfig(connector=connector.strip(), base_channels=args.base, img_size=args.size)
        step = our_step(config, device_images, device_masks, setup, args.batch, args.compile)
        ours = images_per_s(measure(step, setup.device, args.warmup, args.steps), args.batch)
        step = baseline_step(config, images, masks, setup.device, args.batch)
        baseline = images_per_s(measure(step, setup.device, args.warmup, args.steps), args.batch)
        record = {
            "model": config.connector, "base": args.base, "size": args.size, "batch": args.batch,
            "device": setup.name, "precision": "bf16" if setup.dtype is not None else "fp32",
            "compile": bool(args.compile and setup.is_cuda),
            "ours_images_per_s": ours["images_per_s"], "baseline_images_per_s": baseline["images_per_s"],
            "speedup": ours["images_per_s"] / baseline["images_per_s"],
            "ours_peak_memory_gib": ours["peak_memory_gib"],
            "baseline_peak_memory_gib": baseline["peak_memory_gib"],
            "step_gflops": train_step_flops(config, args.batch) / 1e9,
        }  # fmt: skip
        record["mfu"] = None
        if setup.is_cuda:
            steps_per_s = ours["images_per_s"] / args.batch
            record["mfu"] = record["step_gflops"] * 1e9 * steps_per_s / (args.peak_tflops * 1e12)
        records.append(record)
        memory = ""
        if setup.is_cuda:
            memory = (
                f", peak memory {record['ours_peak_memory_gib']:.2f} vs "
                f"{record['baseline_peak_memory_gib']:.2f} GiB"
            )
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
        atomic_write_text(args.json, json.dumps(records, indent=2) + "\n")


if __name__ == "__main__":
    main()
