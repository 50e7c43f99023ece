"""Device and precision in one place: which device, autocast, memory format, determinism and torch.compile.

Nothing happens at import time. On CUDA the default is bf16 autocast (Hopper and Ampere run bf16 matmuls and
convolutions at full tensor-core rate, and bf16 needs no GradScaler because its exponent range equals fp32's) and
channels_last activations (cuDNN's NHWC convolution kernels avoid layout transposes). Everywhere else autocast is
a no-op and the model runs in fp32, so CPU runs are exact and reproducible.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ablation.config import PRECISIONS
from ablation.errors import AblationError


@dataclass(frozen=True)
class DeviceSetup:
    """Where and how a run computes.

    Attributes:
        device: the torch device.
        dtype: the autocast dtype (``torch.bfloat16``) or None for plain fp32.
        channels_last: whether model and inputs use the NHWC memory format.
        name: a human-readable device name for the run record.
    """

    device: torch.device
    dtype: torch.dtype | None
    channels_last: bool
    name: str

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The requested device, or CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise AblationError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise AblationError(f"device {device!r} requested but CUDA is not available: use cpu")
    return resolved


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def setup_device(
    device: str | torch.device | None = None, *, precision: str = "auto", channels_last: bool = True
) -> DeviceSetup:
    """Choose device, autocast dtype and memory format.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, a torch.device, or None (CUDA if available).
        precision: ``auto`` (bf16 on CUDA, fp32 elsewhere), ``bf16`` or ``fp32``.
        channels_last: use NHWC on CUDA (ignored elsewhere, where it buys nothing).
    """
    if precision not in PRECISIONS:
        raise AblationError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    resolved = resolve_device(device)
    use_bf16 = precision == "bf16" or (precision == "auto" and resolved.type == "cuda")
    return DeviceSetup(
        device=resolved,
        dtype=torch.bfloat16 if use_bf16 else None,
        channels_last=channels_last and resolved.type == "cuda",
        name=device_name(resolved),
    )


def autocast(setup: DeviceSetup, *, cache: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on the run's device, or a no-op context for fp32.

    ``cache=False`` while a CUDA graph is captured: cached weight casts must not outlive the capture.
    """
    if setup.dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=setup.device.type, dtype=setup.dtype, cache_enabled=cache)


def to_memory_format(tensor_or_module, setup: DeviceSetup):  # type: ignore[no-untyped-def]
    """Move a 4-D tensor or a module to channels_last when the setup asks for it (no copy otherwise)."""
    if setup.channels_last:
        return tensor_or_module.to(memory_format=torch.channels_last)
    return tensor_or_module


def maybe_compile(model: torch.nn.Module, setup: DeviceSetup, enabled: bool) -> torch.nn.Module:
    """``torch.compile`` the model on CUDA when enabled; the original module elsewhere.

    The compiled wrapper shares parameters with ``model``, so checkpoints are saved from ``model`` itself.
    """
    if enabled and setup.is_cuda:
        return torch.compile(model)  # type: ignore[return-value]
    return model


@contextlib.contextmanager
def determinism(enabled: bool) -> Iterator[None]:
    """Deterministic algorithms for the duration of a run (restoring the previous settings afterwards).

    On CUDA deterministic mode needs ``CUBLAS_WORKSPACE_CONFIG``; it is set only inside this context, never at
    import, and only if the user has not set it.
    """
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    previous_benchmark = torch.backends.cudnn.benchmark
    added_env = False
    if enabled and "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
        added_env = True
    # warn_only: a few CUDA kernels (e.g. some upsampling backward passes) have no deterministic version; we
    # would rather run with a warning than fail a long GPU run. On CPU every op used here is deterministic.
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.benchmark = not enabled
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)
        torch.backends.cudnn.benchmark = previous_benchmark
        if added_env:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
