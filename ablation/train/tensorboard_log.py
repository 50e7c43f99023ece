"""Live training logs for TensorBoard (``train.tensorboard``): event files in each run's ``tensorboard/`` folder.

Per epoch, each run logs the numbers of its history.csv row, which the engine has already read back in its one
host sync of the epoch: ``loss/train``, ``loss/val``, ``dice/val``, ``lr`` and ``time/epoch_seconds``, with the
epoch as the step. Every ``train.tensorboard_images_every`` epochs it also logs ``val/predictions``: the first
:data:`PREVIEW_IMAGES` validation images, one row each, as image | ground-truth mask | predicted probability.
Nothing is written inside an epoch, so the training step is untouched.

Each run writes into its own folder (also inside a pack), so ``tensorboard --logdir results/<grid>`` shows every
run of a grid under its run-folder name. A resumed run purges the events after its checkpoint, as history.csv
does, so every tag keeps one value per epoch. ``tensorboard`` is an optional extra
(``pip install -e '.[tensorboard]'``); this module imports it (through ``torch.utils.tensorboard``) only when a
run logs, so the grid can check for it without importing torch.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ablation.config import RunConfig
from ablation.errors import AblationError
from ablation.store.layout import TENSORBOARD_FOLDER

PREVIEW_IMAGES = 4  # validation images shown in val/predictions
# TensorBoard tag -> history.csv column, logged once per epoch.
SCALAR_TAGS = {
    "loss/train": "train_loss",
    "loss/val": "val_loss",
    "dice/val": "val_dice",
    "lr": "lr",
    "time/epoch_seconds": "seconds",
}
INSTALL_HINT = "pip install -e '.[tensorboard]' (or pip install tensorboard)"


def check_tensorboard(configs: Iterable[RunConfig]) -> None:
    """Before training: when a run asks for TensorBoard logs, the ``tensorboard`` package must be installed.

    Raises:
        AblationError: ``train.tensorboard`` is on and the package is missing, naming the extra to install.
    """
    if (
        any(config.train.tensorboard for config in configs)
        and importlib.util.find_spec("tensorboard") is None
    ):
        raise AblationError(f"train.tensorboard needs the tensorboard package: {INSTALL_HINT}")


class TensorBoardLog:
    """One run's TensorBoard writer, in ``<run_dir>/tensorboard``.

    Args:
        run_dir: the run folder.
        resume_epoch: the last epoch the run's checkpoint holds (0 without one); events of later epochs, left
            by an interrupted session, are purged.
        images_every: log ``val/predictions`` every this many epochs (0: never).
    """

    def __init__(self, run_dir: str | Path, *, resume_epoch: int, images_every: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.images_every = images_every
        # purge_step hides the events at or after it that an earlier session wrote (TensorBoard's restart
        # marker), also for a run restarted from scratch (no checkpoint yet): epochs trained again log again.
        self.writer: Any = SummaryWriter(
            log_dir=str(Path(run_dir) / TENSORBOARD_FOLDER), purge_step=resume_epoch + 1
        )

    def scalars(self, row: Mapping[str, float]) -> None:
        """One epoch's history.csv row (:data:`ablation.store.layout.HISTORY_COLUMNS`) as scalars; flushed, for live
        viewing."""
        epoch = int(row["epoch"])
        for tag, column in SCALAR_TAGS.items():
            self.writer.add_scalar(tag, float(row[column]), epoch)
        self.writer.flush()

    def images_due(self, epoch: int) -> bool:
        """Whether this epoch logs ``val/predictions``."""
        return self.images_every > 0 and epoch % self.images_every == 0

    def predictions(
        self, epoch: int, images: np.ndarray, masks: np.ndarray, probabilities: np.ndarray
    ) -> None:
        """Log ``val/predictions`` (:func:`preview_grid`) at ``epoch``; shapes as :func:`preview_grid` takes."""
        self.writer.add_image("val/predictions", preview_grid(images, masks, probabilities), epoch)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file (closing twice is harmless)."""
        self.writer.close()


def preview_grid(images: np.ndarray, masks: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Validation images beside their masks and predictions, one row per image.

    Args:
        images: ``uint8 (n, 3, H, W)`` RGB.
        masks: ``(n, 1, H, W)`` in {0, 1}.
        probabilities: ``(n, 1, H, W)`` predicted foreground probabilities in [0, 1].

    Returns:
        ``uint8 (3, n * H, 3 * W)``: per row the image, the mask (white foreground) and the probability (grey).
    """
    grey = [np.repeat(np.asarray(x, dtype=np.float32) * 255.0, 3, axis=1) for x in (masks, probabilities)]
    columns = [np.asarray(images, dtype=np.float32), *grey]  # 3 x (n, 3, H, W)
    rows = np.concatenate(columns, axis=3)  # (n, 3, H, 3W)
    grid = np.concatenate(list(rows), axis=1)  # (3, n*H, 3W)
    return np.clip(np.rint(grid), 0, 255).astype(np.uint8)
