"""Read a dataset once, resize it to the run's size and cache the result. No torch import.

Like the UCTransNet paper (Wang et al., AAAI 2022) every image is resized whole to ``img_size x img_size``
(default 224; :mod:`ablation.data.resize`). The prepared arrays are cached in one ``.npz`` file per (source
files, size, interpolation) under the cache folder (:mod:`ablation.data.cache`), so every run of a study trains
on identical bytes and later runs decode no image at all. A named dataset whose folder is absent is read from
its one prepared file at the run's size when the cache holds it (:func:`ablation.data.cache.find_prepared_cache`),
with the fingerprint that file records: a machine without the datasets trains exactly as one with them. The
cheap questions, a dataset's fingerprint and its images per split, are answered from file names alone
(:func:`dataset_fingerprint`, :func:`split_sizes`), from that prepared file where the folder is absent.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ablation.config import check_interpolation
from ablation.data import readers, synthetic
from ablation.data.cache import (
    cache_path,
    check_cache_dir,
    damage_reason,
    default_cache_dir,
    find_prepared_cache,
    prepared_fingerprint,
    read_cache,
    read_cached_names,
    read_without_source,
    write_cache,
)
from ablation.data.dataset import DEFAULT_IMG_SIZE, PreparedDataset, PreparedSplit
from ablation.data.resize import (
    DEFAULT_INTERPOLATION,
    resize_image,
    resize_label,
    resize_mask,
)
from ablation.data.resolve import DATASET_FOLDERS, resolve_dataset
from ablation.errors import AblationError
from ablation.io import fingerprint_files, stable_hash
from ablation.limits import MAX_IMG_SIZE


def load_prepared(
    dataset: str,
    *,
    img_size: int = DEFAULT_IMG_SIZE,
    data_root: str | Path | None = None,
    cache_dir: str | Path | None = None,
    interpolation: str = DEFAULT_INTERPOLATION,
) -> PreparedDataset:
    """Load a dataset resized to ``img_size x img_size``, from the cache when it was prepared before.

    A named dataset (glas, monuseg) whose folder is absent is read from its one prepared file at this size in
    the cache (:func:`find_prepared_cache`), with a one-line note on stderr; without such a file the missing
    folder is the error.

    Args:
        dataset: a name in :data:`ablation.data.resolve.DATASETS` or a folder in the reference layout.
        img_size: side of the square images (the paper: 224).
        data_root: where ``GlaS/`` and ``MoNuSeg/`` live; default ``$ABLATION_DATA`` or ``./data``.
        cache_dir: where prepared files go; default ``$ABLATION_CACHE`` or ``./.cache/ablation``.
        interpolation: ``reference`` (OpenCV-style, as the reference code), ``bilinear`` or ``bicubic``.

    Returns:
        The prepared dataset; its splits hold ``uint8 (N, img_size, img_size, 3)`` images and
        ``uint8 (N, img_size, img_size)`` masks in {0, 1}.
    """
    check_interpolation(interpolation)
    if not isinstance(img_size, int) or not 8 <= img_size <= MAX_IMG_SIZE:
        raise AblationError(f"img_size must be an integer in 8..{MAX_IMG_SIZE}, got {img_size!r}")
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    check_cache_dir(cache_root)
    source, carried = _source_or_carried(dataset, data_root, img_size, interpolation, cache_root)
    if carried is not None:
        return read_without_source(*carried, dataset.lower(), interpolation, img_size, cache_root)
    if source is None:
        return _load_synthetic(dataset.lower(), img_size, cache_root)
    layout = readers.scan_reference_layout(source)
    source_fingerprint, fingerprint = _fingerprints(layout, source, img_size, interpolation)
    name = dataset.lower() if dataset.lower() in DATASET_FOLDERS else source.resolve().name
    cache_file = cache_path(cache_root, name, img_size, interpolation, fingerprint)
    common = {
        "source_fingerprint": source_fingerprint,
        "source": source,
        "img_size": img_size,
        "cache_dir": cache_root,
    }
    if cache_file.is_file():
        try:
            names = {split: [sample.name for sample in samples] for split, samples in layout.items()}
            return read_cache(cache_file, names, name, fingerprint, interpolation, common)
        except Exception as error:  # anything wrong with a cache file means: prepare the data again
            _warn(
                f"prepared-data cache {cache_file} is damaged ({damage_reason(error)}); preparing the data again"
            )
    prepared = _prepare(layout, name, fingerprint, img_size, interpolation, common)
    try:
        write_cache(cache_file, prepared)
    except (OSError, AblationError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        _warn(
            f"cannot write the prepared-data cache {cache_file} ({reason}); using the data from memory (set "
            "$ABLATION_CACHE or --cache-dir to a writable folder so later runs need not decode the images again)"
        )
    return prepared


def dataset_fingerprint(
    dataset: str,
    *,
    img_size: int = DEFAULT_IMG_SIZE,
    data_root: str | Path | None = None,
    interpolation: str = DEFAULT_INTERPOLATION,
) -> str:
    """The ``fingerprint`` :func:`load_prepared` gives this dataset today, from its file names, sizes and times
    (and the preparation version) alone: no image is read, nothing is prepared or cached. A named dataset whose
    folder is absent gives the fingerprint its prepared file in the cache records, as :func:`load_prepared`
    reads it there.

    Raises:
        AblationError: as :func:`ablation.data.resolve.resolve_dataset` (when no prepared file stands in),
            :func:`find_prepared_cache` and :func:`ablation.data.readers.scan_reference_layout`.
    """
    source, carried = _source_or_carried(dataset, data_root, img_size, interpolation)
    if carried is not None:
        return carried[1]
    if source is None:
        return _synthetic_fingerprints(dataset.lower(), img_size)[1]
    return _fingerprints(readers.scan_reference_layout(source), source, img_size, interpolation)[1]


def split_sizes(
    dataset: str,
    data_root: str | Path | None = None,
    *,
    img_size: int = DEFAULT_IMG_SIZE,
    interpolation: str = DEFAULT_INTERPOLATION,
) -> dict[str, int]:
    """Images per split of a dataset (``train``, optional ``val``, ``test``), counted from file names alone.

    A named dataset whose folder is absent is counted from the names its prepared file at ``img_size`` and
    ``interpolation`` holds (:func:`find_prepared_cache`), the file :func:`load_prepared` would read there.

    Raises:
        AblationError: as :func:`dataset_fingerprint`, or a prepared file whose names cannot be read.
    """
    source, carried = _source_or_carried(dataset, data_root, img_size, interpolation)
    if carried is not None:
        return {split: len(names) for split, names in read_cached_names(carried[0]).items()}
    if source is None:
        return dict(synthetic.DEFAULT_COUNTS)
    return {split: len(samples) for split, samples in readers.scan_reference_layout(source).items()}


def _source_or_carried(
    dataset: str,
    data_root: str | Path | None,
    img_size: int,
    interpolation: str,
    cache_dir: Path | None = None,
) -> tuple[Path | None, tuple[Path, str] | None]:
    """``(folder, None)`` for a dataset found here (folder None: generated data), or ``(None, (prepared file,
    fingerprint))`` for a named dataset whose folder is absent and whose one prepared file the cache holds.

    Raises:
        AblationError: the missing folder's error when no prepared file stands in; several prepared files.
    """
    try:
        return resolve_dataset(dataset, data_root), None
    except AblationError:
        found = find_prepared_cache(
            dataset, img_size=img_size, interpolation=interpolation, cache_dir=cache_dir
        )
        if found is None:
            raise
        return None, found


def _fingerprints(
    layout: dict[str, list[readers.Sample]], source: Path, img_size: int, interpolation: str
) -> tuple[str, str]:
    """``(source fingerprint, fingerprint)`` of a dataset folder: its files alone, then with the settings."""
    files = [
        path
        for samples in layout.values()
        for s in samples
        for path in (s.image, s.label, s.instances)
        if path
    ]
    source_fingerprint = fingerprint_files(files, root=source)
    return source_fingerprint, prepared_fingerprint(source_fingerprint, img_size, interpolation)


def _synthetic_fingerprints(name: str, img_size: int) -> tuple[str, str]:
    """``(source fingerprint, fingerprint)`` of a generated dataset (its generator's version stands for files)."""
    counts = synthetic.DEFAULT_COUNTS
    source_fingerprint = stable_hash(
        {"name": name, "counts": counts, "version": synthetic.GENERATOR_VERSION}, 16
    )
    return source_fingerprint, stable_hash({"source": source_fingerprint, "img_size": img_size}, length=16)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _prepare(
    layout: dict[str, list[readers.Sample]],
    name: str,
    fingerprint: str,
    img_size: int,
    interpolation: str,
    common,
) -> PreparedDataset:
    # Resize each sample as soon as it is decoded, so full-resolution images never pile up in memory.
    resized: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    sizes: dict[str, list[tuple[int, int]]] = {}
    empty: dict[str, list[str]] = {}
    codings: list[tuple[readers.Sample, str, np.ndarray]] = []
    for split, samples in layout.items():
        images, ids, masks = [], [], []
        sizes[split], empty[split] = [], []
        for sample in samples:
            image, label, instances = readers.read_sample(sample)
            coding = readers.mask_coding(label, sample.label)
            # Keep only the distinct values of the mask: enough to name them in an error after the loop.
            codings.append((sample, coding, np.unique(label)))
            if coding == "empty":
                empty[split].append(sample.name)
            sizes[split].append((image.shape[1], image.shape[0]))
            images.append(resize_image(image, img_size, interpolation))
            ids.append(resize_label(instances if instances is not None else label, img_size))
            masks.append(resize_mask(label > 0, img_size, interpolation))
        resized[split] = (np.stack(images), np.stack(ids), np.stack(masks))
    # One rule for the whole dataset: a 0/255 mask read as an id map would count as a single object.
    label_kind = readers.check_mask_codings(codings)
    is_instance = label_kind == "instance"
    splits = {
        split: PreparedSplit([s.name for s in layout[split]], images, masks, ids if is_instance else None)
        for split, (images, ids, masks) in resized.items()
    }
    return PreparedDataset(
        name,
        fingerprint,
        label_kind,
        splits,
        original_sizes=sizes,
        empty_masks=empty,
        **common,
        interpolation=interpolation,
    )


def _load_synthetic(name: str, img_size: int, cache_dir: Path) -> PreparedDataset:
    counts = synthetic.DEFAULT_COUNTS
    kind = name.removeprefix("synthetic-")
    splits: dict[str, PreparedSplit] = {}
    for index, (split, count) in enumerate(counts.items()):
        images, instances = synthetic.generate(kind, count=count, img_size=img_size, seed=index)
        names = [f"{split}_{i + 1:03d}" for i in range(count)]
        splits[split] = PreparedSplit(names, images, (instances > 0).astype(np.uint8), instances)
    source_fingerprint, fingerprint = _synthetic_fingerprints(name, img_size)
    sizes = {split: [(img_size, img_size)] * len(data) for split, data in splits.items()}
    empty = {
        split: [n for n, ids in zip(data.names, data.instances) if not ids.any()]
        for split, data in splits.items()
    }
    return PreparedDataset(
        name,
        fingerprint,
        "instance",
        splits,
        source_fingerprint=source_fingerprint,
        img_size=img_size,
        original_sizes=sizes,
        cache_dir=cache_dir,
        empty_masks=empty,
    )
