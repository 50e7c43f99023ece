"""What this machine offers the grid: GPUs (via ``nvidia-smi``), their memory, and CPU cores. No torch import.

The runner never imports torch to count GPUs: it asks ``nvidia-smi`` (or honours CUDA_VISIBLE_DEVICES), which
neither loads the CUDA driver into the runner nor takes GPU memory; torch is the fallback only where nvidia-smi
is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence

from ablation.errors import AblationError


def detect_gpus() -> list[str]:
    """GPU ids this machine offers, as CUDA_VISIBLE_DEVICES entries; empty without a GPU."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:  # the user already restricted the GPUs; ids may be indices or UUIDs
        return [gpu.strip() for gpu in visible.split(",") if gpu.strip() and not gpu.strip().startswith("-")]
    rows = _query_gpus(("index",))
    if rows is not None:
        return [row[0] for row in rows if row[0].isdigit()]
    try:
        import torch
    except ImportError:
        return []
    return [str(index) for index in range(torch.cuda.device_count())]


def gpu_memory_bytes(gpus: Sequence[str]) -> float:
    """Total memory of the smallest of these GPUs in bytes (via nvidia-smi), or 0 when it cannot be read."""
    rows = _query_gpus(("index", "uuid", "memory.total")) if gpus else None
    sizes = [
        float(memory) * 1024**2  # MiB
        for index, uuid, memory in (row for row in rows or [] if len(row) == 3)
        if (index in gpus or uuid in gpus) and memory.isdigit()
    ]
    return min(sizes) if sizes else 0.0


def gpu_names(gpus: Sequence[str]) -> list[str]:
    """The model names of these GPUs (``NVIDIA H200``) as nvidia-smi reports them, in the order given; empty
    when none are given or nvidia-smi cannot tell (then the cost estimate has no device to look up)."""
    rows = _query_gpus(("index", "uuid", "name")) if gpus else None
    names = {key: row[2] for row in rows or [] if len(row) == 3 for key in row[:2]}
    return [names[gpu] for gpu in gpus if gpu in names]


def _query_gpus(fields: Sequence[str]) -> list[list[str]] | None:
    """Rows of ``nvidia-smi --query-gpu`` (one list of field values per GPU); None without a working nvidia-smi."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        listing = subprocess.run(
            [smi, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [[part.strip() for part in line.split(",")] for line in listing.splitlines() if line.strip()]


def parse_gpus(text: str | None) -> list[str] | None:
    """``"0,1"`` -> ``["0", "1"]``; None stays None (use every visible GPU).

    Raises:
        AblationError: for an empty list or an entry that is neither an index nor a GPU/MIG UUID.
    """
    if text is None:
        return None
    gpus = [gpu.strip() for gpu in text.split(",") if gpu.strip()]
    bad = [gpu for gpu in gpus if not (gpu.isdigit() or gpu.startswith(("GPU-", "MIG-")))]
    if not gpus or bad:
        raise AblationError(
            f"--gpus {text!r}: expected a comma-separated list of GPU indices (such as 0,1) or GPU UUIDs"
        )
    return gpus


def check_gpus(gpus: Sequence[str]) -> None:
    """Check that the GPUs named by ``--gpus`` exist, so a grid never falls back to the CPU unasked.

    Raises:
        AblationError: when this machine has no GPU, or an index is not among its GPUs.
    """
    found = detect_gpus()
    if not found:
        raise AblationError("no GPU found (nvidia-smi): drop --gpus to train on the CPU")
    if all(gpu.isdigit() for gpu in found):  # UUIDs cannot be compared with indices; the worker will tell
        absent = [gpu for gpu in gpus if gpu.isdigit() and gpu not in found]
        if absent:
            raise AblationError(f"--gpus: GPU {absent[0]} not found: choose among {', '.join(found)}")


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
