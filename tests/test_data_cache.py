"""The prepared-data cache heals: a damaged file is named in one warning line and rebuilt, never a traceback;
a cache folder that cannot be written costs a warning (data kept in memory), a splits file one error line."""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from test_data import info_argv, run_cli, write_reference

from ablation.data import cache as prepared_cache
from ablation.data import load_prepared, readers, run_splits
from ablation.errors import AblationError


def _cache_file(cache: Path) -> Path:
    (path,) = (cache / "prepared").glob("*.npz")
    return path


def _rewrite(path: Path, change: Callable[[dict[str, np.ndarray]], None]) -> None:
    """Rewrite a valid npz with some arrays changed: a file that reads but holds the wrong content."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    change(arrays)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _cut_before_the_directory(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-30])


def _zero_length(path: Path) -> None:
    path.write_bytes(b"")


def _garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())


def _not_a_zip_but_npy(path: Path) -> None:
    np.save(path.with_suffix(".tmp.npy"), np.zeros(3))
    path.write_bytes(path.with_suffix(".tmp.npy").read_bytes())


def _flipped_bytes_inside_an_array(path: Path) -> None:
    # The zip directory stays valid: only the member's CRC-32 can tell.
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("train/images.npy")
    middle = info.header_offset + 30 + len(info.filename) + info.file_size // 2
    data[middle : middle + 8] = bytes(255 - b for b in data[middle : middle + 8])
    path.write_bytes(bytes(data))


def _masks_of_the_wrong_shape(path: Path) -> None:
    _rewrite(path, lambda a: a.update({"train/masks": a["train/masks"][:, :8]}))


def _masks_not_binary(path: Path) -> None:
    _rewrite(path, lambda a: a.update({"test/masks": a["test/masks"] * 255}))


def _images_as_floats(path: Path) -> None:
    _rewrite(path, lambda a: a.update({"train/images": a["train/images"].astype(np.float32)}))


def _names_of_another_dataset(path: Path) -> None:
    _rewrite(path, lambda a: a.update({"train/names": np.array(["x1", "x2", "x3"])}))


def _a_missing_split(path: Path) -> None:
    _rewrite(path, lambda a: [a.pop(k) for k in list(a) if k.startswith("test/")])


def _a_stray_split(path: Path) -> None:
    _rewrite(path, lambda a: a.update({"val/names": a["test/names"]}))


def _an_unknown_label_kind(path: Path) -> None:
    _rewrite(path, lambda a: a.update({"label_kind": np.array("colour")}))


def _written_by_an_older_version(path: Path) -> None:
    _rewrite(path, lambda a: a.update({"version": np.array("3")}))


def _written_without_a_version(path: Path) -> None:
    _rewrite(path, lambda a: [a.pop("version"), a.pop("fingerprint")])


def _a_folder_in_its_place(path: Path) -> None:
    # is_file() is False: not a cache file at all, and the write after preparing cannot replace it.
    path.unlink()
    path.mkdir()


DAMAGE = [
    (_truncated, "damaged"),
    (_cut_before_the_directory, "damaged"),
    (_zero_length, "damaged"),
    (_garbage, "damaged"),
    (_not_a_zip_but_npy, "damaged"),
    (_flipped_bytes_inside_an_array, "damaged .*CRC"),
    (
        _masks_of_the_wrong_shape,
        r"damaged \(train/masks is uint8 \(3, 8, 16\), expected uint8 \(3, 16, 16\)\)",
    ),
    (_masks_not_binary, r"damaged \(test/masks holds values other than 0 and 1\)"),
    (_images_as_floats, r"damaged \(train/images is float32"),
    (_names_of_another_dataset, r"damaged \(train names differ from the dataset's files\)"),
    (_a_missing_split, "damaged .*test/names"),
    (_a_stray_split, r"damaged \(holds split 'val', which the dataset does not have\)"),
    (_an_unknown_label_kind, r"damaged \(label kind 'colour'\)"),
    (_written_by_an_older_version, "damaged \\(written by preparation version 3 for fingerprint"),
    (_written_without_a_version, "damaged \\(written by preparation version none"),
]


@pytest.mark.parametrize(("damage", "reason"), DAMAGE, ids=[d.__name__.strip("_") for d, _ in DAMAGE])
def test_a_damaged_cache_file_is_named_and_rebuilt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage, reason: str
) -> None:
    write_reference(tmp_path / "ds", {"train": 3, "test": 2})
    cache = tmp_path / "cache"
    first = load_prepared(str(tmp_path / "ds"), img_size=16, cache_dir=cache)
    path = _cache_file(cache)
    damage(path)
    capsys.readouterr()
    healed = load_prepared(str(tmp_path / "ds"), img_size=16, cache_dir=cache)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"warning: prepared-data cache {path} is ")
    assert __import__("re").search(reason, err), err
    assert err.rstrip().endswith("preparing the data again")
    for split in first.splits:
        assert np.array_equal(healed.splits[split].images, first.splits[split].images)
        assert np.array_equal(healed.splits[split].masks, first.splits[split].masks)
    # Rebuilt on disk: the next load reads it quietly.
    again = load_prepared(str(tmp_path / "ds"), img_size=16, cache_dir=cache)
    assert capsys.readouterr().err == "" and again.splits["train"].names == first.splits["train"].names


def test_the_cli_heals_a_damaged_cache(tmp_path: Path, monkeypatch, capsys) -> None:
    write_reference(tmp_path / "ds", {"train": 3, "test": 2})
    argv = info_argv(tmp_path / "ds", tmp_path / "c")
    code, healthy, _ = run_cli(monkeypatch, capsys, argv)
    assert code == 0
    for damage in (_truncated, _zero_length, _garbage, _masks_of_the_wrong_shape):
        damage(_cache_file(tmp_path / "c"))
        code, out, err = run_cli(monkeypatch, capsys, argv)
        assert code == 0 and out == healthy
        assert err.startswith("warning: prepared-data cache") and err.count("\n") == 1, err


def test_a_folder_in_place_of_the_cache_file_costs_warnings_not_the_run(tmp_path: Path, capsys) -> None:
    write_reference(tmp_path / "ds", {"train": 3, "test": 2})
    cache = tmp_path / "cache"
    first = load_prepared(str(tmp_path / "ds"), img_size=16, cache_dir=cache)
    path = _cache_file(cache)
    _a_folder_in_its_place(path)
    capsys.readouterr()
    prepared = load_prepared(str(tmp_path / "ds"), img_size=16, cache_dir=cache)
    err = capsys.readouterr().err
    assert err == (
        f"warning: cannot write the prepared-data cache {path} (cannot write {path}: it is a folder); using the "
        "data from memory (set $ABLATION_CACHE or --cache-dir to a writable folder so later runs need not decode "
        "the images again)\n"
    )
    assert np.array_equal(prepared.splits["test"].images, first.splits["test"].images)


def test_a_cache_of_an_older_preparation_version_is_not_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_reference(tmp_path / "ds", {"train": 3, "test": 2})
    cache = tmp_path / "cache"
    monkeypatch.setattr(prepared_cache, "PREPARE_VERSION", prepared_cache.PREPARE_VERSION - 1)
    old = load_prepared(str(tmp_path / "ds"), img_size=16, cache_dir=cache)
    monkeypatch.undo()
    decoded = []
    monkeypatch.setattr(
        readers, "open_image", lambda path, real=readers.open_image: decoded.append(path) or real(path)
    )
    new = load_prepared(str(tmp_path / "ds"), img_size=16, cache_dir=cache)
    assert decoded and new.fingerprint != old.fingerprint  # prepared again, under a new fingerprint
    assert len(list((cache / "prepared").glob("*.npz"))) == 2


def _no_write(path, data) -> None:
    raise PermissionError(13, "Permission denied", str(path))


def test_an_unwritable_cache_folder_prepares_in_memory(tmp_path: Path, monkeypatch, capsys) -> None:
    # Decision: the prepared data is only a cache, so a folder that cannot take it costs a warning, not the run.
    write_reference(tmp_path / "ds", {"train": 3, "test": 2})
    monkeypatch.setattr(prepared_cache, "atomic_write_bytes", _no_write)
    argv = info_argv(tmp_path / "ds", tmp_path / "c")
    code, out, err = run_cli(monkeypatch, capsys, argv)
    assert code == 0 and "train       3" in out
    assert err.startswith("warning: cannot write the prepared-data cache") and "Permission denied" in err
    assert err.count("\n") == 1


def test_a_splits_file_that_cannot_be_written_is_one_error(tmp_path: Path, monkeypatch) -> None:
    # The splits file is the record every run points to: without it a run cannot start.
    write_reference(tmp_path / "ds", {"train": 3, "test": 2})
    prepared = load_prepared(str(tmp_path / "ds"), img_size=16, cache_dir=tmp_path / "c")
    from ablation.data import splits

    monkeypatch.setattr(splits, "atomic_write_json", lambda path, content: _no_write(path, b""))
    with pytest.raises(
        AblationError, match=r"cannot write splits file .*ds-.*\.json \(Permission denied\): "
    ):
        run_splits(prepared, fold=0, num_folds=2)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_cache_folder(tmp_path: Path, capsys) -> None:
    write_reference(tmp_path / "ds", {"train": 3, "test": 2})
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o555)
    try:
        prepared = load_prepared(str(tmp_path / "ds"), img_size=16, cache_dir=cache)
        assert "warning: cannot write the prepared-data cache" in capsys.readouterr().err
        with pytest.raises(AblationError, match="cannot write splits file"):
            run_splits(prepared, fold=None)
    finally:
        cache.chmod(0o755)


def test_training_heals_a_damaged_cache(tmp_path: Path, monkeypatch, capsys) -> None:
    pytest.importorskip("torch")
    from ablation.cli import main

    write_reference(tmp_path / "ds", {"train": 4, "test": 2}, size=(32, 32))
    monkeypatch.setenv("ABLATION_CACHE", str(tmp_path / "cache"))
    load_prepared(str(tmp_path / "ds"), img_size=32, cache_dir=tmp_path / "cache")
    _garbage(_cache_file(tmp_path / "cache"))
    capsys.readouterr()
    argv = [
        "train",
        "--dataset",
        str(tmp_path / "ds"),
        "--skips",
        "1111",
        "--base-channels",
        "4",
        "--img-size",
    ]
    argv += ["32", "--epochs", "1", "--set", "train.min_best_epoch=0", "--set", "train.save_predictions=0"]
    argv += ["--set", "num_folds=2", "--device", "cpu", "--quiet", "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"warning: prepared-data cache {_cache_file(tmp_path / 'cache')} is damaged" in err
    assert "Traceback" not in err and "BadZipFile" not in err


def test_a_grid_heals_a_damaged_cache(tmp_path: Path, monkeypatch, capsys) -> None:
    """``ablation run`` with the real trainer: the damaged file is named once, rebuilt, and every run finishes."""
    pytest.importorskip("torch")
    from ablation.cli import main

    write_reference(tmp_path / "ds", {"train": 4, "test": 2}, size=(32, 32))
    monkeypatch.setenv("ABLATION_CACHE", str(tmp_path / "cache"))
    load_prepared(str(tmp_path / "ds"), img_size=32, cache_dir=tmp_path / "cache")
    damaged = _cache_file(tmp_path / "cache")
    _garbage(damaged)
    spec = tmp_path / "tiny.toml"
    spec.write_text(
        f'datasets = ["{tmp_path / "ds"}"]\nsubsets = ["all", "none"]\nfolds = [0]\nnum_folds = 2\n'
        "[model]\nimg_size = 32\nbase_channels = 4\n"
        "[train]\nmax_epochs = 1\nmin_best_epoch = 0\nsave_predictions = 0\n"
    )
    capsys.readouterr()
    argv = ["run", str(spec), "--out", str(tmp_path / "results"), "--workers", "1", "--no-progress"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"warning: prepared-data cache {damaged} is damaged" in err
    assert "Traceback" not in err and "BadZipFile" not in err
    assert len(list((tmp_path / "results").glob("*/metrics.json"))) == 2
    load_prepared(str(tmp_path / "ds"), img_size=32, cache_dir=tmp_path / "cache")
    assert capsys.readouterr().err == "", "rebuilt on disk: read quietly"


def test_tests_cache_and_look_up_data_in_the_sessions_temporary_folder(tmp_path_factory) -> None:
    from ablation.data.cache import default_cache_dir
    from ablation.data.resolve import default_data_root

    session = tmp_path_factory.getbasetemp().resolve()
    checkout = Path(__file__).resolve().parents[1]
    for folder in (default_cache_dir(), default_data_root()):
        assert folder.is_absolute() and folder.resolve().is_relative_to(session)
        assert not folder.resolve().is_relative_to(checkout)
    assert not any(default_data_root().iterdir()), "the default data folder is empty"
