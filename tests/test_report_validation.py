"""Every value read back is validated: a run whose files hold a wrong type, a number out of range, NaN or a
broken row is damaged, named with the reason under Gaps, never a crash or a score; `ablation status` (the grid's
view) and the report call exactly the same runs damaged, through one validator in `ablation.store`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from fake_results import make_fake_results

from ablation.grid import grid_status
from ablation.report import write_report
from ablation.report.load import load_results
from ablation.store import HISTORY_COLUMNS, HISTORY_RANGES, done_run_problem, read_run_state


def _edit_csv(name: str, change: Callable[[list[list[str]]], None]) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        rows = [line.split(",") for line in (run / name).read_text().splitlines()]
        change(rows)
        (run / name).write_text("\n".join(",".join(row) for row in rows) + "\n")

    return edit


def _set_cell(name: str, column: str, value: str, row: int = 1) -> Callable[[Path], None]:
    return _edit_csv(name, lambda rows: rows[row].__setitem__(rows[0].index(column), value))


def _edit_json(name: str, change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        data = json.loads((run / name).read_text())
        change(data)
        (run / name).write_text(json.dumps(data))

    return edit


def _set_key(name: str, key: str, value: object) -> Callable[[Path], None]:
    return _edit_json(name, lambda data: data.__setitem__(key, value))


def _write(name: str, text: str) -> Callable[[Path], None]:
    return lambda run: (run / name).write_text(text)


TEST, MASKED, HISTORY, METRICS, CONFIG = (
    "test_metrics.csv",
    "masked_metrics.csv",
    "history.csv",
    "metrics.json",
    "config.json",
)

# (case, damage, the reason the report and status must give)
CASES = [
    # per-image values
    (
        "dice above 1",
        _set_cell(TEST, "dice", "1.2"),
        "test_metrics.csv, line 2: dice is 1.2, expected in [0, 1]",
    ),
    ("negative iou", _set_cell(TEST, "iou", "-0.1", 3), "line 4: iou is -0.1, expected in [0, 1]"),
    ("NaN dice", _set_cell(TEST, "dice", "nan"), "dice is nan, expected in [0, 1]"),
    ("text in dice", _set_cell(TEST, "dice", "good"), "dice 'good' is not a number"),
    ("empty dice cell", _set_cell(TEST, "dice", ""), "dice '' is not a number"),
    ("infinite hd95", _set_cell(TEST, "hd95", "inf"), "hd95 is inf, expected a finite number >= 0"),
    ("negative hd95", _set_cell(TEST, "hd95", "-3"), "hd95 is -3, expected a finite number >= 0"),
    ("extra cell", _edit_csv(TEST, lambda rows: rows[2].append("0.5")), "line 3: 5 cells, the header has 4"),
    ("cut row", _edit_csv(TEST, lambda rows: rows[2].pop()), "line 3: 3 cells, the header has 4"),
    ("image twice", _set_cell(TEST, "image", "img000", 2), "line 3: image 'img000' is listed twice"),
    ("empty image name", _set_cell(TEST, "image", " "), "line 2: empty image name"),
    ("no dice column", _edit_csv(TEST, lambda rows: rows[0].__setitem__(1, "dsc")), "missing column 'dice'"),
    ("header only", _write(TEST, "image,dice,iou,hd95\n"), "test_metrics.csv has no rows"),
    ("binary junk", lambda run: (run / TEST).write_bytes(b"\xff\xfe\x00junk"), "cannot read"),
    ("masked dice above 1", _set_cell(MASKED, "dice", "1.5", 5), "masked_metrics.csv, line 6: dice is 1.5"),
    ("masked bad subset", _set_cell(MASKED, "eval_skips", "2011"), "eval_skips '2011' is not a skip subset"),
    # metrics.json types
    (
        "mean as text",
        _set_key(METRICS, "dice_mean", "0.8"),
        "'dice_mean' is '0.8', expected a number in [0, 1]",
    ),
    ("mean above 1", _set_key(METRICS, "iou_mean", 3.0), "'iou_mean' is 3.0, expected a number in [0, 1]"),
    ("fractional seed", _set_key(METRICS, "seed", 1.5), "'seed' is 1.5, expected an integer >= 0"),
    ("seed as bool", _set_key(METRICS, "seed", True), "'seed' is True, expected an integer >= 0"),
    ("fold as text", _set_key(METRICS, "fold", "1"), "'fold' is '1', expected null or an integer >= 0"),
    (
        "flag as text",
        _set_key(METRICS, "stopped_early", "no"),
        "'stopped_early' is 'no', expected true or false",
    ),
    ("skips not canonical", _set_key(METRICS, "skips", "L1+L2"), "'skips' is 'L1+L2', expected four 0/1"),
    (
        "negative parameters",
        _set_key(METRICS, "parameters", -5),
        "'parameters' is -5, expected an integer >= 0",
    ),
    ("NaN seconds", _write(METRICS, '{"seconds": NaN}'), "missing key 'status'"),
    ("status not done", _set_key(METRICS, "status", "failed"), "'status' is 'failed', expected \"done\""),
    (
        "missing key",
        _edit_json(METRICS, lambda data: data.pop("gflops")),
        "metrics.json: missing key 'gflops'",
    ),
    ("NaN hd95 mean", _set_key(METRICS, "hd95_mean", float("nan")), "'hd95_mean' is nan"),
    ("list", _write(METRICS, "[1, 2]"), "metrics.json: expected a JSON object, found list"),
    # config.json
    (
        "unknown key",
        _edit_json(CONFIG, lambda c: c["model"].update(depth=5)),
        "unknown config key 'model.depth'",
    ),
    ("unknown connector", _edit_json(CONFIG, lambda c: c["model"].update(connector="resnet")), "resnet"),
    ("seed as text", _set_key(CONFIG, "seed", "abc"), "config key 'seed': expected an integer, got 'abc'"),
    ("model not a table", _set_key(CONFIG, "model", 5), "model: expected a table of keys, got int"),
    ("env a list", _set_key(CONFIG, "env", [1]), "'env' must be a JSON object, got list"),
    ("run_id a number", _set_key(CONFIG, "run_id", 123), "'run_id' must be a string, got 123"),
    ("cut JSON", _write(CONFIG, '{"dataset": "synthetic-nu'), "config.json: Unterminated string"),
    ("bad lr", _edit_json(CONFIG, lambda c: c["train"].update(lr=-1)), "'train.lr' must be > 0.0"),
    # history.csv
    ("NaN loss", _set_cell(HISTORY, "val_loss", "nan", 2), "history.csv, line 3: val_loss is nan"),
    (
        "val dice above 1",
        _set_cell(HISTORY, "val_dice", "1.5"),
        "line 2: val_dice is 1.5, expected in [0, 1]",
    ),
    ("epoch repeated", _set_cell(HISTORY, "epoch", "1", 2), "line 3: epoch 1 does not follow epoch 1"),
    ("lr as text", _set_cell(HISTORY, "lr", "fast"), "line 2: lr 'fast' is not a number"),
    ("history cut", _edit_csv(HISTORY, lambda rows: rows[3].pop()), "history.csv, line 4: 5 cells"),
    (
        "no epoch column",
        _edit_csv(HISTORY, lambda rows: rows[0].__setitem__(0, "step")),
        "missing column 'epoch'",
    ),
]


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """One results folder with a healthy run kept aside and one run damaged per case."""
    root = tmp_path_factory.mktemp("damaged") / "results"
    runs = make_fake_results(
        root, subsets="all", seeds=(0, 1, 2), folds=None, n_images=4, predictions=0, test_time_masks=True
    )
    masked = [run for run in runs if (run / MASKED).exists()]
    plain = [run for run in runs if run not in masked]
    chosen: dict[str, Path] = {}
    for case, damage, _ in CASES:
        run = masked.pop() if case.startswith("masked") else plain.pop()
        damage(run)
        chosen[case] = run
    return root, chosen


@pytest.mark.parametrize(("case", "reason"), [(c, r) for c, _, r in CASES], ids=[c for c, _, _ in CASES])
def test_store_names_the_damage(damaged: tuple[Path, dict[str, Path]], case: str, reason: str) -> None:
    _, chosen = damaged
    problem = done_run_problem(chosen[case])
    assert problem is not None and reason in problem, problem
    assert read_run_state(chosen[case])[:2] == ("damaged", problem)


def test_report_and_status_agree_on_the_damaged_runs(damaged: tuple[Path, dict[str, Path]]) -> None:
    root, chosen = damaged
    results = load_results(root)
    reported = dict(zip(results.failed["path"], results.failed["error"]))
    assert set(results.failed["status"]) == {"damaged"}
    assert set(reported) == {str(run) for run in chosen.values()}
    statuses = {state.name: state for state in grid_status(root)}
    assert {name for name, s in statuses.items() if s.status == "damaged"} == {
        run.name for run in chosen.values()
    }
    for case, run in chosen.items():  # status adds what `ablation run` does about it
        assert statuses[run.name].detail == f"{reported[str(run)]}; `ablation run` trains it again", case
    # The healthy runs are all read, and nothing damaged leaks into a score.
    assert len(results.runs) == 16 * 3 - len(chosen)
    assert results.images["dice"].between(0, 1).all() and results.images["iou"].between(0, 1).all()
    assert not results.images[["dice", "iou", "hd95"]].isna().any().any()
    assert not results.history[["train_loss", "val_loss", "val_dice"]].isna().any().any()


def test_damaged_runs_are_listed_under_gaps_with_the_reason(damaged: tuple[Path, dict[str, Path]]) -> None:
    root, chosen = damaged
    out = write_report(root, root.parent / "report", n_boot=100)
    readme = (out / "README.md").read_text()
    gaps = readme[readme.index("## Gaps") :]
    for case, damage_reason in [(c, r) for c, _, r in CASES]:
        run = chosen[case]
        line = next(line for line in gaps.splitlines() if f"`{run.name}`" in line)
        assert line.startswith("- damaged: ") and damage_reason in line, (case, line)
    listed = set(pd.read_csv(out / "tables" / "gaps.csv").query("status == 'damaged'")["run_name"])
    # gaps.csv lists every damaged run by name, also those whose config.json cannot be read.
    unreadable = [run for run in chosen.values() if "config.json" in done_run_problem(run)]
    assert len(unreadable) == 8 and listed == {run.name for run in chosen.values()}


def test_a_started_run_with_a_damaged_config_is_damaged_for_both(tmp_path: Path) -> None:
    runs = make_fake_results(
        tmp_path,
        subsets=["0000", "1111", "1000"],
        folds=None,
        n_images=3,
        predictions=0,
        running=[{"skips": "1000"}],
    )
    started = next(run for run in runs if "_1000_" in run.name)
    _edit_json(CONFIG, lambda c: c["train"].update(batch_size=0))(started)
    reason = "config key 'train.batch_size' must be >= 1, got 0"
    assert read_run_state(started)[0] == "damaged" and reason in read_run_state(started)[1]
    results = load_results(tmp_path)
    assert results.failed.set_index("run_name").loc[started.name, "error"].endswith(reason)
    assert {s.name: s.status for s in grid_status(tmp_path)}[started.name] == "damaged"


def test_image_names_are_kept_as_written(tmp_path: Path) -> None:
    # Names that look like numbers stay text, so "001" pairs with "001" (not 1) across runs and masks.
    runs = make_fake_results(tmp_path, subsets=["0000", "1111"], folds=None, n_images=3, predictions=0)
    for run in runs:
        text = (run / TEST).read_text().replace("img000", "001").replace("img001", "1.0")
        (run / TEST).write_text(text)
    results = load_results(tmp_path)
    assert set(results.images["image"]) == {"001", "1.0", "img002"}
    assert results.images.groupby("image")["skips"].nunique().eq(2).all()


def test_store_stays_free_of_pandas_numpy_and_torch() -> None:
    code = (
        "import sys, ablation.store; sys.exit(sorted({'pandas', 'numpy', 'torch'} & set(sys.modules)) or 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_history_ranges_cover_the_written_columns() -> None:
    assert tuple(HISTORY_RANGES) == HISTORY_COLUMNS
