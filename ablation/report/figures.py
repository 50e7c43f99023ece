"""Figures of a skip study (seaborn on matplotlib ``Figure`` objects, saved as PNG and PDF).

Figures are built on :class:`matplotlib.figure.Figure` rather than pyplot, so nothing here touches a global
backend or figure registry: files are rendered with Agg (PNG) and the PDF backend, and a notebook can display the
returned figures. The qualitative grid follows the UCTransNet paper's Figs. 6-7 (Wang et al., AAAI 2022), with
false positives and false negatives in distinct colours.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ablation.config import CONNECTORS
from ablation.errors import AblationError
from ablation.io import atomic_write_bytes
from ablation.report.load import RETRAINED, Results, image_means, replicate_means
from ablation.report.shapley import LEVELS, ShapleyResult
from ablation.report.stats import FriedmanResult
from ablation.skips import ALL_SUBSETS, skip_label
from ablation.store import PREDICTIONS_FILE

TRUE_POSITIVE = np.array([60, 200, 90])  # green
FALSE_POSITIVE = np.array([230, 50, 50])  # red: predicted, not in the ground truth
FALSE_NEGATIVE = np.array([40, 110, 255])  # blue: in the ground truth, missed
OVERLAY_ALPHA = 0.6
STRIP_JITTER = 0.1  # sideways spread of the per-image dots, in category widths
# No creation date in the PDF's metadata, so the same results give the same bytes (PNG has none).
PDF_METADATA = {"CreationDate": None}


def save_figure(figure: Figure, stem: str | Path) -> list[Path]:
    """Write ``<stem>.png`` (150 dpi) and ``<stem>.pdf`` atomically; returns both paths.

    The same figure gives the same bytes every time (no creation date is written).
    """
    paths = []
    for suffix in (".png", ".pdf"):
        buffer = io.BytesIO()
        # Constrained layout already fits the figure; bbox_inches="tight" would only add another draw.
        metadata = PDF_METADATA if suffix == ".pdf" else None
        figure.savefig(buffer, format=suffix[1:], dpi=150, metadata=metadata)
        path = Path(str(stem) + suffix)
        atomic_write_bytes(path, buffer.getvalue())
        paths.append(path)
    return paths


def _select(results: Results, dataset: str, connector: str, masking: str) -> pd.DataFrame:
    images = results.images
    chosen = images[
        (images["dataset"] == dataset) & (images["connector"] == connector) & (images["masking"] == masking)
    ]
    if chosen.empty:
        raise AblationError(
            f"no done runs for dataset {dataset!r}, connector {connector!r}, masking {masking!r}"
        )
    return chosen


def _subset_order(frame: pd.DataFrame) -> list[str]:
    present = set(frame["skips"])
    return [skip_label(s) for s in ALL_SUBSETS if s in present]


def subset_bars(
    results: Results, dataset: str, *, connector: str = "unet", masking: str = RETRAINED
) -> Figure:
    """Mean Dice per skip subset with 95% bootstrap CIs.

    The CI is over seed x fold replicates (per-run means) when there are at least two; with a single replicate
    it is over test images (per-image Dice), and the title says which.
    """
    selected = _select(results, dataset, connector, masking)
    means = replicate_means(selected)
    replicates = means.groupby(["seed", "split"]).ngroups
    if replicates >= 2:
        data, over = means, f"{replicates} replicates"
    else:  # one run per subset: the spread that remains is over test images
        data = selected.groupby(["skips", "image"], as_index=False)["dice"].mean()
        over = f"{data['image'].nunique()} test images"
    data = data.assign(dice=data["dice"] * 100.0, subset=[skip_label(s) for s in data["skips"]])
    figure = Figure(figsize=(9, 3.6), layout="constrained")
    ax = figure.subplots()
    sns.barplot(
        data=data,
        x="subset",
        y="dice",
        order=_subset_order(data),
        errorbar=("ci", 95),
        seed=0,
        color="#4c72b0",
        ax=ax,
    )
    subset_means = data.groupby("subset")["dice"].mean()
    ax.set_ylim(max(0.0, subset_means.min() - 10.0), min(100.0, subset_means.max() + 5.0))
    ax.set_xlabel("skip subset")
    ax.set_ylabel("Dice (%)")
    ax.set_title(f"{dataset}: {connector}, {masking} (mean, 95% CI over {over})")
    ax.tick_params(axis="x", rotation=60)
    return figure


def heatmap(results: Results, *, masking: str = RETRAINED) -> Figure:
    """Mean Dice (%) of every dataset (and connector) x skip subset."""
    images = results.images[results.images["masking"] == masking]
    if images.empty:
        raise AblationError(f"no done runs with masking {masking!r}")
    means = replicate_means(images)
    table = means.groupby(["dataset", "connector", "skips"])["dice"].mean().unstack("skips") * 100.0
    table = table[[s for s in ALL_SUBSETS if s in table.columns]]
    rank = {c: i for i, c in enumerate(CONNECTORS)}
    table = table.iloc[sorted(range(len(table)), key=lambda i: (table.index[i][0], rank[table.index[i][1]]))]
    table.columns = [skip_label(s) for s in table.columns]
    table.index = [f"{d} · {c}" for d, c in table.index]
    figure = Figure(
        figsize=(max(6.0, 0.6 * table.shape[1] + 2.5), 0.5 * len(table) + 1.8), layout="constrained"
    )
    ax = figure.subplots()
    sns.heatmap(table, annot=True, fmt=".1f", cmap="viridis", cbar_kws={"label": "Dice (%)"}, ax=ax)
    ax.set_xlabel("skip subset")
    ax.set_ylabel("")
    ax.set_title(f"Mean Dice by dataset and skip subset ({masking})")
    return figure


def per_image(results: Results, dataset: str, *, connector: str = "unet", masking: str = RETRAINED) -> Figure:
    """Box plot of per-image Dice (averaged over seeds and folds) per subset, each image a dot."""
    scores = image_means(_select(results, dataset, connector, masking)) * 100.0
    scores.columns = [skip_label(s) for s in scores.columns]
    long = scores.reset_index().melt(id_vars="image", var_name="subset", value_name="dice").dropna()
    figure = Figure(figsize=(9, 3.8), layout="constrained")
    ax = figure.subplots()
    order = list(scores.columns)
    sns.boxplot(data=long, x="subset", y="dice", order=order, color="#dde4ef", fliersize=0, ax=ax)
    # Each image a dot, spread sideways by a seeded jitter, so the same results draw the same figure.
    jitter = np.random.default_rng(0).uniform(-STRIP_JITTER, STRIP_JITTER, len(long))
    where = long["subset"].map({subset: i for i, subset in enumerate(order)}).to_numpy(dtype=float)
    ax.scatter(where + jitter, long["dice"], s=6.0, color="#333333", alpha=0.6, linewidths=0, zorder=3)
    ax.set_xlabel("skip subset")
    ax.set_ylabel("per-image Dice (%)")
    ax.set_title(f"{dataset}: per-image Dice ({connector}, {masking}; {scores.shape[0]} test images)")
    ax.tick_params(axis="x", rotation=60)
    return figure


def learning_curves(results: Results, dataset: str, *, connector: str = "unet") -> Figure:
    """Training loss and validation Dice per epoch: mean and range over replicates, one line per subset."""
    history = results.history
    history = history[(history["dataset"] == dataset) & (history["connector"] == connector)]
    if history.empty:
        raise AblationError(f"no history.csv for dataset {dataset!r}, connector {connector!r}")
    history = history.assign(subset=[skip_label(s) for s in history["skips"]])
    panels = [c for c in ("train_loss", "val_dice") if c in history.columns]
    figure = Figure(figsize=(5.0 * len(panels), 3.6), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(panels)))
    order = _subset_order(history)
    for ax, column in zip(axes, panels):
        sns.lineplot(
            data=history,
            x="epoch",
            y=column,
            hue="subset",
            hue_order=order,
            errorbar=("pi", 100),  # the range over seeds and folds: stays within the metric's bounds
            ax=ax,
            legend=column == panels[-1],
            palette="viridis",
        )
        ax.set_title(column.replace("_", " "))
    if axes[-1].get_legend() is not None:
        sns.move_legend(axes[-1], "upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, title="subset")
    figure.suptitle(f"{dataset}: learning curves ({connector}; mean, band = range over seeds and folds)")
    return figure


def error_overlay(image: np.ndarray, mask: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """RGB picture of a prediction: true positives green, false positives red, false negatives blue.

    Args:
        image: (H, W, 3) uint8; mask, pred: (H, W) in {0, 1}.

    Returns:
        (H, W, 3) uint8.
    """
    out = image.astype(float)
    for selection, colour in (
        ((pred == 1) & (mask == 1), TRUE_POSITIVE),
        ((pred == 1) & (mask == 0), FALSE_POSITIVE),
        ((pred == 0) & (mask == 1), FALSE_NEGATIVE),
    ):
        out[selection] = (1 - OVERLAY_ALPHA) * out[selection] + OVERLAY_ALPHA * colour
    return out.clip(0, 255).astype(np.uint8)


def qualitative_grid(
    results: Results,
    dataset: str,
    variants: Sequence[tuple[str, str]] | None = None,
    *,
    n_images: int = 4,
) -> Figure:
    """Image, ground truth and each variant's prediction with errors coloured, for a few test images.

    Args:
        variants: (connector, skips) pairs; default U-Net-none, U-Net-all, the best U-Net subset and UCTransNet.
        n_images: rows (test images common to the chosen runs' predictions.npz).

    Raises:
        AblationError: if no seed/split has predictions for every chosen variant.
    """
    runs = results.runs[results.runs["dataset"] == dataset]
    variants = list(variants) if variants is not None else default_variants(results, dataset)
    arrays = _prediction_arrays(results, runs, variants)
    names = None
    for data in arrays.values():
        names = list(data["name"]) if names is None else [n for n in names if n in set(data["name"])]
    names = names[:n_images]
    if not names:
        raise AblationError(f"{dataset}: the chosen runs' predictions share no test image")
    first = arrays[variants[0]]
    columns = 2 + len(variants)
    figure = Figure(figsize=(1.9 * columns, 1.9 * len(names) + 0.6), layout="constrained")
    axes = np.atleast_2d(figure.subplots(len(names), columns))
    for row, name in enumerate(names):
        index = list(first["name"]).index(name)
        image, mask = first["image"][index], first["mask"][index]
        axes[row, 0].imshow(image)
        axes[row, 1].imshow(mask, cmap="gray", vmin=0, vmax=1)
        for column, variant in enumerate(variants, start=2):
            data = arrays[variant]
            where = list(data["name"]).index(name)
            axes[row, column].imshow(
                error_overlay(data["image"][where], data["mask"][where], data["pred"][where])
            )
        axes[row, 0].set_ylabel(str(name), fontsize=7)
    titles = ["image", "ground truth"] + [f"{c} {skip_label(s)}" for c, s in variants]
    for column, title in enumerate(titles):
        axes[0, column].set_title(title, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    legend = [
        Patch(color=TRUE_POSITIVE / 255, label="true positive"),
        Patch(color=FALSE_POSITIVE / 255, label="false positive"),
        Patch(color=FALSE_NEGATIVE / 255, label="false negative"),
    ]
    figure.legend(handles=legend, loc="outside lower center", ncol=3, fontsize=7)
    return figure


def default_variants(results: Results, dataset: str) -> list[tuple[str, str]]:
    """U-Net-none, U-Net-all, the best U-Net subset by mean Dice, and UCTransNet (those with predictions)."""
    runs = results.runs[results.runs["dataset"] == dataset]
    unet = runs[runs["connector"] == "unet"]
    variants = [("unet", s) for s in ("0000", "1111") if s in set(unet["skips"])]
    if not unet.empty:
        best = unet.groupby("skips")["dice_mean"].mean().idxmax()
        if ("unet", best) not in variants:
            variants.append(("unet", best))
    if ((runs["connector"] == "uctransnet") & (runs["skips"] == "1111")).any():
        variants.append(("uctransnet", "1111"))
    if not variants:
        raise AblationError(f"no done runs for dataset {dataset!r}")
    return variants


def _prediction_arrays(
    results: Results, runs: pd.DataFrame, variants: list[tuple[str, str]]
) -> dict[tuple[str, str], dict[str, Any]]:
    """The predictions of every variant from one seed/split that has a readable predictions.npz for each.

    A damaged predictions.npz (kept in ``results.unreadable`` for the report's gaps) makes the figure use
    another seed/split.

    Raises:
        AblationError: when no seed/split has readable predictions for every variant.
    """
    runs = runs[[(Path(p) / PREDICTIONS_FILE).exists() for p in runs["path"]]]
    damaged = None
    for _, group in runs.groupby(["seed", "split"]):
        found = {}
        for connector, skips in variants:
            match = group[(group["connector"] == connector) & (group["skips"] == skips)]
            if not match.empty:
                found[(connector, skips)] = match.iloc[0]["run_name"]
        if len(found) < len(variants):
            continue
        try:
            return {variant: results.predictions(run_name) for variant, run_name in found.items()}
        except AblationError as error:
            damaged = error
    listed = ", ".join(f"{c} {s}" for c, s in variants)
    because = f" ({damaged})" if damaged is not None else ""
    raise AblationError(f"no seed/split has readable predictions.npz for all of: {listed}{because}")


def critical_difference(result: FriedmanResult, title: str = "") -> Figure:
    """Average ranks (1 = best) with intervals of half a critical difference: non-overlapping = different."""
    ranks = result.ranks
    labels = [skip_label(s) for s in ranks.index]
    figure = Figure(figsize=(7, 0.32 * len(ranks) + 1.4), layout="constrained")
    ax = figure.subplots()
    y = np.arange(len(ranks))[::-1]
    half = result.critical_difference / 2.0
    ax.errorbar(ranks.to_numpy(), y, xerr=half, fmt="o", color="#4c72b0", ecolor="#8fa8d0", capsize=3)
    ax.set_yticks(y, labels)
    ax.set_xlim(0.5 - half, result.n_subsets + 0.5 + half)
    ax.invert_xaxis()  # best (rank 1) on the right, as in critical-difference diagrams
    ax.set_xlabel("average rank over test images (1 = best)")
    summary = (
        f"Friedman chi2 = {result.statistic:.1f}, p = {result.p_value:.2g}; "
        f"Nemenyi CD = {result.critical_difference:.2f} (alpha = {result.alpha})"
    )
    ax.set_title(f"{title.rstrip(': ')}\n{summary}" if title else summary, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    return figure


def shapley_figure(result: ShapleyResult, title: str = "") -> Figure:
    """Shapley values and main effects of L1..L4 with CIs, and the pairwise interaction matrix."""
    figure = Figure(figsize=(9, 3.6), layout="constrained")
    left, right = figure.subplots(1, 2, width_ratios=[1.3, 1])
    frame = result.skips
    x = np.arange(len(frame))
    for offset, key, low, high, label in (
        (-0.2, "shapley", "shapley_ci_low", "shapley_ci_high", "Shapley value"),
        (0.2, "main_effect", "main_ci_low", "main_ci_high", "main effect"),
    ):
        values = frame[key].to_numpy()
        errors = np.vstack([values - frame[low].to_numpy(), frame[high].to_numpy() - values])
        errors = np.nan_to_num(errors)
        left.bar(x + offset, values, width=0.4, yerr=errors, capsize=3, label=label)
    left.axhline(0.0, color="black", linewidth=0.8)
    left.set_xticks(x, frame["skip"])
    left.set_ylabel("Dice contribution (points)")
    left.legend(fontsize=8)
    left.set_title(
        f"sum = Dice(all) - Dice(none) = {result.total:.2f}; n = {result.n_replicates}", fontsize=9
    )
    matrix = pd.DataFrame(np.nan, index=list(LEVELS), columns=list(LEVELS))
    for _, row in result.interactions.iterrows():
        a, b = row["pair"].split("×")
        matrix.loc[a, b] = matrix.loc[b, a] = row["interaction"]
    bound = max(0.1, float(np.nanmax(np.abs(matrix.to_numpy()))))
    sns.heatmap(
        matrix,
        annot=True,
        fmt=".2f",
        cmap="vlag",
        vmin=-bound,
        vmax=bound,
        ax=right,
        cbar_kws={"label": "interaction (points)"},
    )
    right.set_title("Shapley interaction index", fontsize=9)
    figure.suptitle(title)
    return figure


def stability_figure(fractions: pd.Series, title: str = "") -> Figure:
    """Fraction of image bootstrap resamples in which each subset is best."""
    figure = Figure(figsize=(8, 3.0), layout="constrained")
    ax = figure.subplots()
    ordered = fractions.reindex([s for s in ALL_SUBSETS if s in fractions.index])
    ax.bar([skip_label(s) for s in ordered.index], ordered.to_numpy(), color="#55a868")
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction best")
    ax.tick_params(axis="x", rotation=60)
    ax.set_title(f"{title}how often each subset is best under image resampling", fontsize=9)
    return figure
