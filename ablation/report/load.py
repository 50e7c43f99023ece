"""Load a results folder into tidy pandas frames. No torch import: results can be read anywhere.

Every run folder follows the contract in :mod:`ablation.store`. A run counts as done exactly when ``metrics.json``
exists and every file read back passes the store's checks; failed, damaged (a file that cannot be read or holds a
wrong type, NaN or a value out of range) and still-running runs are listed, not fatal. Runs whose datasets share
a name but not their settings (or, within a connector, their initialisation) are never pooled: each is a dataset
of its own (:mod:`ablation.report.pooling`). The expected grid is the one ``ablation run`` recorded in
``grid.json``, else the one the run folders imply (:mod:`ablation.report.expected`).
The per-image frame has one row per run x test image (``masking="retrained"``: the model was built and
trained with that skip subset) plus, where a run wrote ``masked_metrics.csv``, one row per runtime mask x
test image of that all-skips model (``masking="test-time"``, ``skips`` = the mask). Metrics stay as
fractions in [0, 1]; tables and findings show percentage points, as the UCTransNet paper (Wang et al.,
AAAI 2022) does.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pandas as pd

from ablation.config import CONNECTORS, RunConfig
from ablation.data.prepare import dataset_fingerprint
from ablation.errors import AblationError
from ablation.report.expected import KEY_COLUMNS, expected_grid, labels_by_slug, missing_runs, recorded_grid
from ablation.report.pooling import APART_COLUMNS, INIT_KEY, dataset_labels
from ablation.skips import ALL_SUBSETS, skip_label
from ablation.store import (
    CONFIG_FILE,
    IMAGE_METRIC_RANGES,
    METRICS_FILE,
    PREDICTIONS_FILE,
    DoneRun,
    StaleCheck,
    find_runs,
    name_fields,
    read_done_run,
    read_run_config,
    read_run_state,
)

RETRAINED = "retrained"
TEST_TIME = "test-time"
MASKINGS = (RETRAINED, TEST_TIME)

IMAGE_METRICS = tuple(IMAGE_METRIC_RANGES)  # dice, iou, hd95, object_f1, object_dice, object_hausdorff
IMAGE_COLUMNS = (
    "run_id",
    "run_name",
    "dataset",
    "connector",
    "skips",
    "skip_label",
    "seed",
    "repeat",
    "fold",
    "split",
    "masking",
    "image",
)
RUN_LIST_COLUMNS = ("run_name", "run_id", "path", "dataset", "connector", "skips", "seed", "split", "status")
GAPS_COLUMNS = ("run_name", "status", "dataset", "connector", "skips", "seed", "split", "error")
# config.json settings each done run's row carries, for the protocol the report states beside each verdict
# (ablation.report.protocol): column -> (section, key). A key the config lacks reads as None.
PROTOCOL_SETTINGS = {
    "base_channels": ("model", "base_channels"),
    "img_size": ("model", "img_size"),
    "max_epochs": ("train", "max_epochs"),
    "patience": ("train", "patience"),
    "precision": ("train", "precision"),
    "init_from": ("train", "init_from"),
}


@dataclasses.dataclass
class Results:
    """Everything read from one results folder.

    Attributes:
        root: the results folder.
        images: one row per run x test image (and per runtime mask x image for test-time masking); columns
            ``IMAGE_COLUMNS`` plus whichever of ``IMAGE_METRICS`` the runs wrote.
        runs: one row per done run: identity columns, ``path``, every key of its metrics.json, the config
            settings of :data:`PROTOCOL_SETTINGS` and ``stale``: why the run's data or split changed since it ran
            (:class:`ablation.store.StaleCheck`; empty when current or when the data cannot be checked here).
        history: concatenated history.csv files (identity columns + epoch, train_loss, val_loss, val_dice, ...).
        failed: failed runs (``status`` "failed", ``error`` and ``epoch`` from status.json) and damaged ones
            (``status`` "damaged": a file of the run cannot be read; ``error`` names it and says why).
        incomplete: runs that started but have neither metrics.json nor a failed status.
        missing: combinations of the expected grid without a done run, with their ``status``
            (``absent``, ``failed``, ``damaged``, ``running`` or ``pending``).
        expected: the expected grid (one row per dataset, connector, skips, seed, split): the runs recorded in
            grid.json by ``ablation run``, else :func:`expected_grid`.
        unreadable: messages for files found damaged while reading on demand (predictions.npz); shared by the
            copies :meth:`filter` makes, so the report lists them however they were found.
        apart: datasets kept apart because runs sharing a dataset name differ in a setting (see
            :func:`pooling_settings`): one row per label (``dataset``, e.g. ``glas@lr=0.0001``) with the shared
            ``name``, its number of run folders (``runs``), the keys that differ (``differs``) and this label's
            values of them (``setting``); empty when every dataset name has one setting. :func:`apart_note` says
            it in a sentence.
    """

    root: Path
    images: pd.DataFrame
    runs: pd.DataFrame
    history: pd.DataFrame
    failed: pd.DataFrame
    incomplete: pd.DataFrame
    missing: pd.DataFrame
    expected: pd.DataFrame
    unreadable: list[str] = dataclasses.field(default_factory=list)
    apart: pd.DataFrame = dataclasses.field(default_factory=lambda: pd.DataFrame(columns=list(APART_COLUMNS)))

    @property
    def datasets(self) -> list[str]:
        return sorted(set(self.images["dataset"]) | set(self.expected["dataset"]))

    @property
    def metrics(self) -> list[str]:
        return [m for m in IMAGE_METRICS if m in self.images.columns]

    def shared_name(self, dataset: str) -> str:
        """The dataset name a label stands for (``glas`` for ``glas@lr=0.0001``); other names as they are."""
        match = self.apart[self.apart["dataset"] == dataset]
        return str(match.iloc[0]["name"]) if not match.empty else dataset

    def gaps(self) -> pd.DataFrame:
        """Every run without a result, one row each: failed and damaged runs (with the error), running and
        pending ones, then the expected combinations without a run folder (``absent``, no ``run_name``)."""
        absent = self.missing[self.missing["status"] == "absent"]
        frames = [self.failed, self.incomplete, absent]
        return pd.concat([frame.reindex(columns=GAPS_COLUMNS) for frame in frames], ignore_index=True)

    def filter(
        self,
        *,
        dataset: str | list[str] | None = None,
        connector: str | list[str] | None = None,
        masking: str | list[str] | None = None,
    ) -> Results:
        """A copy restricted to the given dataset(s), connector(s) and masking(s); ``None`` keeps all.

        :attr:`apart` is kept whole: it describes every label of a shared dataset name.
        """
        selection = {"dataset": dataset, "connector": connector, "masking": masking}
        valid = {
            "dataset": self.datasets,
            "connector": list(CONNECTORS),
            "masking": list(MASKINGS),
        }
        frames = {}
        for field in ("images", "runs", "history", "failed", "incomplete", "missing", "expected"):
            frame = getattr(self, field)
            for key, wanted in selection.items():
                if wanted is None:
                    continue
                wanted_list = [wanted] if isinstance(wanted, str) else list(wanted)
                unknown = [w for w in wanted_list if w not in valid[key]]
                if unknown:
                    raise AblationError(
                        f"unknown {key} {unknown[0]!r}: choose from {', '.join(map(str, valid[key]))}"
                    )
                if key in frame.columns:
                    frame = frame[frame[key].isin(wanted_list)]
            frames[field] = frame.reset_index(drop=True)
        return Results(root=self.root, **frames, unreadable=self.unreadable, apart=self.apart)

    def predictions(self, run_name: str) -> dict[str, Any] | None:
        """The run's predictions.npz as a dict, or None without one.

        Arrays: image (N, H, W, 3) uint8, mask (N, H, W) uint8, pred (N, H, W) uint8, name (N,).

        Raises:
            AblationError: for an unknown run, or a predictions.npz that cannot be read or lacks an array (the
                message is also kept in :attr:`unreadable`).
        """
        import zipfile

        import numpy as np

        row = self.runs[self.runs["run_name"] == run_name]
        if row.empty:
            raise AblationError(f"unknown run {run_name!r}: not a done run under {self.root}")
        path = Path(row.iloc[0]["path"]) / PREDICTIONS_FILE
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            message = f"cannot read {path}: {error}"
        else:
            absent = [key for key in ("image", "mask", "pred", "name") if key not in arrays]
            if not absent:
                return arrays
            message = f"{path}: no array {absent[0]!r} (expected image, mask, pred, name)"
        if message not in self.unreadable:
            self.unreadable.append(message)
        raise AblationError(message)


def split_label(fold: Any, repeat: Any) -> str:
    """``official`` for the layout's own split, else ``r<repeat>f<fold>`` (as in run folder names)."""
    if fold is None or pd.isna(fold):
        return "official"
    return f"r{int(repeat or 0)}f{int(fold)}"


def load_results(results_dir: str | Path) -> Results:
    """Read every run folder below ``results_dir``.

    Every file is validated as it is read (:func:`ablation.store.read_done_run`): a run whose files fail is
    listed as damaged with the reason. Runs are pooled as replicates only when they agree in everything but
    seed, split, connector and skip subset (:data:`ablation.report.pooling.POOLING_IGNORED`); runs of one dataset name that differ are
    reported as separate datasets (see :attr:`Results.apart`).

    Raises:
        AblationError: if the folder does not exist or holds no run folder (one with config.json).
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise AblationError(f"results folder {root} does not exist")
    run_dirs = find_runs(root)
    if not run_dirs:
        raise AblationError(f"no run folders (with {CONFIG_FILE}) found under {root}")

    configs: dict[Path, tuple[RunConfig, dict[str, Any]] | str] = {}
    for run_dir in run_dirs:
        try:
            configs[run_dir] = read_run_config(run_dir)
        except AblationError as error:
            configs[run_dir] = str(error)
    labels, apart = dataset_labels({d: c for d, c in configs.items() if not isinstance(c, str)})

    image_frames, history_frames, run_rows, failed_rows, incomplete_rows = [], [], [], [], []
    stale = StaleCheck(dataset_fingerprint)
    slugs = labels_by_slug(apart, list(labels.values()))
    for run_dir in run_dirs:
        entry = configs[run_dir]
        if isinstance(entry, str):  # placed in the grid by its folder name, when that is a run name
            failed_rows.append(_run_row(run_dir, _name_identity(run_dir, slugs), "damaged", error=entry))
            continue
        identity = _identity(run_dir, *entry, dataset=labels[run_dir])
        if (run_dir / METRICS_FILE).exists():
            # The same check as `ablation status` (read_run_state), so both call the same runs damaged.
            try:
                run = read_done_run(run_dir)
            except AblationError as error:
                failed_rows.append(_run_row(run_dir, identity, "damaged", error=str(error)))
                continue
            run_rows.append(
                {
                    **run.metrics,
                    **identity,
                    **_protocol_settings(run.record),
                    "path": str(run_dir),
                    "stale": "; ".join(stale.reasons(run_dir)),
                }
            )
            image_frames.extend(_image_frames(run, identity))
            if run.history is not None:
                history_frames.append(
                    pd.DataFrame(run.history).assign(
                        **{k: identity[k] for k in (*KEY_COLUMNS, "run_name", "skip_label")}
                    )
                )
            continue
        status, detail, record = read_run_state(run_dir)
        if status in ("damaged", "failed"):
            failed_rows.append(_run_row(run_dir, identity, status, error=detail, epoch=record.get("epoch")))
        else:
            status = "running" if status == "started" else status
            incomplete_rows.append(_run_row(run_dir, identity, status, epoch=record.get("epoch")))

    images = _concat(image_frames, IMAGE_COLUMNS)
    runs = pd.DataFrame(run_rows)
    if runs.empty:
        runs = pd.DataFrame(columns=[*RUN_LIST_COLUMNS[:-1], "repeat", "fold", "skip_label", "stale"])
    failed = pd.DataFrame(failed_rows, columns=[*RUN_LIST_COLUMNS, "error", "epoch"])
    incomplete = pd.DataFrame(incomplete_rows, columns=[*RUN_LIST_COLUMNS, "epoch"])
    history = _concat(history_frames, (*KEY_COLUMNS, "run_name", "epoch"))
    attempted = pd.concat(
        [frame[list(KEY_COLUMNS) + ["status"]] for frame in (runs.assign(status="done"), failed, incomplete)],
        ignore_index=True,
    )
    expected = recorded_grid(root, attempted, [*run_rows, *failed_rows, *incomplete_rows], apart)
    if expected is None:
        by_start = apart.loc[apart["differs"].str.contains(INIT_KEY, regex=False), "dataset"]
        expected = expected_grid(attempted, own_connectors=set(by_start))
    missing = missing_runs(expected, attempted)
    return Results(
        root=root,
        images=images,
        runs=runs,
        history=history,
        failed=failed,
        incomplete=incomplete,
        missing=missing,
        expected=expected,
        apart=apart,
    )


def _identity(run_dir: Path, config: RunConfig, record: dict[str, Any], *, dataset: str) -> dict[str, Any]:
    """The identity columns of a run (``dataset`` is its report label, see :func:`ablation.report.pooling.dataset_labels`)."""
    return {
        "run_id": record.get("run_id", run_dir.name),
        "run_name": record.get("run_name", run_dir.name),
        "dataset": dataset,
        "connector": config.model.connector,
        "skips": config.model.skips,
        "skip_label": skip_label(config.model.skips),
        "seed": config.seed,
        "repeat": config.repeat,
        "fold": config.fold,
        "split": split_label(config.fold, config.repeat),
    }


def _name_identity(run_dir: Path, slugs: dict[str, str]) -> dict[str, Any]:
    """The identity columns a run folder's name gives (:func:`ablation.store.name_fields`); {} for another name."""
    fields = name_fields(run_dir.name)
    if fields is None:
        return {}
    return {
        **{key: fields[key] for key in ("connector", "skips", "split", "run_id")},
        "run_name": run_dir.name,
        "dataset": slugs.get(fields["dataset"], fields["dataset"]),
        "seed": int(fields["seed"]),
    }


def _image_frames(run: DoneRun, identity: dict[str, Any]) -> list[pd.DataFrame]:
    """The per-image rows of a done run: retrained (test_metrics.csv) and test-time masked, if any."""
    frames = [pd.DataFrame(run.test).assign(**identity, masking=RETRAINED)]
    if run.masked is not None:
        masked = pd.DataFrame(run.masked)
        masks = masked.pop("eval_skips")
        unmasked = {k: v for k, v in identity.items() if k not in ("skips", "skip_label")}
        frames.append(
            masked.assign(
                **unmasked,
                skips=masks.to_numpy(),
                skip_label=[skip_label(s) for s in masks],
                masking=TEST_TIME,
            )
        )
    return frames


def apart_note(results: Results, dataset: str) -> str | None:
    """Why ``dataset`` is reported apart from other runs of the same name, or None when it is not."""
    rows = results.apart[results.apart["name"] == results.shared_name(dataset)]
    if dataset not in set(rows["dataset"]):
        return None
    first = rows.iloc[0]
    groups = "; ".join(f"{row.dataset}: {row.setting} ({row.runs} runs)" for row in rows.itertuples())
    note = (
        f"Runs of {first['name']} differ in {first['differs']}, so they are not pooled: each setting is reported "
        f"as a dataset of its own ({groups})."
    )
    if INIT_KEY in first["differs"].split(", "):
        note += (
            f" A connector's runs that started from different weights ({INIT_KEY}) are not replicates of one "
            "another; each dataset lists how every connector in it started, and connectors with one start stay "
            "with the start most runs share."
        )
    return note


def _protocol_settings(record: dict[str, Any]) -> dict[str, Any]:
    """The :data:`PROTOCOL_SETTINGS` of a run from its config.json content (a key it lacks reads as None)."""
    sections = {name: record.get(name) for name in ("model", "train")}
    return {
        column: sections[section].get(key) if isinstance(sections[section], dict) else None
        for column, (section, key) in PROTOCOL_SETTINGS.items()
    }


def _run_row(run_dir: Path, identity: dict[str, Any], status: str, **extra: Any) -> dict[str, Any]:
    row = {key: identity.get(key) for key in RUN_LIST_COLUMNS}
    row.update(run_name=identity.get("run_name", run_dir.name), path=str(run_dir), status=status, **extra)
    return row


def _concat(frames: list[pd.DataFrame], columns: tuple[str, ...]) -> pd.DataFrame:
    if not frames:
        return pd.DataFrame(columns=list(columns))
    frame = pd.concat(frames, ignore_index=True)
    first = [c for c in columns if c in frame.columns]
    frame = frame[first + [c for c in frame.columns if c not in first]]
    if "image" in frame.columns:
        frame["image"] = frame["image"].astype(str)
    return frame


def replicate_means(images: pd.DataFrame, metric: str = "dice") -> pd.DataFrame:
    """Per-run mean of ``metric``: one row per dataset, connector, masking, skips, seed and split (a replicate)."""
    keys = ["dataset", "connector", "masking", "skips", "seed", "split"]
    if images.empty:
        return pd.DataFrame(columns=[*keys, metric])
    return images.groupby(keys, as_index=False)[metric].mean()


def image_means(images: pd.DataFrame, metric: str = "dice") -> pd.DataFrame:
    """Per-image score averaged over seeds and splits: rows = test images, columns = skip subsets.

    Pass the rows of one dataset, connector and masking; images are paired across subsets by name.
    """
    if images.empty:
        return pd.DataFrame()
    groups = images.groupby(["dataset", "connector", "masking"]).ngroups
    if groups != 1:
        raise AblationError(
            f"image_means needs one dataset, connector and masking; got {groups} combinations"
        )
    table = images.pivot_table(index="image", columns="skips", values=metric, aggfunc="mean")
    return table[[s for s in ALL_SUBSETS if s in table.columns]]
