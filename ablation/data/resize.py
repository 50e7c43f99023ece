"""Resizing a whole image, mask or id map to ``size x size``, as the UCTransNet paper (Wang et al., AAAI 2022) does.
No torch import.

The default ``reference`` interpolation reproduces the reference code's OpenCV preprocessing: bilinear without
antialiasing for images, and for masks a bilinear resize of the 0/255 mask then ``> 0`` (which slightly thickens
thin foreground; on MoNuSeg nearest-neighbour masks hold about 10% less foreground). Pillow's
``bilinear``/``bicubic`` (antialiased images, nearest masks) are the alternatives. Instance ids are always
resized nearest, since ids cannot be blended.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# "reference" is handled by resize_bilinear_like_opencv; the others (the rest of config.INTERPOLATIONS) by Pillow.
PILLOW_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
DEFAULT_INTERPOLATION = "reference"


def resize_image(image: np.ndarray, size: int, interpolation: str = DEFAULT_INTERPOLATION) -> np.ndarray:
    """``uint8 (H, W, 3)`` -> ``uint8 (size, size, 3)`` (whole image, aspect ratio not kept, as in the paper)."""
    if image.shape[:2] == (size, size):
        return image
    if interpolation == "reference":
        return np.clip(np.rint(resize_bilinear_like_opencv(image, size)), 0, 255).astype(np.uint8)
    resized = Image.fromarray(image).resize((size, size), PILLOW_FILTERS[interpolation])
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
