"""A run is done only when its files prove it; results whose data or split changed since are flagged stale.

Done: metrics.json, config.json and the folder name must name one run, else the run is damaged, named by
`ablation status` and the report alike, and trained again by `ablation run` (its files kept in .replaced/).
Stale: the dataset fingerprint (files and preparation version) or the split a run recorded differs from today's;
stale runs are kept and flagged, and trained again only with --rerun-stale. A run resuming from a checkpoint on
another split is refused, and a started run whose config.json is broken trains again.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_data import write_reference
from test_grid_fakes import entries, fake_train, recording_train

from ablation.cli import main
from ablation.config import RunConfig, from_dict
from ablation.data import cache as prepared_cache
from ablation.data import load_prepared, prepare
from ablation.errors import AblationError
from ablation.grid import expand_spec, grid_status, run_grid
from ablation.io import read_json
from ablation.report.load import load_results
from ablation.store.layout import (
    CONFIG_FILE,
    LAST_CHECKPOINT,
    METRICS_FILE,
    REPLACED_DIR,
    find_runs,
    run_name,
)
from ablation.store.state import read_run_state
from ablation.store.writers import write_run_config

SPEC = {
    "datasets": ["synthetic-nuclei"],
    "subsets": ["none", "all", "1000"],
    "model": {"img_size": 32, "base_channels": 4},
    "train": {"max_epochs": 1},
}


@pytest.fixture
def grid(tmp_path: Path) -> tuple[Path, list[RunConfig]]:
    configs = expand_spec(SPEC)
    results = tmp_path / "results"
    assert run_grid(configs, results, train_unit=fake_train, progress=False).exit_code == 0
    return results, configs


def _edit_json(path: Path, **changes: object) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _edit_setting(run_dir: Path, section: str, **changes: object) -> None:
    """A setting of config.json changed by hand after the run was named (its identity fields untouched)."""
    record = json.loads((run_dir / CONFIG_FILE).read_text())
    _edit_json(run_dir / CONFIG_FILE, **{section: {**record[section], **changes}})


def _swap(a: Path, b: Path) -> None:
    """Two run folders trade names: each holds the other's files."""
    a.rename(a.with_name("swap"))
    b.rename(a)
    a.with_name("swap").rename(b)


# -- identity ------------------------------------------------------------------------------------------------


def test_runs_whose_files_disagree_are_damaged_named_and_agreed_on(grid: tuple[Path, list[RunConfig]]):
    results, configs = grid
    none_dir, all_dir, l1_dir = (results / run_name(c) for c in configs)
    _edit_json(none_dir / METRICS_FILE, seed=1)  # metrics.json of another seed
    _swap(all_dir, l1_dir)  # both folders hold the other run's files
    states = {s.name: s for s in grid_status(results, configs)}
    assert states[none_dir.name].status == "damaged"
    assert (
        "metrics.json: 'seed' is 1, but config.json and the folder name say 0" in states[none_dir.name].detail
    )
    assert states[all_dir.name].detail.startswith(
        f"{all_dir}: the folder name says skips 1111, config.json 1000"
    )
    assert states[l1_dir.name].status == "damaged"
    report = load_results(results)
    assert set(report.failed["status"]) == {"damaged"} and len(report.failed) == 3 and report.runs.empty
    for _, row in report.failed.iterrows():  # status and report give the same reason
        assert states[Path(row["path"]).name].detail.startswith(row["error"])


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda d: _edit_json(d / METRICS_FILE, run_id="0123abcd"), "metrics.json: 'run_id' is '0123abcd'"),
        (lambda d: _edit_json(d / METRICS_FILE, run_name="x"), "metrics.json: 'run_name' is 'x'"),
        (lambda d: _edit_json(d / METRICS_FILE, skips="0110"), "metrics.json: 'skips' is '0110'"),
        (lambda d: _edit_json(d / METRICS_FILE, dataset="glas"), "metrics.json: 'dataset' is 'glas'"),
        (lambda d: _edit_json(d / METRICS_FILE, fold=2), "metrics.json: 'fold' is 2"),
        (lambda d: _edit_json(d / CONFIG_FILE, run_name="other"), "config.json: 'run_name' is 'other'"),
        (lambda d: _edit_json(d / CONFIG_FILE, seed=5), "the folder name says seed 0, config.json 5"),
        (lambda d: _edit_json(d / CONFIG_FILE, dataset="synthetic-glands"), "says dataset synthetic-nuclei"),
        (lambda d: d.rename(d.with_name("renamed")), "the folder name is not a run name"),
        (lambda d: _edit_setting(d, "train", lr=0.5), "config.json: its settings hash to run id"),
        (lambda d: _edit_setting(d, "model", base_channels=16), "the folder's name says"),
    ],
    ids=[
        "run-id",
        "run-name",
        "skips",
        "dataset",
        "fold",
        "config-name",
        "config-seed",
        "config-data",
        "renamed",
        "config-lr",
        "config-width",
    ],
)
def test_each_identity_field_is_checked(grid: tuple[Path, list[RunConfig]], tamper, reason: str):
    results, configs = grid
    run_dir = results / run_name(configs[1])
    tamper(run_dir)
    (damaged,) = [d for d in find_runs(results) if read_run_state(d)[0] == "damaged"]
    assert reason in read_run_state(damaged)[1]


def test_run_trains_damaged_runs_again_and_keeps_their_files(
    grid: tuple[Path, list[RunConfig]], capsys: pytest.CaptureFixture[str]
):
    results, configs = grid
    none_dir, all_dir, _ = (results / run_name(c) for c in configs)
    _edit_json(none_dir / METRICS_FILE, seed=1)
    (all_dir / "test_metrics.csv").write_text("image,dice,iou\nimg0,1.5,0.3\n")  # a Dice above 1
    assert main(["status", str(results)]) == 0
    out = capsys.readouterr().out
    assert f"damaged  {none_dir.name}  (" in out and "`ablation run` trains it again)" in out
    summary = run_grid(configs, results, train_unit=fake_train, progress=False)
    assert sorted(summary.names("done")) == sorted([none_dir.name, all_dir.name]) and summary.exit_code == 0
    assert entries(none_dir) == 1 and entries(all_dir) == 1, "trained again in a fresh folder"
    assert all(s.status == "done" for s in grid_status(results, configs))
    kept = sorted((results / REPLACED_DIR).iterdir())
    assert [p.name.split(".")[0] for p in kept] == sorted([all_dir.name, none_dir.name])
    old = next(p for p in kept if p.name.startswith(none_dir.name))
    assert read_json(old / METRICS_FILE)["seed"] == 1 and entries(old) == 1, "the damaged files are kept"
    assert "trained again from the start; damaged:" in (old / "reason.txt").read_text()
    assert len(load_results(results).runs) == 3, "the kept files are not read as runs"


# -- stale results -------------------------------------------------------------------------------------------


@pytest.fixture
def folder_grid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, list[RunConfig]]:
    """Two runs on a tiny dataset folder, trained by a fake that records env as the engine does."""
    monkeypatch.setenv("ABLATION_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "tiny"
    write_reference(data, {"train": 4, "val": 2, "test": 2})
    configs = expand_spec({**SPEC, "datasets": [str(data)], "subsets": ["none", "all"]})
    results = tmp_path / "results"
    assert run_grid(configs, results, train_unit=recording_train, progress=False).exit_code == 0
    return data, results, configs


def _touch_image(data: Path) -> None:
    image = data / "Train_Folder" / "img" / "train1.png"
    Image.fromarray(np.zeros((16, 20, 3), dtype=np.uint8)).save(image)


def test_changed_data_flags_done_runs_stale_everywhere(
    folder_grid: tuple[Path, Path, list[RunConfig]], capsys: pytest.CaptureFixture[str]
):
    data, results, configs = folder_grid
    assert not any(s.stale for s in grid_status(results, configs)), "unchanged data: nothing is stale"
    _touch_image(data)
    states = grid_status(results, configs)
    assert all(s.status == "done" and s.stale for s in states)
    assert "stale: the data changed since it ran (dataset fingerprint" in states[0].detail
    assert main(["status", str(results)]) == 0
    assert (
        capsys.readouterr()
        .out.splitlines()[-1]
        .endswith(": 2 done (2 stale), 0 running, 0 failed, 0 pending")
    )

    summary = run_grid(configs, results, train_unit=recording_train, progress=False)
    assert summary.names("stale") == [run_name(c) for c in configs] and summary.exit_code == 0
    assert "skipped 2 (already done; 2 of them stale)" in summary.format()
    assert "--rerun-stale" in summary.format() and all(entries(results / s.name) == 1 for s in states)

    report = load_results(results)
    assert report.runs["stale"].str.startswith("the data changed since it ran").all(), "kept, and flagged"
    from ablation.report import write_report

    readme = (write_report(results, n_boot=100) / "README.md").read_text()
    assert "Done runs: 2 (2 stale" in readme and "- stale (kept in the tables;" in readme

    again = run_grid(configs, results, train_unit=recording_train, progress=False, rerun_stale=True)
    assert sorted(again.names("done")) == sorted(s.name for s in states)
    assert all(entries(results / s.name) == 1 for s in states), "trained again in a fresh folder"
    assert len(list((results / REPLACED_DIR).iterdir())) == 2
    assert not any(s.stale for s in grid_status(results, configs))


def test_a_new_preparation_version_flags_runs_stale(
    folder_grid: tuple[Path, Path, list[RunConfig]], monkeypatch: pytest.MonkeyPatch
):
    _, results, configs = folder_grid
    monkeypatch.setattr(prepared_cache, "PREPARE_VERSION", prepared_cache.PREPARE_VERSION + 1)
    assert all(s.stale for s in grid_status(results, configs))


def test_an_edited_splits_file_flags_the_runs_on_that_split(folder_grid: tuple[Path, Path, list[RunConfig]]):
    _, results, configs = folder_grid
    splits_file = Path(
        read_json(results / run_name(configs[0]) / CONFIG_FILE)["env"]["splits"]["splits_file"]
    )
    content = read_json(splits_file)
    official = content["splits"]["official"]
    official["val"].append(official["train"].pop())  # the documented way to move an image to validation
    splits_file.write_text(json.dumps(content))
    states = grid_status(results, configs)
    assert all(s.stale for s in states)
    assert f"its split official changed in {splits_file} since it ran (train/val images)" in states[0].detail


def test_what_cannot_be_checked_is_not_stale(
    folder_grid: tuple[Path, Path, list[RunConfig]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    data, results, configs = folder_grid
    splits_file = Path(
        read_json(results / run_name(configs[0]) / CONFIG_FILE)["env"]["splits"]["splits_file"]
    )
    splits_file.unlink()  # a splits file that is gone: regenerated the same way, so not compared
    data.rename(tmp_path / "elsewhere")  # a dataset folder missing here (results copied to a laptop)
    assert not any(s.stale for s in grid_status(results, configs))
    assert main(["status", str(results)]) == 0
    assert "stale" not in capsys.readouterr().out
    assert load_results(results).runs["stale"].eq("").all()


def test_todays_fingerprint_scans_files_and_prepares_nothing(tmp_path: Path):
    data, cache = tmp_path / "tiny", tmp_path / "cache"
    write_reference(data, {"train": 3, "test": 2})
    fingerprint = prepare.dataset_fingerprint(str(data), img_size=32)
    assert not cache.exists(), "nothing prepared or cached"
    assert fingerprint == load_prepared(str(data), img_size=32, cache_dir=cache).fingerprint
    assert prepare.dataset_fingerprint(str(data), img_size=64) != fingerprint
    synthetic = load_prepared("synthetic-glands", img_size=32, cache_dir=cache)
    assert prepare.dataset_fingerprint("synthetic-glands", img_size=32) == synthetic.fingerprint
    assert prepare.split_sizes(str(data)) == {"train": 3, "test": 2}
    assert prepare.split_sizes("synthetic-nuclei") == {"train": 24, "val": 6, "test": 12}


# -- resuming, and a broken config.json ---------------------------------------------------------------------


def test_resuming_on_another_split_is_refused_naming_the_splits_file(tmp_path: Path):
    config = RunConfig(fold=0)
    run_dir = tmp_path / run_name(config)
    split = {
        "splits_file": "/cache/splits/x.json",
        "split": "r0f0",
        "train": ["a", "b"],
        "val": ["c"],
        "test": ["d"],
    }
    write_run_config(run_dir, config, {"splits": split})
    (run_dir / LAST_CHECKPOINT).write_bytes(b"x")
    write_run_config(run_dir, config, {"splits": split, "device": "elsewhere"})  # same split: resumes
    moved = {**split, "train": ["a"], "val": ["c", "b"]}
    with pytest.raises(AblationError) as caught:
        write_run_config(run_dir, config, {"splits": moved})
    message = str(caught.value)
    assert (
        "cannot resume: the splits file /cache/splits/x.json now gives split r0f0 other train/val" in message
    )
    assert f"delete {run_dir / LAST_CHECKPOINT} to train the run again" in message
    (run_dir / LAST_CHECKPOINT).unlink()  # no checkpoint: the run starts again and records the new split
    write_run_config(run_dir, config, {"splits": moved})
    assert read_json(run_dir / CONFIG_FILE)["env"]["splits"]["train"] == ["a"]


def _tiny(**train: object) -> RunConfig:
    return from_dict(
        RunConfig,
        {
            "dataset": "synthetic-nuclei",
            "model": {"img_size": 32, "base_channels": 4},
            "train": {"max_epochs": 1, "batch_size": 8, "augment": False, "save_predictions": 0, **train},
        },
    )


@pytest.mark.usefixtures("one_torch_thread")
def test_engine_refuses_a_resume_on_an_edited_split_and_retrains_a_broken_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from ablation.train import train_run

    monkeypatch.setenv("ABLATION_CACHE", str(tmp_path / "cache"))
    config = _tiny()
    run_dir = tmp_path / run_name(config)
    train_run(config, run_dir, device="cpu", progress=False)
    (run_dir / METRICS_FILE).unlink()  # killed after its last checkpoint, before metrics.json
    splits_file = Path(read_json(run_dir / CONFIG_FILE)["env"]["splits"]["splits_file"])
    content = read_json(splits_file)
    content["splits"]["official"]["val"].append(content["splits"]["official"]["train"].pop())
    splits_file.write_text(json.dumps(content))
    with pytest.raises(AblationError, match=f"cannot resume: the splits file {splits_file} now gives"):
        train_run(config, run_dir, device="cpu", progress=False)
    assert not (run_dir / METRICS_FILE).exists()

    shutil.rmtree(run_dir)  # a run started, then its config.json broke: it trains again (and rewrites it)
    train_run(config, run_dir, device="cpu", progress=False)
    (run_dir / METRICS_FILE).unlink()
    (run_dir / LAST_CHECKPOINT).unlink()
    (run_dir / CONFIG_FILE).write_text('{"run_id": ')
    assert read_run_state(run_dir)[0] == "damaged"
    result = train_run(config, run_dir, device="cpu", progress=False)
    assert result["status"] == "done" and read_run_state(run_dir)[0] == "done"
    assert (
        read_json(run_dir / CONFIG_FILE)["env"]["splits"]["train"] == content["splits"]["official"]["train"]
    )


def test_train_refuses_a_folder_whose_metrics_are_another_runs(tmp_path: Path):
    from ablation.train import train_run

    config = _tiny()
    run_dir = tmp_path / run_name(config)
    run_dir.mkdir()
    (run_dir / METRICS_FILE).write_text(json.dumps({"status": "done", "run_id": "0123abcd"}))
    with pytest.raises(AblationError, match="is not the finished record of run"):
        train_run(config, run_dir, device="cpu", progress=False)
