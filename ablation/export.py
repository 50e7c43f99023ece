"""Slim exports of a results folder: what a report needs, without checkpoints, in one ``.tar.gz``.

This is how results leave a cluster or a borrowed GPU machine. The archive holds, with paths relative to the
results folder, in sorted order:

- every **done** run (metrics.json exists and the files a report needs are sound, as
  :func:`ablation.store.state.read_run_state` decides): config.json, status.json, history.csv, test_metrics.csv,
  masked_metrics.csv (when present) and metrics.json;
- predictions.npz only for the runs the report's qualitative figure shows (:func:`_figure_runs`);
- every **failed** run's config.json and status.json, so the report lists the failure and its reason;
- grid.json, as it is: the runs ``ablation run`` asked for, so a report of the unpacked folder lists the runs
  left out (running, damaged, not started) as missing instead of forgetting them. A folder without one (runs
  made by ``ablation train``) exports none, and the report infers the grid from the runs present.

Nothing else: no checkpoints (``*.pt``), lock files, temporary files or reports. The archive is written
atomically and deterministically (sorted members, fixed owner and mode, no time stamp in the gzip header), so
the same runs give the same bytes. Unpack it into a folder and run ``ablation report`` there. Layered with
:mod:`ablation.store`: no torch, pandas or report import.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import math
import os
import statistics
import tarfile
from collections.abc import Iterable
from pathlib import Path

from ablation.errors import AblationError
from ablation.io import atomic_write_bytes, read_json_table
from ablation.store.layout import (
    CONFIG_FILE,
    GRID_FILE,
    HISTORY_FILE,
    MASKED_METRICS_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    STATUS_FILE,
    TEST_METRICS_FILE,
    find_runs,
)
from ablation.store.state import read_run_state

DONE_FILES = (CONFIG_FILE, STATUS_FILE, HISTORY_FILE, TEST_METRICS_FILE, MASKED_METRICS_FILE, METRICS_FILE)
FAILED_FILES = (CONFIG_FILE, STATUS_FILE)
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")
# The qualitative figure's variants besides the best U-Net subset (ablation.report.figures.default_variants).
FIGURE_VARIANTS = (("unet", "0000"), ("unet", "1111"), ("uctransnet", "1111"))


@dataclasses.dataclass(frozen=True)
class ExportSummary:
    """What :func:`export_slim` wrote.

    Attributes:
        out: the archive.
        done: done runs exported.
        failed: failed runs whose config.json and status.json were exported.
        predictions: done runs whose predictions.npz was exported.
        left_out: run folders not exported, per state (``running``, ``damaged``, ``pending``).
        files: files in the archive.
        size: the archive's size in bytes.
    """

    out: Path
    done: int
    failed: int
    predictions: int
    left_out: dict[str, int]
    files: int
    size: int

    def format(self) -> str:
        """One line for the CLI."""
        skipped = ", ".join(f"{count} {state}" for state, count in sorted(self.left_out.items()))
        return (
            f"exported {_count(self.done, 'done run')} ({self.predictions} with predictions) and the status "
            f"of {_count(self.failed, 'failed run')} to {self.out} ({_size_text(self.size)}, "
            f"{_count(self.files, 'file')}); left out: {skipped or 'nothing'}"
        )


@dataclasses.dataclass(frozen=True)
class _Run:
    """A run folder as the export sees it."""

    path: Path
    state: str  # done, failed, damaged, started, pending (read_run_state)
    dataset: str = ""
    connector: str = ""
    skips: str = ""
    seed: int = 0
    split: str = ""
    dice_mean: float = math.nan
    has_predictions: bool = False


def export_slim(results_dir: str | Path, out_path: str | Path) -> ExportSummary:
    """Write the slim archive of ``results_dir`` to ``out_path`` (see the module docstring for its content).

    Args:
        results_dir: a folder of run folders (:mod:`ablation.store`).
        out_path: the archive to write, ending in ``.tar.gz`` or ``.tgz``, outside ``results_dir``; an
            existing archive there is replaced.

    Returns:
        How many runs and files were exported, and the archive's size.

    Raises:
        AblationError: a missing results folder or one without run folders or without a done or failed run; an
            output inside the results folder, of another suffix, that is a folder, or that cannot be written.
    """
    root = Path(results_dir)
    out = _check_output(root, Path(out_path))
    if not root.is_dir():
        raise AblationError(f"results folder {root} does not exist")
    runs = [_read_run(path) for path in find_runs(root)]
    if not runs:
        raise AblationError(f"no run folders (with {CONFIG_FILE}) found under {root}")
    if not any(run.state in ("done", "failed") for run in runs):
        raise AblationError(f"nothing to export under {root}: no done or failed run")
    with_predictions = _figure_runs(runs)
    members: dict[str, Path] = {}
    left_out: dict[str, int] = {}
    for run in runs:
        if run.state == "done":
            names = DONE_FILES + ((PREDICTIONS_FILE,) if run.path in with_predictions else ())
        elif run.state == "failed":
            names = FAILED_FILES
        else:
            state = "running" if run.state == "started" else run.state
            left_out[state] = left_out.get(state, 0) + 1
            continue
        for name in names:
            if (run.path / name).is_file():
                members[(run.path / name).relative_to(root).as_posix()] = run.path / name
    if (root / GRID_FILE).is_file():
        members[GRID_FILE] = root / GRID_FILE
    data = _archive(members)
    try:
        atomic_write_bytes(out, data)
    except OSError as error:
        raise AblationError(f"cannot write {out}: {error.strerror or error}") from None
    return ExportSummary(
        out=out,
        done=sum(run.state == "done" for run in runs),
        failed=sum(run.state == "failed" for run in runs),
        predictions=len(with_predictions),
        left_out=left_out,
        files=len(members),
        size=len(data),
    )


def _figure_runs(runs: Iterable[_Run]) -> set[Path]:
    """The done runs whose predictions.npz the qualitative figure shows: the rule behind the export.

    Per dataset, the variants are U-Net-none, U-Net-all, the U-Net subset with the highest mean test Dice over
    its done runs, and UCTransNet with all skips (those that have done runs), as
    :func:`ablation.report.figures.default_variants` chooses them; their predictions come from the first
    replicate, by seed then split name, that has a predictions.npz for every variant, as the figure takes it.
    A dataset without such a replicate exports no predictions (the figure needs all of them).
    """
    done = [run for run in runs if run.state == "done"]
    chosen: set[Path] = set()
    for dataset in sorted({run.dataset for run in done}):
        mine = [run for run in done if run.dataset == dataset]
        present = {(run.connector, run.skips) for run in mine}
        variants = {v for v in FIGURE_VARIANTS if v in present}
        best = _best_unet_subset(mine)
        if best is not None:
            variants.add(("unet", best))
        for seed, split in sorted({(run.seed, run.split) for run in mine}):
            found = {
                (run.connector, run.skips): run.path
                for run in reversed(mine)  # the first run of a variant wins, as in the figure
                if (run.seed, run.split) == (seed, split) and run.has_predictions
            }
            if all(v in found for v in variants):
                chosen.update(found[v] for v in variants)
                break
    return chosen


def _best_unet_subset(runs: list[_Run]) -> str | None:
    """The U-Net subset with the highest mean of the runs' test Dice; ties go to the first in sorted order."""
    scores: dict[str, list[float]] = {}
    for run in runs:
        if run.connector == "unet":
            scores.setdefault(run.skips, [])
            if math.isfinite(run.dice_mean):
                scores[run.skips].append(run.dice_mean)
    means = {skips: statistics.fmean(values) for skips, values in sorted(scores.items()) if values}
    return max(means, key=means.__getitem__) if means else None


def _read_run(path: Path) -> _Run:
    """The run's state and, for a done run, the fields the figure rule needs (from config and metrics)."""
    state = read_run_state(path)[0]
    if state != "done":
        return _Run(path, state)
    try:
        config, metrics = read_json_table(path / CONFIG_FILE), read_json_table(path / METRICS_FILE)
        model = config.get("model") or {}
        fold, repeat = config.get("fold"), int(config.get("repeat") or 0)
        dice = metrics.get("dice_mean")
        return _Run(
            path,
            state,
            dataset=Path(str(config["dataset"])).name,  # as reports name datasets (a folder's last part)
            connector=str(model.get("connector", "")),
            skips=str(model.get("skips", "")),
            seed=int(config.get("seed") or 0),
            split="official" if fold is None else f"r{repeat}f{int(fold)}",
            dice_mean=float(dice)
            if isinstance(dice, (int, float)) and not isinstance(dice, bool)
            else math.nan,
            has_predictions=(path / PREDICTIONS_FILE).is_file(),
        )
    except (AblationError, KeyError, TypeError, ValueError):
        return _Run(path, "damaged")  # as the report calls a done run whose config it cannot read


def _archive(members: dict[str, Path]) -> bytes:
    """A gzip-compressed tar of ``members`` (archive name -> file), sorted, with fixed owner and mode."""
    buffer = io.BytesIO()
    # mtime=0 and no file name in the gzip header: the same members give the same bytes.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as compressed:
        with tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as archive:
            for name in sorted(members):
                source = members[name]
                try:
                    content, mtime = source.read_bytes(), int(source.stat().st_mtime)
                except OSError as error:
                    raise AblationError(f"cannot read {source}: {error.strerror or error}") from None
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(content), mtime, 0o644
                archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _check_output(root: Path, out: Path) -> Path:
    """The output path, refused before any work when it cannot be the archive."""
    if not out.name.endswith(ARCHIVE_SUFFIXES):
        raise AblationError(
            f"output {out} must end in {' or '.join(ARCHIVE_SUFFIXES)} (a gzip-compressed tar)"
        )
    if out.is_dir():
        raise AblationError(f"output {out} is a folder; name the archive file, e.g. {out / 'results.tar.gz'}")
    resolved, resolved_root = out.resolve(), root.resolve()
    if resolved_root == resolved or resolved_root in resolved.parents:
        raise AblationError(
            f"output {out} is inside the results folder {root}: write the archive elsewhere, so it never "
            "replaces a run's file or ends up in a later export"
        )
    for folder in (out.parent, *out.parent.parents):  # the nearest existing folder decides if we can write
        if folder.exists():
            if not folder.is_dir():
                raise AblationError(f"cannot write {out}: {folder} is a file, not a folder")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise AblationError(f"cannot write {out}: no write permission in {folder}")
            break
    return out


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _size_text(size: int) -> str:
    if size < 1000:
        return f"{size} bytes"
    return f"{size / 1000:.1f} kB" if size < 1_000_000 else f"{size / 1_000_000:.1f} MB"
