"""train.init_from: a run starts from the matching weights of another run (the reference's UCTransNet_pretrain).

The copy itself, against the reference's state-dict layout; end to end through the grid (fused packs included):
each run holds its own source's weights at the start, config.json records the source, a resumed run never copies
again; identity follows the source; `ablation train --init-from`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ablation.cli import main
from ablation.config import ModelConfig, RunConfig, TrainConfig
from ablation.errors import AblationError
from ablation.grid import expand_spec, plan_units, run_grid
from ablation.io import read_json
from ablation.models import build_model
from ablation.sources import resolve_sources
from ablation.store import layout
from ablation.train import run_folder
from ablation.train.checkpoint import copy_matching_weights
from ablation.train.engine import train_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LAYOUT_FILE = Path(__file__).resolve().parents[1] / "ablation" / "models" / "reference_state_dicts.json"
TINY_TRAIN = {"max_epochs": 1, "min_best_epoch": 0, "save_predictions": 0}


def _reference_matches() -> set[str]:
    """The reference U-Net's state-dict entries that the reference UCTransNet has with the same shape."""
    layout = json.loads(LAYOUT_FILE.read_text())
    unet = layout["unet_base64"]["state_dict"]
    uctransnet = layout["uctransnet_base64_img224"]["state_dict"]
    return {name for name, shape in unet.items() if uctransnet.get(name) == shape}


@pytest.mark.parametrize("connector", ["uctransnet", "cct", "cca"])
def test_copy_takes_exactly_the_entries_whose_names_and_shapes_match(connector: str) -> None:
    torch.manual_seed(0)
    unet = build_model(ModelConfig(connector="unet", base_channels=4, img_size=32))
    torch.manual_seed(1)
    model = build_model(ModelConfig(connector=connector, base_channels=4, img_size=32))
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    record = copy_matching_weights(model, unet.state_dict())

    copied = set(before) - set(record["not_copied"])
    assert copied == _reference_matches() and record["copied_tensors"] == len(copied) == 121
    assert set(record["source_unused"]) == {
        f"up{level}.up.{kind}" for level in range(1, 5) for kind in ("weight", "bias")
    }
    after = model.state_dict()
    for name in copied:  # BatchNorm statistics included, as the reference copies the whole state dict
        assert torch.equal(after[name], unet.state_dict()[name]), name
    for name in record["not_copied"]:
        assert torch.equal(after[name], before[name]), name
    learnable = dict(model.named_parameters())
    assert record["copied_parameters"] == sum(learnable[n].numel() for n in copied if n in learnable)
    assert record["parameters"] == sum(t.numel() for t in learnable.values())


def test_paper_scale_uctransnet_takes_the_unet_encoder_decoder_and_head() -> None:
    with torch.device("meta"):  # names and shapes only, at the reference's base 64 and 224 px
        unet = build_model(ModelConfig(connector="unet"))
        model = build_model(ModelConfig(connector="uctransnet"))
    record = copy_matching_weights(model, unet.state_dict())
    assert (record["copied_tensors"], record["copied_parameters"], record["parameters"]) == (
        121, 13_358_273, 66_430_657,
    )  # fmt: skip


def _spec() -> dict:
    return {
        "datasets": ["synthetic-nuclei"],
        "connectors": ["unet", "uctransnet"],
        "subsets": ["all"],
        "replicates": [{"seed": 0, "fold": 0}],
        "num_folds": 2,
        "model": {"img_size": 32, "base_channels": 4},
        "train": {**TINY_TRAIN, "init_from": {"uctransnet": "unet/1111"}},
    }


def _run(connector: str, seed: int = 0, fold: int | None = None, **train: object) -> RunConfig:
    return RunConfig(
        dataset="synthetic-nuclei",
        seed=seed,
        fold=fold,
        num_folds=2,
        model=ModelConfig(connector=connector, base_channels=4, img_size=32),
        train=TrainConfig(**{**TINY_TRAIN, **train}),
    )


def _parameters(run_dir: Path, config: RunConfig) -> dict[str, torch.Tensor]:
    names = {name for name, _ in build_model(config.model).named_parameters()}
    weights = torch.load(run_dir / layout.BEST_CHECKPOINT, weights_only=True)["model"]
    return {name: tensor for name, tensor in weights.items() if name in names}


def test_grid_starts_each_packed_run_from_its_own_source(tmp_path: Path) -> None:
    # The U-Nets train (lr 1e-3), so their weights leave their random start; the UCTransNets, of the same seeds,
    # train with lr 1e-12, which moves no weight measurably: their best checkpoint (epoch 1) shows their start.
    sources = {seed: _run("unet", seed, fold=seed) for seed in (0, 1)}
    dependents = [
        _run("uctransnet", s, fold=s, lr=1e-12, scheduler_eta_min=0.0, init_from="unet/1111") for s in (0, 1)
    ]
    configs = resolve_sources([*sources.values(), *dependents])
    assert plan_units(configs, 2) == [configs[:2], configs[2:]]
    summary = run_grid(configs, tmp_path, pack_size=2, progress=False)  # 2 U-Nets, then 2 UCTransNets, packed
    assert summary.exit_code == 0 and len(summary.names("done")) == 4
    for config in configs[2:]:
        run_dir = tmp_path / layout.run_name(config)
        record = read_json(run_dir / layout.CONFIG_FILE)
        source = sources[config.seed]
        assert record["train"]["init_from"] == "unet/1111"
        assert record["train"]["init_from_run"] == layout.run_name(source)
        assert record["init_weights"]["run_id"] == layout.run_id(source)
        assert record["init_weights"]["run_name"] == layout.run_name(source)
        assert (
            record["init_weights"]["copied_tensors"] == 121 and len(record["init_weights"]["not_copied"]) > 0
        )

        own = _parameters(run_dir, config)
        mine = _parameters(tmp_path / layout.run_name(source), source)
        other = _parameters(tmp_path / layout.run_name(sources[1 - config.seed]), source)
        torch.manual_seed(config.seed)
        fresh = dict(build_model(config.model).named_parameters())
        for name, tensor in own.items():
            if name in mine:  # copied from its own source, not from the other seed's, nor its random start
                assert torch.allclose(tensor, mine[name], atol=1e-8), name
                assert not torch.allclose(tensor, other[name], atol=1e-5), name
                assert not torch.allclose(tensor, fresh[name].detach(), atol=1e-5), name
            else:  # CCT, CCA: the random start a run of this seed has
                assert torch.allclose(tensor, fresh[name].detach(), atol=1e-8), name


def test_resuming_never_copies_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    configs = expand_spec({**_spec(), "replicates": [{"seed": 0, "fold": 0}]})
    assert run_grid(configs, tmp_path, progress=False).exit_code == 0
    source, dependent = configs
    run_dir = tmp_path / layout.run_name(dependent)
    metrics = read_json(run_dir / layout.METRICS_FILE)
    # Killed after its last checkpoint: it resumes from checkpoint_last.pt, without its source.
    (run_dir / layout.METRICS_FILE).unlink()
    for path in (tmp_path / layout.run_name(source)).iterdir():
        path.unlink()

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a resumed run copied its source's weights")

    monkeypatch.setattr(run_folder, "copy_source_weights", refuse)
    again = train_run(dependent, run_dir, progress=False)
    assert again["dice_mean"] == metrics["dice_mean"]


def test_a_source_that_is_not_done_fails_the_fresh_start(tmp_path: Path) -> None:
    source, dependent = expand_spec({**_spec(), "replicates": [{"seed": 0, "fold": 0}]})
    with pytest.raises(AblationError, match=f"source run .*{layout.run_name(source)}.* is not done"):
        train_run(dependent, tmp_path / layout.run_name(dependent), progress=False)


def test_identity_follows_the_source() -> None:
    dependent = _run("uctransnet", init_from="unet/1111")
    first = resolve_sources([_run("unet"), dependent])[1]
    again = resolve_sources([dependent, _run("unet")])[0]
    longer = resolve_sources([_run("unet", max_epochs=2), dependent])[1]
    assert layout.run_id(first) == layout.run_id(again)
    assert layout.run_id(first) != layout.run_id(longer)  # same own settings, another source: another run
    assert longer.train.init_from_run == layout.run_name(_run("unet", max_epochs=2))
    random_start = resolve_sources([_run("uctransnet")])[0]
    assert layout.run_id(random_start) != layout.run_id(first)
    # Runs from random weights keep the ids they had before train.init_from existed.
    assert layout.run_name(RunConfig(dataset="glas", fold=0)) == "glas_unet_1111_s0_r0f0_10819212"


def test_cli_train_init_from(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results"
    base = ["train", "--dataset", "synthetic-nuclei", "--base-channels", "4", "--img-size", "32", "--epochs",
            "1", "--set", "train.min_best_epoch=0", "--set", "train.save_predictions=0", "--quiet", "--out", str(out)]  # fmt: skip
    assert main([*base, "--connector", "cca", "--init-from", "unet/1111"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "train.init_from 'unet/1111' names no run in" in error
    assert main([*base, "--connector", "unet"]) == 0
    (source_dir,) = layout.find_runs(out)
    assert main([*base, "--connector", "cca", "--init-from", "unet/L1+L2+L3+L4"]) == 0
    assert main([*base, "--connector", "cct", "--init-from", str(source_dir)]) == 0
    for connector in ("cca", "cct"):
        (run_dir,) = [d for d in layout.find_runs(out) if f"_{connector}_" in d.name]
        record = read_json(run_dir / layout.CONFIG_FILE)
        assert record["train"]["init_from"] == "unet/1111"
        assert record["train"]["init_from_run"] == source_dir.name == record["init_weights"]["run_name"]
    capsys.readouterr()
    assert main([*base, "--connector", "cca", "--seed", "1", "--init-from", str(source_dir)]) == 2
    assert "does not fit this run: seed 0 (the run: 1)" in capsys.readouterr().err
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert main([*base[:-1], str(elsewhere), "--connector", "cca", "--init-from", str(source_dir)]) == 2
    assert "must be a run folder of the results folder" in capsys.readouterr().err


def test_a_source_split_differently_is_refused(tmp_path: Path) -> None:
    source, dependent = resolve_sources([_run("unet"), _run("cca", init_from="unet/1111")])
    train_run(source, tmp_path / layout.run_name(source), progress=False)
    config_file = tmp_path / layout.run_name(source) / layout.CONFIG_FILE
    record = read_json(config_file)
    record["env"]["splits"]["train"] = record["env"]["splits"]["train"][1:]
    config_file.write_text(json.dumps(record))
    with pytest.raises(AblationError, match="was trained on other train images"):
        train_run(dependent, tmp_path / layout.run_name(dependent), progress=False)


def test_a_source_from_a_slim_export_is_named_with_what_to_do(tmp_path: Path) -> None:
    """Slim results carry no checkpoints: a run cannot start from a source unpacked from one, and says why."""
    import tarfile

    from ablation.export import export_slim

    source, dependent = resolve_sources([_run("unet"), _run("cca", init_from="unet/1111")])
    train_run(source, tmp_path / "trained" / layout.run_name(source), progress=False)
    export_slim(tmp_path / "trained", tmp_path / "slim.tar.gz")
    with tarfile.open(tmp_path / "slim.tar.gz") as archive:
        archive.extractall(tmp_path / "unpacked", filter="data")
    assert (tmp_path / "unpacked" / layout.run_name(source) / layout.METRICS_FILE).exists()
    expected = (
        f"source run {layout.run_name(source)} is done but has no checkpoint_best.pt here (slim exports carry no "
        f"checkpoints): train run {layout.run_name(dependent)} where its source was trained, or move the source's "
        "folder away so that it is trained again"
    )
    with pytest.raises(AblationError) as caught:
        train_run(dependent, tmp_path / "unpacked" / layout.run_name(dependent), progress=False)
    assert str(caught.value) == expected
