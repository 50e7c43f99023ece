"""Training and evaluation (UCTransNet protocol, Wang et al., AAAI 2022). See docs/training.md and docs/packed.md.

Public API: :func:`train_run` (one run), :func:`train_packed` (K runs as one fused pack), :class:`RunFailed`,
:func:`evaluate_checkpoint`, :func:`load_model_checkpoint` (a trained model from our checkpoint or the reference
code's); metrics in
:mod:`ablation.train.metrics` (numpy/scipy only). Names resolve lazily so that ``ablation.train.cli`` and
``ablation.train.metrics`` import without torch.
"""

from __future__ import annotations

from ablation.lazy import lazy_exports

_EXPORTS = {
    "train_run": "ablation.train.engine",
    "train_packed": "ablation.train.engine",
    "RunFailed": "ablation.train.engine",
    "evaluate_checkpoint": "ablation.train.evaluate",
    "load_model_checkpoint": "ablation.train.checkpoint",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
