"""Run locks: two grid runners on one results folder never train the same run twice.

A runner claims a run by creating ``<run folder>/run.lock`` with ``os.open(O_CREAT | O_EXCL)``, which succeeds for
exactly one process, also on NFS v3+ and most shared file systems. The file holds the owner's pid, host and start
time. A lock whose owner is on this host and no longer alive (killed, crashed) is stale and is broken; a lock held
by another host cannot be checked and is respected (see ``ablation status`` to find and remove it by hand).

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

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} on {self.host} since {when}"


def lock_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / LOCK_FILE


def read_owner(run_dir: str | Path) -> LockOwner | None:
    """The lock's owner, or None when there is no lock or it cannot be read yet."""
    try:
        data: dict[str, Any] = json.loads(lock_path(run_dir).read_text(encoding="utf-8"))
        return LockOwner(pid=int(data["pid"]), host=str(data["host"]), started=float(data["started"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


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
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(content) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
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
    return not pid_alive(owner.pid)


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
