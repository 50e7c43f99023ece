"""Write a complete report folder for a results folder: tables, figures, statistics, Shapley values, findings.

Layout of ``<out_dir>`` (default ``<results_dir>/report``)::

    README.md      what is measured here and what is the paper's, the datasets kept apart and why, the protocol
                   behind the verdicts, the findings, an index of everything written, and the gaps (every run
                   without a result; skipped items)
    findings.md    the paper's findings checked on these runs
    tables/        <dataset>_{subsets,skip_study,modules,test_time_masks}.{md,tex,csv}, runs.csv, gaps.csv
    figures/       heatmap, <group>_{bars,per_image,critical_difference,best_stability,shapley},
                   <dataset>_{learning_curves,qualitative}, each .png and .pdf
    stats/         <group>_{vs_all,vs_none,bootstrap,friedman_ranks,best_stability}.csv, summary.md
    shapley/       <group>_{skips,interactions}.csv, shapley.md

A group is one dataset x connector x masking with results for at least two skip subsets. Anything that needs data
the results lack is skipped with a note in README.md, never fatal. Any other fault while checking the findings (a
bug) still leaves every other file written: findings.md holds the error and its traceback, and
``write_report`` then raises :class:`ReportIncomplete` naming it, so ``ablation report`` exits non-zero.
"""

from __future__ import annotations

import dataclasses
import traceback
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from ablation.config import CONNECTORS
from ablation.errors import AblationError
from ablation.io import atomic_write_text
from ablation.report import figures, findings, shapley, stats, tables
from ablation.report.load import (
    RETRAINED,
    Results,
    apart_note,
    image_means,
    load_results,
    replicate_means,
)
from ablation.skips import skip_label

SHAPLEY_PREAMBLE = [
    "# Shapley values of the skips L1..L4",
    "",
    "v(S) = mean Dice (points) of the U-Net retrained with skip subset S. **Shapley value**: each skip's "
    "average marginal contribution over all orders of switching the skips on; the four sum to Dice(all) - "
    "Dice(none). **Main effect**: mean Dice of the 8 subsets with the skip minus mean Dice of the 8 without "
    "it (the 2^4 factorial main effect, i.e. the Banzhaf value). **Alone - none**: Dice(Li alone) - "
    "Dice(none); **all - without**: Dice(all) - Dice(w/o Li). **Interaction** of a pair: positive when the "
    "two skips help more together than apart.",
    "",
    "95% t-intervals over seed x split replicates that have all 16 subsets. The replicates share the test "
    "set, so the intervals cover training variation (seed, training split), not the sampling of test images.",
    "",
]


FINDINGS = "Findings"
LINK = "The same, with what each dataset's verdicts rest on: [`findings.md`](findings.md)."
GAPS_DESCRIPTION = "every run without a result: failed, damaged, running, pending or never started"


class ReportIncomplete(AblationError):
    """The report folder was written, but its findings could not be computed; findings.md says why."""


@dataclasses.dataclass
class _Index:
    """What the report wrote (section -> [(relative path, description)]) and what it skipped, and why."""

    root: Path
    sections: dict[str, list[tuple[str, str]]] = dataclasses.field(default_factory=dict)
    skipped: list[str] = dataclasses.field(default_factory=list)

    def add(self, section: str, path: Path, description: str) -> None:
        self.sections.setdefault(section, []).append((str(path.relative_to(self.root)), description))

    def text(self, section: str, relative: str, content: str, description: str) -> None:
        path = self.root / relative
        atomic_write_text(path, content)
        self.add(section, path, description)

    def figure(self, section: str, stem: str, build: Callable[[], object], description: str) -> None:
        try:
            figure = build()
        except AblationError as error:
            self.skipped.append(f"figure {stem}: {error}")
            return
        paths = figures.save_figure(figure, self.root / "figures" / stem)
        self.add(section, paths[0], f"{description} (also {paths[1].name})")


def write_report(results_dir: str | Path, out_dir: str | Path | None = None, *, n_boot: int = 2000) -> Path:
    """Write the report for ``results_dir`` and return its folder.

    Args:
        results_dir: a folder of run folders (see :mod:`ablation.store`).
        out_dir: where to write; default ``<results_dir>/report``.
        n_boot: bootstrap resamples for confidence intervals and best-subset stability.

    Raises:
        AblationError: if ``results_dir`` does not exist or holds no run folder, or ``out_dir`` (or a folder
            above it) is a file.
        ReportIncomplete: after writing everything else, when checking the findings failed.
    """
    out = Path(out_dir) if out_dir is not None else Path(results_dir) / "report"
    for where in (out, *out.parents):  # checked before any work, so a wrong --out fails at once
        if where.exists() and not where.is_dir():
            inside = "" if where == out else f": {where}"  # a file above the folder, e.g. --out afile.txt/x
            raise AblationError(f"report folder {out}{inside} is a file, not a folder; choose another --out")
    results = load_results(results_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise AblationError(f"cannot create report folder {out}: {error.strerror or error}") from None
    index = _Index(out)

    _write_tables(results, index)
    index.figure("Figures", "heatmap", lambda: figures.heatmap(results), "mean Dice, datasets x subsets")
    stats_summary, shapley_summary = [], []
    for dataset, connector, masking in _groups(results):
        stem = f"{dataset}_{connector}_{masking}"
        subset = results.images[
            (results.images["dataset"] == dataset)
            & (results.images["connector"] == connector)
            & (results.images["masking"] == masking)
        ]
        index.figure(
            "Figures",
            f"{stem}_bars",
            lambda d=dataset, c=connector, m=masking: figures.subset_bars(results, d, connector=c, masking=m),
            f"{dataset} {connector} {masking}: mean Dice per subset, 95% CI",
        )
        if connector == "unet" and masking == RETRAINED:
            index.figure(
                "Figures",
                f"{stem}_per_image",
                lambda d=dataset: figures.per_image(results, d),
                f"{dataset}: per-image Dice per subset",
            )
        stats_summary += _write_stats(subset, stem, index, n_boot)
        shapley_summary += _write_shapley(subset, stem, index)
    for dataset in results.datasets:
        index.figure(
            "Figures",
            f"{dataset}_learning_curves",
            lambda d=dataset: figures.learning_curves(results, d),
            f"{dataset}: training loss and validation Dice per epoch (U-Net)",
        )
        index.figure(
            "Figures",
            f"{dataset}_qualitative",
            lambda d=dataset: figures.qualitative_grid(results, d),
            f"{dataset}: predictions with false positives (red) and false negatives (blue)",
        )
    if stats_summary:
        index.text(
            "Statistics", "stats/summary.md", "\n".join(stats_summary), "summary of the statistical tests"
        )
    if shapley_summary:
        content = "\n".join([*SHAPLEY_PREAMBLE, *shapley_summary])
        index.text("Shapley values", "shapley/shapley.md", content, "Shapley tables")
    summary, failure = _findings_summary(results, index, n_boot)
    atomic_write_text(out / "README.md", _readme(results, index, summary))
    if failure:
        raise ReportIncomplete(f"report written to {out}, but {failure} (traceback in {out / 'findings.md'})")
    return out


def _findings_summary(results: Results, index: _Index, n_boot: int) -> tuple[list[str], str]:
    """Write findings.md; return the README's Findings section (the decision rules, then the findings) and,
    when checking them failed, the reason ("" otherwise)."""
    try:
        checked = findings.check_findings(results, n_boot=min(n_boot, 1000))
        content = findings.findings_markdown(checked)
    except AblationError as error:  # the results lack what a finding needs, as for the other sections
        reason = f"findings could not be checked: {error}"
        index.skipped.append(f"findings: {error}")
        index.text(FINDINGS, "findings.md", f"# Findings\n\n{reason}\n", "the paper's findings (skipped)")
        return [reason, "", LINK], ""
    except Exception as error:  # noqa: BLE001 - a bug here must not cost the tables; write_report raises after
        reason = f"findings could not be computed: {type(error).__name__}: {error}".splitlines()[0]
        trace = "".join(traceback.format_exception(error))
        text = f"# Findings\n\n{reason}\n\nThis is a bug in ablation; please report it with:\n\n```\n{trace}```\n"
        index.skipped.append(f"findings: {type(error).__name__}: {error}")
        index.text(FINDINGS, "findings.md", text, "the paper's findings (failed)")
        return [reason, "", LINK], reason
    index.text(FINDINGS, "findings.md", content, "the paper's findings, checked")
    rules = [f"- {rule}" for rule in findings.decision_rules(findings.ALPHA)]
    verdicts = [f"- {f.text}" for f in checked]
    return [
        LINK,
        "",
        f"Decision rules (alpha = {findings.ALPHA}):",
        "",
        *rules,
        "",
        "Findings:",
        "",
        *verdicts,
    ], ""


def _groups(results: Results) -> list[tuple[str, str, str]]:
    counts = results.images.groupby(["dataset", "connector", "masking"])["skips"].nunique()
    keys = [key for key, n in counts.items() if n >= 2]
    connectors = list(CONNECTORS)
    # Per dataset: the retrained skip study first, then test-time masking, connectors in their usual order.
    return sorted(keys, key=lambda k: (k[0], k[2] != RETRAINED, connectors.index(k[1])))


def _write_tables(results: Results, index: _Index) -> None:
    for dataset in results.datasets:
        for table in tables.dataset_tables(results, dataset):
            for suffix, content in (("md", table.markdown()), ("tex", table.latex()), ("csv", table.csv())):
                index.text("Tables", f"tables/{table.name}.{suffix}", content, table.title)
    index.text("Tables", "tables/runs.csv", results.runs.to_csv(index=False), "every done run's metrics.json")
    index.text("Tables", "tables/gaps.csv", results.gaps().to_csv(index=False), GAPS_DESCRIPTION)


def _write_stats(subset: pd.DataFrame, stem: str, index: _Index, n_boot: int) -> list[str]:
    scores = image_means(subset)
    lines = [f"## {stem.replace('_', ' · ')}", ""]
    for reference, name in (("1111", "vs_all"), ("0000", "vs_none")):
        if reference not in scores.columns:
            index.skipped.append(f"stats {stem}_{name}: no results for {skip_label(reference)}")
            continue
        table = stats.compare_to_reference(scores, reference, n_boot=n_boot)
        index.text(
            "Statistics",
            f"stats/{stem}_{name}.csv",
            table.to_csv(index=False),
            f"Wilcoxon + Holm, each subset {name.replace('_', ' ')}",
        )
        significant = table[table["significant"]]
        lines.append(
            f"- Against {skip_label(reference)}: {len(significant)} of {len(table)} subsets differ after "
            f"Holm correction ({', '.join(skip_label(s) for s in significant['skips']) or 'none'})."
        )
    boot = stats.bootstrap_table(scores, n_boot=n_boot)
    index.text(
        "Statistics",
        f"stats/{stem}_bootstrap.csv",
        boot.to_csv(index=False),
        "mean Dice per subset with 95% bootstrap CI over images",
    )
    try:
        result = stats.friedman_test(scores)
    except AblationError as error:
        index.skipped.append(f"Friedman test {stem}: {error}")
    else:
        ranks = pd.DataFrame({"skips": result.ranks.index, "average_rank": result.ranks.to_numpy()})
        ranks["subset"] = [skip_label(s) for s in ranks["skips"]]
        index.text(
            "Statistics",
            f"stats/{stem}_friedman_ranks.csv",
            ranks.to_csv(index=False),
            "average ranks (1 = best) of the Friedman test",
        )
        index.figure(
            "Statistics",
            f"{stem}_critical_difference",
            lambda: figures.critical_difference(result, f"{stem}: "),
            "critical-difference plot",
        )
        cliques = "; ".join("{" + ", ".join(skip_label(s) for s in c) + "}" for c in result.cliques) or "none"
        lines.append(
            f"- Friedman over {result.n_subsets} subsets and {result.n_images} images: chi2 = "
            f"{result.statistic:.2f}, p = {result.p_value:.2g}; Nemenyi CD = "
            f"{result.critical_difference:.2f}; best average rank {skip_label(result.ranks.index[0])} "
            f"({result.ranks.iloc[0]:.2f}); groups not distinguishable: {cliques}."
        )
    stability = stats.best_subset_stability(scores, n_boot=n_boot)
    frame = pd.DataFrame({"skips": stability.index, "fraction_best": stability.to_numpy()})
    frame["subset"] = [skip_label(s) for s in frame["skips"]]
    index.text(
        "Statistics",
        f"stats/{stem}_best_stability.csv",
        frame.to_csv(index=False),
        "fraction of image resamples in which each subset is best",
    )
    if stem.endswith(f"_unet_{RETRAINED}"):  # the skip study proper; other groups keep the CSV only
        index.figure(
            "Statistics",
            f"{stem}_best_stability",
            lambda: figures.stability_figure(stability, f"{stem}: "),
            "best-subset stability",
        )
    top = ", ".join(f"{skip_label(s)} {f:.0%}" for s, f in stability.head(3).items())
    lines += [f"- Best subset under image resampling: {top}.", ""]
    return lines


def _write_shapley(subset: pd.DataFrame, stem: str, index: _Index) -> list[str]:
    replicates = replicate_means(subset).pivot_table(index=["seed", "split"], columns="skips", values="dice")
    try:
        result = shapley.shapley_analysis(replicates)
    except AblationError as error:
        index.skipped.append(f"Shapley values {stem}: {error}")
        return []
    index.text(
        "Shapley values",
        f"shapley/{stem}_skips.csv",
        result.skips.to_csv(index=False),
        "Shapley values and main effects of L1..L4 (points, 95% t-interval)",
    )
    index.text(
        "Shapley values",
        f"shapley/{stem}_interactions.csv",
        result.interactions.to_csv(index=False),
        "pairwise Shapley interaction indices (points)",
    )
    index.figure(
        "Shapley values",
        f"{stem}_shapley",
        lambda: figures.shapley_figure(result, stem),
        "Shapley values, main effects and interactions",
    )
    lines = [
        f"## {stem.replace('_', ' · ')}",
        "",
        f"Dice(all) - Dice(none) = {result.total:.2f} points over {result.n_replicates} complete replicates.",
        "",
        "| Skip | Shapley (95% CI) | Main effect (95% CI) | Alone - none | All - without |",
        "|---|---|---|---|---|",
    ]
    for _, row in result.skips.iterrows():
        lines.append(
            f"| {row['skip']} | {row['shapley']:.2f} [{row['shapley_ci_low']:.2f}, "
            f"{row['shapley_ci_high']:.2f}] | {row['main_effect']:.2f} [{row['main_ci_low']:.2f}, "
            f"{row['main_ci_high']:.2f}] | {row['alone_gain']:.2f} | {row['drop_loss']:.2f} |"
        )
    lines += ["", "| Pair | Interaction (95% CI) |", "|---|---|"]
    for _, row in result.interactions.iterrows():
        lines.append(
            f"| {row['pair']} | {row['interaction']:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}] |"
        )
    return lines + [""]


def _apart_lines(results: Results) -> list[str]:
    """The README's section on datasets kept apart (runs of one name that are not pooled), or nothing."""
    notes = [apart_note(results, label) for label in results.apart.drop_duplicates("name")["dataset"]]
    if not notes:
        return []
    return ["## Datasets kept apart", "", *[f"- {note}" for note in notes], ""]


def _readme(results: Results, index: _Index, findings_lines: list[str]) -> str:
    done = len(results.runs)
    stale = (
        results.runs[results.runs["stale"].fillna("") != ""] if "stale" in results.runs else results.runs[:0]
    )
    stale_note = f" ({len(stale)} stale: the data or split changed since; see Gaps)" if len(stale) else ""
    lines = [
        "# Skip-connection ablation report",
        "",
        f"Results folder: `{results.root}`. Done runs: {done}{stale_note}; failed or damaged: "
        f"{len(results.failed)}; running or not started yet: {len(results.incomplete)}; combinations of the "
        f"expected grid without a done run: {len(results.missing)} (every such run is listed under Gaps).",
        "",
        "Every number is computed from these runs, except the paper's: those appear only in columns labelled "
        '"reported" and in the findings\' "Paper\'s claim", quoted from secondary sources (each table\'s '
        "notes name them), never measured here. Dice and IoU are in percent: mean ± std over seeds and folds "
        "of each run's mean test score.",
        "",
        *_apart_lines(results),
        "## Protocol behind the verdicts",
        "",
        *findings.protocol_lines(results),
        "",
        "## Findings",
        "",
        *findings_lines,
        "",
    ]
    for section, entries in index.sections.items():
        if section == FINDINGS:  # linked from the Findings section above
            continue
        lines += [f"## {section}", ""]
        lines += [f"- [`{path}`]({path}): {description}" for path, description in entries]
        lines.append("")
    lines += ["## Gaps", ""]
    complete = results.failed.empty and results.incomplete.empty and results.missing.empty
    if complete and not index.skipped and not results.unreadable and stale.empty:
        lines += ["None: every expected run is done and every item was written.", ""]
    for _, row in stale.iterrows():
        lines.append(
            f"- stale (kept in the tables; `ablation run --rerun-stale` trains it again): `{row['run_name']}`: "
            f"{row['stale']}"
        )
    for _, row in results.failed.iterrows():
        lines.append(f"- {row['status']}: `{row['run_name']}`: {row['error']}")
    lines += [f"- damaged: {message}" for message in results.unreadable]
    for _, row in results.incomplete.iterrows():
        lines.append(f"- {row['status']}: `{row['run_name']}`")
    absent = results.missing[results.missing["status"] == "absent"]
    for _, row in absent.iterrows():
        lines.append(
            f"- missing: {row['dataset']} {row['connector']} {skip_label(row['skips'])} seed {row['seed']} "
            f"{row['split']}"
        )
    lines += [f"- skipped {item}" for item in index.skipped]
    return "\n".join(lines) + "\n"
