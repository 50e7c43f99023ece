"""Each skip's contribution to Dice: exact Shapley values of L1..L4 from the 16-subset grid.

The four skips are the players and v(S) is the mean Dice of the U-Net built with subset S, so the values split
Dice(all) - Dice(none) fairly between L1..L4 (efficiency). The Shapley interaction index of a pair (Grabisch
1997) is positive when two skips help more together than apart; the main effect of a skip is the mean Dice of
the 8 subsets with it minus the mean Dice of the 8 without it (the 2^4 factorial main effect: the unweighted
mean marginal contribution, i.e. the Banzhaf value). Computed per seed x fold replicate, then averaged with a
t-interval; the replicates share one test set, so the intervals cover training variation, not test-image
sampling. This answers the question the UCTransNet paper (Wang et al., AAAI 2022, Fig. 3) asks with single
skips and leave-one-out only.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from math import factorial

import numpy as np
import pandas as pd
from scipy import stats

from ablation.errors import AblationError
from ablation.skips import ALL_SUBSETS, NUM_SKIPS

LEVELS = tuple(f"L{i + 1}" for i in range(NUM_SKIPS))
PAIRS = tuple(itertools.combinations(range(NUM_SKIPS), 2))
NONE, ALL = "0" * NUM_SKIPS, "1" * NUM_SKIPS


def _with(subset: str, *levels: int) -> str:
    chars = list(subset)
    for level in levels:
        chars[level] = "1"
    return "".join(chars)


def _without_levels(excluded: tuple[int, ...]) -> list[str]:
    return [s for s in ALL_SUBSETS if all(s[i] == "0" for i in excluded)]


def _check_game(values: Mapping[str, float]) -> None:
    absent = [s for s in ALL_SUBSETS if s not in values or not np.isfinite(values[s])]
    if absent:
        raise AblationError(f"Shapley values need all 16 subsets; missing {', '.join(absent)}")


def shapley_values(values: Mapping[str, float]) -> dict[str, float]:
    """Exact Shapley value of each skip L1..L4 for the game ``values`` (canonical subset -> score)."""
    _check_game(values)
    n = NUM_SKIPS
    out = {}
    for i, level in enumerate(LEVELS):
        total = 0.0
        for subset in _without_levels((i,)):
            size = subset.count("1")
            weight = factorial(size) * factorial(n - size - 1) / factorial(n)
            total += weight * (values[_with(subset, i)] - values[subset])
        out[level] = total
    gap = values[ALL] - values[NONE]
    assert abs(sum(out.values()) - gap) <= 1e-9 * max(1.0, abs(gap)), (
        "Shapley values must sum to v(all) - v(none)"
    )
    return out


def interaction_indices(values: Mapping[str, float]) -> dict[str, float]:
    """Shapley interaction index of each pair of skips, keyed ``"L1×L2"``."""
    _check_game(values)
    n = NUM_SKIPS
    out = {}
    for i, j in PAIRS:
        total = 0.0
        for subset in _without_levels((i, j)):
            size = subset.count("1")
            weight = factorial(size) * factorial(n - size - 2) / factorial(n - 1)
            both, only_i, only_j = _with(subset, i, j), _with(subset, i), _with(subset, j)
            total += weight * (values[both] - values[only_i] - values[only_j] + values[subset])
        out[f"{LEVELS[i]}×{LEVELS[j]}"] = total
    return out


def main_effects(values: Mapping[str, float]) -> dict[str, float]:
    """Main effect of each skip: mean v(S) over the 8 subsets with it minus over the 8 without (Banzhaf)."""
    _check_game(values)
    out = {}
    for i, level in enumerate(LEVELS):
        with_it = [values[s] for s in ALL_SUBSETS if s[i] == "1"]
        without = [values[s] for s in ALL_SUBSETS if s[i] == "0"]
        out[level] = float(np.mean(with_it) - np.mean(without))
    return out


@dataclasses.dataclass
class ShapleyResult:
    """Shapley analysis of one dataset / connector / masking, in percentage points.

    Attributes:
        skips: one row per level: shapley, shapley_ci_low/high, main_effect, main_ci_low/high, alone_gain
            (Dice(Li alone) - Dice(none)), drop_loss (Dice(all) - Dice(without Li)).
        interactions: one row per pair: interaction, ci_low, ci_high.
        n_replicates: seed x fold replicates with all 16 subsets (the CIs are t-intervals over them; they
            share the test set, so the CIs cover training variation, not test-image sampling).
        total: mean Dice(all) - Dice(none), which the Shapley values sum to.
    """

    skips: pd.DataFrame
    interactions: pd.DataFrame
    n_replicates: int
    total: float


def _t_interval(samples: np.ndarray, confidence: float) -> tuple[float, float, float]:
    mean = float(np.mean(samples))
    if samples.size < 2:
        return mean, float("nan"), float("nan")
    half = (
        stats.t.ppf(0.5 + confidence / 2.0, samples.size - 1)
        * np.std(samples, ddof=1)
        / np.sqrt(samples.size)
    )
    return mean, mean - float(half), mean + float(half)


def shapley_analysis(replicates: pd.DataFrame, *, confidence: float = 0.95) -> ShapleyResult:
    """Shapley values, interactions and main effects with CIs over replicates.

    Args:
        replicates: rows = replicates (seed x split), columns = canonical subsets, values = per-run mean Dice
            (fractions). Replicates lacking any of the 16 subsets are dropped.

    Raises:
        AblationError: if no replicate has all 16 subsets.
    """
    complete = replicates.reindex(columns=list(ALL_SUBSETS)).dropna()
    if complete.empty:
        absent = [s for s in ALL_SUBSETS if s not in replicates.columns]
        detail = f"missing subsets {', '.join(absent)}" if absent else "every replicate misses some subset"
        raise AblationError(f"Shapley values need one seed/fold replicate with all 16 subsets: {detail}")
    per_rep = [(row * 100.0).to_dict() for _, row in complete.iterrows()]
    shap = pd.DataFrame([shapley_values(v) for v in per_rep])
    main = pd.DataFrame([main_effects(v) for v in per_rep])
    inter = pd.DataFrame([interaction_indices(v) for v in per_rep])
    mean_game = {s: float(np.mean([v[s] for v in per_rep])) for s in ALL_SUBSETS}
    rows = []
    for i, level in enumerate(LEVELS):
        value, low, high = _t_interval(shap[level].to_numpy(), confidence)
        main_value, main_low, main_high = _t_interval(main[level].to_numpy(), confidence)
        alone = "".join("1" if k == i else "0" for k in range(NUM_SKIPS))
        without = "".join("0" if k == i else "1" for k in range(NUM_SKIPS))
        rows.append(
            {
                "skip": level,
                "shapley": value,
                "shapley_ci_low": low,
                "shapley_ci_high": high,
                "main_effect": main_value,
                "main_ci_low": main_low,
                "main_ci_high": main_high,
                "alone_gain": mean_game[alone] - mean_game[NONE],
                "drop_loss": mean_game[ALL] - mean_game[without],
            }
        )
    pair_rows = []
    for pair in inter.columns:
        value, low, high = _t_interval(inter[pair].to_numpy(), confidence)
        pair_rows.append({"pair": pair, "interaction": value, "ci_low": low, "ci_high": high})
    return ShapleyResult(
        skips=pd.DataFrame(rows),
        interactions=pd.DataFrame(pair_rows),
        n_replicates=len(complete),
        total=mean_game[ALL] - mean_game[NONE],
    )
