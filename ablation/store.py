"""The run folder: its name, its files and its status. No torch import, so results can be read anywhere.

A run folder holds (written in this order; every write is atomic)::

    config.json         resolved RunConfig + "run_id", "run_name", "env" (packages, git commit, device,
                        dataset fingerprint, splits file), written when the run starts; a run started from
                        another run's weights (train.init_from) also records "init_weights": what was copied
    status.json         {"status": "running" | "done" | "failed: <reason>", "error": ..., "epoch": ...}
    history.csv         one row per epoch: epoch, train_loss, val_loss, val_dice, lr, seconds
    tensorboard/        optional (train.tensorboard): TensorBoard event files, written once per epoch
    checkpoint_last.pt  resumable state (model, optimiser, scheduler, RNG, early-stopping state, epoch)
    checkpoint_best.pt  best model on validation Dice (after TrainConfig.min_best_epoch)
    test_metrics.csv    one row per test image: image, dice, iou, hd95 [, object_f1, object_dice, object_hausdorff]
    masked_metrics.csv  optional: one row per (eval_skips, test image) of an all-skips model masked at test time:
                        eval_skips ("1011"), image, dice, iou, hd95 [, object metrics]
    predictions.npz     optional: image (N,H,W,3) uint8, mask (N,H,W) uint8, pred (N,H,W) uint8, name (N,)
    metrics.json        summary, written last: a run is done when it exists and its files prove it (below).
                        Keys: status ("done"),
                        run_id, run_name, dataset, connector, skips, seed, fold, repeat, best_epoch, epochs_run,
                        stopped_early, parameters, gflops, seconds, device, dice_mean, dice_std, iou_mean,
                        iou_std, dice_micro, iou_micro (pooled over all test pixels), hd95_mean
                        (METRICS_KEYS), and where the dataset has instance ids object_f1_mean,
                        object_dice_mean, object_hausdorff_mean (OBJECT_METRICS_KEYS); train_run adds
                        best_val_dice, num_test_images and the other *_std values

A run is identified by a hash of its resolved config; its folder name is readable and deterministic:
``<dataset>_<connector>_<skips>_s<seed>_<split>_<hash8>`` where split is ``official`` or ``r<repeat>f<fold>``.

Which runs count (:func:`read_run_state`, the one classifier the grid runner, ``ablation status`` and the report
share): a finished run is ``done`` only when every file the report reads back is sound and its folder name,
config.json and metrics.json name the same run (:func:`check_identity`); otherwise it is ``damaged``, and the grid
runner moves its files to ``<results>/.replaced/`` (:func:`set_aside`) and trains it again. A done run is
*stale* when the dataset fingerprint or the split its config.json recorded differs from today's
(:class:`StaleCheck`): it is kept and flagged. Run folder names from grid.json (:func:`read_grid_record`) or any
other source are joined to the results folder only through :func:`run_dir_in`, which keeps them inside it.

The writers of every file but the checkpoints (``ablation.train.checkpoint``) live here, so training, the
report tests' synthetic results and the grid tests' fake runs write the same files:

- ``write_run_config(run_dir, config, env)``: config.json (refuses a folder of another run, and a resume on
  another split than the one it records);
- ``write_status(run_dir, status, **extra)``: status.json;
- ``write_history(run_dir, rows)`` (rewrite, e.g. on resume) and ``append_history(run_dir, rows)`` (per epoch):
  history.csv with the columns ``HISTORY_COLUMNS``;
- ``write_image_metrics(path, rows)``: test_metrics.csv or masked_metrics.csv, one row per image;
- ``write_predictions(run_dir, names, images, masks, predictions)``: predictions.npz;
- ``write_metrics(run_dir, record)``: metrics.json, last (it must pass :func:`check_metrics_record`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import re
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ablation.config import RunConfig, from_dict, to_dict
from ablation.errors import AblationError
from ablation.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    json_text,
    read_json_table,
    stable_hash,
)

if TYPE_CHECKING:
    import numpy as np

CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
HISTORY_FILE = "history.csv"
LAST_CHECKPOINT = "checkpoint_last.pt"
BEST_CHECKPOINT = "checkpoint_best.pt"
TEST_METRICS_FILE = "test_metrics.csv"
MASKED_METRICS_FILE = "masked_metrics.csv"
PREDICTIONS_FILE = "predictions.npz"
METRICS_FILE = "metrics.json"
# TensorBoard event files, only with train.tensorboard (written by ablation.train.tensorboard_log).
TENSORBOARD_FOLDER = "tensorboard"

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
    "train": (
        "eval_batch_size",
        "compile",
        "checkpoint_every",
        "pack_conv",
        "cuda_graphs",
        "tensorboard",
        "tensorboard_images_every",
    ),
    "": ("data_root",),
}


def run_id(config: RunConfig) -> str:
    """Hash of the resolved config, minus settings that do not change the result.

    A run from random weights (empty ``train.init_from`` and ``train.init_from_run``, the defaults) hashes
    without those keys, so it keeps the id it had before runs could start from other runs.
    """
    data = to_dict(config)
    for key in _NOT_IDENTITY[""]:
        data.pop(key, None)
    for key in _NOT_IDENTITY["train"]:
        data["train"].pop(key, None)
    for key in ("init_from", "init_from_run"):
        if not data["train"][key]:
            data["train"].pop(key)
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

    status is ``done`` (metrics.json exists and every file the report reads back is sound and describes this
    folder's run: see :func:`done_run_problem`), ``damaged`` (a finished run whose files cannot be used, an
    unreadable status.json, a config.json that is not a valid run config, or a checkpoint_last.pt that cannot be
    resumed from; detail says why), ``failed`` (status.json says so; detail is the reason), ``started``
    (status.json exists: running now or interrupted) or ``pending``. The grid runner, ``ablation status`` and the
    report all classify runs with this one function.
    """
    run_dir = Path(run_dir)
    if (run_dir / METRICS_FILE).exists():
        problem = done_run_problem(run_dir)
        return ("damaged", problem, {}) if problem else ("done", "", {})
    if (run_dir / CONFIG_FILE).exists():
        try:
            read_run_config(run_dir)
        except AblationError as error:
            return "damaged", str(error), {}
    if not (run_dir / STATUS_FILE).exists():
        return "pending", "", {}
    try:
        record = read_json_table(run_dir / STATUS_FILE)
    except AblationError as error:
        return "damaged", str(error), {}
    text = str(record.get("status", ""))
    if text.startswith("failed"):
        return "failed", text.removeprefix("failed").lstrip(": ") or str(record.get("error", "")), record
    problem = checkpoint_problem(run_dir / LAST_CHECKPOINT)
    if problem:
        return "damaged", f"{problem}: the run cannot resume", record
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


def write_run_config(
    run_dir: str | Path,
    config: RunConfig,
    env: Mapping[str, Any],
    init_weights: Mapping[str, Any] | None = None,
) -> None:
    """config.json when a run starts: ``run_id``, ``run_name``, the resolved config, ``env`` and, for a run
    started from another run's weights (``train.init_from``), ``init_weights``.

    ``env`` records where the run ran (``ablation.io.environment_record()`` plus device, dataset fingerprint and
    ``splits``, the record of :func:`ablation.data.run_splits`); ``init_weights`` what was copied from the
    source run (``ablation.train.checkpoint.copy_source_weights``). A run resuming from checkpoint_last.pt keeps
    its original file; a run starting again from epoch 0 records today's. A damaged config.json (not a valid run
    config) is written again: the folder's checkpoint, if any, says whose run it is.

    Raises:
        AblationError: the folder's config.json belongs to another run, or the run would resume from its
            checkpoint on another split than the one config.json records (naming the splits file).
    """
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    existing = None
    if path.exists():
        try:
            existing = read_run_config(run_dir)[1]
        except AblationError:
            existing = None  # damaged: written again below
        if existing is not None:
            if existing.get("run_id") != run_id(config):
                raise AblationError(
                    f"{path} belongs to run {existing.get('run_id')}, not {run_id(config)}: use another output "
                    "folder"
                )
            if (run_dir / LAST_CHECKPOINT).exists():
                _check_resumed_split(run_dir, existing.get("env", {}).get("splits"), env.get("splits"))
                return
    record = {"run_id": run_id(config), "run_name": run_name(config), **to_dict(config), "env": dict(env)}
    if init_weights is not None:
        record["init_weights"] = dict(init_weights)
    if record != existing:  # unchanged: left as it is
        atomic_write_json(path, record)


SPLIT_LISTS = ("train", "val", "test")  # the image lists a run's splits record holds


def _check_resumed_split(run_dir: Path, recorded: Any, today: Any) -> None:
    """Refuse to resume a run whose split differs from the one its config.json records (and its checkpoint
    was trained on)."""
    if not isinstance(recorded, dict) or not isinstance(today, dict):
        return  # nothing recorded to compare with (a config.json of an older version, or a caller without splits)
    changed = [key for key in ("split", *SPLIT_LISTS) if recorded.get(key) != today.get(key)]
    if changed:
        where = today.get("splits_file") or recorded.get("splits_file")
        raise AblationError(
            f"{run_dir.name} cannot resume: the splits file {where} now gives split {today.get('split')} other "
            f"{'/'.join(changed)} images than the run's {LAST_CHECKPOINT} was trained on (recorded in "
            f"{CONFIG_FILE}); restore that file, or delete {run_dir / LAST_CHECKPOINT} to train the run again "
            "on the new split"
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
    try:
        new = not path.exists() or path.stat().st_size == 0
        with path.open("a", encoding="utf-8", newline="") as handle:
            handle.write(_csv_text(rows, HISTORY_COLUMNS, header=new))
    except OSError as error:
        raise AblationError(f"cannot write {path}: {error.strerror or error}") from None


def write_image_metrics(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """test_metrics.csv, masked_metrics.csv or any per-image table: one row per image, columns of the first row."""
    columns = list(rows[0]) if rows else ["image"]
    atomic_write_text(path, _csv_text(rows, columns))


def write_metrics(run_dir: str | Path, record: Mapping[str, Any]) -> None:
    """metrics.json, the run's summary; write it last: a run is done exactly when this file exists.

    The record is checked as the readers will read it back (:func:`check_metrics_record` on the JSON text), so
    no writer can mark a run done with a file the report and ``ablation status`` would call damaged.

    Raises:
        ValueError: ``record`` lacks a key of ``METRICS_KEYS`` or holds a value of the wrong type or range (a
            writer's mistake, not a user's); nothing is written.
    """
    missing = [key for key in METRICS_KEYS if key not in record]
    if missing:
        raise ValueError(f"metrics.json record lacks {', '.join(missing)}")
    path = Path(run_dir) / METRICS_FILE
    text = json_text(dict(record))
    try:
        check_metrics_record(json.loads(text), path)
    except AblationError as error:
        raise ValueError(f"refusing to write {error}") from None
    atomic_write_text(path, text)


def write_predictions(
    run_dir: str | Path, names: Sequence[str], images: np.ndarray, masks: np.ndarray, predictions: np.ndarray
) -> None:
    """predictions.npz, the first test images for the report's qualitative figure.

    Args:
        names: ``(N,)`` image names.
        images: ``uint8 (N, H, W, 3)`` RGB; masks: ``(N, H, W)`` in {0, 1}; predictions: ``(N, H, W)`` in {0, 1}
            (stored as uint8).
    """
    import numpy as np  # here only: reading a results folder (``ablation status``) needs no numpy

    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        image=np.asarray(images).astype(np.uint8),
        mask=np.asarray(masks).astype(np.uint8),
        pred=np.asarray(predictions).astype(np.uint8),
        name=np.array(list(names), dtype=str),
    )
    atomic_write_bytes(Path(run_dir) / PREDICTIONS_FILE, buffer.getvalue())


def find_runs(results_dir: str | Path) -> list[Path]:
    """Every run folder (one holding config.json) below ``results_dir``, sorted by path.

    Hidden folders are skipped: :data:`REPLACED_DIR` keeps the files of runs trained again.
    """
    root = Path(results_dir)
    return sorted(
        p.parent
        for p in root.rglob(CONFIG_FILE)
        if not any(part.startswith(".") for part in p.parent.relative_to(root).parts)
    )


def run_dir_in(results_dir: str | Path, name: str, *, where: str = "") -> Path:
    """The run folder ``results_dir/name``, after checking that it stays inside ``results_dir``.

    Args:
        results_dir: the results folder.
        name: a run folder's name: one path component, as :func:`run_name` gives.
        where: the file or key the name comes from, for the message (e.g. grid.json).

    Raises:
        AblationError: naming ``where`` and the name when it is empty, absolute, holds a path separator or
            ``..``, is hidden, or is a symbolic link that leads outside ``results_dir``.
    """
    root = Path(results_dir)
    source = f"{where}: " if where else ""
    if (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or name.startswith(".")
        or any(sep in name for sep in ("/", "\\", "\0"))
    ):
        raise AblationError(
            f"{source}run folder {name!r} is not a plain folder name inside {root}: run folders are named "
            "<dataset>_<connector>_<skips>_s<seed>_<split>_<hash8>"
        )
    path = root / name
    if path.is_symlink():
        target, inside = path.resolve(), root.resolve()
        if target == inside or inside not in target.parents:
            raise AblationError(
                f"{source}run folder {path} is a link to {target}, outside the results folder {root}: "
                "remove the link (results are only written inside the results folder)"
            )
    return path


REPLACED_DIR = ".replaced"  # <results>/.replaced/<run name>.<UTC time>/: files of runs trained again


def set_aside(run_dir: str | Path, reason: str, *, keep: Sequence[str] = ()) -> Path:
    """Move a run folder's files into ``<results>/.replaced/<run name>.<UTC time>/`` so the run can be trained
    again; nothing is deleted. ``reason.txt`` there says why.

    Args:
        run_dir: the run folder (its parent is the results folder).
        reason: why the run is trained again (damaged, stale), one line.
        keep: names of files that stay (the runner's lock).

    Returns:
        The folder the files went to.
    """
    run_dir = Path(run_dir)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = run_dir.parent / REPLACED_DIR / f"{run_dir.name}.{stamp}"
    suffix = 1
    while target.exists():
        suffix += 1
        target = run_dir.parent / REPLACED_DIR / f"{run_dir.name}.{stamp}-{suffix}"
    try:
        target.mkdir(parents=True)
        for item in sorted(run_dir.iterdir()):
            if item.name not in keep:
                os.replace(item, target / item.name)
        atomic_write_text(target / "reason.txt", reason.rstrip() + "\n")
    except OSError as error:
        raise AblationError(
            f"cannot move the files of {run_dir} to {target}: {error.strerror or error}"
        ) from None
    return target


# Per-image metric columns and their valid ranges (test_metrics.csv, masked_metrics.csv).
IMAGE_METRIC_RANGES: dict[str, tuple[float, float]] = {
    "dice": (0.0, 1.0),
    "iou": (0.0, 1.0),
    "hd95": (0.0, math.inf),
    "object_f1": (0.0, 1.0),
    "object_dice": (0.0, 1.0),
    "object_hausdorff": (0.0, math.inf),
}
# The history.csv columns train_run writes, and their valid ranges.
HISTORY_RANGES: dict[str, tuple[float, float]] = {
    "epoch": (1, math.inf),
    "train_loss": (0.0, math.inf),
    "val_loss": (0.0, math.inf),
    "val_dice": (0.0, 1.0),
    "lr": (0.0, math.inf),
    "seconds": (0.0, math.inf),
}
# Keys of config.json that are a record of the run, not part of its RunConfig.
RUN_RECORD_KEYS = ("run_id", "run_name", "env", "init_weights")
_FRACTION = (0.0, 1.0)
_NON_NEGATIVE = (0.0, math.inf)
# metrics.json: the type (and range) of each key; keys not listed here are not checked.
_METRICS_TYPES: dict[str, Any] = {
    "status": "done",
    **dict.fromkeys(("run_id", "run_name", "dataset", "connector", "device"), str),
    "skips": "skips",
    **dict.fromkeys(("seed", "repeat", "best_epoch", "epochs_run", "parameters"), int),
    "num_test_images": int,
    "fold": "fold",
    "stopped_early": bool,
    **dict.fromkeys(("gflops", "seconds"), _NON_NEGATIVE),
    **{f"{m}_{s}": IMAGE_METRIC_RANGES[m] for m in IMAGE_METRIC_RANGES for s in ("mean", "std")},
    **dict.fromkeys(("dice_micro", "iou_micro", "best_val_dice"), _FRACTION),
}


@dataclasses.dataclass(frozen=True)
class DoneRun:
    """The validated files of a finished run folder (see :func:`read_done_run`).

    Attributes:
        config: the RunConfig config.json records.
        record: config.json as written (with run_id, run_name and env).
        metrics: metrics.json.
        test: test_metrics.csv as columns (:func:`read_metrics_csv`).
        masked: masked_metrics.csv as columns, or None without one.
        history: history.csv as columns (:func:`read_history_csv`), or None without one.
    """

    config: RunConfig
    record: dict[str, Any]
    metrics: dict[str, Any]
    test: dict[str, list[Any]]
    masked: dict[str, list[Any]] | None
    history: dict[str, list[Any]] | None


def read_done_run(run_dir: str | Path) -> DoneRun:
    """Read and validate every file of a finished run folder (one with metrics.json) that reports read back.

    config.json must be a valid run config (:func:`read_run_config`); metrics.json must hold every key of
    :data:`METRICS_KEYS` with the right type and range (:func:`check_metrics_record`); both must describe the run
    the folder is named after (:func:`check_identity`); test_metrics.csv, and
    masked_metrics.csv and history.csv where present, must parse with every number in range
    (:func:`read_metrics_csv`, :func:`read_history_csv`). So a run is either sound or damaged, never a crash
    or a score.

    Raises:
        AblationError: naming the first file that fails, and why.
    """
    run_dir = Path(run_dir)
    config, record = read_run_config(run_dir)
    metrics = read_json_table(run_dir / METRICS_FILE)
    check_metrics_record(metrics, run_dir / METRICS_FILE)
    check_identity(run_dir, config, record, metrics)
    test = read_metrics_csv(run_dir / TEST_METRICS_FILE)
    masked_path, history_path = run_dir / MASKED_METRICS_FILE, run_dir / HISTORY_FILE
    masked = read_metrics_csv(masked_path, masked=True) if masked_path.exists() else None
    history = read_history_csv(history_path) if history_path.exists() else None
    return DoneRun(config, record, metrics, test, masked, history)


def done_run_problem(run_dir: str | Path) -> str | None:
    """Why a finished run folder (one with metrics.json) cannot be used (:func:`read_done_run`), or None.

    ``ablation status``, the grid runner and the report all use this check, so they call the same runs damaged.
    """
    try:
        read_done_run(run_dir)
    except AblationError as error:
        return str(error)
    return None


def check_identity(
    run_dir: Path, config: RunConfig, record: Mapping[str, Any], metrics: Mapping[str, Any]
) -> None:
    """Check that a finished run's folder name, config.json and metrics.json name one run.

    The folder name must be a run name (:func:`name_fields`) whose dataset, connector, skips, seed and split
    are config.json's; config.json's ``run_name`` (where recorded) must be the folder name and its ``run_id`` the
    name's hash; metrics.json's run_id, run_name, dataset, connector, skips, seed, fold and repeat must be
    config.json's. A run copied or renamed into another run's folder, or a metrics.json of another run, fails.

    Raises:
        AblationError: naming the file and the first field that disagrees.
    """
    name = run_dir.name
    fields = name_fields(name)
    if fields is None:
        raise AblationError(
            f"{run_dir}: the folder name is not a run name (<dataset>_<connector>_<skips>_s<seed>_<split>_<hash8>)"
            f"; config.json names the run {record.get('run_name', run_name(config))}"
        )
    expected = {
        "dataset": dataset_slug(config.dataset),
        "connector": config.model.connector,
        "skips": config.model.skips,
        "seed": str(config.seed),
        "split": split_name(config),
    }
    for key, value in expected.items():
        if fields[key] != value:
            raise AblationError(f"{run_dir}: the folder name says {key} {fields[key]}, {CONFIG_FILE} {value}")
    config_path, metrics_path = run_dir / CONFIG_FILE, run_dir / METRICS_FILE
    identity: dict[str, Any] = {"run_id": fields["run_id"], "run_name": name}
    for key, value in identity.items():
        if record.get(key, value) != value:
            raise AblationError(
                f"{config_path}: {key!r} is {record[key]!r}, the folder's name says {value!r}"
            )
    identity.update(
        dataset=config.dataset, connector=config.model.connector, skips=config.model.skips, seed=config.seed,
        fold=config.fold, repeat=config.repeat,
    )  # fmt: skip
    for key, value in identity.items():
        if metrics[key] != value:
            raise AblationError(
                f"{metrics_path}: {key!r} is {metrics[key]!r}, but {CONFIG_FILE} and the folder name say {value!r}"
            )


def read_run_config(run_dir: str | Path) -> tuple[RunConfig, dict[str, Any]]:
    """A run folder's config.json: the :class:`RunConfig` it records, and the file's content as written.

    Raises:
        AblationError: naming config.json when it cannot be read, is not a JSON object, or is not a valid run
            config (an unknown key, a wrong type, a value out of range), or when run_id, run_name or env have
            the wrong type.
    """
    path = Path(run_dir) / CONFIG_FILE
    record = read_json_table(path)
    try:
        config = from_dict(RunConfig, {k: v for k, v in record.items() if k not in RUN_RECORD_KEYS})
    except (AblationError, TypeError, ValueError) as error:
        raise AblationError(f"{path}: {error}") from None
    for key in ("run_id", "run_name"):
        if key in record and not isinstance(record[key], str):
            raise AblationError(f"{path}: {key!r} must be a string, got {record[key]!r}")
    env = record.get("env", {})
    if not isinstance(env, dict):
        raise AblationError(f"{path}: 'env' must be a JSON object, got {type(env).__name__}")
    if not isinstance(env.get("dataset_fingerprint", ""), str):
        raise AblationError(f"{path}: env.dataset_fingerprint must be a string")
    if not isinstance(record.get("init_weights", {}), dict):
        raise AblationError(f"{path}: 'init_weights' must be a JSON object")
    return config, record


def non_identity_keys() -> tuple[str, ...]:
    """The dotted config keys :func:`run_id` leaves out: where and how fast a run is computed, not what."""
    return tuple(
        f"{section}.{key}" if section else key for section, keys in _NOT_IDENTITY.items() for key in keys
    )


def check_metrics_record(metrics: dict[str, Any], path: Path) -> None:
    """Check a metrics.json's content: every key of :data:`METRICS_KEYS`, each of the right type and range.

    Raises:
        AblationError: naming ``path`` and the first key that is missing or wrong.
    """
    absent = [key for key in METRICS_KEYS if key not in metrics]
    if absent:
        raise AblationError(f"{path}: missing key {absent[0]!r}")
    for key, kind in _METRICS_TYPES.items():
        if key in metrics and not _is_valid(metrics[key], kind):
            raise AblationError(f"{path}: {key!r} is {metrics[key]!r}, expected {_describe(kind)}")


def _is_valid(value: Any, kind: Any) -> bool:
    if kind == "done":
        return value == "done"
    if kind == "skips":
        return isinstance(value, str) and len(value) == 4 and set(value) <= {"0", "1"}
    if kind == "fold":
        return value is None or _is_valid(value, int) and value >= 0
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if kind is str:
        return isinstance(value, str)
    low, high = kind
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and math.isfinite(value) and low <= value <= high


def _describe(kind: Any) -> str:
    if kind in ("done", "skips", "fold"):
        return {
            "done": '"done"',
            "skips": 'four 0/1 characters such as "1011"',
            "fold": "null or an integer >= 0",
        }[kind]
    if kind in (bool, int, str):
        return {bool: "true or false", int: "an integer >= 0", str: "a string"}[kind]
    low, high = kind
    return f"a number in [{low:g}, {high:g}]" if math.isfinite(high) else f"a finite number >= {low:g}"


def read_metrics_csv(path: str | Path, *, masked: bool = False) -> dict[str, list[Any]]:
    """A validated test_metrics.csv (or masked_metrics.csv): its columns as lists.

    Returns:
        ``{"image": [str], "dice": [float], "iou": [float], ...}``: image, the per-image metric columns of
        :data:`IMAGE_METRIC_RANGES` present (other columns are left out), and for masked_metrics.csv
        ``eval_skips`` (canonical, e.g. ``"1011"``; a leading-zero-stripped ``"11"`` is read as ``"0011"``).

    Raises:
        AblationError: naming the file: missing, unreadable, no header or no rows, a missing column, a row of
            the wrong length, an empty image name, an image listed twice (per mask), a cell that is not a number
            or outside its range (Dice and IoU in [0, 1], NaN never).
    """
    required = ("eval_skips", "image", "dice", "iou") if masked else ("image", "dice", "iou")
    header, rows = _read_csv_rows(Path(path), required)
    metrics = [column for column in IMAGE_METRIC_RANGES if column in header]
    columns: dict[str, list[Any]] = {key: [] for key in (*required[: int(masked)], "image", *metrics)}
    where = {column: header.index(column) for column in columns}
    seen: set[tuple[str, str]] = set()
    for line, row in rows:
        image = row[where["image"]].strip()
        if not image:
            raise AblationError(f"{path}, line {line}: empty image name")
        mask = ""
        if masked:
            text = row[where["eval_skips"]].strip()
            mask = text.zfill(4)
            if len(mask) != 4 or not set(mask) <= {"0", "1"}:
                raise AblationError(
                    f"{path}, line {line}: eval_skips {text!r} is not a skip subset like 1011"
                )
            columns["eval_skips"].append(mask)
        if (mask, image) in seen:
            raise AblationError(f"{path}, line {line}: image {image!r} is listed twice")
        seen.add((mask, image))
        columns["image"].append(image)
        for column in metrics:
            columns[column].append(
                _number(row[where[column]], IMAGE_METRIC_RANGES[column], path, line, column)
            )
    return columns


def read_history_csv(path: str | Path) -> dict[str, list[float]]:
    """A validated history.csv: its columns as lists (``epoch`` as int, the others as float).

    Raises:
        AblationError: naming the file: unreadable, no header or no rows, no ``epoch`` column, epochs not
            increasing, a row of the wrong length, or a cell that is not a finite number in its range
            (:data:`HISTORY_RANGES`; other columns any finite number).
    """
    header, rows = _read_csv_rows(Path(path), ("epoch",))
    columns: dict[str, list[float]] = {column: [] for column in header}
    previous = 0
    for line, row in rows:
        for column, text in zip(header, row):
            columns[column].append(
                _number(text, HISTORY_RANGES.get(column, (-math.inf, math.inf)), path, line, column)
            )
        epoch = columns["epoch"][-1]
        if epoch != int(epoch) or epoch <= previous:
            raise AblationError(f"{path}, line {line}: epoch {epoch:g} does not follow epoch {previous}")
        previous = int(epoch)
        columns["epoch"][-1] = previous
    return columns


def _read_csv_rows(path: Path, required: tuple[str, ...]) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the ``(line number, cells)`` rows of a CSV file, with the required columns present."""
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            table = list(csv.reader(handle))
    except FileNotFoundError:
        raise AblationError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise AblationError(f"cannot read {path}: {getattr(error, 'strerror', None) or error}") from None
    if not table or not any(cell.strip() for cell in table[0]):
        raise AblationError(f"{path} is empty")
    header = [cell.strip() for cell in table[0]]
    absent = [column for column in required if column not in header]
    if absent:
        raise AblationError(f"{path}: missing column {absent[0]!r} (expected {', '.join(required)})")
    if len(set(header)) != len(header):
        raise AblationError(f"{path}: a column name appears twice in the header")
    rows = [(number, row) for number, row in enumerate(table[1:], start=2) if row]
    if not rows:
        raise AblationError(f"{path} has no rows")
    for number, row in rows:
        if len(row) != len(header):
            raise AblationError(f"{path}, line {number}: {len(row)} cells, the header has {len(header)}")
    return header, rows


def _number(text: str, bounds: tuple[float, float], path: str | Path, line: int, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise AblationError(f"{path}, line {line}: {column} {text.strip()!r} is not a number") from None
    low, high = bounds
    if not (math.isfinite(value) and low <= value <= high):
        expected = f"in [{low:g}, {high:g}]" if math.isfinite(high) else f"a finite number >= {low:g}"
        expected = "a finite number" if not math.isfinite(low) else expected
        raise AblationError(f"{path}, line {line}: {column} is {text.strip()}, expected {expected}")
    return value


def read_grid_record(results_dir: str | Path) -> dict[str, list[str]]:
    """``grid.json`` of a results folder: ``{"runs": [run names], "specs": [spec names]}`` (empty lists without
    the file). Every run name is checked to name a folder inside ``results_dir`` (:func:`run_dir_in`).

    Raises:
        AblationError: naming grid.json when it cannot be read, is not a JSON object, or its ``runs`` or
            ``specs`` is not a list of strings, or a run name leads outside the results folder.
    """
    path = Path(results_dir) / GRID_FILE
    if not path.exists():
        return {"runs": [], "specs": []}
    fix = "repair or delete it (it lists the runs earlier `ablation run` calls asked for)"
    try:
        record = read_json_table(path)
    except AblationError as error:
        raise AblationError(f"{GRID_FILE} is damaged ({error}): {fix}") from None
    lists: dict[str, list[str]] = {}
    for key in ("runs", "specs"):
        value = record.get(key, [])
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise AblationError(f"{path} is damaged: {key!r} must be a list of names: {fix}")
        lists[key] = value
    for name in lists["runs"]:
        run_dir_in(results_dir, name, where=str(path))
    return lists


def recorded_runs(results_dir: str | Path) -> list[str]:
    """Run names recorded in ``grid.json`` by earlier ``ablation run`` calls on this folder (see
    :func:`read_grid_record`, whose errors it raises)."""
    return read_grid_record(results_dir)["runs"]


def checkpoint_problem(path: str | Path) -> str | None:
    """Why checkpoint_last.pt cannot be resumed from, from its file alone (no torch), or None (sound or absent).

    torch.save writes a zip archive; a file cut short loses the archive's directory, and the pickled record
    (``*/data.pkl``) is read whole, so its CRC-32 is checked. The tensors' bytes are not read here (a
    checkpoint can be gigabytes); loading checks them.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        size = path.stat().st_size
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            records = [m for m in members if m.filename.endswith("/data.pkl")]
            if not records:
                return f"{path} is not a torch checkpoint (no data.pkl in it)"
            ends = [m.header_offset + m.compress_size for m in members]
            if max(ends) > size:
                return f"{path} is cut short"
            archive.read(records[0])
    except (OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, ValueError) as error:
        return f"{path} is damaged ({getattr(error, 'strerror', None) or error})"
    return None


class StaleCheck:
    """Flags finished runs whose data or split changed since they ran (:func:`stale_reasons`), computing today's
    dataset fingerprints and reading splits files once per check, however many runs share them.

    Args:
        fingerprint: today's fingerprint of a dataset, called as ``fingerprint(dataset, img_size=...,
            data_root=..., interpolation=...)`` (:func:`ablation.data.prepare.dataset_fingerprint`, passed in
            because the store sits below the data layer); an AblationError from it (a dataset folder missing
            here) means the data cannot be checked, not that it changed.
    """

    def __init__(self, fingerprint: Callable[..., str]) -> None:
        self._fingerprint = fingerprint
        self._fingerprints: dict[tuple[Any, ...], str | None] = {}
        self._splits_files: dict[str, Any] = {}

    def reasons(self, run_dir: str | Path) -> list[str]:
        """Why the finished run in ``run_dir`` is stale; empty when it is current or cannot be checked."""
        try:
            config, record = read_run_config(run_dir)
        except AblationError:
            return []  # a damaged run, reported as such elsewhere
        key = (config.dataset, config.data_root, config.model.img_size, config.interpolation)
        if key not in self._fingerprints:
            try:
                self._fingerprints[key] = self._fingerprint(
                    config.dataset,
                    img_size=config.model.img_size,
                    data_root=config.data_root,
                    interpolation=config.interpolation,
                )
            except AblationError:
                self._fingerprints[key] = None
        return stale_reasons(record, self._fingerprints[key], splits_files=self._splits_files)


def stale_reasons(
    record: Mapping[str, Any], fingerprint: str | None, *, splits_files: dict[str, Any] | None = None
) -> list[str]:
    """Why a finished run's results no longer match today's data: empty when they match or cannot be checked.

    Args:
        record: the run's config.json content (its ``env`` holds the dataset fingerprint and the splits it used).
        fingerprint: today's dataset fingerprint for the run's settings
            (:func:`ablation.data.prepare.dataset_fingerprint`), or None when it cannot be computed (the dataset
            folder is missing here): then the data is not compared.
        splits_files: a cache of splits files read, by path, shared across calls.

    Returns:
        One sentence per change: the data (its files, or the preparation code's version) or the run's split in
        the splits file it recorded (an edited file). A splits file that is gone or unreadable is not compared.
    """
    env = record.get("env") if isinstance(record.get("env"), dict) else {}
    reasons = []
    recorded = env.get("dataset_fingerprint")
    if fingerprint is not None and recorded and recorded != fingerprint:
        reasons.append(
            f"the data changed since it ran (dataset fingerprint {recorded} then, {fingerprint} now)"
        )
    splits = env.get("splits")
    if isinstance(splits, dict) and isinstance(splits.get("splits_file"), str):
        cache = splits_files if splits_files is not None else {}
        path = splits["splits_file"]
        if path not in cache:
            try:
                cache[path] = read_json_table(path)
            except AblationError:
                cache[path] = None
        content = cache[path]
        entries = content.get("splits") if isinstance(content, dict) else None
        entry = entries.get(splits.get("split")) if isinstance(entries, dict) else None
        if isinstance(entry, dict):
            today = {**entry, "test": content.get("test")}
            changed = [key for key in SPLIT_LISTS if key in splits and today.get(key) != splits[key]]
            if changed:
                reasons.append(
                    f"its split {splits.get('split')} changed in {path} since it ran ({'/'.join(changed)} images)"
                )
    return reasons


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
