"""Before a grid starts: every dataset of its spec can be found (its folder, or the prepared file that stands in
for it) and split into the folds it asks for. No torch import.
"""

from __future__ import annotations

from collections.abc import Sequence

from ablation.config import RunConfig
from ablation.data.cache import find_prepared_cache
from ablation.data.prepare import split_sizes
from ablation.data.resolve import DATASET_FOLDERS, resolve_dataset
from ablation.data.splits import check_num_folds
from ablation.errors import AblationError

from .spec import GridSpec


def check_datasets(
    grid: GridSpec, configs: Sequence[RunConfig] | None = None, *, strict: bool = True
) -> list[str]:
    """Check that every dataset of a spec can be found and split as asked, before any run starts.

    A dataset must be a known name (:data:`ablation.data.DATASETS`) or an existing folder; a named real
    dataset (glas, monuseg) must have its folder under its data root (the entry's ``data_root``, else
    $ABLATION_DATA, else ./data) or its one prepared file at the spec's size in the cache
    (:func:`ablation.data.cache.find_prepared_cache`). Resolution is as in training. With k-fold ``folds``,
    ``num_folds`` must not exceed the images of a dataset's training pool (train + val), counted from its file
    names or from the names its prepared file holds (:func:`ablation.data.prepare.split_sizes`).

    Args:
        grid: the parsed spec.
        configs: check only the datasets these runs use (the runs ``--only`` kept); default every dataset.
        strict: raise for a named dataset whose folder is missing; False turns that into a warning (for
            ``--dry-run``, which lists runs without reading data). Unknown names always raise.

    Returns:
        Warning lines, one per missing dataset folder (empty when ``strict`` or when every folder exists).

    Raises:
        AblationError: naming the spec file and the dataset, where it looked, and the valid names.
    """
    where = grid.source or "spec"
    warnings = []
    used = None if configs is None else {(config.dataset, config.data_root) for config in configs}
    for entry in dict.fromkeys(grid.datasets):
        if used is not None and (entry.name, entry.data_root) not in used:
            continue
        try:
            resolve_dataset(entry.name, entry.data_root)
        except AblationError as error:
            try:
                cached = find_prepared_cache(
                    entry.name, img_size=grid.model.img_size, interpolation=grid.interpolation
                )
            except AblationError as ambiguous:
                raise AblationError(f"{where}: {ambiguous}") from None
            if cached is None:
                if strict or entry.name.lower() not in DATASET_FOLDERS:
                    raise AblationError(f"{where}: {error}") from None
                warnings.append(f"warning: {where}: {error}")
                continue
        if any(replicate.fold is not None for replicate in grid.replicate_list()):
            try:
                sizes = split_sizes(
                    entry.name,
                    entry.data_root,
                    img_size=grid.model.img_size,
                    interpolation=grid.interpolation,
                )
                check_num_folds(grid.num_folds, sizes["train"] + sizes.get("val", 0), setting="'folds'")
            except AblationError as error:
                raise AblationError(f"{where}: dataset {entry.name!r}: {error}") from None
    return warnings
