"""The protocol behind a verdict: what the runs a finding rests on were trained with, beside the paper's.

The UCTransNet paper (Wang et al., AAAI 2022) trains base-64 networks on 224 px images for at most 2000
epochs with early stopping (patience 50) and reports mean ± std over 3 x 5-fold cross-validation, 15 runs per
setting; the reference code starts UCTransNet from a trained U-Net. A verdict from runs with fewer channels,
smaller images, a shorter budget that some runs reached, a shorter patience or fewer replicates is at
**reduced scale**; one with other departures (more channels, larger images, longer training, another
initialisation) is under a **different protocol**; a setting the runs do not record is **not recorded**.
Precision is stated, not judged: bf16 autocast changes rounding, not the study's scale.

An epoch budget below 2000 changes nothing for a run that stopped early (the learning-rate schedule does not
depend on it), so it counts as reduced only when some run reached it without stopping early.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd

from ablation.config import CONNECTORS, PAPER_INIT
from ablation.report.pooling import init_text, used_precision

PAPER, REDUCED, DIFFERENT, UNRECORDED = "paper", "reduced", "different", "unrecorded"
PAPER_BASE_CHANNELS = 64
PAPER_IMG_SIZE = 224
PAPER_MAX_EPOCHS = 2000
PAPER_PATIENCE = 50
PAPER_REPLICATES = 15  # 3 repeats x 5-fold cross-validation
PAPER_COLUMN = {
    "base channels": str(PAPER_BASE_CHANNELS),
    "image size": f"{PAPER_IMG_SIZE} px",
    "epoch budget": f"up to {PAPER_MAX_EPOCHS}, patience {PAPER_PATIENCE}",
    "epochs run (min / median / max)": "not reported",
    "best epoch (min / median / max)": "not reported",
    "replicates per setting": f"{PAPER_REPLICATES} (3 x 5-fold)",
    "initialisation": f"unet random; uctransnet from {PAPER_INIT['uctransnet']} (the reference's default)",
    "precision": "fp32",
}
# Settings read from each run's config.json (by ablation.report.load) and metrics.json.
SETTINGS = ("base_channels", "img_size", "max_epochs", "patience")


@dataclasses.dataclass(frozen=True)
class Protocol:
    """The protocol of one group of runs a verdict rests on.

    Attributes:
        label: what the runs are, e.g. "GlaS, U-Net skip study".
        runs: done runs in the group.
        cells: (row, value) pairs in :data:`PAPER_COLUMN`'s row order, for the protocol table.
        reduced: settings below the paper's, e.g. "image size 128 px < 224".
        different: other departures from the paper's protocol.
        unrecorded: settings the runs do not record.
    """

    label: str
    runs: int
    cells: tuple[tuple[str, str], ...]
    reduced: tuple[str, ...] = ()
    different: tuple[str, ...] = ()
    unrecorded: tuple[str, ...] = ()

    @property
    def match(self) -> str:
        """:data:`REDUCED` if a setting is below the paper's, else :data:`DIFFERENT`, :data:`UNRECORDED` or
        :data:`PAPER`, in that order."""
        if self.reduced:
            return REDUCED
        if self.different:
            return DIFFERENT
        return UNRECORDED if self.unrecorded else PAPER

    def departures(self) -> str:
        """What departs from the paper's protocol, '; '-separated ("none" when nothing does)."""
        return "; ".join(
            [*self.reduced, *self.different, *(f"{s} not recorded" for s in self.unrecorded)]
        ) or ("none")


def describe_protocol(runs: pd.DataFrame, label: str) -> Protocol:
    """Compare the protocol of ``runs`` (rows of :attr:`Results.runs`) with the paper's.

    Args:
        runs: the done runs a verdict rests on, with the columns load_results gives them: connector, skips,
            seed, split, device, epochs_run, best_epoch, stopped_early and the config settings base_channels,
            img_size, max_epochs, patience, precision, init_from. Absent columns count as not recorded.
        label: names the group in the protocol table.
    """
    if runs.empty:
        cells = tuple((row, "no done runs") for row in PAPER_COLUMN)
        return Protocol(label, 0, cells, unrecorded=("every setting",))
    reduced: list[str] = []
    different: list[str] = []
    unrecorded: list[str] = []
    values = {key: _numbers(runs, key) for key in (*SETTINGS, "epochs_run", "best_epoch")}
    for key, name, paper, unit in (
        ("base_channels", "base channels", PAPER_BASE_CHANNELS, ""),
        ("img_size", "image size", PAPER_IMG_SIZE, " px"),
        ("patience", "patience", PAPER_PATIENCE, ""),
    ):
        numbers = values[key]
        if numbers is None:
            unrecorded.append(name)
        elif min(numbers) < paper:
            reduced.append(f"{name} {_span(numbers)}{unit} < {paper}")
        elif max(numbers) > paper:
            different.append(f"{name} {_span(numbers)}{unit} > {paper}")
    budget = _budget(runs, values["max_epochs"], values["epochs_run"], reduced, different, unrecorded)
    replicates = _replicates(runs, reduced, unrecorded)
    initialisation = _initialisation(runs, different)
    cells = {
        "base channels": _span(values["base_channels"]),
        "image size": f"{_span(values['img_size'])} px",
        "epoch budget": budget,
        "epochs run (min / median / max)": _summary(values["epochs_run"]),
        "best epoch (min / median / max)": _summary(values["best_epoch"]),
        "replicates per setting": replicates,
        "initialisation": initialisation,
        "precision": _precision(runs),
    }
    return Protocol(
        label,
        len(runs),
        tuple((row, cells[row]) for row in PAPER_COLUMN),
        tuple(reduced),
        tuple(different),
        tuple(unrecorded),
    )


def protocol_markdown(protocols: list[Protocol], wording: dict[str, str]) -> list[str]:
    """Markdown lines: one table (the paper's column, then each group), then what each group's verdicts say.

    Args:
        wording: how verdicts name each kind of match (:data:`PAPER`, :data:`REDUCED`, ...), from claims.
    """
    if not protocols:
        return ["No verdict rests on done runs here, so there is no protocol to state."]
    header = ["setting", "paper", *(f"{p.label} ({p.runs} runs)" for p in protocols)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row, paper in PAPER_COLUMN.items():
        ours = [dict(p.cells)[row] for p in protocols]
        lines.append("| " + " | ".join([row, paper, *ours]) + " |")
    lines.append("")
    for protocol in protocols:
        said = wording[protocol.match]
        how = f'worded "... {said}"' if said else "worded plainly (the paper's protocol)"
        lines.append(f"- {protocol.label}: verdicts {how}; departures: {protocol.departures()}.")
    return lines


def _numbers(runs: pd.DataFrame, column: str) -> list[float] | None:
    """The column's values as numbers; None when any run lacks a numeric value."""
    if column not in runs.columns:
        return None
    numbers = pd.to_numeric(runs[column], errors="coerce")
    return None if numbers.isna().any() else [float(n) for n in numbers]


def _number(value: float) -> str:
    return f"{value:g}"


def _span(numbers: list[float] | None) -> str:
    if numbers is None:
        return "not recorded"
    low, high = min(numbers), max(numbers)
    return _number(low) if low == high else f"{_number(low)}-{_number(high)}"


def _summary(numbers: list[float] | None) -> str:
    if numbers is None:
        return "not recorded"
    median = float(pd.Series(numbers).median())
    return f"{_number(min(numbers))} / {_number(median)} / {_number(max(numbers))}"


def _budget(
    runs: pd.DataFrame,
    max_epochs: list[float] | None,
    epochs_run: list[float] | None,
    reduced: list[str],
    different: list[str],
    unrecorded: list[str],
) -> str:
    """The epoch budget's cell; a budget below the paper's is reduced only where a run reached it."""
    patience = _span(_numbers(runs, "patience"))
    if max_epochs is None or epochs_run is None:
        unrecorded.append("epoch budget")
        return f"{_span(max_epochs)}, patience {patience}"
    # A run that stopped early on its last epoch did not need more; an unrecorded flag counts as not stopped.
    stopped = runs["stopped_early"].eq(True) if "stopped_early" in runs.columns else [False] * len(runs)
    reached = sum(
        ran >= budget and not stop for ran, budget, stop in zip(epochs_run, max_epochs, stopped, strict=True)
    )
    cell = f"{_span(max_epochs)}, patience {patience}; reached by {reached} of {len(runs)} runs"
    if reached and min(max_epochs) < PAPER_MAX_EPOCHS:
        runs_text = f"{reached} run{'' if reached == 1 else 's'}"
        reduced.append(f"epoch budget {_span(max_epochs)} < {PAPER_MAX_EPOCHS}, reached by {runs_text}")
    elif max(epochs_run) > PAPER_MAX_EPOCHS:
        different.append(f"trained up to {_number(max(epochs_run))} epochs > {PAPER_MAX_EPOCHS}")
    return cell


def _replicates(runs: pd.DataFrame, reduced: list[str], unrecorded: list[str]) -> str:
    """Replicates (seed x split) per setting (connector x skips): the cell, with seeds and splits."""
    keys = ["connector", "skips", "seed", "split"]
    if any(key not in runs.columns for key in keys):
        unrecorded.append("replicates")
        return "not recorded"
    counts = runs.drop_duplicates(keys).groupby(["connector", "skips"]).size()
    low, high = int(counts.min()), int(counts.max())
    seeds = _listing(sorted({int(s) for s in runs["seed"]}))
    splits = _listing(sorted(set(runs["split"].astype(str))))
    if low < PAPER_REPLICATES:
        reduced.append(f"replicates {_span([low, high])} < {PAPER_REPLICATES}")
    return f"{_span([low, high])} (seeds {seeds}; splits {splits})"


def _initialisation(runs: pd.DataFrame, different: list[str]) -> str:
    """Random or ``train.init_from`` per connector; a connector whose paper start differs is flagged."""
    if "connector" not in runs.columns:
        return "not recorded"
    column = runs["init_from"] if "init_from" in runs.columns else pd.Series(None, index=runs.index)
    parts = []
    present = set(runs["connector"])
    for connector in [c for c in CONNECTORS if c in present] + sorted(present - set(CONNECTORS)):
        sources = sorted({init_text(v) for v in column[runs["connector"] == connector]})
        parts.append(f"{connector} {', '.join(sources)}")
        if connector not in PAPER_INIT:
            continue
        wanted = "random" if PAPER_INIT[connector] is None else None
        if wanted == "random" and sources != ["random"]:
            different.append(f"{connector} initialised {', '.join(sources)} (paper: random)")
        elif wanted is None and "random" in sources:
            different.append(f"{connector} from random weights (paper: from {PAPER_INIT[connector]})")
    return "; ".join(parts)


def _precision(runs: pd.DataFrame) -> str:
    """Each run's precision as used: explicit bf16/fp32, or ``auto`` resolved by its device."""
    if "precision" not in runs.columns:
        return "not recorded"
    devices = runs["device"] if "device" in runs.columns else pd.Series("", index=runs.index)
    used = set()
    for precision, device in zip(runs["precision"], devices, strict=True):
        device = device if isinstance(device, str) and device else ""
        if precision == "auto" and not device:
            used.add("auto (device not recorded)")
        elif precision == "auto":
            resolved = "fp32" if used_precision(precision, device) == "fp32" else "bf16 autocast"
            used.add(f"{resolved} (auto on {device})")
        elif isinstance(precision, str):
            name = "bf16 autocast" if precision == "bf16" else precision
            used.add(f"{name} (on {device or 'an unrecorded device'})")
        else:
            used.add("not recorded")
    return "; ".join(sorted(used))


def _listing(values: list[Any]) -> str:
    """Up to five values in full, else the count and the first and last."""
    text = [str(v) for v in values]
    return ", ".join(text) if len(text) <= 5 else f"{len(text)}: {text[0]} ... {text[-1]}"
