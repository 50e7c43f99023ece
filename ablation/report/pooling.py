"""Which runs pool as replicates of one dataset, and which are reported apart. No torch import.

Replicates (seeds and splits) of a dataset are pooled only when their runs agree in every setting but the ones
a report compares or that do not change the result (:data:`POOLING_IGNORED`) and were trained on the same data
(the dataset fingerprint each run records). Runs of one dataset name that differ are labelled as datasets of
their own, ``<name>@<key>=<value>,...`` (:func:`dataset_labels`); :func:`ablation.report.load.load_results`
applies the labels and keeps the table of them in ``Results.apart``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd

from ablation.config import RunConfig
from ablation.io import stable_hash
from ablation.store import RUN_RECORD_KEYS, non_identity_keys

APART_COLUMNS = ("dataset", "name", "runs", "differs", "setting")
# Config keys in which pooled replicates may differ: the replicate itself (seed, split), what a report compares
# (connector, skip subset), the dataset's path (the data is identified by its fingerprint instead: see
# pooling_settings), the settings run_id leaves out (where and how fast: data_root, eval_batch_size, compile, ...),
# and what a run saves or evaluates besides its result (predictions kept, test-time masks), and the
# initialisation: set per connector (train.init_from, which the protocol statement reports per connector) and its
# source run, which is each replicate's own (train.init_from_run).
POOLING_IGNORED = (
    "seed",
    "fold",
    "repeat",
    "dataset",
    "model.connector",
    "model.skips",
    *non_identity_keys(),
    "train.save_predictions",
    "train.test_time_masks",
    "train.init_from",
    "train.init_from_run",
)
DATA_KEY = "data"  # the pseudo-key of the data's identity among the pooling settings


def dataset_name(text: str) -> str:
    """A short name for a dataset: the name itself, or the last folder of a dataset path."""
    return Path(text).name if ("/" in text or "\\" in text) else text


def pooling_settings(record: dict[str, Any]) -> dict[str, Any]:
    """What replicates must share to be pooled: a run's config.json flattened to dotted keys, without
    :data:`POOLING_IGNORED`, plus the data's identity under :data:`DATA_KEY`.

    The data is identified by the dataset fingerprint the run recorded (its files' names, sizes and modification
    times and the preparation settings and version), so two folders that share a name are two datasets, while
    one folder read from two data roots is one. Runs that recorded no fingerprint fall back to the dataset as
    given and its data root. Keys a config.json lacks are None.
    """
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if key in RUN_RECORD_KEYS:
            continue
        if isinstance(value, dict):
            flat.update({f"{key}.{inner}": item for inner, item in value.items()})
        else:
            flat[key] = value
    for key in POOLING_IGNORED:
        flat.pop(key, None)
    env = record.get("env") if isinstance(record.get("env"), dict) else {}
    fingerprint = env.get("dataset_fingerprint")
    flat[DATA_KEY] = (
        f"fingerprint {fingerprint}"
        if fingerprint
        else f"folder {record.get('dataset')}"
        + (f" in {record['data_root']}" if record.get("data_root") else "")
    )
    return flat


def dataset_labels(
    configs: dict[Path, tuple[RunConfig, dict[str, Any]]],
) -> tuple[dict[Path, str], pd.DataFrame]:
    """The dataset label of every run and the table of datasets kept apart.

    Runs whose datasets share a name but whose :func:`pooling_settings` differ are never pooled: each setting
    gets its own label, ``<name>@<key>=<value>,...`` over the keys that differ (``<name>@<n>`` when that would
    be too long), and every table, figure, statistic and finding treats it as a dataset of its own.

    Returns:
        ``({run folder: label}, apart)`` with ``apart`` one row per label of a split name: columns
        ``APART_COLUMNS`` (label, shared name, run folders, the differing keys, this label's values of them).
    """
    groups: dict[str, dict[str, list[Path]]] = {}
    settings: dict[str, dict[str, Any]] = {}
    for run_dir, (config, record) in configs.items():
        flat = pooling_settings(record)
        key = json.dumps(flat, sort_keys=True, default=str)
        settings[key] = flat
        groups.setdefault(dataset_name(config.dataset), {}).setdefault(key, []).append(run_dir)
    labels: dict[Path, str] = {}
    rows = []
    for name, by_setting in groups.items():
        if len(by_setting) == 1:
            labels.update(dict.fromkeys(next(iter(by_setting.values())), name))
            continue
        ordered = sorted(by_setting, key=lambda k: (-len(by_setting[k]), k))  # most runs first
        keys = sorted({k for s in ordered for k in settings[s]}, key=lambda k: (k != DATA_KEY, k))
        differs = [k for k in keys if len({json.dumps(settings[s].get(k), default=str) for s in ordered}) > 1]
        texts = [", ".join(f"{k} = {_value_text(settings[s].get(k))}" for k in differs) for s in ordered]
        names = [_label(name, settings[s], differs) for s in ordered]
        if len(set(names)) < len(names) or max(len(n) for n in names) > 60:
            names = [f"{name}@{i}" for i in range(1, len(ordered) + 1)]
        for setting, label, text in zip(ordered, names, texts):
            labels.update(dict.fromkeys(by_setting[setting], label))
            rows.append((label, name, len(by_setting[setting]), ", ".join(differs), text))
    return labels, pd.DataFrame(rows, columns=list(APART_COLUMNS))


def _value_text(value: Any) -> str:
    if value is None:
        return "not recorded"
    if isinstance(value, list):
        return "-".join(map(str, value))
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def _label(name: str, setting: dict[str, Any], differs: list[str]) -> str:
    leaves = [key.rsplit(".", 1)[-1] for key in differs]
    parts = []
    for key, leaf in zip(differs, leaves):
        text = _value_text(setting.get(key))
        if key == DATA_KEY:  # "fingerprint 1a2b..." -> its first 8 hex digits; a folder -> a short hash of it
            words = text.split(" ", 1)
            text = words[1][:8] if words[0] == "fingerprint" else stable_hash(text, length=8)
        parts.append(f"{leaf if leaves.count(leaf) == 1 else key}={text}")
    return f"{name}@" + re.sub(r"[^A-Za-z0-9._+=,-]+", "-", ",".join(parts))
