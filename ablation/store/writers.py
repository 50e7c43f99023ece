"""The one writer of each run-folder file but the checkpoints (:mod:`ablation.train.checkpoint`), so training, the
report tests' synthetic results and the grid tests' fake runs write the same files. Every write is atomic but the
per-epoch append to history.csv. No torch or pandas import (numpy only inside :func:`write_predictions`).

- :func:`write_run_config`: config.json (refuses a folder of another run, and a resume on another split than
  the one it records);
- :func:`write_status`: status.json;
- :func:`write_history` (rewrite, e.g. on resume) and :func:`append_history` (per epoch): history.csv with the
  columns ``HISTORY_COLUMNS``;
- :func:`write_image_metrics`: test_metrics.csv or masked_metrics.csv, one row per image;
- :func:`write_predictions`: predictions.npz;
- :func:`write_metrics`: metrics.json, last (it must pass :func:`~ablation.store.readers.check_metrics_record`).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ablation.config import RunConfig, to_dict
from ablation.errors import AblationError
from ablation.io import atomic_write_bytes, atomic_write_json, atomic_write_text, json_text
from ablation.store.layout import (
    CONFIG_FILE,
    HISTORY_COLUMNS,
    HISTORY_FILE,
    LAST_CHECKPOINT,
    METRICS_FILE,
    METRICS_KEYS,
    PREDICTIONS_FILE,
    SPLIT_LISTS,
    STATUS_FILE,
    run_id,
    run_name,
)
from ablation.store.readers import check_metrics_record, read_run_config

if TYPE_CHECKING:
    import numpy as np


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
