"""Decision rules of the findings, on small hand-built per-image Dice tables whose right verdict is known."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fake_results import make_fake_results

from ablation.report import findings as findings_module
from ablation.report import write_report
from ablation.report.findings import (
    NOT_DISTINGUISHABLE,
    NOT_REPRODUCED,
    NOT_TESTABLE,
    OBSERVED,
    REPRODUCED,
    check_findings,
    findings_markdown,
)
from ablation.report.load import RETRAINED, Results
from ablation.report.stats import wilcoxon_pair
from ablation.report.write import ReportIncomplete
from ablation.skips import PAPER_SUBSETS


def _results(scores: dict[str, dict[str, list[float]]]) -> Results:
    """Results holding U-Net per-image Dice (fractions) per dataset and subset; NaN = image not scored."""
    rows = [
        {
            "dataset": dataset,
            "connector": "unet",
            "masking": RETRAINED,
            "skips": skips,
            "image": f"img{i:02d}",
            "dice": value,
        }
        for dataset, subsets in scores.items()
        for skips, values in subsets.items()
        for i, value in enumerate(values)
        if not np.isnan(value)
    ]
    empty = pd.DataFrame()
    return Results(
        root=Path("."),
        images=pd.DataFrame(rows),
        runs=empty,
        history=empty,
        failed=empty,
        incomplete=empty,
        missing=empty,
        expected=pd.DataFrame({"dataset": list(scores)}),
    )


def _check(scores: dict[str, dict[str, list[float]]]) -> dict[tuple[str, str], findings_module.Finding]:
    return {(f.dataset, f.finding): f for f in check_findings(_results(scores), n_boot=500)}


def _counterexample() -> dict[str, list[float]]:
    """The reviewer's case: U-Net-none 0.5 points better on 18 of 20 images, 10 points worse on 2."""
    all_skips = np.full(20, 0.80)
    none = all_skips + np.r_[np.full(18, 0.005), np.full(2, -0.10)]
    return {"0000": list(none), "1111": list(all_skips)}


def test_mean_below_but_mostly_better_is_not_significantly_worse():
    scores = _counterexample()
    none, all_skips = np.array(scores["0000"]), np.array(scores["1111"])
    assert (none - all_skips).mean() < 0 and wilcoxon_pair(none, all_skips)[1] < 0.01  # the trap: two-sided p
    found = _check({"monuseg": scores, "other": scores})
    monuseg = found[("monuseg", "1")]
    assert monuseg.verdict == NOT_REPRODUCED, monuseg.text
    assert monuseg.p_value > 0.5  # one-sided in the claimed direction: none below all
    assert (
        "U-Net-none minus U-Net-all: -0.6 Dice points (median +0.5, 20 images" in monuseg.text
    )  # mean -0.55, median +0.5
    other = found[("other", "1")]
    assert other.verdict == OBSERVED
    assert "not significantly worse than U-Net-all" in other.text


def test_glas_competitive_is_a_non_inferiority_margin():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.7, 0.9, 20)
    close = {"0000": list(base - 0.003 + rng.normal(0, 0.001, 20)), "1111": list(base)}
    noisy = {"0000": list(base - 0.01 + rng.normal(0, 0.05, 20)), "1111": list(base)}  # wide CI, p large
    few = {"0000": list(base[:5] - 0.003), "1111": list(base[:5])}
    for case, expected in ((close, REPRODUCED), (noisy, NOT_REPRODUCED), (few, NOT_TESTABLE)):
        finding = _check({"glas": case})[("glas", "1")]
        assert finding.verdict == expected, finding.text
        assert "above -1 Dice point" in finding.text
    assert "too few images: 5, need 6" in _check({"glas": few})[("glas", "1")].text
    noisy_none, noisy_all = np.array(noisy["0000"]), np.array(noisy["1111"])
    assert (
        wilcoxon_pair(noisy_none, noisy_all)[1] > 0.05
    )  # not significantly worse, yet not shown competitive


def _singles(means: tuple[float, ...], n_images: int = 12, seed: int = 0) -> dict[str, list[float]]:
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.6, 0.8, n_images)
    subsets = ("1000", "0100", "0010", "0001")
    return {s: list(base + m + rng.normal(0, 0.002, n_images)) for s, m in zip(subsets, means, strict=True)}


def test_monuseg_single_skips_must_differ_significantly_and_widely():
    narrow = _check({"monuseg": _singles((0.0, 0.01, 0.02, 0.03))})[("monuseg", "2")]
    assert narrow.verdict == NOT_REPRODUCED and narrow.p_value < 0.05
    assert re.search(
        r"not reproduced with its protocol not recorded \(differ significantly, but not widely: "
        r"span 3\.\d points vs the paper's reported 8\.9\)",
        narrow.text,
    )
    assert "span of at least 4.47 points" in narrow.text
    wide = _check({"monuseg": _singles((0.0, 0.02, 0.04, 0.06))})[("monuseg", "2")]
    assert wide.verdict == REPRODUCED and wide.effect == pytest.approx(6.0, abs=0.3)
    # The verdict follows the claim it judges; GlaS's L1 clause (absent here) does not sit in between.
    assert (
        wide.text.index("Friedman")
        < wide.text.index(": reproduced")
        < wide.text.index("Paper's claim: single skips")
    )


def test_glas_finding2_verdict_follows_its_own_claim():
    scores = _singles((-0.04, 0.0, 0.02, 0.0))
    scores["0000"] = list(np.array(scores["0100"]) + 0.001)
    text = _check({"glas": scores})[("glas", "2")].text
    assert text.startswith("Finding 2, GlaS: L1 alone minus U-Net-none: ")
    assert (
        text.index("one-sided Wilcoxon")
        < text.index(": reproduced")
        < text.index("Also observed, not judged: single")
    )


def test_monuseg_rank_is_among_the_paper_settings():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.6, 0.8, 10)
    scores = {s: list(base + 0.01 * (i + 1) + rng.normal(0, 0.001, 10)) for i, s in enumerate(PAPER_SUBSETS)}
    scores["0000"] = list(base)
    scores["1100"] = list(base - 0.05)  # a pair the paper left out, below U-Net-none
    finding = _check({"monuseg": scores})[("monuseg", "1")]
    assert finding.verdict == REPRODUCED, finding.text
    assert "ranks 10 of 10 of the paper's settings by mean Dice (10 of all 11 subsets run)" in finding.text


def test_paper_pick_close_to_the_best_is_not_distinguishable():
    rng = np.random.default_rng(2)
    base = rng.uniform(0.6, 0.8, 12)
    close = {
        "0010": list(base),
        "1111": list(base + 0.002 + rng.normal(0, 0.02, 12)),
        "0000": list(base - 0.05),
    }
    far = {
        "0010": list(base),
        "1111": list(base + 0.03 + rng.normal(0, 0.002, 12)),
        "0000": list(base - 0.05),
    }
    close_finding = _check({"glas": close})[("glas", "3")]
    assert close_finding.verdict == NOT_DISTINGUISHABLE, close_finding.text
    assert "chosen after looking at the data" in close_finding.text and close_finding.p_value >= 0.05
    assert _check({"glas": far})[("glas", "3")].verdict == NOT_REPRODUCED


def test_no_image_under_every_single_skip_is_not_testable_not_a_crash():
    nan = float("nan")
    scores = {
        s: [0.7 + 0.01 * k if k % 4 == i else nan for k in range(8)]
        for i, s in enumerate(("1000", "0100", "0010", "0001"))
    }
    found = _check({"monuseg": scores})
    assert found[("monuseg", "2")].verdict == NOT_TESTABLE
    assert "0 images scored under all four single skips, need 2" in found[("monuseg", "2")].text
    assert found[("monuseg", "3")].verdict == NOT_TESTABLE


def test_decision_rules_are_written():
    text = findings_markdown(list(_check({"glas": _counterexample()}).values()))
    assert "## Decision rules (alpha = 0.05)" in text
    assert sum(line.startswith("- Finding") for line in text.splitlines()) >= 5  # one per finding and dataset


def test_report_survives_a_failing_findings_step(tmp_path, monkeypatch):
    make_fake_results(
        tmp_path / "results",
        subsets=["0000", "1111"],
        folds=(0,),
        n_images=4,
        predictions=0,
        history_epochs=1,
    )

    def broken(*args, **kwargs):
        raise ValueError("no common images")

    monkeypatch.setattr(findings_module, "check_findings", broken)
    with pytest.raises(ReportIncomplete):  # everything else is written; the fault is not hidden
        write_report(tmp_path / "results", tmp_path / "report", n_boot=50)
    out = tmp_path / "report"
    readme = (out / "README.md").read_text()
    assert "findings could not be computed: ValueError: no common images" in readme
    assert "findings could not be computed" in (out / "findings.md").read_text()
    assert (out / "tables" / "synthetic-nuclei_subsets.md").exists()
