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

The writers of the JSON and CSV files live here, so training, the report's synthetic results and the grid's fake
runs write the same files (the checkpoints and predictions.npz stay with ``ablation.train``):

- ``write_run_config(run_dir, config, env)``: config.json (refuses a folder of another run);
- ``write_status(run_dir, status, **extra)``: status.json;
- ``write_history(run_dir, rows)`` (rewrite, e.g. on resume) and ``append_history(run_dir, rows)`` (per epoch):
  history.csv with the columns ``HISTORY_COLUMNS``;
- ``write_image_metrics(path, rows)``: test_metrics.csv or masked_metrics.csv, one row per image;
- ``write_metrics(run_dir, record)``: metrics.json, last (it must hold ``METRICS_KEYS``).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ablation.config import RunConfig, to_dict
from ablation.errors import AblationError
from ablation.io import atomic_write_json, atomic_write_text, read_json_table, stable_hash

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
HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_dice", "lr", "seconds")

GRID_FILE = (
    "grid.json"  # names of the runs grids expected in this folder, so `ablation status` can list pending
)


# Settings that do not change what is computed (where and how fast), left out of a run's identity.
_NOT_IDENTITY = {
    "train": ("eval_batch_size", "compile", "checkpoint_every", "pack_conv", "cuda_graphs"),
    "": ("data_root",),
}


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
    """status.json: ``{"status": "running" | "done" | "failed: <reason>", **extra}``."""
    atomic_write_json(Path(run_dir) / STATUS_FILE, {"status": status, **extra})


def write_run_config(run_dir: str | Path, config: RunConfig, env: Mapping[str, Any]) -> None:
    """config.json when a run starts: ``run_id``, ``run_name``, the resolved config and ``env``.

    ``env`` records where the run ran (``ablation.io.environment_record()`` plus device, dataset fingerprint and
    splits). A resumed run keeps its original file.

    Raises:
        AblationError: the folder's config.json belongs to another run.
    """
    path = Path(run_dir) / CONFIG_FILE
    if path.exists():
        existing = read_json_table(path).get("run_id")
        if existing != run_id(config):
            raise AblationError(
                f"{path} belongs to run {existing}, not {run_id(config)}: use another output folder"
            )
        return
    atomic_write_json(
        path, {"run_id": run_id(config), "run_name": run_name(config), **to_dict(config), "env": dict(env)}
    )


def _csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, header: bool = True) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_history(run_dir: str | Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rewrite history.csv with these rows (``HISTORY_COLUMNS``), e.g. a resumed run's checkpointed epochs."""
    atomic_write_text(Path(run_dir) / HISTORY_FILE, _csv_text(rows, HISTORY_COLUMNS))


def append_history(run_dir: str | Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Append epochs to history.csv (its header first when the file is new); once per epoch, not a rewrite.

    An append cut short by a kill can leave a partial last line; resuming rewrites the file from the
    checkpoint with :func:`write_history`.
    """
    path = Path(run_dir) / HISTORY_FILE
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", encoding="utf-8", newline="") as handle:
        handle.write(_csv_text(rows, HISTORY_COLUMNS, header=new))


def write_image_metrics(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """test_metrics.csv, masked_metrics.csv or any per-image table: one row per image, columns of the first row."""
    columns = list(rows[0]) if rows else ["image"]
    atomic_write_text(path, _csv_text(rows, columns))


def write_metrics(run_dir: str | Path, record: Mapping[str, Any]) -> None:
    """metrics.json, the run's summary; write it last: a run is done exactly when this file exists.

    Raises:
        ValueError: ``record`` lacks a key of ``METRICS_KEYS`` (a writer's mistake, not a user's).
    """
    missing = [key for key in METRICS_KEYS if key not in record]
    if missing:
        raise ValueError(f"metrics.json record lacks {', '.join(missing)}")
    atomic_write_json(Path(run_dir) / METRICS_FILE, dict(record))


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
