"""The exploration notebook executes end to end on a small generated results folder."""

from __future__ import annotations

from pathlib import Path

import nbformat
from fake_results import make_fake_results
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "explore_results.ipynb"


def test_notebook_executes(tmp_path, monkeypatch):
    results = tmp_path / "results"
    make_fake_results(
        results,
        datasets=("glas",),
        connectors=("unet", "uctransnet"),
        seeds=(0,),
        folds=(0, 1),
        n_images=5,
        predictions=2,
        history_epochs=3,
        missing=[{"skips": "0101", "fold": 1}],
    )
    monkeypatch.setenv("ABLATION_RESULTS", str(results))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook, timeout=50, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"{results}: 33 done runs" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 8  # bars, per-image, heatmap, curves, qualitative, CD, stability, Shapley
    markdown = "".join(o["data"].get("text/markdown", "") for o in outputs if o.output_type == "display_data")
    assert "Finding 1, GlaS: U-Net-none minus U-Net-all" in markdown
    assert "Dice (reported)" in markdown
    shown = "".join(o.get("data", {}).get("text/plain", "") for o in outputs)
    assert "absent" in shown  # the gaps: the two runs of the grid that were never started
