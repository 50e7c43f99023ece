"""Reading the reference layout and decoding image and label files. No torch import.

The reference layout (used by the UCTransNet code, Wang et al., AAAI 2022, and by ``ablation data convert``)::

    <root>/<Split>_Folder/img/<name>.<png|jpg|jpeg|tif|tiff|bmp>
    <root>/<Split>_Folder/labelcol/<name>.png       mask: > 0 is foreground; ids > 1 kept as instance ids
    <root>/<Split>_Folder/instances/<name>.png      optional 16-bit instance ids, preferred over labelcol ids

with ``Split`` one of ``Train``, ``Val`` (optional) and ``Test``. Every problem with a file raises
:class:`~ablation.errors.AblationError` naming that file.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ablation.errors import AblationError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
SPLIT_FOLDERS = {"train": "Train_Folder", "val": "Val_Folder", "test": "Test_Folder"}
IMAGE_DIR = "img"
LABEL_DIR = "labelcol"
INSTANCE_DIR = "instances"


@dataclass(frozen=True)
class Sample:
    """One image and its labels on disk.

    Attributes:
        name: the image's stem, unique within the dataset's training pool and within its test set.
        image: the RGB image file.
        label: the mask file (> 0 is foreground).
        instances: an optional 16-bit file of instance ids (0 = background).
    """

    name: str
    image: Path
    label: Path
    instances: Path | None = None


def natural_key(name: str) -> list:
    """Sort key that puts ``train_2`` before ``train_10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def is_reference_layout(root: Path) -> bool:
    return any((root / folder).is_dir() for folder in SPLIT_FOLDERS.values())


def scan_reference_layout(root: str | Path) -> dict[str, list[Sample]]:
    """List the samples of each split present under ``root``, checking that every image has a mask.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` (``val`` only when ``Val_Folder`` exists), each list in
        natural name order.

    Raises:
        AblationError: a missing folder, an image without a mask or a mask without an image, two images with the
            same name, or an empty split.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise AblationError(
            f"dataset folder {root} is a file, not a folder: give the folder holding Train_Folder/"
        )
    if not root.is_dir():
        raise AblationError(f"dataset folder {root} does not exist")
    if not is_reference_layout(root):
        raise AblationError(_not_reference_message(root))
    layout: dict[str, list[Sample]] = {}
    for split, folder in SPLIT_FOLDERS.items():
        if (root / folder).is_dir():
            layout[split] = _scan_split(root / folder)
        elif split != "val":
            raise AblationError(
                f"{root / folder} is missing: a dataset needs Train_Folder and Test_Folder (Val_Folder optional)"
            )
    return layout


def _not_reference_message(root: Path) -> str:
    hint = "expected Train_Folder/ and Test_Folder/ with img/ and labelcol/ inside"
    if (root / "Grade.csv").is_file() or any(root.glob("train_*_anno.bmp")):
        hint = f"it looks like the official GlaS download: run `ablation data convert --from {root} --layout glas-official --to DIR`"
    elif (root / "Tissue Images").is_dir() or any(root.glob("*.xml")):
        hint = f"it looks like an official MoNuSeg download: run `ablation data convert --from {root} --layout monuseg-official --to DIR`"
    return f"{root} is not in the reference layout: {hint}"


def _scan_split(folder: Path) -> list[Sample]:
    image_dir, label_dir = folder / IMAGE_DIR, folder / LABEL_DIR
    for needed in (image_dir, label_dir):
        if not needed.is_dir():
            raise AblationError(f"{needed} is missing: each <Split>_Folder needs img/ and labelcol/")
    images = _files_by_stem(image_dir)
    labels = _files_by_stem(label_dir)
    instance_dir = folder / INSTANCE_DIR
    instances = _files_by_stem(instance_dir) if instance_dir.is_dir() else {}
    if not images:
        raise AblationError(f"{image_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    for stem, path in images.items():
        if stem not in labels:
            raise AblationError(f"image {path} has no mask: expected {label_dir / (stem + '.png')}")
    for stem, path in {**labels, **instances}.items():
        if stem not in images:
            raise AblationError(f"mask {path} has no image: expected {image_dir / stem}.<png|jpg|tif|bmp>")
    return [
        Sample(stem, images[stem], labels[stem], instances.get(stem))
        for stem in sorted(images, key=natural_key)
    ]


def _files_by_stem(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        # Report these here: skipping them would surface later as a misleading "has no image/mask".
        if path.is_symlink() and not path.exists():
            raise AblationError(f"{path} is a broken link (to {os.readlink(path)}): fix or remove it")
        if path.is_dir():
            raise AblationError(f"{path} is a folder, not an image file: move it out of {folder}")
        if not path.is_file():
            continue
        if path.stem in files:
            raise AblationError(f"{files[path.stem]} and {path} have the same name: keep one")
        files[path.stem] = path
    return files


def open_image(path: Path) -> tuple[Image.Image, bool]:
    """Open and fully decode an image file, turned upright by its EXIF/TIFF orientation tag (as OpenCV's
    ``imread`` does, so masks drawn on the displayed image line up).

    Returns:
        ``(image, wide_colour)``: the decoded image, and whether the file stored colour samples in 16 bits, of
        which Pillow keeps the high byte (a 16-bit-to-8-bit scaling, like OpenCV's).

    Raises:
        AblationError: naming the file, for every decoder failure.
    """
    try:
        # Pillow warns about damaged metadata it can skip; the pixels either decode or raise below.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                raw_modes = [
                    str(tile[3][0] if isinstance(tile[3], tuple) else tile[3]) for tile in image.tile
                ]
                image.load()
                upright = ImageOps.exif_transpose(image)
    except FileNotFoundError:
        raise AblationError(f"file {path} does not exist") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise AblationError(f"cannot read image file {path}: {error}") from None
    wide_colour = upright.mode in ("RGB", "RGBA") and any(";16" in mode for mode in raw_modes)
    return upright, wide_colour


def read_image(path: Path) -> np.ndarray:
    """An RGB image as ``uint8 (H, W, 3)``.

    Alpha is dropped; grey, 1-bit and palette images are expanded; CMYK, YCbCr, LAB and HSV are converted.
    Wider samples are scaled to 0..255 by their type's range, the same factor for every file so intensities stay
    comparable: 16-bit by 255/65535 (32-bit integer files must hold 0..65535), 32-bit float in [0, 1] by 255
    and in [0, 255] as is.

    Raises:
        AblationError: naming the file, for an unreadable file, a float image with values outside [0, 255] or
            not finite, an integer image with values outside 0..65535, or a 16-bit image whose values all fit
            in 8 bits (scaled it would be almost black: save such data as 8-bit).
    """
    image, wide_colour = open_image(path)
    if image.mode == "F":
        return _grey_to_rgb(_float_to_uint8(np.asarray(image, dtype=np.float64), path))
    if image.mode.startswith("I"):  # I;16, I;16B, I;16L, I;16N (16-bit), I (32-bit integer)
        return _grey_to_rgb(_wide_to_uint8(np.asarray(image, dtype=np.int64), path))
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    if wide_colour and not rgb.any():  # every 16-bit sample was below 256: Pillow's high bytes are all 0
        raise AblationError(_eight_bit_in_sixteen(path, "below 256"))
    return rgb


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


def _float_to_uint8(array: np.ndarray, path: Path) -> np.ndarray:
    """A 32-bit float image in [0, 1] (scaled by 255) or in [0, 255] (kept) as uint8."""
    if not np.isfinite(array).all():
        raise AblationError(
            f"image {path} is 32-bit float with NaN or infinite values: expected [0, 1] or [0, 255]"
        )
    low, high = float(array.min()), float(array.max())
    if low < 0 or high > 255:
        raise AblationError(
            f"image {path} is 32-bit float with values {low:g}..{high:g}: expected [0, 1] or [0, 255]; "
            "rescale it or save it as 8-bit"
        )
    scale = 255.0 if high <= 1.0 else 1.0
    return np.round(array * scale).astype(np.uint8)


def _wide_to_uint8(array: np.ndarray, path: Path) -> np.ndarray:
    """A 16-bit (or 32-bit integer) grey image scaled by 255/65535 to uint8."""
    low, high = int(array.min()), int(array.max())
    if low < 0 or high > 65535:
        raise AblationError(
            f"image {path} holds integer values {low}..{high}: expected 0..65535 (16-bit) or 0..255 (8-bit)"
        )
    if high < 256:
        raise AblationError(_eight_bit_in_sixteen(path, f"up to {high}"))
    return np.round(array * (255.0 / 65535.0)).astype(np.uint8)


def _eight_bit_in_sixteen(path: Path, values: str) -> str:
    return (
        f"image {path} is 16-bit but holds values only {values}: scaled from 16 to 8 bits it would be almost "
        "black; save it as an 8-bit image (or with its full 16-bit range)"
    )


def read_label(path: Path) -> np.ndarray:
    """A label image as ``int32 (H, W)``: 0 background, other values foreground (ids, or 1/255 if binary).

    Single-channel files (1-bit, 8/16/32-bit integer, float holding whole numbers) are read as they are, an
    alpha channel is ignored. A colour (RGB/RGBA) file is accepted only when its three channels are equal (a grey
    mask saved as RGB). A palette file whose colours are grey gives those grey values; a palette of colours
    gives the palette indices (a label map: index 0, black, is background).

    Raises:
        AblationError: naming the file: unreadable, a colour mask whose channels differ, a 16-bit colour or
            CMYK/YCbCr/LAB/HSV file, a colour palette whose index 0 is not black, negative or fractional values.
    """
    image, wide_colour = open_image(path)
    mode = image.mode
    if mode in ("P", "PA"):
        return _palette_label(image, path)
    if mode in ("LA", "La"):
        image, mode = image.getchannel("L"), "L"
    if mode in ("RGB", "RGBA", "RGBa") and not wide_colour:
        array = np.asarray(image)
        if not ((array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all()):
            raise AblationError(_colour_mask(path, mode))
        return array[..., 0].astype(np.int32)
    if mode not in ("1", "L", "F") and not mode.startswith("I"):
        raise AblationError(_colour_mask(path, f"16-bit {mode}" if wide_colour else mode))
    array = np.asarray(image)
    if mode == "F" and not (np.isfinite(array).all() and (array == np.round(array)).all()):
        raise AblationError(
            f"mask {path} is 32-bit float with fractional or non-finite values: expected whole numbers "
            "(0/255 or 0/1, or ids)"
        )
    if array.min(initial=0) < 0:
        raise AblationError(
            f"mask {path} holds negative values: expected 0 for background, ids or 1/255 for foreground"
        )
    return array.astype(np.int32)


def _palette_label(image: Image.Image, path: Path) -> np.ndarray:
    indices = np.asarray(image)
    indices = indices[..., 0] if indices.ndim == 3 else indices  # PA: palette index, then alpha
    palette = np.zeros((256, 3), dtype=np.int32)  # indices beyond a short palette show black
    given = np.asarray(image.getpalette() or [], dtype=np.int32).reshape(-1, 3)[:256]
    palette[: len(given)] = given
    colours = palette[np.unique(indices)]
    if (colours[:, 0] == colours[:, 1]).all() and (colours[:, 1] == colours[:, 2]).all():
        return palette[indices, 0]  # a grey palette: the grey values are what the mask shows
    if palette[0].any():
        raise AblationError(
            f"mask {path} is a colour palette image whose index 0 is not black: background cannot be told "
            "from foreground; save it as a single-channel mask (0 = background)"
        )
    return indices.astype(np.int32)


def _colour_mask(path: Path, mode: str) -> str:
    return f"mask {path} is {mode}: expected a single-channel mask (8-bit 0/255 or 0/1, or 8/16-bit ids)"


def read_sample(sample: Sample) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Decode one sample, checking that the sizes match and that an instance map covers the mask.

    Returns:
        ``(image, label, ids)``: the image ``uint8 (H, W, 3)``, the ``labelcol`` values ``int32 (H, W)`` and
        the ``instances`` ids ``int32 (H, W)`` (None when the sample has no instance file).
    """
    image = read_image(sample.image)
    label = read_label(sample.label)
    _check_size(image, label, sample.label, sample.image)
    ids = None
    if sample.instances is not None:
        ids = read_label(sample.instances)
        _check_size(image, ids, sample.instances, sample.image)
        if not np.array_equal(ids > 0, label > 0):
            raise AblationError(
                f"instance map {sample.instances} does not cover the same pixels as {sample.label}"
            )
    return image, label, ids


def _check_size(image: np.ndarray, label: np.ndarray, label_path: Path, image_path: Path) -> None:
    if label.shape != image.shape[:2]:
        raise AblationError(
            f"mask {label_path} is {label.shape[1]}x{label.shape[0]} but its image {image_path.name} is "
            f"{image.shape[1]}x{image.shape[0]} (width x height)"
        )


def mask_coding(label: np.ndarray, path: Path) -> str:
    """How one ``labelcol`` file codes its mask.

    Returns:
        ``empty``, ``binary255`` ({0, 255}), ``one`` ({0, 1}: a binary mask or an instance map with one
        object) or ``ids`` (any other values: an instance map).

    Raises:
        AblationError: 255 as the largest value next to other non-zero values (a 0/255 mask with stray
            values, not an instance map).
    """
    values = np.unique(label)
    foreground = values[values != 0]
    if foreground.size == 0:
        return "empty"
    if foreground.size == 1 and foreground[0] in (1, 255):
        return "binary255" if foreground[0] == 255 else "one"
    if foreground[-1] == 255:
        raise AblationError(
            f"mask {path} holds values {format_values(values)}: 255 marks binary foreground, so the other "
            "values cannot be instance ids; expected binary {0, 255}/{0, 1} masks, or instance ids 1..N in "
            "every file"
        )
    return "ids"


def check_mask_codings(codings: list[tuple[Sample, str, np.ndarray]]) -> str:
    """The ``labelcol`` kind of a dataset from its files' codings (see the module docstring).

    Args:
        codings: ``(sample, mask_coding(...), labelcol values)`` per sample, in reading order.

    Returns:
        ``instance`` when the masks are instance maps, else ``binary``.

    Raises:
        AblationError: {0, 255} masks mixed with files holding other values (naming the first file of the less
            common kind), or a
            dataset that has instance maps for some samples only (``instances/`` files or ``labelcol`` ids).
    """
    kinds = [coding for _, coding, _ in codings]
    binary, ids = kinds.count("binary255"), kinds.count("ids")
    if binary and ids:
        # Name a file of the minority kind: in a GlaS-like dataset one stray 0/255 file is the odd one out.
        odd = "ids" if ids <= binary else "binary255"
        sample, _, values = next(entry for entry in codings if entry[1] == odd)
        expected = (
            "expected binary {0, 255}/{0, 1} masks like the other files, or instance ids in every file"
            if odd == "ids"
            else "expected instance ids 1..N like the other files, or binary {0, 255}/{0, 1} masks in every "
            "file"
        )
        raise AblationError(
            f"mask {sample.label} holds values {format_values(values)}: {expected} "
            f"({binary} masks hold {{0, 255}}, {ids} hold other values)"
        )
    labelcol_kind = "instance" if ids else "binary"
    with_ids = [sample for sample, _, _ in codings if sample.instances is not None]
    if with_ids and labelcol_kind == "binary":
        missing = next((sample for sample, _, _ in codings if sample.instances is None), None)
        if missing is not None:
            expected = missing.label.parent.parent / INSTANCE_DIR / f"{missing.name}.png"
            raise AblationError(
                f"image {missing.image} has no instance map (expected {expected}) although "
                f"{with_ids[0].instances} exists: give every image one, or remove the instances/ folders"
            )
    return "instance" if with_ids or labelcol_kind == "instance" else "binary"


def format_values(values: np.ndarray, limit: int = 8) -> str:
    """``{0, 7, 255}``; longer sets are cut after ``limit`` values."""
    shown = ", ".join(str(int(v)) for v in values[:limit])
    more = f", ... ({len(values)} values)" if len(values) > limit else ""
    return "{" + shown + more + "}"
