"""Packed multi-variant training throughput (issue 7): images/s summed over K variants vs a plain loop.

Three ways to train, all in this process on the same device:

- ``baseline``: what the reference code's loop amounts to (``common.baseline_step``). uint8 arrays on the
  host, per-sample numpy/scipy augmentation (rot90 + flip, else a nearest-neighbour rotation in [-20, 20)
  degrees), the batch stacked and copied to the device, eager fp32 in NCHW, Adam, ``loss.item()`` after every
  step (a host synchronisation). Variants run one after another, so its throughput for K variants is its
  single-run throughput.
- ``single``: our single-run step (``ablation.train.loop``, ``common.our_step``): data resident on the device,
  the paper's augmentation batched on the device, bf16 autocast + channels_last on CUDA, fused Adam on CUDA,
  no host sync in the step.
- ``packed``: :class:`ablation.train.packed.ModelPack`, K variants in one vmapped forward/backward, each with
  its own batch from its own generator (input ``(K, B, 3, H, W)``), the same device-side pipeline, bf16
  autocast but NCHW (channels_last does not work under vmap on CUDA, see ModelPack).

Reported per row: images/s (summed over variants), the ratio to the baseline, ms per step, peak device memory
and, on CUDA, model FLOPs utilisation: FLOPs of one training step of one variant (forward + backward, counted
by ``torch.utils.flop_counter`` on the meta device) x K x steps/s over the device's dense bf16 peak
(``--peak-flops``, default 989e12 for H100 SXM). Results go to
``results/benchmarks/packed_training_<device>.json`` and ``.md``. Needs only torch, numpy, scipy and the
``ablation`` package (``PYTHONPATH=.``).

    PYTHONPATH=. python benchmarks/packed_training.py --base 8 --size 64 --k 1,4 --steps 3      # CPU, quick
    PYTHONPATH=. python benchmarks/packed_training.py                                         # GPU defaults
"""

from __future__ import annotations

import argparse
import contextlib
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from common import baseline_step, device_slug, measure, our_step, synthetic_arrays, train_step_flops

from ablation.config import ModelConfig, TrainConfig
from ablation.io import atomic_write_json, atomic_write_text
from ablation.models import build_model
from ablation.train.device import DeviceSetup, determinism, setup_device, to_memory_format
from ablation.train.packed import ModelPack, sample_batch

# --- packs of K variants ------------------------------------------------------------------------------------


def packed_step_fn(
    config: ModelConfig, k: int, data: dict[str, Any], setup: DeviceSetup, batch: int, compile: bool
) -> Callable:
    models = []
    for seed in range(k):
        torch.manual_seed(seed)
        models.append(to_memory_format(build_model(config).to(setup.device), setup))
    pack = ModelPack(models, [config] * k, setup=setup, train=TrainConfig(), compile=compile)
    del models
    count = data["device_images"].shape[1]
    # Each variant its own copy of the train set, as packs of different folds hold (K, N, 3, H, W).
    images = data["device_images"].expand(k, -1, -1, -1, -1)
    masks = data["device_masks"].expand(k, -1, -1, -1, -1)
    generators = [torch.Generator(device=setup.device).manual_seed(seed) for seed in range(k)]
    loss_sum = torch.zeros(k, device=setup.device)

    def step() -> None:
        index = torch.stack(
            [torch.randint(0, count, (batch,), generator=g, device=setup.device) for g in generators]
        )  # (K, B)
        batch_images, batch_masks = sample_batch(images, masks, index, generators)
        loss_sum.add_(pack.step(batch_images, batch_masks))

    return step


# --- measuring ----------------------------------------------------------------------------------------------


def build_step(
    method: str,
    config: ModelConfig,
    k: int,
    data: dict[str, Any],
    setup: DeviceSetup,
    batch: int,
    compile: bool,
) -> Callable[[], None]:
    if method == "baseline":
        return baseline_step(config, data["host_images"], data["host_masks"], setup.device, batch)
    if method == "single":
        images, masks = data["device_images"][0], data["device_masks"][0]  # (N, 3, H, W), (N, 1, H, W)
        return our_step(config, images, masks, setup, batch, compile)
    return packed_step_fn(config, k, data, setup, batch, compile)


def synthetic_data(size: int, count: int, device: torch.device) -> dict[str, Any]:
    images, masks = synthetic_arrays(size, count)
    return {
        "host_images": images,
        "host_masks": masks,
        "device_images": torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)[None],
        "device_masks": torch.from_numpy(masks)[:, None].contiguous().to(device)[None],
    }


def markdown_table(records: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"# Packed training throughput on {meta['device']}",
        "",
        f"base {meta['base']}, {meta['size']} px, batch {meta['batch']} per variant, "
        f"{meta['steps']} timed steps after {meta['warmup']} warm-up; ours: {meta['precision']}, "
        f"channels_last={meta['channels_last']}, compile={meta['compile']}, "
        f"cudnn.benchmark={meta['cudnn_benchmark']}; baseline: eager fp32, per-sample numpy augmentation on "
        "the host, a host sync per step. MFU against "
        f"{meta['peak_flops'] / 1e12:.0f} TFLOP/s dense bf16. torch {meta['torch']}.",
        "",
        "| model | method | K | images/s (sum) | x baseline | ms/step | MFU | peak GiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['method']} | {r['k']} | {r['error']} | | | | |")
            continue
        mfu = "" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        memory = "" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.1f}"
        ratio = "" if r.get("speedup") is None else f"{r['speedup']:.1f}x"
        lines.append(
            f"| {r['model']} | {r['method']} | {r['k']} | {r['images_per_s']:.1f} | {ratio} | "
            f"{r['ms_per_step']:.1f} | {mfu} | {memory} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="unet,uctransnet", help="comma-separated connectors")
    parser.add_argument("--base", type=int, default=64, help="base channels")
    parser.add_argument("--size", type=int, default=224, help="image side (multiple of 16)")
    parser.add_argument("--batch", type=int, default=4, help="batch per variant")
    parser.add_argument("--k", default="1,4,16", help="comma-separated pack sizes")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--device", help="cpu or cuda (default: CUDA when available)")
    parser.add_argument(
        "--compile", action="store_true", help="also measure torch.compile'd single and packed"
    )
    parser.add_argument("--compile-k", default="", help="pack sizes to compile (default: those of --k)")
    parser.add_argument("--peak-flops", type=float, default=989e12, help="device's dense bf16 FLOP/s")
    parser.add_argument("--budget-s", type=float, default=float("inf"), help="skip what starts after this")
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks"), help="output folder")
    args = parser.parse_args()

    setup = setup_device(args.device)
    pack_sizes = _ints(args.k)
    data = synthetic_data(args.size, max(32, args.batch), setup.device)
    meta = {
        "device": setup.name, "base": args.base, "size": args.size, "batch": args.batch, "steps": args.steps,
        "warmup": args.warmup, "precision": "bf16" if setup.dtype is not None else "fp32",
        "channels_last": setup.channels_last, "compile": args.compile and setup.is_cuda,
        "cudnn_benchmark": setup.is_cuda, "peak_flops": args.peak_flops, "torch": torch.__version__,
    }  # fmt: skip
    stem = args.out / f"packed_training_{device_slug(setup.name)}"
    records: list[dict[str, Any]] = []
    started = time.perf_counter()
    print(f"device: {setup.name}; base {args.base}, {args.size} px, batch {args.batch}, {args.steps} steps")

    connectors = [name.strip() for name in args.models.split(",")]
    configs = {c: ModelConfig(connector=c, base_channels=args.base, img_size=args.size) for c in connectors}
    flops = {c: train_step_flops(config) * args.batch for c, config in configs.items()}  # one variant's step
    # (model, method, K, compiled): the eager rows of every model first, so a time budget drops the optional
    # compiled rows rather than a model.
    plan = [
        (c, method, k, False)
        for c in connectors
        for method, k in [("baseline", 1), ("single", 1), *[("packed", k) for k in pack_sizes]]
    ]
    if args.compile and setup.is_cuda:
        compile_sizes = _ints(args.compile_k) or pack_sizes
        plan += [(c, "single", 1, True) for c in connectors]
        plan += [(c, "packed", k, True) for c in connectors for k in compile_sizes]
    baseline_rates: dict[str, float] = {}
    for connector, method, k, compiled in plan:
        record: dict[str, Any] = {
            "model": connector,
            "method": method + ("+compile" if compiled else ""),
            "k": k,
        }
        if time.perf_counter() - started > args.budget_s:
            record["error"] = "skipped (time budget)"
        else:
            try:
                # Ours runs with cuDNN autotuning; the baseline with torch's defaults (no autotuning).
                with determinism(False) if method != "baseline" else torch_defaults():
                    step = build_step(method, configs[connector], k, data, setup, args.batch, compiled)
                    timing = measure(step, setup.device, args.warmup, args.steps)
                rate = k * args.batch * 1000 / timing["ms_per_step"]
                if method == "baseline":
                    baseline_rates[connector] = rate
                record.update(timing, images_per_s=rate)
                record["mfu"] = (
                    k * flops[connector] * 1000 / timing["ms_per_step"] / args.peak_flops
                    if setup.is_cuda
                    else None
                )
                baseline = baseline_rates.get(connector)
                record["speedup"] = rate / baseline if baseline else None
            except Exception as error:  # noqa: BLE001 - one failed measurement must not lose the others
                record["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
                traceback.print_exc()
            finally:
                step = None
                if setup.is_cuda:
                    torch.cuda.empty_cache()
        records.append(record)
        _print_record(record)
        atomic_write_json(stem.with_suffix(".json"), {"meta": meta, "records": records})
        atomic_write_text(stem.with_suffix(".md"), markdown_table(records, meta))
    print()
    print(markdown_table(records, meta))
    print(f"written: {stem.with_suffix('.json')} and {stem.with_suffix('.md')}")


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


@contextlib.contextmanager
def torch_defaults() -> Iterator[None]:
    """torch's default settings for the baseline: no cuDNN autotuning."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def _print_record(r: dict[str, Any]) -> None:
    if "error" in r:
        print(f"{r['model']:11s} {r['method']:15s} K={r['k']:<3d} {r['error']}")
        return
    ratio = "" if r.get("speedup") is None else f"  {r['speedup']:6.1f}x baseline"
    mfu = "" if r["mfu"] is None else f"  MFU {100 * r['mfu']:5.1f}%"
    print(
        f"{r['model']:11s} {r['method']:15s} K={r['k']:<3d} {r['images_per_s']:9.1f} img/s  "
        f"{r['ms_per_step']:8.1f} ms/step{ratio}{mfu}",
        flush=True,
    )


if __name__ == "__main__":
    main()
