"""The UCTransNet paper's three skip-connection findings (Wang et al., AAAI 2022, Fig. 3), checked on our runs.

1. U-Net-none is the worst on MoNuSeg but competitive with U-Net-all on GlaS.
2. Single skips differ widely (MoNuSeg: Dice 67.5-76.44%); on GlaS, L1 alone is worse than U-Net-none.
3. The best setting differs per dataset: without L4 on MoNuSeg, L3 alone on GlaS.
Plus Table 3: the full model (Base+CCT+CCA) is best among the module ablations.

Datasets named ``glas`` or ``monuseg`` get the paper's dataset-specific claim and a verdict (reproduced / not
reproduced / not testable); any other dataset gets the general form of each finding, verdict ``observed``.
Comparisons use U-Net runs retrained per subset, per-image Dice averaged over seeds and folds, paired by image
(two-sided Wilcoxon signed-rank); effect sizes are Dice differences in percentage points.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from scipy import stats

from ablation.report.load import RETRAINED, Results, image_means
from ablation.report.stats import POINTS, best_subset_stability, wilcoxon_pair
from ablation.skips import ALL_SUBSETS, PAPER_SUBSETS, SINGLE_SUBSETS, paper_label

REPRODUCED, NOT_REPRODUCED, NOT_TESTABLE, OBSERVED = (
    "reproduced",
    "not reproduced",
    "not testable",
    "observed",
)
PAPER_DATASETS = {"glas": "GlaS", "monuseg": "MoNuSeg"}
PAPER_BEST = {"MoNuSeg": "1110", "GlaS": "0010"}
PAPER_SINGLE_SPAN = {"MoNuSeg": (67.5, 76.44)}


@dataclasses.dataclass
class Finding:
    """One checked claim: ``text`` is the sentence for the report."""

    finding: str  # "1", "2", "3" or "Table 3"
    dataset: str
    verdict: str
    text: str
    effect: float | None = None  # percentage points
    p_value: float | None = None


def _p(p_value: float) -> str:
    return "n/a" if p_value is None or np.isnan(p_value) else f"{p_value:.2g}"


def _name(skips: str) -> str:
    label = paper_label(skips)
    return f"U-Net-{label}" if label in ("none", "all") else label


class _Scores:
    """Per-image Dice (points) of one dataset's U-Net subsets, paired by image."""

    def __init__(self, results: Results, dataset: str) -> None:
        images = results.images
        chosen = images[
            (images["dataset"] == dataset)
            & (images["connector"] == "unet")
            & (images["masking"] == RETRAINED)
        ]
        self.table = image_means(chosen) * POINTS if not chosen.empty else pd.DataFrame()
        self.absent = [s for s in ALL_SUBSETS if s not in self.table.columns]

    def has(self, *subsets: str) -> bool:
        return all(s in self.table.columns for s in subsets)

    def missing(self, subsets: tuple[str, ...] | list[str]) -> str:
        return ", ".join(_name(s) for s in subsets if s not in self.table.columns)

    def mean(self, skips: str) -> float:
        return float(self.table[skips].mean())

    def compare(self, a: str, b: str) -> tuple[float, float]:
        """Mean paired difference a - b (points) and the Wilcoxon p-value."""
        pair = self.table[[a, b]].dropna()
        _, p_value = wilcoxon_pair(pair[a].to_numpy(), pair[b].to_numpy())
        return float((pair[a] - pair[b]).mean()), p_value


def check_findings(results: Results, *, alpha: float = 0.05, n_boot: int = 1000) -> list[Finding]:
    """Check findings 1-3 (and Table 3's) on every dataset of ``results``."""
    found = []
    for dataset in results.datasets:
        scores = _Scores(results, dataset)
        paper = PAPER_DATASETS.get(dataset.lower())
        found.append(_finding1(scores, dataset, paper, alpha))
        found.append(_finding2(scores, dataset, paper, alpha))
        found.append(_finding3(scores, dataset, paper, alpha, n_boot))
        module = _module_finding(results, dataset, alpha)
        if module is not None:
            found.append(module)
    return found


def _finding1(scores: _Scores, dataset: str, paper: str | None, alpha: float) -> Finding:
    label = paper or dataset
    if not scores.has("0000", "1111"):
        text = f"Finding 1, {label}: not testable (missing runs: {scores.missing(['0000', '1111'])})."
        return Finding("1", dataset, NOT_TESTABLE, text)
    diff, p_value = scores.compare("0000", "1111")
    means = scores.table.mean().sort_values(ascending=False)
    rank = int(list(means.index).index("0000")) + 1
    worst = rank == len(means)
    worse = diff < 0 and p_value < alpha
    base = (
        f"Finding 1, {label}: U-Net-none vs U-Net-all, Dice difference {diff:+.1f} points (p = {_p(p_value)}); "
        f"U-Net-none ranks {rank} of {len(means)} subsets"
    )
    if paper == "MoNuSeg":
        verdict = REPRODUCED if worst and worse else NOT_REPRODUCED
        return Finding(
            "1", dataset, verdict, f"{base}: {verdict} (paper: U-Net-none is the worst).", diff, p_value
        )
    if paper == "GlaS":
        verdict = NOT_REPRODUCED if worse else REPRODUCED
        claim = "paper: U-Net-none is competitive with U-Net-all, i.e. not significantly worse"
        return Finding("1", dataset, verdict, f"{base}: {verdict} ({claim}).", diff, p_value)
    state = "significantly worse than" if worse else "not significantly worse than"
    text = f"{base}; U-Net-none is {'the worst and ' if worst else ''}{state} U-Net-all (alpha = {alpha})."
    return Finding("1", dataset, OBSERVED, text, diff, p_value)


def _finding2(scores: _Scores, dataset: str, paper: str | None, alpha: float) -> Finding:
    label = paper or dataset
    parts, verdicts = [], []
    effect = p_main = None
    if scores.has(*SINGLE_SUBSETS):
        singles = scores.table[list(SINGLE_SUBSETS)].dropna()
        means = singles.mean()
        _, p_spread = stats.friedmanchisquare(*(singles[c].to_numpy() for c in singles.columns))
        low, high = float(means.min()), float(means.max())
        text = (
            f"single skips span Dice [{low:.1f}, {high:.1f}] ({high - low:.1f} points, from "
            f"{_name(means.idxmin())} to {_name(means.idxmax())}; Friedman over L1..L4 alone p = {_p(p_spread)})"
        )
        if paper in PAPER_SINGLE_SPAN:
            reported = PAPER_SINGLE_SPAN[paper]
            text += f", reported span [{reported[0]}, {reported[1]}]"
            verdicts.append(REPRODUCED if p_spread < alpha else NOT_REPRODUCED)
            effect, p_main = high - low, float(p_spread)
        parts.append(text)
    elif paper != "GlaS":
        parts.append(f"single-skip spread not testable (missing runs: {scores.missing(SINGLE_SUBSETS)})")
        verdicts.append(NOT_TESTABLE)
    if scores.has("1000", "0000"):
        diff, p_value = scores.compare("1000", "0000")
        worse = diff < 0 and p_value < alpha
        parts.append(
            f"L1 alone vs U-Net-none, Dice difference {diff:+.1f} points (p = {_p(p_value)}), "
            f"{'significantly worse' if worse else 'not significantly worse'}"
        )
        if paper == "GlaS":
            verdicts.append(REPRODUCED if worse else NOT_REPRODUCED)
            effect, p_main = diff, p_value
    elif paper != "MoNuSeg":
        parts.append(
            f"L1 alone vs U-Net-none not testable (missing runs: {scores.missing(['1000', '0000'])})"
        )
        if paper == "GlaS":
            verdicts.append(NOT_TESTABLE)
    text = f"Finding 2, {label}: " + "; ".join(parts)
    if paper is None:
        return Finding("2", dataset, OBSERVED, text + ".", effect, p_main)
    verdict = NOT_TESTABLE if NOT_TESTABLE in verdicts or not verdicts else verdicts[0]
    claim = {
        "MoNuSeg": "paper: single skips differ widely",
        "GlaS": "paper: L1 alone is worse than U-Net-none",
    }[paper]
    return Finding("2", dataset, verdict, f"{text}: {verdict} ({claim}).", effect, p_main)


def _finding3(scores: _Scores, dataset: str, paper: str | None, alpha: float, n_boot: int) -> Finding:
    label = paper or dataset
    present = [s for s in PAPER_SUBSETS if scores.has(s)]
    if len(present) < 2:
        text = f"Finding 3, {label}: not testable (missing runs: {scores.missing(PAPER_SUBSETS)})."
        return Finding("3", dataset, NOT_TESTABLE, text)
    paper_scores = scores.table[present]
    best = str(paper_scores.mean().idxmax())
    stability = best_subset_stability(paper_scores, n_boot=n_boot)
    overall = str(scores.table.mean().idxmax())
    text = (
        f"Finding 3, {label}: best of the paper's settings is {_name(best)} "
        f"(Dice {scores.mean(best):.1f}, best in {stability[best]:.0%} of image resamples)"
    )
    if overall != best:
        text += f"; over all {scores.table.shape[1]} subsets the best is {_name(overall)} ({scores.mean(overall):.1f})"
    if len(present) < len(PAPER_SUBSETS):
        text += f"; missing runs: {scores.missing(PAPER_SUBSETS)}"
    if paper is None:
        return Finding("3", dataset, OBSERVED, text + ".")
    claimed = PAPER_BEST[paper]
    if claimed not in present:
        return Finding(
            "3", dataset, NOT_TESTABLE, f"{text}: not testable (paper's best {_name(claimed)} missing)."
        )
    if best == claimed:
        others = paper_scores.drop(columns=[best]).mean()
        runner_up = str(others.idxmax())
        diff, p_value = scores.compare(best, runner_up)
        text += f"; ahead of {_name(runner_up)} by {diff:+.1f} points (p = {_p(p_value)})"
        verdict = REPRODUCED
    else:
        diff, p_value = scores.compare(claimed, best)
        text += f"; paper's best {_name(claimed)} differs by {diff:+.1f} points (p = {_p(p_value)})"
        verdict = NOT_REPRODUCED
    return Finding(
        "3", dataset, verdict, f"{text}: {verdict} (paper: {_name(claimed)} is best).", diff, p_value
    )


def _module_finding(results: Results, dataset: str, alpha: float) -> Finding | None:
    images = results.images
    chosen = images[
        (images["dataset"] == dataset) & (images["skips"] == "1111") & (images["masking"] == RETRAINED)
    ]
    if chosen["connector"].nunique() < 2 or "uctransnet" not in set(chosen["connector"]):
        return None
    table = chosen.pivot_table(index="image", columns="connector", values="dice", aggfunc="mean") * POINTS
    means = table.mean().sort_values(ascending=False)
    best = str(means.index[0])
    rivals = [c for c in means.index if c != "uctransnet"]
    closest = max(rivals, key=lambda c: means[c])
    pair = table[["uctransnet", closest]].dropna()
    _, p_value = wilcoxon_pair(pair["uctransnet"].to_numpy(), pair[closest].to_numpy())
    diff = float((pair["uctransnet"] - pair[closest]).mean())
    label = PAPER_DATASETS.get(dataset.lower(), dataset)
    text = (
        f"Table 3, {label}: best module variant is {best} ({means[best]:.1f}); UCTransNet vs {closest}, "
        f"Dice difference {diff:+.1f} points (p = {_p(p_value)})"
    )
    if dataset.lower() not in PAPER_DATASETS:
        return Finding("Table 3", dataset, OBSERVED, text + ".", diff, p_value)
    missing = [c for c in ("unet", "cct", "cca") if c not in table.columns]
    if missing:
        verdict = NOT_TESTABLE
        text += f"; missing connectors: {', '.join(missing)}"
    else:
        verdict = REPRODUCED if best == "uctransnet" else NOT_REPRODUCED
    return Finding(
        "Table 3", dataset, verdict, f"{text}: {verdict} (paper: the full model is best).", diff, p_value
    )


def findings_markdown(findings: list[Finding]) -> str:
    """The findings as a Markdown document, one bullet per sentence, grouped by dataset."""
    lines = [
        "# Findings of the UCTransNet skip study, checked on these runs",
        "",
        "Paired per-image comparisons of U-Net retrained per skip subset (Dice averaged over seeds and folds per "
        "test image; two-sided Wilcoxon signed-rank). Differences are in Dice percentage points. Datasets other "
        "than GlaS and MoNuSeg get the general form of each finding (verdict: observed).",
        "",
    ]
    for dataset in dict.fromkeys(f.dataset for f in findings):
        lines.append(f"## {dataset}")
        lines.append("")
        lines += [f"- {f.text}" for f in findings if f.dataset == dataset]
        lines.append("")
    return "\n".join(lines)
