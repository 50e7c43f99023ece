"""The official GlaS and MoNuSeg downloads, and their conversion to the reference layout. No torch import.

GlaS (MICCAI 2015 gland segmentation challenge, Warwick QU) ships one flat folder::

    train_1.bmp  train_1_anno.bmp  ...  testA_1.bmp  testA_1_anno.bmp  ...  testB_1.bmp ...  Grade.csv

where each ``*_anno.bmp`` holds gland instance ids (0 = background) and ``Grade.csv``'s header names carry leading
spaces (``name, patient ID, grade (GlaS), ...``). Conversion puts ``train_*`` into ``Train_Folder`` and ``testA_*``
then ``testB_*`` into ``Test_Folder``, keeping the names, so reports can still tell testA from testB; the grade
table is copied with stripped header names.

MoNuSeg (MICCAI 2018 multi-organ nuclei segmentation) ships the training set as ``Tissue Images/*.tif`` +
``Annotations/*.xml`` and the test set as one flat folder of ``.tif`` + ``.xml``. The XML is Aperio ImageScope's:
``<Annotations><Annotation><Regions><Region><Vertices><Vertex X=".." Y=".."/>...`` with one ``Region`` per
nucleus and float vertex coordinates in full-resolution pixels, X the column and Y the row (pixel centres at
integer coordinates). Each polygon is filled (outline included) with its own id 1..K in file order; where nuclei
overlap, the later region overwrites the earlier one. Regions with fewer than three vertices are skipped.

Converted datasets get binary ``labelcol/*.png`` masks (0/255) and 16-bit ``instances/*.png`` ids.
"""

from __future__ import annotations

import csv
import io
import re
import sys
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ablation.data import readers
from ablation.errors import AblationError
from ablation.io import atomic_write_bytes, atomic_write_text

LAYOUTS = {
    "glas-official": "GlaS challenge download: flat folder of train_N.bmp / testA_N.bmp / testB_N.bmp + _anno.bmp",
    "monuseg-official": "MoNuSeg download: 'Tissue Images/*.tif' + 'Annotations/*.xml', or a flat .tif + .xml folder",
}
GRADE_FILE = "Grade.csv"
_GLAS_NAME = re.compile(r"^(train|testA|testB)_(\d+)(_anno)?$")


@dataclass(frozen=True)
class RawSample:
    """One image of an official download and how to get its instance ids of shape ``(H, W)``."""

    split: str
    name: str
    image: Path
    read_ids: Callable[[tuple[int, int]], np.ndarray]


def scan_glas_official(root: str | Path) -> list[RawSample]:
    """The GlaS download's samples: train first, then testA, then testB, each in natural order."""
    root = _existing_folder(root)
    images: dict[str, Path] = {}
    annotations: dict[str, Path] = {}
    skipped: list[str] = []
    for path in sorted(root.glob("*.bmp"), key=lambda p: readers.natural_key(p.name)):
        match = _GLAS_NAME.match(path.stem)
        if match is None:
            skipped.append(path.name)
            continue
        (annotations if match.group(3) else images)[f"{match.group(1)}_{match.group(2)}"] = path
    shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
    if not images and not annotations:
        found = f"; its .bmp files ({shown}) do not follow that naming" if skipped else ""
        raise AblationError(
            f"{root} holds no GlaS files (train_N.bmp, train_N_anno.bmp, testA_N.bmp, testB_N.bmp){found}"
        )
    if skipped:
        # Printed rather than raised: the official folder holds only GlaS names; a user may have added files.
        print(
            f"warning: skipped {len(skipped)} .bmp file(s) in {root} not named like GlaS files "
            f"(train_N, testA_N, testB_N, with _anno): {shown}",
            file=sys.stderr,
        )
    for name, path in images.items():
        if name not in annotations:
            raise AblationError(f"image {path} has no mask: expected {root / (name + '_anno.bmp')}")
    for name, path in annotations.items():
        if name not in images:
            raise AblationError(f"mask {path} has no image: expected {root / (name + '.bmp')}")
    group_order = {"train": 0, "testA": 1, "testB": 2}
    names = sorted(images, key=lambda n: (group_order[n.split("_")[0]], readers.natural_key(n)))
    if not any(n.startswith("train_") for n in names) or not any(n.startswith("test") for n in names):
        raise AblationError(
            f"{root} needs both train_N.bmp and testA_N/testB_N.bmp images with their _anno.bmp"
        )
    return [
        RawSample("train" if n.startswith("train") else "test", n, images[n], _label_reader(annotations[n]))
        for n in names
    ]


def _label_reader(path: Path) -> Callable[[tuple[int, int]], np.ndarray]:
    def read(shape: tuple[int, int]) -> np.ndarray:
        ids = readers.read_label(path)
        if ids.shape != shape:
            raise AblationError(
                f"mask {path} is {ids.shape[1]}x{ids.shape[0]} but its image is {shape[1]}x{shape[0]} (w x h)"
            )
        return ids

    return read


def read_grade_table(root: str | Path) -> list[dict[str, str]] | None:
    """Rows of GlaS ``Grade.csv`` with stripped header names and values, or None when the file is absent."""
    path = Path(root) / GRADE_FILE
    if not path.is_file():
        return None
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise AblationError(f"cannot read {path}: {error}") from None
    if not rows:
        raise AblationError(f"{path} is empty")
    header = [cell.strip() for cell in rows[0]]
    return [
        dict(zip(header, (cell.strip() for cell in row))) for row in rows[1:] if any(c.strip() for c in row)
    ]


def scan_monuseg_official(root: str | Path, split: str | None = None) -> list[RawSample]:
    """The MoNuSeg download's samples, all in one split.

    Args:
        root: the training download (``Tissue Images/`` + ``Annotations/``) or a flat test folder (.tif + .xml).
        split: ``train``, ``val`` or ``test``; default ``train`` for the training layout, ``test`` for a flat one.
    """
    root = _existing_folder(root)
    if (root / "Tissue Images").is_dir():
        image_dir, xml_dir, default = root / "Tissue Images", root / "Annotations", "train"
        if not xml_dir.is_dir():
            raise AblationError(
                f"{xml_dir} is missing: the MoNuSeg training download has Annotations/ beside it"
            )
    else:
        image_dir, xml_dir, default = root, root, "test"
    split = _check_split(split or default)
    images = {p.stem: p for p in sorted(image_dir.iterdir()) if p.suffix.lower() in readers.IMAGE_EXTENSIONS}
    xmls = {p.stem: p for p in sorted(xml_dir.glob("*.xml"))}
    if not images and not xmls:
        raise AblationError(f"{image_dir} holds no MoNuSeg images (.tif) with Aperio annotations (.xml)")
    for name, path in images.items():
        if name not in xmls:
            raise AblationError(f"image {path} has no mask: expected {xml_dir / (name + '.xml')}")
    for name, path in xmls.items():
        if name not in images:
            raise AblationError(f"mask {path} has no image: expected {image_dir / name}.tif")
    return [
        RawSample(split, n, images[n], _xml_reader(xmls[n])) for n in sorted(images, key=readers.natural_key)
    ]


def _check_split(split: str) -> str:
    if split not in readers.SPLIT_FOLDERS:
        raise AblationError(f"unknown split {split!r}: choose one of {', '.join(readers.SPLIT_FOLDERS)}")
    return split


def _xml_reader(path: Path) -> Callable[[tuple[int, int]], np.ndarray]:
    return lambda shape: rasterise_polygons(parse_aperio_xml(path), shape)


def parse_aperio_xml(path: str | Path) -> list[np.ndarray]:
    """The polygons of an Aperio ImageScope XML file, in file order.

    Returns:
        One ``float64 (V, 2)`` array of ``(x, y)`` = (column, row) vertices per ``Region``.
    """
    try:
        tree = ElementTree.parse(path)
    except (OSError, ElementTree.ParseError) as error:
        raise AblationError(f"cannot read annotation file {path}: {error}") from None
    polygons = []
    for region in tree.getroot().iter("Region"):
        try:
            vertices = [(float(v.attrib["X"]), float(v.attrib["Y"])) for v in region.iter("Vertex")]
        except (KeyError, ValueError):
            raise AblationError(
                f"annotation file {path}: a Vertex lacks numeric X and Y attributes"
            ) from None
        polygons.append(np.array(vertices, dtype=np.float64).reshape(-1, 2))
    return polygons


def rasterise_polygons(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Fill polygons into an id map: polygon i (with at least 3 vertices) gets the next id, later ones on top.

    Args:
        polygons: ``(V, 2)`` arrays of ``(x, y)`` = (column, row) in pixels, pixel centres at integers.
        shape: ``(H, W)`` of the image.

    Returns:
        ``int32 (H, W)`` ids, 0 = background.
    """
    canvas = Image.new("I", (shape[1], shape[0]), 0)
    draw = ImageDraw.Draw(canvas)
    next_id = 1
    for polygon in polygons:
        if len(polygon) < 3:
            continue
        draw.polygon([(float(x), float(y)) for x, y in polygon], fill=next_id, outline=next_id)
        next_id += 1
    return np.asarray(canvas, dtype=np.int32)


def scan_official(source: str | Path, layout: str, split: str | None = None) -> list[RawSample]:
    """The samples of an official download in ``layout`` (see :data:`LAYOUTS`)."""
    if layout == "glas-official":
        if split is not None:
            raise AblationError(
                "--split applies to monuseg-official only: GlaS brings its own train/test split"
            )
        return scan_glas_official(source)
    if layout == "monuseg-official":
        return scan_monuseg_official(source, split)
    raise AblationError(f"unknown layout {layout!r}: choose one of {', '.join(LAYOUTS)}")


def convert(
    source: str | Path, *, layout: str, target: str | Path, split: str | None = None, overwrite: bool = False
) -> dict[str, int]:
    """Convert an official download to the reference layout under ``target``.

    Each sample becomes ``<Split>_Folder/img/<name>.png`` (RGB), ``labelcol/<name>.png`` (0/255) and
    ``instances/<name>.png`` (16-bit ids). Every file is written atomically. A split folder that already exists
    is an error unless ``overwrite`` (then files of the same names are replaced).

    Returns:
        The number of images written per split.
    """
    target = Path(target)
    for path in (target, *target.parents):
        if path.exists() and not path.is_dir():
            problem = "is a file, not a folder" if path == target else f"cannot be made: {path} is a file"
            raise AblationError(f"--to {target} {problem}: choose a folder to write the dataset into")
    samples = scan_official(source, layout, split)
    counts: dict[str, int] = {}
    for s in samples:
        counts[s.split] = counts.get(s.split, 0) + 1
    for split_name in counts:
        folder = target / readers.SPLIT_FOLDERS[split_name]
        if folder.exists() and not overwrite:
            raise AblationError(f"{folder} already exists: choose another --to, remove it, or pass --force")
    for sample in samples:
        image = readers.read_image(sample.image)
        ids = sample.read_ids(image.shape[:2])
        if ids.max(initial=0) > np.iinfo(np.uint16).max:
            raise AblationError(f"{sample.image}: more than 65535 objects do not fit a 16-bit instance map")
        folder = target / readers.SPLIT_FOLDERS[sample.split]
        _write_png(folder / readers.IMAGE_DIR / f"{sample.name}.png", image)
        _write_png(
            folder / readers.LABEL_DIR / f"{sample.name}.png", np.where(ids > 0, 255, 0).astype(np.uint8)
        )
        _write_png(folder / readers.INSTANCE_DIR / f"{sample.name}.png", ids.astype(np.uint16))
    if layout == "glas-official":
        grades = read_grade_table(source)
        if grades is not None:
            atomic_write_text(target / GRADE_FILE, _csv_text(grades))
    return counts


def _write_png(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def _csv_text(rows: list[dict[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _existing_folder(root: str | Path) -> Path:
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise AblationError(f"{root} is a file, not a folder: give the folder of the official download")
    if not root.is_dir():
        raise AblationError(f"folder {root} does not exist")
    return root
