"""Datasets for skip-connection studies: GlaS, MoNuSeg, custom folders and generated data. No torch import.

``load_prepared`` reads a dataset once, resizes it to the run's size and caches it; ``run_splits`` picks one
run's train/validation/test sets (the layout's own, or k-fold as in the UCTransNet paper, Wang et al., AAAI 2022).
Device-side augmentation lives in :mod:`ablation.data.augment`, the only module here that imports torch.
"""

from ablation.data.dataset import PreparedDataset, PreparedSplit
from ablation.data.prepare import load_prepared
from ablation.data.resolve import DATASETS
from ablation.data.splits import PAPER_FOLDS, PAPER_REPEATS, kfold, paper_protocol, run_splits

__all__ = [
    "DATASETS",
    "PAPER_FOLDS",
    "PAPER_REPEATS",
    "PreparedDataset",
    "PreparedSplit",
    "kfold",
    "load_prepared",
    "paper_protocol",
    "run_splits",
]
