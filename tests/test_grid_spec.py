"""Experiment specs: parsing, validation, grid expansion, run naming and --only filters."""

from __future__ import annotations

from pathlib import Path

import pytest

from ablation.cli import main
from ablation.errors import AblationError
from ablation.grid import expand_spec, load_spec, select_runs
from ablation.skips import ALL_SUBSETS
from ablation.store.layout import run_name

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
TINY = {
    "datasets": ["synthetic-nuclei"],
    "subsets": ["none", "all"],
    "model": {"img_size": 32, "base_channels": 4},
}


@pytest.mark.parametrize(
    ("spec", "count"),
    [
        ("paper_skip_study.toml", 16 * 2 * 15),  # 16 subsets x GlaS, MoNuSeg x 3 repeats x 5 folds
        ("paper_module_ablation.toml", 4 * 2 * 15),  # 4 connectors with all skips
        (
            "demo.toml",
            (16 + 3) * 2 * 2,
        ),  # U-Net x 16 subsets + CCT, CCA, UCTransNet at all skips; 2 datasets x 2 seeds
    ],
)
def test_shipped_specs_dry_run_counts(
    spec: str, count: int, capsys: pytest.CaptureFixture[str], tmp_path: Path
):
    configs = expand_spec(EXPERIMENTS / spec)
    assert len(configs) == count
    assert len({run_name(c) for c in configs}) == count
    assert main(["run", str(EXPERIMENTS / spec), "--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    lines, cost = out[: count + 1], out[count + 1 :]  # the listing, then the grid's cost (test_cost.py)
    assert all(line.startswith("pending  ") for line in lines[:-1])
    assert lines[-1] == f"{count} runs in {tmp_path}: 0 done, 0 running, 0 failed, {count} pending"
    assert cost[0].startswith(f"cost: {count} runs")
    assert not any(tmp_path.iterdir()), "a dry run writes nothing"


def test_paper_skip_study_protocol():
    configs = expand_spec(EXPERIMENTS / "paper_skip_study.toml")
    assert {c.model.skips for c in configs} == set(ALL_SUBSETS)
    assert {(c.repeat, c.fold) for c in configs} == {(r, f) for r in range(3) for f in range(5)}
    first = configs[0]
    assert (first.model.img_size, first.model.base_channels, first.model.connector) == (224, 64, "unet")
    assert (first.train.max_epochs, first.train.patience, first.train.batch_size) == (2000, 50, 4)
    assert {c.dataset for c in configs} == {"glas", "monuseg"}


def test_demo_masks_only_all_skips_runs():
    configs = expand_spec(EXPERIMENTS / "demo.toml")
    masked = [c for c in configs if c.train.test_time_masks]
    assert {(c.model.connector, c.model.skips) for c in masked} == {
        (connector, "1111") for connector in ("unet", "cct", "cca", "uctransnet")
    }
    assert (
        all(c.model.skips == "1111" for c in masked) and len(masked) == 4 * 2 * 2
    )  # connectors x datasets x seeds


def test_expansion_order_replicates_outermost():
    spec = {**TINY, "seeds": [0, 1], "folds": [0, 2], "num_folds": 3}
    configs = expand_spec(spec)
    assert [(c.fold, c.seed, c.model.skips) for c in configs[:4]] == [
        (0, 0, "0000"),
        (0, 0, "1111"),
        (0, 1, "0000"),
        (0, 1, "1111"),
    ]
    assert {c.num_folds for c in configs} == {3} and len(configs) == 8


def test_run_names_are_deterministic_and_readable():
    first = [run_name(c) for c in expand_spec(TINY)]
    assert first == [run_name(c) for c in expand_spec(dict(TINY))]
    assert first[0].startswith("synthetic-nuclei_unet_0000_s0_official_")
    changed = [run_name(c) for c in expand_spec({**TINY, "train": {"lr": 0.01}})]
    assert set(first).isdisjoint(changed), "a training override changes the run's identity"


def test_overrides_are_applied_and_dataset_tables_accepted():
    spec = {
        **TINY,
        "data_root": "/data",
        "datasets": ["synthetic-nuclei", {"name": "/elsewhere/MyData", "data_root": "/unused"}],
        "train": {"max_epochs": 3, "lr": 1e-4},
    }
    configs = expand_spec(spec)
    assert {(c.dataset, c.data_root) for c in configs} == {
        ("synthetic-nuclei", "/data"),
        ("/elsewhere/MyData", "/unused"),
    }
    assert {c.train.max_epochs for c in configs} == {3} and {c.train.lr for c in configs} == {1e-4}
    assert {c.model.img_size for c in configs} == {32}
    assert run_name(configs[-1]).startswith("mydata_unet_1111_")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"epochs": 3}, "unknown key 'epochs': valid keys are name, description, out, datasets"),
        ({"train": {"max_epoch": 3}}, "unknown config key 'train.max_epoch': valid keys are max_epochs"),
        ({"model": {"base": 4}}, "unknown config key 'model.base': valid keys are connector"),
        ({"model": {"skips": "1011"}}, "'model.skips' is set by the top-level key 'subsets'"),
        ({"train": {"test_time_masks": True}}, "set by the top-level key 'test_time_masks'"),
        ({"train": {"lr": "fast"}}, "config key 'train.lr': expected a number"),
        ({"connectors": ["unet", "transunet"]}, "unknown connector 'transunet': choose one of unet, cct"),
        ({"subsets": ["10"]}, "invalid skip subset '10'"),
        ({"folds": "official", "repeats": 3}, "'repeats' = 3 needs k-fold 'folds'"),
        ({"folds": [0, 5]}, "fold 5 out of range for num_folds = 5"),
        ({"folds": 1}, "'folds' must be an integer >= 2"),
        ({"folds": "all"}, "'folds' must be 'official', an integer k >= 2 or a list"),
        ({"datasets": []}, "'datasets' must be a non-empty list"),
        ({"datasets": [{"root": "x"}]}, "unknown key 'datasets.root': valid keys are name, data_root"),
        ({"subsets": {"unet": "all", "cca": ["all"]}, "connectors": ["unet"]}, "unknown key 'subsets.cca'"),
        ({"pack_size": 0}, "'pack_size' must be 'auto' or a positive integer"),
        ({"test_time_masks": "yes"}, "'test_time_masks' must be true or false"),
    ],
)
def test_bad_specs_name_the_key(change: dict, message: str):
    with pytest.raises(AblationError, match=None) as raised:
        load_spec({**TINY, **change})
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_spec_file_errors_name_the_file(tmp_path: Path):
    path = tmp_path / "broken.toml"
    path.write_text('datasets = ["synthetic-nuclei"]\nsubsets = "all"\nwarmup = 3\n')
    with pytest.raises(AblationError, match=r"broken.toml: unknown key 'warmup'"):
        load_spec(path)
    path.write_text("datasets = [\n")
    with pytest.raises(AblationError, match=r"broken.toml: invalid TOML"):
        load_spec(path)
    with pytest.raises(AblationError, match=r"spec file not found: .*missing.toml"):
        load_spec(tmp_path / "missing.toml")
    assert main(["run", str(tmp_path / "missing.toml"), "--dry-run"]) == 2


def test_spec_defaults(tmp_path: Path):
    path = tmp_path / "study.toml"
    path.write_text('datasets = ["synthetic-glands"]\n')
    spec = load_spec(path)
    assert spec.name == "study" and spec.out == "results/study" and spec.pack_size is None
    configs = spec.expand()
    assert len(configs) == 16 and {c.model.connector for c in configs} == {"unet"}
    assert {(c.fold, c.repeat, c.seed) for c in configs} == {(None, 0, 0)}


def test_select_runs_filters():
    configs = expand_spec({**TINY, "datasets": ["synthetic-nuclei", "synthetic-glands"], "subsets": "paper"})
    assert len(configs) == 20
    assert len(select_runs(configs, ["dataset=synthetic-glands"])) == 10
    assert [c.model.skips for c in select_runs(configs, ["skips=L1+L3+L4", "dataset=synthetic-nuclei"])] == [
        "1011"
    ]
    assert len(select_runs(configs, ["skips=none|all"])) == 4
    assert len(select_runs(configs, ["dataset=synthetic-glands,skips=1000"])) == 1
    assert len(select_runs(configs, ["*_unet_01??_*"])) == 2 * 2  # 0100 and 0111 on each dataset
    assert len(select_runs(configs, ["nuclei_unet_1111"])) == 1
    assert select_runs(configs, None) == configs
    with pytest.raises(AblationError, match="unknown key 'subset': valid keys are dataset, connector, skips"):
        select_runs(configs, ["subset=1111"])
