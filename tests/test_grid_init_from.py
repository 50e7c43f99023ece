"""The grid and train.init_from: sources first (in-process, worker processes, Ray), a failed source fails its
dependents, plan-time errors for cycles and missing sources, packs that never mix a run and its source, and
replicates that pair seeds with folds (the budget specs)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from test_grid_fakes import ENTRY_PREFIX, entries, fake_train, source_checking_train, unet_failing_train

from ablation.cli import main
from ablation.errors import AblationError
from ablation.grid import expand_spec, grid_status, plan_units, run_grid
from ablation.grid.order import UnitOrder
from ablation.packing import can_pack
from ablation.sources import resolve_sources
from ablation.store.layout import METRICS_FILE, run_name
from ablation.store.state import read_run_state

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
SPEC = {
    "datasets": ["synthetic-nuclei"],
    "connectors": ["unet", "cca", "cct"],
    "subsets": ["all"],
    "seeds": [0, 1],
    "model": {"img_size": 32, "base_channels": 4},
    "train": {"max_epochs": 1, "min_best_epoch": 0, "init_from": {"cca": "unet/1111", "cct": "unet/1111"}},
}


def _entered_ns(run_dir: Path) -> int:
    (mark,) = run_dir.glob(ENTRY_PREFIX + "*")
    return int(mark.name.split("-")[2])


@pytest.mark.parametrize("workers", [1, 2])
def test_sources_are_done_before_their_dependents_start(tmp_path: Path, workers: int):
    configs = expand_spec(SPEC)
    # Grid order puts each seed's CCA and CCT right after its U-Net: only the dependency order holds them back.
    assert [c.model.connector for c in configs] == ["unet", "cca", "cct"] * 2
    summary = run_grid(configs, tmp_path, workers=workers, train_unit=source_checking_train, progress=False)
    assert summary.exit_code == 0 and len(summary.names("done")) == 6, summary.format()
    for config in configs:
        if config.train.init_from:
            source = tmp_path / config.train.init_from_run
            done_ns = (source / METRICS_FILE).stat().st_mtime_ns
            assert _entered_ns(tmp_path / run_name(config)) >= done_ns


def test_ray_trains_dependents_after_their_sources(tmp_path: Path):
    ray = pytest.importorskip("ray")
    # The real engine refuses to start a run whose source is not done, so a dependent scheduled too early fails.
    train = {**SPEC["train"], "init_from": {"cca": "unet/1111"}}
    configs = expand_spec({**SPEC, "connectors": ["unet", "cca"], "seeds": [0], "train": train})
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        summary = run_grid(configs, tmp_path, backend="ray", progress=False)
    finally:
        ray.shutdown()
    assert summary.exit_code == 0 and len(summary.names("done")) == 2, summary.format()


def test_a_failed_source_fails_its_dependents_with_a_reason_naming_it(tmp_path: Path):
    configs = expand_spec(SPEC)
    summary = run_grid(configs, tmp_path, train_unit=unet_failing_train, progress=False)
    assert summary.exit_code == 1 and len(summary.failed) == 6
    for config in configs:
        run_dir = tmp_path / run_name(config)
        if not config.train.init_from:
            continue
        (outcome,) = [o for o in summary.failed if o.name == run_dir.name]
        assert outcome.error == (
            f"source run {config.train.init_from_run} (train.init_from 'unet/1111') is failed: "
            "ValueError: synthetic failure of a source"
        )
        assert read_run_state(run_dir)[2]["status"] == f"failed: {outcome.error}"
        assert entries(run_dir) == 0, "a run whose source failed is not trained"
    # Rerun: the sources are retried first, then their dependents.
    again = run_grid(configs, tmp_path, train_unit=fake_train, progress=False)
    assert again.exit_code == 0 and len(again.names("done")) == 6


@pytest.mark.parametrize(
    ("init_from", "message"),
    [
        (
            {"cca": "unet/1011"},
            "run synthetic-nuclei_cca_1111_s0_official: train.init_from 'unet/1011' names no run of this grid "
            "with its dataset, split, seed, width and image size; valid choices: 'unet/1111', 'cct/1111', '' for "
            "random weights",
        ),
        (
            {"cca": "cct/1111", "cct": "cca/1111"},
            "train.init_from 'cct/1111' forms a cycle (cca/1111 -> cct/1111 -> cca/1111)",
        ),
        ({"cca": "cca/1111"}, "train.init_from 'cca/1111' names the run itself"),
        ({"cca": "unet"}, "config key 'train.init_from.cca': expected '<connector>/<skips>'"),
        (
            {"nope": "unet/1111"},
            "unknown key 'train.init_from.nope': valid keys are the connectors unet, cca, cct",
        ),
    ],
)
def test_bad_sources_are_one_line_errors_at_plan_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], init_from: dict, message: str
):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({**SPEC, "train": {**SPEC["train"], "init_from": init_from}}))
    assert main(["run", str(spec), "--dry-run", "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(f"error: {spec}: ") and message in error
    assert not (tmp_path / "out").exists()


def test_a_source_left_out_by_only_must_be_done(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(SPEC))
    out = tmp_path / "out"
    only = ["--only", "connector=cca", "--only", "seed=0"]
    assert main(["run", str(spec), "--dry-run", "--out", str(out), *only]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "train.init_from 'unet/1111'), which is pending in" in error
    assert "select it too" in error
    (source,) = [c for c in expand_spec(SPEC) if c.model.connector == "unet" and c.seed == 0]
    run_grid([source], out, train_unit=fake_train, progress=False)
    assert main(["run", str(spec), "--dry-run", "--out", str(out), *only]) == 0
    unresolved = [_with_train(c, init_from_run="") for c in expand_spec(SPEC) if c.train.init_from]
    with pytest.raises(AblationError, match="is not resolved to a run"):
        run_grid(unresolved, out, train_unit=fake_train, progress=False)


def _with_train(config, **train):
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **train))


def test_packs_never_mix_a_run_and_its_source():
    # U-Net subsets are maskable: without init_from, the three subsets of both seeds share one pack.
    spec = {**SPEC, "connectors": ["unet"], "subsets": ["all", "1011", "0111"], "train": {"max_epochs": 1}}
    plain = expand_spec(spec)
    assert len(plan_units(plain, 16)) == 1
    # 1011 and 0111 start from U-Net-all of their seed.
    configs = resolve_sources(
        [c if c.model.skips == "1111" else _with_train(c, init_from="unet/1111") for c in plain]
    )
    units = plan_units(configs, 16)
    assert [len(unit) for unit in units] == [2, 4]  # the sources of both seeds; the dependents of both seeds
    assert {c.train.init_from for c in units[0]} == {""} and can_pack(units[1])
    assert len({c.train.init_from_run for c in units[1]}) == 2, "each seed's runs start from their own source"
    order = UnitOrder(units)
    assert order.ready() == [0] and order.ready() == []
    order.finish(0)
    assert order.ready() == [1]
    with pytest.raises(AblationError, match="a unit holds a run and its source"):
        UnitOrder([[units[0][0], units[1][0]]])


def test_replicates_pair_seeds_with_folds():
    spec = {**SPEC, "connectors": ["unet"], "train": {"max_epochs": 1}}
    del spec["seeds"]
    replicates = [{"seed": 0, "fold": 0}, {"seed": 1, "fold": 1}, {"seed": 2, "fold": 2, "repeat": 1}]
    configs = expand_spec({**spec, "replicates": replicates, "num_folds": 3})
    assert [(c.seed, c.fold, c.repeat, c.num_folds) for c in configs] == [
        (0, 0, 0, 3),
        (1, 1, 0, 3),
        (2, 2, 1, 3),
    ]
    official = expand_spec({**spec, "replicates": [{"seed": 3}, {"seed": 4, "fold": "official"}]})
    assert [(c.seed, c.fold) for c in official] == [(3, None), (4, None)]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seeds": [0]}, "'replicates' replaces 'seeds', 'folds' and 'repeats': drop 'seeds'"),
        ({"folds": 5}, "drop 'folds'"),
        ({"replicates": [{"fold": 0}]}, "needs 'seed'"),
        ({"replicates": [{"seed": 0, "fold": 5}]}, "fold 5 out of range for num_folds = 5"),
        (
            {"replicates": [{"seed": 0, "fold": 0, "split": 1}]},
            "unknown key 'replicates.split': valid keys are",
        ),
        (
            {"replicates": [{"seed": 0, "fold": 0}, {"seed": 0, "fold": 0}]},
            "lists {seed = 0, fold = 0, repeat = 0} twice",
        ),
        ({"replicates": [{"seed": 0}, {"seed": 1, "fold": 1}]}, "mixes the official split with fold indices"),
        ({"replicates": [{"seed": 0, "repeat": 1}]}, "repeat 1 needs a k-fold 'fold'"),
        ({"replicates": [{"seed": "0", "fold": 1}]}, "config key 'replicates.seed': expected an integer"),
        ({"replicates": [0, 1]}, "'replicates' entries must be tables"),
        ({"replicates": []}, "'replicates' must be a non-empty list"),
    ],
)
def test_bad_replicates_name_the_key(change: dict, message: str):
    spec = {key: value for key, value in SPEC.items() if key != "seeds"}
    spec["replicates"] = [{"seed": 0, "fold": 0}]
    with pytest.raises(AblationError, match=re.escape(message)):
        expand_spec({**spec, **change})


def test_budget_specs_pair_seeds_with_folds_and_share_the_unet_all_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    skip_study = expand_spec(EXPERIMENTS / "paper_skip_study_budget.toml")
    modules = expand_spec(EXPERIMENTS / "paper_module_ablation_budget.toml")
    assert len(skip_study) == 96 and len(modules) == 24
    for configs in (skip_study, modules):
        assert {(c.seed, c.fold, c.repeat, c.num_folds) for c in configs} == {(s, s, 0, 5) for s in range(3)}
    shared = {run_name(c) for c in skip_study} & {run_name(c) for c in modules}
    assert shared == {run_name(c) for c in modules if c.model.connector == "unet"} and len(shared) == 6
    for config in modules:
        wanted = "" if config.model.connector == "unet" else "unet/1111"
        assert config.train.init_from == wanted
        if wanted:
            assert config.train.init_from_run in shared
    out = tmp_path / "paper"
    for spec, count in (("paper_skip_study_budget.toml", 96), ("paper_module_ablation_budget.toml", 24)):
        assert main(["run", str(EXPERIMENTS / spec), "--dry-run", "--out", str(out)]) == 0
        lines = capsys.readouterr().out.splitlines()[: count + 1]  # the listing; the grid's cost follows
        assert lines[-1] == f"{count} runs in {out}: 0 done, 0 running, 0 failed, {count} pending"
    assert grid_status(out, modules)[0].status == "pending"
