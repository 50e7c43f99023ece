"""Datasets: reference-layout reading, preparation cache, splits, bad input, synthetic data, the data CLI."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ablation.cli
from ablation.data import DATASETS, kfold, load_prepared, paper_protocol, readers, run_splits, synthetic
from ablation.data.info import dataset_info
from ablation.errors import AblationError

DATA_PACKAGE = Path(__file__).resolve().parents[1] / "ablation" / "data"


def write_reference(
    root: Path,
    counts: dict[str, int],
    *,
    size: tuple[int, int] = (20, 16),
    instance: bool = False,
    seed: int = 0,
) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """A small dataset in the reference layout; returns {split: {name: (image, label)}} as written."""
    rng = np.random.default_rng(seed)
    written: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    width, height = size
    for split, count in counts.items():
        folder = root / readers.SPLIT_FOLDERS[split]
        (folder / "img").mkdir(parents=True)
        (folder / "labelcol").mkdir()
        written[split] = {}
        for i in range(count):
            name = f"{split}{i + 1}"
            image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            label = np.zeros((height, width), dtype=np.uint8)
            label[2:6, 3:9] = 1
            label[9:14, 10 + i % 5 : 16 + i % 5] = 2 if instance else 1
            label = label if instance else label * 255
            Image.fromarray(image).save(folder / "img" / f"{name}.png")
            Image.fromarray(label).save(folder / "labelcol" / f"{name}.png")
            written[split][name] = (image, label)
    return written


def run_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, argv: list[str]
) -> tuple[int, str, str]:
    """Run the real ``ablation`` entry point with only the data commands registered."""
    monkeypatch.setattr(ablation.cli, "COMMAND_MODULES", ("ablation.data.cli",))
    code = ablation.cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def info_argv(root: Path, cache: Path, img_size: int = 16) -> list[str]:
    """``ablation data info`` of the dataset folder ``root`` at ``img_size``, cached in ``cache``."""
    return ["data", "info", "--root", str(root), "--img-size", str(img_size), "--cache-dir", str(cache)]


# --- architecture -----------------------------------------------------------------------------------------------


def test_data_modules_except_augment_do_not_import_torch() -> None:
    for path in DATA_PACKAGE.glob("*.py"):
        if path.name == "augment.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n == "torch" or n.startswith("torch.") for n in names), (
                f"{path.name} imports torch"
            )
    code = "import sys, ablation.data, ablation.data.cli, ablation.data.info, ablation.data.official; "
    code += "sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# --- reading and preparing --------------------------------------------------------------------------------------


def test_load_prepared_resizes_and_binarises(tmp_path: Path) -> None:
    written = write_reference(tmp_path / "ds", {"train": 4, "val": 2, "test": 3})
    prepared = load_prepared(
        str(tmp_path / "ds"), img_size=16, cache_dir=tmp_path / "cache", interpolation="bilinear"
    )
    assert prepared.name == "ds" and prepared.label_kind == "binary"
    assert {split: len(data) for split, data in prepared.splits.items()} == {"train": 4, "val": 2, "test": 3}
    train = prepared.splits["train"]
    assert train.names == ["train1", "train2", "train3", "train4"]
    assert train.images.shape == (4, 16, 16, 3) and train.images.dtype == np.uint8
    assert train.masks.shape == (4, 16, 16) and train.masks.dtype == np.uint8
    assert set(np.unique(train.masks)) == {0, 1} and train.instances is None
    assert prepared.original_sizes["train"] == [(20, 16)] * 4
    # Nearest resizing of the mask: compare with an independent index computation.
    label = written["train"]["train1"][1] > 0
    rows = np.floor((np.arange(16) + 0.5) * 16 / 16).astype(int)
    cols = np.floor((np.arange(16) + 0.5) * 20 / 16).astype(int)
    assert np.array_equal(train.masks[0], label[np.ix_(rows, cols)])


def test_reference_interpolation_matches_an_independent_opencv_style_resize(tmp_path: Path) -> None:
    # OpenCV INTER_LINEAR: output pixel i samples source position (i + 0.5) * in / out - 0.5, clamped at the
    # borders, blending the two neighbours linearly; masks are resized as 0/255 and thresholded at > 0.
    written = write_reference(tmp_path / "ds", {"train": 2, "test": 1}, size=(20, 16))
    prepared = load_prepared(str(tmp_path / "ds"), img_size=8, cache_dir=tmp_path / "cache")
    image, label = written["train"]["train1"]

    def resize_1d(values: np.ndarray, out: int, axis: int) -> np.ndarray:
        size = values.shape[axis]
        result = []
        for i in range(out):
            position = min(max((i + 0.5) * size / out - 0.5, 0.0), size - 1)
            low = int(np.floor(position))
            high = min(low + 1, size - 1)
            weight = position - low
            a, b = np.take(values, low, axis=axis), np.take(values, high, axis=axis)
            result.append(a * (1 - weight) + b * weight)
        return np.stack(result, axis=axis)

    expected = resize_1d(resize_1d(image.astype(np.float64), 8, 0), 8, 1)
    assert np.abs(prepared.splits["train"].images[0].astype(np.float64) - expected).max() <= 1.0
    blended = resize_1d(resize_1d((label > 0).astype(np.float64) * 255, 8, 0), 8, 1)
    assert np.array_equal(prepared.splits["train"].masks[0], (np.rint(blended) >= 1).astype(np.uint8))


def test_native_size_keeps_pixels_and_instance_ids(tmp_path: Path) -> None:
    written = write_reference(tmp_path / "ds", {"train": 3, "test": 2}, size=(16, 16), instance=True)
    prepared = load_prepared(str(tmp_path / "ds"), img_size=16, cache_dir=tmp_path / "cache")
    assert prepared.label_kind == "instance"
    image, label = written["test"]["test2"]
    assert np.array_equal(prepared.splits["test"].images[1], image)
    assert np.array_equal(prepared.splits["test"].instances[1], label)
    assert np.array_equal(prepared.splits["test"].masks[1], label > 0)
    assert prepared.splits["test"].instances.dtype == np.int32


def test_instances_folder_is_preferred_over_labelcol_ids(tmp_path: Path) -> None:
    written = write_reference(tmp_path / "ds", {"train": 2, "test": 2}, size=(16, 16))
    for split, samples in written.items():
        folder = tmp_path / "ds" / readers.SPLIT_FOLDERS[split] / "instances"
        folder.mkdir()
        for name, (_, label) in samples.items():
            Image.fromarray((label > 0).astype(np.uint16)).save(folder / f"{name}.png")
    folder = tmp_path / "ds" / "Train_Folder"
    ids = np.zeros((16, 16), dtype=np.uint16)
    ids[2:6, 3:9] = 700
    ids[9:14, 10:16] = 3
    Image.fromarray(ids).save(folder / "instances" / "train1.png")
    prepared = load_prepared(str(tmp_path / "ds"), img_size=16, cache_dir=tmp_path / "cache")
    assert prepared.label_kind == "instance"
    assert set(np.unique(prepared.splits["train"].instances[0])) == {0, 3, 700}
    assert set(np.unique(prepared.splits["train"].masks[0])) == {0, 1}
    ids[0, 0] = 9  # an instance map must cover exactly the mask's pixels
    Image.fromarray(ids).save(folder / "instances" / "train1.png")
    with pytest.raises(AblationError, match="instance map .*train1.png does not cover the same pixels"):
        load_prepared(str(tmp_path / "ds"), img_size=16, cache_dir=tmp_path / "cache")


def test_instance_maps_for_some_images_only_are_refused(tmp_path: Path) -> None:
    # With 0/255 labelcol masks, an image without an instance map would count as one object.
    write_reference(tmp_path / "ds", {"train": 2, "test": 2}, size=(16, 16))
    folder = tmp_path / "ds" / "Train_Folder"
    (folder / "instances").mkdir()
    ids = np.zeros((16, 16), dtype=np.uint16)
    ids[2:6, 3:9] = 1
    ids[9:14, 10:16] = 2
    Image.fromarray(ids).save(folder / "instances" / "train1.png")
    with pytest.raises(AblationError, match=r"image .*train2.png has no instance map .*instances/train2.png"):
        load_prepared(str(tmp_path / "ds"), img_size=16, cache_dir=tmp_path / "cache")


def test_cache_is_reused_without_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_reference(tmp_path / "ds", {"train": 3, "test": 2})
    first = load_prepared(str(tmp_path / "ds"), img_size=16, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache" / "prepared").glob("*.npz"))) == 1

    def no_decoding(path: Path) -> None:
        raise AssertionError(f"decoded {path} although the cache holds it")

    monkeypatch.setattr(readers, "open_image", no_decoding)
    second = load_prepared(str(tmp_path / "ds"), img_size=16, cache_dir=tmp_path / "cache")
    assert second.fingerprint == first.fingerprint
    for split in first.splits:
        assert second.splits[split].names == first.splits[split].names
        assert np.array_equal(second.splits[split].images, first.splits[split].images)
        assert np.array_equal(second.splits[split].masks, first.splits[split].masks)
    # Another size or interpolation, or a changed source file, is a different preparation.
    with pytest.raises(AssertionError, match="decoded"):
        load_prepared(str(tmp_path / "ds"), img_size=8, cache_dir=tmp_path / "cache")
    with pytest.raises(AssertionError, match="decoded"):
        load_prepared(
            str(tmp_path / "ds"), img_size=16, cache_dir=tmp_path / "cache", interpolation="bicubic"
        )
    changed = tmp_path / "ds" / "Test_Folder" / "img" / "test1.png"
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="decoded"):
        load_prepared(str(tmp_path / "ds"), img_size=16, cache_dir=tmp_path / "cache")


def test_named_datasets_resolve_under_the_data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_reference(tmp_path / "root" / "GlaS", {"train": 2, "test": 2})
    prepared = load_prepared("glas", img_size=16, data_root=tmp_path / "root", cache_dir=tmp_path / "cache")
    assert prepared.name == "glas" and len(prepared.splits["train"]) == 2
    monkeypatch.setenv("ABLATION_DATA", str(tmp_path / "root"))
    assert (
        load_prepared("glas", img_size=16, cache_dir=tmp_path / "cache").fingerprint == prepared.fingerprint
    )
    with pytest.raises(
        AblationError, match=r"'monuseg' not found at .*MoNuSeg.*monuseg-official.*folder path"
    ):
        load_prepared("monuseg", img_size=16, cache_dir=tmp_path / "cache")


# --- bad input --------------------------------------------------------------------------------------------------


def _image_without_mask(root: Path) -> str:
    Image.new("RGB", (20, 16)).save(root / "Train_Folder" / "img" / "extra.png")
    return "extra.png has no mask"


def _mask_without_image(root: Path) -> str:
    Image.new("L", (20, 16)).save(root / "Test_Folder" / "labelcol" / "orphan.png")
    return "orphan.png has no image"


def _corrupt_image(root: Path) -> str:
    (root / "Train_Folder" / "img" / "train2.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return "cannot read image file .*train2.png"


def _size_mismatch(root: Path) -> str:
    Image.new("L", (10, 10)).save(root / "Test_Folder" / "labelcol" / "test1.png")
    return "mask .*test1.png is 10x10 but its image test1.png is 20x16"


def _empty_split(root: Path) -> str:
    for path in (root / "Test_Folder").rglob("*.png"):
        path.unlink()
    return "Test_Folder.img holds no images"


def _missing_test_folder(root: Path) -> str:
    for path in sorted((root / "Test_Folder").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (root / "Test_Folder").rmdir()
    return "Test_Folder is missing"


def _missing_labelcol(root: Path) -> str:
    for path in (root / "Train_Folder" / "labelcol").glob("*"):
        path.unlink()
    (root / "Train_Folder" / "labelcol").rmdir()
    return "labelcol is missing"


def _duplicate_name(root: Path) -> str:
    Image.new("RGB", (20, 16)).save(root / "Train_Folder" / "img" / "train1.tif")
    return "train1.png and .*train1.tif have the same name"


def _not_a_layout(root: Path) -> str:
    for path in sorted(root.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    Image.new("RGB", (8, 8)).save(root / "train_1_anno.bmp")
    return "not in the reference layout: .*official GlaS download.*glas-official"


def _mask_with_other_values(root: Path) -> str:
    # One mask with a stray value among 0/255 masks: read as ids it would make every other mask one object.
    label = np.zeros((16, 20), dtype=np.uint8)
    label[2:6, 3:9] = 7
    Image.fromarray(label).save(root / "Train_Folder" / "labelcol" / "train2.png")
    return (
        r"mask .*train2.png holds values \{0, 7\}: expected binary \{0, 255\}/\{0, 1\} masks like the other "
        "files, or instance ids in every file"
    )


def _mask_with_255_and_other_values(root: Path) -> str:
    label = np.zeros((16, 20), dtype=np.uint8)
    label[2:6, 3:9] = 255
    label[9:12, 3:9] = 7
    Image.fromarray(label).save(root / "Test_Folder" / "labelcol" / "test2.png")
    return r"mask .*test2.png holds values \{0, 7, 255\}: 255 marks binary foreground"


def _sixteen_bit_ids_among_binary_masks(root: Path) -> str:
    label = np.zeros((16, 20), dtype=np.uint16)
    label[2:6, 3:9] = 10964
    Image.fromarray(label).save(root / "Train_Folder" / "labelcol" / "train1.png")
    return r"mask .*train1.png holds values \{0, 10964\}: expected binary"


def _colour_mask(root: Path) -> str:
    label = np.zeros((16, 20, 3), dtype=np.uint8)
    label[2:6, 3:9] = (255, 0, 0)
    label[9:12, 3:9] = 255
    Image.fromarray(label).save(root / "Train_Folder" / "labelcol" / "train1.png")
    return "mask .*train1.png is RGB: expected a single-channel mask"


def _float_image_out_of_range(root: Path) -> str:
    image = root / "Train_Folder" / "img" / "train2.png"
    image.unlink()
    Image.fromarray(np.full((16, 20), 300.0, dtype=np.float32)).save(image.with_suffix(".tif"))
    return r"image .*train2.tif is 32-bit float with values 300\.\.300: expected \[0, 1\] or \[0, 255\]"


def _eight_bit_values_in_a_16_bit_image(root: Path) -> str:
    image = root / "Test_Folder" / "img" / "test1.png"
    Image.fromarray(np.full((16, 20), 120, dtype=np.uint16)).save(image)
    return "image .*test1.png is 16-bit but holds values only up to 120"


def _broken_link_image(root: Path) -> str:
    image = root / "Train_Folder" / "img" / "train2.png"
    image.unlink()
    image.symlink_to(root / "nowhere.png")
    return "img/train2.png is a broken link .*nowhere.png.*: fix or remove it"


def _folder_named_like_an_image(root: Path) -> str:
    (root / "Train_Folder" / "img" / "extra.png").mkdir()
    Image.new("L", (20, 16)).save(root / "Train_Folder" / "labelcol" / "extra.png")
    return "img/extra.png is a folder, not an image file"


def _root_is_a_file(root: Path) -> str:
    for path in sorted(root.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    root.rmdir()
    root.write_text("not a dataset")
    return "dataset '.*ds' is a file, not a folder: give a folder in the reference layout"


BAD_INPUTS = [
    _mask_with_other_values,
    _mask_with_255_and_other_values,
    _sixteen_bit_ids_among_binary_masks,
    _colour_mask,
    _float_image_out_of_range,
    _eight_bit_values_in_a_16_bit_image,
    _broken_link_image,
    _folder_named_like_an_image,
    _root_is_a_file,
    _image_without_mask,
    _mask_without_image,
    _corrupt_image,
    _size_mismatch,
    _empty_split,
    _missing_test_folder,
    _missing_labelcol,
    _duplicate_name,
    _not_a_layout,
]


@pytest.mark.parametrize("spoil", BAD_INPUTS, ids=lambda f: f.__name__.strip("_"))
def test_bad_input_gives_one_line_error(tmp_path: Path, monkeypatch, capsys, spoil) -> None:
    root = tmp_path / "ds"
    write_reference(root, {"train": 2, "test": 2})
    expected = spoil(root)
    with pytest.raises(AblationError, match=expected):
        load_prepared(str(root), img_size=16, cache_dir=tmp_path / "cache")
    code, out, err = run_cli(
        monkeypatch, capsys, ["data", "info", "--root", str(root), "--cache-dir", str(tmp_path)]
    )
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1, err


def test_cache_folder_that_is_a_file_is_refused_up_front(tmp_path: Path, monkeypatch, capsys) -> None:
    write_reference(tmp_path / "ds", {"train": 2, "test": 2})
    blocker = tmp_path / "afile.txt"
    blocker.write_text("x")
    with pytest.raises(AblationError, match=f"cache folder {blocker} is a file: choose a folder"):
        load_prepared(str(tmp_path / "ds"), img_size=16, cache_dir=blocker)
    with pytest.raises(
        AblationError, match=f"cache folder {blocker}/sub cannot be made: {blocker} is a file"
    ):
        load_prepared("synthetic-nuclei", img_size=16, cache_dir=blocker / "sub")
    for cache in (blocker, blocker / "sub"):
        argv = info_argv(tmp_path / "ds", cache)
        code, out, err = run_cli(monkeypatch, capsys, argv)
        assert code == 2 and out == "" and err.startswith("error: cache folder") and err.count("\n") == 1
    root_file = tmp_path / "root.txt"
    root_file.write_text("x")
    with pytest.raises(AblationError, match=f"data root {root_file} is a file, not a folder"):
        load_prepared("glas", img_size=16, data_root=root_file, cache_dir=tmp_path / "cache")


def test_unknown_names_list_the_choices(tmp_path: Path) -> None:
    with pytest.raises(
        AblationError, match="unknown dataset 'nope': choose one of glas, monuseg, synthetic-nuclei"
    ):
        load_prepared("nope", img_size=16, cache_dir=tmp_path)
    with pytest.raises(
        AblationError, match="unknown interpolation 'area': choose one of reference, bilinear, bicubic"
    ):
        load_prepared("synthetic-nuclei", img_size=16, cache_dir=tmp_path, interpolation="area")
    assert set(DATASETS) == {"glas", "monuseg", "synthetic-nuclei", "synthetic-glands"}


def test_cli_exits_non_zero_for_a_missing_dataset(tmp_path: Path) -> None:
    env = {**os.environ, "ABLATION_DATA": str(tmp_path), "ABLATION_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-m", "ablation", "data", "info", "--root", "glas"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: dataset 'glas' not found") and result.stderr.count("\n") == 1


# --- splits -----------------------------------------------------------------------------------------------------


def test_kfold_is_disjoint_covering_and_deterministic() -> None:
    names = [f"img{i}" for i in range(23)]
    folds = kfold(names, num_folds=5, seed=3, repeat=1)
    assert sorted(n for fold in folds for n in fold) == sorted(names)
    assert sum(len(fold) for fold in folds) == len(names)  # disjoint
    assert sorted(len(fold) for fold in folds) == [4, 4, 5, 5, 5]
    assert folds == kfold(list(reversed(names)), num_folds=5, seed=3, repeat=1)
    assert folds != kfold(names, num_folds=5, seed=3, repeat=2)
    assert folds != kfold(names, num_folds=5, seed=4, repeat=1)
    with pytest.raises(
        AblationError,
        match=r"num_folds 30 exceeds the 23 images .*: set num_folds to at most 23 \(e.g. --set num_folds=2\)"
        ", or add a Val_Folder",
    ):
        kfold(names, num_folds=30)
    with pytest.raises(AblationError, match="exceeds the 1 images .*needs at least 2 training images"):
        kfold(names[:1], num_folds=2)
    assert paper_protocol() == [(r, f) for r in range(3) for f in range(5)]


def test_run_splits_official_and_kfold(tmp_path: Path) -> None:
    write_reference(tmp_path / "ds", {"train": 8, "val": 3, "test": 4})
    prepared = load_prepared(str(tmp_path / "ds"), img_size=16, cache_dir=tmp_path / "cache")
    train, val, test, record = run_splits(prepared, fold=None, repeat=0, num_folds=5)
    assert train.names == prepared.splits["train"].names and val.names == prepared.splits["val"].names
    assert test.names == prepared.splits["test"].names
    assert record["train"] == train.names and record["split"] == "official"
    assert Path(record["splits_file"]).parent == tmp_path / "cache" / "splits"
    json.dumps(record)
    pool = set(prepared.splits["train"].names) | set(prepared.splits["val"].names)
    seen_val: list[str] = []
    for fold in range(5):
        train, val, test, record = run_splits(prepared, fold=fold, repeat=2, num_folds=5, seed=7)
        assert not set(train.names) & set(val.names) and set(train.names) | set(val.names) == pool
        assert test.names == prepared.splits["test"].names and record["split"] == f"r2f{fold}"
        index = prepared.splits["train"].names.index(train.names[0])
        assert np.array_equal(train.images[0], prepared.splits["train"].images[index])
        seen_val += val.names
    assert sorted(seen_val) == sorted(pool)
    with pytest.raises(AblationError, match="fold 5 out of range: choose 0..4"):
        run_splits(prepared, fold=5, repeat=0, num_folds=5)


def test_without_val_folder_validation_is_fold_zero(tmp_path: Path) -> None:
    write_reference(tmp_path / "ds", {"train": 10, "test": 2})
    prepared = load_prepared(str(tmp_path / "ds"), img_size=16, cache_dir=tmp_path / "cache")
    official = run_splits(prepared, fold=None, repeat=0, num_folds=5)[3]
    fold0 = run_splits(prepared, fold=0, repeat=0, num_folds=5)[3]
    assert (
        official["val"] == fold0["val"] and official["train"] == fold0["train"] and len(official["val"]) == 2
    )


def test_edited_splits_file_takes_effect_and_is_validated(tmp_path: Path) -> None:
    write_reference(tmp_path / "ds", {"train": 10, "test": 2})
    prepared = load_prepared(str(tmp_path / "ds"), img_size=16, cache_dir=tmp_path / "cache")
    record = run_splits(prepared, fold=1, repeat=0, num_folds=5)[3]
    path = Path(record["splits_file"])
    content = json.loads(path.read_text())
    entry = content["splits"]["r0f1"]
    moved = entry["train"].pop()
    entry["val"].append(moved)
    path.write_text(json.dumps(content))
    train, val, _, record = run_splits(prepared, fold=1, repeat=0, num_folds=5)
    assert moved in val.names and moved not in train.names and record["val"] == val.names

    entry["train"].append(moved)  # now in both
    path.write_text(json.dumps(content))
    with pytest.raises(AblationError, match=rf"splits file {path}: r0f1 has images in both train and val"):
        run_splits(prepared, fold=1, repeat=0, num_folds=5)
    entry["train"][-1] = "ghost"
    path.write_text(json.dumps(content))
    with pytest.raises(AblationError, match=r"r0f1.train names unknown images \['ghost'\]"):
        run_splits(prepared, fold=1, repeat=0, num_folds=5)
    path.write_text("{not json")
    with pytest.raises(AblationError, match=f"splits file {path} is not valid JSON"):
        run_splits(prepared, fold=1, repeat=0, num_folds=5)


# --- synthetic data ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", synthetic.KINDS)
def test_synthetic_data_is_deterministic_with_instances(kind: str) -> None:
    images, instances = synthetic.generate(kind, count=6, img_size=48, seed=1)
    assert images.shape == (6, 48, 48, 3) and images.dtype == np.uint8
    assert instances.shape == (6, 48, 48) and instances.dtype == np.int32
    again = synthetic.generate(kind, count=6, img_size=48, seed=1)
    assert np.array_equal(images, again[0]) and np.array_equal(instances, again[1])
    assert not np.array_equal(images, synthetic.generate(kind, count=6, img_size=48, seed=2)[0])
    for ids in instances:  # ids are consecutive 1..K
        present = np.unique(ids[ids > 0])
        assert np.array_equal(present, np.arange(1, len(present) + 1)) and len(present) >= 2
    low, high = {"nuclei": (0.08, 0.35), "glands": (0.15, 0.65)}[kind]
    assert low < (instances > 0).mean() < high


@pytest.mark.parametrize("kind", synthetic.KINDS)
def test_synthetic_data_is_not_solved_by_a_colour_threshold(kind: str) -> None:
    images, instances = synthetic.generate(kind, count=10, img_size=64, seed=0)
    truth = instances > 0
    best = 0.0
    for channel in (images.mean(axis=-1), *np.moveaxis(images.astype(float), -1, 0)):
        for threshold in np.percentile(channel, np.arange(2, 100, 2)):
            for guess in (channel < threshold, channel > threshold):
                best = max(best, 2 * (guess & truth).sum() / (guess.sum() + truth.sum()))
    assert 0.5 < best < 0.95  # learnable, yet not a colour threshold


def test_synthetic_generation_is_fast() -> None:
    start = time.perf_counter()
    for kind in synthetic.KINDS:
        synthetic.generate(kind, count=50, img_size=64)
    assert (time.perf_counter() - start) / 2 < 1.0  # about 0.15 s each on one core; slack for a busy machine


def test_synthetic_datasets_load_and_split(tmp_path: Path) -> None:
    prepared = load_prepared("synthetic-nuclei", img_size=32, cache_dir=tmp_path)
    assert prepared.label_kind == "instance"
    assert {split: len(data) for split, data in prepared.splits.items()} == synthetic.DEFAULT_COUNTS
    again = load_prepared("synthetic-nuclei", img_size=32, cache_dir=tmp_path)
    assert again.fingerprint == prepared.fingerprint
    assert np.array_equal(again.splits["test"].images, prepared.splits["test"].images)
    assert (
        load_prepared("synthetic-glands", img_size=32, cache_dir=tmp_path).fingerprint != prepared.fingerprint
    )
    train, val, test, record = run_splits(prepared, fold=3, repeat=1, num_folds=5)
    assert len(train) + len(val) == 30 and len(test) == 12 and not set(record["train"]) & set(record["val"])


# --- info -------------------------------------------------------------------------------------------------------


def test_info_summarises_a_dataset(tmp_path: Path, monkeypatch, capsys) -> None:
    write_reference(tmp_path / "ds", {"train": 3, "test": 2}, instance=True)
    info = dataset_info(str(tmp_path / "ds"), img_size=16, cache_dir=tmp_path / "cache")
    assert info["label_kind"] == "instance"
    assert info["splits"]["train"]["images"] == 3 and info["splits"]["train"]["sizes"] == {"20x16": 3}
    assert info["splits"]["train"]["instances"] == 6
    argv = info_argv(tmp_path / "ds", tmp_path / "c")
    code, out, _ = run_cli(monkeypatch, capsys, argv)
    assert code == 0 and "labels: instance" in out
    assert any(line.split()[:2] == ["train", "3"] for line in out.splitlines())
    assert info["splits"]["train"]["empty_masks"] == []


# --- mask coding ------------------------------------------------------------------------------------------------


def _save_masks(folder: Path, masks: dict[str, np.ndarray]) -> None:
    for name, mask in masks.items():
        Image.fromarray(mask).save(folder / "labelcol" / f"{name}.png")


def test_instance_maps_may_hold_one_object_or_be_16_bit_or_empty(tmp_path: Path, monkeypatch, capsys) -> None:
    # GlaS as published: ids 0..N per file, a one-gland image holds {0, 1}; empty images exist.
    write_reference(tmp_path / "ds", {"train": 4, "test": 2}, instance=True)
    single = np.zeros((16, 20), dtype=np.uint8)
    single[3:7, 4:9] = 1
    wide = np.zeros((16, 20), dtype=np.uint16)
    wide[1:4, 1:5], wide[8:12, 8:14] = 300, 2
    _save_masks(tmp_path / "ds" / "Train_Folder", {"train1": single, "train2": wide})
    _save_masks(tmp_path / "ds" / "Train_Folder", {"train3": np.zeros((16, 20), dtype=np.uint8)})
    prepared = load_prepared(str(tmp_path / "ds"), img_size=16, cache_dir=tmp_path / "cache")
    assert prepared.label_kind == "instance" and prepared.empty_masks == {"train": ["train3"], "test": []}
    instances = prepared.splits["train"].instances
    assert set(np.unique(instances[0])) == {0, 1} and set(np.unique(instances[1])) == {0, 2, 300}
    assert not instances[2].any() and not prepared.splits["train"].masks[2].any()
    # The cached copy keeps the list of empty masks; info reports them.
    cached = load_prepared(str(tmp_path / "ds"), img_size=16, cache_dir=tmp_path / "cache")
    assert cached.empty_masks == prepared.empty_masks
    argv = info_argv(tmp_path / "ds", tmp_path / "cache")
    code, out, _ = run_cli(monkeypatch, capsys, argv)
    assert code == 0 and "train: 1 image(s) with an all-zero mask: train3" in out
    train_row = next(line.split() for line in out.splitlines() if line.startswith("train "))
    assert train_row[1] == "4" and train_row[4] == "1"  # images, ..., empty


def test_binary_masks_may_mix_255_and_1_coding_per_file(tmp_path: Path) -> None:
    written = write_reference(tmp_path / "ds", {"train": 3, "test": 2}, size=(16, 16))
    ones = (written["train"]["train1"][1] > 0).astype(np.uint8)
    grey_rgb = np.repeat(written["train"]["train2"][1][..., None], 3, axis=2)  # a grey mask saved as RGB
    _save_masks(tmp_path / "ds" / "Train_Folder", {"train1": ones, "train2": grey_rgb})
    prepared = load_prepared(str(tmp_path / "ds"), img_size=16, cache_dir=tmp_path / "cache")
    assert prepared.label_kind == "binary" and prepared.splits["train"].instances is None
    for index, name in enumerate(["train1", "train2", "train3"]):
        assert np.array_equal(prepared.splits["train"].masks[index], written["train"][name][1] > 0)


def test_a_stray_binary_mask_among_instance_maps_is_named(tmp_path: Path) -> None:
    write_reference(tmp_path / "ds", {"train": 3, "test": 2}, instance=True)
    stray = np.zeros((16, 20), dtype=np.uint8)
    stray[2:6, 3:9] = 255
    _save_masks(tmp_path / "ds" / "Test_Folder", {"test1": stray})
    with pytest.raises(
        AblationError,
        match=r"mask .*test1.png holds values \{0, 255\}: expected instance ids 1..N like the other files, .*"
        r"\(1 masks hold \{0, 255\}, 4 hold other values\)",
    ):
        load_prepared(str(tmp_path / "ds"), img_size=16, cache_dir=tmp_path / "cache")


def test_a_dataset_of_zero_one_masks_only_is_binary(tmp_path: Path) -> None:
    written = write_reference(tmp_path / "ds", {"train": 2, "test": 2}, size=(16, 16))
    for split, samples in written.items():
        folder = tmp_path / "ds" / readers.SPLIT_FOLDERS[split]
        _save_masks(folder, {name: (label > 0).astype(np.uint8) for name, (_, label) in samples.items()})
    prepared = load_prepared(str(tmp_path / "ds"), img_size=16, cache_dir=tmp_path / "cache")
    assert prepared.label_kind == "binary"
    assert np.array_equal(prepared.splits["test"].masks[1], written["test"]["test2"][1] > 0)


def test_every_interpolation_a_config_accepts_resizes() -> None:
    from ablation.config import INTERPOLATIONS
    from ablation.data.resize import resize_image

    image = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    for name in INTERPOLATIONS:
        assert resize_image(image, 16, name).shape == (16, 16, 3), name
