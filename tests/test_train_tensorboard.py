"""Live TensorBoard logs (train.tensorboard): event files per run, one scalar per epoch, training unchanged."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from ablation.cli import main
from ablation.config import ModelConfig, RunConfig, TrainConfig
from ablation.errors import AblationError
from ablation.store import layout
from ablation.train import pack
from ablation.train.engine import train_packed, train_run
from ablation.train.tensorboard_log import SCALAR_TAGS, preview_grid

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(seed: int = 0, skips: str = "1111", **train: object) -> RunConfig:
    options = {"max_epochs": 3, "min_best_epoch": 0, "checkpoint_every": 2, "save_predictions": 0, **train}
    return RunConfig(
        dataset="synthetic-nuclei",
        seed=seed,
        model=ModelConfig(skips=skips, base_channels=4, img_size=32),
        train=TrainConfig(**options),
    )


def logged(run_dir: Path) -> tuple[dict[str, list[tuple[int, float]]], list]:
    """The scalars ``{tag: [(step, value)]}`` and the ``val/predictions`` images of a run's event files."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing import event_accumulator

    guidance = {event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0}
    accumulator = event_accumulator.EventAccumulator(str(run_dir / layout.TENSORBOARD_FOLDER), guidance)
    accumulator.Reload()
    tags = accumulator.Tags()
    scalars = {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in tags["scalars"]}
    images = accumulator.Images("val/predictions") if "val/predictions" in tags["images"] else []
    return scalars, images


def history(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / layout.HISTORY_FILE) as handle:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def assert_scalars_match_history(run_dir: Path) -> None:
    scalars, _ = logged(run_dir)
    rows = history(run_dir)
    assert set(scalars) == set(SCALAR_TAGS)
    for tag, column in SCALAR_TAGS.items():
        assert [step for step, _ in scalars[tag]] == [int(row["epoch"]) for row in rows], tag  # one per epoch
        assert [value for _, value in scalars[tag]] == pytest.approx([row[column] for row in rows], rel=1e-6)


def test_a_run_logs_one_scalar_per_epoch_and_previews(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    config = tiny_config(tensorboard=True, tensorboard_images_every=2, max_epochs=4)
    run_dir = tmp_path / "logged"
    train_run(config, run_dir, device="cpu", progress=False)
    assert_scalars_match_history(run_dir)
    _, images = logged(run_dir)
    assert [image.step for image in images] == [2, 4]
    # 4 validation images of 32 px, one row each: image | mask | prediction
    assert (images[0].width, images[0].height) == (3 * 32, 4 * 32)


def test_logging_leaves_training_unchanged(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    plain = tiny_config()
    logging = dataclasses.replace(plain, train=dataclasses.replace(plain.train, tensorboard=True))
    assert layout.run_id(logging) == layout.run_id(plain)  # where the logs go, not what is computed
    without = train_run(plain, tmp_path / "plain", device="cpu", progress=False)
    with_logs = train_run(logging, tmp_path / "logged", device="cpu", progress=False)
    assert not (tmp_path / "plain" / layout.TENSORBOARD_FOLDER).exists()
    assert {k: v for k, v in without.items() if k != "seconds"} == {
        k: v for k, v in with_logs.items() if k != "seconds"
    }
    weights = [
        torch.load(tmp_path / run / layout.BEST_CHECKPOINT, weights_only=True)["model"]
        for run in ("plain", "logged")
    ]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
    drop_time = [{k: v for k, v in row.items() if k != "seconds"} for row in history(tmp_path / "plain")]
    assert drop_time == [
        {k: v for k, v in row.items() if k != "seconds"} for row in history(tmp_path / "logged")
    ]


def test_a_pack_logs_each_run_into_its_own_folder(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    configs = [tiny_config(seed, skips, tensorboard=True) for seed, skips in ((0, "1111"), (1, "1010"))]
    dirs = [tmp_path / layout.run_name(config) for config in configs]
    train_packed(configs, dirs, device="cpu", progress=False)
    for run_dir in dirs:
        assert_scalars_match_history(run_dir)
    assert logged(dirs[0])[0]["loss/train"] != logged(dirs[1])[0]["loss/train"]
    # one TensorBoard on the results folder shows every run, named by its run folder
    multiplexer = EventMultiplexer().AddRunsFromDirectory(str(tmp_path))
    multiplexer.Reload()
    assert set(multiplexer.Runs()) == {f"{run_dir.name}/{layout.TENSORBOARD_FOLDER}" for run_dir in dirs}


@pytest.mark.parametrize("crash_epoch", [2, 4])
def test_a_resumed_run_keeps_one_scalar_per_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_epoch: int
) -> None:
    # Epoch 2: no checkpoint yet, the run starts again from scratch and logs epoch 1 again. Epoch 4: the
    # checkpoint holds epoch 2, so epoch 3 is logged again. Either way the first session's copy is purged.
    pytest.importorskip("tensorboard")
    config = tiny_config(tensorboard=True, max_epochs=4, checkpoint_every=2)
    real_validate, calls = pack.Pack.validate, []

    def crashing_validate(*args, **kwargs):
        calls.append(1)
        if len(calls) == crash_epoch:
            raise RuntimeError("simulated crash")
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(pack.Pack, "validate", crashing_validate)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_run(config, tmp_path / "run", device="cpu", progress=False)
    assert [step for step, _ in logged(tmp_path / "run")[0]["loss/train"]] == list(range(1, crash_epoch))
    monkeypatch.setattr(pack.Pack, "validate", real_validate)
    train_run(config, tmp_path / "run", device="cpu", progress=False)
    assert_scalars_match_history(tmp_path / "run")


def test_missing_package_is_one_line_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "tensorboard" else real_find_spec(name, *a),
    )
    with pytest.raises(AblationError, match=r"pip install -e '\.\[tensorboard\]'"):
        train_run(tiny_config(tensorboard=True), tmp_path / "run", device="cpu", progress=False)
    assert not (tmp_path / "run").exists()
    argv = [
        "train",
        "--dataset",
        "synthetic-nuclei",
        "--epochs",
        "1",
        "--base-channels",
        "4",
        "--img-size",
        "32",
    ]
    assert main([*argv, "--tensorboard", "--quiet", "--out", str(tmp_path / "cli")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: train.tensorboard needs the tensorboard package") and "\n" not in err
    assert not (tmp_path / "cli").exists()
    spec = tmp_path / "grid.toml"
    spec.write_text('datasets = ["synthetic-nuclei"]\nsubsets = ["all"]\n[train]\ntensorboard = true\n')
    assert main(["run", str(spec), "--out", str(tmp_path / "grid"), "--no-progress"]) == 2
    assert "tensorboard package" in capsys.readouterr().err
    assert not (tmp_path / "grid").exists()


def test_preview_grid_layout() -> None:
    images = np.full((2, 3, 4, 5), 7, dtype=np.uint8)
    masks = np.zeros((2, 1, 4, 5), dtype=np.uint8)
    masks[1] = 1
    probabilities = np.full((2, 1, 4, 5), 0.5, dtype=np.float32)
    grid = preview_grid(images, masks, probabilities)
    assert grid.shape == (3, 2 * 4, 3 * 5) and grid.dtype == np.uint8
    assert (grid[:, :, :5] == 7).all()  # images in the first column
    assert (grid[:, :4, 5:10] == 0).all() and (
        grid[:, 4:, 5:10] == 255
    ).all()  # row 2's mask is all foreground
    assert (grid[:, :, 10:] == 128).all()  # probability 0.5 as mid grey
