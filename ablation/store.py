"""The run folder: its name, its files and its status. No torch import, so results can be read anywhere.

A run folder holds (written in this order; every write is atomic)::

    config.json         resolved RunConfig + "run_id", "run_name", "env" (packages, git commit, device,
                        dataset fingerprint, splits file), written when the run starts
    status.json         {"status": "running" | "done" | "failed: <reason>", "error": ..., "epoch": ...}
    history.csv         one row per epoch: epoch, train_loss, val_loss, val_dice, lr, seconds
    checkpoint_last.pt  resumable state (model, optimiser, scheduler, RNG, early-stopping state, epoch)
    checkpoint_best.pt  best model on validation Dice (after TrainConfig.min_best_epoch)
    test_metrics.csv    one row per test image: image, dice, iou, hd95 [, object_f1, object_dice, object_hausdorff]
    masked_metrics.csv  optional: one row per (eval_skips, test image) of an all-skips model masked at test time:
                        eval_skips ("1011"), image, dice, iou, hd95 [, object metrics]
    predictions.npz     optional: image (N,H,W,3) uint8, mask (N,H,W) uint8, pred (N,H,W) uint8, name (N,)
    metrics.json        summary, written last: a run is done exactly when it exists. Keys: status ("done"),
                        run_id, run_name, dataset, connector, skips, seed, fold, repeat, best_epoch, epochs_run,
                        stopped_early, parameters, gflops, seconds, device, dice_mean, dice_std, iou_mean,
                        iou_std, dice_micro, iou_micro (pooled over all test pixels), hd95_mean
                        (METRICS_KEYS), and where the dataset has instance ids object_f1_mean,
                        object_dice_mean, object_hausdorff_mean (OBJECT_METRICS_KEYS); train_run adds
                        best_val_dice, num_test_images and the other *_std values

A run is identified by a hash of its resolved config; its folder name is readable and deterministic:
``<dataset>_<connector>_<skips>_s<seed>_<split>_<hash8>`` where split is ``official`` or ``r<repeat>f<fold>``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ablation.config import RunConfig, to_dict
from ablation.errors import AblationError
from ablation.io import atomic_write_json, read_json_table, stable_hash

CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
HISTORY_FILE = "history.csv"
LAST_CHECKPOINT = "checkpoint_last.pt"
BEST_CHECKPOINT = "checkpoint_best.pt"
TEST_METRICS_FILE = "test_metrics.csv"
MASKED_METRICS_FILE = "masked_metrics.csv"
PREDICTIONS_FILE = "predictions.npz"
METRICS_FILE = "metrics.json"

# Keys every metrics.json has (writers are tested against these).
METRICS_KEYS = tuple(
    "status run_id run_name dataset connector skips seed fold repeat best_epoch epochs_run stopped_early "
    "parameters gflops seconds device dice_mean dice_std iou_mean iou_std dice_micro iou_micro hd95_mean".split()
)
OBJECT_METRICS_KEYS = ("object_f1_mean", "object_dice_mean", "object_hausdorff_mean")

GRID_FILE = (
    "grid.json"  # names of the runs grids expected in this folder, so `ablation status` can list pending
)


# Settings that do not change what is computed (where and how fast), left out of a run's identity.
_NOT_IDENTITY = {"train": ("eval_batch_size", "compile", "checkpoint_every"), "": ("data_root",)}


def run_id(config: RunConfig) -> str:
    """Hash of the resolved config, minus settings that do not change the result."""
    data = to_dict(config)
    for key in _NOT_IDENTITY[""]:
        data.pop(key, None)
    for key in _NOT_IDENTITY["train"]:
        data["train"].pop(key, None)
    return stable_hash(data, length=8)


def dataset_slug(text: str) -> str:
    """The short, file-name-safe dataset name used in run names: a folder path gives its last component."""
    name = Path(text).name if ("/" in text or "\\" in text) else text
    return re.sub(r"[^A-Za-z0-9.-]+", "-", name).strip("-").lower() or "data"


def split_name(config: RunConfig) -> str:
    return "official" if config.fold is None else f"r{config.repeat}f{config.fold}"


def run_name(config: RunConfig) -> str:
    model = config.model
    return (
        f"{dataset_slug(config.dataset)}_{model.connector}_{model.skips}_s{config.seed}_{split_name(config)}_"
        f"{run_id(config)}"
    )


def read_run_state(run_dir: str | Path) -> tuple[str, str, dict[str, Any]]:
    """Where a run folder stands, from its files alone: ``(status, detail, status record)``.

    status is ``done`` (metrics.json exists and the files a report needs are sound), ``damaged`` (a finished run
    whose files cannot be used, or an unreadable status.json; detail says why), ``failed`` (status.json says so;
    detail is the reason), ``started`` (status.json exists: running now or interrupted) or ``pending``. The grid
    runner, ``ablation status`` and the report all classify runs with this one function.
    """
    run_dir = Path(run_dir)
    if (run_dir / METRICS_FILE).exists():
        problem = done_run_problem(run_dir)
        return ("damaged", problem, {}) if problem else ("done", "", {})
    if not (run_dir / STATUS_FILE).exists():
        return "pending", "", {}
    try:
        record = read_json_table(run_dir / STATUS_FILE)
    except AblationError as error:
        return "damaged", str(error), {}
    text = str(record.get("status", ""))
    if text.startswith("failed"):
        return "failed", text.removeprefix("failed").lstrip(": ") or str(record.get("error", "")), record
    return "started", "", record


def run_status(run_dir: str | Path) -> str:
    """``done``, ``damaged``, ``failed``, ``running`` (started, not finished) or ``pending``."""
    status = read_run_state(run_dir)[0]
    return "running" if status == "started" else status


def read_status(run_dir: str | Path) -> dict[str, Any]:
    """The run's status.json as a dict (a damaged file reads as ``failed: <reason>``)."""
    status, detail, record = read_run_state(run_dir)
    if status == "damaged":
        return {"status": f"failed: {detail}", "error": detail}
    return record or {"status": run_status(run_dir)}


def write_status(run_dir: str | Path, status: str, **extra: Any) -> None:
    atomic_write_json(Path(run_dir) / STATUS_FILE, {"status": status, **extra})


def find_runs(results_dir: str | Path) -> list[Path]:
    """Every run folder (one holding config.json) below ``results_dir``, sorted by path."""
    return sorted(p.parent for p in Path(results_dir).rglob(CONFIG_FILE))


def done_run_problem(run_dir: str | Path) -> str | None:
    """Why a finished run folder (one with metrics.json) cannot be used, or None when it can.

    Checks that metrics.json and config.json hold JSON objects and that test_metrics.csv has the columns
    image, dice and iou and at least one row: what ``ablation report`` needs of every done run. Reads a few
    small files, so ``ablation status`` and the report agree on which runs are damaged.
    """
    run_dir = Path(run_dir)
    for file in (METRICS_FILE, CONFIG_FILE):
        try:
            read_json_table(run_dir / file)
        except AblationError as error:
            return str(error)
    path = run_dir / TEST_METRICS_FILE
    try:
        with path.open(encoding="utf-8") as handle:
            header, first_row = handle.readline(), handle.readline()
    except FileNotFoundError:
        return f"{path} is missing"
    except (OSError, UnicodeDecodeError) as error:
        return f"cannot read {path}: {error}"
    if not header.strip():
        return f"{path} is empty"
    columns = [column.strip() for column in header.strip().split(",")]
    absent = [column for column in ("image", "dice", "iou") if column not in columns]
    if absent:
        return f"{path}: missing column {absent[0]!r} (expected image, dice, iou)"
    if not first_row.strip():
        return f"{path} has no rows"
    return None


def recorded_runs(results_dir: str | Path) -> list[str]:
    """Run names recorded in ``grid.json`` by earlier ``ablation run`` calls on this folder."""
    path = Path(results_dir) / GRID_FILE
    if not path.exists():
        return []
    try:
        runs = read_json_table(path).get("runs", [])
    except AblationError:
        return []
    return [run for run in runs if isinstance(run, str)] if isinstance(runs, list) else []


def name_fields(name: str) -> dict[str, str] | None:
    """The ``--only`` fields of a run folder name, read from the name alone; None for any other name.

    Run folders are named ``<dataset>_<connector>_<skips>_s<seed>_<split>_<hash8>`` (:func:`run_name`), where
    ``dataset`` is the dataset's short form (a folder's last component, lower case).
    """
    parts = name.split("_")
    if len(parts) != 6 or not re.fullmatch(r"s\d+", parts[3]) or not re.fullmatch(r"[0-9a-f]{8}", parts[5]):
        return None
    dataset, connector, skips, seed, split, hash8 = parts
    if split == "official":
        repeat, fold = "0", "official"
    elif match := re.fullmatch(r"r(\d+)f(\d+)", split):
        repeat, fold = match.groups()
    else:
        return None
    return {
        "dataset": dataset,
        "connector": connector,
        "skips": skips,
        "seed": seed[1:],
        "fold": fold,
        "repeat": repeat,
        "split": split,
        "run_id": hash8,
    }
