"""Resolve a dataset name, read it once, resize it to the run's size and cache the result. No torch import.

Like the UCTransNet paper (Wang et al., AAAI 2022) every image is resized whole to ``img_size x img_size``
(default 224). The default ``reference`` interpolation reproduces the reference code's OpenCV preprocessing:
bilinear without antialiasing for images, and for masks a bilinear resize of the 0/255 mask then ``> 0`` (which
slightly thickens thin foreground; on MoNuSeg nearest-neighbour masks hold about 10% less foreground). Pillow's
``bilinear``/``bicubic`` (antialiased images, nearest masks) are the alternatives. Instance ids are always
resized nearest, since ids cannot be blended. The prepared arrays are cached in
one ``.npz`` file per (source files, size, interpolation) under the cache folder, so every run of a study trains on
identical bytes and later runs decode no image at all. A named dataset whose folder is absent is read from its
one prepared file at the run's size when the cache holds it (:func:`find_prepared_cache`), with the fingerprint
that file records: a machine without the datasets trains exactly as one with them.
"""

from __future__ import annotations

import io
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ablation.config import MAX_IMG_SIZE
from ablation.data import readers, synthetic
from ablation.errors import AblationError
from ablation.io import atomic_write_bytes, fingerprint_files, stable_hash

# Named datasets; anything else must be a folder in the reference layout (see ablation.data.readers).
DATASETS: dict[str, str] = {
    "glas": "GlaS gland segmentation (colon H&E), folder GlaS under the data root",
    "monuseg": "MoNuSeg multi-organ nuclei segmentation (H&E), folder MoNuSeg under the data root",
    "synthetic-nuclei": "generated H&E-like nuclei (many small dark blobs), no download needed",
    "synthetic-glands": "generated H&E-like glands (large irregular glands with pale lumens), no download needed",
}
DATASET_FOLDERS = {"glas": "GlaS", "monuseg": "MoNuSeg"}
# "reference" is handled by resize_bilinear_like_opencv; the others are Pillow filters.
INTERPOLATIONS = {
    "reference": None,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
DEFAULT_INTERPOLATION = "reference"
DEFAULT_IMG_SIZE = 224
# Bump when the preparation code changes what it writes, so old cache files are not reused.
# 3: mask coding checked per dataset (caches of datasets that version 2 misread must not be reused).
# 4: 16-bit and float images scaled by their type's range, not per image; EXIF orientation applied; palette
#    masks read by their grey values or indices; the cache file records its version and fingerprint.
PREPARE_VERSION = 4


@dataclass(frozen=True)
class PreparedSplit:
    """One split's images, resized and ready to train on.

    Attributes:
        names: image names (file stems), in the order of the arrays.
        images: ``uint8 (N, H, W, 3)`` RGB.
        masks: ``uint8 (N, H, W)`` in {0, 1}.
        instances: ``int32 (N, H, W)`` object ids (0 = background), or None where the source has none.
    """

    names: list[str]
    images: np.ndarray
    masks: np.ndarray
    instances: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.names)

    def select(self, names: list[str]) -> PreparedSplit:
        """The samples called ``names``, in that order (unknown names raise AblationError)."""
        index = {name: i for i, name in enumerate(self.names)}
        missing = [name for name in names if name not in index]
        if missing:
            raise AblationError(f"unknown image names {missing[:5]}: not in this split")
        rows = np.array([index[name] for name in names], dtype=np.int64)
        instances = self.instances[rows] if self.instances is not None else None
        return PreparedSplit(list(names), self.images[rows], self.masks[rows], instances)


@dataclass(frozen=True)
class PreparedDataset:
    """A dataset at one size.

    Attributes:
        name: the dataset name (``glas``, ``synthetic-nuclei``, ...) or the folder's name for a custom path.
        fingerprint: hash of the source files (names, sizes, mtimes) and the preparation settings.
        label_kind: ``instance`` when every split carries object ids, else ``binary``.
        splits: ``train``, optional ``val``, ``test``.
        source_fingerprint: hash of the source files alone (shared by all sizes; names the splits file).
        source: the dataset folder, the cache file it was read from when the folder is absent, or None for
            generated data.
        img_size: side of the square images.
        interpolation: how images were resized (``bilinear`` or ``bicubic``).
        original_sizes: per split, each source image's ``(width, height)``.
        cache_dir: the cache folder it was loaded with (the splits file goes there too).
        empty_masks: per split, the names of images whose source mask holds no foreground at all.
    """

    name: str
    fingerprint: str
    label_kind: str
    splits: dict[str, PreparedSplit]
    source_fingerprint: str = ""
    source: Path | None = None
    img_size: int = DEFAULT_IMG_SIZE
    interpolation: str = "bilinear"
    original_sizes: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    cache_dir: Path | None = None
    empty_masks: dict[str, list[str]] = field(default_factory=dict)


def default_data_root() -> Path:
    return Path(os.environ.get("ABLATION_DATA", "data"))


def default_cache_dir() -> Path:
    return Path(os.environ.get("ABLATION_CACHE", Path(".cache") / "ablation"))


def resolve_dataset(dataset: str, data_root: str | Path | None = None) -> Path | None:
    """The folder a dataset name stands for (None for the generated datasets).

    Raises:
        AblationError: a named dataset whose folder is missing (saying how to get it), or a name that is neither
            known nor an existing folder.
    """
    key = dataset.lower()
    if key.startswith("synthetic-") and key in DATASETS:
        return None
    if key in DATASET_FOLDERS:
        root = Path(data_root) if data_root is not None else default_data_root()
        if root.exists() and not root.is_dir():
            raise AblationError(
                f"data root {root} is a file, not a folder: give the folder holding GlaS/, MoNuSeg/"
            )
        folder = root / DATASET_FOLDERS[key]
        if not folder.is_dir():
            layout = f"{key}-official"
            raise AblationError(
                f"dataset {key!r} not found at {folder}: download it and run `ablation data convert --from DIR "
                f"--layout {layout} --to {folder}`, point $ABLATION_DATA (or data_root) at the folder holding "
                f"{DATASET_FOLDERS[key]}/, or give the dataset as a folder path"
            )
        return folder
    folder = Path(dataset).expanduser()
    if folder.is_dir():
        return folder
    if folder.exists():
        raise AblationError(
            f"dataset {dataset!r} is a file, not a folder: give a folder in the reference layout "
            f"(<Split>_Folder/img + labelcol) or one of {', '.join(DATASETS)}"
        )
    raise AblationError(
        f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)} or give a folder in the reference "
        "layout (<Split>_Folder/img + labelcol)"
    )


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
        dataset: a name in :data:`DATASETS` or a folder in the reference layout.
        img_size: side of the square images (the paper: 224).
        data_root: where ``GlaS/`` and ``MoNuSeg/`` live; default ``$ABLATION_DATA`` or ``./data``.
        cache_dir: where prepared files go; default ``$ABLATION_CACHE`` or ``./.cache/ablation``.
        interpolation: ``reference`` (OpenCV-style, as the reference code), ``bilinear`` or ``bicubic``.

    Returns:
        The prepared dataset; its splits hold ``uint8 (N, img_size, img_size, 3)`` images and
        ``uint8 (N, img_size, img_size)`` masks in {0, 1}.
    """
    if interpolation not in INTERPOLATIONS:
        raise AblationError(
            f"unknown interpolation {interpolation!r}: choose one of {', '.join(INTERPOLATIONS)}"
        )
    if not isinstance(img_size, int) or not 8 <= img_size <= MAX_IMG_SIZE:
        raise AblationError(f"img_size must be an integer in 8..{MAX_IMG_SIZE}, got {img_size!r}")
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    check_cache_dir(cache_root)
    try:
        source = resolve_dataset(dataset, data_root)
    except AblationError:
        found = find_prepared_cache(
            dataset, img_size=img_size, interpolation=interpolation, cache_dir=cache_root
        )
        if found is None:
            raise
        return _read_without_source(*found, dataset.lower(), interpolation, img_size, cache_root)
    if source is None:
        return _load_synthetic(dataset.lower(), img_size, cache_root)
    layout = readers.scan_reference_layout(source)
    source_fingerprint, fingerprint = _fingerprints(layout, source, img_size, interpolation)
    name = dataset.lower() if dataset.lower() in DATASET_FOLDERS else source.resolve().name
    cache_file = _cache_path(cache_root, name, img_size, interpolation, fingerprint)
    common = {
        "source_fingerprint": source_fingerprint,
        "source": source,
        "img_size": img_size,
        "cache_dir": cache_root,
    }
    if cache_file.is_file():
        try:
            names = {split: [sample.name for sample in samples] for split, samples in layout.items()}
            return _read_cache(cache_file, names, name, fingerprint, interpolation, common)
        except Exception as error:  # anything wrong with a cache file means: prepare the data again
            reason = str(error).splitlines()[0].split(". ")[0] if str(error) else type(error).__name__
            _warn(f"prepared-data cache {cache_file} is damaged ({reason}); preparing the data again")
    prepared = _prepare(layout, name, fingerprint, img_size, interpolation, common)
    try:
        _write_cache(cache_file, prepared)
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
    (and the preparation version) alone: no image is read, nothing is prepared or cached.

    Raises:
        AblationError: as :func:`resolve_dataset` and :func:`ablation.data.readers.scan_reference_layout`.
    """
    source = resolve_dataset(dataset, data_root)
    if source is None:
        return _synthetic_fingerprints(dataset.lower(), img_size)[1]
    return _fingerprints(readers.scan_reference_layout(source), source, img_size, interpolation)[1]


def split_sizes(dataset: str, data_root: str | Path | None = None) -> dict[str, int]:
    """Images per split of a dataset (``train``, optional ``val``, ``test``), counted from file names alone.

    Raises:
        AblationError: as :func:`resolve_dataset` and :func:`ablation.data.readers.scan_reference_layout`.
    """
    source = resolve_dataset(dataset, data_root)
    if source is None:
        return dict(synthetic.DEFAULT_COUNTS)
    return {split: len(samples) for split, samples in readers.scan_reference_layout(source).items()}


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
    return source_fingerprint, _fingerprint(source_fingerprint, img_size, interpolation)


def _synthetic_fingerprints(name: str, img_size: int) -> tuple[str, str]:
    """``(source fingerprint, fingerprint)`` of a generated dataset (its generator's version stands for files)."""
    counts = synthetic.DEFAULT_COUNTS
    source_fingerprint = stable_hash(
        {"name": name, "counts": counts, "version": synthetic.GENERATOR_VERSION}, 16
    )
    return source_fingerprint, stable_hash({"source": source_fingerprint, "img_size": img_size}, length=16)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _fingerprint(source_fingerprint: str, img_size: int, interpolation: str) -> str:
    """A prepared dataset's fingerprint: its source files, the preparation settings and code version."""
    settings = {"source": source_fingerprint, "img_size": img_size, "interpolation": interpolation}
    return stable_hash({**settings, "version": PREPARE_VERSION}, length=16)


def _cache_path(cache_root: Path, name: str, img_size: int, interpolation: str, fingerprint: str) -> Path:
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
    it names the damage). :func:`load_prepared` uses it only when the dataset's folder is absent.

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


def _read_without_source(
    path: Path, fingerprint: str, name: str, interpolation: str, img_size: int, cache_root: Path
) -> PreparedDataset:
    """A named dataset from its prepared file alone (:func:`find_prepared_cache`), with the fingerprints it
    records, so runs record the same dataset fingerprint and splits file as where the source is."""
    common = {"source": path, "img_size": img_size, "cache_dir": cache_root}
    try:
        prepared = _read_cache(path, None, name, fingerprint, interpolation, common)
    except Exception as error:  # anything wrong with the file: there is no source to rebuild it from
        reason = str(error).splitlines()[0].split(". ")[0] if str(error) else type(error).__name__
        raise AblationError(
            f"prepared-data cache {path} cannot be used without the {DATASET_FOLDERS[name]} folder ({reason}): "
            "write it again "
            f"with `ablation data prepare --root {name} --img-size {img_size} --to DIR` where the dataset is, or "
            f"point $ABLATION_DATA at the folder holding {DATASET_FOLDERS[name]}/"
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
        The file, named as :func:`load_prepared` names it, so that folder serves as ``$ABLATION_CACHE`` there.
    """
    root = Path(cache_dir)
    check_cache_dir(root)
    path = _cache_path(root, prepared.name, prepared.img_size, prepared.interpolation, prepared.fingerprint)
    _write_cache(path, prepared, compressed=True)
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


def resize_image(image: np.ndarray, size: int, interpolation: str = DEFAULT_INTERPOLATION) -> np.ndarray:
    """``uint8 (H, W, 3)`` -> ``uint8 (size, size, 3)`` (whole image, aspect ratio not kept, as in the paper)."""
    if image.shape[:2] == (size, size):
        return image
    if interpolation == "reference":
        return np.clip(np.rint(resize_bilinear_like_opencv(image, size)), 0, 255).astype(np.uint8)
    resized = Image.fromarray(image).resize((size, size), INTERPOLATIONS[interpolation])
    return np.asarray(resized, dtype=np.uint8)


def resize_mask(foreground: np.ndarray, size: int, interpolation: str = DEFAULT_INTERPOLATION) -> np.ndarray:
    """Boolean ``(H, W)`` -> ``uint8 (size, size)`` in {0, 1}.

    ``reference``: bilinear resize of the 0/255 mask, then any value that rounds to at least 1 is foreground,
    as the reference code's ``cv2.resize`` of a uint8 mask followed by ``> 0``. Otherwise nearest neighbour.
    """
    if foreground.shape == (size, size):
        return foreground.astype(np.uint8)
    if interpolation == "reference":
        blended = resize_bilinear_like_opencv(foreground.astype(np.float32) * 255.0, size)
        return (blended >= 0.5).astype(np.uint8)
    return (resize_label(foreground.astype(np.int32), size) > 0).astype(np.uint8)


def resize_bilinear_like_opencv(array: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize with half-pixel centres and no antialiasing (OpenCV's ``INTER_LINEAR``), as float32.

    Args:
        array: ``(H, W)`` or ``(H, W, C)``.
        size: output side; the output is ``(size, size[, C])``.
    """
    height, width = array.shape[:2]
    rows, row_weights = _linear_taps(height, size)
    cols, col_weights = _linear_taps(width, size)
    data = array.astype(np.float32)
    # Interpolate along rows, then columns: (H, W, ...) -> (size, W, ...) -> (size, size, ...).
    extra = (1,) * (data.ndim - 2)
    top, bottom = data[rows[0]], data[rows[1]]
    data = top + (bottom - top) * row_weights.reshape(-1, 1, *extra)
    left, right = data[:, cols[0]], data[:, cols[1]]
    return left + (right - left) * col_weights.reshape(1, -1, *extra)


def _linear_taps(source: int, target: int) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    """Source indices of the two neighbours and the weight of the second, per output position."""
    position = (np.arange(target, dtype=np.float64) + 0.5) * (source / target) - 0.5
    position = np.clip(position, 0, source - 1)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, source - 1)
    return (low, high), (position - low).astype(np.float32)


def resize_label(label: np.ndarray, size: int) -> np.ndarray:
    """Label ids ``(H, W)`` -> ``int32 (size, size)`` with nearest-neighbour sampling (no blended ids)."""
    if label.shape == (size, size):
        return label.astype(np.int32)
    resized = Image.fromarray(label.astype(np.int32), mode="I").resize((size, size), Image.Resampling.NEAREST)
    return np.asarray(resized, dtype=np.int32)


def _write_cache(path: Path, prepared: PreparedDataset, *, compressed: bool = False) -> None:
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


def _read_cache(
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
            held = dict.fromkeys(key.split("/")[0] for key in data.files if "/" in key)
            expected = {split: [str(n) for n in data[f"{split}/names"]] for split in held}
            if "train" not in expected or "test" not in expected:
                raise ValueError("lacks the train or test split")
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


def _recorded_source(data, fingerprint: str, interpolation: str, img_size: int) -> str:
    """The source fingerprint a cache file records, checked against the fingerprint it was written for."""
    if "source_fingerprint" not in data.files:
        raise ValueError("written without its source fingerprint, by an older version")
    source = str(data["source_fingerprint"])
    if _fingerprint(source, img_size, interpolation) != fingerprint:
        raise ValueError(f"its source fingerprint {source} does not give its fingerprint {fingerprint}")
    return source


def _check_array(array: np.ndarray, shape: tuple[int, ...], dtype: str, key: str) -> None:
    kind_ok = np.issubdtype(array.dtype, np.integer) if dtype == "integer" else array.dtype == np.dtype(dtype)
    if array.shape != shape or not kind_ok:
        raise ValueError(f"{key} is {array.dtype} {array.shape}, expected {dtype} {shape}")


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
