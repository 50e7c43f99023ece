"""The grid with real (tiny) training runs: SIGKILL and rerun, failure isolation, test-time masks, Ray."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ablation.grid import expand_spec, grid_status, run_grid
from ablation.grid.locks import LOCK_FILE
from ablation.store.layout import MASKED_METRICS_FILE, METRICS_FILE, run_name
from ablation.store.state import read_run_state

TINY_TOML = """
datasets = ["synthetic-nuclei"]
subsets = {subsets}
[model]
img_size = 32
base_channels = 4
[train]
max_epochs = {epochs}
min_best_epoch = 0
checkpoint_every = 1
"""


# Tiny models train fastest on one thread; two threads on a busy 2-core machine spin-wait for seconds.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _spec(tmp_path: Path, subsets: str, epochs: int) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_TOML.format(subsets=subsets, epochs=epochs))
    return path


def _epochs(run_dir: Path) -> list[int]:
    with (run_dir / "history.csv").open() as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle)]


def test_sigkilled_grid_finishes_on_rerun_without_duplicates(tmp_path: Path):
    epochs = 12
    spec = _spec(tmp_path, '["none", "all", "1000", "0001", "0110"]', epochs)
    configs = expand_spec(spec)
    results = tmp_path / "results"
    command = [sys.executable, "-m", "ablation", "run", str(spec), "--out", str(results), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    grid = subprocess.Popen(
        [*command, "--workers", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )
    run_dirs = [results / run_name(c) for c in configs]
    deadline = time.time() + 90
    while time.time() < deadline and grid.poll() is None:
        done = [d for d in run_dirs if (d / METRICS_FILE).exists()]
        midway = [
            d for d in run_dirs if not (d / METRICS_FILE).exists() and (d / "checkpoint_last.pt").exists()
        ]
        if len(done) >= 2 and midway:
            break
        time.sleep(0.05)
    assert grid.poll() is None, (
        f"the grid ended before it could be killed: {grid.stderr.read().decode()[-2000:]}"
    )
    grid.send_signal(signal.SIGKILL)
    grid.wait()
    grid.stderr.close()
    finished_before = {
        d: (d / METRICS_FILE).stat().st_mtime_ns for d in run_dirs if (d / METRICS_FILE).exists()
    }
    assert 2 <= len(finished_before) < len(run_dirs)
    interrupted = [d for d in run_dirs if d not in finished_before and (d / "checkpoint_last.pt").exists()]
    assert interrupted, "one run was killed mid-way"
    time.sleep(0.5)  # the workers die with the runner (PDEATHSIG); let the kernel reap them

    rerun = subprocess.run([*command, "--workers", "1"], capture_output=True, text=True, timeout=120, env=env)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"trained {len(run_dirs) - len(finished_before)}, skipped {len(finished_before)}" in rerun.stdout
    for run_dir in run_dirs:
        metrics = json.loads((run_dir / METRICS_FILE).read_text())  # parses: never half-written
        assert metrics["status"] == "done" and metrics["run_name"] == run_dir.name
        history = _epochs(run_dir)
        assert history == list(range(1, len(history) + 1)) and len(history) <= epochs, (
            "no epoch trained twice"
        )
        assert not list(run_dir.glob("*.tmp")) and not (run_dir / LOCK_FILE).exists()
    for run_dir, mtime in finished_before.items():
        assert (run_dir / METRICS_FILE).stat().st_mtime_ns == mtime, "a finished run was not trained again"
    assert all(state.status == "done" for state in grid_status(results, configs))


def test_real_failure_is_isolated_and_test_time_masks_are_written(tmp_path: Path):
    spec = {
        "datasets": ["synthetic-glands", str(tmp_path / "no-such-dataset")],
        "subsets": ["none", "all"],
        "test_time_masks": True,
        "model": {"img_size": 32, "base_channels": 4},
        "train": {"max_epochs": 1, "min_best_epoch": 0},
    }
    configs = expand_spec(spec)
    summary = run_grid(configs, tmp_path / "results", progress=False)
    assert summary.exit_code == 1
    assert {o.name.split("_")[0] for o in summary.failed} == {"no-such-dataset"}
    assert len(summary.failed) == 2 and len(summary.names("done")) == 2
    for outcome in summary.failed:
        assert "no-such-dataset" in read_run_state(tmp_path / "results" / outcome.name)[2]["status"]
    (all_skips,) = [c for c in configs if c.dataset == "synthetic-glands" and c.model.skips == "1111"]
    masked = (tmp_path / "results" / run_name(all_skips) / MASKED_METRICS_FILE).read_text().splitlines()
    assert masked[0].startswith("eval_skips,image,dice")
    assert len({line.split(",")[0] for line in masked[1:]}) == 16, "all 16 runtime masks evaluated"


def test_ray_backend_completes_a_tiny_grid(tmp_path: Path):
    ray = pytest.importorskip("ray")
    configs = expand_spec(
        {
            "datasets": ["synthetic-nuclei"],
            "subsets": ["none", "all"],
            "model": {"img_size": 32, "base_channels": 4},
            "train": {"max_epochs": 1, "min_best_epoch": 0},
        }
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        summary = run_grid(configs, tmp_path / "shared", backend="ray", progress=False)
        assert ray.is_initialized(), "the runner leaves a Ray instance it did not start running"
    finally:
        ray.shutdown()
    assert summary.exit_code == 0 and len(summary.names("done")) == 2, summary.format()
    assert all(state.status == "done" for state in grid_status(tmp_path / "shared", configs))


def test_demo_runs_its_spec_then_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    from ablation.cli import main
    from ablation.grid import cli

    monkeypatch.setattr(cli, "DEMO_SPEC", _spec(tmp_path, '["none", "all"]', 1))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "trained 2, skipped 0 (already done), failed 0" in printed
    assert f"report: {out.resolve() / 'report'}" in printed or f"report: {out / 'report'}" in printed
    assert (out / "report" / "README.md").exists()

    monkeypatch.setattr(cli, "DEMO_SPEC", tmp_path / "missing" / "demo.toml")
    assert main(["demo", "--out", str(out)]) == 2
    assert "demo spec not found at" in capsys.readouterr().err
