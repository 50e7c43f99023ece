"""Locks and grid files: a lock is stale once its owner process is gone (also when its pid now belongs to another
process); runs another runner holds do not end a grid with exit 0 unless it finished them; a damaged grid.json is
an error naming it and is only ever merged into; run folders stay inside the results folder."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_grid_fakes import entries, fake_train

from ablation.cli import main
from ablation.errors import AblationError
from ablation.grid import expand_spec, grid_status, load_spec, locks, run_grid, select_runs
from ablation.report.load import load_results
from ablation.store.layout import GRID_FILE, run_dir_in, run_name

SPEC = {
    "datasets": ["synthetic-nuclei"],
    "subsets": ["none", "all"],
    "model": {"img_size": 32, "base_channels": 4},
    "train": {"max_epochs": 1},
}
TOML = (
    'datasets = ["synthetic-nuclei"]\nsubsets = ["none", "all"]\n'
    "[model]\nimg_size = 32\nbase_channels = 4\n[train]\nmax_epochs = 1\n"
)


def _lock(run_dir: Path, *, pid: int, host: str | None = None, process: str | None = None) -> None:
    record = {"pid": pid, "host": host or socket.gethostname(), "started": time.time()}
    if process is not None:
        record["process"] = process
    run_dir.mkdir(parents=True, exist_ok=True)
    locks.lock_path(run_dir).write_text(json.dumps(record))


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


# -- locks ---------------------------------------------------------------------------------------------------


@pytest.mark.skipif(locks.process_identity(os.getpid()) is None, reason="needs /proc (Linux)")
def test_a_lock_whose_pid_now_belongs_to_another_process_is_stale(tmp_path: Path):
    run_dir = tmp_path / "run"
    parent = os.getppid()  # alive, but it never took this lock
    boot, start = locks.process_identity(parent).split("/")
    stale_owners = {
        "another start time": f"{boot}/{int(start) + 1}",
        "another boot": f"00000000-0000-0000-0000-000000000000/{start}",
    }
    for why, process in stale_owners.items():
        _lock(run_dir, pid=parent, process=process)
        assert not locks.is_locked(run_dir), why
        assert locks.try_lock(run_dir), f"the lock of a reused pid is broken ({why})"
        assert locks.read_owner(run_dir).process == locks.process_identity(os.getpid())
        locks.release_lock(run_dir)
    _lock(run_dir, pid=parent, process=locks.process_identity(parent))  # the very process: respected
    assert locks.is_locked(run_dir) and not locks.try_lock(run_dir)
    assert locks.held_by_live_process(run_dir)
    _lock(run_dir, pid=parent)  # an earlier version's lock: only the pid can be checked, so it is respected
    assert locks.is_locked(run_dir) and not locks.held_by_live_process(run_dir)
    _lock(run_dir, pid=parent, host="another-node", process="x/1")  # another host: cannot be checked
    assert locks.is_locked(run_dir) and not locks.held_by_live_process(run_dir)


def test_a_lock_that_cannot_be_written_is_an_error_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import errno

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(locks.os, "fsync", full)
    with pytest.raises(AblationError, match=r"cannot write .*run\.lock: No space left on device"):
        locks.try_lock(tmp_path / "run")
    assert not locks.lock_path(tmp_path / "run").exists()


@pytest.mark.skipif(locks.process_identity(os.getpid()) is None, reason="needs /proc (Linux)")
def test_runs_a_live_runner_holds_are_waited_for_and_taken_over_when_left(tmp_path: Path):
    configs = expand_spec(SPEC)
    held = tmp_path / run_name(configs[0])
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])
    try:
        _lock(held, pid=owner.pid, process=locks.process_identity(owner.pid))
        started = time.time()
        summary = run_grid(configs, tmp_path, train_unit=fake_train, progress=False)
    finally:
        owner.wait()
    assert time.time() - started >= 1.0, "it waited for the owner"
    assert sorted(summary.names("done")) == sorted(run_name(c) for c in configs) and summary.exit_code == 0
    assert entries(held) == 1 and not summary.names("busy")


def test_runs_held_from_another_host_are_not_the_end_of_a_grid(tmp_path: Path):
    configs = expand_spec(SPEC)
    held = tmp_path / run_name(configs[0])
    _lock(held, pid=1, host="lost-node", process="boot/1")
    summary = run_grid(configs, tmp_path, train_unit=fake_train, progress=False)
    assert summary.names("busy") == [held.name] and summary.exit_code == 1
    text = summary.format()
    assert f"not finished by another runner: {held.name}: held by pid 1 on lost-node since" in text
    assert "rerun this command once it has ended" in text
    assert grid_status(tmp_path, configs)[0].status == "running"
    locks.lock_path(held).unlink()  # the lost machine's lock removed by hand: the next call trains it
    again = run_grid(configs, tmp_path, train_unit=fake_train, progress=False)
    assert again.names("done") == [held.name] and again.exit_code == 0


# -- grid.json -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{broken", "grid.json is damaged (cannot read"),
        ("[1, 2]", "expected a JSON object, found list"),
        ('{"runs": "a"}', "'runs' must be a list of names"),
        ('{"runs": ["a", 3]}', "'runs' must be a list of names"),
        ('{"runs": [], "specs": {"a": 1}}', "'specs' must be a list of names"),
        ('{"runs": ["../../etc"]}', "run folder '../../etc' is not a plain folder name"),
        ('{"runs": ["/abs/path"]}', "run folder '/abs/path' is not a plain folder name"),
        ('{"runs": [".."]}', "run folder '..' is not a plain folder name"),
    ],
    ids=["not-json", "a-list", "runs-text", "runs-number", "specs", "dotdot", "absolute", "parent"],
)
def test_a_damaged_grid_json_is_an_error_naming_it_and_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, reason: str
):
    spec = tmp_path / "tiny.toml"
    spec.write_text(TOML)
    results = tmp_path / "results"
    results.mkdir()
    (results / GRID_FILE).write_text(content)
    for argv in (["run", str(spec), "--out", str(results), "--no-progress"], ["status", str(results)]):
        assert main(argv) == 2
        err = _error_line(capsys)
        assert "grid.json" in err and reason in err, err
    assert (results / GRID_FILE).read_text() == content, "never rewritten"
    assert not [p for p in results.iterdir() if p.name != GRID_FILE], "no run started"


def test_grid_json_is_merged_never_shrunk(tmp_path: Path):
    spec, other = (
        load_spec({**SPEC, "name": "tiny"}),
        load_spec({**SPEC, "name": "other", "subsets": ["1000"]}),
    )
    configs = spec.expand()
    results = tmp_path / "results"
    for runs, name in (
        (configs, "tiny"),
        (select_runs(configs, ["skips=none"]), "tiny"),
        (other.expand(), "other"),
    ):
        run_grid(runs, results, train_unit=fake_train, progress=False, spec_name=name)
    record = json.loads((results / GRID_FILE).read_text())
    assert record["runs"] == [*map(run_name, configs), run_name(other.expand()[0])], (
        "--only adds, never drops"
    )
    assert record["specs"] == ["tiny", "other"]
    assert len(load_results(results).expected) == 3


# -- run folders stay inside the results folder -------------------------------------------------------------


def test_a_run_folder_linked_outside_the_results_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    spec = tmp_path / "tiny.toml"
    spec.write_text(TOML)
    results, outside = tmp_path / "results", tmp_path / "outside"
    outside.mkdir()
    results.mkdir()
    name = run_name(expand_spec(spec)[0])
    (results / name).symlink_to(outside, target_is_directory=True)
    assert main(["run", str(spec), "--out", str(results), "--no-progress"]) == 2
    assert f"is a link to {outside}, outside the results folder" in _error_line(capsys)
    assert main(["status", str(results), "--spec", str(spec)]) == 2
    assert "outside the results folder" in _error_line(capsys)
    assert not list(outside.iterdir()), "nothing written outside"
    inside = results / "kept"
    inside.mkdir()
    (results / name).unlink()
    (results / name).symlink_to(inside, target_is_directory=True)  # a link that stays inside is a folder
    assert run_dir_in(results, name) == results / name


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("name", "../escape", "'name' '../escape' must be a plain folder name"),
        ("name", "a/b", "'name' 'a/b' must be a plain folder name"),
        ("name", ".hidden", "'name' '.hidden' must be a plain folder name"),
        ("out", "/tmp/elsewhere", "'out' '/tmp/elsewhere' must be a relative folder without '..'"),
        ("out", "results/../../up", "'out' 'results/../../up' must be a relative folder"),
        ("out", "~/results", "'out' '~/results' must be a relative folder"),
    ],
)
def test_spec_names_and_out_stay_below_the_working_folder(key: str, value: str, message: str):
    with pytest.raises(AblationError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_spec({**SPEC, key: value})
    assert load_spec({**SPEC, "out": "results/sub/study", "name": "my study"}).out == "results/sub/study"
