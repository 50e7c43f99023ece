"""Train/validation/test splits: the layout's own, or seeded k-fold cross-validation. No torch import.

The UCTransNet paper (Wang et al., AAAI 2022) runs 3 repeats of 5-fold cross-validation over the training set
and scores each fold's best model on the fixed test set. Folds are drawn over the training pool (GlaS: Train;
MoNuSeg: Train + Val merged) with a generator seeded by ``(seed, repeat)``.

Splits are written to an editable JSON file on first use and read back afterwards, so a user can move images
between train and validation (or drop some) and every later run follows the edit. Its format::

    {"dataset": ..., "source_fingerprint": ..., "num_folds": 5, "seed": 0,
     "test": [names],
     "splits": {"official": {"train": [...], "val": [...]},
                "r0f0": {"train": [...], "val": [...]}, ...}}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ablation.data.cache import default_cache_dir
from ablation.data.dataset import PreparedDataset, PreparedSplit
from ablation.errors import AblationError
from ablation.io import atomic_write_json, read_json

PAPER_REPEATS = 3
PAPER_FOLDS = 5


def paper_protocol(num_repeats: int = PAPER_REPEATS, num_folds: int = PAPER_FOLDS) -> list[tuple[int, int]]:
    """The ``(repeat, fold)`` pairs of the paper's protocol: 3 repeats x 5 folds = 15 runs per setting."""
    return [(repeat, fold) for repeat in range(num_repeats) for fold in range(num_folds)]


def kfold(names: list[str], *, num_folds: int, seed: int = 0, repeat: int = 0) -> list[list[str]]:
    """Split ``names`` into ``num_folds`` disjoint folds covering all of them (sizes differ by at most one).

    The order depends only on the sorted names, ``seed`` and ``repeat``, so it is the same on every machine.
    """
    check_num_folds(num_folds, len(names))
    ordered = sorted(names)
    order = np.random.default_rng([seed, repeat]).permutation(len(ordered))
    return [[ordered[i] for i in sorted(part)] for part in np.array_split(order, num_folds)]


def check_num_folds(num_folds: int, pool_size: int, *, setting: str = "e.g. --set num_folds=2") -> None:
    """Raise an AblationError unless ``num_folds`` folds can be cut from a training pool of ``pool_size`` images.

    The grid checks this when it plans its runs (from file names alone), training again when it splits;
    ``setting`` says where the user sets k.
    """
    if num_folds < 2:
        raise AblationError(f"num_folds must be at least 2, got {num_folds}")
    if num_folds > pool_size:
        fix = (
            f"set num_folds to at most {pool_size} ({setting})"
            if pool_size >= 2
            else "cross-validation needs at least 2 training images"
        )
        raise AblationError(
            f"num_folds {num_folds} exceeds the {pool_size} images of the training pool: {fix}, or add a "
            "Val_Folder (the layout's own validation set is used when no fold is given)"
        )


def training_pool(prepared: PreparedDataset) -> PreparedSplit:
    """Train and validation splits merged (names must be unique across them)."""
    parts = [prepared.splits[s] for s in ("train", "val") if s in prepared.splits]
    names = [name for part in parts for name in part.names]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise AblationError(
            f"dataset {prepared.name!r}: images {duplicates[:5]} are in both Train and Val folders"
        )
    instances = None
    if all(part.instances is not None for part in parts):
        instances = np.concatenate([part.instances for part in parts])
    return PreparedSplit(
        names,
        np.concatenate([part.images for part in parts]),
        np.concatenate([part.masks for part in parts]),
        instances,
    )


def splits_file(
    prepared: PreparedDataset, *, num_folds: int, seed: int, cache_dir: str | Path | None = None
) -> Path:
    """Where the splits of ``prepared`` live: ``<cache>/splits/<name>-<source fingerprint>-k<folds>-s<seed>.json``."""
    if cache_dir is None:
        cache_dir = prepared.cache_dir if prepared.cache_dir is not None else default_cache_dir()
    root = Path(cache_dir)
    source = prepared.source_fingerprint or prepared.fingerprint
    return root / "splits" / f"{prepared.name}-{source}-k{num_folds}-s{seed}.json"


def run_splits(
    prepared: PreparedDataset,
    *,
    fold: int | None,
    repeat: int = 0,
    num_folds: int = PAPER_FOLDS,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> tuple[PreparedSplit, PreparedSplit, PreparedSplit, dict[str, Any]]:
    """The train, validation and test sets of one run, and a JSON-able record of them.

    Args:
        prepared: from :func:`~ablation.data.load_prepared`.
        fold: None for the layout's own train/val split (validation = k-fold fold 0 of repeat 0 when the layout has
            no Val_Folder); else the k-fold index in ``0..num_folds-1`` over the training pool.
        repeat: the k-fold repeat (reshuffles the folds).
        num_folds: number of folds (the paper: 5).
        seed: seeds the folds together with ``repeat``.
        cache_dir: where the splits file lives; default the cache folder ``prepared`` was loaded with.

    Returns:
        ``(train, val, test, record)`` with ``record = {"splits_file", "split", "train", "val", "test"}``.

    Raises:
        AblationError: a fold out of range, or an edited splits file that names unknown images or puts an image in
            both train and validation.
    """
    if fold is not None and not 0 <= fold < num_folds:
        raise AblationError(f"fold {fold} out of range: choose 0..{num_folds - 1}")
    if repeat < 0:
        raise AblationError(f"repeat must be 0 or more, got {repeat}")
    pool = training_pool(prepared)
    test = prepared.splits["test"]
    path = splits_file(prepared, num_folds=num_folds, seed=seed, cache_dir=cache_dir)
    key = "official" if fold is None else f"r{repeat}f{fold}"
    content = _read_or_create(path, prepared, pool, test, num_folds=num_folds, seed=seed)
    if key not in content["splits"]:
        content["splits"].update(_fold_entries(prepared, pool, num_folds=num_folds, seed=seed, repeat=repeat))
        _write_splits(path, content)
    entry = content["splits"][key]
    _validate(path, key, entry, content["test"], pool, test)
    record = {
        "splits_file": os.path.abspath(path),
        "split": key,
        "train": entry["train"],
        "val": entry["val"],
    }
    record["test"] = content["test"]
    return pool.select(entry["train"]), pool.select(entry["val"]), test.select(content["test"]), record


def _read_or_create(
    path: Path,
    prepared: PreparedDataset,
    pool: PreparedSplit,
    test: PreparedSplit,
    *,
    num_folds: int,
    seed: int,
) -> dict[str, Any]:
    if path.is_file():
        try:
            content = read_json(path)
        except (AblationError, OSError, ValueError) as error:
            reason = str(error).removeprefix(
                f"cannot read {path}: "
            )  # read_json's message names the file too
            raise AblationError(
                f"splits file {path} is not valid JSON ({reason}): fix it or delete it"
            ) from None
        if (
            not isinstance(content, dict)
            or not isinstance(content.get("splits"), dict)
            or "test" not in content
        ):
            raise AblationError(f"splits file {path} lacks 'splits' and 'test': fix it or delete it")
        return content
    if "val" in prepared.splits:
        official = {"train": list(prepared.splits["train"].names), "val": list(prepared.splits["val"].names)}
        splits = {"official": official}
    else:
        first = _fold_entries(prepared, pool, num_folds=num_folds, seed=seed, repeat=0)
        splits = {"official": first["r0f0"], **first}
    content = {
        "dataset": prepared.name,
        "source_fingerprint": prepared.source_fingerprint,
        "num_folds": num_folds,
        "seed": seed,
        "test": list(test.names),
        "splits": splits,
    }
    _write_splits(path, content)
    return content


def _write_splits(path: Path, content: dict[str, Any]) -> None:
    """Write the splits file; a cache folder that cannot take it is one error naming the file."""
    try:
        atomic_write_json(path, content)
    except (OSError, AblationError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise AblationError(
            f"cannot write splits file {path} ({reason}): every run records its split there; set "
            "$ABLATION_CACHE (or --cache-dir) to a writable folder"
        ) from None


def _fold_entries(
    prepared: PreparedDataset, pool: PreparedSplit, *, num_folds: int, seed: int, repeat: int
) -> dict[str, dict[str, list[str]]]:
    folds = kfold(pool.names, num_folds=num_folds, seed=seed, repeat=repeat)
    entries = {}
    for k, val in enumerate(folds):
        train = [name for j, part in enumerate(folds) if j != k for name in part]
        order = {name: i for i, name in enumerate(pool.names)}
        entries[f"r{repeat}f{k}"] = {"train": sorted(train, key=order.get), "val": sorted(val, key=order.get)}
    return entries


def _validate(
    path: Path, key: str, entry: Any, test_names: Any, pool: PreparedSplit, test: PreparedSplit
) -> None:
    if not isinstance(entry, dict) or not all(isinstance(entry.get(s), list) for s in ("train", "val")):
        raise AblationError(f"splits file {path}: entry {key!r} needs 'train' and 'val' lists of image names")
    known = set(pool.names)
    for part in ("train", "val"):
        unknown = [name for name in entry[part] if name not in known]
        if unknown:
            raise AblationError(f"splits file {path}: {key}.{part} names unknown images {unknown[:5]}")
        if len(set(entry[part])) != len(entry[part]):
            raise AblationError(f"splits file {path}: {key}.{part} lists an image twice")
    overlap = sorted(set(entry["train"]) & set(entry["val"]))
    if overlap:
        raise AblationError(f"splits file {path}: {key} has images in both train and val: {overlap[:5]}")
    if not entry["train"] or not entry["val"]:
        raise AblationError(f"splits file {path}: {key} needs at least one train and one val image")
    if not isinstance(test_names, list) or not test_names:
        raise AblationError(f"splits file {path}: 'test' must be a non-empty list of image names")
    unknown = [name for name in test_names if name not in set(test.names)]
    if unknown:
        raise AblationError(f"splits file {path}: test names unknown images {unknown[:5]}")
