"""A dataset's summary for ``ablation data info``: counts, sizes, foreground fraction, label kind. No torch import."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ablation.data.dataset import DEFAULT_IMG_SIZE
from ablation.data.prepare import load_prepared


def dataset_info(
    dataset: str,
    *,
    img_size: int = DEFAULT_IMG_SIZE,
    data_root: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Summarise a dataset as prepared at ``img_size`` (foreground and instance counts are measured there).

    Returns:
        ``{"name", "source", "label_kind", "img_size", "fingerprint", "splits": {split: {"images", "sizes",
        "foreground", "instances", "empty_masks"}}}`` where ``sizes`` maps ``"WxH"`` of the source images to
        their count, ``instances`` is the total number of objects (None for binary labels) and
        ``empty_masks`` lists the images whose source mask has no foreground.
    """
    prepared = load_prepared(dataset, img_size=img_size, data_root=data_root, cache_dir=cache_dir)
    splits = {}
    for name, split in prepared.splits.items():
        sizes = Counter(f"{w}x{h}" for w, h in prepared.original_sizes.get(name, []))
        instances = None
        if split.instances is not None:
            instances = int(sum(len(np.unique(ids[ids > 0])) for ids in split.instances))
        splits[name] = {
            "images": len(split),
            "sizes": dict(sizes.most_common()),
            "foreground": float(split.masks.mean()) if len(split) else 0.0,
            "instances": instances,
            "empty_masks": list(prepared.empty_masks.get(name, [])),
        }
    return {
        "name": prepared.name,
        "source": str(prepared.source) if prepared.source is not None else "generated",
        "label_kind": prepared.label_kind,
        "img_size": prepared.img_size,
        "fingerprint": prepared.fingerprint,
        "splits": splits,
    }


def format_info(info: dict[str, Any]) -> str:
    """The summary as a small text table."""
    lines = [
        f"dataset {info['name']} ({info['source']})",
        f"labels: {info['label_kind']}; measured at {info['img_size']}x{info['img_size']}; "
        f"fingerprint {info['fingerprint']}",
        f"{'split':<6} {'images':>6} {'foreground':>10} {'instances':>9} {'empty':>5}  "
        "source sizes (w x h: count)",
    ]
    for split, row in info["splits"].items():
        sizes = ", ".join(f"{size}: {count}" for size, count in row["sizes"].items())
        instances = "-" if row["instances"] is None else str(row["instances"])
        empty = len(row["empty_masks"])
        lines.append(
            f"{split:<6} {row['images']:>6} {row['foreground']:>10.3f} {instances:>9} {empty:>5}  {sizes}"
        )
    for split, row in info["splits"].items():
        if row["empty_masks"]:
            names = ", ".join(row["empty_masks"][:5]) + (" ..." if len(row["empty_masks"]) > 5 else "")
            lines.append(f"{split}: {len(row['empty_masks'])} image(s) with an all-zero mask: {names}")
    return "\n".join(lines)
