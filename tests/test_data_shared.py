"""The real GlaS and MoNuSeg folders (../shared/datasets), read once per session at 32 px; skipped when absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ablation.cli
from ablation.data import PreparedDataset, load_prepared, readers, run_splits
from ablation.data.resize import resize_label


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data-cache")


@pytest.fixture(scope="session")
def glas(shared_datasets: Path, shared_cache: Path) -> PreparedDataset:
    return load_prepared(str(shared_datasets / "GlaS"), img_size=32, cache_dir=shared_cache)


@pytest.fixture(scope="session")
def monuseg(shared_datasets: Path, shared_cache: Path) -> PreparedDataset:
    return load_prepared(str(shared_datasets / "MoNuSeg"), img_size=32, cache_dir=shared_cache)


def test_glas_counts_binary_masks_and_instance_ids(glas: PreparedDataset, shared_datasets: Path) -> None:
    assert {split: len(data) for split, data in glas.splits.items()} == {"train": 85, "test": 80}
    assert glas.label_kind == "instance"
    for split in glas.splits.values():
        assert split.images.shape[1:] == (32, 32, 3) and set(np.unique(split.masks)) <= {0, 1}
        # The reference-style mask resize only thickens foreground relative to nearest-resized ids.
        assert np.all(split.masks >= (split.instances > 0))
    assert 0.4 < glas.splits["train"].masks.mean() < 0.6
    # The ids of the label file survive (nearest resizing), not just the foreground.
    label = np.asarray(Image.open(shared_datasets / "GlaS" / "Test_Folder" / "labelcol" / "1.png"))
    index = glas.splits["test"].names.index("1")
    assert np.array_equal(glas.splits["test"].instances[index], resize_label(label, 32))
    assert len(np.unique(glas.splits["test"].instances[index])) > 2


def test_monuseg_counts_binary_masks_and_tiff_test_images(
    monuseg: PreparedDataset, shared_datasets: Path
) -> None:
    assert {split: len(data) for split, data in monuseg.splits.items()} == {"train": 24, "val": 6, "test": 14}
    assert monuseg.label_kind == "binary" and monuseg.splits["test"].instances is None
    for split in monuseg.splits.values():
        assert set(np.unique(split.masks)) == {0, 1}
    test_folder = shared_datasets / "MoNuSeg" / "Test_Folder" / "img"
    assert sorted(monuseg.splits["test"].names) == sorted(p.stem for p in test_folder.glob("*.tif"))
    assert monuseg.original_sizes["test"] == [(1000, 1000)] * 14
    tiff = readers.read_image(test_folder / f"{monuseg.splits['test'].names[0]}.tif")
    assert tiff.shape == (1000, 1000, 3) and tiff.std() > 10  # decoded pixels, not a blank page
    assert monuseg.splits["test"].images.std() > 10


def test_real_splits(glas: PreparedDataset, monuseg: PreparedDataset, shared_cache: Path) -> None:
    train, val, test, _ = run_splits(glas, fold=None, repeat=0, num_folds=5)
    assert (len(train), len(val), len(test)) == (68, 17, 80)
    train, val, test, _ = run_splits(monuseg, fold=4, repeat=2, num_folds=5)
    assert (len(train), len(val), len(test)) == (24, 6, 14)
    assert set(val.names) != set(monuseg.splits["val"].names)  # the pool was merged and reshuffled


@pytest.mark.parametrize(("folder", "rows"), [("GlaS", {"train": 85, "test": 80}), ("MoNuSeg", {"val": 6})])
def test_info_on_real_data(
    folder, rows, glas, monuseg, shared_datasets, shared_cache, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(ablation.cli, "COMMAND_MODULES", ("ablation.data.cli",))
    argv = [
        "data",
        "info",
        "--root",
        str(shared_datasets / folder),
        "--img-size",
        "32",
        "--cache-dir",
        str(shared_cache),
    ]
    assert ablation.cli.main(argv) == 0
    out = capsys.readouterr().out
    for split, count in rows.items():
        assert any(line.split()[:2] == [split, str(count)] for line in out.splitlines()), out
    assert ("labels: instance" if folder == "GlaS" else "labels: binary") in out
