"""Training throughput of the engine (issue 11): fused packs of K variants against a straightforward loop.

Everything runs in this process on one device:

- ``<connector>/baseline``: what the reference code's loop amounts to (``common.baseline_step``): uint8 arrays on
  the host, per-sample numpy/scipy augmentation, the batch copied to the device, eager fp32 NCHW, Adam,
  ``loss.item()`` every step. One run at a time, so its images/s is the same for any number of variants.
- ``<connector>/<K>/<options>``: the engine's own step for K variants (``ablation.train.engine.sample_batch``
  then ``Pack.step``, each epoch's draws from ``draw_epoch``): device-resident uint8 data, each variant's batch
  and augmentation from its own generator, bf16 autocast and channels_last on CUDA, fused Adam, no host sync.
  K = 1 is a single run (the structural network itself); K >= 2 a fused pack. Options: ``grouped`` or
  ``per_variant`` (3x3 convolutions, ``TrainConfig.pack_conv``), ``eager``, ``graph``
  (``TrainConfig.cuda_graphs``), ``compile`` (``TrainConfig.compile``), ``det`` (deterministic algorithms, the
  training default; otherwise cuDNN autotuning as ``train.deterministic=false``).
- ``profile/<connector>/<K>``: a ``torch.profiler`` pass of a few eager steps in each 3x3 convolution mode,
  listing the top CUDA kernels (name, time, calls): whether cuDNN runs the grouped convolution on NHWC
  tensor-core kernels, and what K dense convolutions on K streams cost instead.

Per row: images/s summed over variants, the ratio to the baseline, ms per step, MFU (FLOPs of a training step,
forward + backward from ``torch.utils.flop_counter``, x K x steps/s over ``--peak-tflops``, the dense bf16 peak:
989 for H100/H200 SXM) and peak device memory. Writes ``<out>/packed_training_<device>.json`` and ``.md`` after
every row (device, torch/CUDA/cuDNN versions, date), so a run cut short keeps what it measured; ``--budget-s``
skips rows that would start late. Each record's ``method`` (``baseline``, ``single`` for K = 1, ``packed``, then
``+option``...) is what ``ablation.grid.cost`` reads from the tables in ``results/benchmarks/``.

    PYTHONPATH=. python benchmarks/packed_training.py --out /tmp/bench --base 8 --size 64 --rows quick  # CPU
    PYTHONPATH=. python benchmarks/packed_training.py --out results/benchmarks --budget-s 150          # H200
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import re
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from common import baseline_step, device_slug, measure, synchronize, synthetic_arrays, train_step_flops

from ablation.config import ModelConfig, TrainConfig
from ablation.io import atomic_write_json, atomic_write_text
from ablation.models import build_model
from ablation.train.device import DeviceSetup, determinism, setup_device, to_memory_format
from ablation.train.engine import draw_epoch, sample_batch
from ablation.train.pack import Pack

# Most important first: a time budget drops the tail.
ROWS = {
    "h200": [
        "unet/baseline", "unet/1/grouped/eager", "unet/16/grouped/eager", "unet/16/per_variant/eager",
        "profile/unet/16", "uctransnet/baseline", "uctransnet/3/grouped/eager", "unet/16/grouped/graph",
        "unet/16/per_variant/graph", "unet/48/grouped/graph", "unet/48/per_variant/graph", "unet/1/grouped/graph",
        "uctransnet/3/grouped/graph", "unet/48/grouped/graph/det",
    ],
    "quick": [
        "unet/baseline", "unet/1/grouped/eager", "unet/4/grouped/eager", "unet/4/per_variant/eager",
        "profile/unet/4", "uctransnet/baseline", "uctransnet/3/grouped/eager",
    ],
}  # fmt: skip
CONV_KERNEL = re.compile(r"conv|xmma|implicit|cudnn|fprop|dgrad|wgrad|winograd", re.IGNORECASE)


def engine_step(
    config: ModelConfig, k: int, options: set[str], data: dict[str, Any], setup: DeviceSetup, batch: int
) -> Callable[[], None]:
    """The engine's step for K variants of ``config`` (seeds 0..K-1) on the shared synthetic train set."""
    train = TrainConfig(
        batch_size=batch,
        pack_conv="per_variant" if "per_variant" in options else "grouped",
        cuda_graphs="graph" in options,
        compile="compile" in options,
    )
    models = []
    for seed in range(k):
        torch.manual_seed(seed)
        with torch.device(setup.device):
            models.append(to_memory_format(build_model(config), setup))
    pack = Pack(models, [config] * k, setup=setup, train=train)
    del models
    images = data["device_images"].expand(k, -1, -1, -1, -1)  # (K, N, 3, H, W), one shared train set
    masks = data["device_masks"].expand(k, -1, -1, -1, -1)
    count = images.shape[1]
    generators = [torch.Generator(device=setup.device).manual_seed(seed) for seed in range(k)]
    loss_sum = torch.zeros(k, device=setup.device)
    rows = torch.arange(k, device=setup.device)[:, None]
    steps_per_epoch = max(1, count // batch)
    epoch: dict[str, Any] = {"steps": 0}

    def step() -> None:
        start = (epoch["steps"] % steps_per_epoch) * batch
        if start == 0:  # each variant's order and transforms for a whole epoch, as train_epoch draws them
            epoch["order"], epoch["theta"] = draw_epoch(generators, count, True)  # (K, N), (K, N, 2, 3)
        epoch["steps"] += 1
        window = slice(start, start + batch)
        batch_images, batch_masks = sample_batch(
            images, masks, epoch["order"][:, window], rows, epoch["theta"][:, window]
        )
        loss_sum.add_(pack.step(batch_images, batch_masks))

    return step


def top_kernels(profiler: Any, steps: int, top: int) -> dict[str, Any]:
    """The profiled kernels by total device time (CPU ops by self time where no CUDA kernel ran)."""
    events = profiler.events()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    timed = [(e.name, e.device_time_total) for e in kernels] or [
        (e.name, e.self_cpu_time_total) for e in events if e.device_type == torch.autograd.DeviceType.CPU
    ]
    totals: dict[str, list[float]] = {}
    for name, microseconds in timed:
        entry = totals.setdefault(name, [0.0, 0])
        entry[0] += microseconds
        entry[1] += 1
    overall = sum(total for total, _ in totals.values()) or 1.0
    ranked = sorted(totals.items(), key=lambda item: -item[1][0])[:top]
    conv = sum(total for name, (total, _) in totals.items() if CONV_KERNEL.search(name))
    return {
        "timer": "cuda kernels" if kernels else "cpu ops (self time)",
        "ms_per_step": overall / 1000 / steps,
        "convolution_share": conv / overall,
        "top": [
            {"name": name, "ms_per_step": total / 1000 / steps, "calls_per_step": calls / steps,
             "share": total / overall}
            for name, (total, calls) in ranked
        ],
    }  # fmt: skip


def profile_conv_modes(
    config: ModelConfig, k: int, data: dict[str, Any], setup: DeviceSetup, batch: int, steps: int = 3
) -> dict[str, Any]:
    """Top kernels of a few eager steps, grouped convolutions against K dense ones (on K streams on CUDA)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if setup.is_cuda else [])
    result = {}
    for conv in ("grouped", "per_variant"):
        step = engine_step(config, k, {conv, "eager"}, data, setup, batch)
        for _ in range(2):
            step()
        synchronize(setup.device)
        with profile(activities=activities) as profiler:
            for _ in range(steps):
                step()
            synchronize(setup.device)
        result[conv] = top_kernels(profiler, steps, top=12)
        del step
        if setup.is_cuda:
            torch.cuda.empty_cache()
    return result


def run_row(spec: str, args: argparse.Namespace, setup: DeviceSetup, data: dict[str, Any], ctx: dict) -> dict:
    """Measure one row (see the module docstring for the spec syntax)."""
    parts = spec.split("/")
    if parts[0] == "profile":
        config = ModelConfig(connector=parts[1], base_channels=args.base, img_size=args.size)
        with determinism(False):
            return {
                "row": spec,
                "profile": profile_conv_modes(config, int(parts[2]), data, setup, args.batch),
            }
    connector, rest = parts[0], parts[1:]
    config = ModelConfig(connector=connector, base_channels=args.base, img_size=args.size)
    k = 1 if rest == ["baseline"] else int(rest[0])
    options = set(rest[1:])
    if rest == ["baseline"]:
        with torch_defaults():
            step = baseline_step(config, data["host_images"], data["host_masks"], setup.device, args.batch)
            timing = measure(step, setup.device, args.warmup, args.steps)
    else:
        with determinism("det" in options):
            step = engine_step(config, k, options, data, setup, args.batch)
            timing = measure(step, setup.device, args.warmup, args.steps)
    if connector not in ctx["flops"]:
        ctx["flops"][connector] = train_step_flops(config) * args.batch  # one variant's step
    steps_per_s = 1000 / timing["ms_per_step"]
    rate = k * args.batch * steps_per_s
    if rest == ["baseline"]:
        ctx["baseline"][connector] = rate
    baseline = ctx["baseline"].get(connector)
    family = "baseline" if rest == ["baseline"] else "single" if k == 1 else "packed"
    return {
        "row": spec, "model": connector, "k": k, "method": "+".join([family, *rest[1:]]), **timing,
        "images_per_s": rate, "speedup": rate / baseline if baseline else None,
        "mfu": k * ctx["flops"][connector] * steps_per_s / (args.peak_tflops * 1e12) if setup.is_cuda else None,
    }  # fmt: skip


def markdown(records: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"# Training throughput on {meta['device']}",
        "",
        f"{meta['date']}; torch {meta['torch']}, CUDA {meta['cuda']}, cuDNN {meta['cudnn']}. Base {meta['base']}, "
        f"{meta['size']} px, batch {meta['batch']} per variant, {meta['steps']} timed steps after "
        f"{meta['warmup']} warm-up. Engine rows: {meta['precision']}, channels_last={meta['channels_last']}, "
        "cuDNN autotuning unless `det`. Baseline: eager fp32 NCHW, per-sample numpy augmentation on the host, a "
        f"host sync per step. MFU against {meta['peak_tflops']:.0f} TFLOP/s dense bf16.",
        "",
        "| row | K | images/s (sum) | x baseline | ms/step | MFU | peak GiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        if "profile" in r:
            continue
        if "error" in r:
            lines.append(f"| {r['row']} | | {r['error']} | | | | |")
            continue
        mfu = "" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        memory = "" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.1f}"
        ratio = "" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        lines.append(
            f"| {r['row']} | {r['k']} | {r['images_per_s']:.1f} | {ratio} | {r['ms_per_step']:.1f} | {mfu} | "
            f"{memory} |"
        )
    for r in records:
        if "profile" not in r:
            continue
        for conv, found in r["profile"].items():
            lines += [
                "",
                f"## {r['row']}, {conv} 3x3 convolutions: {found['ms_per_step']:.1f} ms per step of "
                f"{found['timer']}, {100 * found['convolution_share']:.0f}% in convolution kernels",
                "",
                "| kernel | ms/step | calls/step | share |",
                "|---|---:|---:|---:|",
            ]
            lines += [
                f"| `{t['name'][:140]}` | {t['ms_per_step']:.2f} | {t['calls_per_step']:.0f} | "
                f"{100 * t['share']:.1f}% |"
                for t in found["top"]
            ]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def torch_defaults() -> Iterator[None]:
    """torch's default settings for the baseline: no cuDNN autotuning."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for packed_training_<device>.json, .md"
    )
    parser.add_argument("--rows", default="h200", help=f"{' or '.join(ROWS)}, or comma-separated row specs")
    parser.add_argument("--base", type=int, default=64, help="base channels")
    parser.add_argument("--size", type=int, default=224, help="image side (multiple of 16)")
    parser.add_argument("--batch", type=int, default=4, help="batch per variant")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (graph capture included)")
    parser.add_argument("--device", help="cpu or cuda (default: CUDA when available)")
    parser.add_argument(
        "--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200 SXM: 989)"
    )
    parser.add_argument(
        "--budget-s", type=float, default=float("inf"), help="skip rows that start after this"
    )
    args = parser.parse_args()

    setup = setup_device(args.device)
    specs = ROWS.get(args.rows) or [spec.strip() for spec in args.rows.split(",") if spec.strip()]
    images, masks = synthetic_arrays(args.size, max(32, args.batch))
    data = {
        "host_images": images,
        "host_masks": masks,
        "device_images": torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(setup.device),
        "device_masks": torch.from_numpy(masks)[:, None].contiguous().to(setup.device),
    }
    meta = {
        "device": setup.name, "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if setup.is_cuda else None,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "base": args.base, "size": args.size, "batch": args.batch, "steps": args.steps, "warmup": args.warmup,
        "precision": "bf16" if setup.dtype is not None else "fp32", "channels_last": setup.channels_last,
        "peak_tflops": args.peak_tflops, "rows": specs,
    }  # fmt: skip
    print(f"{meta['device']}, torch {meta['torch']}: base {args.base}, {args.size} px, batch {args.batch}")
    stem = args.out / f"packed_training_{device_slug(setup.name)}"
    records: list[dict[str, Any]] = []
    ctx: dict[str, dict] = {"flops": {}, "baseline": {}}
    started = time.perf_counter()
    for spec in specs:
        if time.perf_counter() - started > args.budget_s:
            record: dict[str, Any] = {"row": spec, "error": "skipped (time budget)"}
        else:
            try:
                record = run_row(spec, args, setup, data, ctx)
            except Exception as error:  # noqa: BLE001 - one failed row must not lose the others
                record = {"row": spec, "error": f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"}
                traceback.print_exc()
            if setup.is_cuda:
                torch.cuda.empty_cache()
        records.append(record)
        print(_line(record), flush=True)
        atomic_write_json(stem.with_suffix(".json"), {"meta": meta, "records": records})
        atomic_write_text(stem.with_suffix(".md"), markdown(records, meta))
    print(f"\n{time.perf_counter() - started:.0f} s; written: {stem}.json and .md")


def _line(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{r['row']:32s} {r['error']}"
    if "profile" in r:
        return "\n".join(
            f"{r['row']:32s} {conv:11s} {p['ms_per_step']:8.2f} ms/step ({p['timer']}), "
            f"{100 * p['convolution_share']:.0f}% conv; top: {p['top'][0]['name'][:70] if p['top'] else '-'}"
            for conv, p in r["profile"].items()
        )
    ratio = "" if r["speedup"] is None else f" {r['speedup']:6.2f}x baseline"
    mfu = "" if r["mfu"] is None else f"  MFU {100 * r['mfu']:5.1f}%"
    memory = "" if r["peak_memory_gib"] is None else f"  {r['peak_memory_gib']:.1f} GiB"
    return (
        f"{r['row']:32s} {r['images_per_s']:9.1f} img/s {r['ms_per_step']:8.1f} ms/step{ratio}{mfu}{memory}"
    )


if __name__ == "__main__":
    main()
