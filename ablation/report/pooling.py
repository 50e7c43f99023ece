"""Which runs pool as replicates of one dataset, and which are reported apart. No torch import.

Replicates (seeds and splits) of a dataset are pooled only when their runs agree in every setting but the ones
a report compares or that do not change the result (:data:`POOLING_IGNORED`), were trained on the same data
(the dataset fingerprint each run records) and, within one connector, started from the same weights
(``train.init_from``; see :func:`dataset_labels`). Runs of one dataset name that differ are labelled as datasets of
their own, ``<name>@<key>=<value>,...``; :func:`ablation.report.load.load_results` applies the labels and keeps
the table of them in ``Results.apart``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from ablation.config import CONNECTORS, RunConfig
from ablation.io import stable_hash
from ablation.store import RUN_RECORD_KEYS, non_identity_keys

APART_COLUMNS = ("dataset", "name", "runs", "differs", "setting")
# Config keys in which pooled replicates may differ: the replicate itself (seed, split), what a report compares
# (connector, skip subset), the dataset's path (the data is identified by its fingerprint instead: see
# pooling_settings), the settings run_id leaves out (where and how fast: data_root, eval_batch_size, compile, ...),
# and what a run saves or evaluates besides its result (predictions kept, test-time masks), and the
# initialisation: it is set per connector (train.init_from; U-Net random, UCTransNet from the U-Net is one study),
# so dataset_labels compares it within each connector instead, and the source run is each replicate's own
# (train.init_from_run).
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
NON_CUDA_DEVICES = ("cpu", "mps", "xpu")  # precision "auto" means fp32 there, bf16 autocast on CUDA
# The pseudo-setting of a dataset whose runs of one connector started from different weights:
# {connector: "random" | "from <train.init_from>"} for every connector of a group of runs.
INIT_KEY = "train.init_from"


def init_text(value: Any) -> str:
    """How a run started: ``random`` (``train.init_from`` empty or not recorded) or ``from <init_from>``."""
    if value is None or value == "" or (isinstance(value, float) and value != value):  # None, "", NaN
        return "random"
    return f"from {value}"


def used_precision(precision: Any, device: Any) -> str | None:
    """The precision a run trained in: ``bf16`` or ``fp32``; ``auto`` is resolved by the device the run
    recorded (fp32 on CPU, MPS and XPU, bf16 autocast on CUDA). None when it cannot be told."""
    if precision in ("bf16", "fp32"):
        return precision
    if precision == "auto" and isinstance(device, str) and device:
        return "fp32" if device in NON_CUDA_DEVICES else "bf16"
    return None


def dataset_name(text: str) -> str:
    """A short name for a dataset: the name itself, or the last folder of a dataset path."""
    return Path(text).name if ("/" in text or "\\" in text) else text


def pooling_settings(record: dict[str, Any]) -> dict[str, Any]:
    """What replicates must share to be pooled: a run's config.json flattened to dotted keys, without
    :data:`POOLING_IGNORED`, plus the data's identity under :data:`DATA_KEY`.

    The data is identified by the dataset fingerprint the run recorded (its files' names, sizes and modification
    times and the preparation settings and version), so two folders that share a name are two datasets, while
    one folder read from two data roots is one. Runs that recorded no fingerprint fall back to the dataset as
    given and its data root. ``train.precision = "auto"`` is replaced by the precision it meant on the run's
    recorded device (:func:`used_precision`). Keys a config.json lacks are None.
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
    # "auto" is one setting but two precisions: a CPU run (fp32) and a GPU run (bf16) are not replicates.
    if flat.get("train.precision") == "auto":
        flat["train.precision"] = used_precision("auto", env.get("device")) or "auto"
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
    be too long), and every table, figure, statistic and finding treats it as a dataset of its own. The same
    holds when one connector's runs started from different weights (:func:`_split_by_start`): those runs are
    labelled by their start (``glas@uctransnet=random``), while a study in which each connector has one start
    (U-Net random, UCTransNet from the U-Net) is one dataset.

    Returns:
        ``({run folder: label}, apart)`` with ``apart`` one row per label of a split name: columns
        ``APART_COLUMNS`` (label, shared name, run folders, the differing keys, this label's values of them).
    """
    groups: dict[str, dict[str, list[Path]]] = {}
    for run_dir, (config, record) in configs.items():
        key = json.dumps(pooling_settings(record), sort_keys=True, default=str)
        groups.setdefault(dataset_name(config.dataset), {}).setdefault(key, []).append(run_dir)
    labels: dict[Path, str] = {}
    rows = []
    for name, pooled in groups.items():
        by_setting, settings = _split_by_start(pooled, configs)
        if len(by_setting) == 1:
            labels.update(dict.fromkeys(next(iter(by_setting.values())), name))
            continue
        ordered = sorted(by_setting, key=lambda k: (-len(by_setting[k]), k))  # most runs first
        keys = sorted({k for s in ordered for k in settings[s]}, key=lambda k: (k != DATA_KEY, k))
        differs = [k for k in keys if len({json.dumps(settings[s].get(k), default=str) for s in ordered}) > 1]
        texts = [", ".join(f"{k} = {_value_text(settings[s].get(k))}" for k in differs) for s in ordered]
        varying = _varying_starts([settings[s].get(INIT_KEY) or {} for s in ordered])
        names = [_label(name, settings[s], differs, varying) for s in ordered]
        if len(set(names)) < len(names) or max(len(n) for n in names) > 60:
            names = [f"{name}@{i}" for i in range(1, len(ordered) + 1)]
        for setting, label, text in zip(ordered, names, texts):
            labels.update(dict.fromkeys(by_setting[setting], label))
            rows.append((label, name, len(by_setting[setting]), ", ".join(differs), text))
    return labels, pd.DataFrame(rows, columns=list(APART_COLUMNS))


def _split_by_start(
    pooled: dict[str, list[Path]], configs: dict[Path, tuple[RunConfig, dict[str, Any]]]
) -> tuple[dict[str, list[Path]], dict[str, dict[str, Any]]]:
    """One dataset name's groups of runs (``{pooling-settings key: runs}``), split where a connector's runs
    started from different weights.

    Such runs are not replicates of one another, so a group in which one connector has several starts
    (``train.init_from``) is split by start: that connector's runs go to the group of their start, and the runs
    of connectors with one start stay with the start that most runs of the varying connectors share (on a tie,
    a start from another run before random weights). Then every group of the name carries :data:`INIT_KEY`
    among its settings, ``{connector: start}`` in the connector table's order; a name in which each connector
    has one start per group is returned as it is.

    Returns:
        ``({settings key: runs}, {settings key: settings})``.
    """
    starts = {
        run: (configs[run][0].model.connector, init_text(configs[run][0].train.init_from))
        for runs in pooled.values()
        for run in runs
    }
    regrouped: dict[tuple[str, str | None], list[Path]] = {}
    for key, runs in pooled.items():
        by_connector: dict[str, set[str]] = {}
        for run in runs:
            by_connector.setdefault(starts[run][0], set()).add(starts[run][1])
        varying = {connector for connector, found in by_connector.items() if len(found) > 1}
        counts = Counter(starts[run][1] for run in runs if starts[run][0] in varying)
        main = min(counts, key=lambda start: (-counts[start], start == "random", start)) if counts else None
        for run in runs:
            connector, start = starts[run]
            regrouped.setdefault((key, start if connector in varying else main), []).append(run)
    if len(regrouped) == len(pooled):
        return pooled, {key: json.loads(key) for key in pooled}
    order = {connector: i for i, connector in enumerate(CONNECTORS)}
    grouped: dict[str, list[Path]] = {}
    settings: dict[str, dict[str, Any]] = {}
    for (key, _), runs in regrouped.items():
        present = dict(sorted((starts[run] for run in runs), key=lambda item: (order.get(item[0], 99), item)))
        flat = {**json.loads(key), INIT_KEY: present}
        new_key = json.dumps(flat, sort_keys=True, default=str)
        grouped[new_key], settings[new_key] = runs, flat
    return grouped, settings


def _varying_starts(starts: list[dict[str, str]]) -> list[str]:
    """The connectors whose start differs between groups that both have runs of it (those name the labels)."""
    connectors = sorted({c for group in starts for c in group})
    varying = [c for c in connectors if len({group[c] for group in starts if c in group}) > 1]
    return varying or connectors


def _value_text(value: Any) -> str:
    if isinstance(value, dict):  # INIT_KEY: {connector: start}
        return ", ".join(f"{connector} {start}" for connector, start in value.items())
    if value is None:
        return "not recorded"
    if isinstance(value, list):
        return "-".join(map(str, value))
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def _label(name: str, setting: dict[str, Any], differs: list[str], varying: list[str]) -> str:
    leaves = [key.rsplit(".", 1)[-1] for key in differs]
    parts = []
    for key, leaf in zip(differs, leaves):
        if key == INIT_KEY:  # the start of each connector that varies: "uctransnet=from-unet-1111"
            starts = setting.get(key) or {}
            parts += [f"{c}={starts[c]}" for c in varying if c in starts]
            continue
        text = _value_text(setting.get(key))
        if key == DATA_KEY:  # "fingerprint 1a2b..." -> its first 8 hex digits; a folder -> a short hash of it
            words = text.split(" ", 1)
            text = words[1][:8] if words[0] == "fingerprint" else stable_hash(text, length=8)
        parts.append(f"{leaf if leaves.count(leaf) == 1 else key}={text}")
    return f"{name}@" + re.sub(r"[^A-Za-z0-9._+=,-]+", "-", ",".join(parts))
