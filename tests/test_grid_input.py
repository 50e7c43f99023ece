"""Bad input to `ablation run`, `status` and `demo`: one error line (exit 2), checked before any run starts;
damaged run folders are listed, never fatal, and trained again with their files kept aside."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_grid_fakes import entries, fake_train

from ablation.cli import main
from ablation.errors import AblationError
from ablation.grid import expand_spec, grid_status, load_spec, run_grid
from ablation.grid.datasets import check_datasets
from ablation.grid.filters import select_names
from ablation.store.layout import name_fields, run_name

TINY_TOML = (
    'datasets = ["synthetic-nuclei"]\nsubsets = ["none", "all"]\n'
    "[model]\nimg_size = 32\nbase_channels = 4\n[train]\nmax_epochs = 1\n"
)


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_TOML)
    return path


def test_binary_spec_is_one_error_line_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = tmp_path / "binary.toml"
    path.write_bytes(b"\xff\xfe\x00\x80binary")
    assert main(["run", str(path), "--dry-run"]) == 2
    assert f"{path}: not a TOML text file" in _error_line(capsys)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--workers", "-2"], "--workers must be in 1..256, got -2"),
        (["--workers", "0"], "--workers must be in 1..256, got 0"),
        (["--workers-per-gpu", "0"], "--workers-per-gpu must be in 1..256"),
        (["--cpus-per-run", "0"], "--cpus-per-run must be >= 1, got 0"),
        (["--pack-size", "0"], "--pack-size must be 'auto' or a positive integer"),
        (["--gpus", "a,b"], "--gpus 'a,b': expected a comma-separated list of GPU indices"),
    ],
)
def test_run_flags_are_checked_even_when_every_run_is_done(
    spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
):
    results = tmp_path / "results"
    run_grid(expand_spec(spec), results, train_unit=fake_train, progress=False)
    assert main(["run", str(spec), "--out", str(results), "--no-progress", *flags]) == 2
    assert message in _error_line(capsys)


def test_gpus_without_a_gpu_is_an_error(
    spec: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    for dry_run in ([], ["--dry-run"]):  # the dry run fails where the run would, not with "device unknown"
        monkeypatch.setattr("ablation.grid.gpus.detect_gpus", lambda: [])
        assert main(["run", str(spec), "--out", str(tmp_path / "r"), "--gpus", "0,1", *dry_run]) == 2
        assert "no GPU found (nvidia-smi): drop --gpus" in _error_line(capsys)
        monkeypatch.setattr("ablation.grid.gpus.detect_gpus", lambda: ["0"])
        assert main(["run", str(spec), "--out", str(tmp_path / "r"), "--gpus", "0,3", *dry_run]) == 2
        assert "GPU 3 not found: choose among 0" in _error_line(capsys)
    assert not (tmp_path / "r").exists(), "nothing ran"


def test_out_that_is_a_file_is_one_error_line(spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    for extra in ([], ["--dry-run"]):
        assert main(["run", str(spec), "--out", str(afile), *extra]) == 2
        assert f"{afile} is a file, not a folder" in _error_line(capsys)
    assert main(["run", str(spec), "--out", str(afile / "below")]) == 2
    assert f"{afile} is a file" in _error_line(capsys)
    assert main(["demo", "--out", str(afile)]) == 2
    assert "is a file, not a folder" in _error_line(capsys)
    with pytest.raises(AblationError, match="is a file"):
        run_grid(expand_spec(spec), afile, train_unit=fake_train, progress=False)


def test_demo_rejects_workers_below_one_and_describes_itself(capsys: pytest.CaptureFixture[str]):
    assert main(["demo", "--workers", "0"]) == 2
    assert "--workers must be in 1..256, got 0" in _error_line(capsys)
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--help"])
    assert exited.value.code == 0
    assert "Run the demo grid of experiments/demo.toml" in capsys.readouterr().out


def test_unknown_dataset_fails_at_dry_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = tmp_path / "typo.toml"
    path.write_text('datasets = ["glass"]\nsubsets = ["none"]\n')
    assert main(["run", str(path), "--dry-run"]) == 2
    err = _error_line(capsys)
    assert f"{path}: unknown dataset 'glass': choose one of glas, monuseg" in err


def test_missing_named_dataset_warns_at_dry_run_and_fails_at_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    root = tmp_path / "nodata"
    path = tmp_path / "glas.toml"
    path.write_text(f'datasets = ["glas"]\ndata_root = "{root}"\nsubsets = ["none"]\n')
    out = tmp_path / "results"
    assert main(["run", str(path), "--dry-run", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith(f"warning: {path}: dataset 'glas' not found at {root / 'GlaS'}")
    assert "1 runs in" in captured.out
    assert main(["run", str(path), "--out", str(out), "--no-progress"]) == 2
    err = _error_line(capsys)
    assert f"dataset 'glas' not found at {root / 'GlaS'}" in err and "$ABLATION_DATA (or data_root)" in err
    assert not out.exists(), "no run was started"


def test_check_datasets_only_checks_the_selected_runs(tmp_path: Path):
    spec = load_spec(
        {
            "datasets": ["synthetic-nuclei", {"name": "monuseg", "data_root": str(tmp_path)}],
            "subsets": ["all"],
        }
    )
    configs = spec.expand()
    synthetic = [c for c in configs if c.dataset == "synthetic-nuclei"]
    assert check_datasets(spec, synthetic) == []
    with pytest.raises(AblationError, match="spec: dataset 'monuseg' not found at"):
        check_datasets(spec, configs)
    assert len(check_datasets(spec, configs, strict=False)) == 1
    (tmp_path / "MoNuSeg").mkdir()
    assert check_datasets(spec, configs) == []


def test_status_only_filters_run_names_without_spec(
    spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    configs = expand_spec(spec)
    results = tmp_path / "results"
    run_grid(configs, results, train_unit=fake_train, progress=False)
    assert main(["status", str(results), "--only", "_1111_"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"done     {run_name(configs[1])}",
        f"1 runs in {results}: 1 done, 0 running, 0 failed, 0 pending",
    ]
    assert main(["status", str(results), "--only", "skips=none", "--only", "*official*"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"done     {run_name(configs[0])}"
    assert main(["status", str(results), "--only", "seed=7"]) == 2
    assert "no run in" in _error_line(capsys)
    assert main(["status", str(results), "--only", "colour=red"]) == 2
    assert "--only: unknown key 'colour'" in _error_line(capsys)


def test_name_fields_match_the_config_fields():
    configs = expand_spec({"datasets": ["synthetic-glands"], "subsets": ["1010"], "folds": 3, "seeds": [4]})
    fields = name_fields(run_name(configs[1]))
    assert fields is not None
    assert {k: fields[k] for k in ("dataset", "skips", "seed", "fold", "repeat", "split")} == {
        "dataset": "synthetic-glands",
        "skips": "1010",
        "seed": "4",
        "fold": "1",
        "repeat": "0",
        "split": "r0f1",
    }
    assert name_fields("report") is None and name_fields("a_b_c_d_e_f") is None
    names = [run_name(c) for c in configs]
    assert select_names([*names, "notes"], ["fold=2"]) == [names[2]]
    assert select_names([*names, "notes"], ["dataset=data/Synthetic-Glands"]) == names


def test_damaged_runs_are_listed_by_status_and_trained_again(
    spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    configs = expand_spec(spec)
    results = tmp_path / "results"
    run_grid(configs, results, train_unit=fake_train, progress=False)
    none_dir, all_dir = (results / run_name(c) for c in configs)
    (none_dir / "metrics.json").write_text("[1, 2]")  # finished, but its summary is not an object
    (all_dir / "metrics.json").unlink()
    (all_dir / "status.json").write_text("[1]")  # unfinished, and its status is unreadable

    states = {s.name: s for s in grid_status(results, configs)}
    assert states[none_dir.name].status == "damaged"
    assert "metrics.json: expected a JSON object, found list" in states[none_dir.name].detail
    assert states[all_dir.name].status == "damaged" and "status.json" in states[all_dir.name].detail
    assert main(["status", str(results)]) == 0
    out = capsys.readouterr().out
    assert (
        f"damaged  {none_dir.name}  (cannot read {none_dir / 'metrics.json'}: expected a JSON object" in out
    )
    assert out.splitlines()[-1].endswith("0 done, 0 running, 0 failed, 0 pending, 2 damaged")

    summary = run_grid(configs, results, train_unit=fake_train, progress=False)
    assert sorted(summary.names("done")) == sorted([none_dir.name, all_dir.name]) and summary.exit_code == 0
    assert entries(none_dir) == 1, "a finished but damaged run starts again in a fresh folder"
    assert entries(all_dir) == 2, "an unfinished one is trained again where it is"
    (kept,) = (results / ".replaced").iterdir()
    assert json.loads((kept / "metrics.json").read_text()) == [1, 2], "what it had is kept aside"
