"""The prepared-data cache: one ``.npz`` file per (source files, size, interpolation), written once and checked
against the dataset each time it is read. No torch import.

Every run of a study trains on identical bytes, and later runs decode no image at all. A file that cannot be
used is prepared again from the source (:func:`ablation.data.prepare.load_prepared`); a named dataset whose
folder is absent is read from its one prepared file at the run's size (:func:`find_prepared_cache`,
:func:`read_without_source`), with the fingerprint that file records, so a machine without the datasets trains
exactly as one with them.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np

from ablation.data.dataset import PreparedDataset, PreparedSplit
from ablation.data.resize import DEFAULT_INTERPOLATION
from ablation.data.resolve import DATASET_FOLDERS
from ablation.errors import AblationError
from ablation.io import atomic_write_bytes, stable_hash

# Bump when the preparation code changes what it writes, so old cache files are not reused.
# 3: mask coding checked per dataset (caches of datasets that version 2 misread must not be reused).
# 4: 16-bit and float images scaled by their type's range, not per image; EXIF orientation applied; palette
#    masks read by their grey values or indices; the cache file records its version and fingerprint.
PREPARE_VERSION = 4


def default_cache_dir() -> Path:
    return Path(os.environ.get("ABLATION_CACHE", Path(".cache") / "ablation"))


def prepared_fingerprint(source_fingerprint: str, img_size: int, interpolation: str) -> str:
    """A prepared dataset's fingerprint: its source files, the preparation settings and code version."""
    settings = {"source": source_fingerprint, "img_size": img_size, "interpolation": interpolation}
    return stable_hash({**settings, "version": PREPARE_VERSION}, length=16)


def cache_path(cache_root: Path, name: str, img_size: int, interpolation: str, fingerprint: str) -> Path:
    return cache_root / "prepared" / f"{_safe(name)}-{img_size}-{interpolation}-{fingerprint}.npz"


def find_prepared_cache(
    dataset: str,
    *,
    img_size: int,
    interpolation: str = DEFAULT_INTERPOLATION,
    cache_dir: str | Path | None = None,
) -> tuple[Path, str] | None:
    """The prepared file of a named dataset (glas, monuseg) at one size, to train on without its source folder.

    A file qualifies when its name matches the dataset, size and interpolation and it records this preparation
    version for the fingerprint in its name (a file whose record cannot be read qualifies too, so that reading
    it names the damage). :func:`~ablation.data.prepare.load_prepared` uses it only when the dataset's folder is absent.

    Returns:
        ``(file, dataset fingerprint)``, or None for a dataset that is not a named one or has no such file.

    Raises:
        AblationError: several files qualify (prepared from different source files), naming them.
    """
    key = dataset.lower()
    if key not in DATASET_FOLDERS:
        return None
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    prefix = f"{_safe(key)}-{img_size}-{interpolation}-"
    found = []
    for path in sorted((root / "prepared").glob(f"{prefix}*.npz")):
        fingerprint = path.name[len(prefix) : -len(".npz")]
        if len(fingerprint) == 16 and all(c in "0123456789abcdef" for c in fingerprint):
            if _recorded(path) in ((str(PREPARE_VERSION), fingerprint), None):
                found.append((path, fingerprint))
    if len(found) > 1:
        raise AblationError(
            f"dataset {key!r} has no folder here and the cache holds {len(found)} prepared files for it at "
            f"{img_size} px ({interpolation}): {', '.join(str(path) for path, _ in found)}; keep one, or point "
            f"$ABLATION_DATA at the folder holding {DATASET_FOLDERS[key]}/"
        )
    return found[0] if found else None


def _recorded(path: Path) -> tuple[str, str] | None:
    """``(version, fingerprint)`` a cache file records (``none`` where it records none), or None if unreadable."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return tuple(
                str(data[key]) if key in data.files else "none" for key in ("version", "fingerprint")
            )
    except Exception:  # damaged: the full read says how
        return None


_NOTED: set[Path] = set()  # prepared files already named in a note, to train without their source


def read_without_source(
    path: Path, fingerprint: str, name: str, interpolation: str, img_size: int, cache_root: Path
) -> PreparedDataset:
    """A named dataset from its prepared file alone (:func:`find_prepared_cache`), with the fingerprints it
    records, so runs record the same dataset fingerprint and splits file as where the source is."""
    common = {"source": path, "img_size": img_size, "cache_dir": cache_root}
    try:
        prepared = read_cache(path, None, name, fingerprint, interpolation, common)
    except Exception as error:  # anything wrong with the file: there is no source to rebuild it from
        raise AblationError(
            f"prepared-data cache {path} cannot be used without the {DATASET_FOLDERS[name]} folder "
            f"({damage_reason(error)}): write it again with `ablation data prepare --root {name} --img-size "
            f"{img_size} --to DIR` where the dataset is, or point $ABLATION_DATA at the folder holding "
            f"{DATASET_FOLDERS[name]}/"
        ) from None
    if path not in _NOTED:  # once per process: a grid loads the dataset once per unit
        _NOTED.add(path)
        print(
            f"note: dataset {name!r} has no folder here; using its prepared cache {path} (fingerprint "
            f"{fingerprint})",
            file=sys.stderr,
        )
    return prepared


def write_prepared_copy(prepared: PreparedDataset, cache_dir: str | Path) -> Path:
    """Write ``prepared`` compressed into another cache folder (half the size, to carry it to another machine).

    Returns:
        The file, named as :func:`~ablation.data.prepare.load_prepared` names it, so that folder serves as ``$ABLATION_CACHE`` there.
    """
    root = Path(cache_dir)
    check_cache_dir(root)
    path = cache_path(root, prepared.name, prepared.img_size, prepared.interpolation, prepared.fingerprint)
    write_cache(path, prepared, compressed=True)
    return path


def check_cache_dir(cache_root: Path) -> None:
    """Fail before any work when the cache folder (or a folder it will create) is an existing file.

    Raises:
        AblationError: naming that file.
    """
    for path in (cache_root / "prepared", cache_root / "splits", cache_root, *cache_root.parents):
        if path.exists() and not path.is_dir():
            problem = "is a file" if path == cache_root else f"cannot be made: {path} is a file"
            raise AblationError(
                f"cache folder {cache_root} {problem}: choose a folder (--cache-dir or $ABLATION_CACHE)"
            )


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "dataset"


def write_cache(path: Path, prepared: PreparedDataset, *, compressed: bool = False) -> None:
    arrays: dict[str, np.ndarray] = {
        "label_kind": np.array(prepared.label_kind),
        "version": np.array(str(PREPARE_VERSION)),
        "fingerprint": np.array(prepared.fingerprint),
        # Names the splits file and gives the fingerprint where the source is absent (find_prepared_cache).
        "source_fingerprint": np.array(prepared.source_fingerprint),
    }
    for split, data in prepared.splits.items():
        arrays[f"{split}/names"] = np.array(data.names, dtype=str)
        arrays[f"{split}/images"] = data.images
        arrays[f"{split}/masks"] = data.masks
        arrays[f"{split}/sizes"] = np.array(prepared.original_sizes[split], dtype=np.int64).reshape(-1, 2)
        arrays[f"{split}/empty"] = np.array(prepared.empty_masks.get(split, []), dtype=str)
        if data.instances is not None:
            # uint16 halves the file; MoNuSeg's densest image holds well under 65536 nuclei.
            wide = data.instances.max(initial=0) > np.iinfo(np.uint16).max
            arrays[f"{split}/instances"] = data.instances if wide else data.instances.astype(np.uint16)
    buffer = io.BytesIO()
    # Uncompressed where every run reads it; compressed (about half the size) for a copy that travels.
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def read_cache(
    path: Path,
    expected: dict[str, list[str]] | None,
    name: str,
    fingerprint: str,
    interpolation: str,
    common,
) -> PreparedDataset:
    """The prepared dataset stored in ``path``, checked against the image names per split it must hold.

    The zip members' CRC-32 checks catch damaged bytes; the checks here catch a file that reads but holds the
    wrong arrays (another version, another dataset, a partial copy). Without ``expected`` (no source folder) the
    splits are the file's own, and its recorded source fingerprint must give its fingerprint.

    Raises:
        ValueError: saying what is wrong (other exceptions come from reading the file itself).
    """
    size = common["img_size"]
    splits: dict[str, PreparedSplit] = {}
    sizes: dict[str, list[tuple[int, int]]] = {}
    empty: dict[str, list[str]] = {}
    with np.load(path, allow_pickle=False) as data:
        stored = {key: str(data[key]) if key in data.files else "none" for key in ("version", "fingerprint")}
        if stored["version"] != str(PREPARE_VERSION) or stored["fingerprint"] != fingerprint:
            raise ValueError(
                f"written by preparation version {stored['version']} for fingerprint {stored['fingerprint']}, "
                f"expected version {PREPARE_VERSION} and {fingerprint}"
            )
        label_kind = str(data["label_kind"])
        if label_kind not in ("binary", "instance"):
            raise ValueError(f"label kind {label_kind!r}")
        if expected is None:
            source_fingerprint = _recorded_source(data, fingerprint, interpolation, size)
            common = {**common, "source_fingerprint": source_fingerprint}
            expected = _split_names(data)
        stray = {key.split("/")[0] for key in data.files if "/" in key} - set(expected)
        if stray:
            raise ValueError(f"holds split {sorted(stray)[0]!r}, which the dataset does not have")
        for split, expected_names in expected.items():
            names = [str(n) for n in data[f"{split}/names"]]
            if names != expected_names:
                raise ValueError(f"{split} names differ from the dataset's files")
            count = len(names)
            images, masks = data[f"{split}/images"], data[f"{split}/masks"]
            instances = data[f"{split}/instances"] if f"{split}/instances" in data.files else None
            _check_array(images, (count, size, size, 3), "uint8", f"{split}/images")
            _check_array(masks, (count, size, size), "uint8", f"{split}/masks")
            if masks.max(initial=0) > 1:
                raise ValueError(f"{split}/masks holds values other than 0 and 1")
            if instances is not None:
                _check_array(instances, (count, size, size), "integer", f"{split}/instances")
                instances = instances.astype(np.int32)
            if (instances is None) == (label_kind == "instance"):
                raise ValueError(f"{split}/instances {'missing' if instances is None else 'unexpected'}")
            split_sizes = data[f"{split}/sizes"]
            _check_array(split_sizes, (count, 2), "integer", f"{split}/sizes")
            splits[split] = PreparedSplit(names, images, masks, instances)
            sizes[split] = [(int(w), int(h)) for w, h in split_sizes]
            empty[split] = [str(n) for n in data[f"{split}/empty"]]
    return PreparedDataset(
        name,
        fingerprint,
        label_kind,
        splits,
        original_sizes=sizes,
        empty_masks=empty,
        interpolation=interpolation,
        **common,
    )


def read_cached_names(path: Path) -> dict[str, list[str]]:
    """The image names per split (``train``, optional ``val``, ``test``) a prepared file holds; no image is read.

    Raises:
        AblationError: naming the file when it cannot be read or lacks the train or test split.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            return _split_names(data)
    except Exception as error:  # anything wrong with the file; reading it for training names the same damage
        raise AblationError(f"prepared-data cache {path} cannot be read ({damage_reason(error)})") from None


def _split_names(data) -> dict[str, list[str]]:
    """The names per split of an open prepared file, in the order it holds the splits."""
    held = dict.fromkeys(key.split("/")[0] for key in data.files if "/" in key)
    names = {split: [str(n) for n in data[f"{split}/names"]] for split in held}
    if "train" not in names or "test" not in names:
        raise ValueError("lacks the train or test split")
    return names


def damage_reason(error: Exception) -> str:
    """Why a prepared file cannot be used: the first sentence of the error reading it, or the error's type."""
    return str(error).splitlines()[0].split(". ")[0] if str(error) else type(error).__name__


def _recorded_source(data, fingerprint: str, interpolation: str, img_size: int) -> str:
    """The source fingerprint a cache file records, checked against the fingerprint it was written for."""
    if "source_fingerprint" not in data.files:
        raise ValueError("written without its source fingerprint, by an older version")
    source = str(data["source_fingerprint"])
    if prepared_fingerprint(source, img_size, interpolation) != fingerprint:
        raise ValueError(f"its source fingerprint {source} does not give its fingerprint {fingerprint}")
    return source


def _check_array(array: np.ndarray, shape: tuple[int, ...], dtype: str, key: str) -> None:
    kind_ok = np.issubdtype(array.dtype, np.integer) if dtype == "integer" else array.dtype == np.dtype(dtype)
    if array.shape != shape or not kind_ok:
        raise ValueError(f"{key} is {array.dtype} {array.shape}, expected {dtype} {shape}")
