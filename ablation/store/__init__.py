"""The run folder: its name, its files and its status. No torch, numpy or pandas import, so results can be read
anywhere.

A run folder holds (written in this order; every write is atomic)::

    config.json         resolved RunConfig + "run_id", "run_name", "env" (packages, git commit, device,
                        dataset fingerprint, splits file), written when the run starts; a run started from
                        another run's weights (train.init_from) also records "init_weights": what was copied
    status.json         {"status": "running" | "done" | "failed: <reason>", "error": ..., "epoch": ...}; from the
                        first epoch trained in a session also "pack_size" and, on CUDA, "peak_memory_gib"
    history.csv         one row per epoch: epoch, train_loss, val_loss, val_dice, lr, seconds
    tensorboard/        optional (train.tensorboard): TensorBoard event files, written once per epoch
    checkpoint_last.pt  resumable state (model, optimiser, scheduler, RNG, early-stopping state, epoch)
    checkpoint_best.pt  best model on validation Dice (after TrainConfig.min_best_epoch)
    test_metrics.csv    one row per test image: image, dice, iou, hd95 [, object_f1, object_dice, object_hausdorff]
    masked_metrics.csv  optional: one row per (eval_skips, test image) of an all-skips model masked at test time:
                        eval_skips ("1011"), image, dice, iou, hd95 [, object metrics]
    predictions.npz     optional: image (N,H,W,3) uint8, mask (N,H,W) uint8, pred (N,H,W) uint8, name (N,)
    metrics.json        summary, written last: a run is done when it exists and its files prove it (below).
                        Keys: status ("done"),
                        run_id, run_name, dataset, connector, skips, seed, fold, repeat, best_epoch, epochs_run,
                        stopped_early, parameters, gflops, seconds, device, dice_mean, dice_std, iou_mean,
                        iou_std, dice_micro, iou_micro (pooled over all test pixels), hd95_mean
                        (METRICS_KEYS; status to repeat are metrics_identity(config)), and where the dataset
                        has instance ids object_f1_mean, object_dice_mean, object_hausdorff_mean
                        (OBJECT_METRICS_KEYS); train_run adds best_val_dice, num_test_images and the other
                        *_std values

A run is identified by a hash of its resolved config; its folder name is readable and deterministic:
``<dataset>_<connector>_<skips>_s<seed>_<split>_<hash8>`` where split is ``official`` or ``r<repeat>f<fold>``.

Which runs count (:func:`~ablation.store.state.read_run_state`, the one classifier the grid runner, ``ablation
status`` and the report share): a finished run is ``done`` only when every file the report reads back is sound
and its folder name, config.json and metrics.json name the same run; otherwise it is ``damaged`` and trained
again, its files set aside in ``<results>/.replaced/``. A done run whose data or split changed since it ran is
*stale*: kept and flagged.

The modules, lowest first:

- :mod:`ablation.store.layout`: file names, record keys, ``run_id``, ``run_name`` and ``name_fields``,
  ``metrics_identity`` (the status and identity keys every writer of metrics.json starts it with),
  ``find_runs`` and ``run_dir_in`` (run folders stay inside the results folder);
- :mod:`ablation.store.readers`: every file read back and validated (``read_done_run``, ``read_run_config``,
  ``check_identity``, ``read_metrics_csv``, ``read_history_csv``);
- :mod:`ablation.store.writers`: the one writer of each file but the checkpoints (``write_run_config``,
  ``write_status``, ``write_history``/``append_history``, ``write_image_metrics``, ``write_predictions``,
  ``write_metrics``), so training, the report tests' synthetic results and the grid tests' fake runs write the
  same files;
- :mod:`ablation.store.state`: which runs count (``read_run_state``, ``checkpoint_problem``, ``set_aside``,
  ``StaleCheck``) and the runs earlier grids asked for (``read_grid_record``).

Code imports each name from its module. The package itself gives the names :mod:`ablation.report` and its
tests import from ``ablation.store``.
"""

from ablation.store.layout import (
    CONFIG_FILE,
    HISTORY_COLUMNS,
    MASKED_METRICS_FILE,
    METRICS_FILE,
    METRICS_KEYS,
    PREDICTIONS_FILE,
    RUN_RECORD_KEYS,
    TEST_METRICS_FILE,
    dataset_slug,
    find_runs,
    metrics_identity,
    name_fields,
    non_identity_keys,
    run_id,
    run_name,
)
from ablation.store.readers import (
    HISTORY_RANGES,
    IMAGE_METRIC_RANGES,
    DoneRun,
    done_run_problem,
    read_done_run,
    read_run_config,
)
from ablation.store.state import StaleCheck, read_run_state, recorded_runs
from ablation.store.writers import (
    write_history,
    write_image_metrics,
    write_metrics,
    write_predictions,
    write_run_config,
    write_status,
)

__all__ = [
    "CONFIG_FILE",
    "HISTORY_COLUMNS",
    "HISTORY_RANGES",
    "IMAGE_METRIC_RANGES",
    "MASKED_METRICS_FILE",
    "METRICS_FILE",
    "METRICS_KEYS",
    "PREDICTIONS_FILE",
    "RUN_RECORD_KEYS",
    "TEST_METRICS_FILE",
    "DoneRun",
    "StaleCheck",
    "dataset_slug",
    "done_run_problem",
    "find_runs",
    "metrics_identity",
    "name_fields",
    "non_identity_keys",
    "read_done_run",
    "read_run_config",
    "read_run_state",
    "recorded_runs",
    "run_id",
    "run_name",
    "write_history",
    "write_image_metrics",
    "write_metrics",
    "write_predictions",
    "write_run_config",
    "write_status",
]
