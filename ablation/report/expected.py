"""The grid a results folder was meant to hold, and which of its runs are not done. No torch import.

The expected grid is the list of runs ``ablation run`` recorded in ``grid.json`` (:func:`recorded_grid`), else the
one the run folders imply (:func:`expected_grid`); :func:`missing_runs` lists its combinations without a done run.
:func:`ablation.report.load.load_results` keeps both in ``Results.expected`` and ``Results.missing``.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pandas as pd

from ablation.config import CONNECTORS
from ablation.skips import ALL_SUBSETS, PAIR_SUBSETS, PAPER_SUBSETS
from ablation.store import dataset_slug, name_fields, recorded_runs

KEY_COLUMNS = ("dataset", "connector", "skips", "seed", "split")


def expected_grid(attempted: pd.DataFrame, own_connectors: Collection[str] = ()) -> pd.DataFrame:
    """The grid the runs present imply: datasets x connectors x subsets x seeds x splits.

    Datasets, seeds and splits are the union over all attempted runs. A connector's subsets are all 16 when its
    runs use a pair subset or a subset outside the paper's Fig. 3 settings, the paper's 10 settings when its runs
    use more than one of those, and otherwise the subsets it was run with (e.g. only "all" for a module ablation).

    Args:
        attempted: one row per run folder with columns dataset, connector, skips, seed, split.
        own_connectors: datasets that expect only the connectors attempted in them, not every connector of the
            folder (a dataset kept apart because one connector's runs started from other weights holds only
            those runs: see :mod:`ablation.report.pooling`).
    """
    columns = list(KEY_COLUMNS)
    if attempted.empty:
        return pd.DataFrame(columns=columns)
    datasets = sorted(attempted["dataset"].dropna().unique())
    seeds = sorted(int(s) for s in attempted["seed"].dropna().unique())
    splits = sorted(attempted["split"].dropna().unique())
    present = attempted.groupby("dataset")["connector"].agg(set).to_dict()
    rows = []
    for connector in [c for c in CONNECTORS if c in set(attempted["connector"])]:
        used = set(attempted.loc[attempted["connector"] == connector, "skips"])
        if used & set(PAIR_SUBSETS) or not used <= set(PAPER_SUBSETS):
            subsets = list(ALL_SUBSETS)
        elif len(used) > 1:
            subsets = list(PAPER_SUBSETS)
        else:
            subsets = sorted(used)
        for dataset, skips, seed, split in itertools.product(datasets, subsets, seeds, splits):
            if dataset not in own_connectors or connector in present[dataset]:
                rows.append((dataset, connector, skips, seed, split))
    return pd.DataFrame(rows, columns=columns)


def recorded_grid(
    root: Path, attempted: pd.DataFrame, rows: list[dict[str, Any]], apart: pd.DataFrame
) -> pd.DataFrame | None:
    """The grid ``ablation run`` recorded in ``grid.json`` (plus any run folder it lacks); None without one.

    A recorded run without a folder has its fields read from its name (:func:`ablation.store.name_fields`).

    Args:
        root: the results folder.
        attempted: one row per run folder (columns :data:`KEY_COLUMNS`).
        rows: each run folder's identity (``run_name`` and :data:`KEY_COLUMNS`; ``dataset`` None when its
            config.json cannot be read).
        apart: :attr:`ablation.report.load.Results.apart`.
    """
    names = recorded_runs(root)  # a damaged grid.json is an error naming it
    if not names:  # no grid.json, or one without run names: infer the grid instead
        return None
    known = {row["run_name"]: row for row in rows if row.get("dataset") is not None}
    datasets = labels_by_slug(apart, [row["dataset"] for row in known.values()])
    keyed = []
    for name in names:
        if name in known:
            keyed.append({key: known[name][key] for key in KEY_COLUMNS})
        elif (fields := name_fields(name)) is not None:
            keyed.append(
                {
                    **{key: fields[key] for key in KEY_COLUMNS},
                    "dataset": datasets.get(fields["dataset"], fields["dataset"]),
                    "seed": int(fields["seed"]),
                }
            )
    recorded = pd.DataFrame(keyed, columns=list(KEY_COLUMNS))
    if recorded.empty:
        return None
    placed = attempted[
        list(KEY_COLUMNS)
    ].dropna()  # a damaged run that even its name cannot place is left out
    expected = pd.concat([recorded, placed], ignore_index=True)
    expected["seed"] = expected["seed"].astype(int)
    return expected.drop_duplicates().reset_index(drop=True)


def labels_by_slug(apart: pd.DataFrame, labels: list[str]) -> dict[str, str]:
    """How the dataset in a run folder's name (its short form, ``glas`` for ``data/GlaS``) is shown: as the
    report label of the run folders present; a name kept apart under several labels goes to the label with
    most runs.

    Args:
        apart: :attr:`ablation.report.load.Results.apart` (most runs first within a name).
        labels: the report labels of the run folders present.
    """
    shared = dict(zip(apart["dataset"], apart["name"]))
    datasets: dict[str, str] = {}
    for label in [*apart["dataset"], *labels]:
        datasets.setdefault(dataset_slug(shared.get(label, label)), label)
    return datasets


def missing_runs(expected: pd.DataFrame, attempted: pd.DataFrame) -> pd.DataFrame:
    """The expected combinations without a done run, each with its most advanced attempt's ``status``
    (``running``, ``failed``, ``damaged``, ``pending``) or ``absent``."""
    columns = [*KEY_COLUMNS, "status"]
    if expected.empty:
        return pd.DataFrame(columns=columns)
    order = {"done": 0, "running": 1, "failed": 2, "damaged": 3, "pending": 4}
    best = (
        attempted.assign(rank=attempted["status"].map(order))
        .sort_values("rank")
        .drop_duplicates(list(KEY_COLUMNS))[[*KEY_COLUMNS, "status"]]
    )
    merged = expected.merge(best, on=list(KEY_COLUMNS), how="left")
    merged["status"] = merged["status"].fillna("absent")
    return merged[merged["status"] != "done"].reset_index(drop=True)[columns]
