"""A dataset prepared at one size: its splits' images, masks and object ids as arrays. No torch import.

:func:`ablation.data.prepare.load_prepared` gives one; :func:`ablation.data.run_splits` picks a run's
train/validation/test sets from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ablation.errors import AblationError

DEFAULT_IMG_SIZE = 224


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
