"""Atomic file writes, fingerprints and the environment record every run stores. No torch import here."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from ablation.errors import AblationError

RECORDED_PACKAGES = (
    "torch",
    "numpy",
    "pandas",
    "scipy",
    "matplotlib",
    "seaborn",
    "tqdm",
    "pillow",
    "einops",
    "ray",
)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one, never a part.

    Raises:
        AblationError: naming ``path`` when it cannot be written (a full disk, a read-only folder, ...); the old
            file, if any, is left as it was and no temporary file stays behind.
    """
    path = Path(path)
    ensure_folder(path.parent)
    if path.is_dir():
        raise AblationError(f"cannot write {path}: it is a folder")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; results should be as readable as any file
        os.replace(tmp, path)
    except OSError as error:
        _remove_quietly(tmp)
        raise AblationError(f"cannot write {path}: {error.strerror or error}") from None
    except BaseException:
        _remove_quietly(tmp)
        raise


def _remove_quietly(path: str | None) -> None:
    """Remove a temporary file if it exists; a failure here must not hide the error that got us here."""
    if path is not None:
        try:
            Path(path).unlink(missing_ok=True)
        except OSError:
            pass


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json_text(obj))


def json_text(obj: Any) -> str:
    """The text :func:`atomic_write_json` writes: indented, sorted keys, numpy scalars and arrays as numbers."""
    return json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def _umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def ensure_folder(path: str | Path) -> Path:
    """Create ``path`` (and its parents) as a folder; a file in the way is an AblationError naming it."""
    path = Path(path)
    for candidate in (path, *path.parents):
        if candidate.exists() and not candidate.is_dir():
            raise AblationError(f"{candidate} is a file, not a folder: choose another output location")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise AblationError(f"cannot create folder {path}: {error.strerror or error}") from None
    return path


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; a missing, unreadable or invalid file is an AblationError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AblationError(f"file not found: {path}") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
        raise AblationError(f"cannot read {path}: {reason}") from None


def read_json_table(path: str | Path) -> dict[str, Any]:
    """Like :func:`read_json`, but the content must be a JSON object (a table of keys)."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise AblationError(f"cannot read {path}: expected a JSON object, found {type(data).__name__}")
    return data


def stable_hash(obj: Any, length: int = 12) -> str:
    """Short hex digest of a JSON-serialisable object, independent of key order."""
    text = json.dumps(obj, sort_keys=True, default=_json_default, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def fingerprint_files(paths: Iterable[str | Path], root: str | Path | None = None) -> str:
    """Digest of file names, sizes and modification times (cheap; content changes that keep mtime are missed)."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        stat = path.stat()
        name = str(path.relative_to(root)) if root is not None else path.name
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def package_versions(names: Iterable[str] = RECORDED_PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(start: str | Path | None = None) -> str | None:
    """The commit of the checkout this package runs from (with ``+dirty`` if it has changes), or None."""
    where = Path(start) if start is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def environment_record() -> dict[str, Any]:
    """Package versions, git commit, host and platform; the device is added by the training code."""
    return {
        "packages": package_versions(),
        "git_commit": git_commit(),
        "host": platform.node(),
        "platform": platform.platform(),
    }
