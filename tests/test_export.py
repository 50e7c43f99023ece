"""``ablation export --slim``: what travels, what does not, and that the unpacked folder reports the same."""

from __future__ import annotations

import ast
import json
import tarfile
from pathlib import Path

import pytest
from fake_results import PlantedEffects, make_fake_results

from ablation.cli import main
from ablation.export import export_slim
from ablation.report import load_results, write_report
from ablation.report.figures import default_variants
from ablation.report.findings import check_findings, findings_markdown
from ablation.report.tables import dataset_tables

ALLOWED = {
    "config.json",
    "status.json",
    "history.csv",
    "test_metrics.csv",
    "masked_metrics.csv",
    "metrics.json",
    "predictions.npz",
}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two datasets, U-Net subsets and UCTransNet, two seeds x two folds, one failed and one running run,
    predictions in every done run, and the files an export must leave behind."""
    root = tmp_path_factory.mktemp("export") / "results"
    runs = make_fake_results(
        root,
        datasets=("glas", "monuseg"),
        connectors=("unet", "uctransnet"),
        subsets=["0000", "1000", "0010", "1111"],
        seeds=(0, 1),
        folds=(0, 1),
        n_images=6,
        predictions=2,
        history_epochs=3,
        test_time_masks=True,
        effects=PlantedEffects(skip=(-0.04, -0.01, 0.03, -0.01)),  # L3 alone best: a fourth figure variant
        failed=[{"dataset": "glas", "skips": "1000", "seed": 1, "fold": 1}],
        running=[{"dataset": "monuseg", "skips": "0010", "seed": 0, "fold": 1}],
    )
    # As `ablation run` records its grid: every run asked for, whatever became of it.
    names = [run.name for run in runs]
    (root / "grid.json").write_text(json.dumps({"runs": names, "specs": ["test"]}))
    for junk in ("checkpoint_last.pt", "checkpoint_best.pt", "run.lock", ".metrics.json.x1y2.tmp"):
        (runs[0] / junk).write_bytes(b"not for export")
    (root / "report").mkdir()
    (root / "report" / "README.md").write_text("an old report\n")
    return root


@pytest.fixture(scope="module")
def archive(results: Path) -> Path:
    out = results.parent / "slim" / "results.tar.gz"
    assert main(["export", str(results), "--slim", str(out)]) == 0
    return out


def _members(path: Path) -> list[str]:
    with tarfile.open(path) as archive:
        return archive.getnames()


def test_archive_holds_done_runs_failed_status_and_no_checkpoints(results: Path, archive: Path) -> None:
    names = _members(archive)
    assert names == sorted(names) and "grid.json" in names
    assert all(Path(name).name in ALLOWED for name in names if name != "grid.json")
    assert not any(name.endswith((".pt", ".lock", ".tmp")) or name.startswith("report/") for name in names)
    by_run: dict[str, set[str]] = {}
    for name in names:
        if "/" in name:
            run, file = name.split("/")
            by_run.setdefault(run, set()).add(file)
    failed = [run for run in by_run if run.startswith("glas_unet_1000_s1_r0f1_")]
    assert len(failed) == 1 and by_run[failed[0]] == {"config.json", "status.json"}
    assert not any(run.startswith("monuseg_unet_0010_s0_r0f1_") for run in by_run)  # running: left out
    done = [run for run in by_run if run not in failed]
    assert len(done) == 2 * 5 * 4 - 2  # datasets x variants x replicates - failed - running
    for run in done:
        assert {"config.json", "status.json", "history.csv", "test_metrics.csv", "metrics.json"} <= by_run[
            run
        ]
    assert all("masked_metrics.csv" in by_run[run] for run in done if "_1111_" in run)


def test_predictions_only_for_the_qualitative_figure(results: Path, archive: Path) -> None:
    """Per dataset: the figure's variants, from the first seed/split that has predictions for all of them."""
    loaded = load_results(results)
    expected = set()
    for dataset in loaded.datasets:
        variants = default_variants(loaded, dataset)
        runs = loaded.runs[loaded.runs["dataset"] == dataset]
        first = min((int(s), str(p)) for s, p in zip(runs["seed"], runs["split"], strict=True))
        chosen = runs[(runs["seed"] == first[0]) & (runs["split"] == first[1])]
        for connector, skips in variants:
            match = chosen[(chosen["connector"] == connector) & (chosen["skips"] == skips)]
            expected.add(f"{match.iloc[0]['run_name']}/predictions.npz")
    exported = {name for name in _members(archive) if name.endswith("predictions.npz")}
    assert exported == expected and len(exported) == 2 * 4  # none, all, best subset (L3 only), UCTransNet


def test_unpacked_archive_reports_like_the_original(results: Path, archive: Path, tmp_path: Path) -> None:
    unpacked = tmp_path / "unpacked"
    with tarfile.open(archive) as packed:
        packed.extractall(unpacked, filter="data")
    original, copy = load_results(results), load_results(unpacked)
    for dataset in ("glas", "monuseg"):
        for ours, theirs in zip(
            dataset_tables(original, dataset), dataset_tables(copy, dataset), strict=True
        ):
            assert (ours.name, ours.csv()) == (theirs.name, theirs.csv())
    assert findings_markdown(check_findings(original, n_boot=100)) == findings_markdown(
        check_findings(copy, n_boot=100)
    )
    report = write_report(unpacked, tmp_path / "report", n_boot=100)
    assert (report / "figures" / "glas_qualitative.png").exists()
    assert (report / "figures" / "monuseg_qualitative.png").exists()
    readme = (report / "README.md").read_text()
    assert "failed: `glas_unet_1000_s1_r0f1_" in readme  # the failure and its reason travel
    assert "missing: monuseg unet L3 seed 0 r0f1" in readme  # the running run is a gap, not forgotten


def test_export_is_deterministic_and_summarised(results: Path, archive: Path, tmp_path: Path) -> None:
    summary = export_slim(results, tmp_path / "again.tgz")
    assert (tmp_path / "again.tgz").read_bytes() == archive.read_bytes()
    assert (summary.done, summary.failed, summary.predictions) == (38, 1, 8)
    assert summary.left_out == {"running": 1}
    assert summary.size == archive.stat().st_size and summary.files == len(_members(archive))
    line = summary.format()
    assert line.startswith("exported 38 done runs (8 with predictions) and the status of 1 failed run to ")
    assert "kB" in line and "left out: 1 running" in line


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("{results}/slim.tar.gz", "is inside the results folder"),
        ("{results}/{run}/metrics.json", "must end in .tar.gz or .tgz"),
        ("{tmp}/slim.zip", "must end in .tar.gz or .tgz"),
        ("{tmp}/folder.tar.gz", "is a folder"),
        ("{tmp}/afile/slim.tar.gz", "is a file, not a folder"),
    ],
)
def test_bad_output_is_one_error_line(results, tmp_path, capsys, out, message) -> None:
    (tmp_path / "folder.tar.gz").mkdir()
    (tmp_path / "afile").write_text("x")
    run = next(p.name for p in results.iterdir() if p.name.startswith("glas_unet_1111"))
    before = sorted(p.name for p in (results / run).iterdir())
    path = out.format(results=results, run=run, tmp=tmp_path)
    assert main(["export", str(results), "--slim", path]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert sorted(p.name for p in (results / run).iterdir()) == before


def test_nothing_to_export_is_an_error(tmp_path, capsys) -> None:
    assert main(["export", str(tmp_path / "absent"), "--slim", str(tmp_path / "a.tar.gz")]) == 2
    assert "does not exist" in capsys.readouterr().err
    make_fake_results(tmp_path / "busy", subsets=["1111"], folds=(0,), running=[{"skips": "1111"}])
    assert main(["export", str(tmp_path / "busy"), "--slim", str(tmp_path / "a.tar.gz")]) == 2
    assert "no done or failed run" in capsys.readouterr().err
    assert not (tmp_path / "a.tar.gz").exists()


def test_export_is_layered_with_store() -> None:
    """ablation.export imports only the torch-free shared modules, nothing from report, train or grid."""
    source = Path(__file__).resolve().parents[1] / "ablation" / "export.py"
    imported = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    # the store's modules (layout, readers, writers, state) count as the store
    ours = {name.rsplit(".", 1)[0] if name.startswith("ablation.store.") else name for name in imported}
    ours = {name for name in ours if name.startswith("ablation")}
    assert ours <= {"ablation.io", "ablation.config", "ablation.store", "ablation.errors"}
    assert not imported & {"torch", "pandas", "numpy"}
