"""Smaller failures: a checkpoint that cannot be resumed from is named by `ablation status` and the run restarts;
a full disk names the file being written in one line (and a grid records the failure and goes on); stopping the
Ray driver leaves no Ray process behind."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path

import pytest
from test_grid_fakes import entries, fake_train

from ablation import io as ablation_io
from ablation.cli import main
from ablation.errors import AblationError
from ablation.grid import expand_spec, grid_status, run_grid
from ablation.store.layout import LAST_CHECKPOINT, REPLACED_DIR, STATUS_FILE, run_name
from ablation.store.state import checkpoint_problem, read_run_state
from ablation.store.writers import append_history, write_image_metrics, write_status

TESTS = Path(__file__).resolve().parent
SPEC = {
    "datasets": ["synthetic-nuclei"],
    "subsets": ["none", "all"],
    "model": {"img_size": 32, "base_channels": 4},
    "train": {"max_epochs": 1},
}


def _checkpoint_bytes() -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save({"run_id": "x", "epoch": 3, "model": {"w": torch.zeros(64)}}, buffer)
    return buffer.getvalue()


def _without_data_pkl(data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(buffer, "w") as target:
        for item in source.infolist():
            if not item.filename.endswith("data.pkl"):
                target.writestr(item, source.read(item))
    return buffer.getvalue()


def _flip_in_data_pkl(data: bytes) -> bytes:
    """One byte of the pickled record changed: the archive still opens, only the member's CRC-32 can tell."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("data.pkl"))
    local = info.header_offset  # the member's local header: its name and extra field lengths sit at 26 and 28
    start = local + 30 + int.from_bytes(data[local + 26 : local + 28], "little")
    start += int.from_bytes(data[local + 28 : local + 30], "little")
    damaged = bytearray(data)
    damaged[start + info.compress_size // 2] ^= 0xFF
    return bytes(damaged)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda data: data[: len(data) // 2], "is damaged"),
        (lambda data: b"", "is damaged"),
        (lambda data: os.urandom(2048), "is damaged"),
        (_without_data_pkl, "is not a torch checkpoint"),
        (_flip_in_data_pkl, "is damaged"),
    ],
    ids=["truncated", "empty", "garbage", "no-record", "flipped-byte"],
)
def test_status_says_a_damaged_checkpoint_cannot_resume_and_run_restarts_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage, reason: str
):
    (config,) = expand_spec({**SPEC, "subsets": ["all"]})
    run_dir = tmp_path / run_name(config)
    run_dir.mkdir()
    write_status(run_dir, "running", epoch=3)
    good = _checkpoint_bytes()
    (run_dir / LAST_CHECKPOINT).write_bytes(good)
    assert checkpoint_problem(run_dir / LAST_CHECKPOINT) is None
    (state,) = grid_status(tmp_path, [config])
    assert (state.status, state.detail) == ("pending", "interrupted at epoch 3, resumes")

    damaged = damage(good)
    (run_dir / LAST_CHECKPOINT).write_bytes(damaged)
    (state,) = grid_status(tmp_path, [config])
    assert state.status == "damaged" and f"{run_dir / LAST_CHECKPOINT} {reason}" in state.detail
    assert state.detail.endswith("the run cannot resume; `ablation run` restarts it from epoch 0")
    assert main(["status", str(tmp_path), "--quiet"]) == 0
    assert "cannot resume" in capsys.readouterr().out

    summary = run_grid([config], tmp_path, train_unit=fake_train, progress=False)
    assert summary.names("done") == [run_dir.name] and read_run_state(run_dir)[0] == "done"
    (kept,) = (tmp_path / REPLACED_DIR).iterdir()
    assert (kept / LAST_CHECKPOINT).read_bytes() == damaged, "the damaged checkpoint is kept aside"


def _disk_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every atomic write fails as on a full disk (in the writer itself, after the temporary file exists)."""

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ablation_io.os, "fsync", full)


def test_a_full_disk_names_the_file_being_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    _disk_full(monkeypatch)
    for write, name in (
        (lambda: write_status(tmp_path, "running"), STATUS_FILE),
        (
            lambda: write_image_metrics(tmp_path / "test_metrics.csv", [{"image": "a", "dice": 0.5}]),
            "test_metrics",
        ),
        (lambda: ablation_io.atomic_write_bytes(tmp_path / "checkpoint_last.pt", b"x"), "checkpoint_last.pt"),
    ):
        with pytest.raises(AblationError, match=f"cannot write {tmp_path}/{name}.*: No space left on device"):
            write()
    assert not list(tmp_path.iterdir()), "no temporary file is left behind"
    real_open = Path.open

    def appending_fails(path: Path, mode: str = "r", *args, **kwargs):
        if "a" in mode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", appending_fails)
    with pytest.raises(AblationError, match=r"cannot write .*history.csv: No space left on device"):
        append_history(tmp_path, [{"epoch": 1}])


def test_a_full_disk_is_one_error_line_from_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(SPEC))
    monkeypatch.setenv("ABLATION_CACHE", str(tmp_path / "cache"))
    _disk_full(monkeypatch)
    cases = [
        (
            ["run", str(spec), "--out", str(tmp_path / "results")],
            f"cannot write {tmp_path / 'results' / 'grid.json'}",
        ),
        (
            ["train", "--dataset", "synthetic-nuclei", "--img-size", "32", "--out", str(tmp_path / "t")],
            "splits",
        ),
    ]
    for argv, where in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and where in err, err
        assert "No space left on device" in err


def _fills_the_disk(configs, dirs, *, device=None, progress=False):
    """A trainer whose disk fills up mid-run: its own write fails, then so does every status.json."""
    for out_dir in dirs:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    ablation_io.os.fsync = _raise_enospc  # undone by the test
    ablation_io.atomic_write_bytes(Path(dirs[0]) / LAST_CHECKPOINT, b"weights")


def _raise_enospc(fd: int) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_grid_on_a_full_disk_records_each_failure_and_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(ablation_io.os, "fsync", os.fsync)  # restored after the test
    configs = expand_spec(SPEC)
    summary = run_grid(configs, tmp_path, train_unit=_fills_the_disk, progress=False)
    assert summary.exit_code == 1 and len(summary.failed) == 2
    first, second = summary.failed
    assert first.error.startswith(
        f"AblationError: cannot write {tmp_path / first.name / LAST_CHECKPOINT}: No space"
    )
    assert first.error.endswith(
        f"(and cannot write {tmp_path / first.name / STATUS_FILE}: No space left on device)"
    )
    assert second.error == f"cannot write {tmp_path / second.name / 'run.lock'}: No space left on device"
    assert "failed: " + second.name in summary.format()


# -- Ray ------------------------------------------------------------------------------------------------------

DRIVER = """
import sys
sys.path.insert(0, sys.argv[1])
from test_grid_fakes import fake_train
from ablation.grid import expand_spec, run_grid
spec = {"datasets": ["synthetic-nuclei"], "subsets": ["none", "all"], "model": {"img_size": 32, "base_channels": 4}}
run_grid(expand_spec(spec), sys.argv[2], backend="ray", train_unit=fake_train, progress=False)
"""


def _tagged(tag: str) -> list[int]:
    """Our processes whose environment carries ``tag`` (inherited by every process Ray starts for the driver)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if f"ABLATION_TEST_TAG={tag}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _wait_for(condition, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def _command_names(pids: list[int]) -> list[str]:
    names = []
    for pid in pids:
        try:
            names.append(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()[-40:])
        except OSError:
            continue
    return names


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc (Linux)")
@pytest.mark.parametrize(
    ("stop", "moment"), [(signal.SIGTERM, "tasks running"), (signal.SIGINT, "while Ray starts")]
)
def test_stopping_the_ray_driver_leaves_no_ray_process(tmp_path: Path, stop: int, moment: str):
    pytest.importorskip("ray")
    tag = uuid.uuid4().hex
    env = {
        **os.environ,
        "ABLATION_TEST_TAG": tag,
        "GRID_TEST_SLEEP": "60",
        "PYTHONPATH": f"{os.getcwd()}:{TESTS}",
    }
    results = tmp_path / "results"
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(TESTS), str(results)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        if moment == "tasks running":
            started = lambda: len(list(results.glob("*/entered-*"))) == 2  # noqa: E731
        else:  # the raylet is up but the driver has not finished connecting
            started = lambda: any("raylet" in name for name in _command_names(_tagged(tag)))  # noqa: E731
        assert _wait_for(started, 120), "Ray did not start"
        driver.send_signal(stop)
        driver.wait(timeout=60)
        assert _wait_for(lambda: not _tagged(tag), 20), f"left behind: {_command_names(_tagged(tag))}"
    finally:
        if driver.poll() is None:
            driver.kill()
        for pid in _tagged(tag):  # never leak what this test started
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if moment == "tasks running":
        assert all(entries(run) == 1 for run in results.iterdir() if run.is_dir()), "the runs stay resumable"
