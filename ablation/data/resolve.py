"""Which folder a dataset name stands for: the named real datasets, the generated ones, or a folder path. No torch
import.
"""

from __future__ import annotations

import os
from pathlib import Path

from ablation.errors import AblationError

# Named datasets; anything else must be a folder in the reference layout (see ablation.data.readers).
DATASETS: dict[str, str] = {
    "glas": "GlaS gland segmentation (colon H&E), folder GlaS under the data root",
    "monuseg": "MoNuSeg multi-organ nuclei segmentation (H&E), folder MoNuSeg under the data root",
    "synthetic-nuclei": "generated H&E-like nuclei (many small dark blobs), no download needed",
    "synthetic-glands": "generated H&E-like glands (large irregular glands with pale lumens), no download needed",
}
DATASET_FOLDERS = {"glas": "GlaS", "monuseg": "MoNuSeg"}


def default_data_root() -> Path:
    return Path(os.environ.get("ABLATION_DATA", "data"))


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
