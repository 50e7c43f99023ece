"""Which runs count: where a run folder stands from its files alone, done runs whose data or split changed since
they ran, the files of runs trained again, and the runs earlier grids asked for.

A finished run is ``done`` only when every file the report reads back is sound and its folder name,
config.json and metrics.json name the same run (:func:`ablation.store.readers.check_identity`); otherwise it is
``damaged``, and the grid runner moves its files to ``<results>/.replaced/`` (:func:`set_aside`) and trains it
again. A done run is *stale* when the dataset fingerprint or the split its config.json recorded differs from
today's (:class:`StaleCheck`): it is kept and flagged. No torch, numpy or pandas import.
"""

from __future__ import annotations

import os
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ablation.errors import AblationError
from ablation.io import atomic_write_text, read_json_table
from ablation.store.layout import (
    CONFIG_FILE,
    GRID_FILE,
    LAST_CHECKPOINT,
    METRICS_FILE,
    REPLACED_DIR,
    SPLIT_LISTS,
    STATUS_FILE,
    run_dir_in,
)
from ablation.store.readers import done_run_problem, read_run_config


def read_run_state(run_dir: str | Path) -> tuple[str, str, dict[str, Any]]:
    """Where a run folder stands, from its files alone: ``(status, detail, status record)``.

    status is ``done`` (metrics.json exists and every file the report reads back is sound and describes this
    folder's run: see :func:`done_run_problem`), ``damaged`` (a finished run whose files cannot be used, an
    unreadable status.json, a config.json that is not a valid run config, or a checkpoint_last.pt that cannot be
    resumed from; detail says why), ``failed`` (status.json says so; detail is the reason), ``started``
    (status.json exists: running now or interrupted) or ``pending``. The grid runner, ``ablation status`` and the
    report all classify runs with this one function.
    """
    run_dir = Path(run_dir)
    if (run_dir / METRICS_FILE).exists():
        problem = done_run_problem(run_dir)
        return ("damaged", problem, {}) if problem else ("done", "", {})
    if (run_dir / CONFIG_FILE).exists():
        try:
            read_run_config(run_dir)
        except AblationError as error:
            return "damaged", str(error), {}
    if not (run_dir / STATUS_FILE).exists():
        return "pending", "", {}
    try:
        record = read_json_table(run_dir / STATUS_FILE)
    except AblationError as error:
        return "damaged", str(error), {}
    text = str(record.get("status", ""))
    if text.startswith("failed"):
        return "failed", text.removeprefix("failed").lstrip(": ") or str(record.get("error", "")), record
    problem = checkpoint_problem(run_dir / LAST_CHECKPOINT)
    if problem:
        return "damaged", f"{problem}: the run cannot resume", record
    return "started", "", record


def checkpoint_problem(path: str | Path) -> str | None:
    """Why checkpoint_last.pt cannot be resumed from, from its file alone (no torch), or None (sound or absent).

    torch.save writes a zip archive; a file cut short loses the archive's directory, and the pickled record
    (``*/data.pkl``) is read whole, so its CRC-32 is checked. The tensors' bytes are not read here (a
    checkpoint can be gigabytes); loading checks them.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        size = path.stat().st_size
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            records = [m for m in members if m.filename.endswith("/data.pkl")]
            if not records:
                return f"{path} is not a torch checkpoint (no data.pkl in it)"
            ends = [m.header_offset + m.compress_size for m in members]
            if max(ends) > size:
                return f"{path} is cut short"
            archive.read(records[0])
    except (OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, ValueError) as error:
        return f"{path} is damaged ({getattr(error, 'strerror', None) or error})"
    return None


def set_aside(run_dir: str | Path, reason: str, *, keep: Sequence[str] = ()) -> Path:
    """Move a run folder's files into ``<results>/.replaced/<run name>.<UTC time>/`` so the run can be trained
    again; nothing is deleted. ``reason.txt`` there says why.

    Args:
        run_dir: the run folder (its parent is the results folder).
        reason: why the run is trained again (damaged, stale), one line.
        keep: names of files that stay (the runner's lock).

    Returns:
        The folder the files went to.
    """
    run_dir = Path(run_dir)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = run_dir.parent / REPLACED_DIR / f"{run_dir.name}.{stamp}"
    suffix = 1
    while target.exists():
        suffix += 1
        target = run_dir.parent / REPLACED_DIR / f"{run_dir.name}.{stamp}-{suffix}"
    try:
        target.mkdir(parents=True)
        for item in sorted(run_dir.iterdir()):
            if item.name not in keep:
                os.replace(item, target / item.name)
        atomic_write_text(target / "reason.txt", reason.rstrip() + "\n")
    except OSError as error:
        raise AblationError(
            f"cannot move the files of {run_dir} to {target}: {error.strerror or error}"
        ) from None
    return target


class StaleCheck:
    """Flags finished runs whose data or split changed since they ran (:func:`stale_reasons`), computing today's
    dataset fingerprints and reading splits files once per check, however many runs share them.

    Args:
        fingerprint: today's fingerprint of a dataset, called as ``fingerprint(dataset, img_size=...,
            data_root=..., interpolation=...)`` (:func:`ablation.data.prepare.dataset_fingerprint`, passed in
            because the store sits below the data layer); an AblationError from it (a dataset folder missing
            here) means the data cannot be checked, not that it changed.
    """

    def __init__(self, fingerprint: Callable[..., str]) -> None:
        self._fingerprint = fingerprint
        self._fingerprints: dict[tuple[Any, ...], str | None] = {}
        self._splits_files: dict[str, Any] = {}

    def reasons(self, run_dir: str | Path) -> list[str]:
        """Why the finished run in ``run_dir`` is stale; empty when it is current or cannot be checked."""
        try:
            config, record = read_run_config(run_dir)
        except AblationError:
            return []  # a damaged run, reported as such elsewhere
        key = (config.dataset, config.data_root, config.model.img_size, config.interpolation)
        if key not in self._fingerprints:
            try:
                self._fingerprints[key] = self._fingerprint(
                    config.dataset,
                    img_size=config.model.img_size,
                    data_root=config.data_root,
                    interpolation=config.interpolation,
                )
            except AblationError:
                self._fingerprints[key] = None
        return stale_reasons(record, self._fingerprints[key], splits_files=self._splits_files)


def stale_reasons(
    record: Mapping[str, Any], fingerprint: str | None, *, splits_files: dict[str, Any] | None = None
) -> list[str]:
    """Why a finished run's results no longer match today's data: empty when they match or cannot be checked.

    Args:
        record: the run's config.json content (its ``env`` holds the dataset fingerprint and the splits it used).
        fingerprint: today's dataset fingerprint for the run's settings
            (:func:`ablation.data.prepare.dataset_fingerprint`), or None when it cannot be computed (the dataset
            folder is missing here): then the data is not compared.
        splits_files: a cache of splits files read, by path, shared across calls.

    Returns:
        One sentence per change: the data (its files, or the preparation code's version) or the run's split in
        the splits file it recorded (an edited file). A splits file that is gone or unreadable is not compared.
    """
    env = record.get("env") if isinstance(record.get("env"), dict) else {}
    reasons = []
    recorded = env.get("dataset_fingerprint")
    if fingerprint is not None and recorded and recorded != fingerprint:
        reasons.append(
            f"the data changed since it ran (dataset fingerprint {recorded} then, {fingerprint} now)"
        )
    splits = env.get("splits")
    if isinstance(splits, dict) and isinstance(splits.get("splits_file"), str):
        cache = splits_files if splits_files is not None else {}
        path = splits["splits_file"]
        if path not in cache:
            try:
                cache[path] = read_json_table(path)
            except AblationError:
                cache[path] = None
        content = cache[path]
        entries = content.get("splits") if isinstance(content, dict) else None
        entry = entries.get(splits.get("split")) if isinstance(entries, dict) else None
        if isinstance(entry, dict):
            today = {**entry, "test": content.get("test")}
            changed = [key for key in SPLIT_LISTS if key in splits and today.get(key) != splits[key]]
            if changed:
                reasons.append(
                    f"its split {splits.get('split')} changed in {path} since it ran ({'/'.join(changed)} images)"
                )
    return reasons


def read_grid_record(results_dir: str | Path) -> dict[str, list[str]]:
    """``grid.json`` of a results folder: ``{"runs": [run names], "specs": [spec names]}`` (empty lists without
    the file). Every run name is checked to name a folder inside ``results_dir`` (:func:`run_dir_in`).

    Raises:
        AblationError: naming grid.json when it cannot be read, is not a JSON object, or its ``runs`` or
            ``specs`` is not a list of strings, or a run name leads outside the results folder.
    """
    path = Path(results_dir) / GRID_FILE
    if not path.exists():
        return {"runs": [], "specs": []}
    fix = "repair or delete it (it lists the runs earlier `ablation run` calls asked for)"
    try:
        record = read_json_table(path)
    except AblationError as error:
        raise AblationError(f"{GRID_FILE} is damaged ({error}): {fix}") from None
    lists: dict[str, list[str]] = {}
    for key in ("runs", "specs"):
        value = record.get(key, [])
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise AblationError(f"{path} is damaged: {key!r} must be a list of names: {fix}")
        lists[key] = value
    for name in lists["runs"]:
        run_dir_in(results_dir, name, where=str(path))
    return lists


def recorded_runs(results_dir: str | Path) -> list[str]:
    """Run names recorded in ``grid.json`` by earlier ``ablation run`` calls on this folder (see
    :func:`read_grid_record`, whose errors it raises)."""
    return read_grid_record(results_dir)["runs"]
