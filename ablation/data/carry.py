"""A prepared dataset and its splits file, copied into a folder another machine uses as its cache. No torch import.

A machine without the datasets (a borrowed GPU machine, a cluster node) trains on a named dataset from its prepared
file alone (:func:`ablation.data.cache.find_prepared_cache`), with the fingerprint that file records, and reads
the same k-fold splits file as here: its runs have the same identity, dataset fingerprint and splits as runs
trained here. The copy is compressed (GlaS at 224 px: about 23 MB instead of 50 MB).
"""

from __future__ import annotations

from pathlib import Path

from ablation.data.cache import write_prepared_copy
from ablation.data.dataset import DEFAULT_IMG_SIZE
from ablation.data.prepare import load_prepared
from ablation.data.resize import DEFAULT_INTERPOLATION
from ablation.data.resolve import DATASET_FOLDERS
from ablation.data.splits import PAPER_FOLDS, check_num_folds, run_splits, splits_file
from ablation.errors import AblationError
from ablation.io import atomic_write_bytes
from ablation.limits import check_img_size


def copy_prepared(
    dataset: str,
    *,
    to: str | Path,
    img_size: int = DEFAULT_IMG_SIZE,
    interpolation: str = DEFAULT_INTERPOLATION,
    num_folds: int = PAPER_FOLDS,
    repeats: int = 1,
    data_root: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> list[Path]:
    """Prepare a named dataset here (cache and splits file as every run here uses them) and copy both into ``to``.

    Args:
        dataset: ``glas`` or ``monuseg`` (generated data needs no copy; a custom folder travels as it is).
        to: the folder to write; point ``$ABLATION_CACHE`` at it on the other machine.
        img_size: the runs' image size (a size no network takes is refused, as ``ModelConfig`` refuses it).
        interpolation: the runs' resizing.
        num_folds: k of the runs' k-fold splits; the splits file holds every fold of repeats ``0..repeats-1``.
        repeats: k-fold repeats the runs use.
        data_root: where ``GlaS/`` and ``MoNuSeg/`` live; default ``$ABLATION_DATA`` or ``./data``.
        cache_dir: this machine's cache, whose splits file is copied (edits to it travel); default
            ``$ABLATION_CACHE`` or ``./.cache/ablation``.

    Returns:
        The prepared file and the splits file written under ``to``.

    Raises:
        AblationError: another dataset, an image size or ``num_folds`` no run can use, ``to`` being this
            machine's cache folder, or what preparing raises. The messages name the flags of ``ablation data
            prepare``.
    """
    if dataset.lower() not in DATASET_FOLDERS:
        raise AblationError(
            f"only {', '.join(DATASET_FOLDERS)} are copied as prepared files, got {dataset!r}: generated data "
            "needs no copy and a custom dataset folder travels as it is"
        )
    check_img_size(img_size, "--img-size")
    if repeats < 1:
        raise AblationError(f"--repeats must be 1 or more, got {repeats}")
    prepared = load_prepared(
        dataset, img_size=img_size, data_root=data_root, cache_dir=cache_dir, interpolation=interpolation
    )
    if prepared.cache_dir is not None and Path(to).resolve() == prepared.cache_dir.resolve():
        raise AblationError(f"--to {to} is the cache folder itself: choose another folder")
    # Checked here, not only by run_splits, so the message names this command's flag rather than --set.
    pool = sum(len(prepared.splits[split].names) for split in ("train", "val") if split in prepared.splits)
    check_num_folds(num_folds, pool, setting=f"e.g. --num-folds {min(PAPER_FOLDS, pool)}")
    for repeat in range(repeats):  # adds each repeat's folds to the splits file where it lacks them
        run_splits(prepared, fold=0, repeat=repeat, num_folds=num_folds)
    splits = splits_file(prepared, num_folds=num_folds, seed=0)
    copied = Path(to) / "splits" / splits.name
    atomic_write_bytes(copied, splits.read_bytes())
    return [write_prepared_copy(prepared, to), copied]
