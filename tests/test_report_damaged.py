"""Damaged run folders and the expected grid: the report lists what it cannot read, never dies of it, and
takes the expected runs from grid.json when `ablation run` wrote one."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from fake_results import make_fake_results

from ablation.cli import main
from ablation.errors import AblationError
from ablation.grid import grid_status
from ablation.report import write_report
from ablation.report.load import load_results


def _runs(root: Path, **kwargs) -> dict[str, Path]:
    runs = make_fake_results(root, folds=None, n_images=3, **kwargs)
    return {json.loads((run / "config.json").read_text())["model"]["skips"]: run for run in runs}


def test_damaged_files_are_listed_not_fatal(tmp_path: Path):
    root = tmp_path / "results"
    runs = _runs(root, subsets=["0000", "1111", "1000", "0100"], predictions=2)
    (runs["0000"] / "metrics.json").write_text("[1, 2]")
    (runs["1111"] / "predictions.npz").write_bytes(bytes(range(256)) * 8)
    (runs["1000"] / "metrics.json").unlink()
    (runs["1000"] / "status.json").write_text('["failed"]')
    (runs["0100"] / "test_metrics.csv").write_text("")

    results = load_results(root)
    damaged = results.failed.set_index("skips")
    assert set(damaged["status"]) == {"damaged"}
    assert "metrics.json: expected a JSON object, found list" in damaged.loc["0000", "error"]
    assert "status.json: expected a JSON object, found list" in damaged.loc["1000", "error"]
    assert "test_metrics.csv is empty" in damaged.loc["0100", "error"]
    # `ablation status` calls the same runs damaged.
    states = {state.name: state.status for state in grid_status(root)}
    assert {states[runs[s].name] for s in ("0000", "1000", "0100")} == {"damaged"}
    assert states[runs["1111"].name] == "done"

    out = write_report(root, n_boot=100)
    readme = (out / "README.md").read_text()
    gaps = readme[readme.index("## Gaps") :]
    assert (
        f"- damaged: `{runs['0000'].name}`: cannot read {runs['0000'] / 'metrics.json'}: expected a JSON object"
        in gaps
    )
    assert f"- damaged: cannot read {runs['1111'] / 'predictions.npz'}" in gaps
    assert "skipped figure synthetic-nuclei_qualitative: no seed/split has readable predictions.npz" in gaps
    assert "damaged" in (out / "tables" / "gaps.csv").read_text()


def test_gaps_csv_lists_every_run_without_a_result(tmp_path: Path):
    # Two runs whose config.json cannot be read share no identity to tell them apart but their names.
    root = tmp_path / "results"
    runs = _runs(root, subsets=["0000", "1111", "1000", "0100"], running=[{"skips": "0100"}], predictions=0)
    for skips in ("0000", "1111"):
        (runs[skips] / "config.json").write_text("{not json")
    (root / "grid.json").write_text(json.dumps({"runs": [run.name for run in runs.values()]}))
    out = write_report(root, n_boot=100)
    gaps = pd.read_csv(out / "tables" / "gaps.csv", dtype={"skips": str}).set_index("run_name")
    listed = {
        runs[s].name: status for s, status in (("0000", "damaged"), ("1111", "damaged"), ("0100", "running"))
    }
    assert gaps["status"].to_dict() == listed
    assert "cannot read" in gaps.loc[runs["0000"].name, "error"]
    readme = (out / "README.md").read_text()
    assert all(f"`{name}`" in readme[readme.index("## Gaps") :] for name in listed)
    assert (
        "- missing:" not in readme
    )  # a damaged run is placed by its folder name, not listed again as absent


def test_a_damaged_prediction_file_falls_back_to_another_replicate(tmp_path: Path):
    root = tmp_path / "results"
    runs = make_fake_results(
        root, subsets=["0000", "1111"], seeds=(0, 1), folds=None, n_images=3, predictions=2
    )
    first = sorted(runs)[0]
    (first / "predictions.npz").write_bytes(b"not a zip file")
    out = write_report(root, n_boot=100)
    assert (out / "figures" / "synthetic-nuclei_qualitative.png").is_file()
    assert f"- damaged: cannot read {first / 'predictions.npz'}" in (out / "README.md").read_text()


def test_grid_json_sets_the_expected_runs(tmp_path: Path):
    root = tmp_path / "results"
    runs = _runs(root, subsets=["0000", "1111"], predictions=0)
    # Without grid.json the two paper subsets imply the paper's 10 settings: 8 appear absent.
    assert len(load_results(root).missing) == 8
    absent = runs["1111"].name.replace("_1111_", "_1010_")
    names = [run.name for run in runs.values()]
    (root / "grid.json").write_text(json.dumps({"runs": [*names, absent]}))
    results = load_results(root)
    assert results.missing.to_dict("records") == [
        {
            "dataset": "synthetic-nuclei",
            "connector": "unet",
            "skips": "1010",
            "seed": 0,
            "split": "official",
            "status": "absent",
        }
    ]
    (root / "grid.json").write_text(json.dumps({"runs": names}))
    assert load_results(root).missing.empty
    (root / "grid.json").write_text("{broken")  # damaged: an error naming it, never a silently other grid
    with pytest.raises(AblationError, match=r"grid.json is damaged .*repair or delete it"):
        load_results(root)


def test_report_out_that_is_a_file_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    root = tmp_path / "results"
    _runs(root, subsets=["0000", "1111"], predictions=0)
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    for out in (afile, afile / "below"):
        assert main(["report", str(root), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: report folder") and f"{afile} is a file" in err and err.count("\n") == 1
