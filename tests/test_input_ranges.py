"""Every number a user gives is checked against its range before anything runs: one error line (exit 2) naming
the key or flag, and no results or run folder left behind. A huge grid is refused above a documented cap."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_data import write_reference

from ablation.cli import main
from ablation.config import ModelConfig, RunConfig, TrainConfig, from_dict
from ablation.errors import AblationError
from ablation.grid import load_spec
from ablation.grid.local import MAX_WORKERS, worker_devices
from ablation.grid.spec import MAX_GRID_RUNS
from ablation.limits import MAX_INT

TINY = {
    "datasets": ["synthetic-nuclei"],
    "subsets": ["none", "all"],
    "model": {"img_size": 32, "base_channels": 4},
    "train": {"max_epochs": 1},
}


def _spec(tmp_path: Path, **changes: object) -> Path:
    path = tmp_path / "spec.json"  # JSON: integers beyond 64 bits, which TOML cannot even write
    path.write_text(json.dumps({**TINY, **changes}))
    return path


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"seeds": [-1]}, "'seeds' must be integers in 0..2**63 - 1, got -1"),
        ({"seeds": [0, 2**64]}, "'seeds' must be integers in 0..2**63 - 1, got 18446744073709551616"),
        ({"seeds": [10**400]}, "'seeds' must be integers in 0..2**63 - 1"),
        ({"train": {"max_epochs": 10**30}}, "'train.max_epochs' must be at most 2**63 - 1"),
        ({"train": {"lr": 10**400}}, "'train.lr': an integer of 401 digits is too large for a number"),
        ({"model": {"img_size": 32, "patch_sizes": [16, 8, 4]}}, "'model.patch_sizes' needs 4 sizes"),
        ({"model": {"img_size": 32, "patch_sizes": [0, 8, 4, 2]}}, "'model.patch_sizes' must be >= 1, got 0"),
        ({"folds": 100}, "num_folds 100 exceeds the 30 images of the training pool"),
        ({"folds": [0], "num_folds": 31}, "num_folds 31 exceeds the 30 images"),
        ({"folds": [0, 10**20], "num_folds": 5}, "fold 100000000000000000000 out of range"),
        ({"folds": 5, "repeats": 2**64}, "'repeats' must be at most 2**63 - 1"),
        ({"subsets": []}, "'subsets' is an empty list"),
        (
            {"connectors": ["unet", "cct"], "subsets": {"unet": "all", "cct": []}},
            "'subsets.cct' is an empty list",
        ),
        ({"subsets": ["1012"]}, "'subsets':"),
    ],
)
def test_spec_values_out_of_range_fail_at_plan_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], changes: dict, message: str
):
    spec = _spec(tmp_path, **changes)
    results = tmp_path / "results"
    for extra in (["--dry-run"], []):
        err = _fails(["run", str(spec), "--out", str(results), "--no-progress", *extra], capsys)
        assert str(spec) in err and message in err, err
    assert not results.exists(), "no results folder, no run folder"


def test_more_folds_than_a_dataset_folder_has_training_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    data = tmp_path / "tiny"
    write_reference(data, {"train": 3, "test": 2})
    spec = _spec(tmp_path, datasets=[str(data)], folds=5)
    err = _fails(["run", str(spec), "--out", str(tmp_path / "results")], capsys)
    assert f"dataset {str(data)!r}: num_folds 5 exceeds the 3 images of the training pool" in err
    assert "set num_folds to at most 3 ('folds')" in err and not (tmp_path / "results").exists()
    out = tmp_path / "train"
    err = _fails(
        ["train", "--dataset", str(data), "--fold", "0", "--set", "num_folds=4", "--out", str(out)], capsys
    )
    assert "num_folds 4 exceeds the 3 images" in err and not list(out.glob("*/config.json"))


@pytest.mark.parametrize(
    "flags",
    [
        ["--seed", "-1"],
        ["--seed", str(2**64)],
        ["--fold", "-1"],
        ["--repeat", str(10**25)],
        ["--epochs", "0"],
    ],
)
def test_train_flags_out_of_range_leave_no_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str]
):
    out = tmp_path / "out"
    err = _fails(["train", "--dataset", "synthetic-nuclei", "--out", str(out), *flags], capsys)
    assert "must be" in err or "out of range" in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--workers", str(10**20)], f"--workers must be in 1..{MAX_WORKERS}, got an integer of 21 digits"),
        (
            ["--workers", str(MAX_WORKERS + 1)],
            f"--workers must be in 1..{MAX_WORKERS}, got {MAX_WORKERS + 1}",
        ),
        (["--workers", "-2"], f"--workers must be in 1..{MAX_WORKERS}, got -2"),
        (["--workers-per-gpu", "1000000"], "--workers-per-gpu must be in 1..256"),
        (["--cpus-per-run", "0"], "--cpus-per-run must be >= 1, got 0"),
    ],
)
def test_worker_counts_out_of_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
):
    results = tmp_path / "results"
    assert message in _fails(["run", str(_spec(tmp_path)), "--out", str(results), *flags], capsys)
    assert not results.exists()
    if flags[0] == "--workers":
        assert message in _fails(["demo", "--out", str(results), *flags], capsys)


def test_workers_times_gpus_is_capped():
    with pytest.raises(AblationError, match=r"GPUs x --workers-per-gpu\) must be in 1\.\.256, got 320"):
        worker_devices(None, [str(i) for i in range(8)], 40)
    assert len(worker_devices(None, [str(i) for i in range(8)], 32)) == MAX_WORKERS


def test_cpus_per_run_above_the_ray_cluster_is_refused_before_any_task():
    from ablation.grid import ray_backend

    class Cluster:  # the part of the ray module _run touches before submitting a task
        @staticmethod
        def cluster_resources() -> dict[str, float]:
            return {"CPU": 4.0}

        @staticmethod
        def remote(function: object) -> object:
            raise AssertionError("no task may be submitted")

    with pytest.raises(AblationError, match="--cpus-per-run 5 exceeds the 4 CPUs of the Ray cluster"):
        ray_backend._run(Cluster, [[RunConfig()]], Path("x"), 5, None, True, False, lambda outcomes: None)


def test_integer_settings_are_bounded_everywhere():
    for build in (
        lambda: RunConfig(seed=MAX_INT + 1),
        lambda: RunConfig(repeat=-1),
        lambda: RunConfig(num_folds=10**19),
        lambda: TrainConfig(batch_size=2**70),
        lambda: ModelConfig(base_channels=2**64),
        lambda: from_dict(RunConfig, {"train": {"patience": 10**19}}),
        lambda: from_dict(RunConfig, {"seed": True}),
    ):
        with pytest.raises(AblationError):
            build()
    assert RunConfig(seed=MAX_INT).seed == MAX_INT


@pytest.mark.parametrize(
    "argv",
    [
        ["models", "--img-size", "1000000"],
        ["models", "--base-channels", "100000"],
        ["data", "info", "--root", "synthetic-nuclei", "--img-size", "99999999"],
        ["train", "--dataset", "synthetic-nuclei", "--img-size", "409600"],
        ["report", "{results}", "--n-boot", str(10**9)],
    ],
    ids=["models-size", "models-width", "data-size", "train-size", "n-boot"],
)
def test_sizes_that_could_never_fit_in_memory_are_refused_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
):
    argv = [arg.replace("{results}", str(tmp_path)) for arg in argv]
    err = _fails([*argv, *(["--out", str(tmp_path / "o")] if argv[0] == "train" else [])], capsys)
    assert "must be" in err and (
        "16..4096" in err or "<= 1024" in err or "8..4096" in err or "100..100000" in err
    )
    assert not (tmp_path / "o").exists()


def test_a_huge_grid_is_refused_at_once_naming_its_axes(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(AblationError, match=f"more than the {MAX_GRID_RUNS} one spec may hold"):
        load_spec({**TINY, "folds": 5, "repeats": 10**9})
    spec = _spec(tmp_path, seeds=list(range(MAX_GRID_RUNS // 2 + 1)))
    err = _fails(["run", str(spec), "--dry-run"], capsys)
    assert (
        "the grid has 20002 runs (1 repeats x 1 folds x 10001 seeds x 1 datasets x 2 connectors x subsets)"
        in err
    )


def test_dry_run_prints_each_run_as_it_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    from ablation.grid import status

    seen = []
    original = status.run_state

    def counting(results_dir, name, stale=None):
        seen.append(name)
        if len(seen) == 2:  # the first line is out before the second run is even looked at
            assert capsys.readouterr().out.startswith("pending  synthetic-nuclei_unet_0000_s0")
        return original(results_dir, name, stale)

    monkeypatch.setattr(status, "run_state", counting)
    assert main(["run", str(_spec(tmp_path, seeds=[0, 1])), "--out", str(tmp_path / "r"), "--dry-run"]) == 0
    assert len(seen) == 4
