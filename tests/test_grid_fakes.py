"""Stand-in ``train_unit`` functions for the grid tests (no tests here).

They follow the trainer's contract cheaply (see :mod:`ablation.grid.execute`): for each run of the unit,
config.json and status.json when it starts, a one-row test_metrics.csv, metrics.json last, each written by the
store's writer that training uses. Each run entered
leaves a marker file naming the unit's size, so tests count how often a run was trained and in which packs.
Module-level so worker processes and subprocesses can import them.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

from ablation.config import RunConfig
from ablation.errors import AblationError
from ablation.store.layout import TEST_METRICS_FILE, metrics_identity
from ablation.store.writers import write_image_metrics, write_metrics, write_run_config, write_status

ENTRY_PREFIX = "entered-"


def entries(run_dir: Path) -> int:
    """How many times a trainer was entered for this run folder."""
    return len(list(Path(run_dir).glob(ENTRY_PREFIX + "*")))


def unit_sizes(run_dir: Path) -> list[int]:
    """The size of the unit each entry of this run folder came in, oldest first."""
    marks = sorted(Path(run_dir).glob(ENTRY_PREFIX + "*"), key=lambda p: int(p.name.split("-")[2]))
    return [int(mark.name.rsplit("-k", 1)[1]) for mark in marks]


def _enter(out_dir: Path, size: int) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{ENTRY_PREFIX}{os.getpid()}-{time.time_ns()}-k{size}").touch()


def _train_one(config: RunConfig, out_dir: Path, device: str | None, config_written: bool = False) -> dict:
    if not config_written:
        write_run_config(out_dir, config, {"device": device or "cpu"})
    write_status(out_dir, "running", epoch=0)
    time.sleep(float(os.environ.get("GRID_TEST_SLEEP", "0.02")))
    metrics = {  # every key of store.METRICS_KEYS, with the types a report validates
        **metrics_identity(config),
        **{"best_epoch": 1, "epochs_run": 1, "stopped_early": False, "parameters": 1, "gflops": 0.1},
        **{"seconds": 0.02, "dice_mean": 0.5, "dice_std": 0.0, "iou_mean": 0.33, "iou_std": 0.0},
        **{"dice_micro": 0.5, "iou_micro": 0.33, "hd95_mean": 1.0, "device": device or "cpu"},
    }
    write_image_metrics(out_dir / TEST_METRICS_FILE, [{"image": "img0", "dice": 0.5, "iou": 0.33}])
    write_metrics(out_dir, metrics)
    return metrics


def fake_train(
    configs: Sequence[RunConfig], dirs: Sequence[Path], *, device: str | None = None, progress: bool = False
) -> None:
    for config, out_dir in zip(configs, dirs):
        _enter(Path(out_dir), len(configs))
        _train_one(config, Path(out_dir), device)


def recording_train(
    configs: Sequence[RunConfig], dirs: Sequence[Path], *, device: str | None = None, progress: bool = False
) -> None:
    """Like fake_train, but config.json is written as the engine writes it (store.write_run_config, its env with
    the dataset fingerprint and the run's splits, from the real data functions), so staleness can be checked."""
    from ablation.data import load_prepared, run_splits

    for config, out_dir in zip(configs, dirs):
        _enter(Path(out_dir), len(configs))
        prepared = load_prepared(
            config.dataset,
            img_size=config.model.img_size,
            data_root=config.data_root,
            interpolation=config.interpolation,
        )
        *_, record = run_splits(prepared, fold=config.fold, repeat=config.repeat, num_folds=config.num_folds)
        env = {"device": "cpu", "dataset_fingerprint": prepared.fingerprint, "splits": record}
        write_run_config(out_dir, config, env)
        _train_one(config, Path(out_dir), device, config_written=True)


def failing_train(
    configs: Sequence[RunConfig], dirs: Sequence[Path], *, device: str | None = None, progress: bool = False
) -> None:
    """Trains every run but the no-skip subset, then raises for that one (as a pack losing one variant)."""
    failed = False
    for config, out_dir in zip(configs, dirs):
        _enter(Path(out_dir), len(configs))
        if config.model.skips == "0000":
            failed = True
        else:
            _train_one(config, Path(out_dir), device)
    if failed:
        raise ValueError("synthetic failure in the no-skip run")


def self_failing_train(
    configs: Sequence[RunConfig], dirs: Sequence[Path], *, device: str | None = None, progress: bool = False
) -> None:
    """Like train_run on a non-finite loss: writes its own failed status, then raises an AblationError."""
    for config, out_dir in zip(configs, dirs):
        if config.model.skips == "0000":
            write_status(out_dir, "failed: non-finite loss at epoch 3", epoch=3)
            raise AblationError("non-finite loss at epoch 3")
        fake_train([config], [out_dir], device=device)


def crashing_train(
    configs: Sequence[RunConfig], dirs: Sequence[Path], *, device: str | None = None, progress: bool = False
) -> None:
    """The worker process dies (as under the kernel's OOM killer) in the no-skip run."""
    for config, out_dir in zip(configs, dirs):
        if config.model.skips == "0000":
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            write_status(out_dir, "running", epoch=0)
            os.kill(os.getpid(), signal.SIGKILL)
    environment_train(configs, dirs, device=device)


def silent_train(
    configs: Sequence[RunConfig], dirs: Sequence[Path], *, device: str | None = None, progress: bool = False
) -> None:
    """Returns without writing metrics.json: the runner must not count those runs as done."""
    for out_dir in dirs:
        Path(out_dir).mkdir(parents=True, exist_ok=True)


def environment_train(
    configs: Sequence[RunConfig], dirs: Sequence[Path], *, device: str | None = None, progress: bool = False
) -> None:
    """Records the worker's CUDA_VISIBLE_DEVICES and torch threads in metrics.json."""
    import torch

    for config, out_dir in zip(configs, dirs):
        _enter(Path(out_dir), len(configs))
        metrics = _train_one(config, Path(out_dir), device)
        metrics.update(
            visible=os.environ.get("CUDA_VISIBLE_DEVICES"), threads=torch.get_num_threads(), pid=os.getpid()
        )
        write_metrics(out_dir, metrics)


def diverging_train(
    configs: Sequence[RunConfig], dirs: Sequence[Path], *, device: str | None = None, progress: bool = False
) -> None:
    """Like the engine when one variant's loss becomes non-finite: that run's status.json says failed, the other
    runs of the pack finish, nothing is raised."""
    for config, out_dir in zip(configs, dirs):
        _enter(Path(out_dir), len(configs))
        if config.model.skips == "0000":
            write_status(out_dir, "failed: non-finite loss at epoch 2", epoch=2)
        else:
            _train_one(config, Path(out_dir), device)


def source_checking_train(
    configs: Sequence[RunConfig], dirs: Sequence[Path], *, device: str | None = None, progress: bool = False
) -> None:
    """Refuses to train a run whose source (train.init_from_run) has no metrics.json yet, as the engine would;
    U-Net runs (the sources) take longer, so a runner that starts a dependent early would be caught."""
    for config, out_dir in zip(configs, dirs):
        source = config.train.init_from_run
        if source and not (Path(out_dir).parent / source / "metrics.json").exists():
            raise AblationError(f"started before its source {source} was done")
        if config.model.connector == "unet":
            time.sleep(0.3)
        fake_train([config], [out_dir], device=device)


def unet_failing_train(
    configs: Sequence[RunConfig], dirs: Sequence[Path], *, device: str | None = None, progress: bool = False
) -> None:
    """Every U-Net run fails (so runs that start from one cannot); the others train."""
    for config, out_dir in zip(configs, dirs):
        _enter(Path(out_dir), len(configs))
        if config.model.connector == "unet":
            raise ValueError("synthetic failure of a source")
        _train_one(config, Path(out_dir), device)
