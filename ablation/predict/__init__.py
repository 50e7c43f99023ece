"""Apply what a study found: predict masks for new images with a run, a checkpoint or a study's best subset.

Public API: :func:`predict_folder`, :func:`predict_study`, :func:`load_predictor` (torch) and
:func:`choose_study_runs` (no torch). See docs/predict.md. Names resolve lazily so that
``ablation.predict.cli`` imports without torch.
"""

from __future__ import annotations

from ablation.lazy import lazy_exports

_EXPORTS = {
    "predict_folder": "ablation.predict.predict",
    "predict_study": "ablation.predict.predict",
    "load_predictor": "ablation.predict.predict",
    "PredictionResult": "ablation.predict.predict",
    "choose_study_runs": "ablation.predict.study",
    "StudyChoice": "ablation.predict.study",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
