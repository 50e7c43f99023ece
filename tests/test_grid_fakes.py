"""Stand-in run functions for the grid tests (no tests here).

They follow train_run's contract cheaply: config.json and status.json when they start, a one-row
test_metrics.csv, metrics.json last. Each entry leaves a marker file, so tests count how many times a run was
trained. Module-level so worker processes and subprocesses can import them.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from ablation.config import RunConfig, to_dict
from ablation.errors import AblationError
from ablation.io import atomic_write_json, atomic_write_text
from ablation.store import run_id, write_status

ENTRY_PREFIX = "entered-"


def entries(run_dir: Path) -> int:
    """How many times a run function was entered for this run folder."""
    return len(list(Path(run_dir).glob(ENTRY_PREFIX + "*")))


def fake_train(config: RunConfig, out_dir: Path, *, device: str | None = None, progress: bool = True) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{ENTRY_PREFIX}{os.getpid()}-{time.time_ns()}").touch()
    atomic_write_json(out_dir / "config.json", {**to_dict(config), "run_name": out_dir.name})
    write_status(out_dir, "running", epoch=0)
    time.sleep(float(os.environ.get("GRID_TEST_SLEEP", "0.02")))
    metrics = {  # every key of store.METRICS_KEYS, with the types a report validates
        "status": "done",
        "run_id": run_id(config),
        "run_name": out_dir.name,
        "dataset": config.dataset,
        "connector": config.model.connector,
        "skips": config.model.skips,
        "seed": config.seed,
        "fold": config.fold,
        "repeat": config.repeat,
        **{"best_epoch": 1, "epochs_run": 1, "stopped_early": False, "parameters": 1, "gflops": 0.1},
        **{"seconds": 0.02, "dice_mean": 0.5, "dice_std": 0.0, "iou_mean": 0.33, "iou_std": 0.0},
        **{"dice_micro": 0.5, "iou_micro": 0.33, "hd95_mean": 1.0, "device": device or "cpu"},
    }
    atomic_write_text(out_dir / "test_metrics.csv", "image,dice,iou\nimg0,0.5,0.33\n")
    atomic_write_json(out_dir / "metrics.json", metrics)
    return metrics


def failing_train(
    config: RunConfig, out_dir: Path, *, device: str | None = None, progress: bool = True
) -> dict:
    """Raises for the no-skip subset, trains the rest."""
    if config.model.skips == "0000":
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / f"{ENTRY_PREFIX}{os.getpid()}-{time.time_ns()}").touch()
        raise ValueError("synthetic failure in the no-skip run")
    return fake_train(config, out_dir, device=device, progress=progress)


def self_failing_train(
    config: RunConfig, out_dir: Path, *, device: str | None = None, progress: bool = True
) -> dict:
    """Like train_run on a non-finite loss: writes its own failed status, then raises an AblationError."""
    if config.model.skips == "0000":
        write_status(out_dir, "failed: non-finite loss at epoch 3", epoch=3)
        raise AblationError("non-finite loss at epoch 3")
    return fake_train(config, out_dir, device=device, progress=progress)


def crashing_train(
    config: RunConfig, out_dir: Path, *, device: str | None = None, progress: bool = True
) -> dict:
    """The worker process dies (as under the kernel's OOM killer) in the no-skip run."""
    if config.model.skips == "0000":
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_status(out_dir, "running", epoch=0)
        os.kill(os.getpid(), signal.SIGKILL)
    return environment_train(config, out_dir, device=device, progress=progress)


def silent_train(
    config: RunConfig, out_dir: Path, *, device: str | None = None, progress: bool = True
) -> dict:
    """Returns without writing metrics.json: the runner must not count that run as done."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return {}


def environment_train(
    config: RunConfig, out_dir: Path, *, device: str | None = None, progress: bool = True
) -> dict:
    """Records the worker's CUDA_VISIBLE_DEVICES and torch threads in metrics.json."""
    import torch

    metrics = fake_train(config, out_dir, device=device, progress=progress)
    metrics.update(
        visible=os.environ.get("CUDA_VISIBLE_DEVICES"), threads=torch.get_num_threads(), pid=os.getpid()
    )
    atomic_write_json(Path(out_dir) / "metrics.json", metrics)
    return metrics
