"""Run locks: two grid runners on one results folder never train the same run twice.

A runner claims a run by creating ``<run folder>/run.lock`` with ``os.open(O_CREAT | O_EXCL)``, which succeeds for
exactly one process, also on NFS v3+ and most shared file systems. The file holds the owner's pid, host and the
time the lock was taken, and on Linux the machine's boot id and the owner process's start time (from ``/proc``).
A lock whose owner is gone is stale and is broken: on this host, when no process has its pid, when the process
with that pid started at another time (the pid was reused by an unrelated process), or when the machine has
rebooted since. A lock held by another host cannot be checked and is respected (see ``ablation status`` to find
and remove it by hand).

Breaking a stale lock is itself guarded by a short-lived ``run.lock.break`` file, so two runners that both see the
same stale lock cannot both delete it (the second would otherwise delete the first one's fresh lock).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablation.errors import AblationError

LOCK_FILE = "run.lock"
BREAK_SUFFIX = ".break"
# A lock file that cannot be parsed is only considered abandoned after this long: its owner may be between the
# O_EXCL create and the write of its content.
UNREADABLE_GRACE_SECONDS = 60.0


@dataclass(frozen=True)
class LockOwner:
    pid: int
    host: str
    started: float  # time.time() when the lock was taken
    # "<boot id>/<process start time in clock ticks since boot>" on Linux: which process, not only which pid;
    # None where /proc is unavailable (then only the pid is checked) and in locks of earlier versions.
    process: str | None = None

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} on {self.host} since {when}"


def lock_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / LOCK_FILE


def read_owner(run_dir: str | Path) -> LockOwner | None:
    """The lock's owner, or None when there is no lock or it cannot be read yet."""
    try:
        data: dict[str, Any] = json.loads(lock_path(run_dir).read_text(encoding="utf-8"))
        process = data.get("process")
        return LockOwner(
            pid=int(data["pid"]),
            host=str(data["host"]),
            started=float(data["started"]),
            process=process if isinstance(process, str) else None,
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def process_identity(pid: int) -> str | None:
    """``"<boot id>/<start time>"`` of a process on this host (Linux), or None when it cannot be read.

    A pid is reused once its process is gone; its start time (clock ticks since boot, ``/proc/<pid>/stat``
    field 22) and the boot id tell the process that took a lock from a later one with the same pid.
    """
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            boot = handle.read().strip()
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            # The command name (field 2) may hold spaces and parentheses: fields after its last ")" are fixed.
            start = handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None
    return f"{boot}/{start}"


def owner_alive(owner: LockOwner) -> bool:
    """Whether the process that took a lock on this host still runs (the same process, not only its pid)."""
    if not pid_alive(owner.pid):
        return False
    if owner.process is None:  # an earlier version's lock, or no /proc: the pid is all we have
        return True
    now = process_identity(owner.pid)
    return now is None or now == owner.process


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:  # a killed child not yet reaped by its parent still answers kill(0)
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def held_by_live_process(run_dir: str | Path) -> bool:
    """Whether the run's lock is held by a process on this host that is verifiably the one that took it (its
    start time recorded and matching), so waiting for it is waiting for a real runner."""
    owner = read_owner(run_dir)
    if owner is None or owner.host != socket.gethostname() or owner.process is None:
        return False
    return process_identity(owner.pid) == owner.process and pid_alive(owner.pid)


def is_locked(run_dir: str | Path) -> bool:
    """Whether a live owner (or one on another host, which cannot be checked) holds the run's lock."""
    path = lock_path(run_dir)
    if not path.exists():
        return False
    return not _is_stale(path)


def try_lock(run_dir: str | Path) -> bool:
    """Claim the run for this process; False when another live process holds it.

    A stale lock (its owner dead on this host) is broken and the claim retried once.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = lock_path(run_dir)
    for _ in range(2):
        if _create_exclusive(path):
            return True
        if not _break_if_stale(path):
            return False
    return False


def release_lock(run_dir: str | Path) -> None:
    """Remove the run's lock if this process owns it."""
    owner = read_owner(run_dir)
    if owner is not None and owner.pid == os.getpid() and owner.host == socket.gethostname():
        lock_path(run_dir).unlink(missing_ok=True)


def _create_exclusive(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    content = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    process = process_identity(os.getpid())
    if process is not None:
        content["process"] = process
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(content) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:  # e.g. a full disk: an empty lock would block the run for the grace period
        path.unlink(missing_ok=True)
        raise AblationError(f"cannot write {path}: {error.strerror or error}") from None
    return True


def _is_stale(path: Path) -> bool:
    owner = read_owner(path.parent)
    if owner is None:
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return True
        return age > UNREADABLE_GRACE_SECONDS
    if owner.host != socket.gethostname():
        return False
    return not owner_alive(owner)


def _break_if_stale(path: Path) -> bool:
    """Delete a stale lock under the break guard; True when the lock is gone (the caller may claim it)."""
    guard = path.with_name(path.name + BREAK_SUFFIX)
    if not _create_exclusive(guard):
        # Another runner is breaking this lock right now, or died doing so; a guard left by a dead one is old.
        try:
            if time.time() - guard.stat().st_mtime > UNREADABLE_GRACE_SECONDS:
                guard.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        return False
    try:
        if not path.exists():
            return True
        if not _is_stale(path):
            return False
        try:
            path.unlink()
        except OSError as error:
            if error.errno != errno.ENOENT:
                raise
        return True
    finally:
        guard.unlink(missing_ok=True)
