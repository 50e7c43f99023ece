"""Reading a run folder back, every file validated: a finished run is either sound or damaged, never a crash or a
score. The grid runner, ``ablation status`` and the report read through these, so they call the same runs
damaged. No torch, numpy or pandas import.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ablation.config import RunConfig, from_dict
from ablation.errors import AblationError
from ablation.io import read_json_table
from ablation.store.layout import (
    CONFIG_FILE,
    HISTORY_FILE,
    MASKED_METRICS_FILE,
    METRICS_FILE,
    METRICS_KEYS,
    RUN_RECORD_KEYS,
    TEST_METRICS_FILE,
    dataset_slug,
    metrics_identity,
    name_fields,
    run_id,
    run_name,
    split_name,
)

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
    if run_id(config) != fields["run_id"]:  # a setting changed by hand after the run was named
        raise AblationError(
            f"{config_path}: its settings hash to run id {run_id(config)}, the folder's name says {fields['run_id']}"
            " (edited after the run?)"
        )
    # metrics.json as the run's writer starts it, with the run_id and name of the folder's name (checked above)
    for key, value in (metrics_identity(config) | identity).items():
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
