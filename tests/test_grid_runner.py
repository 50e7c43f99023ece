"""The grid runner with stand-in run functions: skipping, failure isolation, locks, workers, concurrent runners."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_grid_fakes import (
    crashing_train,
    entries,
    environment_train,
    failing_train,
    fake_train,
    self_failing_train,
    silent_train,
)

from ablation.cli import main
from ablation.grid import execute_unit, expand_spec, grid_status, locks, plan_units, run_grid
from ablation.grid.local import worker_devices
from ablation.store.layout import run_name
from ablation.store.state import read_run_state

TESTS = Path(__file__).resolve().parent
SPEC = {
    "datasets": ["synthetic-nuclei"],
    "subsets": ["none", "all", "1000", "0100"],
    "model": {"img_size": 32, "base_channels": 4},
    "train": {"max_epochs": 1},
}


def _dirs(results: Path, configs: list) -> list[Path]:
    return [results / run_name(c) for c in configs]


def test_runs_everything_once_then_skips(tmp_path: Path):
    configs = expand_spec(SPEC)
    summary = run_grid(configs, tmp_path, train_unit=fake_train, progress=False)
    assert len(summary.names("done")) == 4 and summary.exit_code == 0
    assert all(entries(d) == 1 for d in _dirs(tmp_path, configs))
    assert not list(tmp_path.rglob(locks.LOCK_FILE)), "locks are released"
    again = run_grid(configs, tmp_path, train_unit=fake_train, progress=False)
    assert len(again.names("skipped")) == 4 and not again.names("done")
    assert all(entries(d) == 1 for d in _dirs(tmp_path, configs))
    assert json.loads((tmp_path / "grid.json").read_text())["runs"] == [run_name(c) for c in configs]


def test_failing_run_is_recorded_and_the_grid_goes_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    configs = expand_spec(SPEC)
    summary = run_grid(configs, tmp_path, train_unit=failing_train, progress=False)
    assert summary.exit_code == 1
    assert len(summary.names("done")) == 3
    (failed,) = summary.failed
    assert failed.error == "ValueError: synthetic failure in the no-skip run"
    status = read_run_state(tmp_path / failed.name)[2]
    assert status["status"] == "failed: ValueError: synthetic failure in the no-skip run"
    assert "Traceback" in status["traceback"]
    assert "failed: " + failed.name in summary.format()

    states = {s.name: s for s in grid_status(tmp_path)}
    assert states[failed.name].status == "failed"
    assert states[failed.name].detail == "ValueError: synthetic failure in the no-skip run"

    # Left failed when asked, retried by default (and now it succeeds).
    kept = run_grid(configs, tmp_path, train_unit=fake_train, progress=False, retry_failed=False)
    assert [o.name for o in kept.failed] == [failed.name] and entries(tmp_path / failed.name) == 1
    retried = run_grid(configs, tmp_path, train_unit=fake_train, progress=False)
    assert retried.names("done") == [failed.name] and retried.exit_code == 0
    assert entries(tmp_path / failed.name) == 2


def test_run_function_failure_status_is_kept(tmp_path: Path):
    configs = expand_spec(SPEC)
    summary = run_grid(configs, tmp_path, train_unit=self_failing_train, progress=False)
    (failed,) = summary.failed
    assert failed.error == "non-finite loss at epoch 3"
    assert read_run_state(tmp_path / failed.name)[2]["status"] == "failed: non-finite loss at epoch 3"


def test_run_without_metrics_is_not_done(tmp_path: Path):
    (config,) = expand_spec({**SPEC, "subsets": ["all"]})
    (outcome,) = execute_unit([config], tmp_path, train_unit=silent_train)
    assert outcome.outcome == "failed" and "without writing metrics.json" in outcome.error
    assert grid_status(tmp_path, [config])[0].status == "failed"


def test_locks_exclusive_stale_and_foreign(tmp_path: Path):
    run_dir = tmp_path / "run"
    assert locks.try_lock(run_dir)
    assert locks.is_locked(run_dir)
    assert not locks.try_lock(run_dir), "a live owner (this process) keeps its lock"
    locks.release_lock(run_dir)
    assert not locks.lock_path(run_dir).exists()

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_lock(run_dir, pid=dead.pid, host=socket.gethostname())
    assert not locks.is_locked(run_dir)
    assert locks.try_lock(run_dir), "the stale lock of a dead process is broken"
    assert locks.read_owner(run_dir).pid == os.getpid()
    locks.release_lock(run_dir)

    _write_lock(run_dir, pid=dead.pid, host="another-node")
    assert locks.is_locked(run_dir) and not locks.try_lock(run_dir), "another host's lock cannot be checked"
    locks.release_lock(run_dir)
    assert locks.lock_path(run_dir).exists(), "release only removes our own lock"

    locks.lock_path(run_dir).write_text("")  # an owner between create and write
    assert not locks.try_lock(run_dir)
    old = time.time() - 2 * locks.UNREADABLE_GRACE_SECONDS
    os.utime(locks.lock_path(run_dir), (old, old))
    assert locks.try_lock(run_dir), "an unreadable lock is abandoned after the grace period"


def _write_lock(run_dir: Path, *, pid: int, host: str) -> None:
    record = {"pid": pid, "host": host, "started": time.time()}
    run_dir.mkdir(parents=True, exist_ok=True)
    locks.lock_path(run_dir).write_text(json.dumps(record))


def test_locked_run_is_left_to_its_owner(tmp_path: Path):
    configs = expand_spec(SPEC)
    busy_dir = tmp_path / run_name(configs[0])
    busy_dir.mkdir()
    _write_lock(busy_dir, pid=os.getppid(), host=socket.gethostname())  # a live process that is not us
    summary = run_grid(configs, tmp_path, train_unit=fake_train, progress=False)
    assert summary.names("busy") == [busy_dir.name] and len(summary.names("done")) == 3
    assert entries(busy_dir) == 0
    assert grid_status(tmp_path, configs)[0].status == "running"


def test_interrupted_run_resumes_and_leftover_temp_files_go(tmp_path: Path):
    (config,) = expand_spec({**SPEC, "subsets": ["all"]})
    run_dir = tmp_path / run_name(config)
    run_dir.mkdir()
    (run_dir / "status.json").write_text(json.dumps({"status": "running", "epoch": 4}))
    (run_dir / ".metrics.json.abc.tmp").write_text("{half")
    (state,) = grid_status(tmp_path, [config])
    assert (state.status, state.detail) == ("pending", "interrupted at epoch 4, resumes")
    run_grid([config], tmp_path, train_unit=fake_train, progress=False)
    assert grid_status(tmp_path, [config])[0].status == "done"
    assert not list(run_dir.glob("*.tmp"))


def test_plan_units_single_runs_at_pack_size_one_and_every_run_once_otherwise():
    configs = expand_spec(SPEC)
    assert plan_units(configs, pack_size=1) == [[c] for c in configs]
    packed = plan_units(configs, pack_size=4)
    assert all(len(unit) <= 4 for unit in packed)
    assert sorted(run_name(c) for unit in packed for c in unit) == sorted(run_name(c) for c in configs)
    with pytest.raises(Exception, match="pack_size must be >= 1"):
        plan_units(configs, pack_size=0)


def test_worker_devices_pin_round_robin():
    assert worker_devices(None, ["0", "1"], 2) == ["0", "1", "0", "1"]
    assert worker_devices(3, ["5"], 1) == ["5", "5", "5"]
    assert worker_devices(None, [], 1) == [None]
    assert worker_devices(2, [], 1) == [None, None]


def test_worker_processes_pin_gpus_and_survive_a_dead_worker(tmp_path: Path):
    """Spawned workers (two fake GPU ids) pin CUDA_VISIBLE_DEVICES; a worker killed mid-run fails only its run."""
    configs = expand_spec(SPEC)
    summary = run_grid(configs, tmp_path, gpus=["7", "9"], train_unit=crashing_train, progress=False)
    (failed,) = summary.failed
    assert failed.name == run_name(configs[0]) and "worker process died with exit code -9" in failed.error
    assert read_run_state(tmp_path / failed.name)[2]["status"].startswith("failed: worker process died")
    assert not locks.lock_path(tmp_path / failed.name).exists()
    assert len(summary.names("done")) == 3
    for name in summary.names("done"):
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        assert metrics["visible"] in ("7", "9") and metrics["threads"] == max(
            1, len(os.sched_getaffinity(0)) // 2
        )

    rerun = run_grid(
        configs, tmp_path, workers=2, gpus=["7", "9"], train_unit=environment_train, progress=False
    )
    assert rerun.names("done") == [failed.name]
    metrics = json.loads((tmp_path / failed.name / "metrics.json").read_text())
    assert metrics["visible"] in ("7", "9") and metrics["pid"] != os.getpid()
    # One unit left: one worker is started (not two), and it gets every core.
    assert metrics["threads"] == len(os.sched_getaffinity(0))


def test_two_concurrent_runners_never_train_a_run_twice(tmp_path: Path):
    configs = expand_spec({**SPEC, "subsets": "all"})
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from test_grid_fakes import fake_train;"
        "from ablation.grid import expand_spec, run_grid;"
        "from test_grid_runner import SPEC;"
        "s = run_grid(expand_spec({**SPEC, 'subsets': 'all'}), sys.argv[2], train_unit=fake_train, progress=False);"
        "print(len(s.names('done')), len(s.names('busy')), len(s.names('skipped')))"
    )
    env = {**os.environ, "GRID_TEST_SLEEP": "0.15"}
    runners = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(TESTS), str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [runner.communicate(timeout=60)[0].split() for runner in runners]
    assert all(runner.returncode == 0 for runner in runners)
    assert [entries(d) for d in _dirs(tmp_path, configs)] == [1] * 16, "every run trained exactly once"
    trained = [int(out[0]) for out in outputs]
    assert sum(trained) == 16 and min(trained) > 0, f"both runners took work: {outputs}"
    assert all(s.status == "done" for s in grid_status(tmp_path, configs))


def test_status_command_lists_every_state(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    spec_path = tmp_path / "tiny.toml"
    spec_path.write_text(
        'datasets = ["synthetic-nuclei"]\nsubsets = ["none", "all", "1000", "0100"]\n'
        "[model]\nimg_size = 32\nbase_channels = 4\n[train]\nmax_epochs = 1\n"
    )
    configs = expand_spec(spec_path)
    results = tmp_path / "results"
    run_grid(configs[:2], results, train_unit=failing_train, progress=False)
    _write_lock(results / run_name(configs[2]), pid=os.getppid(), host=socket.gethostname())

    assert main(["status", str(results), "--spec", str(spec_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("failed   " + run_name(configs[0]) + "  (ValueError: synthetic failure")
    assert out[1] == "done     " + run_name(configs[1])
    assert out[2].startswith("running  " + run_name(configs[2]) + "  (pid ")
    assert out[3] == "pending  " + run_name(configs[3])
    assert out[4] == f"4 runs in {results}: 1 done, 1 running, 1 failed, 1 pending"

    assert main(["status", str(results)]) == 0  # without the spec: the runs grid.json and the folder know
    assert (
        capsys.readouterr().out.splitlines()[-1]
        == f"3 runs in {results}: 1 done, 1 running, 1 failed, 0 pending"
    )
    assert main(["status", str(tmp_path / "nowhere")]) == 2
