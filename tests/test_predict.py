"""``ablation predict``: new images of any size and format, scores, TTA, study ensembles chosen on validation."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ablation.cli import main
from ablation.config import ModelConfig, RunConfig, TrainConfig, from_dict, to_dict
from ablation.data import PreparedSplit, load_prepared
from ablation.data.resize import resize_bilinear_like_opencv
from ablation.errors import AblationError
from ablation.io import atomic_write_json, atomic_write_text, read_json
from ablation.predict import choose_study_runs, load_predictor, predict_folder
from ablation.predict.inference import predict_probabilities, resize_probability
from ablation.store import layout
from ablation.train import evaluate_checkpoint, train_run
from ablation.train.checkpoint import CheckpointRecord, load_model_checkpoint
from ablation.train.device import setup_device

CPU = setup_device("cpu")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tiny_config(seed: int) -> RunConfig:
    # lr 1e-2 for 3 epochs reaches a test Dice near 0.8 on synthetic nuclei: masks that are neither empty nor full.
    return RunConfig(
        dataset="synthetic-nuclei",
        seed=seed,
        model=ModelConfig(base_channels=4, img_size=32),
        train=TrainConfig(max_epochs=3, min_best_epoch=0, lr=1e-2, save_predictions=0),
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Path]]:
    """Two tiny trained runs (seeds 0 and 1), shared by the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ABLATION_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        root = tmp_path_factory.mktemp("runs")
        paths = []
        for seed in (0, 1):
            config = _tiny_config(seed)
            train_run(config, root / layout.run_name(config), device="cpu", progress=False)
            paths.append(root / layout.run_name(config))
        yield paths
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def test_split(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, PreparedSplit]:
    """The synthetic test split at the runs' size as PNG files: img/<name>.png and labelcol/<name>.png (ids)."""
    split = load_prepared("synthetic-nuclei", img_size=32, cache_dir=tmp_path_factory.getbasetemp()).splits[
        "test"
    ]
    folder = tmp_path_factory.mktemp("test_split")
    (folder / "img").mkdir()
    (folder / "labelcol").mkdir()
    assert split.instances.max() < 256
    for name, image, ids in zip(split.names, split.images, split.instances):
        Image.fromarray(image).save(folder / "img" / f"{name}.png")
        Image.fromarray(ids.astype(np.uint8)).save(folder / "labelcol" / f"{name}.png")
    return folder / "img", folder / "labelcol", split


def _mask(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _one_line_error(capsys: pytest.CaptureFixture, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_mixed_sizes_and_formats_give_masks_of_each_images_size(
    runs: list[Path], test_split, tmp_path: Path, capsys
) -> None:
    _, _, split = test_split
    images = tmp_path / "images"
    images.mkdir()
    sizes = {"wide.png": (40, 24), "square.jpg": (50, 50), "tall.tif": (17, 33), "same.bmp": (32, 32)}
    for index, (name, size) in enumerate(sizes.items()):
        Image.fromarray(split.images[index]).resize(size, Image.Resampling.BILINEAR).save(images / name)
    Image.fromarray(split.images[5][..., 0]).save(images / "grey.png")  # one channel: read as RGB
    (images / "notes.txt").write_text("not an image, ignored")
    out = tmp_path / "out"

    assert (
        main(
            ["predict", "--run", str(runs[0]), "--images", str(images), "--out", str(out), "--device", "cpu"]
        )
        == 0
    )
    assert "5 masks" in capsys.readouterr().out
    for name, (width, height) in {**sizes, "grey.png": (32, 32)}.items():
        mask = _mask(out / "masks" / f"{Path(name).stem}.png")
        assert mask.shape == (height, width) and set(np.unique(mask)) <= {0, 255}
        overlay = _mask(out / "overlays" / f"{Path(name).stem}.png")
        assert overlay.shape == (height, width, 3)
    record = read_json(out / "prediction.json")
    assert record["written"] == ["grey", "same", "square", "tall", "wide"] and record["errors"] == []
    assert record["models"][0]["run_name"] == runs[0].name and record["models"][0]["img_size"] == 32

    # Running again into the existing folder replaces the files.
    assert (
        main(
            ["predict", "--run", str(runs[0]), "--images", str(images), "--out", str(out), "--device", "cpu"]
        )
        == 0
    )


def test_scores_at_the_runs_size_equal_ablation_evaluate(
    runs: list[Path], test_split, tmp_path: Path
) -> None:
    images, masks, split = test_split
    result = predict_folder(runs[0], images, tmp_path / "out", masks_dir=masks, device="cpu")
    rows, summary = evaluate_checkpoint(runs[0] / layout.BEST_CHECKPOINT, "synthetic-nuclei", device="cpu")
    assert summary["dice_mean"] > 0.5  # real masks, not an empty or full prediction
    assert [row["image"] for row in result.rows] == [row["image"] for row in rows] == split.names
    for ours, theirs in zip(result.rows, rows):
        assert set(ours) == set(theirs)  # the same metrics, object metrics included (ids in the masks)
        for key in theirs:
            if key != "image":
                assert ours[key] == pytest.approx(theirs[key], abs=1e-6), key
    for key in ("dice_mean", "iou_mean", "hd95_mean", "dice_micro", "iou_micro", "object_f1_mean"):
        assert result.summary[key] == pytest.approx(summary[key], abs=1e-6), key
    with open(tmp_path / "out" / "metrics.csv") as handle:
        assert len(list(csv.DictReader(handle))) == len(split.names)

    # Masks at the image's own size: the metrics are computed there, against a full-size mask.
    big = tmp_path / "big"
    big_masks = tmp_path / "big_masks"
    big.mkdir(), big_masks.mkdir()
    Image.open(images / f"{split.names[0]}.png").resize((64, 48)).save(big / "a.png")
    Image.open(masks / f"{split.names[0]}.png").resize((64, 48), Image.Resampling.NEAREST).save(
        big_masks / "a.png"
    )
    # runs[1]: its mask of this image is the better one (Dice 0.85 at 32 px), so a real mask must score well.
    scored = predict_folder(runs[1], big, tmp_path / "out_big", masks_dir=big_masks, device="cpu")
    assert scored.rows[0]["dice"] > 0.3 and scored.summary["num_images"] == 1


def test_predict_and_evaluate_read_checkpoints_with_one_loader(runs: list[Path], tmp_path: Path) -> None:
    """load_model_checkpoint serves both: the same size rule and the same one-line errors naming the file."""
    best = runs[0] / layout.BEST_CHECKPOINT
    saved = torch.load(best, weights_only=True)
    model, record = load_model_checkpoint(best, img_size=64)  # a U-Net runs at any multiple of 16
    assert record == CheckpointRecord("run", 64, from_dict(RunConfig, saved["config"])) and not model.training
    predictor = load_predictor(runs[0], CPU, img_size=64)
    assert (predictor.img_size, predictor.kind, predictor.run_name) == (64, "run", runs[0].name)
    saved["config"]["model"]["connector"] = "foo"
    torch.save(saved, tmp_path / "bad_config.pt")
    messages = set()
    for load in (load_model_checkpoint, lambda path: load_predictor(path, CPU)):
        with pytest.raises(AblationError) as caught:
            load(tmp_path / "bad_config.pt")
        messages.add(str(caught.value))
    (message,) = messages
    assert message.startswith(f"checkpoint {tmp_path / 'bad_config.pt'}: its stored config is invalid: ")


def test_ensemble_averages_probabilities(runs: list[Path], test_split, tmp_path: Path) -> None:
    images, _, split = test_split
    result = predict_folder(runs, images, tmp_path / "out", device="cpu")
    assert result.written == split.names and read_json(tmp_path / "out" / "prediction.json")["ensemble"]
    probabilities = [
        predict_probabilities(load_predictor(run, CPU).model, split.images, CPU).numpy() for run in runs
    ]
    expected = (probabilities[0] + probabilities[1]) / 2 > 0.5
    assert not np.array_equal(probabilities[0] > 0.5, probabilities[1] > 0.5)  # the members differ
    for index, name in enumerate(split.names):
        np.testing.assert_array_equal(_mask(tmp_path / "out" / "masks" / f"{name}.png") > 0, expected[index])


def test_corrupt_image_is_named_and_the_others_are_written(
    runs: list[Path], test_split, tmp_path: Path, capsys
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    source = test_split[0]
    shutil.copy(source / "test_001.png", images / "a.png")
    shutil.copy(source / "test_002.png", images / "c.png")
    (images / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    truncated = (source / "test_003.png").read_bytes()
    (images / "d.png").write_bytes(truncated[: len(truncated) // 2])
    out = tmp_path / "out"
    assert (
        main(
            ["predict", "--run", str(runs[0]), "--images", str(images), "--out", str(out), "--device", "cpu"]
        )
        == 2
    )
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in captured.err
    assert lines[0].startswith("error: ") and str(images / "b.png") in lines[0]
    assert lines[1].startswith("error: ") and str(images / "d.png") in lines[1]
    assert sorted(path.name for path in (out / "masks").iterdir()) == ["a.png", "c.png"]
    assert read_json(out / "prediction.json")["written"] == ["a", "c"]


def test_tta_is_exact_for_an_equivariant_model_and_turns_predictions_back() -> None:
    image = np.random.default_rng(0).integers(0, 256, size=(2, 16, 16, 3), dtype=np.uint8)
    pointwise = torch.nn.Conv2d(3, 1, kernel_size=1).eval()  # commutes with every flip and rotation
    plain = predict_probabilities(pointwise, image, CPU)
    assert plain.shape == (2, 16, 16) and not torch.allclose(plain, plain.flip(-1))
    torch.testing.assert_close(predict_probabilities(pointwise, image, CPU, tta=True), plain)

    class FixedOutput(torch.nn.Module):  # ignores its input: TTA must average the 8 turned-back copies
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            ramp = (
                torch.arange(16.0).repeat(16, 1) + 0.1 * torch.arange(16.0)[:, None]
            )  # (16, 16), no symmetry
            return (ramp - 8.0).expand(x.shape[0], 1, 16, 16)

    fixed = torch.sigmoid(FixedOutput()(torch.zeros(1, 3, 16, 16)))[0, 0]
    orbit = [torch.rot90(view, turns, dims=(0, 1)) for view in (fixed, fixed.flip(-1)) for turns in range(4)]
    tta = predict_probabilities(FixedOutput(), image, CPU, tta=True)
    torch.testing.assert_close(tta[0], torch.stack(orbit).mean(0))
    torch.testing.assert_close(tta[0], tta[0].T)  # symmetric under the whole group


def test_tta_on_a_run_writes_masks_of_the_right_size(runs: list[Path], test_split, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(test_split[2].images[0]).resize((45, 37)).save(images / "x.jpg")
    result = predict_folder(runs[0], images, tmp_path / "out", tta=True, device="cpu")
    mask = _mask(tmp_path / "out" / "masks" / "x.png")
    assert result.written == ["x"] and mask.shape == (37, 45) and set(np.unique(mask)) <= {0, 255}
    assert read_json(tmp_path / "out" / "prediction.json")["tta"] is True


def test_probability_resizing_is_the_training_resize() -> None:
    """Back to the image size with the same bilinear (half-pixel, no antialiasing) as the reference resizing."""
    probability = torch.rand(32, 32, generator=torch.Generator().manual_seed(0))
    for size in (20, 45):
        np.testing.assert_allclose(
            resize_probability(probability, size, size).numpy(),
            resize_bilinear_like_opencv(probability.numpy(), size),
            atol=1e-5,  # float32 rounding of the two weight computations
        )


def test_reference_checkpoint_defaults_to_bgr(runs: list[Path], test_split, tmp_path: Path) -> None:
    weights = torch.load(runs[0] / layout.BEST_CHECKPOINT, weights_only=True)["model"]
    reference = tmp_path / "best_model-UNet.pth.tar"
    torch.save({"state_dict": weights, "epoch": 3}, reference)  # the reference code's checkpoint layout
    images = test_split[0]
    args = [
        "predict",
        "--checkpoint",
        str(reference),
        "--img-size",
        "32",
        "--images",
        str(images),
        "--device",
        "cpu",
    ]
    assert main([*args, "--out", str(tmp_path / "bgr")]) == 0
    assert read_json(tmp_path / "bgr" / "prediction.json")["models"][0]["channel_order"] == "BGR"
    assert main([*args, "--rgb", "--out", str(tmp_path / "rgb")]) == 0
    predict_folder(runs[0], images, tmp_path / "run", device="cpu")
    for name in ("test_001", "test_007"):
        same = _mask(tmp_path / "rgb" / "masks" / f"{name}.png")
        np.testing.assert_array_equal(same, _mask(tmp_path / "run" / "masks" / f"{name}.png"))


def test_bad_input_gives_one_line_errors(runs: list[Path], test_split, tmp_path: Path, capsys) -> None:
    images, masks, _ = test_split
    base = ["predict", "--images", str(images), "--device", "cpu"]
    # A results folder is not a run folder: the error names the runs below it.
    err = _one_line_error(capsys, *base, "--run", str(runs[0].parent), "--out", str(tmp_path / "o"))
    assert "checkpoint_best.pt" in err and runs[0].name in err
    # A mask folder lacking one mask names the expected file.
    partial = tmp_path / "partial"
    shutil.copytree(masks, partial)
    (partial / "test_004.png").unlink()
    err = _one_line_error(
        capsys, *base, "--run", str(runs[0]), "--masks", str(partial), "--out", str(tmp_path / "o")
    )
    assert str(partial / "test_004.png") in err
    # Outputs never land in an input folder.
    err = _one_line_error(capsys, *base, "--run", str(runs[0]), "--out", str(images))
    assert "--images" in err
    inside = tmp_path / "previous" / "masks"  # an earlier prediction's masks given as ground truth
    shutil.copytree(masks, inside)
    err = _one_line_error(
        capsys, *base, "--run", str(runs[0]), "--masks", str(inside), "--out", str(inside.parent)
    )
    assert "--masks" in err
    # Study flags need --study, and --study needs them.
    err = _one_line_error(
        capsys, *base, "--run", str(runs[0]), "--dataset", "x", "--out", str(tmp_path / "o")
    )
    assert "--study" in err
    err = _one_line_error(
        capsys, *base, "--study", str(tmp_path), "--dataset", "x", "--out", str(tmp_path / "o")
    )
    assert "--connector" in err
    assert not (tmp_path / "o").exists()


# --- choosing a study's runs ----------------------------------------------------------------------------------


def _fake_run(
    results: Path,
    skips: str,
    seed: int,
    *,
    val: float | None,
    test: float,
    checkpoint: Path,
    connector="unet",
) -> Path:
    """A finished run folder whose checkpoint is a copy of a real one; its files hold the given Dice values."""
    config = RunConfig(
        dataset="synthetic-nuclei", seed=seed, model=ModelConfig(connector=connector, skips=skips)
    )
    run_dir = results / layout.run_name(config)
    run_dir.mkdir(parents=True)
    shutil.copy(checkpoint, run_dir / layout.BEST_CHECKPOINT)
    atomic_write_json(run_dir / layout.CONFIG_FILE, {**to_dict(config), "run_name": run_dir.name})
    atomic_write_text(run_dir / layout.TEST_METRICS_FILE, f"image,dice,iou\ntest_001,{test},{test / 2}\n")
    metrics = {  # every key of layout.METRICS_KEYS, with the types `ablation status` and reports validate
        **dict.fromkeys(layout.METRICS_KEYS, 0),
        **{"status": "done", "run_id": layout.run_id(config), "run_name": run_dir.name, "device": "cpu"},
        **{"dataset": config.dataset, "connector": connector, "skips": skips, "seed": seed, "fold": None},
        **{"stopped_early": False, "dice_mean": test, "iou_mean": test / 2},
    }
    if val is not None:
        metrics["best_val_dice"] = val
    atomic_write_json(run_dir / layout.METRICS_FILE, metrics)
    return run_dir


@pytest.fixture
def study(runs: list[Path], tmp_path: Path) -> tuple[Path, list[Path], list[Path]]:
    """L1+L2 wins on validation, L3+L4 on the test set (which must not be looked at)."""
    results = tmp_path / "study"
    best = [runs[0] / layout.BEST_CHECKPOINT, runs[1] / layout.BEST_CHECKPOINT]
    by_validation = [
        _fake_run(results, "1100", seed, val=0.80, test=0.50, checkpoint=best[seed]) for seed in (0, 1)
    ]
    by_test = [
        _fake_run(results, "0011", seed, val=0.70, test=0.95, checkpoint=best[seed]) for seed in (0, 1)
    ]
    _fake_run(results, "1111", 0, val=0.75, test=0.60, checkpoint=best[0])
    _fake_run(results, "1111", 0, val=0.99, test=0.99, checkpoint=best[0], connector="cca")
    _fake_run(results, "0001", 0, val=None, test=0.99, checkpoint=best[0])  # no validation Dice: left out
    damaged = _fake_run(results, "1110", 0, val=0.99, test=0.99, checkpoint=best[0])
    atomic_write_json(damaged / layout.CONFIG_FILE, {"dataset": "synthetic-nuclei"})  # no model: left out
    unfinished = results / "synthetic-nuclei_unet_1000_s0_official_00000000"
    unfinished.mkdir()
    shutil.copy(best[0], unfinished / layout.BEST_CHECKPOINT)
    atomic_write_json(unfinished / layout.CONFIG_FILE, {"dataset": "synthetic-nuclei"})  # running: ignored
    return results, by_validation, by_test


def test_study_picks_the_subset_with_the_best_validation_dice(
    study, test_split, tmp_path: Path, capsys
) -> None:
    results, by_validation, _ = study
    choice = choose_study_runs(results, "synthetic-nuclei", "unet")
    assert choice.skips == "1100" and [run.path for run in choice.runs] == by_validation
    assert [entry["skips"] for entry in choice.subsets] == ["1100", "1111", "0011"]
    assert choice.subsets[0]["val_dice_mean"] == pytest.approx(0.80) and choice.subsets[0]["replicates"] == 2
    assert len(choice.left_out) == 2 and "best_val_dice" in choice.left_out[1]
    assert "_unet_1110_" in choice.left_out[0] and "the folder name says skips 1110" in choice.left_out[0]

    out = tmp_path / "out"
    args = ["predict", "--study", str(results), "--dataset", "synthetic-nuclei", "--connector", "unet"]
    assert main([*args, "--images", str(test_split[0]), "--out", str(out), "--device", "cpu"]) == 0
    assert "subset 1100 (L1+L2)" in capsys.readouterr().out
    record = read_json(out / "prediction.json")
    assert [run["path"] for run in record["study"]["runs"]] == [str(path) for path in by_validation]
    assert [model["checkpoint"] for model in record["models"]] == [
        str(path / layout.BEST_CHECKPOINT) for path in by_validation
    ]
    assert record["ensemble"] and len(record["written"]) == 12

    forced = choose_study_runs(results, "SYNTHETIC-NUCLEI", "unet", subset="L3+L4")
    assert forced.skips == "0011" and forced.chosen_by == "given with --subset"


def test_study_errors_name_the_valid_choices(study, tmp_path: Path, capsys) -> None:
    results = study[0]
    with pytest.raises(AblationError, match=r"dataset 'glas'.*choose one of synthetic-nuclei"):
        choose_study_runs(results, "glas", "unet")
    with pytest.raises(AblationError, match=r"connector 'uctransnet'.*choose one of cca, unet"):
        choose_study_runs(results, "synthetic-nuclei", "uctransnet")
    with pytest.raises(AblationError, match=r"subset 1010 .*choose one of 1100, 1111, 0011"):
        choose_study_runs(results, "synthetic-nuclei", "unet", subset="1010")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AblationError, match="no finished runs"):
        choose_study_runs(empty, "synthetic-nuclei", "unet")
    args = ["predict", "--study", str(results), "--dataset", "monuseg", "--connector", "unet"]
    err = _one_line_error(capsys, *args, "--images", str(tmp_path), "--out", str(tmp_path / "o"))
    assert "synthetic-nuclei" in err


def test_choosing_runs_and_the_cli_need_no_torch(study) -> None:
    """A laptop without torch can still see which runs a study would use (as reports never import torch)."""
    code = (
        "import argparse, sys; from ablation.predict import choose_study_runs, cli; "
        "cli.register(argparse.ArgumentParser().add_subparsers()); "
        f"assert choose_study_runs({str(study[0])!r}, 'synthetic-nuclei', 'unet').skips == '1100'; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
