"""Paper-style tables in Markdown, LaTeX and CSV, with the paper's reported numbers beside ours.

Values are mean ± std (sample std, ddof=1) over seeds and folds of each run's mean test Dice/IoU, in percent, as in
UCTransNet (Wang et al., AAAI 2022), Tables 1 and 3 and the skip study of Fig. 3. The paper's numbers come from
``ablation/resources/paper_results.csv`` (secondary sources) and are always in columns labelled "reported".
"""

from __future__ import annotations

import dataclasses
import io
from importlib import resources

import numpy as np
import pandas as pd

from ablation.config import CONNECTORS
from ablation.report.load import RETRAINED, TEST_TIME, Results, apart_note
from ablation.skips import ALL_SUBSETS, PAIR_SUBSETS, PAPER_SUBSETS, paper_label, skip_label


@dataclasses.dataclass
class Column:
    """How one table column is shown: ``key`` (and ``std_key`` for mean ± std), digits, and which is best."""

    header: str
    key: str
    std_key: str | None = None
    digits: int | None = 2  # None: shown as text
    std_digits: int | None = None  # digits of the std when they differ (reported stds have one decimal)
    best: str | None = None  # "max" or "min": bold the best value


@dataclasses.dataclass
class Table:
    """A table: numeric ``data`` (written as CSV) and the ``columns`` that render it as Markdown or LaTeX."""

    name: str
    title: str
    data: pd.DataFrame
    columns: list[Column]
    notes: list[str] = dataclasses.field(default_factory=list)

    def cells(self, *, bold: tuple[str, str], dash: str, pm: str) -> list[list[str]]:
        best = {}
        for column in self.columns:
            values = pd.to_numeric(self.data[column.key], errors="coerce") if column.best else None
            if values is not None and values.notna().any():
                best[column.key] = values.max() if column.best == "max" else values.min()
        rows = []
        for _, record in self.data.iterrows():
            row = []
            for column in self.columns:
                value = record[column.key]
                if column.digits is None:
                    text = dash if _blank(value) else str(value)
                elif _blank(value):
                    text = dash
                else:
                    text = f"{float(value):.{column.digits}f}"
                    std = record[column.std_key] if column.std_key else None
                    if std is not None and not _blank(std):
                        text += f"{pm}{float(std):.{column.std_digits or column.digits}f}"
                    if column.key in best and np.isclose(float(value), best[column.key]):
                        text = f"{bold[0]}{text}{bold[1]}"
                row.append(text)
            rows.append(row)
        return rows

    def markdown(self) -> str:
        headers = [c.header for c in self.columns]
        lines = [f"**{self.title}**", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        for row in self.cells(bold=("**", "**"), dash="–", pm=" ± "):
            lines.append("| " + " | ".join(row) + " |")
        lines += ["", *[f"_{note}_" for note in self.notes]]
        return "\n".join(lines).rstrip() + "\n"

    def latex(self) -> str:
        spec = "".join("l" if c.digits is None else "r" for c in self.columns)
        lines = [
            "\\begin{table}[t]",
            "\\centering",
            f"\\caption{{{_tex(self.title)}}}",
            f"\\begin{{tabular}}{{{spec}}}",
            "\\toprule",
            " & ".join(_tex(c.header) for c in self.columns) + " \\\\",
            "\\midrule",
        ]
        for row in self.cells(bold=("\\textbf{", "}"), dash="--", pm=" $\\pm$ "):
            lines.append(" & ".join(_tex_cell(cell) for cell in row) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}"]
        lines += [f"\\\\[2pt]\\footnotesize {_tex(note)}" for note in self.notes]
        lines.append("\\end{table}")
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        buffer = io.StringIO()
        self.data.to_csv(buffer, index=False)
        return buffer.getvalue()


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA


_TEX_ESCAPES = {
    "\\": "\\textbackslash{}",
    "&": "\\&",
    "%": "\\%",
    "_": "\\_",
    "#": "\\#",
    "$": "\\$",
    "±": "$\\pm$",
}


def _tex(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))


def _tex_cell(cell: str) -> str:
    # Cells we formatted ourselves already carry LaTeX; only free text needs escaping.
    if cell.startswith("\\textbf{") or "$\\pm$" in cell:
        return cell
    return _tex(cell)


def reported_results() -> pd.DataFrame:
    """The paper's numbers as found in secondary sources (package data ``resources/paper_results.csv``)."""
    text = resources.files("ablation").joinpath("resources/paper_results.csv").read_text(encoding="utf-8")
    frame = pd.read_csv(io.StringIO(text), dtype={"skips": str, "table": str, "dataset": str, "method": str})
    frame["skips"] = frame["skips"].fillna("").str.zfill(4).where(frame["skips"].notna(), "")
    return frame


def _reported_row(
    reported: pd.DataFrame, dataset: str, methods: tuple[str, ...], skips: str
) -> pd.Series | None:
    rows = reported[(reported["dataset"].str.lower() == dataset.lower()) & (reported["skips"] == skips)]
    for method in methods:
        match = rows[rows["method"] == method]
        if not match.empty:
            return match.sort_values("table", ascending=False).iloc[0]
    return None


def variant_summary(results: Results, dataset: str, masking: str = RETRAINED) -> pd.DataFrame:
    """Mean ± std over replicates of per-run mean Dice/IoU (percent), runs, parameters (M) and GFLOPs.

    Returns:
        One row per (connector, skips) with runs for ``dataset`` and ``masking``.
    """
    columns = [
        "connector",
        "skips",
        "runs",
        "dice_mean",
        "dice_std",
        "iou_mean",
        "iou_std",
        "params_m",
        "gflops",
    ]
    images = results.images
    images = images[(images["dataset"] == dataset) & (images["masking"] == masking)]
    if images.empty:
        return pd.DataFrame(columns=columns)
    per_run = images.groupby(["connector", "skips", "run_id"], as_index=False)[["dice", "iou"]].mean()
    sizes = results.runs[["run_id", "parameters", "gflops"]].drop_duplicates("run_id")
    per_run = per_run.merge(sizes, on="run_id", how="left")
    summary = per_run.groupby(["connector", "skips"], as_index=False).agg(
        runs=("run_id", "nunique"),
        dice_mean=("dice", "mean"),
        dice_std=("dice", "std"),
        iou_mean=("iou", "mean"),
        iou_std=("iou", "std"),
        params_m=("parameters", "mean"),
        gflops=("gflops", "mean"),
    )
    for column in ("dice_mean", "dice_std", "iou_mean", "iou_std"):
        summary[column] *= 100.0
    if masking == TEST_TIME:  # one trained model, masked: its size does not change with the mask
        summary["params_m"] = np.nan
        summary["gflops"] = np.nan
    summary["params_m"] /= 1e6
    return summary[columns]


def _expected_rows(results: Results, dataset: str) -> pd.DataFrame:
    expected = results.expected
    expected = expected[expected["dataset"] == dataset][["connector", "skips"]].drop_duplicates()
    return expected


def _order(frame: pd.DataFrame) -> pd.DataFrame:
    connector_rank = {c: i for i, c in enumerate(CONNECTORS)}
    subset_rank = {s: i for i, s in enumerate(ALL_SUBSETS)}
    return (
        frame.assign(_c=frame["connector"].map(connector_rank), _s=frame["skips"].map(subset_rank))
        .sort_values(["_c", "_s"])
        .drop(columns=["_c", "_s"])
        .reset_index(drop=True)
    )


_RESULT_COLUMNS = [
    Column("Runs", "runs", digits=0),
    Column("Dice (%)", "dice_mean", "dice_std", best="max"),
    Column("IoU (%)", "iou_mean", "iou_std", best="max"),
]
# The paper's mean ± std where the source gives the std (over its 3 x 5-fold runs), else the mean alone.
_REPORTED_COLUMNS = [
    Column("Dice (reported)", "dice_reported", "dice_reported_std", std_digits=1),
    Column("IoU (reported)", "iou_reported", "iou_reported_std", std_digits=1),
]
_SIZE_COLUMNS = [Column("Params (M)", "params_m", digits=2), Column("GFLOPs", "gflops", digits=2)]


def subset_table(results: Results, dataset: str, masking: str = RETRAINED) -> Table:
    """Every (connector, skip subset) of ``dataset``: Dice, IoU, parameters, GFLOPs; expected but missing rows
    are kept with a dash."""
    summary = variant_summary(results, dataset, masking)
    keys = summary[["connector", "skips"]]
    if masking == RETRAINED:
        keys = pd.concat([_expected_rows(results, dataset), keys]).drop_duplicates()
    data = _order(keys.merge(summary, on=["connector", "skips"], how="left"))
    data["runs"] = data["runs"].fillna(0).astype(int)
    data.insert(2, "subset", [skip_label(s) for s in data["skips"]])
    what = (
        "skip subsets masked at test time (one all-skips model per run)"
        if masking == TEST_TIME
        else "skip subsets"
    )
    columns = [Column("Connector", "connector", digits=None), Column("Skips", "subset", digits=None)]
    columns += _RESULT_COLUMNS + ([] if masking == TEST_TIME else _SIZE_COLUMNS)
    notes = ["Mean ± std over seeds and folds of per-run mean test scores; best in bold; – = no done run."]
    return Table(
        f"{dataset}_{'subsets' if masking == RETRAINED else 'test_time_masks'}",
        f"{dataset}: {what}",
        data,
        columns,
        notes,
    )


def skip_study_table(results: Results, dataset: str) -> Table:
    """The paper's Fig. 3 settings (none, all, Li alone, w/o Li) for U-Net, then the pairs it left out."""
    summary = variant_summary(results, dataset, RETRAINED)
    summary = summary[summary["connector"] == "unet"]
    order = list(PAPER_SUBSETS) + list(PAIR_SUBSETS)
    data = pd.DataFrame({"skips": order}).merge(summary, on="skips", how="left")
    data.insert(
        0,
        "setting",
        [paper_label(s) if s != "0000" and s != "1111" else f"U-Net-{skip_label(s)}" for s in order],
    )
    data.insert(2, "in_paper", ["yes" if s in PAPER_SUBSETS else "no (left out)" for s in order])
    data["runs"] = data["runs"].fillna(0).astype(int)
    reported = reported_results()
    name = results.shared_name(dataset)  # a dataset kept apart keeps its paper numbers
    rows = [_reported_row(reported, name, CONNECTORS["unet"].paper_names, s) for s in order]
    for key in ("dice", "iou"):
        data[f"{key}_reported"] = [np.nan if r is None else r[key] for r in rows]
        data[f"{key}_reported_std"] = [np.nan if r is None else r[f"{key}_std"] for r in rows]
    columns = [
        Column("Setting", "setting", digits=None),
        Column("Skips", "skips", digits=None),
        Column("In paper", "in_paper", digits=None),
        *_RESULT_COLUMNS,
        *_REPORTED_COLUMNS,
    ]
    masked = variant_summary(results, dataset, TEST_TIME)
    masked = masked[masked["connector"] == "unet"]
    if not masked.empty:
        data = data.merge(
            masked[["skips", "dice_mean", "dice_std"]].rename(
                columns={"dice_mean": "dice_test_time", "dice_std": "dice_test_time_std"}
            ),
            on="skips",
            how="left",
        )
        columns.append(Column("Dice, test-time mask (%)", "dice_test_time", "dice_test_time_std"))
    notes = [
        "U-Net retrained with each skip subset; mean ± std over seeds and folds; best in bold.",
        "The paper shows these settings as bars only (Fig. 3); pairs were left out 'for space'.",
        *_reported_notes(reported, name, [r for r in rows if r is not None]),
    ]
    return Table(f"{dataset}_skip_study", f"{dataset}: skip study (U-Net)", data, columns, notes)


def module_table(results: Results, dataset: str) -> Table:
    """Module ablation (the paper's Table 3): Base, Base+CCT, Base+CCA, Base+CCT+CCA, all with all skips."""
    summary = variant_summary(results, dataset, RETRAINED)
    summary = summary[summary["skips"] == "1111"]
    data = pd.DataFrame({"connector": list(CONNECTORS)}).merge(summary, on="connector", how="left")
    data.insert(0, "model", [CONNECTORS[c].label for c in data["connector"]])
    data["runs"] = data["runs"].fillna(0).astype(int)
    reported = reported_results()
    name = results.shared_name(dataset)
    rows = [_reported_row(reported, name, CONNECTORS[c].paper_names, "1111") for c in data["connector"]]
    for key in ("dice", "iou", "params_m", "gflops"):
        data[f"{key}_reported"] = [np.nan if r is None else r[key] for r in rows]
    for key in ("dice", "iou"):
        data[f"{key}_reported_std"] = [np.nan if r is None else r[f"{key}_std"] for r in rows]
    columns = [
        Column("Model", "model", digits=None),
        Column("Connector", "connector", digits=None),
        *_RESULT_COLUMNS,
        *_SIZE_COLUMNS,
        *_REPORTED_COLUMNS,
        Column("Params (M, reported)", "params_m_reported", digits=1),
        Column("GFLOPs (reported)", "gflops_reported", digits=1),
    ]
    notes = [
        "All skips on; Base = U-Net, CCT = channel transformer, CCA = channel-wise cross attention.",
        *_reported_notes(reported, name, [r for r in rows if r is not None]),
    ]
    return Table(f"{dataset}_modules", f"{dataset}: module ablation", data, columns, notes)


def _reported_notes(reported: pd.DataFrame, dataset: str, rows: list[pd.Series]) -> list[str]:
    if not rows:
        return [f"No reported numbers for {dataset} in the paper-results file."]
    notes = []
    for row in rows:
        notes.append(
            f"Reported {row['method']} (the paper's numbers, not measured here): {row['source']} "
            f"({row['verified']} source); protocol: {row['protocol']}."
        )
    return list(dict.fromkeys(notes))


def dataset_tables(results: Results, dataset: str) -> list[Table]:
    """All tables of one dataset that have at least one done run behind them."""
    tables = [subset_table(results, dataset)]
    present = results.images[results.images["dataset"] == dataset]
    if ((present["connector"] == "unet") & (present["masking"] == RETRAINED)).any():
        tables.append(skip_study_table(results, dataset))
    if (present["skips"] == "1111").any() and present["connector"].nunique() > 1:
        tables.append(module_table(results, dataset))
    if (present["masking"] == TEST_TIME).any():
        tables.append(subset_table(results, dataset, TEST_TIME))
    note = apart_note(results, dataset)
    for table in tables if note else []:
        table.notes.append(note)
    return tables
