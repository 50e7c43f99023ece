"""train_packed: K runs trained as one fused pack write the run folders they would write alone.

The step-level equivalence of a fused pack and separate runs is in test_fused.py; here the engine around it:
run folders, per-run early stopping and slicing, resume after a kill, failure isolation, grouping.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from ablation.config import ModelConfig, RunConfig, TrainConfig
from ablation.errors import AblationError
from ablation.io import read_json
from ablation.models import build_model
from ablation.packing import can_pack, group_for_packing
from ablation.store import layout, state
from ablation.train import engine, run_folder
from ablation.train.engine import train_packed, train_run
from ablation.train.pack import Pack

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run_config(seed: int, skips: str, connector: str = "unet", **train: object) -> RunConfig:
    options = {"max_epochs": 3, "min_best_epoch": 0, "checkpoint_every": 2, "save_predictions": 4, **train}
    return RunConfig(
        dataset="synthetic-nuclei",
        seed=seed,
        model=ModelConfig(connector=connector, skips=skips, base_channels=4, img_size=32),
        train=TrainConfig(**options),
    )


def test_grouping() -> None:
    unet = [_run_config(seed, skips) for seed in (0, 1) for skips in ("1111", "1010", "0000")]
    cct = [_run_config(0, skips, "uctransnet") for skips in ("1111", "1011")]
    other_lr = _run_config(0, "1111", lr=1e-4)
    assert can_pack(unet) and not can_pack(cct) and not can_pack([unet[0], other_lr])
    assert not can_pack([unet[0], unet[0]]) and not can_pack([])
    packs = group_for_packing([*unet, *cct, other_lr], max_pack=4)
    assert sorted(len(p) for p in packs) == [1, 1, 1, 3, 3]  # 6 unet -> 3 + 3, not 4 + 2
    assert all(can_pack(p) for p in packs)
    assert sorted(layout.run_id(c) for p in packs for c in p) == sorted(
        layout.run_id(c) for c in [*unet, *cct, other_lr]
    )
    with pytest.raises(AblationError, match="pack_size must be >= 1"):
        group_for_packing(unet, 0)


def _history(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / layout.HISTORY_FILE) as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def test_a_run_draws_the_same_epoch_alone_and_in_a_pack() -> None:
    """Each run's batch order and transforms come from its own generator only, epoch after epoch."""
    generators = [torch.Generator().manual_seed(seed) for seed in (3, 4, 5)]
    alone = torch.Generator().manual_seed(4)
    for _ in range(2):  # two epochs: each draws randperm(N) then random_affine(N) from the run's generator
        order, theta = engine.draw_epoch(generators, 10, augment=True)
        own_order, own_theta = engine.draw_epoch([alone], 10, augment=True)
        assert order.shape == (3, 10) and theta.shape == (3, 10, 2, 3) and theta.dtype == torch.float32
        assert torch.equal(order[1], own_order[0]) and torch.equal(theta[1], own_theta[0])
        assert not torch.equal(order[0], order[1]) and sorted(order[1].tolist()) == list(range(10))
    assert torch.equal(generators[1].get_state(), alone.get_state())
    order, theta = engine.draw_epoch(generators, 10, augment=False)
    assert theta is None and torch.equal(order[1], torch.randperm(10, generator=alone))


def test_train_packed_writes_run_folders_like_train_run(tmp_path: Path) -> None:
    configs = [
        _run_config(seed, skips, max_epochs=4, patience=1)
        for seed, skips in enumerate(("1111", "1010", "0000"))
    ]
    dirs = [tmp_path / "packed" / layout.run_name(c) for c in configs]
    results = train_packed(configs, dirs, device="cpu", progress=False)

    for config, run_dir, result in zip(configs, dirs, results):
        for name in (
            layout.CONFIG_FILE, layout.STATUS_FILE, layout.HISTORY_FILE, layout.LAST_CHECKPOINT,
            layout.BEST_CHECKPOINT, layout.TEST_METRICS_FILE, layout.PREDICTIONS_FILE, layout.METRICS_FILE,
        ):  # fmt: skip
            assert (run_dir / name).is_file(), name
        assert (
            state.read_run_state(run_dir)[0] == "done" and read_json(run_dir / layout.METRICS_FILE) == result
        )
        assert result["run_id"] == layout.run_id(config) and result["skips"] == config.model.skips
        assert (
            0.0 <= result["dice_mean"] <= 1.0 and np.isfinite(result["hd95_mean"]) and result["seconds"] > 0
        )
        best = torch.load(run_dir / layout.BEST_CHECKPOINT, weights_only=True)
        build_model(config.model).load_state_dict(best["model"])  # the structural layout of ITS subset
        last = torch.load(run_dir / layout.LAST_CHECKPOINT, weights_only=True)
        assert last["epoch"] == result["epochs_run"] and len(last["optimizer"]["state"]) > 0

    # With patience 1 the variants stop at different epochs; each stopped one left the pack and kept its record.
    for run_dir, result in zip(dirs, results):
        assert len(_history(run_dir)) == result["epochs_run"]
        assert result["stopped_early"] == (result["epochs_run"] < 4)

    # Each variant matches its own train_run (same init, batches and augmentation) up to float32 rounding.
    for config, run_dir, result in zip(configs, dirs, results):
        alone = train_run(config, tmp_path / "alone" / run_dir.name, device="cpu", progress=False)
        assert result["parameters"] == alone["parameters"] and result["gflops"] == alone["gflops"]
        packed_rows, alone_rows = _history(run_dir), _history(tmp_path / "alone" / run_dir.name)
        for packed_row, alone_row in zip(packed_rows, alone_rows):
            assert packed_row["lr"] == pytest.approx(alone_row["lr"])
            assert packed_row["train_loss"] == pytest.approx(alone_row["train_loss"], abs=1e-3)
        assert packed_rows[0]["val_dice"] == pytest.approx(alone_rows[0]["val_dice"], abs=1e-3)

    again = train_packed(configs, dirs, device="cpu", progress=False)  # done runs are returned, not retrained
    assert again == results

    # train_run reads a packed variant's checkpoint_last.pt (weights, Adam state, schedule, generators).
    full = next(
        i for i, result in enumerate(results) if result["epochs_run"] == 4
    )  # a run train_run won't extend
    (dirs[full] / layout.METRICS_FILE).unlink()
    finished = train_run(configs[full], dirs[full], device="cpu", progress=False)
    assert finished["dice_mean"] == pytest.approx(results[full]["dice_mean"]) and finished["epochs_run"] == 4


def _train_until_crash(
    monkeypatch: pytest.MonkeyPatch, configs: list[RunConfig], dirs: list[Path], epoch: int
) -> None:
    """Train a pack until a simulated crash just after its first run recorded ``epoch`` (history, checkpoint)."""
    real_end_epoch = engine.end_epoch

    def crash(variant, numbers, **kwargs):
        done = real_end_epoch(variant, numbers, **kwargs)
        if numbers[0] == epoch:
            raise RuntimeError("simulated crash")
        return done

    monkeypatch.setattr(engine, "end_epoch", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_packed(configs, dirs, device="cpu", progress=False)
    monkeypatch.setattr(engine, "end_epoch", real_end_epoch)


def test_resume_after_a_kill_equals_the_uninterrupted_pack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configs = [
        _run_config(seed, skips, max_epochs=3) for seed, skips in ((3, "1111"), (4, "0101"), (5, "0000"))
    ]
    whole = train_packed(
        configs, [tmp_path / "whole" / str(i) for i in range(3)], device="cpu", progress=False
    )

    dirs = [tmp_path / "split" / str(i) for i in range(3)]
    _train_until_crash(monkeypatch, configs, dirs, epoch=3)  # checkpoints exist from epoch 2
    assert all(state.read_run_state(d)[0] == "failed" for d in dirs)
    assert len(_history(dirs[0])) == 3  # epoch 3 was appended before the crash: resuming must redo it
    resumed = train_packed(configs, dirs, device="cpu", progress=False)
    for index, (before, after) in enumerate(zip(whole, resumed)):
        assert {k: v for k, v in after.items() if k != "seconds"} == {
            k: v for k, v in before.items() if k != "seconds"
        }
        rows = [{k: v for k, v in row.items() if k != "seconds"} for row in _history(dirs[index])]
        assert rows == [
            {k: v for k, v in row.items() if k != "seconds"}
            for row in _history(tmp_path / "whole" / str(index))
        ]
        best = torch.load(dirs[index] / layout.BEST_CHECKPOINT, weights_only=True)["model"]
        expected = torch.load(tmp_path / "whole" / str(index) / layout.BEST_CHECKPOINT, weights_only=True)[
            "model"
        ]
        assert all(torch.equal(best[key], expected[key]) for key in expected)


def test_resume_finishes_variants_that_crashed_after_their_last_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A variant with its final epoch in checkpoint_last.pt but no metrics.json is finished on resume."""
    configs = [_run_config(seed, "1111", max_epochs=2) for seed in (7, 8)]
    whole = train_packed(
        configs, [tmp_path / "whole" / str(i) for i in range(2)], device="cpu", progress=False
    )

    real_score = run_folder.score_test

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated crash")

    # The first variant's test evaluation crashes after its epoch-2 checkpoint; the second stops at epoch 1.
    dirs = [tmp_path / "split" / str(i) for i in range(2)]
    monkeypatch.setattr(run_folder, "score_test", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_packed(configs, dirs, device="cpu", progress=False)
    assert torch.load(dirs[0] / layout.LAST_CHECKPOINT, weights_only=True)["epoch"] == 2
    assert not any((d / layout.METRICS_FILE).exists() for d in dirs)

    monkeypatch.setattr(run_folder, "score_test", real_score)
    real_end_epoch, trained = engine.end_epoch, []

    def counting_end_epoch(variant, *args, **kwargs):
        trained.append(variant.position)
        return real_end_epoch(variant, *args, **kwargs)

    monkeypatch.setattr(engine, "end_epoch", counting_end_epoch)
    resumed = train_packed(configs, dirs, device="cpu", progress=False)
    assert 0 not in trained and trained.count(1) == 2  # only the second variant trains its two epochs
    for before, after, run_dir in zip(whole, resumed, dirs):
        assert after["status"] == "done" and read_json(run_dir / layout.METRICS_FILE) == after
        assert after["epochs_run"] == before["epochs_run"] == 2 and len(_history(run_dir)) == 2
        assert after["dice_mean"] == pytest.approx(before["dice_mean"], abs=1e-6)


def test_non_finite_variant_fails_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_epoch = engine.train_epoch

    def nan_for_second_variant(pack, *args, **kwargs):
        losses = real_epoch(pack, *args, **kwargs)
        if pack.size == 2:  # before the failed variant is dropped
            losses = losses * torch.tensor([1.0, float("nan")])
        return losses

    monkeypatch.setattr(engine, "train_epoch", nan_for_second_variant)
    configs = [_run_config(5, "1111", max_epochs=2), _run_config(6, "0110", max_epochs=2)]
    dirs = [tmp_path / "a", tmp_path / "b"]
    results = train_packed(configs, dirs, device="cpu", progress=False)
    assert results[0]["status"] == "done" and results[0]["epochs_run"] == 2
    assert results[1]["status"] == "failed: non-finite loss at epoch 1"
    assert read_json(dirs[1] / layout.STATUS_FILE)["status"] == "failed: non-finite loss at epoch 1"
    assert state.read_run_state(dirs[1])[0] == "failed" and not (dirs[1] / layout.METRICS_FILE).exists()


CUDA_OUT_OF_MEMORY = torch.cuda.OutOfMemoryError(
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 139 GiB"
)


def _out_of_memory_when(too_large, error: RuntimeError = CUDA_OUT_OF_MEMORY) -> object:
    """A Pack.validate that raises ``error`` (CUDA's out-of-memory error) for the packs ``too_large(pack)`` picks."""
    real_validate = Pack.validate

    def validate(pack, *args, **kwargs):
        if too_large(pack):
            raise error
        return real_validate(pack, *args, **kwargs)

    return validate


def test_a_pack_that_does_not_fit_is_split_and_trains_as_it_would_have(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of memory in a pack's first epoch (after its training steps), fresh or resumed: it is trained in halves,
    each from where the whole pack started (weights, Adam states, generators), to the results it would have had."""
    configs = [
        _run_config(seed, skips, max_epochs=4)
        for seed, skips in ((0, "1111"), (1, "1010"), (2, "0000"), (3, "0110"))
    ]
    fits = train_packed(configs, [tmp_path / "fits" / str(i) for i in range(4)], device="cpu", progress=False)

    resumed = [tmp_path / "resumed" / str(i) for i in range(4)]
    # checkpoints exist from epoch 2: the resumed pack's first epoch is epoch 3
    _train_until_crash(monkeypatch, configs, resumed, epoch=3)

    sizes = []
    real_train_pack = engine._train_pack

    def recording_train_pack(variants, *args):
        sizes.append(len(variants))
        return real_train_pack(variants, *args)

    monkeypatch.setattr(engine, "_train_pack", recording_train_pack)
    monkeypatch.setattr(Pack, "validate", _out_of_memory_when(lambda pack: pack.size > 2))
    fresh = [tmp_path / "fresh" / str(i) for i in range(4)]
    for dirs in (fresh, resumed):
        sizes.clear()
        split = train_packed(configs, dirs, device="cpu", progress=False)
        assert sizes == [4, 2, 2]
        for index, (whole, halves) in enumerate(zip(fits, split)):
            assert halves["status"] == "done" and halves["epochs_run"] == whole["epochs_run"] == 4
            for key in ("dice_mean", "iou_mean", "hd95_mean"):
                assert halves[key] == pytest.approx(whole[key], abs=1e-4), key
            for row, expected in zip(_history(dirs[index]), _history(tmp_path / "fits" / str(index))):
                for key in ("train_loss", "val_loss", "val_dice", "lr"):
                    assert row[key] == pytest.approx(expected[key], abs=1e-4), key
            assert read_json(dirs[index] / layout.STATUS_FILE) == {
                "status": "done",
                "epoch": 4,
                "pack_size": 2,
            }
            assert read_json(tmp_path / "fits" / str(index) / layout.STATUS_FILE)["pack_size"] == 4


def test_a_run_that_does_not_fit_alone_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _run_config(0, "1111", max_epochs=2)
    monkeypatch.setattr(Pack, "validate", _out_of_memory_when(lambda pack: True))
    with pytest.raises(AblationError) as caught:
        train_run(config, tmp_path / layout.run_name(config), device="cpu", progress=False)
    expected = (
        f"run {layout.run_name(config)} does not fit in the memory of cpu even alone (CUDA out of memory. "
        "Tried to allocate 2.00 GiB): lower train.batch_size, model.img_size or model.base_channels"
    )
    assert str(caught.value) == expected
    status = read_json(tmp_path / layout.run_name(config) / layout.STATUS_FILE)["status"]
    assert status == f"failed: AblationError: {expected}"


def test_out_of_memory_after_the_first_epoch_is_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Later epochs changed the runs' folders, so a pack is split only for a failure in its first epoch."""
    configs = [_run_config(seed, "1111", max_epochs=3) for seed in (0, 1)]
    calls = []
    monkeypatch.setattr(
        Pack, "validate", _out_of_memory_when(lambda pack: calls.append(1) or len(calls) == 2)
    )
    dirs = [tmp_path / "a", tmp_path / "b"]
    with pytest.raises(torch.cuda.OutOfMemoryError):
        train_packed(configs, dirs, device="cpu", progress=False)
    assert len(calls) == 2  # not retried
    for run_dir in dirs:
        status = read_json(run_dir / layout.STATUS_FILE)
        assert status["status"].startswith("failed: OutOfMemoryError: CUDA out of memory")
        assert len(_history(run_dir)) == 1


def test_bad_input(tmp_path: Path) -> None:
    config = _run_config(0, "1111")
    with pytest.raises(AblationError, match="run folders"):
        train_packed([config], [], device="cpu")
    with pytest.raises(AblationError, match="cannot share a pack"):
        train_packed([config, _run_config(0, "1111", lr=0.1)], [tmp_path / "a", tmp_path / "b"], device="cpu")
    with pytest.raises(AblationError, match="share a run folder"):
        train_packed([config, _run_config(1, "1111")], [tmp_path / "a", tmp_path / "a"], device="cpu")
    with pytest.raises(AblationError, match="unknown device 'foo'"):
        train_packed([config], [tmp_path / "a"], device="foo")
    wide = RunConfig(dataset=config.dataset, model=ModelConfig(in_channels=4, base_channels=4, img_size=32))
    with pytest.raises(AblationError, match="'model.in_channels' must be 3 for training"):
        train_packed([wide], [tmp_path / "b"], device="cpu")


@pytest.mark.parametrize(
    ("error", "split"),
    [
        (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), True),
        (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), True),
        (RuntimeError("CUDA error: an illegal memory access was encountered"), False),
    ],
    ids=["cudnn-alloc", "cublas-alloc", "other-error"],
)
def test_library_allocation_failures_split_a_pack_and_other_errors_do_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: RuntimeError, split: bool
) -> None:
    configs = [_run_config(seed, "1111", max_epochs=1) for seed in (0, 1)]
    monkeypatch.setattr(Pack, "validate", _out_of_memory_when(lambda pack: pack.size > 1, error))
    dirs = [tmp_path / "a", tmp_path / "b"]
    if split:
        results = train_packed(configs, dirs, device="cpu", progress=False)
        assert [r["status"] for r in results] == ["done", "done"]
        assert [read_json(d / layout.STATUS_FILE)["pack_size"] for d in dirs] == [1, 1]
    else:
        with pytest.raises(RuntimeError, match="illegal memory access"):
            train_packed(configs, dirs, device="cpu", progress=False)
