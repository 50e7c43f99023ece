"""The paper's skip-connection claims as decision rules (UCTransNet, Wang et al., AAAI 2022, Fig. 3 and Table 3).

The verdict words, the thresholds each claim is judged by, the paper's numbers the claims name, the
:class:`Finding` record, how a verdict is worded with the runs and protocol it rests on (:func:`stated_verdict`,
:func:`judged_sentence`, :func:`protocol_section`), and the rules in words (:func:`decision_rules`).
:mod:`ablation.report.findings` applies them to runs.
"""

from __future__ import annotations

import dataclasses

from ablation.report.protocol import DIFFERENT, PAPER, REDUCED, UNRECORDED, Protocol, protocol_markdown

REPRODUCED, NOT_REPRODUCED, NOT_TESTABLE, OBSERVED = (
    "reproduced",
    "not reproduced",
    "not testable",
    "observed",
)
NOT_DISTINGUISHABLE = "not distinguishable from the best"
JUDGED = (REPRODUCED, NOT_REPRODUCED, NOT_DISTINGUISHABLE)  # verdicts on the paper's claims
# How a judged verdict names the protocol it rests on (Protocol.match): "reproduced at reduced scale".
PROTOCOL_WORDING = {
    PAPER: "",
    REDUCED: "at reduced scale",
    DIFFERENT: "under a different protocol",
    UNRECORDED: "with its protocol not recorded",
}
ALPHA = 0.05  # per finding; the handful of findings is not corrected for multiplicity
# "Competitive" (GlaS, Finding 1): U-Net-none may be at most this many Dice points worse than U-Net-all.
NON_INFERIORITY_MARGIN = 1.0
MIN_IMAGES_NON_INFERIORITY = 6  # a bootstrap CI over fewer images is too coarse to bound anything
# "Differ widely" (MoNuSeg, Finding 2): the single skips' span must reach this fraction of the reported span.
WIDE_SPAN_FRACTION = 0.5
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
    protocol: Protocol | None = None  # the runs the verdict rests on (None: set by check_findings)

    @property
    def stated_verdict(self) -> str:
        """The verdict as the text states it, e.g. "reproduced at reduced scale"."""
        match = self.protocol.match if self.protocol is not None else UNRECORDED
        return stated_verdict(self.verdict, match)


def stated_verdict(verdict: str, match: str) -> str:
    """A verdict worded with the protocol it rests on: judged verdicts off the paper's protocol say so."""
    wording = PROTOCOL_WORDING[match]
    return f"{verdict} {wording}" if verdict in JUDGED and wording else verdict


def judged_sentence(
    head: str, verdict: str, protocol: Protocol, claim: str, rule: str, detail: str = ""
) -> str:
    """The sentence of a judged finding: what was measured (``head``), the verdict with the runs it rests on
    (worded with their protocol, then ``detail`` in brackets), then the paper's claim and the rule applied."""
    stated = stated_verdict(verdict, protocol.match) + (f" ({detail})" if detail else "")
    return f"{head}. Verdict {_resting_on(protocol)}: {stated}. Paper's claim: {claim}. Rule: {rule}."


def observed_sentence(text: str, protocol: Protocol) -> str:
    """A finding on a dataset the paper makes no claim about: what was observed, and on which runs."""
    return f"{text} Observed {_resting_on(protocol)}; the paper makes no claim about this dataset."


def _resting_on(protocol: Protocol) -> str:
    return f"on the {protocol.label} ({protocol.runs or 'no recorded'} runs)"


def dataset_naming(dataset: str, shared_name: str) -> tuple[str | None, str]:
    """The paper's name of a dataset (None when the paper makes no claim about it) and how findings name it.

    Args:
        dataset: its report label, e.g. ``glas`` or ``glas@lr=0.0001``.
        shared_name: the dataset name the label stands for (``Results.shared_name``), e.g. ``glas``.

    Returns:
        ``("GlaS", "GlaS")``, ``("GlaS", "GlaS (glas@lr=0.0001)")`` for GlaS runs kept apart under a label, or
        ``(None, dataset)``.
    """
    paper = PAPER_DATASETS.get(shared_name.lower())
    if paper is None:
        return None, dataset
    return paper, paper if dataset.lower() == paper.lower() else f"{paper} ({dataset})"


def protocol_section(protocols: list[Protocol]) -> list[str]:
    """Markdown: the paper's protocol and how verdicts are worded against it, then the protocol table of the
    groups of runs verdicts rest on and each group's wording."""
    intro = (
        "Each column is a group of runs that verdicts rest on, beside the paper's protocol: base-64 networks on "
        "224 px images, up to 2000 epochs (early stopping with patience 50), 3 x 5-fold = 15 runs per setting. "
        "A verdict on runs below that (fewer channels, smaller images, a shorter budget some runs reached, "
        f'fewer replicates) reads "... {PROTOCOL_WORDING[REDUCED]}"; one on other departures (e.g. UCTransNet '
        "from random weights where the reference starts from a trained U-Net) reads "
        f'"... {PROTOCOL_WORDING[DIFFERENT]}". Precision is stated, not judged. Epochs are min / median / max '
        "over the runs; a budget is reached by a run that trained to its last epoch without stopping early."
    )
    return [intro, "", *protocol_markdown(protocols, PROTOCOL_WORDING)]


def decision_rules(alpha: float = ALPHA) -> list[str]:
    """One line per finding: when it counts as reproduced (the same rules the sentences state)."""
    low, high = PAPER_SINGLE_SPAN["MoNuSeg"]
    wide = WIDE_SPAN_FRACTION * (high - low)
    return [
        f"Finding 1, MoNuSeg (U-Net-none is the worst): reproduced if U-Net-none has the lowest mean Dice of "
        f"the paper's ten Fig. 3 settings and a one-sided Wilcoxon signed-rank test (none below all, paired "
        f"by image) gives p < {alpha}.",
        f"Finding 1, GlaS (U-Net-none is competitive with U-Net-all): reproduced if U-Net-none is "
        f"non-inferior, i.e. the lower bound of the 95% bootstrap CI of mean(none - all) is above "
        f"-{NON_INFERIORITY_MARGIN:g} Dice point; not testable with fewer than "
        f"{MIN_IMAGES_NON_INFERIORITY} images.",
        f"Finding 2, MoNuSeg (single skips differ widely): reproduced if the Friedman test over L1..L4 alone "
        f"gives p < {alpha} and their mean Dice spans at least {wide:.2f} points ({WIDE_SPAN_FRACTION:g} x "
        f"the paper's reported span, {low} to {high}).",
        f"Finding 2, GlaS (L1 alone is worse than U-Net-none): reproduced if a one-sided Wilcoxon test (L1 "
        f"alone below none) gives p < {alpha}.",
        f"Finding 3 (the paper's best setting: w/o L4 on MoNuSeg, L3 alone on GlaS): reproduced if it has "
        f"the highest mean Dice of the paper's settings (images scored under all of them); 'not "
        f"distinguishable from the best' if another setting is highest but a one-sided Wilcoxon test "
        f"(paper's pick below it) gives p >= {alpha}; otherwise not reproduced. The best is chosen after "
        f"looking at the data, which biases its lead upwards.",
        "Table 3 (the full model is best): as Finding 3, UCTransNet (Base+CCT+CCA) against the other module "
        "variants with all skips.",
        "A glas or monuseg dataset kept apart under a label (e.g. glas@lr=0.0001) is judged like glas or monuseg, "
        "on its own runs. Other datasets: the same comparisons in general form, without a verdict (observed).",
        "Each judged verdict is worded with the protocol of the runs it rests on (plain at the paper's, '... at "
        "reduced scale' below it, '... under a different protocol' otherwise).",
    ]
