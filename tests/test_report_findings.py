"""The paper's findings are judged correctly on result folders where we planted the answer."""

from __future__ import annotations

import pytest
from fake_results import PlantedEffects, copy_as_setting, make_fake_results

from ablation.report.findings import NOT_REPRODUCED, NOT_TESTABLE, OBSERVED, REPRODUCED, check_findings
from ablation.report.load import load_results

# MoNuSeg-like truth: every skip helps alone, L4 hurts next to the others, so "w/o L4" is best.
MONUSEG_LIKE = PlantedEffects(
    skip=(0.02, 0.07, 0.04, 0.01), interactions={(1, 4): -0.02, (2, 4): -0.02, (3, 4): -0.02}, noise_sd=0.004
)
# GlaS-like truth: L1 alone hurts, L3 alone is best, all skips ~ none.
GLAS_LIKE = PlantedEffects(
    skip=(-0.04, -0.01, 0.03, -0.01), interactions={(1, 3): 0.01, (1, 2): 0.02}, noise_sd=0.004
)


def _findings(root, effects, **kwargs):
    make_fake_results(
        root, folds=(0, 1), n_images=10, predictions=0, history_epochs=2, effects=effects, **kwargs
    )
    return {(f.dataset, f.finding): f for f in check_findings(load_results(root), n_boot=200)}


def test_planted_paper_results_are_reproduced(tmp_path):
    found = _findings(
        tmp_path,
        {"monuseg": MONUSEG_LIKE, "glas": GLAS_LIKE},
        datasets=("monuseg", "glas"),
        connectors=("unet", "cct", "cca", "uctransnet"),
    )
    for key in [
        ("monuseg", "1"),
        ("monuseg", "2"),
        ("monuseg", "3"),
        ("glas", "1"),
        ("glas", "2"),
        ("glas", "3"),
    ]:
        assert found[key].verdict == REPRODUCED, found[key].text
    first = found[("monuseg", "1")]
    assert first.text.startswith("Finding 1, MoNuSeg: U-Net-none minus U-Net-all: -")
    assert "one-sided Wilcoxon, none below all: p = " in first.text and first.p_value < 0.05
    assert first.effect == pytest.approx(-8.0, abs=1.0)
    assert found[("glas", "2")].effect == pytest.approx(-4.0, abs=1.0)
    assert "L3 only" in found[("glas", "3")].text
    assert found[("monuseg", "Table 3")].verdict == REPRODUCED  # planted connector offsets favour UCTransNet


def test_swapped_truth_is_not_reproduced(tmp_path):
    found = _findings(tmp_path, {"glas": MONUSEG_LIKE}, datasets=("glas",))
    assert [found[("glas", n)].verdict for n in "123"] == [NOT_REPRODUCED] * 3


def test_glas_kept_apart_is_judged_against_the_paper_per_label(tmp_path):
    # The same GlaS study twice: one learning rate with GlaS-like truth, the other with MoNuSeg-like truth.
    options = {"datasets": ("glas",), "subsets": "paper", "folds": (0, 1), "n_images": 10, "predictions": 0}
    make_fake_results(tmp_path / "results", effects=GLAS_LIKE, **options)
    make_fake_results(tmp_path / "other", effects=MONUSEG_LIKE, **options)
    copy_as_setting(tmp_path / "other", tmp_path / "results", {"train.lr": 1e-4})
    found = {
        (f.dataset, f.finding): f for f in check_findings(load_results(tmp_path / "results"), n_boot=200)
    }
    high, low = "glas@lr=0.001", "glas@lr=0.0001"
    assert [found[(high, n)].verdict for n in "123"] == [REPRODUCED] * 3
    assert [found[(low, n)].verdict for n in "123"] == [NOT_REPRODUCED] * 3
    first = found[(low, "1")].text
    assert first.startswith("Finding 1, GlaS (glas@lr=0.0001): U-Net-none minus U-Net-all: ")
    assert (
        "Verdict on the GlaS (glas@lr=0.0001) U-Net skip study (20 runs): not reproduced at reduced scale"
        in first
    )
    assert "Paper's claim: U-Net-none is competitive with U-Net-all" in first
    assert found[(high, "1")].protocol.label == "GlaS (glas@lr=0.001) U-Net skip study"


def test_other_datasets_get_the_general_form(tmp_path):
    found = _findings(tmp_path, None, datasets=("synthetic-nuclei",))
    assert {found[("synthetic-nuclei", n)].verdict for n in "123"} == {OBSERVED}
    assert "U-Net-none minus U-Net-all: " in found[("synthetic-nuclei", "1")].text
    assert "L1 alone minus U-Net-none: " in found[("synthetic-nuclei", "2")].text
    assert "the best of the paper's settings is U-Net-all" in found[("synthetic-nuclei", "3")].text
    assert found[("synthetic-nuclei", "1")].text.endswith(
        "Observed on the synthetic-nuclei U-Net skip study (32 runs); the paper makes no claim about this dataset."
    )


def test_missing_runs_make_findings_not_testable(tmp_path):
    found = _findings(
        tmp_path, GLAS_LIKE, datasets=("glas",), subsets=["1111", "1000", "0100"], missing=[{"skips": "0000"}]
    )
    assert found[("glas", "1")].verdict == NOT_TESTABLE
    assert "missing runs: U-Net-none" in found[("glas", "1")].text
    assert found[("glas", "3")].verdict == NOT_TESTABLE
