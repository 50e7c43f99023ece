"""Verdicts state the protocol they rest on, and one off the paper's protocol says so in its wording."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from fake_results import PlantedEffects, copy_as_setting, make_fake_results

from ablation.report import write_report
from ablation.report.claims import stated_verdict
from ablation.report.findings import (
    NOT_TESTABLE,
    OBSERVED,
    REPRODUCED,
    check_findings,
    findings_markdown,
)
from ablation.report.load import load_results
from ablation.report.protocol import DIFFERENT, PAPER, REDUCED, UNRECORDED, describe_protocol

# GlaS-like truth: U-Net-none ~ U-Net-all (finding 1) and L1 alone below none (finding 2).
GLAS_LIKE = PlantedEffects(skip=(-0.04, -0.01, 0.03, -0.01), interactions={(1, 3): 0.01, (1, 2): 0.02})


def _paper_protocol(source: Path, root: Path) -> Path:
    """Copy a synthetic folder's runs into ``root`` as runs trained with the paper's protocol (stopped early at
    180); returns ``root``."""
    paper = {"model.base_channels": 64, "model.img_size": 224, "train.max_epochs": 2000, "train.patience": 50}
    for run_dir in copy_as_setting(source, root, paper):
        metrics_path = run_dir / "metrics.json"
        metrics = json.loads(metrics_path.read_text())
        metrics.update(epochs_run=180, best_epoch=129, stopped_early=True)
        metrics_path.write_text(json.dumps(metrics))
    return root


def test_reduced_scale_study_says_so_beside_every_verdict(tmp_path: Path) -> None:
    make_fake_results(
        tmp_path / "results",
        datasets=("glas",),
        subsets=["0000", "1000", "0010", "1111"],
        folds=(0, 1),
        n_images=8,
        predictions=0,
        history_epochs=3,
        effects=GLAS_LIKE,
    )
    out = write_report(tmp_path / "results", tmp_path / "report", n_boot=100)
    findings = (out / "findings.md").read_text()
    readme = (out / "README.md").read_text()
    assert (
        "Finding 1, GlaS" in findings
        and "Verdict on the GlaS U-Net skip study (8 runs): reproduced at reduced scale. Paper's claim: "
        in findings
    )
    assert ": reproduced. " not in findings and ": not reproduced. " not in findings
    assert "Verdict on the GlaS U-Net skip study (8 runs): reproduced at reduced scale." in readme
    for text in (findings, readme):
        assert "## Protocol behind the verdicts" in text
        assert "| setting | paper | GlaS U-Net skip study (8 runs) |" in text
        assert "| base channels | 64 | 8 |" in text
        assert "| image size | 224 px | 32 px |" in text
        assert "| epoch budget | up to 2000, patience 50 | 3, patience 50; reached by 8 of 8 runs |" in text
        assert "| epochs run (min / median / max) | not reported | 3 / 3 / 3 |" in text
        assert "| replicates per setting | 15 (3 x 5-fold) | 2 (seeds 0; splits r0f0, r0f1) |" in text
        assert "| initialisation | unet random; uctransnet from a trained U-Net" in text
        assert (
            'verdicts worded "... at reduced scale"; departures: base channels 8 < 64; image size 32 px < 224'
            in text
        )
    assert "- the GlaS U-Net skip study (8 runs); departures from the paper's protocol: " in findings
    assert readme.index("## Protocol behind the verdicts") < readme.index("## Findings")


def test_paper_protocol_study_gets_the_plain_verdict(tmp_path: Path) -> None:
    make_fake_results(
        tmp_path / "small",
        datasets=("glas",),
        subsets=["0000", "1000", "1111"],
        seeds=(0, 1, 2),
        folds=(0, 1, 2, 3, 4),  # 3 x 5 = 15 replicates per setting, as the paper
        n_images=8,
        predictions=0,
        history_epochs=2,
        effects=GLAS_LIKE,
    )
    paper = _paper_protocol(tmp_path / "small", tmp_path / "paper")
    found = {f.finding: f for f in check_findings(load_results(paper), n_boot=200)}
    for number in ("1", "2"):
        assert found[number].verdict == REPRODUCED and found[number].stated_verdict == REPRODUCED
        assert "(45 runs): reproduced. Paper's claim: " in found[number].text
    assert found["1"].protocol is not None and found["1"].protocol.match == PAPER
    text = findings_markdown(list(found.values()))
    assert "at reduced scale" not in text.split("## glas")[1]
    assert "departures from the paper's protocol: none." in text
    assert "| epochs run (min / median / max) | not reported | 180 / 180 / 180 |" in text
    assert "| epoch budget | up to 2000, patience 50 | 2000, patience 50; reached by 0 of 45 runs |" in text


def _runs(replicates: int = 15, connectors: tuple[str, ...] = ("unet",), **columns: object) -> pd.DataFrame:
    """Done-run rows at the paper's protocol, ``replicates`` per connector; ``columns`` override or add."""
    rows = [
        {
            "connector": connector,
            "skips": "1111",
            "seed": r // 5,
            "split": f"r0f{r % 5}",
            "device": "NVIDIA H200",
            "base_channels": 64,
            "img_size": 224,
            "max_epochs": 2000,
            "patience": 50,
            "precision": "auto",
            "epochs_run": 150 + r,
            "best_epoch": 100 + r,
            "stopped_early": True,
        }
        for connector in connectors
        for r in range(replicates)
    ]
    return pd.DataFrame(rows).assign(**columns)


def test_a_budget_counts_only_where_runs_reached_it() -> None:
    not_reached = describe_protocol(_runs(max_epochs=200), "budget")
    assert not_reached.match == PAPER
    assert dict(not_reached.cells)["epoch budget"] == "200, patience 50; reached by 0 of 15 runs"
    reached = _runs(max_epochs=200)
    reached.loc[3, ["epochs_run", "stopped_early"]] = [200, False]
    protocol = describe_protocol(reached, "budget")
    assert protocol.match == REDUCED
    assert protocol.reduced == ("epoch budget 200 < 2000, reached by 1 run",)
    assert dict(protocol.cells)["epochs run (min / median / max)"] == "150 / 158 / 200"
    assert dict(protocol.cells)["precision"] == "bf16 autocast (auto on NVIDIA H200)"


@pytest.mark.parametrize(
    ("change", "match", "says"),
    [
        ({"base_channels": 16}, REDUCED, "base channels 16 < 64"),
        ({"img_size": 128}, REDUCED, "image size 128 px < 224"),
        ({"patience": 10}, REDUCED, "patience 10 < 50"),
        ({"img_size": 256}, DIFFERENT, "image size 256 px > 224"),
        ({"init_from": "unet/1111"}, DIFFERENT, "unet initialised from unet/1111 (paper: random)"),
    ],
)
def test_each_departure_is_named(change: dict, match: str, says: str) -> None:
    protocol = describe_protocol(_runs(**change), "group")
    assert protocol.match == match and says in protocol.departures()


def test_fewer_replicates_are_reduced_scale() -> None:
    protocol = describe_protocol(_runs(replicates=3), "group")
    assert protocol.match == REDUCED and protocol.reduced == ("replicates 3 < 15",)
    assert dict(protocol.cells)["replicates per setting"] == "3 (seeds 0; splits r0f0, r0f1, r0f2)"


def test_initialisation_is_read_from_init_from_when_recorded() -> None:
    random_start = describe_protocol(_runs(connectors=("unet", "uctransnet")), "module ablation")
    assert random_start.match == DIFFERENT  # no init_from column: random weights, unlike the reference
    assert "uctransnet from random weights (paper: from a trained U-Net)" in random_start.departures()
    runs = _runs(connectors=("unet", "uctransnet"), init_from=None)
    runs.loc[runs["connector"] == "uctransnet", "init_from"] = "unet/1111"
    pretrained = describe_protocol(runs, "module ablation")
    assert pretrained.match == PAPER
    assert dict(pretrained.cells)["initialisation"] == "unet random; uctransnet from unet/1111"


def test_settings_not_recorded_are_said() -> None:
    protocol = describe_protocol(_runs().drop(columns=["base_channels"]), "old runs")
    assert protocol.match == UNRECORDED and protocol.departures() == "base channels not recorded"
    assert describe_protocol(pd.DataFrame(), "nothing").match == UNRECORDED


def test_verdict_vocabulary() -> None:
    assert stated_verdict(REPRODUCED, REDUCED) == "reproduced at reduced scale"
    assert stated_verdict("not reproduced", DIFFERENT) == "not reproduced under a different protocol"
    assert stated_verdict(REPRODUCED, PAPER) == "reproduced"
    assert stated_verdict(NOT_TESTABLE, REDUCED) == NOT_TESTABLE  # nothing was judged
    assert stated_verdict(OBSERVED, REDUCED) == OBSERVED  # no paper claim on other datasets
