"""Statistics: equal to scipy on the same inputs, Holm and Nemenyi against hand-computed values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fake_results import PlantedEffects, make_fake_results
from scipy import stats as scipy_stats

from ablation.errors import AblationError
from ablation.report import stats
from ablation.report.load import image_means, load_results


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    make_fake_results(
        root,
        seeds=(0, 1),
        folds=(0,),
        n_images=12,
        predictions=0,
        history_epochs=2,
        effects=PlantedEffects(noise_sd=0.02),
    )
    return root


def _scores_from_csv_files(root) -> pd.DataFrame:
    """Per-image Dice averaged over seeds, read straight from the run folders (independent of load.py)."""
    frames = []
    for path in sorted(root.glob("*/test_metrics.csv")):
        skips = path.parent.name.split("_")[2]
        frames.append(pd.read_csv(path).assign(skips=skips))
    return pd.concat(frames).pivot_table(index="image", columns="skips", values="dice", aggfunc="mean")


def test_wilcoxon_equals_scipy(grid):
    scores = image_means(load_results(grid).images)
    manual = _scores_from_csv_files(grid)
    table = stats.compare_to_reference(scores, "1111", n_boot=200).set_index("skips")
    assert len(table) == 15
    for skips in ("0000", "1000", "0111"):
        expected = scipy_stats.wilcoxon(manual[skips].to_numpy(), manual["1111"].to_numpy())
        assert table.loc[skips, "p_value"] == pytest.approx(expected.pvalue)
        assert table.loc[skips, "statistic"] == pytest.approx(expected.statistic)
        diff = (manual[skips] - manual["1111"]).mean() * 100
        assert table.loc[skips, "mean_diff"] == pytest.approx(diff)
    assert (table["p_holm"] >= table["p_value"]).all()
    assert table.loc["0000", "mean_diff"] < 0  # planted: every skip helps


def test_friedman_equals_scipy_and_ranks_are_average_ranks(grid):
    scores = image_means(load_results(grid).images)
    result = stats.friedman_test(scores)
    expected = scipy_stats.friedmanchisquare(*(scores[c].to_numpy() for c in scores.columns))
    assert result.statistic == pytest.approx(expected.statistic)
    assert result.p_value == pytest.approx(expected.pvalue)
    manual_ranks = scores.rank(axis=1, ascending=False).mean()
    assert result.ranks.to_dict() == pytest.approx(manual_ranks.to_dict())
    assert result.ranks.index[-1] == "0000"  # planted worst
    assert result.ranks.sum() == pytest.approx(16 * 17 / 2)


def test_holm_matches_hand_computation():
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005, np.nan])
    assert adjusted[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert np.isnan(adjusted[4])
    assert stats.holm([0.5, 0.9])[1] == 1.0  # capped


def test_nemenyi_critical_difference_matches_demsar_table():
    # Demšar (2006), Table 5: q_0.05 = 3.164 for k = 10 classifiers; CD = q sqrt(k(k+1)/(6N)).
    assert stats.nemenyi_critical_difference(10, 30) == pytest.approx(3.164 * np.sqrt(110 / 180), rel=1e-3)
    assert stats.nemenyi_critical_difference(2, 12) == pytest.approx(1.960 * np.sqrt(6 / 72), rel=1e-3)


def test_bootstrap_ci_contains_mean_and_narrows_with_more_data():
    rng = np.random.default_rng(0)
    small, large = rng.normal(0.7, 0.1, 20), rng.normal(0.7, 0.1, 2000)
    low, high = stats.bootstrap_ci(small, n_boot=2000)
    assert low < small.mean() < high
    low_large, high_large = stats.bootstrap_ci(large, n_boot=500)
    assert high_large - low_large < high - low
    assert low_large < 0.7 < high_large


def test_best_subset_stability_finds_a_clear_winner():
    rng = np.random.default_rng(1)
    scores = pd.DataFrame(rng.normal(0.7, 0.05, (30, 3)), columns=["0000", "1000", "1111"])
    scores["1111"] += 0.2
    fractions = stats.best_subset_stability(scores, n_boot=300)
    assert fractions.sum() == pytest.approx(1.0)
    assert fractions.index[0] == "1111" and fractions.iloc[0] == 1.0


def test_identical_subsets_do_not_differ():
    scores = pd.DataFrame({"0000": [0.5, 0.6, 0.7], "1111": [0.5, 0.6, 0.7]})
    table = stats.compare_to_reference(scores, "1111", n_boot=100)
    assert table.loc[0, "p_value"] == 1.0 and not table.loc[0, "significant"]


def test_friedman_needs_enough_subsets_and_some_variation():
    with pytest.raises(AblationError, match=">= 3 subsets"):
        stats.friedman_test(pd.DataFrame({"0000": [0.1, 0.2], "1111": [0.3, 0.4]}))
    with pytest.raises(AblationError, match="same under all subsets"):
        stats.friedman_test(pd.DataFrame({"0000": [0.0, 0.0], "1000": [0.0, 0.0], "1111": [0.0, 0.0]}))
