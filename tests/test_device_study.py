"""The budget study on a machine without the datasets (docs/device.md): the carried prepared cache, `ablation run
--set`, and the device script's record of a call."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_data import run_cli, write_reference

from ablation.cli import main
from ablation.config import ModelConfig, RunConfig, TrainConfig
from ablation.config_text import parse_assignments
from ablation.data import load_prepared, run_splits
from ablation.data.cache import find_prepared_cache
from ablation.data.carry import copy_prepared
from ablation.data.prepare import dataset_fingerprint, split_sizes
from ablation.errors import AblationError
from ablation.grid import expand_spec, load_spec
from ablation.grid.cost import estimate_cost
from ablation.grid.datasets import check_datasets
from ablation.grid.spec import override_spec
from ablation.io import read_json
from ablation.store.layout import run_name
from ablation.store.state import StaleCheck
from ablation.store.writers import write_run_config

ROOT = Path(__file__).resolve().parents[1]
DEVICE = ROOT / "experiments" / "device"
SIZE = 32


@pytest.fixture
def carried(tmp_path: Path) -> dict[str, Path]:
    """A GlaS-like named dataset here, its prepared copy in ``carry``, and an empty data root."""
    data = tmp_path / "data"
    write_reference(data / "GlaS", {"train": 6, "test": 3}, instance=True)
    carry = tmp_path / "carry"
    copy_prepared("glas", to=carry, img_size=SIZE, num_folds=3, data_root=data, cache_dir=tmp_path / "home")
    (tmp_path / "empty").mkdir()
    return {"data": data, "carry": carry, "home": tmp_path / "home", "empty": tmp_path / "empty"}


def test_a_carried_cache_stands_in_for_the_missing_source(carried: dict[str, Path], capsys) -> None:
    here = load_prepared("glas", img_size=SIZE, data_root=carried["data"], cache_dir=carried["home"])
    there = load_prepared("glas", img_size=SIZE, data_root=carried["empty"], cache_dir=carried["carry"])
    note = capsys.readouterr().err.strip().splitlines()
    assert len(note) == 1 and note[0].startswith("note: dataset 'glas' has no folder here")
    assert (there.name, there.fingerprint, there.source_fingerprint, there.label_kind) == (
        here.name,
        here.fingerprint,
        here.source_fingerprint,
        here.label_kind,
    )
    assert list(there.splits) == list(here.splits) == ["train", "test"]
    for split in here.splits:
        a, b = here.splits[split], there.splits[split]
        assert a.names == b.names
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.masks, b.masks)
        np.testing.assert_array_equal(a.instances, b.instances)
    assert there.original_sizes == here.original_sizes
    # The carried splits file, not a new one: an edit made here travels.
    edited = read_json(next((carried["carry"] / "splits").glob("glas-*.json")))
    assert edited["source_fingerprint"] == here.source_fingerprint
    for fold in range(3):
        *_, record_here = run_splits(here, fold=fold, num_folds=3)
        *_, record_there = run_splits(there, fold=fold, num_folds=3)
        assert Path(record_there["splits_file"]).parent == (carried["carry"] / "splits").resolve()
        assert {k: v for k, v in record_here.items() if k != "splits_file"} == {
            k: v for k, v in record_there.items() if k != "splits_file"
        }


def test_the_copy_is_compressed_and_named_as_the_cache_names_it(carried: dict[str, Path]) -> None:
    (home,) = (carried["home"] / "prepared").glob("*.npz")
    (copy,) = (carried["carry"] / "prepared").glob("*.npz")
    assert copy.name == home.name
    assert find_prepared_cache("glas", img_size=SIZE, cache_dir=carried["carry"]) == (
        copy,
        home.name.rsplit("-", 1)[1].removesuffix(".npz"),
    )
    assert find_prepared_cache("glas", img_size=64, cache_dir=carried["carry"]) is None
    assert find_prepared_cache("synthetic-nuclei", img_size=SIZE, cache_dir=carried["carry"]) is None


def test_a_run_from_the_carried_cache_is_the_run_from_the_source(
    carried: dict[str, Path], tmp_path: Path, monkeypatch, one_torch_thread
) -> None:
    from ablation.train import train_run

    config = RunConfig(
        dataset="glas",
        fold=1,
        num_folds=3,
        model=ModelConfig(base_channels=4, img_size=SIZE),
        train=TrainConfig(max_epochs=2, batch_size=2, min_best_epoch=0, save_predictions=0),
    )
    folders = {}
    for where, data, cache in (("here", "data", "home"), ("there", "empty", "carry")):
        monkeypatch.setenv("ABLATION_DATA", str(carried[data]))
        monkeypatch.setenv("ABLATION_CACHE", str(carried[cache]))
        folders[where] = tmp_path / where / run_name(config)
        train_run(config, folders[where], device="cpu", progress=False)
    records = {where: read_json(folder / "config.json") for where, folder in folders.items()}
    metrics = {where: read_json(folder / "metrics.json") for where, folder in folders.items()}
    for key in ("run_id", "run_name"):
        assert records["here"][key] == records["there"][key]
    assert records["here"]["env"]["dataset_fingerprint"] == records["there"]["env"]["dataset_fingerprint"]
    for part in ("split", "train", "val", "test"):
        assert records["here"]["env"]["splits"][part] == records["there"]["env"]["splits"][part]
    assert metrics["here"]["dice_mean"] == metrics["there"]["dice_mean"]  # same bytes, same CPU arithmetic

    # The device script's record of a call: what finished, and training images per second.
    record = _call_record().call_record(
        tmp_path / "there",
        before=[],
        started=0.0,
        budget=60,
        phases=[{"spec": "s.toml", "exit": 0, "seconds": 2.0}],
        device={"device": "cpu", "torch": "x", "python": "3"},
    )
    assert record["finished"] == [run_name(config)] and record["runs_done_this_call"] == 1
    assert record["train_images"] == 4 * 2 and record["val_images"] == 2 * 2  # 6 images, 3 folds, 2 epochs
    assert record["train_images_per_s"] == 4.0 and record["run_states"] == {"done": 1}
    again = _call_record().call_record(
        tmp_path / "there", before=record["finished"], started=0.0, budget=60, phases=[], device={}
    )
    assert again["runs_done_this_call"] == 0 and again["train_images_per_s"] is None


def _rewrite_without(path: Path, key: str) -> None:
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files if name != key}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())


def test_a_cache_that_cannot_stand_alone_is_one_error_line(carried: dict[str, Path], monkeypatch, capsys):
    (copy,) = (carried["carry"] / "prepared").glob("*.npz")
    _rewrite_without(copy, "source_fingerprint")  # as written before caches recorded it
    monkeypatch.setenv("ABLATION_DATA", str(carried["empty"]))
    argv = ["data", "info", "--root", "glas", "--img-size", str(SIZE), "--cache-dir", str(carried["carry"])]
    code, _, err = run_cli(monkeypatch, capsys, argv)
    assert code == 2 and err.count("\n") == 1
    assert str(copy) in err and "source fingerprint" in err and "ablation data prepare --root glas" in err
    # With the source present the same file is still a valid cache.
    load_prepared("glas", img_size=SIZE, data_root=carried["data"], cache_dir=carried["carry"])


def test_several_prepared_files_without_the_source_are_named(carried: dict[str, Path], monkeypatch, capsys):
    image = next((carried["data"] / "GlaS" / "Train_Folder" / "img").glob("*.png"))
    os.utime(image, ns=(0, 0))  # the source changed: a second fingerprint
    copy_prepared(
        "glas", to=carried["carry"], img_size=SIZE, data_root=carried["data"], cache_dir=carried["home"]
    )
    files = sorted((carried["carry"] / "prepared").glob("*.npz"))
    assert len(files) == 2
    with pytest.raises(AblationError, match="holds 2 prepared files") as error:
        load_prepared("glas", img_size=SIZE, data_root=carried["empty"], cache_dir=carried["carry"])
    assert all(str(path) in str(error.value) for path in files)
    # A file of another preparation version is not a candidate.
    with np.load(files[0], allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    arrays["version"] = np.array("3")
    np.savez(files[0], **arrays)
    there = load_prepared("glas", img_size=SIZE, data_root=carried["empty"], cache_dir=carried["carry"])
    assert files[1].name.endswith(f"-{there.fingerprint}.npz")


def test_prepare_cli_copies_and_refuses_what_cannot_travel(tmp_path: Path, monkeypatch, capsys) -> None:
    write_reference(tmp_path / "data" / "MoNuSeg", {"train": 4, "val": 2, "test": 2})
    argv = ["data", "prepare", "--root", "monuseg", "--img-size", str(SIZE), "--to", str(tmp_path / "to")]
    argv += ["--data-root", str(tmp_path / "data"), "--cache-dir", str(tmp_path / "home"), "--num-folds", "2"]
    code, out, _ = run_cli(monkeypatch, capsys, argv)
    assert code == 0 and out.count("wrote ") == 2 and "MB)" in out
    splits = read_json(next((tmp_path / "to" / "splits").glob("monuseg-*-k2-s0.json")))
    assert {"official", "r0f0", "r0f1"} <= set(splits["splits"])
    code, _, err = run_cli(
        monkeypatch, capsys, ["data", "prepare", "--root", "synthetic-nuclei", "--to", "x"]
    )
    assert code == 2 and "generated data needs no copy" in err
    argv = ["data", "prepare", "--root", "monuseg", "--to", str(tmp_path / "home")]
    argv += [
        "--img-size",
        str(SIZE),
        "--data-root",
        str(tmp_path / "data"),
        "--cache-dir",
        str(tmp_path / "home"),
    ]
    code, _, err = run_cli(monkeypatch, capsys, argv)
    assert code == 2 and "is the cache folder itself" in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--img-size", "30"], "--img-size 30 must be a multiple of 16 (four 2x poolings) in 16..4096"),
        (["--img-size", "8"], "--img-size 8 must be a multiple of 16"),
        (["--num-folds", "100"], "set num_folds to at most 6 (e.g. --num-folds 5)"),
        (["--repeats", "0"], "--repeats must be 1 or more, got 0"),
    ],
)
def test_prepare_refuses_what_no_run_can_use_naming_its_own_flags(
    tmp_path: Path, monkeypatch, capsys, flags: list[str], message: str
) -> None:
    write_reference(tmp_path / "data" / "MoNuSeg", {"train": 4, "val": 2, "test": 2})
    argv = ["data", "prepare", "--root", "monuseg", "--to", str(tmp_path / "to"), "--img-size", str(SIZE)]
    argv += ["--data-root", str(tmp_path / "data"), "--cache-dir", str(tmp_path / "home"), *flags]
    code, _, err = run_cli(monkeypatch, capsys, argv)
    assert code == 2 and message in err and "--set" not in err
    assert not (tmp_path / "to").exists()


def test_data_info_checks_the_size_as_model_config_does(monkeypatch, capsys, tmp_path: Path) -> None:
    argv = ["data", "info", "--root", "synthetic-nuclei", "--cache-dir", str(tmp_path), "--img-size", "30"]
    code, _, err = run_cli(monkeypatch, capsys, argv)
    assert code == 2 and "--img-size 30 must be a multiple of 16" in err
    with pytest.raises(AblationError, match="model.img_size 30 must be a multiple of 16"):
        ModelConfig(img_size=30)
    assert not any(tmp_path.iterdir())


def test_grid_accepts_a_dataset_known_only_by_its_carried_cache(
    carried: dict[str, Path], tmp_path: Path, monkeypatch, capsys
) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text('datasets = ["glas"]\nsubsets = ["all"]\nfolds = [0]\nnum_folds = 3\n', encoding="utf-8")
    monkeypatch.setenv("ABLATION_DATA", str(carried["empty"]))
    monkeypatch.setenv("ABLATION_CACHE", str(carried["carry"]))
    assert main(["run", str(spec), "--out", str(tmp_path / "results")]) == 2
    assert "dataset 'glas' not found" in capsys.readouterr().err  # the cache has no file at 224 px
    assert check_datasets(override_spec(load_spec(spec), {"model.img_size": str(SIZE)})) == []


def test_the_cheap_checks_read_the_carried_cache(
    carried: dict[str, Path], tmp_path: Path, monkeypatch
) -> None:
    """Without the folder, the fingerprint (the stale check), the images per split (the grid's folds check at
    plan time) and the dry run's image counts come from the carried file, as training reads it."""
    here = load_prepared("glas", img_size=SIZE, data_root=carried["data"], cache_dir=carried["home"])
    monkeypatch.setenv("ABLATION_DATA", str(carried["empty"]))
    monkeypatch.setenv("ABLATION_CACHE", str(carried["carry"]))
    assert dataset_fingerprint("glas", img_size=SIZE) == here.fingerprint
    assert (
        split_sizes("glas", img_size=SIZE) == split_sizes("glas", carried["data"]) == {"train": 6, "test": 3}
    )
    with pytest.raises(AblationError, match="dataset 'glas' not found"):
        split_sizes("glas", img_size=64)  # no carried file at that size

    config = RunConfig(dataset="glas", model=ModelConfig(img_size=SIZE))
    run_dir = tmp_path / "results" / run_name(config)
    write_run_config(run_dir, config, {"dataset_fingerprint": "0" * 16})
    assert StaleCheck(dataset_fingerprint).reasons(run_dir) == [
        f"the data changed since it ran (dataset fingerprint {'0' * 16} then, {here.fingerprint} now)"
    ]

    spec = {"datasets": ["glas"], "subsets": ["all"], "model": {"img_size": SIZE}, "train": {"max_epochs": 2}}
    with pytest.raises(AblationError, match="num_folds 7 exceeds the 6 images of the training pool"):
        check_datasets(load_spec({**spec, "folds": 7}))
    cost = estimate_cost(expand_spec({**spec, "folds": 3}), gflops=lambda model: 1.0)
    # 3 folds of the 6 training images: 4 train + 2 validation per epoch, then the 3 test images, per run.
    assert cost.unknown == {}
    assert (cost.train_passes, cost.val_passes, cost.test_passes) == (3 * 4 * 2, 3 * 2 * 2, 3 * 3)


# --set for every run of a spec ---------------------------------------------------------------------------------


def test_set_overrides_every_run_of_a_spec_and_changes_its_identity() -> None:
    spec = load_spec(ROOT / "experiments" / "paper_module_ablation_budget.toml")
    overrides = parse_assignments(["model.base_channels=4", "model.img_size=32", "train.max_epochs=2"])
    tiny = expand_spec(override_spec(spec, overrides))
    full = expand_spec(spec)
    assert len(tiny) == len(full) == 24
    assert {(c.model.base_channels, c.model.img_size, c.train.max_epochs) for c in tiny} == {(4, 32, 2)}
    assert [(c.dataset, c.model.connector, c.fold) for c in tiny] == [
        (c.dataset, c.model.connector, c.fold) for c in full
    ]
    assert not {run_name(c) for c in tiny} & {run_name(c) for c in full}
    assert all(c.train.test_time_masks for c in tiny)  # the spec's own settings stay
    # CCT, CCA and UCTransNet start from the tiny U-Net-all run of their replicate, not from a full-size one.
    starting = [c for c in tiny if c.train.init_from]
    assert len(starting) == 18
    assert {c.train.init_from_run for c in starting} <= {
        run_name(c) for c in tiny if c.model.connector == "unet"
    }


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["model.skips=1011"], "set by the spec's key 'subsets'"),
        (["train.test_time_masks=false"], "set by the spec's key 'test_time_masks'"),
        (["seed=3"], "only model.* and train.* keys"),
        (["model.width=3"], "unknown config key 'model.width'"),
        (["train.max_epochs=many"], "train.max_epochs"),
        (["max_epochs"], "expected KEY=VALUE"),
    ],
)
def test_bad_set_is_one_error_line(items: list[str], message: str, tmp_path: Path, capsys) -> None:
    spec = str(ROOT / "experiments" / "paper_skip_study_budget.toml")
    argv = ["run", spec, "--dry-run", "--out", str(tmp_path)]
    assert main(argv + [arg for item in items for arg in ("--set", item)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


# the device script ---------------------------------------------------------------------------------------------


def _call_record():
    spec = importlib.util.spec_from_file_location("call_record", DEVICE / "call_record.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget", "5m"], "--budget must be whole seconds"),
        (["--only"], "needs a value"),
        (["-x"], "unknown"),
    ],
)
def test_device_script_refuses_bad_arguments(args: list[str], message: str, tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(DEVICE / "run_study.sh"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OUT": str(tmp_path)},
        timeout=30,
    )
    assert result.returncode == 2 and message in result.stderr
    assert not list(tmp_path.iterdir())  # refused before anything ran


def test_call_record_cli_lists_done_runs(tmp_path: Path, capsys) -> None:
    assert _call_record().main(["done", str(tmp_path / "absent")]) == 0
    assert json.loads(capsys.readouterr().out) == []
