"""The bounds settings are checked against, and the one message a value outside them gets. No torch import.

Every integer setting fits a signed 64-bit integer, and the network's size fits an accelerator's memory; a value
beyond them would fail late, in the middle of a grid, so configs refuse it when they are built.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ablation.errors import AblationError

# The largest integer setting: seeds and every other integer fit a signed 64-bit integer, as TOML integers, the
# report's int64 columns and torch's generators hold them (a larger seed would fail late, in the middle of a grid).
MAX_INT = 2**63 - 1
# Network sizes beyond which one image or one layer no longer fits any accelerator's memory: 18x the paper's
# 224 px and 16x its base width of 64. Larger values would fail only once memory runs out, mid-grid.
MAX_IMG_SIZE = 4096
MAX_BASE_CHANNELS = 1024


def check_range(
    key: str,
    value: float,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    below: float | None = None,
    exclusive_minimum: bool = False,
) -> None:
    """Raise AblationError naming ``key`` unless ``value`` is a finite number inside the bounds."""
    bounds = []
    if minimum is not None:
        bounds.append(f"{'>' if exclusive_minimum else '>='} {minimum}")
    if maximum is not None:
        bounds.append("<= 2**63 - 1" if maximum == MAX_INT else f"<= {maximum}")
    if below is not None:
        bounds.append(f"< {below}")
    # An int is finite however large (math.isfinite would overflow converting 10**400 to a float).
    ok = isinstance(value, int) or isinstance(value, float) and math.isfinite(value)
    ok = ok and not isinstance(value, bool)
    if ok and minimum is not None:
        ok = value > minimum if exclusive_minimum else value >= minimum
    if ok and maximum is not None:
        ok = value <= maximum
    if ok and below is not None:
        ok = value < below
    if not ok:
        raise AblationError(f"config key {key!r} must be {' and '.join(bounds)}, got {shown(value)}")


def check_img_size(value: Any, key: str = "model.img_size") -> None:
    """Raise AblationError naming ``key`` unless ``value`` is an image size a network of the study can take.

    The U-Net pools four times by 2, so the size is a multiple of 16; every command that prepares data for runs
    (``ablation data prepare``, ``ablation data info``) checks its size here too, so it never writes a file no
    run can use.
    """
    ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok or not 16 <= value <= MAX_IMG_SIZE or value % 16:
        raise AblationError(
            f"{key} {shown(value)} must be a multiple of 16 (four 2x poolings) in 16..{MAX_IMG_SIZE}"
        )


def shown(value: Any) -> str:
    """``repr(value)``, with an integer of more than 30 digits shortened to its length."""
    text = repr(value)
    if isinstance(value, int) and len(text) > 30:
        return f"an integer of {len(text.lstrip('-'))} digits"
    return text


def check_integers(config: Any, section: str) -> None:
    """Every integer field of a config dataclass (and each entry of an integer tuple) is at most :data:`MAX_INT`."""
    for item in dataclasses.fields(config):
        values = getattr(config, item.name)
        for value in values if isinstance(values, tuple) else (values,):
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
                key = f"{section}.{item.name}" if section else item.name
                raise AblationError(f"config key {key!r} must be at most 2**63 - 1, got {shown(value)}")
