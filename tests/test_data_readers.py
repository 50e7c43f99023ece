"""Image and mask files of every kind a user may hand us: wide samples are scaled by their type's range or
refused with one line naming the file, never silently clipped; odd modes are read as they look."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ablation.data import load_prepared, readers
from ablation.errors import AblationError


def write_tiff(path: Path, array: np.ndarray, *, sample_format: int = 1) -> None:
    """A baseline little-endian TIFF, uncompressed, one strip: for sample layouts Pillow cannot write (16-bit RGB).

    Args:
        array: ``(H, W)`` or ``(H, W, 3)`` of uint8/uint16/int32/float32.
        sample_format: 1 unsigned, 2 signed, 3 float.
    """
    height, width = array.shape[:2]
    samples = 1 if array.ndim == 2 else array.shape[2]
    bits = array.dtype.itemsize * 8
    data = array.astype(array.dtype.newbyteorder("<")).tobytes()
    entries = 11
    extra_at = 8 + 2 + entries * 12 + 4  # per-sample arrays go after the IFD
    per_sample = struct.pack(f"<{samples}H", *[bits] * samples) + struct.pack(
        f"<{samples}H", *[sample_format] * samples
    )
    data_at = extra_at + len(per_sample)

    tags = [
        (256, 3, 1, width),
        (257, 3, 1, height),
        (258, 3, samples, bits if samples == 1 else extra_at),
        (259, 3, 1, 1),  # no compression
        (262, 3, 1, 2 if samples == 3 else 1),  # RGB or black-is-zero
        (273, 4, 1, data_at),
        (277, 3, 1, samples),
        (278, 3, 1, height),
        (279, 4, 1, len(data)),
        (284, 3, 1, 1),
        (339, 3, samples, sample_format if samples == 1 else extra_at + 2 * samples),
    ]
    out = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", entries)
    for tag, kind, count, value in tags:
        if kind == 3 and count == 1:
            out += struct.pack("<HHIHH", tag, kind, count, value, 0)
        else:
            out += struct.pack("<HHII", tag, kind, count, value)
    path.write_bytes(out + b"\x00\x00\x00\x00" + per_sample + data)


GRADIENT16 = (np.arange(32 * 40, dtype=np.int64).reshape(32, 40) * 51).astype(np.uint16)  # 0..65229


def scaled16(array: np.ndarray) -> np.ndarray:
    return np.round(array.astype(np.float64) * 255.0 / 65535.0).astype(np.uint8)


# --- images: scaled by the type's range -------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_sixteen_bit_grey_is_scaled_by_its_range_not_clipped(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"g16{suffix}"
    Image.fromarray(GRADIENT16).save(path)
    image = readers.read_image(path)
    assert image.shape == (32, 40, 3) and image.dtype == np.uint8
    assert np.array_equal(image[..., 0], scaled16(GRADIENT16)) and np.array_equal(
        image[..., 0], image[..., 2]
    )
    assert len(np.unique(image)) > 200  # a gradient, not a saturated 255 plane


def test_twelve_bit_data_keeps_its_16_bit_scale(tmp_path: Path) -> None:
    # Microscopy cameras often store 12-bit data in 16-bit files: scaled by the file's range, not stretched.
    twelve = (GRADIENT16 // 16).astype(np.uint16)  # 0..4076
    Image.fromarray(twelve).save(tmp_path / "g12.png")
    image = readers.read_image(tmp_path / "g12.png")
    assert np.array_equal(image[..., 0], scaled16(twelve)) and image.max() == 16


def test_sixteen_bit_rgb_tiff_keeps_the_high_byte(tmp_path: Path) -> None:
    rgb = np.stack([GRADIENT16, GRADIENT16[::-1], np.full_like(GRADIENT16, 40000)], axis=2)
    write_tiff(tmp_path / "rgb16.tif", rgb)
    image = readers.read_image(tmp_path / "rgb16.tif")
    assert np.abs(image.astype(int) - scaled16(rgb).astype(int)).max() <= 1  # Pillow keeps the high byte
    assert image[..., 2].min() == image[..., 2].max() == 40000 >> 8


@pytest.mark.parametrize(
    ("values", "scale"),
    [
        (np.linspace(0.0, 1.0, 32 * 40), 255.0),  # a [0, 1] float image (what most libraries write)
        (np.linspace(0.0, 255.0, 32 * 40), 1.0),  # a [0, 255] float image
        (np.linspace(0.2, 0.7, 32 * 40), 255.0),  # [0, 1] data that does not reach either end
        (np.zeros(32 * 40), 1.0),  # a black frame
    ],
    ids=["unit", "byte-range", "mid-unit", "black"],
)
def test_float_images_in_0_1_or_0_255_are_scaled(tmp_path: Path, values: np.ndarray, scale: float) -> None:
    array = values.reshape(32, 40).astype(np.float32)
    Image.fromarray(array).save(tmp_path / "f.tif")
    image = readers.read_image(tmp_path / "f.tif")
    assert np.array_equal(image[..., 1], np.round(array.astype(np.float64) * scale).astype(np.uint8))


def test_32_bit_integer_images_in_16_bit_range_are_scaled(tmp_path: Path) -> None:
    Image.fromarray(GRADIENT16.astype(np.int32)).save(tmp_path / "i32.tif")
    assert np.array_equal(readers.read_image(tmp_path / "i32.tif")[..., 0], scaled16(GRADIENT16))


def _float_above_255(path: Path) -> str:
    Image.fromarray(np.linspace(0, 1000, 32 * 40, dtype=np.float32).reshape(32, 40)).save(path)
    return r"is 32-bit float with values 0\.\.1000: expected \[0, 1\] or \[0, 255\]"


def _float_negative(path: Path) -> str:
    Image.fromarray(np.linspace(-1, 1, 32 * 40, dtype=np.float32).reshape(32, 40)).save(path)
    return r"is 32-bit float with values -1\.\.1: expected \[0, 1\] or \[0, 255\]"


def _float_nan(path: Path) -> str:
    array = np.full((32, 40), 0.5, dtype=np.float32)
    array[3, 4] = np.nan
    Image.fromarray(array).save(path)
    return "is 32-bit float with NaN or infinite values"


def _eight_bit_data_in_16_bit_grey(path: Path) -> str:
    Image.fromarray((GRADIENT16 % 200).astype(np.uint16)).save(path.with_suffix(".png"))
    path.with_suffix(".png").rename(path)
    return "is 16-bit but holds values only up to 199: .*almost black; save it as an 8-bit image"


def _eight_bit_data_in_16_bit_rgb(path: Path) -> str:
    write_tiff(path, np.stack([(GRADIENT16 % 250).astype(np.uint16)] * 3, axis=2))
    return "is 16-bit but holds values only below 256"


def _int32_out_of_range(path: Path) -> str:
    Image.fromarray(GRADIENT16.astype(np.int32) * 100).save(path)
    return r"holds integer values 0\.\.6522900: expected 0\.\.65535 \(16-bit\)"


def _signed_negative(path: Path) -> str:
    write_tiff(path, (GRADIENT16.astype(np.int32) - 1000), sample_format=2)
    return r"holds integer values -1000\.\."


@pytest.mark.parametrize(
    "make",
    [
        _float_above_255,
        _float_negative,
        _float_nan,
        _eight_bit_data_in_16_bit_grey,
        _eight_bit_data_in_16_bit_rgb,
        _int32_out_of_range,
        _signed_negative,
    ],
    ids=lambda f: f.__name__.strip("_"),
)
def test_images_that_cannot_be_scaled_are_refused_naming_the_file(tmp_path: Path, make) -> None:
    path = tmp_path / "odd.tif"
    expected = make(path)
    with pytest.raises(AblationError, match=f"image {path} {expected}"):
        readers.read_image(path)


def test_other_modes_are_read_as_they_look(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (32, 40, 3), dtype=np.uint8)
    cases = {
        "p.png": Image.fromarray(rgb).convert("P"),  # palette: its colours
        "la.png": Image.fromarray(rgb).convert("LA"),  # grey + alpha: grey
        "cmyk.tif": Image.fromarray(rgb).convert("CMYK"),
        "rgba.png": Image.fromarray(np.dstack([rgb, np.zeros((32, 40), np.uint8)])),  # alpha 0: dropped
        "one.png": Image.fromarray(rgb[..., 0] > 127),  # 1-bit
    }
    for name, image in cases.items():
        image.save(tmp_path / name)
        expected = np.asarray(image.convert("RGB"))
        assert np.array_equal(readers.read_image(tmp_path / name), expected), name
    assert np.array_equal(readers.read_image(tmp_path / "cmyk.tif"), rgb)
    assert set(np.unique(readers.read_image(tmp_path / "one.png"))) == {0, 255}


@pytest.mark.parametrize("suffix", [".png", ".tif", ".jpg"])
def test_exif_orientation_turns_the_image_upright(tmp_path: Path, suffix: str) -> None:
    # A phone or scanner photo stored sideways with an orientation tag: OpenCV (the reference code) turns it.
    array = np.zeros((24, 40, 3), dtype=np.uint8)
    array[:8, :8] = 255  # a white top-left corner
    exif = Image.Exif()
    exif[274] = 6  # rotate 90 degrees clockwise to view
    Image.fromarray(array).save(tmp_path / f"o{suffix}", exif=exif, quality=100)
    image = readers.read_image(tmp_path / f"o{suffix}")
    assert image.shape == (40, 24, 3)
    assert image[:8, -8:].mean() > 200 and image[-8:, :8].mean() < 50  # the corner is now top-right


# --- masks -------------------------------------------------------------------------------------------------------

BLOBS = np.zeros((32, 40), dtype=np.uint8)
BLOBS[2:9, 3:12] = 1
BLOBS[15:25, 20:33] = 2


def test_one_bit_masks_are_binary(tmp_path: Path) -> None:
    Image.fromarray(BLOBS > 0).save(tmp_path / "m.png")
    label = readers.read_label(tmp_path / "m.png")
    assert label.dtype == np.int32 and np.array_equal(label, (BLOBS > 0).astype(np.int32))


def test_grey_palette_masks_give_their_grey_values(tmp_path: Path) -> None:
    # An adaptive palette may put white first: the grey values, not the indices, are the mask.
    image = Image.fromarray(np.where(BLOBS > 0, 0, 1).astype(np.uint8), mode="L").convert("P")
    image.putpalette([255, 255, 255, 0, 0, 0] + [0] * (254 * 3))
    image.save(tmp_path / "m.png")
    assert Image.open(tmp_path / "m.png").mode == "P"
    assert np.array_equal(readers.read_label(tmp_path / "m.png"), np.where(BLOBS > 0, 255, 0))


def test_colour_palette_label_maps_give_their_indices(tmp_path: Path) -> None:
    image = Image.fromarray(BLOBS, mode="L").convert("P")
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (253 * 3))  # black background, red, green
    image.save(tmp_path / "m.png")
    assert np.array_equal(readers.read_label(tmp_path / "m.png"), BLOBS)


def test_grey_mask_with_alpha_uses_the_grey_channel(tmp_path: Path) -> None:
    grey = np.where(BLOBS > 0, 255, 0).astype(np.uint8)
    Image.fromarray(np.dstack([grey, np.full_like(grey, 128)]), mode="LA").save(tmp_path / "m.png")
    assert np.array_equal(readers.read_label(tmp_path / "m.png"), grey)


def test_float_masks_with_whole_numbers_are_read(tmp_path: Path) -> None:
    Image.fromarray(BLOBS.astype(np.float32)).save(tmp_path / "m.tif")
    assert np.array_equal(readers.read_label(tmp_path / "m.tif"), BLOBS)


def _colour_palette_with_coloured_background(path: Path) -> str:
    image = Image.fromarray(BLOBS, mode="L").convert("P")
    image.putpalette([255, 0, 0, 0, 0, 0, 0, 255, 0] + [0] * (253 * 3))
    image.save(path.with_suffix(".png"))
    path.with_suffix(".png").rename(path)
    return "is a colour palette image whose index 0 is not black"


def _sixteen_bit_rgb_mask(path: Path) -> str:
    write_tiff(path, np.stack([BLOBS.astype(np.uint16) * 65535] * 3, axis=2))
    return "is 16-bit RGB: expected a single-channel mask"


def _fractional_float_mask(path: Path) -> str:
    Image.fromarray(BLOBS.astype(np.float32) * 0.5).save(path)
    return "is 32-bit float with fractional or non-finite values"


def _negative_mask(path: Path) -> str:
    write_tiff(path, BLOBS.astype(np.int32) - 1, sample_format=2)
    return "holds negative values"


def _cmyk_mask(path: Path) -> str:
    Image.fromarray(np.where(BLOBS > 0, 255, 0).astype(np.uint8)).convert("CMYK").save(path)
    return "is CMYK: expected a single-channel mask"


@pytest.mark.parametrize(
    "make",
    [
        _colour_palette_with_coloured_background,
        _sixteen_bit_rgb_mask,
        _fractional_float_mask,
        _negative_mask,
        _cmyk_mask,
    ],
    ids=lambda f: f.__name__.strip("_"),
)
def test_masks_that_cannot_be_read_safely_are_refused(tmp_path: Path, make) -> None:
    path = tmp_path / "m.tif"
    expected = make(path)
    with pytest.raises(AblationError, match=f"mask {path} {expected}"):
        readers.read_label(path)


# --- through load_prepared -------------------------------------------------------------------------------------


def test_a_float_dataset_prepares_like_its_8_bit_twin(tmp_path: Path) -> None:
    for root, kind in ((tmp_path / "bytes", "u8"), (tmp_path / "floats", "f32")):
        for split, folder in (("train", "Train_Folder"), ("test", "Test_Folder")):
            (root / folder / "img").mkdir(parents=True)
            (root / folder / "labelcol").mkdir()
            for i in range(2):
                grey = np.random.default_rng([i, len(split)]).integers(0, 256, (24, 32)).astype(np.uint8)
                image = (
                    Image.fromarray(grey) if kind == "u8" else Image.fromarray(grey.astype(np.float32) / 255)
                )
                image.save(root / folder / "img" / f"{split}{i}.tif")
                Image.fromarray((BLOBS[:24, :32] > 0).astype(np.uint8) * 255).save(
                    root / folder / "labelcol" / f"{split}{i}.png"
                )
    u8 = load_prepared(str(tmp_path / "bytes"), img_size=16, cache_dir=tmp_path / "cache")
    f32 = load_prepared(str(tmp_path / "floats"), img_size=16, cache_dir=tmp_path / "cache")
    for split in ("train", "test"):
        assert np.array_equal(u8.splits[split].images, f32.splits[split].images)
        assert f32.splits[split].images.max() > 200  # not a saturated 0/1 image
