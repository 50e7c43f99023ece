"""write_report and ``ablation report``: every item written, gaps listed, bad input is one error line."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_results import make_fake_results

from ablation.cli import main
from ablation.report import write_report
from ablation.report.write import ReportIncomplete


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    make_fake_results(
        root,
        datasets=("glas", "synthetic-nuclei"),
        connectors=("unet", "uctransnet"),
        seeds=(0,),
        folds=(0, 1),
        n_images=6,
        predictions=2,
        history_epochs=3,
        test_time_masks=True,
        failed=[{"dataset": "glas", "skips": "0011", "fold": 0}],
        missing=[{"dataset": "synthetic-nuclei", "skips": "1100"}],
    )
    return root, write_report(root, n_boot=200)


def test_report_folder_has_tables_figures_stats_shapley_findings(report):
    root, out = report
    assert out == root / "report"
    for name in ("README.md", "findings.md", "stats/summary.md", "shapley/shapley.md", "tables/gaps.csv"):
        assert (out / name).is_file(), name
    for dataset in ("glas", "synthetic-nuclei"):
        for table in ("subsets", "skip_study", "modules", "test_time_masks"):
            for suffix in ("md", "tex", "csv"):
                assert (out / "tables" / f"{dataset}_{table}.{suffix}").is_file()
        for figure in (
            "unet_retrained_bars",
            "unet_retrained_per_image",
            "learning_curves",
            "qualitative",
            "unet_retrained_critical_difference",
            "unet_test-time_bars",
        ):
            for suffix in ("png", "pdf"):
                path = out / "figures" / f"{dataset}_{figure}.{suffix}"
                assert path.is_file() and path.stat().st_size > 1000, path
        for stat in ("vs_all", "vs_none", "bootstrap", "friedman_ranks", "best_stability"):
            assert (out / "stats" / f"{dataset}_unet_retrained_{stat}.csv").is_file()
    assert (out / "figures" / "heatmap.png").is_file()
    # Both replicates of synthetic-nuclei lack L1+L2, so its retrained Shapley values are skipped; glas keeps one.
    assert (out / "shapley" / "glas_unet_retrained_skips.csv").is_file()
    assert not (out / "shapley" / "synthetic-nuclei_unet_retrained_skips.csv").exists()
    assert (out / "shapley" / "synthetic-nuclei_unet_test-time_skips.csv").is_file()


def test_readme_lists_everything_and_the_gaps(report):
    _, out = report
    readme = (out / "README.md").read_text()
    for relative in ("tables/glas_skip_study.md", "figures/heatmap.png", "findings.md", "stats/summary.md"):
        assert f"]({relative})" in readme
    assert "- failed: `glas_unet_0011_s0_r0f0_" in readme and "non-finite loss" in readme
    assert "- missing: synthetic-nuclei unet L1+L2 seed 0 r0f0" in readme
    assert "skipped Shapley values synthetic-nuclei_unet_retrained" in readme
    assert "Finding 1, GlaS: U-Net-none minus U-Net-all: " in readme
    findings = (out / "findings.md").read_text()
    assert "Finding 3, synthetic-nuclei" in findings
    for text in (readme, findings):  # each finding's decision rule and alpha, one line each
        assert "Decision rules (alpha = 0.05)" in text
        assert "- Finding 1, GlaS (U-Net-none is competitive with U-Net-all): reproduced if" in text
    shapley_md = (out / "shapley" / "shapley.md").read_text()
    assert "**Main effect**: mean Dice of the 8 subsets with the skip minus" in shapley_md
    assert "Banzhaf value" in shapley_md


def test_cli_writes_report_to_chosen_folder(tmp_path, capsys):
    root = tmp_path / "results"
    make_fake_results(root, subsets=["0000", "1111", "0010"], folds=None, n_images=4, predictions=0)
    assert main(["report", str(root), "--out", str(tmp_path / "r"), "--n-boot", "100"]) == 0
    assert (tmp_path / "r" / "README.md").is_file()
    assert "report written to" in capsys.readouterr().out


def test_cli_bad_folder_is_one_error_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: results folder") and err.count("\n") == 1


def test_subset_bars_fall_back_to_image_intervals_with_one_replicate(tmp_path: Path) -> None:
    from fake_results import make_fake_results

    from ablation.report import load_results
    from ablation.report.figures import subset_bars

    make_fake_results(tmp_path / "one", subsets=["0000", "1111"], seeds=(0,), folds=None, n_images=6)
    title = subset_bars(load_results(tmp_path / "one"), "synthetic-nuclei").axes[0].get_title()
    assert "95% CI over 6 test images" in title
    make_fake_results(tmp_path / "two", subsets=["0000", "1111"], seeds=(0, 1), folds=None, n_images=6)
    title = subset_bars(load_results(tmp_path / "two"), "synthetic-nuclei").axes[0].get_title()
    assert "95% CI over 2 replicates" in title


def test_the_same_results_draw_the_same_figure_files(tmp_path: Path) -> None:
    from ablation.report import figures, load_results

    make_fake_results(
        tmp_path / "r", subsets=["0000", "1111", "1000"], folds=None, n_images=12, predictions=0
    )
    results = load_results(tmp_path / "r")
    first = figures.save_figure(figures.per_image(results, "synthetic-nuclei"), tmp_path / "first")
    second = figures.save_figure(figures.per_image(results, "synthetic-nuclei"), tmp_path / "second")
    for one, two in zip(
        first, second, strict=True
    ):  # PNG and PDF, byte for byte (the strip's jitter is seeded)
        assert one.read_bytes() == two.read_bytes(), one.name


def test_a_findings_bug_leaves_the_report_and_fails_loudly(tmp_path: Path, monkeypatch, capsys) -> None:
    make_fake_results(tmp_path / "r", subsets=["0000", "1111"], seeds=(0,), folds=None, n_images=4)

    def broken(*args, **kwargs):
        raise ZeroDivisionError("planted bug")

    monkeypatch.setattr("ablation.report.findings.check_findings", broken)
    with pytest.raises(
        ReportIncomplete, match="findings could not be computed: ZeroDivisionError: planted bug"
    ):
        write_report(tmp_path / "r", n_boot=100)
    out = tmp_path / "r" / "report"
    assert (out / "README.md").is_file() and list((out / "tables").glob("*.csv")), "the rest is written"
    findings = (out / "findings.md").read_text()
    assert "ZeroDivisionError: planted bug" in findings and "Traceback" in findings
    assert main(["report", str(tmp_path / "r"), "--n-boot", "100"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: report written to {out}, but findings could not be computed: ZeroDivisionError"
    )
    assert err.count("\n") == 1
