"""Which runs of a study predict: the skip subset with the best mean *validation* Dice. No torch import.

A study folder holds many finished runs of one dataset and connector (16 subsets x replicates). The winning
subset is chosen on the validation Dice each run recorded for its best checkpoint (``best_val_dice`` in
metrics.json), never on the test set, so the test scores stay an unbiased estimate; its replicates (seeds,
folds, repeats) then predict together as an ensemble.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablation.errors import AblationError
from ablation.io import read_json_table
from ablation.skips import ALL_SUBSETS, parse_skips, skip_label
from ablation.store.layout import BEST_CHECKPOINT, CONFIG_FILE, METRICS_FILE, dataset_slug, find_runs
from ablation.store.state import read_run_state

SELECTION_KEY = "best_val_dice"  # the metrics.json key subsets are ranked by
CHOSEN_BY_VALIDATION = f"best mean validation Dice ({SELECTION_KEY} in metrics.json)"


@dataclass(frozen=True)
class StudyRun:
    """One finished run of a study.

    Attributes:
        path: the run folder.
        dataset: the dataset as its config records it (a name or a folder path).
        connector, skips: the variant (``skips`` canonical, ``"1011"``).
        val_dice: the validation Dice of its best checkpoint (``best_val_dice``); None when not recorded.
    """

    path: Path
    dataset: str
    connector: str
    skips: str
    seed: int
    fold: int | None
    repeat: int
    val_dice: float | None


@dataclass(frozen=True)
class StudyChoice:
    """The subset chosen for prediction and how it was chosen.

    Attributes:
        runs: the chosen subset's finished runs with a validation Dice (the ensemble members), by path.
        subsets: one entry per subset with usable runs, best first:
            ``{"skips", "label", "val_dice_mean", "replicates"}``.
        left_out: ``"<path>: <reason>"`` for done runs whose config.json lacks a field, and for finished runs
            of the dataset and connector that could not be ranked (no ``best_val_dice``) or used (no
            checkpoint_best.pt).
    """

    results_dir: Path
    dataset: str
    connector: str
    skips: str
    runs: list[StudyRun]
    subsets: list[dict[str, Any]]
    chosen_by: str = CHOSEN_BY_VALIDATION
    left_out: list[str] = field(default_factory=list)

    def to_record(self) -> dict[str, Any]:
        """A JSON-ready description for the prediction record."""
        return {
            "results_dir": str(self.results_dir),
            "dataset": self.dataset,
            "connector": self.connector,
            "skips": self.skips,
            "skip_label": skip_label(self.skips),
            "chosen_by": self.chosen_by,
            "runs": [
                {
                    "run": run.path.name,
                    "path": str(run.path),
                    "seed": run.seed,
                    "fold": run.fold,
                    "repeat": run.repeat,
                    "val_dice": run.val_dice,
                }
                for run in self.runs
            ],  # fmt: skip
            "subsets": self.subsets,
            "left_out": self.left_out,
        }


def finished_runs(results_dir: str | Path) -> tuple[list[StudyRun], list[str]]:
    """Every done run below ``results_dir`` (``read_run_state`` says ``done``), read from its own files.

    Returns:
        ``(runs, problems)``: problems are ``"<config.json>: <reason>"`` for done runs whose config lacks a
        field, and the reason a finished run is damaged (:func:`ablation.store.state.read_run_state`); such runs are
        left out, not fatal, as in reports.

    Raises:
        AblationError: ``results_dir`` is not a folder.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise AblationError(f"results folder {results_dir} does not exist or is not a folder")
    runs: list[StudyRun] = []
    problems: list[str] = []
    for run_dir in find_runs(results_dir):
        state, detail, _ = read_run_state(run_dir)
        if state == "damaged" and (run_dir / METRICS_FILE).exists():  # finished, but its files disagree
            problems.append(detail)
        if state != "done":
            continue
        config = read_json_table(run_dir / CONFIG_FILE)
        metrics = read_json_table(run_dir / METRICS_FILE)
        try:
            model = config["model"]
            fold = config.get("fold")
            runs.append(
                StudyRun(
                    path=run_dir,
                    dataset=str(config["dataset"]),
                    connector=str(model["connector"]),
                    skips=parse_skips(model["skips"]),
                    seed=int(config.get("seed", 0)),
                    fold=None if fold is None else int(fold),
                    repeat=int(config.get("repeat") or 0),
                    val_dice=_finite(metrics.get(SELECTION_KEY)),
                )
            )
        except (KeyError, TypeError, ValueError, AblationError) as error:
            problems.append(f"{run_dir / CONFIG_FILE}: not a run config ({type(error).__name__}: {error})")
    return runs, problems


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _short(dataset: str) -> str:
    """A dataset as reports show it: the name itself, or a dataset folder's last component."""
    return Path(dataset).name if ("/" in dataset or "\\" in dataset) else dataset


def _dataset_forms(dataset: str) -> set[str]:
    """The names a dataset answers to (lower case): as recorded, as reports show it, as run names spell it."""
    return {dataset.lower(), _short(dataset).lower(), dataset_slug(dataset)}


def choose_study_runs(
    results_dir: str | Path, dataset: str, connector: str, *, subset: str | None = None
) -> StudyChoice:
    """The runs to ensemble: the subset with the best mean validation Dice over its finished replicates.

    Args:
        results_dir: a study's results folder (run folders anywhere below it).
        dataset: the dataset as recorded, its short name (``glas``, or a dataset folder's last component)
            or its run-name form; case-insensitive.
        connector: ``unet``, ``cct``, ``cca`` or ``uctransnet``.
        subset: use this skip subset instead of choosing one (any form ``parse_skips`` accepts).

    Returns:
        The choice; ties in mean validation Dice go to the subset with more replicates, then fewer skips.

    Raises:
        AblationError: no finished runs, an unknown dataset or connector (naming those with finished runs), a
            subset without finished runs (naming those with), or no run of the chosen subset that can be used.
    """
    results_dir = Path(results_dir)
    runs, problems = finished_runs(results_dir)
    if not runs:
        reason = f"; left out {problems[0]}" if problems else ""
        raise AblationError(
            f"no finished runs in {results_dir} (a run is finished when its metrics.json exists): train some "
            f"with `ablation run SPEC` or `ablation train`{reason}"
        )
    of_dataset = [run for run in runs if dataset.lower() in _dataset_forms(run.dataset)]
    if not of_dataset:
        choices = sorted({_short(run.dataset) for run in runs})
        raise AblationError(
            f"no finished runs of dataset {dataset!r} in {results_dir}: choose one of {', '.join(choices)}"
        )
    of_connector = [run for run in of_dataset if run.connector == connector]
    if not of_connector:
        choices = sorted({run.connector for run in of_dataset})
        raise AblationError(
            f"no finished runs of connector {connector!r} for dataset {dataset!r} in {results_dir}: "
            f"choose one of {', '.join(choices)}"
        )
    left_out: list[str] = []
    usable: list[StudyRun] = []
    for run in of_connector:
        if run.val_dice is None:
            left_out.append(f"{run.path}: metrics.json has no finite {SELECTION_KEY}")
        elif not (run.path / BEST_CHECKPOINT).is_file():
            left_out.append(f"{run.path}: {BEST_CHECKPOINT} is missing")
        else:
            usable.append(run)
    by_subset: dict[str, list[StudyRun]] = {}
    for run in usable:
        by_subset.setdefault(run.skips, []).append(run)
    if not by_subset:
        raise AblationError(
            f"no usable finished runs of {connector} on {dataset!r} in {results_dir}: {left_out[0]}"
        )
    order = {skips: index for index, skips in enumerate(ALL_SUBSETS)}
    ranked = sorted(
        by_subset.items(),
        key=lambda item: (-_mean([r.val_dice for r in item[1]]), -len(item[1]), order[item[0]]),
    )
    subsets = [
        {"skips": skips, "label": skip_label(skips), "val_dice_mean": _mean([r.val_dice for r in members]),
         "replicates": len(members)}
        for skips, members in ranked
    ]  # fmt: skip
    if subset is None:
        chosen = ranked[0][0]
    else:
        chosen = parse_skips(subset)
        if chosen not in by_subset:
            raise AblationError(
                f"no usable finished runs of subset {chosen} ({skip_label(chosen)}) for {connector} on "
                f"{dataset!r} in {results_dir}: choose one of {', '.join(skips for skips, _ in ranked)}"
            )
    members = sorted(by_subset[chosen], key=lambda run: run.path)
    return StudyChoice(
        results_dir=results_dir,
        dataset=members[0].dataset,
        connector=connector,
        skips=chosen,
        runs=members,
        subsets=subsets,
        chosen_by="given with --subset" if subset is not None else CHOSEN_BY_VALIDATION,
        left_out=problems + left_out,
    )


def _mean(values: list[float | None]) -> float:
    numbers = [value for value in values if value is not None]
    return sum(numbers) / len(numbers)
