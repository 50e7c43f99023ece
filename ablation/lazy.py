"""Package names resolved on first use (PEP 562), so importing a package does not import what its names need.

``ablation.models``, ``ablation.train`` and ``ablation.predict`` export torch code; the CLI imports their
``cli`` modules to register subcommands, and ``ablation report`` must keep working where torch is not installed.
No torch import.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_exports(
    package: str, exports: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of a package whose public names are imported when first used.

    Args:
        package: the package's ``__name__``.
        exports: each public name and the module that defines it (``{"build_model": "ablation.models.unet"}``).

    Returns:
        ``(__getattr__, __dir__)``, assigned at the package's top level.
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__
