"""The run folder's layout: its file names, the keys its records hold, and the run's identity and name.

A run is identified by a hash of its resolved config (:func:`run_id`); its folder name is readable and
deterministic: ``<dataset>_<connector>_<skips>_s<seed>_<split>_<hash8>`` where split is ``official`` or
``r<repeat>f<fold>`` (:func:`run_name`, read back by :func:`name_fields`). Run folders are found with
:func:`find_runs`, and a name from any other source is joined to the results folder only through
:func:`run_dir_in`, which keeps it inside. No torch, numpy or pandas import.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ablation.config import RunConfig, to_dict
from ablation.errors import AblationError
from ablation.io import stable_hash

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
# Names of the runs grids expected in a results folder, so `ablation status` can list pending ones.
GRID_FILE = "grid.json"
REPLACED_DIR = ".replaced"  # <results>/.replaced/<run name>.<UTC time>/: files of runs trained again

# Keys every metrics.json has (writers are tested against these).
METRICS_KEYS = tuple(
    "status run_id run_name dataset connector skips seed fold repeat best_epoch epochs_run stopped_early "
    "parameters gflops seconds device dice_mean dice_std iou_mean iou_std dice_micro iou_micro hd95_mean".split()
)
OBJECT_METRICS_KEYS = ("object_f1_mean", "object_dice_mean", "object_hausdorff_mean")
HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_dice", "lr", "seconds")
# Keys of config.json that are a record of the run, not part of its RunConfig.
RUN_RECORD_KEYS = ("run_id", "run_name", "env", "init_weights")
SPLIT_LISTS = ("train", "val", "test")  # the image lists a run's splits record holds

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


def metrics_identity(config: RunConfig) -> dict[str, Any]:
    """The keys metrics.json starts with: ``status`` (``"done"``) and which run it is, the keys
    :func:`ablation.store.readers.check_identity` compares with config.json and the folder name.

    Returns:
        ``{"status", "run_id", "run_name", "dataset", "connector", "skips", "seed", "fold", "repeat"}``; the
        writer of a run's metrics.json adds its results (the rest of :data:`METRICS_KEYS`).
    """
    return {
        "status": "done",
        "run_id": run_id(config),
        "run_name": run_name(config),
        "dataset": config.dataset,
        "connector": config.model.connector,
        "skips": config.model.skips,
        "seed": config.seed,
        "fold": config.fold,
        "repeat": config.repeat,
    }


def non_identity_keys() -> tuple[str, ...]:
    """The dotted config keys :func:`run_id` leaves out: where and how fast a run is computed, not what."""
    return tuple(
        f"{section}.{key}" if section else key for section, keys in _NOT_IDENTITY.items() for key in keys
    )


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
