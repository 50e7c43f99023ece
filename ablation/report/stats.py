"""Paired per-image statistics over skip subsets.

Inputs are per-image scores averaged over seeds and folds (rows = test images, columns = skip subsets; see
:func:`ablation.report.load.image_means`), so each comparison pairs the same test image under two subsets.
Tests: Wilcoxon signed-rank with Holm's step-down correction, percentile bootstrap confidence intervals, the
Friedman test with average ranks and the Nemenyi critical difference (Demšar, JMLR 2006), and how often each
subset comes out best when the test images are resampled.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from scipy import stats

from ablation.errors import AblationError
from ablation.skips import paper_label

POINTS = 100.0  # Dice fractions are reported as percentage points


def holm(p_values: np.ndarray | list[float]) -> np.ndarray:
    """Holm step-down adjusted p-values (same order as given; NaN stays NaN and does not count)."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = valid.size
    order = valid[np.argsort(p[valid], kind="stable")]
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, (m - rank) * p[index])
        adjusted[index] = min(1.0, running)
    return adjusted


def wilcoxon_pair(x: np.ndarray, y: np.ndarray, alternative: str = "two-sided") -> tuple[float, float]:
    """Wilcoxon signed-rank test of paired ``x`` vs ``y`` (shape (N,) each; scipy defaults otherwise).

    Args:
        alternative: ``"two-sided"``, ``"less"`` (x tends to be below y) or ``"greater"``; a directional claim
            needs the one-sided test in its own direction, since a two-sided p says nothing about which way.

    Returns:
        (statistic, p-value); identical inputs give (nan, 1.0), empty ones (nan, nan).
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan")
    if np.allclose(x, y, rtol=0.0, atol=1e-12):
        return float("nan"), 1.0
    result = stats.wilcoxon(x, y, alternative=alternative)
    return float(result.statistic), float(result.pvalue)


def bootstrap_ci(
    values: np.ndarray, *, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (shape (N,)), resampling with replacement."""
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, (n_boot, values.size))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def _check_scores(scores: pd.DataFrame) -> None:
    if scores.empty or scores.shape[1] == 0:
        raise AblationError("no per-image scores to compare (no done runs for this selection)")


def compare_to_reference(
    scores: pd.DataFrame, reference: str, *, alpha: float = 0.05, n_boot: int = 2000, seed: int = 0
) -> pd.DataFrame:
    """Each subset against ``reference`` (e.g. ``"1111"``), paired by image, Holm-corrected over the family.

    Args:
        scores: per-image scores, rows = images, columns = canonical skip subsets (fractions).

    Returns:
        One row per other subset: skips, setting, reference, n_images, mean_diff / median_diff / ci_low / ci_high
        (percentage points, subset minus reference; bootstrap CI of the mean difference), statistic, p_value,
        p_holm, significant (p_holm < alpha).
    """
    _check_scores(scores)
    if reference not in scores.columns:
        raise AblationError(
            f"reference subset {reference!r} has no results: have {', '.join(scores.columns)}"
        )
    rows = []
    for skips in scores.columns:
        if skips == reference:
            continue
        pair = scores[[skips, reference]].dropna()
        diff = (pair[skips] - pair[reference]).to_numpy() * POINTS
        statistic, p_value = wilcoxon_pair(pair[skips].to_numpy(), pair[reference].to_numpy())
        low, high = bootstrap_ci(diff, n_boot=n_boot, seed=seed)
        rows.append(
            {
                "skips": skips,
                "setting": paper_label(skips),
                "reference": reference,
                "n_images": len(pair),
                "mean_diff": float(diff.mean()) if diff.size else float("nan"),
                "median_diff": float(np.median(diff)) if diff.size else float("nan"),
                "ci_low": low,
                "ci_high": high,
                "statistic": statistic,
                "p_value": p_value,
            }
        )
    table = pd.DataFrame(rows)
    table["p_holm"] = holm(table["p_value"].to_numpy()) if len(table) else []
    table["significant"] = table["p_holm"] < alpha
    return table


def bootstrap_table(scores: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Mean score per subset with a 95% percentile bootstrap CI over images (percentage points)."""
    _check_scores(scores)
    rows = []
    for skips in scores.columns:
        values = scores[skips].dropna().to_numpy() * POINTS
        low, high = bootstrap_ci(values, n_boot=n_boot, seed=seed)
        rows.append(
            {
                "skips": skips,
                "setting": paper_label(skips),
                "n_images": values.size,
                "mean": values.mean(),
                "ci_low": low,
                "ci_high": high,
            }
        )
    return pd.DataFrame(rows)


@dataclasses.dataclass
class FriedmanResult:
    """Friedman test over subsets (blocks = test images) with Nemenyi post-hoc critical difference.

    Attributes:
        ranks: average rank per subset (1 = best, i.e. highest score), sorted best first.
        critical_difference: two subsets whose average ranks differ by more than this differ at ``alpha``.
        cliques: runs of subsets (best first) whose ranks all lie within one critical difference.
    """

    statistic: float
    p_value: float
    n_images: int
    n_subsets: int
    alpha: float
    ranks: pd.Series
    critical_difference: float
    cliques: list[list[str]]


def nemenyi_critical_difference(n_subsets: int, n_images: int, alpha: float = 0.05) -> float:
    """CD = q_alpha * sqrt(k (k + 1) / (6 N)), q_alpha from the studentized range with infinite df over sqrt 2."""
    q_alpha = stats.studentized_range.ppf(1.0 - alpha, n_subsets, np.inf) / np.sqrt(2.0)
    return float(q_alpha * np.sqrt(n_subsets * (n_subsets + 1) / (6.0 * n_images)))


def friedman_test(scores: pd.DataFrame, *, alpha: float = 0.05) -> FriedmanResult:
    """Friedman test over the subsets in ``scores`` using only images scored under every subset.

    Raises:
        AblationError: with fewer than 3 subsets or 2 complete images.
    """
    _check_scores(scores)
    complete = scores.dropna()
    if complete.shape[1] < 3 or len(complete) < 2:
        raise AblationError(
            f"Friedman test needs >= 3 subsets and >= 2 images scored under all of them; "
            f"have {complete.shape[1]} subsets, {len(complete)} images"
        )
    if (complete.nunique(axis=1) == 1).all():
        raise AblationError("Friedman test undefined: every image scores the same under all subsets")
    statistic, p_value = stats.friedmanchisquare(*(complete[c].to_numpy() for c in complete.columns))
    # Rank within each image, highest score = rank 1, ties share the average rank.
    ranks = pd.Series(
        stats.rankdata(-complete.to_numpy(), axis=1).mean(axis=0), index=complete.columns
    ).sort_values()
    cd = nemenyi_critical_difference(complete.shape[1], len(complete), alpha)
    return FriedmanResult(
        statistic=float(statistic),
        p_value=float(p_value),
        n_images=len(complete),
        n_subsets=complete.shape[1],
        alpha=alpha,
        ranks=ranks,
        critical_difference=cd,
        cliques=_cliques(ranks, cd),
    )


def _cliques(ranks: pd.Series, cd: float) -> list[list[str]]:
    """Maximal runs of consecutive subsets (in rank order) whose rank spread is below ``cd``."""
    names, values = list(ranks.index), ranks.to_numpy()
    found: list[tuple[int, int]] = []
    for start in range(len(values)):
        end = start
        while end + 1 < len(values) and values[end + 1] - values[start] < cd:
            end += 1
        if end > start and not any(s <= start and end <= e for s, e in found):
            found.append((start, end))
    return [names[s : e + 1] for s, e in found]


def best_subset_stability(scores: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0) -> pd.Series:
    """Fraction of image bootstrap resamples in which each subset has the highest mean (complete images only)."""
    _check_scores(scores)
    complete = scores.dropna().to_numpy()
    if complete.shape[0] == 0:
        raise AblationError("no image is scored under every subset; cannot resample the best subset")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, complete.shape[0], (n_boot, complete.shape[0]))
    means = complete[picks].mean(axis=1)  # (n_boot, k)
    winners = np.bincount(means.argmax(axis=1), minlength=complete.shape[1])
    return pd.Series(winners / n_boot, index=scores.columns, name="fraction_best").sort_values(
        ascending=False
    )
