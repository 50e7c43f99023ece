"""Synthetic result folders with planted effects, for the tests and the notebook test (test support, not API).

The folders follow the run-folder contract of :mod:`ablation.store` exactly (config.json, status.json,
history.csv, test_metrics.csv, optional masked_metrics.csv and predictions.npz, metrics.json), named with
:func:`ablation.store.run_name` and written by the store's writers, the ones training uses. Nothing here is a measurement: per-image Dice is drawn around a planted truth

    Dice(dataset, connector, subset) = base + sum_i skip[i] * [Li on] + sum_{i<j} interactions[(i, j)] * [Li, Lj on]
                                       + connector offset

plus a per-image difficulty shared by every variant (so paired tests have something to pair), a per-run offset
and per-run x image noise. Parameter counts and GFLOPs are made-up deterministic numbers of a plausible size.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ablation.config import (
    CONNECTORS,
    ModelConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
    from_dict,
    to_dict,
)
from ablation.errors import AblationError
from ablation.skips import ALL_SUBSETS, expand_subsets, skip_flags
from ablation.store import (
    MASKED_METRICS_FILE,
    RUN_RECORD_KEYS,
    TEST_METRICS_FILE,
    done_run_problem,
    find_runs,
    metrics_identity,
    run_id,
    run_name,
    write_history,
    write_image_metrics,
    write_metrics,
    write_predictions,
    write_run_config,
    write_status,
)


@dataclasses.dataclass(frozen=True)
class PlantedEffects:
    """The truth a synthetic results folder is drawn around (Dice as a fraction).

    Attributes:
        base: Dice of U-Net-none.
        skip: additive Dice effect of switching on L1, L2, L3, L4.
        interactions: extra Dice when both levels are on, keyed by 1-based level pairs, e.g. ``{(1, 2): -0.02}``.
        connector: Dice offset of each connector relative to ``unet``.
        image_sd: per-image difficulty, shared by every variant of a dataset.
        run_sd: per-run offset (seed/fold variation).
        noise_sd: per-run x image noise.
    """

    base: float = 0.70
    skip: tuple[float, float, float, float] = (0.01, 0.02, 0.03, 0.04)
    interactions: Mapping[tuple[int, int], float] = dataclasses.field(default_factory=dict)
    connector: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: {"unet": 0.0, "cct": 0.01, "cca": 0.005, "uctransnet": 0.02}
    )
    image_sd: float = 0.05
    run_sd: float = 0.0
    noise_sd: float = 0.01

    def dice(self, connector: str, skips: str) -> float:
        """The planted mean Dice of a variant."""
        flags = skip_flags(skips)
        value = self.base + sum(e for e, on in zip(self.skip, flags) if on)
        for (i, j), effect in self.interactions.items():
            if flags[i - 1] and flags[j - 1]:
                value += effect
        return value + self.connector.get(connector, 0.0)


def make_fake_results(
    out_dir: str | Path,
    *,
    datasets: Sequence[str] = ("synthetic-nuclei",),
    connectors: Sequence[str] = ("unet",),
    subsets: str | list[str] = "all",
    seeds: Sequence[int] = (0,),
    folds: Sequence[int] | None = (0, 1),
    n_images: int = 8,
    effects: PlantedEffects | Mapping[str, PlantedEffects] | None = None,
    seed: int = 0,
    module_subsets: Sequence[str] = ("1111",),
    failed: Iterable[Mapping[str, Any]] = (),
    running: Iterable[Mapping[str, Any]] = (),
    missing: Iterable[Mapping[str, Any]] = (),
    test_time_masks: bool = False,
    predictions: int = 2,
    history_epochs: int = 4,
    img_size: int = 32,
    object_metrics: bool = False,
) -> list[Path]:
    """Write a synthetic results folder and return the run folders it created.

    ``unet`` runs use ``subsets`` (``"all"``, ``"paper"`` or a list); other connectors use ``module_subsets``
    (the module ablation: all skips). ``failed``, ``running`` and ``missing`` select runs by matching keys
    (``dataset``, ``connector``, ``skips``, ``seed``, ``fold``), e.g. ``missing=[{"skips": "0101", "seed": 0}]``:
    those runs fail (no metrics.json, a failed status.json), stop mid-training, or are not written at all.

    Args:
        out_dir: the results folder (created).
        folds: k-fold indices of repeat 0, or ``None`` for the layout's official split.
        effects: one :class:`PlantedEffects` for every dataset, a mapping dataset -> effects, or None (defaults).
        seed: seed of the synthetic noise (the runs' own seeds come from ``seeds``).
        test_time_masks: all-skips runs also write masked_metrics.csv (all 16 runtime masks, same planted truth).
        predictions: number of test images whose predictions.npz arrays are written (0: none).
    """
    out_dir = Path(out_dir)
    unknown = [c for c in connectors if c not in CONNECTORS]
    if unknown:
        raise AblationError(f"unknown connector {unknown[0]!r}: choose one of {', '.join(CONNECTORS)}")
    fold_list: list[int | None] = [None] if folds is None else list(folds)
    num_folds = max(5, max((f for f in fold_list if f is not None), default=0) + 1)
    failed, running, missing = list(failed), list(running), list(missing)
    written = []
    for dataset in datasets:
        truth = _effects_for(effects, dataset)
        images = [f"img{i:03d}" for i in range(n_images)]
        difficulty = _rng(seed, "images", dataset).normal(0.0, truth.image_sd, n_images)
        for connector in connectors:
            chosen = expand_subsets(subsets) if connector == "unet" else expand_subsets(list(module_subsets))
            for skips in chosen:
                for run_seed in seeds:
                    for fold in fold_list:
                        key = {"dataset": dataset, "connector": connector, "skips": skips, "seed": run_seed}
                        key["fold"] = fold
                        if _matches(key, missing):
                            continue
                        config = RunConfig(
                            dataset=dataset,
                            seed=run_seed,
                            fold=fold,
                            num_folds=num_folds,
                            model=ModelConfig(
                                connector=connector, skips=skips, base_channels=8, img_size=img_size
                            ),
                            train=TrainConfig(
                                max_epochs=history_epochs,
                                save_predictions=predictions,
                                test_time_masks=test_time_masks and skips == "1111",
                            ),
                        )
                        state = (
                            "failed"
                            if _matches(key, failed)
                            else "running"
                            if _matches(key, running)
                            else "done"
                        )
                        run_dir = out_dir / run_name(config)
                        _write_run(
                            run_dir,
                            config,
                            state,
                            truth=truth,
                            images=images,
                            difficulty=difficulty,
                            seed=seed,
                            history_epochs=history_epochs,
                            predictions=predictions,
                            object_metrics=object_metrics,
                        )
                        written.append(run_dir)
    return written


def copy_as_setting(
    source: str | Path, root: str | Path, overrides: Mapping[str, Any], env: Mapping[str, Any] | None = None
) -> list[Path]:
    """Copy the run folders under ``source`` into ``root`` as runs of another setting: each config.json gets
    ``overrides`` (dotted keys, as ``--set``) and ``env`` entries, and the run's name, id and metrics.json follow,
    so the copies are sound runs of that setting. Returns the new run folders."""
    written = []
    for run in find_runs(source):
        record = json.loads((run / "config.json").read_text())
        config = from_dict(RunConfig, {k: v for k, v in record.items() if k not in RUN_RECORD_KEYS})
        config = apply_overrides(config, dict(overrides))
        target = Path(root) / run_name(config)
        shutil.copytree(run, target)
        identity = {"run_id": run_id(config), "run_name": run_name(config)}
        new_env = {**record["env"], **(env or {})}
        (target / "config.json").write_text(json.dumps({**to_dict(config), **identity, "env": new_env}))
        if (target / "metrics.json").exists():
            metrics = json.loads((target / "metrics.json").read_text())
            (target / "metrics.json").write_text(json.dumps({**metrics, **metrics_identity(config)}))
            assert done_run_problem(target) is None, target
        written.append(target)
    return written


def _effects_for(
    effects: PlantedEffects | Mapping[str, PlantedEffects] | None, dataset: str
) -> PlantedEffects:
    if effects is None:
        return PlantedEffects()
    if isinstance(effects, PlantedEffects):
        return effects
    if dataset not in effects:
        raise AblationError(f"no planted effects for dataset {dataset!r}: given for {', '.join(effects)}")
    return effects[dataset]


def _matches(key: Mapping[str, Any], selections: list[Mapping[str, Any]]) -> bool:
    return any(all(key.get(k) == v for k, v in selection.items()) for selection in selections)


def _rng(seed: int, *parts: Any) -> np.random.Generator:
    # One stream per named thing, so dropping a run never changes the numbers of another.
    return np.random.default_rng([seed, zlib.crc32("|".join(map(str, parts)).encode())])


def _fake_size(connector: str, skips: str, img_size: int) -> tuple[int, float]:
    flags = skip_flags(skips)
    parameters = 1_800_000 + sum(on * 30_000 * 2**level for level, on in enumerate(flags))
    parameters += {"unet": 0, "cct": 900_000, "cca": 60_000, "uctransnet": 960_000}[connector]
    gflops = (img_size / 224) ** 2 * (2.0 + sum(on * 0.3 / 2**level for level, on in enumerate(flags)))
    return parameters, round(gflops, 4)


def _image_metrics(dice: np.ndarray, rng: np.random.Generator, object_metrics: bool) -> dict[str, np.ndarray]:
    columns = {
        "dice": dice,
        "iou": dice / (2.0 - dice),
        "hd95": 2.0 + 40.0 * (1.0 - dice) + rng.gamma(2.0, 0.5, dice.size),
    }
    if object_metrics:
        columns["object_f1"] = np.clip(dice - 0.05 + rng.normal(0, 0.01, dice.size), 0, 1)
        columns["object_dice"] = np.clip(dice - 0.02 + rng.normal(0, 0.01, dice.size), 0, 1)
        columns["object_hausdorff"] = 5.0 + 80.0 * (1.0 - dice)
    return columns


def _write_run(
    run_dir: Path,
    config: RunConfig,
    state: str,
    *,
    truth: PlantedEffects,
    images: list[str],
    difficulty: np.ndarray,
    seed: int,
    history_epochs: int,
    predictions: int,
    object_metrics: bool,
) -> None:
    name = run_name(config)
    connector, skips = config.model.connector, config.model.skips
    write_run_config(run_dir, config, {"synthetic": True})
    rng = _rng(seed, "run", name)
    mean_dice = (
        truth.dice(connector, skips) + rng.normal(0.0, truth.run_sd)
        if truth.run_sd
        else truth.dice(connector, skips)
    )
    epochs = history_epochs if state == "done" else max(1, history_epochs // 2)
    steps = np.arange(1, epochs + 1)
    rise = 1.0 - np.exp(-steps / 1.5)
    history = pd.DataFrame(
        {
            "epoch": steps,
            "train_loss": 1.0 - 0.9 * mean_dice * rise + rng.normal(0, 0.005, epochs),
            "val_loss": 1.0 - 0.85 * mean_dice * rise + rng.normal(0, 0.01, epochs),
            "val_dice": mean_dice * rise + rng.normal(0, 0.005, epochs),
            "lr": np.full(epochs, config.train.lr),
            "seconds": np.full(epochs, 0.5),
        }
    )
    write_history(run_dir, history.to_dict("records"))
    if state == "failed":
        epoch = int(epochs)
        write_status(
            run_dir, f"failed: non-finite loss at epoch {epoch}", error="non-finite loss", epoch=epoch
        )
        return
    if state == "running":
        write_status(run_dir, "running", epoch=int(epochs))
        return

    def draw(dice_truth: float, stream: str) -> pd.DataFrame:
        noise_rng = _rng(seed, stream, name)
        dice = np.clip(
            dice_truth + difficulty + noise_rng.normal(0.0, truth.noise_sd, len(images)), 0.01, 0.99
        )
        return pd.DataFrame({"image": images, **_image_metrics(dice, noise_rng, object_metrics)})

    test = draw(mean_dice, "test")
    write_image_metrics(run_dir / TEST_METRICS_FILE, test.to_dict("records"))
    if config.train.test_time_masks:
        offset = mean_dice - truth.dice(connector, skips)
        masked = pd.concat(
            [
                draw(truth.dice(connector, mask) + offset, f"mask{mask}").assign(eval_skips=mask)
                for mask in ALL_SUBSETS
            ],
            ignore_index=True,
        )
        masked = masked[["eval_skips", *[c for c in masked.columns if c != "eval_skips"]]]
        write_image_metrics(run_dir / MASKED_METRICS_FILE, masked.to_dict("records"))
    if predictions:
        _write_predictions(run_dir, test, images[:predictions], config.model.img_size, rng)
    parameters, gflops = _fake_size(connector, skips, config.model.img_size)
    metrics = {
        **metrics_identity(config),
        "best_epoch": int(history["val_dice"].idxmax()) + 1,
        "epochs_run": int(epochs),
        "stopped_early": False,
        "parameters": parameters,
        "gflops": gflops,
        "seconds": float(history["seconds"].sum()),
        "device": "synthetic",
        "dice_mean": float(test["dice"].mean()),
        "dice_std": float(test["dice"].std(ddof=0)),
        "iou_mean": float(test["iou"].mean()),
        "iou_std": float(test["iou"].std(ddof=0)),
        # Synthetic: no pixels behind these numbers, so the pooled scores repeat the image means.
        "dice_micro": float(test["dice"].mean()),
        "iou_micro": float(test["iou"].mean()),
        "hd95_mean": float(test["hd95"].mean()),
    }
    for column in ("object_f1", "object_dice", "object_hausdorff"):
        if column in test.columns:
            metrics[f"{column}_mean"] = float(test[column].mean())
    write_status(run_dir, "done", epoch=int(epochs))
    write_metrics(run_dir, metrics)


def _write_predictions(
    run_dir: Path, test: pd.DataFrame, names: list[str], size: int, rng: np.random.Generator
) -> None:
    """Discs as ground truth; the prediction is the disc shifted further the lower the image's Dice."""
    rows, cols = np.mgrid[0:size, 0:size]
    images, masks, preds = [], [], []
    for index, image_name in enumerate(names):
        shape_rng = np.random.default_rng(zlib.crc32(image_name.encode()))
        centre = shape_rng.uniform(size * 0.35, size * 0.65, 2)
        radius = size * shape_rng.uniform(0.18, 0.28)
        mask = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2
        shift = (1.0 - float(test["dice"].iloc[index])) * radius * 2.0
        angle = rng.uniform(0, 2 * np.pi)
        pred_centre = centre + shift * np.array([np.sin(angle), np.cos(angle)])
        pred = (rows - pred_centre[0]) ** 2 + (cols - pred_centre[1]) ** 2 <= radius**2
        texture = shape_rng.integers(60, 120, (size, size, 3))
        picture = np.where(mask[..., None], texture + np.array([120, 40, 90]), texture)
        images.append(np.clip(picture, 0, 255).astype(np.uint8))
        masks.append(mask.astype(np.uint8))
        preds.append(pred.astype(np.uint8))
    write_predictions(run_dir, names, np.stack(images), np.stack(masks), np.stack(preds))
