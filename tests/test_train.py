"""One training run end to end on tiny synthetic data: files, determinism, resume, failure, CLI."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from ablation.cli import main
from ablation.config import ModelConfig, RunConfig, TrainConfig
from ablation.errors import AblationError
from ablation.io import read_json
from ablation.store import layout, state
from ablation.train import engine, pack, run_folder
from ablation.train.engine import RunFailed, train_run
from ablation.train.metrics import dice_iou, hd95, object_metrics

METRICS_KEYS = (*layout.METRICS_KEYS, *layout.OBJECT_METRICS_KEYS)  # synthetic data has instance ids

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(seed: int = 0, connector: str = "unet", **train: object) -> RunConfig:
    options = {"max_epochs": 3, "min_best_epoch": 0, "checkpoint_every": 2, "save_predictions": 4, **train}
    return RunConfig(
        dataset="synthetic-nuclei",
        seed=seed,
        model=ModelConfig(connector=connector, base_channels=4, img_size=32),
        train=TrainConfig(**options),
    )


def _without_time(metrics: dict) -> dict:
    return {key: value for key, value in metrics.items() if key != "seconds"}


def _history(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / layout.HISTORY_FILE) as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def _best_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / layout.BEST_CHECKPOINT, weights_only=True)["model"]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunConfig, Path, dict]:
    """A 3-epoch UCTransNet run with test-time masks, shared by the tests below."""
    cache = tmp_path_factory.getbasetemp() / "cache"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as one_torch_thread, which a module-scoped fixture cannot use
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("ABLATION_CACHE", str(cache))
            config = tiny_config(connector="uctransnet", test_time_masks=True)
            run_dir = tmp_path_factory.mktemp("runs") / layout.run_name(config)
            return config, run_dir, train_run(config, run_dir, device="cpu", progress=False)
    finally:
        torch.set_num_threads(threads)


def test_tiny_run_writes_every_file(reference_run: tuple[RunConfig, Path, dict]) -> None:
    config, run_dir, metrics = reference_run
    for name in (
        layout.CONFIG_FILE, layout.STATUS_FILE, layout.HISTORY_FILE, layout.LAST_CHECKPOINT,
        layout.BEST_CHECKPOINT, layout.TEST_METRICS_FILE, layout.MASKED_METRICS_FILE, layout.PREDICTIONS_FILE,
        layout.METRICS_FILE,
    ):  # fmt: skip
        assert (run_dir / name).is_file(), name
    assert state.read_run_state(run_dir)[0] == "done"
    assert read_json(run_dir / layout.METRICS_FILE) == metrics
    assert set(METRICS_KEYS) <= set(metrics)
    assert metrics["run_id"] == layout.run_id(config) and metrics["epochs_run"] == 3
    assert 0.0 <= metrics["dice_mean"] <= 1.0 and metrics["parameters"] > 0

    recorded = read_json(run_dir / layout.CONFIG_FILE)
    assert recorded["run_name"] == layout.run_name(config) and recorded["model"]["connector"] == "uctransnet"
    assert {"packages", "git_commit", "device", "dataset_fingerprint", "splits"} <= set(recorded["env"])
    assert recorded["env"]["splits"]["test"]

    with open(run_dir / layout.HISTORY_FILE) as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["epoch", "train_loss", "val_loss", "val_dice", "lr", "seconds"]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[0]["lr"]) == pytest.approx(1e-3) and float(rows[1]["lr"]) < 1e-3  # cosine, per epoch

    with open(run_dir / layout.MASKED_METRICS_FILE) as handle:
        masked = list(csv.DictReader(handle))
    assert len({row["eval_skips"] for row in masked}) == 16
    assert len(masked) == 16 * metrics["num_test_images"]

    best = torch.load(run_dir / layout.BEST_CHECKPOINT, weights_only=True)
    assert best["epoch"] == metrics["best_epoch"] and best["config"]["seed"] == 0
    last = torch.load(run_dir / layout.LAST_CHECKPOINT, weights_only=True)
    assert {"model", "optimizer", "scheduler", "rng", "history", "best_model", "epoch"} <= set(last)


def test_test_metrics_match_an_independent_computation(reference_run: tuple[RunConfig, Path, dict]) -> None:
    _, run_dir, metrics = reference_run
    saved = np.load(run_dir / layout.PREDICTIONS_FILE)
    assert saved["image"].shape == (4, 32, 32, 3) and saved["pred"].shape == (4, 32, 32)
    with open(run_dir / layout.TEST_METRICS_FILE) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == metrics["num_test_images"]
    assert np.mean([float(r["dice"]) for r in rows]) == pytest.approx(metrics["dice_mean"])
    for index, name in enumerate(saved["name"]):
        row = next(r for r in rows if r["image"] == name)
        pred, mask = saved["pred"][index], saved["mask"][index]
        intersection = np.logical_and(pred, mask).sum()
        assert float(row["dice"]) == pytest.approx(2 * intersection / (pred.sum() + mask.sum() + 1e-5))
        assert float(row["iou"]) == pytest.approx(dice_iou(pred, mask)[1])
        assert float(row["hd95"]) == pytest.approx(hd95(pred, mask))
        assert "object_f1" in row  # synthetic-nuclei carries instance ids
        assert np.isfinite(object_metrics(pred, mask)["object_dice"])


def test_finished_run_is_not_retrained(reference_run: tuple[RunConfig, Path, dict], monkeypatch) -> None:
    config, run_dir, metrics = reference_run
    monkeypatch.setattr(
        engine, "_train_pending", lambda *a, **k: pytest.fail("a done run must not train again")
    )
    assert train_run(config, run_dir, device="cpu", progress=False) == metrics


def test_same_seed_same_metrics_different_seed_differs(tmp_path: Path) -> None:
    first = train_run(tiny_config(seed=1), tmp_path / "a", device="cpu", progress=False)
    again = train_run(tiny_config(seed=1), tmp_path / "b", device="cpu", progress=False)
    other = train_run(tiny_config(seed=2), tmp_path / "c", device="cpu", progress=False)
    assert _without_time(first) == _without_time(again)
    assert _history(tmp_path / "a") == _history(tmp_path / "b")
    assert _without_time(first)["dice_mean"] != _without_time(other)["dice_mean"]
    assert _history(tmp_path / "a") != _history(tmp_path / "c")


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path: Path, monkeypatch) -> None:
    config = tiny_config(seed=3, max_epochs=4, checkpoint_every=2)
    uninterrupted = train_run(config, tmp_path / "whole", device="cpu", progress=False)

    # Kill the second run during epoch 3's validation: the last checkpoint is from epoch 2, so the resumed run
    # has to redo epoch 3 from the saved RNG, optimiser, scheduler and data-generator states.
    real_validate, calls = pack.Pack.validate, []

    def crashing_validate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(pack.Pack, "validate", crashing_validate)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_run(config, tmp_path / "split", device="cpu", progress=False)
    assert state.read_run_state(tmp_path / "split")[0] == "failed"
    assert torch.load(tmp_path / "split" / layout.LAST_CHECKPOINT, weights_only=True)["epoch"] == 2
    monkeypatch.setattr(pack.Pack, "validate", real_validate)
    resumed = train_run(config, tmp_path / "split", device="cpu", progress=False)

    assert _without_time(resumed) == _without_time(uninterrupted)
    assert _history(tmp_path / "split") == _history(tmp_path / "whole")
    whole, split = _best_weights(tmp_path / "whole"), _best_weights(tmp_path / "split")
    assert all(torch.equal(whole[key], split[key]) for key in whole)


def test_resume_refuses_a_folder_of_another_run(tmp_path: Path) -> None:
    train_run(tiny_config(seed=4, max_epochs=1), tmp_path / "run", device="cpu", progress=False)
    (tmp_path / "run" / layout.METRICS_FILE).unlink()
    with pytest.raises(AblationError, match="belongs to run"):
        train_run(tiny_config(seed=5, max_epochs=1), tmp_path / "run", device="cpu", progress=False)

    # A damaged checkpoint_last.pt: one line naming the file and the way out, not torch's multi-line text.
    checkpoint = tmp_path / "run" / layout.LAST_CHECKPOINT
    for junk in (bytes(range(7, 256)) * 8, b"hello\n"):
        checkpoint.write_bytes(junk)
        with pytest.raises(AblationError) as caught:
            train_run(tiny_config(seed=4, max_epochs=1), tmp_path / "run", device="cpu", progress=False)
        message = str(caught.value)
        assert message.startswith(f"cannot read checkpoint {checkpoint}: not a PyTorch checkpoint (")
        assert message.endswith("delete it to restart the run") and "\n" not in message
        assert "weights_only" not in message


def test_resume_refuses_a_checkpoint_written_on_another_device_type(tmp_path: Path) -> None:
    """A run's generator state belongs to one device type: a CUDA run's checkpoint cannot resume on CPU."""
    config = tiny_config(seed=4, max_epochs=1)
    train_run(config, tmp_path / "run", device="cpu", progress=False)
    (tmp_path / "run" / layout.METRICS_FILE).unlink()
    checkpoint = tmp_path / "run" / layout.LAST_CHECKPOINT
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["device_type"] == "cpu"
    # As a CUDA run writes it: a Philox generator state (seed and offset, 16 bytes), not the CPU one (5056).
    cuda = {
        **saved,
        "device_type": "cuda",
        "rng": {**saved["rng"], "generator": torch.zeros(16, dtype=torch.uint8)},
    }
    older = {key: value for key, value in cuda.items() if key != "device_type"}  # before the record existed
    expected = (
        f"checkpoint {checkpoint} was written on cuda: resume it on cuda, or delete it to restart the run"
    )
    for forged in (cuda, older):
        torch.save(forged, checkpoint)
        with pytest.raises(AblationError) as caught:
            train_run(config, tmp_path / "run", device="cpu", progress=False)
        assert str(caught.value) == expected
        assert (
            read_json(tmp_path / "run" / layout.STATUS_FILE)["status"] == f"failed: AblationError: {expected}"
        )
    # An older CPU checkpoint (no record, a CPU generator state) resumes as before.
    torch.save({key: value for key, value in saved.items() if key != "device_type"}, checkpoint)
    assert train_run(config, tmp_path / "run", device="cpu", progress=False)["epochs_run"] == 1


@pytest.mark.parametrize("train", [{"max_epochs": 2}, {"max_epochs": 6, "patience": 0}])
def test_resume_after_a_crash_in_the_test_evaluation(tmp_path: Path, monkeypatch, train: dict) -> None:
    """checkpoint_last.pt holds the final epoch (max_epochs or patience spent): only finishing is left."""
    config = tiny_config(seed=6, checkpoint_every=1, **train)
    whole = train_run(config, tmp_path / "whole", device="cpu", progress=False)
    assert whole["stopped_early"] == ("patience" in train)  # seed 6 stops at epoch 2 with patience 0

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("crash")

    real_score = run_folder.score_test
    monkeypatch.setattr(run_folder, "score_test", crash)
    with pytest.raises(RuntimeError, match="crash"):
        train_run(config, tmp_path / "split", device="cpu", progress=False)
    saved = torch.load(tmp_path / "split" / layout.LAST_CHECKPOINT, weights_only=True)
    assert saved["epoch"] == whole["epochs_run"] and not (tmp_path / "split" / layout.METRICS_FILE).exists()

    monkeypatch.setattr(run_folder, "score_test", real_score)
    monkeypatch.setattr(engine, "train_epoch", lambda *a, **k: pytest.fail("nothing is left to train"))
    resumed = train_run(config, tmp_path / "split", device="cpu", progress=False)
    assert _without_time(resumed) == _without_time(whole)
    assert _history(tmp_path / "split") == _history(tmp_path / "whole")


@pytest.mark.parametrize(("key", "value"), [("in_channels", 4), ("in_channels", 1), ("num_classes", 2)])
def test_model_settings_the_data_cannot_train_are_refused(tmp_path: Path, key: str, value: int) -> None:
    config = tiny_config()
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, **{key: value}))
    required = {"in_channels": 3, "num_classes": 1}[key]
    with pytest.raises(AblationError, match=f"'model.{key}' must be {required} for training"):
        train_run(config, tmp_path / "run", device="cpu", progress=False)
    assert not (tmp_path / "run").exists()


def test_finished_run_still_checks_the_device(reference_run: tuple[RunConfig, Path, dict]) -> None:
    config, run_dir, _ = reference_run
    with pytest.raises(AblationError, match="unknown device 'foo'"):
        train_run(config, run_dir, device="foo", progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(AblationError, match="CUDA is not available"):
            train_run(config, run_dir, device="cuda", progress=False)


def test_non_finite_loss_fails_the_run(tmp_path: Path, monkeypatch) -> None:
    real_loss = pack.segmentation_loss

    def nan_after_first_epoch(logits, targets, *args, **kwargs):
        loss = real_loss(logits, targets, *args, **kwargs)
        return loss * float("nan") if len(epochs) else loss

    epochs: list[int] = []
    real_append = run_folder.append_history
    monkeypatch.setattr(
        run_folder, "append_history", lambda d, rows: (epochs.append(1), real_append(d, rows))
    )
    monkeypatch.setattr(pack, "segmentation_loss", nan_after_first_epoch)
    with pytest.raises(RunFailed, match="non-finite loss at epoch 2"):
        train_run(tiny_config(), tmp_path / "run", device="cpu", progress=False)
    status = read_json(tmp_path / "run" / layout.STATUS_FILE)
    assert status["status"] == "failed: non-finite loss at epoch 2"
    assert state.read_run_state(tmp_path / "run")[0] == "failed"
    assert not (tmp_path / "run" / layout.METRICS_FILE).exists()


def test_cli_huge_learning_rate_exits_non_zero(tmp_path: Path, capsys) -> None:
    code = main(
        ["train", "--dataset", "synthetic-nuclei", "--base-channels", "4", "--img-size", "32", "--epochs", "3",
         "--set", "train.lr=1e30", "--set", "train.augment=false", "--quiet", "--out", str(tmp_path)]
    )  # fmt: skip
    assert code != 0
    assert "non-finite loss at epoch" in capsys.readouterr().err
    (run_dir,) = layout.find_runs(tmp_path)
    assert state.read_run_state(run_dir)[2]["status"].startswith("failed: non-finite loss at epoch")


def test_cli_train_then_evaluate(tmp_path: Path, capsys) -> None:
    config_file = tmp_path / "run.toml"
    config_file.write_text(
        'seed = 7\n[train]\nmin_best_epoch = 0\nsave_predictions = 0\n[model]\nskips = "L1+L3"\n'
    )
    code = main(
        ["train", "--dataset", "synthetic-glands", "--connector", "cca", "--base-channels", "4", "--img-size",
         "32", "--epochs", "2", "--config", str(config_file), "--quiet", "--out", str(tmp_path / "results")]
    )  # fmt: skip
    assert code == 0
    (run_dir,) = layout.find_runs(tmp_path / "results")
    assert run_dir.name.startswith("synthetic-glands_cca_1010_s7_official_")
    assert not (run_dir / layout.PREDICTIONS_FILE).exists()
    metrics = read_json(run_dir / layout.METRICS_FILE)
    out_csv = tmp_path / "eval.csv"
    code = main(
        ["evaluate", "--checkpoint", str(run_dir / layout.BEST_CHECKPOINT), "--root", "synthetic-glands",
         "--device", "cpu", "--out", str(out_csv)]
    )  # fmt: skip
    assert code == 0
    assert out_csv.read_text() == (run_dir / layout.TEST_METRICS_FILE).read_text()
    assert f"{metrics['dice_mean']:.4f}" in capsys.readouterr().out

    # The run is done, but a bad --device is still an error.
    code = main(
        ["train", "--dataset", "synthetic-glands", "--connector", "cca", "--base-channels", "4", "--img-size",
         "32", "--epochs", "2", "--config", str(config_file), "--quiet", "--out", str(tmp_path / "results"),
         "--device", "foo"]
    )  # fmt: skip
    assert code == 2 and capsys.readouterr().err == "error: unknown device 'foo': use cpu, cuda or cuda:N\n"


def _tiny_monuseg(data_root: Path) -> None:
    """MoNuSeg/ in the reference layout under ``data_root``: a few random 40x40 PNGs with a blob mask each."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for folder, count in (("Train_Folder", 4), ("Val_Folder", 2), ("Test_Folder", 2)):
        for sub in ("img", "labelcol"):
            (data_root / "MoNuSeg" / folder / sub).mkdir(parents=True)
        for i in range(count):
            mask = np.zeros((40, 40), dtype=np.uint8)
            mask[5 + i : 20 + i, 8:25] = 255
            image = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(image).save(data_root / "MoNuSeg" / folder / "img" / f"{folder[:2]}{i}.png")
            Image.fromarray(mask).save(data_root / "MoNuSeg" / folder / "labelcol" / f"{folder[:2]}{i}.png")


def test_cli_evaluate_finds_the_data_root_of_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ABLATION_DATA", str(tmp_path / "nowhere"))
    data_root = tmp_path / "datasets"
    _tiny_monuseg(data_root)
    code = main(
        ["train", "--dataset", "monuseg", "--data-root", str(data_root), "--base-channels", "4", "--img-size",
         "32", "--epochs", "1", "--set", "train.min_best_epoch=0", "--set", "train.save_predictions=0",
         "--device", "cpu", "--quiet", "--out", str(tmp_path / "results")]
    )  # fmt: skip
    assert code == 0
    (run_dir,) = layout.find_runs(tmp_path / "results")
    best = str(run_dir / layout.BEST_CHECKPOINT)
    expected = (run_dir / layout.TEST_METRICS_FILE).read_text()
    capsys.readouterr()

    # Without --data-root the checkpoint's stored data_root is used, not $ABLATION_DATA.
    evaluate = ["evaluate", "--checkpoint", best, "--root", "monuseg", "--device", "cpu", "--out"]
    assert main([*evaluate, str(tmp_path / "stored.csv")]) == 0
    assert (tmp_path / "stored.csv").read_text() == expected

    # An explicit --data-root wins over the stored one. (A cache without the prepared file: that file alone
    # would stand in for the missing folder, docs/data.md.)
    moved = tmp_path / "moved"
    data_root.rename(moved)
    monkeypatch.setenv("ABLATION_CACHE", str(tmp_path / "fresh-cache"))
    err = _one_line_error(capsys, *evaluate, str(tmp_path / "gone.csv"))
    assert f"dataset 'monuseg' not found at {data_root / 'MoNuSeg'}" in err
    assert main([*evaluate, str(tmp_path / "moved.csv"), "--data-root", str(moved)]) == 0
    assert (tmp_path / "moved.csv").read_text() == expected


def _one_line_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(list(args)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_cli_evaluate_rejects_bad_checkpoints(
    reference_run: tuple[RunConfig, Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, run_dir, _ = reference_run
    best = run_dir / layout.BEST_CHECKPOINT
    evaluate = ["evaluate", "--root", "synthetic-nuclei", "--device", "cpu", "--checkpoint"]

    text = tmp_path / "x.pth.tar"
    text.write_text("hello\n")
    err = _one_line_error(capsys, *evaluate, str(text))
    assert f"cannot read checkpoint {text}: not a PyTorch checkpoint (KeyError" in err

    saved = torch.load(best, weights_only=True)
    saved["model"]["inc.conv.weight"] = torch.zeros(1)
    torch.save(saved, tmp_path / "bad_shape.pt")
    err = _one_line_error(capsys, *evaluate, str(tmp_path / "bad_shape.pt"))
    assert str(tmp_path / "bad_shape.pt") in err and "'inc.conv.weight' has shape (1,)" in err

    saved["config"]["model"]["connector"] = "foo"
    torch.save(saved, tmp_path / "bad_config.pt")
    err = _one_line_error(capsys, *evaluate, str(tmp_path / "bad_config.pt"))
    assert str(tmp_path / "bad_config.pt") in err and "unknown connector 'foo'" in err

    # UCTransNet's CCT fixes its token grid at the training size (32 px here).
    err = _one_line_error(capsys, *evaluate, str(best), "--img-size", "64")
    assert "this checkpoint was trained at img_size 32: use --img-size 32" in err

    err = _one_line_error(capsys, *evaluate, str(best), "--out", str(tmp_path))
    assert f"--out {tmp_path} is a folder" in err
    err = _one_line_error(capsys, *evaluate, str(best), "--out", str(text / "metrics.csv"))
    assert f"{text} is a file, not a folder" in err


def test_cli_rejects_bad_input(tmp_path: Path, capsys) -> None:
    assert main(["train", "--set", "train.nope=1", "--out", str(tmp_path)]) == 2
    assert "unknown config key 'train.nope'" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "missing.toml"), "--out", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tmp_path / "none.pt"), "--root", "synthetic-nuclei"]) == 2
    capsys.readouterr()
    for setting, key in (
        ("model.num_classes=2", "model.num_classes"),
        ("model.in_channels=4", "model.in_channels"),
    ):
        err = _one_line_error(capsys, "train", "--set", setting, "--device", "cpu", "--out", str(tmp_path))
        assert f"config key {key!r} must be" in err


def test_real_monuseg_small_run(shared_datasets: Path, tmp_path: Path) -> None:
    config = dataclasses.replace(
        tiny_config(max_epochs=1, save_predictions=0),
        dataset="monuseg",
        data_root=str(shared_datasets),
    )
    metrics = train_run(config, tmp_path / "run", device="cpu", progress=False)
    assert metrics["num_test_images"] == 14 and "object_f1_mean" not in metrics  # MoNuSeg: binary labels
    assert metrics["dataset"] == "monuseg"
