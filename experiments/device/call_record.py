"""The record of one device call of the budget study (``$OUT/call.json``), written by ``run_study.sh``.

``python3 experiments/device/call_record.py done RESULTS`` prints the done runs' names (one JSON list) before the
grid starts; ``... record RESULTS --before FILE --started EPOCH --budget S --phase SPEC:RC:SECONDS ...`` prints the
call's record afterwards: wall time, the runs this call finished, images per second, device, torch version, date.

Images per second counts training steps: for each run finished this call, its training images (config.json's
split record) times the epochs it ran (metrics.json), summed and divided by the seconds the grid phases took. A
run resumed from a checkpoint of an earlier call counts all its epochs, so that figure can then run high; it is
``null`` when no run finished.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from ablation.io import read_json_table
from ablation.store.layout import CONFIG_FILE, METRICS_FILE, find_runs
from ablation.store.state import read_run_state


def done_runs(results_dir: str | Path) -> list[str]:
    """Names of the done run folders below ``results_dir`` (as ``ablation status`` calls them done)."""
    return [run.name for run in find_runs(results_dir) if read_run_state(run)[0] == "done"]


def states(results_dir: str | Path) -> dict[str, int]:
    """How many run folders are in each state (done, started, failed, damaged, pending)."""
    counts: dict[str, int] = {}
    for run in find_runs(results_dir):
        state = read_run_state(run)[0]
        counts[state] = counts.get(state, 0) + 1
    return counts


def training_images(run_dir: Path) -> tuple[int, int, float]:
    """``(training image steps, validation image passes, seconds)`` of a done run, from its files."""
    splits = read_json_table(run_dir / CONFIG_FILE).get("env", {}).get("splits", {})
    metrics = read_json_table(run_dir / METRICS_FILE)
    epochs = int(metrics["epochs_run"])
    return (
        len(splits.get("train", [])) * epochs,
        len(splits.get("val", [])) * epochs,
        float(metrics["seconds"]),
    )


def device_record() -> dict[str, Any]:
    """The accelerator's name and the torch version (``cpu`` without CUDA)."""
    import torch

    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"device": name, "torch": torch.__version__, "python": platform.python_version()}


def call_record(
    results_dir: str | Path,
    *,
    before: list[str],
    started: float,
    budget: float,
    phases: list[dict[str, Any]],
    device: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The call's record (see the module docstring).

    Args:
        results_dir: the study's results folder.
        before: the done runs' names before the call (:func:`done_runs`).
        started: the call's start, seconds since the epoch.
        budget: the grid's wall-clock budget in seconds.
        phases: one ``{"spec", "exit", "seconds"}`` per ``ablation run`` (exit 124: stopped at the budget).
        device: :func:`device_record` (default: read it here, importing torch).
    """
    earlier = set(before)
    finished = [name for name in done_runs(results_dir) if name not in earlier]
    train = val = 0
    run_seconds = 0.0
    for name in finished:
        steps, passes, seconds = training_images(Path(results_dir) / name)
        train, val, run_seconds = train + steps, val + passes, run_seconds + seconds
    grid_seconds = sum(phase["seconds"] for phase in phases)
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        **(device if device is not None else device_record()),
        "budget_s": budget,
        "wall_s": round(time.time() - started, 1),
        "grid_s": round(grid_seconds, 1),
        "phases": phases,
        "runs_done_this_call": len(finished),
        "runs_done_total": len(earlier) + len(finished),
        "run_states": states(results_dir),
        "train_images": train,
        "val_images": val,
        "train_images_per_s": round(train / grid_seconds, 1) if finished and grid_seconds > 0 else None,
        "run_seconds": round(run_seconds, 1),
        "finished": finished,
    }


def _phase(text: str) -> dict[str, Any]:
    spec, exit_code, seconds = text.rsplit(":", 2)
    return {"spec": spec, "exit": int(exit_code), "seconds": float(seconds)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    done = commands.add_parser("done", help="print the done runs' names as a JSON list")
    done.add_argument("results_dir")
    record = commands.add_parser("record", help="print the call's record as JSON")
    record.add_argument("results_dir")
    record.add_argument("--before", required=True, help="the file `done` wrote before the grid")
    record.add_argument("--started", type=float, required=True, help="start of the call, seconds since epoch")
    record.add_argument("--budget", type=float, required=True)
    record.add_argument("--phase", action="append", default=[], metavar="SPEC:EXIT:SECONDS")
    args = parser.parse_args(argv)
    if args.command == "done":
        names = done_runs(args.results_dir) if Path(args.results_dir).is_dir() else []
        print(json.dumps(names))
        return 0
    before = json.loads(Path(args.before).read_text(encoding="utf-8"))
    phases = [_phase(text) for text in args.phase]
    record_ = call_record(
        args.results_dir, before=before, started=args.started, budget=args.budget, phases=phases
    )
    json.dump(record_, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
