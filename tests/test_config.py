"""Shared modules: skip subsets, configs, atomic IO and run-folder status."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ablation.config import (
    CONNECTORS,
    ModelConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
    from_dict,
    to_dict,
)
from ablation.config_text import read_config_file
from ablation.errors import AblationError
from ablation.io import atomic_write_json, atomic_write_text, ensure_folder, read_json, read_json_table
from ablation.packing import MASKABLE_CONNECTORS
from ablation.skips import (
    ALL_SUBSETS,
    PAPER_SUBSETS,
    expand_subsets,
    paper_label,
    parse_skips,
    skip_flags,
    skip_label,
)
from ablation.store.layout import METRICS_KEYS, STATUS_FILE, run_id, run_name, split_name
from ablation.store.state import read_run_state


@pytest.mark.parametrize(
    ("spec", "canonical"),
    [
        ("1011", "1011"),
        ("L1+L3+L4", "1011"),
        ("l2", "0100"),
        ("all", "1111"),
        ("NONE", "0000"),
        ("L4+L1", "1001"),
    ],
)
def test_skip_forms(spec: str, canonical: str) -> None:
    assert parse_skips(spec) == canonical
    assert parse_skips([c == "1" for c in canonical]) == canonical


@pytest.mark.parametrize("spec", ["10x1", "11111", "L5", "", "2222", "L0", "none,L1", "L1+", 1011])
def test_invalid_skip_specs_list_the_accepted_forms(spec: object) -> None:
    with pytest.raises(AblationError, match=r"invalid skip subset .*expected 4 characters .*'all' or 'none'"):
        parse_skips(spec)  # type: ignore[arg-type]


def test_subset_sets_and_labels() -> None:
    assert len(ALL_SUBSETS) == 16 == len(set(ALL_SUBSETS))
    assert ALL_SUBSETS[0] == "0000" and ALL_SUBSETS[-1] == "1111"
    assert len(PAPER_SUBSETS) == 10 and not set(PAPER_SUBSETS) & {s for s in ALL_SUBSETS if s.count("1") == 2}
    assert expand_subsets("all") == list(ALL_SUBSETS) and expand_subsets("paper") == list(PAPER_SUBSETS)
    assert expand_subsets(["all", "1111", "L1"]) == ["1111", "1000"]
    assert skip_flags("0010") == (False, False, True, False)
    assert [skip_label(s) for s in ("0000", "1111", "1010")] == ["none", "all", "L1+L3"]
    assert [paper_label(s) for s in ("0010", "1110", "1100")] == ["L3 only", "w/o L4", "L1+L2"]


def test_config_round_trip_and_overrides() -> None:
    config = RunConfig(dataset="glas", fold=2, model=ModelConfig(skips="L1+L2"))
    assert from_dict(RunConfig, json.loads(json.dumps(to_dict(config)))) == config
    changed = apply_overrides(config, {"train.lr": "1e-4", "model.connector": "cca", "seed": "3"})
    assert (changed.train.lr, changed.model.connector, changed.seed) == (1e-4, "cca", 3)
    with pytest.raises(AblationError, match="unknown config key 'train.lrr': valid keys are max_epochs"):
        apply_overrides(config, {"train.lrr": 1})
    with pytest.raises(AblationError, match="unknown config key 'modle'"):
        from_dict(RunConfig, {"modle": {}})
    with pytest.raises(AblationError, match="config key 'train.batch_size': expected an integer, got 'four'"):
        from_dict(RunConfig, {"train": {"batch_size": "four"}})


def test_files_need_typed_values_while_set_text_is_read_as_its_type() -> None:
    with pytest.raises(AblationError, match="config key 'train.augment' must be true or false, got 'yes'"):
        from_dict(RunConfig, {"train": {"augment": "yes"}})
    with pytest.raises(AblationError, match="config key 'train.lr': expected a number, got '1e-4'"):
        from_dict(RunConfig, {"train": {"lr": "1e-4"}})
    text = {"train.augment": "no", "train.lr": "1e-4", "fold": "2", "data_root": "/d", "model.skips": "L1"}
    changed = apply_overrides(RunConfig(), text)
    assert (changed.train.augment, changed.train.lr, changed.fold, changed.data_root) == (
        False,
        1e-4,
        2,
        "/d",
    )
    assert changed.model.skips == "1000"
    with pytest.raises(AblationError, match="config key 'train.augment' must be true or false, got 'maybe'"):
        apply_overrides(RunConfig(), {"train.augment": "maybe"})


def test_settings_files_are_read_alike_from_toml_and_json(tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text("seed = 3\n[train]\nlr = 1e-4\n")
    (tmp_path / "run.json").write_text('{"seed": 3, "train": {"lr": 1e-4}}')
    expected = {"seed": 3, "train": {"lr": 1e-4}}
    assert read_config_file(tmp_path / "run.toml") == read_config_file(tmp_path / "run.json") == expected
    (tmp_path / "run.yaml").write_text("seed: 3\n")
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe\x00")
    (tmp_path / "broken.json").write_text('{"seed": ')
    (tmp_path / "list.json").write_text("[1, 2]")
    for name, message in (
        ("missing.toml", "spec file not found: "),
        ("run.yaml", "unknown format '.yaml', use .toml or .json"),
        ("binary.toml", "binary.toml: not a TOML text file (byte 0 is not UTF-8)"),
        ("broken.json", "broken.json: invalid JSON: "),
        ("list.json", "list.json: expected a table of keys at the top, found list"),
    ):
        with pytest.raises(AblationError) as raised:
            read_config_file(tmp_path / name, "spec file")
        assert message in str(raised.value)


def test_one_table_says_what_each_connector_is() -> None:
    assert list(CONNECTORS) == ["unet", "cct", "cca", "uctransnet"]
    assert [c.label for c in CONNECTORS.values()] == ["Base", "Base+CCT", "Base+CCA", "Base+CCT+CCA"]
    modules = [(c.transformer, c.channel_attention) for c in CONNECTORS.values()]
    assert modules == [(False, False), (True, False), (False, True), (True, True)]
    assert [c.upsampling for c in CONNECTORS.values()] == ["transpose", "nearest", "nearest", "nearest"]
    # Zeroing a skip equals removing it only where no transformer mixes the skips.
    assert (
        list(MASKABLE_CONNECTORS) == [name for name, c in CONNECTORS.items() if c.maskable] == ["unet", "cca"]
    )


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        ("train", {"batch_size": 0}, "'train.batch_size' must be >= 1, got 0"),
        ("train", {"lr": float("nan")}, "'train.lr' must be > 0.0, got nan"),
        ("train", {"max_epochs": 0}, "'train.max_epochs' must be >= 1"),
        ("train", {"scheduler_t0": 0}, "'train.scheduler_t0' must be >= 1"),
        ("train", {"bce_weight": -1}, "'train.bce_weight' must be >= 0.0 and <= 1.0"),
        ("train", {"precision": "fp16"}, "unknown train.precision 'fp16': choose one of auto, bf16, fp32"),
        ("model", {"img_size": 0}, "model.img_size 0 must be a multiple of 16"),
        ("model", {"img_size": 40}, "model.img_size 40 must be a multiple of 16"),
        ("model", {"attention_dropout": 2}, "'model.attention_dropout' must be >= 0.0 and < 1.0"),
        ("model", {"connector": "foo"}, "unknown connector 'foo': choose one of unet, cct, cca, uctransnet"),
        ("run", {"num_folds": 1}, "'num_folds' must be >= 2"),
        ("run", {"fold": 5}, r"fold 5 out of range: choose 0..4"),
        (
            "train",
            {"init_from": "unet"},
            r"'train.init_from': expected '<connector>/<skips>' such as 'unet/1111'",
        ),
        ("train", {"init_from": "vit/1111"}, r"\(connectors: unet, cct, cca, uctransnet\), or '' for random"),
        ("train", {"init_from": "unet/12"}, r"config key 'train.init_from': invalid skip subset"),
        ("train", {"init_from_run": "x"}, r"'train.init_from_run' \('x'\) is filled in from train.init_from"),
    ],
)
def test_invalid_values_name_the_key(section: str, values: dict, message: str) -> None:
    data = values if section == "run" else {section: values}
    with pytest.raises(AblationError, match=message):
        from_dict(RunConfig, data)


def test_init_from_is_stored_canonical() -> None:
    assert TrainConfig(init_from="uctransnet/L1+L2+L3+L4").init_from == "uctransnet/1111"
    assert TrainConfig(init_from="unet/none").init_from == "unet/0000"
    assert TrainConfig().init_from == "" and TrainConfig().init_from_run == ""
    assert apply_overrides(RunConfig(), {"train.init_from": "cca/all"}).train.init_from == "cca/1111"


def test_defaults_are_the_paper_protocol() -> None:
    train, model = TrainConfig(), ModelConfig()
    assert (train.batch_size, train.lr, train.scheduler_t0, train.scheduler_eta_min) == (4, 1e-3, 10, 1e-4)
    assert (train.patience, train.min_best_epoch, train.bce_weight, train.max_epochs) == (50, 5, 0.5, 2000)
    assert (model.img_size, model.base_channels, model.num_heads, model.num_layers) == (224, 64, 4, 4)
    assert model.patch_sizes == (16, 8, 4, 2)


def test_run_identity_ignores_speed_settings_only() -> None:
    base = RunConfig(dataset="glas")
    faster = apply_overrides(base, {"train.eval_batch_size": 64, "train.compile": True, "data_root": "/d"})
    assert run_id(faster) == run_id(base)
    assert run_id(apply_overrides(base, {"seed": 1})) != run_id(base)
    # How images are prepared changes what a run computes, so it is part of the identity.
    assert run_id(apply_overrides(base, {"interpolation": "bicubic"})) != run_id(base)
    with pytest.raises(
        AblationError, match="unknown interpolation 'area': choose one of reference, bilinear"
    ):
        apply_overrides(base, {"interpolation": "area"})
    assert run_name(RunConfig(dataset="/x/My Data", fold=1, repeat=2)).startswith(
        "my-data_unet_1111_s0_r2f1_"
    )
    assert split_name(base) == "official"


def test_atomic_writes_and_json_errors(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "a" / "b.json", {"x": 1})
    assert read_json_table(tmp_path / "a" / "b.json") == {"x": 1}
    assert oct(os.stat(tmp_path / "a" / "b.json").st_mode & 0o777) != oct(0o600)
    assert not list((tmp_path / "a").glob(".*.tmp"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(AblationError, match=r"cannot read .*bad\.json"):
        read_json(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(AblationError, match=r"list\.json: expected a JSON object, found list"):
        read_json_table(tmp_path / "list.json")
    with pytest.raises(AblationError, match="file not found"):
        read_json(tmp_path / "missing.json")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(AblationError, match=r"afile is a file, not a folder"):
        atomic_write_text(tmp_path / "afile" / "out.txt", "y")
    with pytest.raises(AblationError, match=r"afile is a file, not a folder"):
        ensure_folder(tmp_path / "afile" / "sub")


def test_run_state_reads_damaged_files(tmp_path: Path) -> None:
    config = RunConfig()
    tmp_path = tmp_path / run_name(config)  # a done run's folder is named after it
    tmp_path.mkdir()
    assert read_run_state(tmp_path)[0] == "pending"
    (tmp_path / STATUS_FILE).write_text("[1]")
    assert read_run_state(tmp_path)[:2] == ("damaged", f"cannot read {tmp_path / STATUS_FILE}: expected a JSON "
                                            "object, found list")  # fmt: skip
    atomic_write_json(tmp_path / STATUS_FILE, {"status": "running", "epoch": 3})
    assert read_run_state(tmp_path)[0] == "started" and read_run_state(tmp_path)[2]["epoch"] == 3
    atomic_write_json(tmp_path / STATUS_FILE, {"status": "failed: non-finite loss at epoch 3"})
    assert read_run_state(tmp_path)[:2] == ("failed", "non-finite loss at epoch 3")
    (tmp_path / "metrics.json").write_text("{}")  # finished, but config.json and test_metrics.csv are missing
    assert read_run_state(tmp_path)[0] == "damaged"
    atomic_write_json(tmp_path / "config.json", {"run_id": run_id(config)})
    (tmp_path / "test_metrics.csv").write_text("image,dice,iou\na,0.5,0.4\n")
    assert read_run_state(tmp_path)[:2] == ("damaged", f"{tmp_path / 'metrics.json'}: missing key 'status'")
    numbers = dict.fromkeys(METRICS_KEYS, 0)  # every key, then the ones that are not integers
    numbers.update(status="done", run_id=run_id(config), run_name=tmp_path.name, dataset=config.dataset)
    numbers.update(connector="unet", skips="1111")
    atomic_write_json(
        tmp_path / "metrics.json", {**numbers, "fold": None, "stopped_early": False, "device": "cpu"}
    )
    assert read_run_state(tmp_path)[0] == "done"


def test_cli_turns_file_system_errors_into_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from ablation.cli import main

    (tmp_path / "afile").write_text("x")
    code = main(["report", str(tmp_path / "afile")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ")


def test_cli_never_drops_a_command_area(monkeypatch: pytest.MonkeyPatch) -> None:
    import ablation.cli

    monkeypatch.setattr(
        ablation.cli, "COMMAND_MODULES", (*ablation.cli.COMMAND_MODULES, "ablation.nowhere.cli")
    )
    with pytest.raises(ModuleNotFoundError, match="ablation.nowhere"):
        ablation.cli.build_parser()
