"""Does ``train.tensorboard`` slow training down? Epoch times of the same run with and without TensorBoard logs.

Trains one tiny run on synthetic data (``--base``, ``--size``, ``--epochs``) several times, alternating logging off
and on (``train.tensorboard_images_every`` as ``--images-every``), each into a fresh folder; the first run only
builds the prepared-data cache and is not counted. Per setting it prints the median over repeats of:

- step path: the mean ``seconds`` of history.csv (training + validation of an epoch, up to the engine's one host
  sync per epoch), where logging must change nothing;
- wall per epoch: the whole ``train_run`` call (set-up, every epoch with its logging, the test evaluation) divided
  by the epochs, which includes what logging costs.

With ``--out DIR`` it also writes ``DIR/tensorboard_overhead_<device>.json`` (settings, device, torch version,
date, each repeat's numbers, the medians and ratios).

    PYTHONPATH=. python benchmarks/tensorboard_overhead.py --repeats 5 --out results/benchmarks  # needs tensorboard
"""

from __future__ import annotations

import argparse
import csv
import datetime
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import device_slug

from ablation.config import ModelConfig, RunConfig, TrainConfig
from ablation.io import atomic_write_json
from ablation.store.layout import HISTORY_FILE
from ablation.train.engine import train_run


def one_run(config: RunConfig, folder: Path, device: str) -> tuple[float, float]:
    """``(mean history.csv seconds per epoch, wall seconds per epoch)`` of one fresh run."""
    started = time.perf_counter()
    train_run(config, folder, device=device, progress=False)
    wall = (time.perf_counter() - started) / config.train.max_epochs
    with open(folder / HISTORY_FILE) as handle:
        seconds = [float(row["seconds"]) for row in csv.DictReader(handle)]
    return statistics.mean(seconds), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--images-every", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="write the record as JSON into this folder")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train = TrainConfig(max_epochs=args.epochs, min_best_epoch=0, save_predictions=0)
    plain = RunConfig(
        dataset="synthetic-nuclei",
        model=ModelConfig(base_channels=args.base, img_size=args.size),
        train=train,
    )
    logging = RunConfig(
        dataset=plain.dataset,
        model=plain.model,
        train=TrainConfig(
            **{**train.__dict__, "tensorboard": True, "tensorboard_images_every": args.images_every}
        ),
    )
    results: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        one_run(plain, Path(tmp) / "warm-up", args.device)  # builds the prepared-data cache
        for repeat in range(args.repeats):
            for name, config in (("off", plain), ("on", logging)):
                results[name].append(one_run(config, Path(tmp) / f"{name}{repeat}", args.device))
    print(
        f"{args.device}, {torch.get_num_threads()} thread(s), torch {torch.__version__}; unet base {args.base}, "
        f"{args.size} px, {args.epochs} epochs, previews every {args.images_every}; median of {args.repeats}"
    )
    medians = {
        name: tuple(statistics.median(run[i] for run in runs) for i in (0, 1))
        for name, runs in results.items()
    }
    for name, (step, wall) in medians.items():
        print(f"logging {name:3s}: step path {step * 1000:7.1f} ms/epoch, wall {wall * 1000:7.1f} ms/epoch")
    (step_off, wall_off), (step_on, wall_on) = medians["off"], medians["on"]
    print(f"ratio on/off: step path {step_on / step_off:.3f}, wall {wall_on / wall_off:.3f}")
    if args.out is not None:
        device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
        record = {
            "meta": {
                **{key: getattr(args, key) for key in ("base", "size", "epochs", "images_every", "repeats")},
                "threads": torch.get_num_threads(),
                "device": device,
                "processor": platform.processor() or platform.machine(),
                "torch": torch.__version__,
                "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            },
            "seconds_per_epoch": {name: {"step_path": s, "wall": w} for name, (s, w) in medians.items()},
            "runs": {name: [{"step_path": s, "wall": w} for s, w in runs] for name, runs in results.items()},
            "ratio_on_off": {"step_path": step_on / step_off, "wall": wall_on / wall_off},
        }
        atomic_write_json(args.out / f"tensorboard_overhead_{device_slug(device)}.json", record)


if __name__ == "__main__":
    main()
