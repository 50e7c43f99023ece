"""The UCTransNet paper's three skip-connection findings (Wang et al., AAAI 2022, Fig. 3), checked on runs.

1. U-Net-none is the worst on MoNuSeg but competitive with U-Net-all on GlaS.
2. Single skips differ widely (MoNuSeg: Dice 67.5-76.44%); on GlaS, L1 alone is worse than U-Net-none.
3. The best setting differs per dataset: without L4 on MoNuSeg, L3 alone on GlaS.
Plus Table 3: the full model (Base+CCT+CCA) is best among the module ablations.

Datasets named ``glas`` or ``monuseg`` (also when kept apart under a label such as ``glas@lr=0.0001``, each
label judged on its own runs) get the paper's dataset-specific claim and a verdict (reproduced / not
reproduced / not distinguishable from the best / not testable); any other dataset gets the general form of each
finding, verdict ``observed``. Comparisons use U-Net runs retrained per subset, per-image Dice averaged over
seeds and folds, paired by image. A claim with a direction ("worse", "best") is tested one-sided in that
direction (Wilcoxon signed-rank); "competitive" is a non-inferiority check on a bootstrap CI; "differ widely"
needs both a significant Friedman test and a span comparable to the reported one. Every verdict names the runs
it rests on and is worded with their protocol (:mod:`ablation.report.protocol`): plain at the paper's, "... at
reduced scale" below it (smaller networks or images, a budget some runs reached, fewer replicates), "... under
a different protocol" for other departures. The verdict words, thresholds and sentences (:func:`stated_verdict`,
:func:`judged_sentence`, :func:`decision_rules`, which states every rule) live in :mod:`ablation.report.claims`;
effect sizes are Dice differences in percentage points, mean and median.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy import stats

from ablation.report.claims import (
    ALPHA,
    MIN_IMAGES_NON_INFERIORITY,
    NON_INFERIORITY_MARGIN,
    NOT_DISTINGUISHABLE,
    NOT_REPRODUCED,
    NOT_TESTABLE,
    OBSERVED,
    PAPER_BEST,
    PAPER_SINGLE_SPAN,
    REPRODUCED,
    WIDE_SPAN_FRACTION,
    Finding,
    dataset_naming,
    decision_rules,
    judged_sentence,
    observed_sentence,
    protocol_section,
)
from ablation.report.load import RETRAINED, Results, image_means
from ablation.report.protocol import Protocol, describe_protocol
from ablation.report.stats import POINTS, best_subset_stability, bootstrap_ci, wilcoxon_pair
from ablation.skips import PAPER_SUBSETS, SINGLE_SUBSETS, paper_label


@dataclasses.dataclass
class _Paired:
    """Paired differences a - b (points) over the images scored under both, with a Wilcoxon p-value."""

    differences: np.ndarray  # (N,)
    p_value: float

    @property
    def mean(self) -> float:
        return float(self.differences.mean()) if self.differences.size else float("nan")

    @property
    def median(self) -> float:
        return float(np.median(self.differences)) if self.differences.size else float("nan")

    def describe(self) -> str:
        return f"{self.mean:+.1f} Dice points (median {self.median:+.1f}, {self.differences.size} images"


def _p(p_value: float | None) -> str:
    return "n/a" if p_value is None or np.isnan(p_value) else f"{p_value:.2g}"


def _name(skips: str) -> str:
    label = paper_label(skips)
    return f"U-Net-{label}" if label in ("none", "all") else label


def _paired(table: pd.DataFrame, a: str, b: str, alternative: str) -> _Paired:
    """Column ``a`` minus column ``b`` of ``table`` on the rows where both are present."""
    pair = table[[a, b]].dropna()
    _, p_value = wilcoxon_pair(pair[a].to_numpy(), pair[b].to_numpy(), alternative=alternative)
    return _Paired((pair[a] - pair[b]).to_numpy(dtype=float), p_value)


class _Scores:
    """Per-image Dice (points) of one dataset's U-Net subsets, paired by image, and the runs' protocol."""

    def __init__(self, results: Results, dataset: str, protocol: Protocol) -> None:
        self.dataset = dataset
        self.paper, self.label = dataset_naming(dataset, results.shared_name(dataset))
        self.protocol = protocol  # the skip study's runs against the paper's protocol
        images = results.images
        chosen = images[
            (images["dataset"] == dataset)
            & (images["connector"] == "unet")
            & (images["masking"] == RETRAINED)
        ]
        self.table = image_means(chosen) * POINTS if not chosen.empty else pd.DataFrame()

    def has(self, *subsets: str) -> bool:
        return all(s in self.table.columns for s in subsets)

    def missing(self, subsets: tuple[str, ...] | list[str]) -> str:
        return ", ".join(_name(s) for s in subsets if s not in self.table.columns)

    def compare(self, a: str, b: str, alternative: str) -> _Paired:
        return _paired(self.table, a, b, alternative)

    def rank(self, skips: str, among: list[str]) -> tuple[int, int]:
        """Rank of ``skips`` by mean Dice (1 = best) among the subsets ``among``, and how many they are."""
        means = self.table[among].mean().sort_values(ascending=False)
        return int(list(means.index).index(skips)) + 1, len(means)


def check_findings(results: Results, *, alpha: float = ALPHA, n_boot: int = 1000) -> list[Finding]:
    """Check findings 1-3 (and Table 3's) on every dataset of ``results``; :func:`decision_rules` says how."""
    found = []
    for dataset in results.datasets:
        skip_study, module_ablation = verdict_protocols(results, dataset)
        scores = _Scores(results, dataset, skip_study)
        for finding in (
            _finding1(scores, alpha, n_boot),
            _finding2(scores, alpha),
            _finding3(scores, alpha, n_boot),
        ):
            found.append(dataclasses.replace(finding, protocol=skip_study))
        if _has_module_ablation(results, dataset):
            module = _module_finding(results, dataset, alpha, module_ablation)
            found.append(dataclasses.replace(module, protocol=module_ablation))
    return found


def verdict_protocols(results: Results, dataset: str) -> tuple[Protocol, Protocol]:
    """The protocols the verdicts on ``dataset`` rest on: its U-Net skip study (findings 1-3: the U-Net runs
    retrained per subset) and its module ablation (Table 3: the runs of every connector with all skips)."""
    runs = results.runs
    label = dataset_naming(dataset, results.shared_name(dataset))[1]
    if not {"dataset", "connector", "skips"} <= set(runs.columns):
        runs = pd.DataFrame(columns=["dataset", "connector", "skips"])
    mine = runs[runs["dataset"] == dataset]
    return (
        describe_protocol(mine[mine["connector"] == "unet"], f"{label} U-Net skip study"),
        describe_protocol(mine[mine["skips"] == "1111"], f"{label} module ablation"),
    )


def protocol_lines(results: Results) -> list[str]:
    """Markdown: the protocol table of every verdict's runs beside the paper's, then each group's wording.

    A dataset without done U-Net runs has no skip study to state (its findings are not testable)."""
    protocols = []
    for dataset in results.datasets:
        skip_study, module_ablation = verdict_protocols(results, dataset)
        protocols += [skip_study] if skip_study.runs else []
        if _has_module_ablation(results, dataset):
            protocols.append(module_ablation)
    return protocol_section(protocols)


def _finding1(scores: _Scores, alpha: float, n_boot: int) -> Finding:
    dataset, paper, label = scores.dataset, scores.paper, scores.label
    if not scores.has("0000", "1111"):
        text = f"Finding 1, {label}: not testable (missing runs: {scores.missing(['0000', '1111'])})."
        return Finding("1", dataset, NOT_TESTABLE, text)
    head = f"Finding 1, {label}: U-Net-none minus U-Net-all: "
    if paper == "GlaS":
        return _finding1_glas(scores, head, n_boot)
    pair = scores.compare("0000", "1111", "less")
    worse = pair.p_value < alpha
    present = [s for s in PAPER_SUBSETS if scores.has(s)]
    rank, count = scores.rank("0000", present)
    worst = rank == count
    head += (
        f"{pair.describe()}; one-sided Wilcoxon, none below all: p = {_p(pair.p_value)}); "
        f"U-Net-none ranks {rank} of {count} of the paper's settings by mean Dice"
    )
    if scores.table.shape[1] > count:
        rank_all, count_all = scores.rank("0000", list(scores.table.columns))
        head += f" ({rank_all} of all {count_all} subsets run)"
    if paper == "MoNuSeg":
        verdict = REPRODUCED if worst and worse else NOT_REPRODUCED
        rule = f"lowest mean of the paper's settings and one-sided p < {alpha}"
        text = judged_sentence(head, verdict, scores.protocol, "U-Net-none is the worst", rule)
        return Finding("1", dataset, verdict, text, pair.mean, pair.p_value)
    state = "significantly worse than" if worse else "not significantly worse than"
    worst_and = "the worst and " if worst else ""
    text = f"{head}; U-Net-none is {worst_and}{state} U-Net-all (one-sided, alpha = {alpha})."
    return Finding("1", dataset, OBSERVED, observed_sentence(text, scores.protocol), pair.mean, pair.p_value)


def _finding1_glas(scores: _Scores, head: str, n_boot: int) -> Finding:
    """GlaS's "competitive" as non-inferiority: the CI of mean(none - all) stays above -margin."""
    pair = scores.compare("0000", "1111", "two-sided")
    claim = "U-Net-none is competitive with U-Net-all"
    rule = (
        f"non-inferior, i.e. the 95% bootstrap CI of the mean difference stays above "
        f"-{NON_INFERIORITY_MARGIN:g} Dice point"
    )
    if pair.differences.size < MIN_IMAGES_NON_INFERIORITY:
        detail = f"too few images: {pair.differences.size}, need {MIN_IMAGES_NON_INFERIORITY}"
        text = judged_sentence(
            head + pair.describe() + ")", NOT_TESTABLE, scores.protocol, claim, rule, detail
        )
        return Finding("1", scores.dataset, NOT_TESTABLE, text, pair.mean)
    low, high = bootstrap_ci(pair.differences, n_boot=n_boot)
    verdict = REPRODUCED if low > -NON_INFERIORITY_MARGIN else NOT_REPRODUCED
    head += f"{pair.describe()}; 95% bootstrap CI of the mean [{low:+.1f}, {high:+.1f}])"
    text = judged_sentence(head, verdict, scores.protocol, claim, rule)
    return Finding("1", scores.dataset, verdict, text, pair.mean)


def _spread_clause(scores: _Scores) -> tuple[str, float | None, float | None]:
    """How much L1..L4 alone differ: (clause, span in points, Friedman p); span None when not testable."""
    if not scores.has(*SINGLE_SUBSETS):
        return f"single-skip spread not testable (missing runs: {scores.missing(SINGLE_SUBSETS)})", None, None
    singles = scores.table[list(SINGLE_SUBSETS)].dropna()  # the Friedman test needs complete blocks
    if len(singles) < 2:
        clause = (
            f"single-skip spread not testable ({len(singles)} images scored under all four single skips, "
            f"need 2)"
        )
        return clause, None, None
    means = singles.mean()
    if (singles.nunique(axis=1) == 1).all():
        p_spread = float("nan")  # no image tells the settings apart: the statistic is 0/0
    else:
        p_spread = float(stats.friedmanchisquare(*(singles[c].to_numpy() for c in singles.columns)).pvalue)
    low, high = float(means.min()), float(means.max())
    clause = (
        f"single skips span Dice [{low:.1f}, {high:.1f}] ({high - low:.1f} points, from "
        f"{_name(means.idxmin())} to {_name(means.idxmax())}, {len(singles)} images; Friedman over L1..L4 "
        f"alone p = {_p(p_spread)})"
    )
    return clause, high - low, p_spread


def _l1_clause(scores: _Scores, alpha: float) -> tuple[str, _Paired | None]:
    """L1 alone against U-Net-none, one-sided in the paper's direction (L1 alone below)."""
    if not scores.has("1000", "0000"):
        return f"L1 alone vs U-Net-none not testable (missing runs: {scores.missing(['1000', '0000'])})", None
    pair = scores.compare("1000", "0000", "less")
    state = "significantly worse" if pair.p_value < alpha else "not significantly worse"
    clause = (
        f"L1 alone minus U-Net-none: {pair.describe()}; one-sided Wilcoxon, L1 alone below none: "
        f"p = {_p(pair.p_value)}), {state}"
    )
    return clause, pair


def _finding2(scores: _Scores, alpha: float) -> Finding:
    dataset, paper, label = scores.dataset, scores.paper, scores.label
    spread, span, p_spread = _spread_clause(scores)
    l1, pair = _l1_clause(scores, alpha)
    if paper is None:
        effect = pair.mean if pair is not None else span
        text = observed_sentence(f"Finding 2, {label}: {spread}; {l1}.", scores.protocol)
        return Finding("2", dataset, OBSERVED, text, effect)
    if paper == "MoNuSeg":
        low, high = PAPER_SINGLE_SPAN[paper]
        wide = WIDE_SPAN_FRACTION * (high - low)
        detail = ""
        if span is None:
            verdict, text = NOT_TESTABLE, f"Finding 2, {label}: {spread}."
        else:
            if p_spread < alpha and span >= wide:
                verdict = REPRODUCED
            elif p_spread < alpha:
                verdict = NOT_REPRODUCED
                detail = (
                    f"differ significantly, but not widely: span {span:.1f} points vs the paper's reported "
                    f"{high - low:.1f}"
                )
            else:
                verdict = NOT_REPRODUCED
                detail = "no significant difference between the single skips"
            claim = f"single skips differ widely (reported Dice {low} to {high})"
            rule = (
                f"Friedman p < {alpha} and a span of at least {wide:.2f} points, half the reported "
                f"{high - low:.2f}"
            )
            head = f"Finding 2, {label}: {spread}"
            text = judged_sentence(head, verdict, scores.protocol, claim, rule, detail)
        if pair is not None:  # GlaS's half of the finding, shown for comparison but not judged here
            text += f" Also observed, not judged: {l1}."
        return Finding("2", dataset, verdict, text, span, p_spread)
    if pair is None:
        verdict, text = NOT_TESTABLE, f"Finding 2, {label}: {l1}."
    else:
        verdict = REPRODUCED if pair.p_value < alpha else NOT_REPRODUCED
        rule = f"one-sided Wilcoxon p < {alpha}"
        claim = "L1 alone is worse than U-Net-none"
        text = judged_sentence(f"Finding 2, {label}: {l1}", verdict, scores.protocol, claim, rule)
    if span is not None:  # MoNuSeg's half of the finding, shown for comparison but not judged here
        text += f" Also observed, not judged: {spread}."
    effect, p_value = (None, None) if pair is None else (pair.mean, pair.p_value)
    return Finding("2", dataset, verdict, text, effect, p_value)


def _finding3(scores: _Scores, alpha: float, n_boot: int) -> Finding:
    dataset, paper, label = scores.dataset, scores.paper, scores.label
    present = [s for s in PAPER_SUBSETS if scores.has(s)]
    if len(present) < 2:
        text = f"Finding 3, {label}: not testable (missing runs: {scores.missing(PAPER_SUBSETS)})."
        return Finding("3", dataset, NOT_TESTABLE, text)
    # The best and its stability come from the same images: those scored under every paper setting present.
    complete = scores.table[present].dropna()
    if len(complete) < 2:
        text = (
            f"Finding 3, {label}: not testable ({len(complete)} images scored under all {len(present)} of "
            f"the paper's settings present, need 2)."
        )
        return Finding("3", dataset, NOT_TESTABLE, text)
    means = complete.mean()
    best = str(means.idxmax())
    stability = best_subset_stability(complete, n_boot=n_boot)
    text = (
        f"Finding 3, {label}: the best of the paper's settings is {_name(best)} (Dice {means[best]:.1f} on the "
        f"{len(complete)} images scored under all of them, best in {stability[best]:.0%} of image resamples)"
    )
    everything = scores.table.dropna()
    if scores.table.shape[1] > len(present) and not everything.empty:
        overall = str(everything.mean().idxmax())
        if overall != best:
            text += (
                f"; over all {scores.table.shape[1]} subsets the best is {_name(overall)} "
                f"({everything[overall].mean():.1f} on {len(everything)} images)"
            )
    if len(present) < len(PAPER_SUBSETS):
        text += f"; missing runs: {scores.missing(PAPER_SUBSETS)}"
    if paper is None:
        return Finding("3", dataset, OBSERVED, observed_sentence(text + ".", scores.protocol))
    claimed = PAPER_BEST[paper]
    if claimed not in present:
        text = f"{text}: not testable (the paper's pick {_name(claimed)} has no runs)."
        return Finding("3", dataset, NOT_TESTABLE, text)
    verdict, head, pair = _best_verdict(complete, claimed, best, text, alpha, _name)
    text = judged_sentence(head, verdict, scores.protocol, f"{_name(claimed)} is best", _best_rule(alpha))
    return Finding("3", dataset, verdict, text, pair.mean, pair.p_value)


def _best_verdict(
    table: pd.DataFrame, claimed: str, best: str, head: str, alpha: float, name: Callable[[str], str]
) -> tuple[str, str, _Paired]:
    """Is the paper's pick the observed best (by mean), indistinguishable from it, or behind it?"""
    if best == claimed:
        runner_up = str(table.drop(columns=[best]).mean().idxmax())
        pair = _paired(table, best, runner_up, "greater")
        head += (
            f"; {name(best)} minus the runner-up {name(runner_up)}: {pair.describe()}; one-sided Wilcoxon: "
            f"p = {_p(pair.p_value)})"
        )
        return REPRODUCED, head, pair
    pair = _paired(table, claimed, best, "less")
    head += (
        f"; {name(claimed)} (the paper's pick) minus {name(best)}: {pair.describe()}; one-sided Wilcoxon, "
        f"{name(claimed)} below {name(best)}: p = {_p(pair.p_value)})"
    )
    return (NOT_REPRODUCED if pair.p_value < alpha else NOT_DISTINGUISHABLE), head, pair


def _best_rule(alpha: float) -> str:
    return (
        f"reproduced if the paper's pick has the highest mean; {NOT_DISTINGUISHABLE} if not, but a one-sided "
        f"Wilcoxon test against the observed best gives p >= {alpha} (the best is chosen after looking at "
        f"the data)"
    )


def _module_images(results: Results, dataset: str) -> pd.DataFrame:
    """Per-image rows of the dataset's runs with all skips (every connector, retrained)."""
    images = results.images
    return images[
        (images["dataset"] == dataset) & (images["skips"] == "1111") & (images["masking"] == RETRAINED)
    ]


def _has_module_ablation(results: Results, dataset: str) -> bool:
    """Table 3 is checked when UCTransNet and another connector have all-skips runs."""
    connectors = set(_module_images(results, dataset)["connector"])
    return len(connectors) >= 2 and "uctransnet" in connectors


def _module_finding(results: Results, dataset: str, alpha: float, protocol: Protocol) -> Finding:
    chosen = _module_images(results, dataset)
    table = chosen.pivot_table(index="image", columns="connector", values="dice", aggfunc="mean") * POINTS
    means = table.mean().sort_values(ascending=False)
    best = str(means.index[0])
    paper, label = dataset_naming(dataset, results.shared_name(dataset))
    head = (
        f"Table 3, {label}: the best module variant is {best} (Dice {means[best]:.1f}, {len(table)} images)"
    )
    verdict, head, pair = _best_verdict(table, "uctransnet", best, head, alpha, str)
    if paper is None:
        return Finding(
            "Table 3", dataset, OBSERVED, observed_sentence(head + ".", protocol), pair.mean, pair.p_value
        )
    missing = [c for c in ("unet", "cct", "cca") if c not in table.columns]
    if missing:
        verdict = NOT_TESTABLE
        head += f"; missing connectors: {', '.join(missing)}"
    text = judged_sentence(head, verdict, protocol, "the full model (uctransnet) is best", _best_rule(alpha))
    return Finding("Table 3", dataset, verdict, text, pair.mean, pair.p_value)


def findings_markdown(findings: list[Finding], *, alpha: float = ALPHA) -> str:
    """The findings as a Markdown document: the decision rules, the protocol of the runs behind the verdicts,
    then per dataset what its verdicts rest on and one bullet per finding."""
    lines = [
        "# Findings of the UCTransNet skip study, checked on these runs",
        "",
        "Paired per-image comparisons of the U-Net runs retrained per skip subset (findings 1-3) and of every "
        "connector's all-skips runs (Table 3). Each test image's Dice is averaged over seeds and folds, so "
        "p-values cover the sampling of test images, with training variation averaged out. Differences are in "
        "Dice percentage points, mean and median. Datasets named glas or monuseg, also under a label such as "
        "glas@lr=0.0001, are judged against the paper's claims (\"Paper's claim\"; the paper's numbers are "
        'marked "reported"); other datasets get the general form of each finding (observed, no verdict).',
        "",
        f"## Decision rules (alpha = {alpha})",
        "",
        *[f"- {rule}" for rule in decision_rules(alpha)],
        "",
    ]
    # Groups without done runs back no verdict: their findings say what is missing.
    protocols = list(
        {f.protocol.label: f.protocol for f in findings if f.protocol and f.protocol.runs}.values()
    )
    if protocols:
        lines += ["## Protocol behind the verdicts", "", *protocol_section(protocols), ""]
    for dataset in dict.fromkeys(f.dataset for f in findings):
        mine = [f for f in findings if f.dataset == dataset]
        groups = {f.protocol.label: f.protocol for f in mine if f.protocol and f.protocol.runs}
        lines += [f"## {dataset}", ""]
        if groups:
            lines += ["The findings below rest on:", ""]
            lines += [
                f"- the {p.label} ({p.runs} runs); departures from the paper's protocol: {p.departures()}."
                for p in groups.values()
            ]
            lines.append("")
        lines += [*[f"- {f.text}" for f in mine], ""]
    return "\n".join(lines)
