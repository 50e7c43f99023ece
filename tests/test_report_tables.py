"""Tables: every row present (missing ones shown as dashes), best in bold, reported numbers labelled."""

from __future__ import annotations

import pandas as pd
import pytest
from fake_results import PlantedEffects, make_fake_results

from ablation.report.load import load_results
from ablation.report.tables import (
    dataset_tables,
    module_table,
    reported_results,
    skip_study_table,
    subset_table,
)
from ablation.skips import ALL_SUBSETS, PAIR_SUBSETS, PAPER_SUBSETS


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("tables")
    make_fake_results(
        root,
        datasets=("glas", "synthetic-glands"),
        connectors=("unet", "cct", "cca", "uctransnet"),
        seeds=(0, 1),
        folds=None,
        n_images=4,
        predictions=0,
        history_epochs=2,
        effects=PlantedEffects(noise_sd=0.005),
        failed=[{"dataset": "glas", "skips": "0110"}],
    )
    return load_results(root)


def test_subset_table_has_every_subset_and_connector(results):
    table = subset_table(results, "glas")
    assert len(table.data) == 16 + 3
    unet = table.data[table.data["connector"] == "unet"]
    assert list(unet["skips"]) == list(ALL_SUBSETS)
    failed_row = unet.set_index("skips").loc["0110"]
    assert failed_row["runs"] == 0 and pd.isna(failed_row["dice_mean"])
    markdown = table.markdown()
    assert markdown.count("\n| ") == 1 + 19  # header + rows
    assert "| unet | L2+L3 | 0 | – |" in markdown
    # Planted: UCTransNet with all skips is best; it is the only bold Dice.
    best = table.data["dice_mean"].idxmax()
    assert table.data.loc[best, "connector"] == "uctransnet"
    assert markdown.count("**") == 2 + 2 * 2  # title + bold Dice and IoU


def test_skip_study_table_follows_the_paper_then_the_left_out_pairs(results):
    table = skip_study_table(results, "glas")
    assert list(table.data["skips"]) == list(PAPER_SUBSETS) + list(PAIR_SUBSETS)
    assert list(table.data["setting"][:4]) == ["U-Net-none", "U-Net-all", "L1 only", "L2 only"]
    assert set(table.data["in_paper"][10:]) == {"no (left out)"}
    headers = [c.header for c in table.columns]
    assert "Dice (reported)" in headers and "IoU (reported)" in headers
    # The only reported skip-study number: U-Net (all skips) on GlaS, Table 1.
    reported = table.data.set_index("skips")["dice_reported"]
    assert reported["1111"] == pytest.approx(85.45)
    assert reported.drop("1111").isna().all()
    assert table.data.set_index("skips").loc["1111", "dice_reported_std"] == pytest.approx(1.3)
    assert "| 85.45 ± 1.3 | 74.78 ± 1.7 |" in table.markdown()  # the reported std, at its own precision


def test_module_table_labels_and_reported_numbers(results):
    table = module_table(results, "glas")
    assert list(table.data["model"]) == ["Base", "Base+CCT", "Base+CCA", "Base+CCT+CCA"]
    assert table.data["runs"].tolist() == [2, 2, 2, 2]
    assert table.data.set_index("connector").loc["uctransnet", "dice_reported"] == pytest.approx(90.18)
    latex = table.latex()
    assert "Dice (reported)" in latex and "\\textbf{" in latex and "\\begin{tabular}" in latex
    assert latex.count("\\\\") >= 5
    # The paper's numbers never read as ours: each reported column's source says whose they are.
    assert "Reported UCTransNet (the paper's numbers, not measured here): UCTransNet Table 1" in " ".join(
        table.notes
    )


def test_other_datasets_get_no_reported_numbers(results):
    table = module_table(results, "synthetic-glands")
    assert table.data["dice_reported"].isna().all()
    assert any("No reported numbers" in note for note in table.notes)
    names = [t.name for t in dataset_tables(results, "synthetic-glands")]
    assert names == ["synthetic-glands_subsets", "synthetic-glands_skip_study", "synthetic-glands_modules"]


def test_csv_round_trips_the_numbers(results):
    import io

    table = subset_table(results, "synthetic-glands")
    frame = pd.read_csv(io.StringIO(table.csv()), dtype={"skips": str})
    assert len(frame) == 19
    assert frame["dice_mean"].to_numpy() == pytest.approx(table.data["dice_mean"].to_numpy())


def test_reported_results_ship_as_package_data():
    reported = reported_results()
    assert {"table", "dataset", "method", "skips", "dice", "iou", "verified"} <= set(reported.columns)
    assert (reported["verified"] == "secondary").all()
