"""Skip-switchable U-Net and UCTransNet (Wang et al., AAAI 2022, arXiv 2109.04335).

Public API: :func:`build_model`, :func:`model_summary`, :func:`all_model_summaries`,
:func:`load_reference_checkpoint`, :class:`SkipUNet`. See docs/models.md.

Names resolve lazily (PEP 562): the CLI imports ``ablation.models.cli`` to register its subcommand, and that
must not import torch, so ``ablation report`` keeps working where torch is not installed.
"""

from __future__ import annotations

from ablation.lazy import lazy_exports

_EXPORTS = {
    "build_model": "ablation.models.unet",
    "SkipUNet": "ablation.models.unet",
    "model_summary": "ablation.models.summary",
    "all_model_summaries": "ablation.models.summary",
    "load_reference_checkpoint": "ablation.models.reference",
    "reference_model_config": "ablation.models.reference",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
