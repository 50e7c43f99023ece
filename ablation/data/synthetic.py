"""Generated H&E-like segmentation data for the demo and the tests: no download, deterministic by seed.

Two generators mimic the paper's datasets (Wang et al., AAAI 2022) at any size and count:

- ``nuclei`` (like MoNuSeg): 25-45 small, dark purple, irregular nuclei with chromatin texture on a pink stroma
  texture, with pale unlabelled out-of-focus blobs and pixel noise as distractors (foreground about 0.2).
- ``glands`` (like GlaS): 2-5 large irregular glands, each a purple epithelial ring with dark nuclei around a pale
  lumen (the whole gland, lumen included, is foreground as in GlaS), on fibrous stroma with scattered unlabelled
  stromal nuclei (foreground about 0.3-0.5).

Shapes are drawn in units of the image side, so a picture looks the same at 32 or 224 pixels. Object ids are
1..K per image (0 = background); where objects touch, each pixel goes to the object whose centre is relatively
nearest. Everything is vectorised over objects and pixels; the only Python loop runs over images.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from ablation.errors import AblationError

GENERATOR_VERSION = 1
DEFAULT_COUNTS = {"train": 24, "val": 6, "test": 12}
KINDS = ("nuclei", "glands")


def generate(kind: str, *, count: int, img_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``count`` images of ``kind`` (``nuclei`` or ``glands``).

    Returns:
        ``images`` ``uint8 (count, img_size, img_size, 3)`` RGB and ``instances`` ``int32 (count, img_size,
        img_size)`` object ids (0 = background).
    """
    if kind not in KINDS:
        raise AblationError(f"unknown synthetic kind {kind!r}: choose one of {', '.join(KINDS)}")
    if count < 1 or img_size < 8:
        raise AblationError(f"synthetic data needs count >= 1 and img_size >= 8, got {count} and {img_size}")
    rng = np.random.default_rng([GENERATOR_VERSION, KINDS.index(kind), seed])
    yy, xx = np.meshgrid(np.arange(img_size), np.arange(img_size), indexing="ij")
    grid = (np.stack([yy, xx]).astype(np.float32) + 0.5) / img_size  # (2, H, W), pixel centres in [0, 1)
    # Texture fields for the whole batch at once: coarse stain variation, fine grain.
    coarse = _smooth_noise(rng, (count, img_size, img_size), sigma=img_size / 12)
    fine = _smooth_noise(rng, (count, img_size, img_size), sigma=max(img_size / 160, 0.5))
    draw = _nuclei_image if kind == "nuclei" else _glands_image
    images = np.empty((count, img_size, img_size, 3), dtype=np.uint8)
    instances = np.empty((count, img_size, img_size), dtype=np.int32)
    for i in range(count):
        images[i], instances[i] = draw(rng, grid, coarse[i], fine[i])
    return images, instances


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise, rescaled to unit standard deviation per image. ``(N, H, W)`` float32."""
    noise = gaussian_filter(
        rng.standard_normal(shape).astype(np.float32), sigma=(0, sigma, sigma), mode="wrap"
    )
    return noise / (noise.std(axis=(1, 2), keepdims=True) + 1e-6)


def _blobs(
    rng: np.random.Generator, size: int, centres: np.ndarray, radii: np.ndarray, wobble: float
) -> tuple[np.ndarray, np.ndarray]:
    """Draw K irregular blobs; return the normalised distance to the nearest one and its index.

    Each blob is an ellipse (axis ratio 0.6-1, random orientation) whose radius is modulated by three random
    harmonics of relative amplitude up to ``wobble``, which makes outlines irregular. The distance is < 1 inside a
    blob and 1 on its outline. It is only evaluated in a window around each blob (wide enough for soft edges), so
    the cost grows with the blobs' area rather than K times the image.

    Args:
        centres: ``(K, 2)`` (row, column) in units of the image side.
        radii: ``(K,)`` in units of the image side.

    Returns:
        ``smallest`` float32 ``(H, W)`` (inf far from every blob) and ``nearest`` int64 ``(H, W)`` (-1 there).
    """
    k = len(centres)
    shape = (k, 1, 1)
    angle = rng.uniform(0, np.pi, shape).astype(np.float32)
    ratio = rng.uniform(0.6, 1.0, shape).astype(np.float32)
    amplitudes = rng.uniform(0, wobble, (3, *shape)).astype(np.float32)
    phases = rng.uniform(0, 2 * np.pi, (3, *shape)).astype(np.float32)
    half = int(np.ceil(radii.max() * (1 + 3 * wobble) * 1.6 * size)) + 1
    offsets = np.arange(-half, half + 1)
    centre_pixels = np.floor(centres * size).astype(np.int64)
    rows = centre_pixels[:, 0, None, None] + offsets[None, :, None]  # (K, P, 1)
    cols = centre_pixels[:, 1, None, None] + offsets[None, None, :]  # (K, 1, P)
    centres = centres.astype(np.float32)
    dy = (rows + 0.5).astype(np.float32) / size - centres[:, 0, None, None]
    dx = (cols + 0.5).astype(np.float32) / size - centres[:, 1, None, None]
    radius = radii.reshape(shape).astype(np.float32)
    along = (dx * np.cos(angle) + dy * np.sin(angle)) / radius  # (K, P, P)
    across = (-dx * np.sin(angle) + dy * np.cos(angle)) / (radius * ratio)
    theta = np.arctan2(across, along)
    outline = 1 + sum(a * np.sin(order * theta + p) for a, order, p in zip(amplitudes, (2, 3, 5), phases))
    distance = np.hypot(along, across) / outline
    # Pixels in the image and near enough to matter (the soft edges fade out well before distance 2).
    inside = (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size) & (distance < 2)  # (K, P, P)
    pixel = np.broadcast_to(rows * size + cols, inside.shape)[inside]
    blob = np.broadcast_to(np.arange(k).reshape(shape), inside.shape)[inside]
    distance = distance[inside]
    # Per pixel keep the nearest blob: sort by (pixel, distance) and take each pixel's first entry.
    order = np.lexsort((distance, pixel))
    unique_pixels, first = np.unique(pixel[order], return_index=True)
    smallest = np.full(size * size, np.inf, dtype=np.float32)
    nearest = np.full(size * size, -1, dtype=np.int64)
    smallest[unique_pixels] = distance[order][first]
    nearest[unique_pixels] = blob[order][first]
    return smallest.reshape(size, size), nearest.reshape(size, size)


def _label(smallest: np.ndarray, nearest: np.ndarray) -> np.ndarray:
    """Object ids ``int32 (H, W)``, consecutive 1..K over the blobs that kept at least one pixel."""
    ids = np.where(smallest < 1, nearest + 1, 0)
    present, ids = np.unique(ids, return_inverse=True)
    ids = ids.reshape(smallest.shape) + (0 if present[0] == 0 else 1)
    return ids.astype(np.int32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * x))  # no overflow warning for the infinite distances far from blobs


def _stain(rng: np.random.Generator, rgb: tuple[float, float, float], jitter: float = 12) -> np.ndarray:
    return np.asarray(rgb, dtype=np.float32) + rng.normal(0, jitter, 3).astype(np.float32)


def _compose(
    layers: list[tuple[np.ndarray, np.ndarray]], rng: np.random.Generator, noise: float
) -> np.ndarray:
    """Alpha-blend ``(alpha (H, W), colour (H, W, 3))`` layers bottom to top, add sensor noise, quantise."""
    image = layers[0][1]
    for alpha, colour in layers[1:]:
        image = image + alpha[..., None] * (colour - image)
    image = image + rng.normal(0, noise, image.shape).astype(np.float32)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _nuclei_image(rng, grid, coarse, fine) -> tuple[np.ndarray, np.ndarray]:
    size = grid.shape[1]
    stroma = _stain(rng, (232, 165, 198))
    background = stroma * (1 + 0.12 * coarse[..., None] + 0.05 * fine[..., None])
    count = int(rng.integers(30, 51))
    smallest, nearest = _blobs(
        rng, size, rng.uniform(0, 1, (count, 2)), rng.uniform(0.03, 0.055, count), 0.12
    )
    ids = _label(smallest, nearest)
    edge = 0.08 * (32 / size) ** 0.5  # soft edges, about a pixel wide at any size
    alpha = _sigmoid((1 - smallest) / edge)
    darkness = rng.uniform(0.75, 1.5, count + 1)[nearest]  # per-nucleus staining (index -1: far from all)
    nucleus = _stain(rng, (88, 48, 128)) * (darkness + 0.12 * fine)[..., None]
    # Pale, blurry, unlabelled blobs (out-of-focus or cut-off nuclei) so darkness alone is not the answer.
    pale_count = int(rng.integers(6, 15))
    pale, _ = _blobs(rng, size, rng.uniform(0, 1, (pale_count, 2)), rng.uniform(0.03, 0.07, pale_count), 0.1)
    pale_alpha = 0.6 * _sigmoid((1 - pale) / (2 * edge))
    pale_colour = np.broadcast_to(_stain(rng, (150, 95, 165)), background.shape)
    image = _compose([(None, background), (pale_alpha, pale_colour), (alpha * 0.92, nucleus)], rng, noise=10)
    return image, ids


def _glands_image(rng, grid, coarse, fine) -> tuple[np.ndarray, np.ndarray]:
    size = grid.shape[1]
    # Fibrous stroma: streaks along a random direction.
    direction = rng.uniform(0, np.pi)
    streaks = np.sin(2 * np.pi * 9 * (grid[0] * np.cos(direction) + grid[1] * np.sin(direction)) + 3 * coarse)
    stroma = _stain(rng, (228, 150, 188)) * (1 + 0.05 * coarse[..., None] + 0.05 * streaks[..., None])
    count = int(rng.integers(2, 6))
    centres = rng.uniform(0.15, 0.85, (count, 2))
    smallest, nearest = _blobs(rng, size, centres, rng.uniform(0.15, 0.28, count), 0.18)
    ids = _label(smallest, nearest)
    edge = 0.05 * (32 / size) ** 0.5
    gland_alpha = _sigmoid((1 - smallest) / edge)
    # Lumen: an inner outline at 40-70 % of the gland's size, wobbling with the coarse texture.
    lumen_scale = rng.uniform(0.4, 0.7, count + 1)[nearest]
    lumen_alpha = _sigmoid((lumen_scale - smallest + 0.06 * coarse) / (edge * lumen_scale))
    epithelium = _stain(rng, (175, 95, 165)) * (1 + 0.08 * fine[..., None])
    lumen = _stain(rng, (244, 232, 242), jitter=5) * (1 + 0.02 * fine[..., None])
    # Dark epithelial nuclei: fine-noise peaks inside the ring; stromal nuclei: sparse peaks outside.
    ring = (smallest > lumen_scale * 0.95) & (smallest < 0.97)
    speckle = _normalised(fine)
    nuclei_alpha = np.where(
        ring, np.clip((speckle - 0.55) * 4, 0, 0.85), np.clip((speckle - 0.8) * 4, 0, 0.6)
    )
    nuclei_colour = np.broadcast_to(_stain(rng, (80, 40, 120)), stroma.shape)
    layers = [(None, stroma), (gland_alpha, epithelium), (lumen_alpha * gland_alpha, lumen)]
    image = _compose([*layers, (nuclei_alpha * (1 - lumen_alpha), nuclei_colour)], rng, noise=6)
    return image, ids


def _normalised(field: np.ndarray) -> np.ndarray:
    low, high = field.min(), field.max()
    return (field - low) / (high - low + 1e-6)
