"""The CUDA path: bf16 autocast, channels_last, fused packs, per-variant streams, CUDA graphs, resume.

Skipped without CUDA. Comparisons between two CUDA paths run in fp32 with deterministic algorithms (the slicing
one in bf16, the training path), where they agree up to summation order. Adam turns rounding noise in gradients
that are zero in exact arithmetic (conv biases before BatchNorm) into steps of size lr, so the weights are compared
by their whole update (:func:`_assert_same_training`), not coordinate by coordinate.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import pytest
import torch

from ablation.config import ModelConfig, RunConfig, TrainConfig
from ablation.models import build_model
from ablation.store import layout
from ablation.train.device import determinism, setup_device
from ablation.train.engine import train_packed, train_run
from ablation.train.pack import Pack

pytestmark = pytest.mark.gpu


def _config(connector: str, **train: object) -> RunConfig:
    options = {"max_epochs": 4, "min_best_epoch": 0, "checkpoint_every": 2, "test_time_masks": True, **train}
    return RunConfig(
        dataset="synthetic-glands",
        model=ModelConfig(connector=connector, base_channels=8, img_size=64),
        train=TrainConfig(**options),
    )


def _history(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / layout.HISTORY_FILE) as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def _batches(count: int, variants: int, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` random batches ``(K, B, 3, 64, 64)`` images and ``(K, B, 1, 64, 64)`` masks on CUDA."""
    generator = torch.Generator(device="cuda").manual_seed(0)
    shape = (variants, batch, 3, 64, 64)
    return [
        (
            torch.rand(shape, generator=generator, device="cuda"),
            (torch.rand(shape[:2] + (1, 64, 64), generator=generator, device="cuda") > 0.7).float(),
        )
        for _ in range(count)
    ]


def _pack(train: TrainConfig, configs: list[ModelConfig], precision: str = "fp32") -> Pack:
    setup = setup_device("cuda", precision=precision)
    models = []
    for seed, config in enumerate(configs):
        torch.manual_seed(seed)
        models.append(build_model(config).to(setup.device).to(memory_format=torch.channels_last))
    return Pack(models, configs, setup=setup, train=train)


def _weights(pack: Pack) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().clone() for k, v in pack.network.named_parameters()}


def _update_gap(
    start: dict[str, torch.Tensor], ours: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]
) -> float:
    """How far our update of the weights ``start`` names is from the reference's, relative to the reference's."""
    gap = torch.cat([(ours[name] - reference[name]).flatten() for name in start])
    update = torch.cat([(reference[name] - start[name]).flatten() for name in start])
    assert update.norm() > 0
    return float(gap.norm() / update.norm())


def _assert_same_training(
    start: dict[str, torch.Tensor],
    ours: dict[str, torch.Tensor],
    reference: dict[str, torch.Tensor],
    gap: float = 0.05,
) -> None:
    """Our weights moved from ``start`` as the reference's did (within ``gap``); BatchNorm statistics agree."""
    assert _update_gap(start, ours, reference) < gap
    for name, tensor in reference.items():
        if name not in start:
            torch.testing.assert_close(ours[name], tensor, rtol=1e-3, atol=1e-3, msg=name)


def _steps(
    train: TrainConfig, configs: list[ModelConfig], steps: int = 3, epochs: int = 1
) -> dict[str, torch.Tensor]:
    """Parameters and BatchNorm statistics of a pack after ``epochs`` x ``steps`` identical fp32 steps on CUDA,
    the schedule stepped after each epoch as the engine does."""
    pack = _pack(train, configs)
    if train.cuda_graphs:  # the first capture reads the learning rate from where the optimiser has it now
        assert pack.optimizer.param_groups[0]["lr"] is pack.lr_tensor
    batches = _batches(steps * epochs, len(configs), train.batch_size)
    with determinism(True):
        for epoch in range(epochs):
            for images, masks in batches[epoch * steps : (epoch + 1) * steps]:
                losses = pack.step(images, masks)
                assert torch.isfinite(losses).all()  # read before the next step (a graph's output buffer)
            pack.step_schedule()
            if pack.lr_tensor is not None:  # the tensor the captured step reads holds the schedule's value
                assert pack.optimizer.param_groups[0]["lr"] is pack.lr_tensor
                assert pack.lr_tensor.item() == pytest.approx(
                    float(pack.scheduler.get_last_lr()[0]), rel=1e-6
                )
    torch.cuda.synchronize()
    assert bool(pack._graphs) == train.cuda_graphs
    return {
        k: v.detach().float().clone()
        for k, v in [*pack.network.named_parameters(), *pack.network.named_buffers()]
    }


def test_cuda_graph_pack_recaptures_after_slicing_and_keeps_training() -> None:
    """Pack.select with CUDA graphs (bf16, the training path): the step is captured again for the smaller pack
    and the kept runs train as in an eager pack sliced alike (within bf16 tolerance)."""
    configs = [ModelConfig(skips=s, base_channels=8, img_size=64) for s in ("1111", "0101", "0000")]
    keep = [0, 2]
    weights = {}
    for graphs in (False, True):
        train = TrainConfig(cuda_graphs=graphs)
        pack = _pack(train, configs, precision="auto")
        assert pack.setup.dtype == torch.bfloat16
        initial = {name: tensor[keep] for name, tensor in _weights(pack).items()}
        batches = _batches(6, len(configs), train.batch_size)
        with determinism(True):
            for images, masks in batches[:3]:
                pack.step(images, masks)
            pack.select(keep)
            assert pack.size == 2 and not pack._graphs
            at_select = _weights(pack)
            for images, masks in batches[3:]:
                assert torch.isfinite(pack.step(images[keep], masks[keep])).all()
        torch.cuda.synchronize()
        if graphs:
            assert list(pack._graphs) == [(2, train.batch_size, 3, 64, 64)]  # captured again, for K = 2
        weights[graphs] = initial, at_select, _weights(pack)
    (initial, eager_select, eager_end), (_, graph_select, graph_end) = weights[False], weights[True]
    assert _update_gap(initial, graph_select, eager_select) < 0.1  # before slicing
    assert _update_gap(graph_select, graph_end, eager_end) < 0.1  # after: stale graphs would leave a gap of 1


def test_cuda_setup_uses_bf16_and_channels_last() -> None:
    setup = setup_device("cuda")
    assert setup.dtype == torch.bfloat16 and setup.channels_last
    assert setup_device("cuda", precision="fp32").dtype is None


@pytest.mark.parametrize("connector", ["unet", "uctransnet"])
def test_cuda_run_completes_and_resumes_to_the_same_result(
    connector: str, tmp_path: Path, monkeypatch
) -> None:
    config = _config(connector)
    whole = train_run(config, tmp_path / "whole", device="cuda", progress=False)
    assert whole["device"] != "cpu" and math.isfinite(whole["dice_mean"])
    assert (tmp_path / "whole" / layout.MASKED_METRICS_FILE).is_file()

    real_validate, calls = Pack.validate, []

    def crashing_validate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(Pack, "validate", crashing_validate)
    with pytest.raises(RuntimeError):
        train_run(config, tmp_path / "split", device="cuda", progress=False)
    monkeypatch.setattr(Pack, "validate", real_validate)
    resumed = train_run(config, tmp_path / "split", device="cuda", progress=False)
    # Deterministic algorithms are on, but warn-only: kernels without a deterministic implementation, bf16 and
    # cuDNN's choices may change the last bits, so on GPU the resumed run agrees within tolerance (on CPU in
    # float32 it is bit for bit, tests/test_train.py).
    for epoch, (ours, theirs) in enumerate(zip(_history(tmp_path / "split"), _history(tmp_path / "whole"))):
        assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=0.02), epoch
    for key in ("dice_mean", "iou_mean", "dice_micro"):
        assert resumed[key] == pytest.approx(whole[key], abs=0.05), key


@pytest.mark.parametrize("connector", ["unet", "uctransnet"])
def test_cuda_graph_step_equals_the_eager_step(connector: str) -> None:
    skips = ["1111", "0101", "0000"] if connector == "unet" else ["1111"] * 2
    configs = [ModelConfig(connector=connector, skips=s, base_channels=8, img_size=64, embedding_dropout=0.0,
                           attention_dropout=0.0) for s in skips]  # fmt: skip
    start = _weights(_pack(TrainConfig(), configs))
    eager = _steps(TrainConfig(), configs)
    graphed = _steps(TrainConfig(cuda_graphs=True), configs)
    _assert_same_training(start, graphed, eager)


def test_cuda_graph_pack_follows_the_cosine_schedule() -> None:
    """The captured Adam step reads the learning rate from Pack.lr_tensor, which step_schedule fills each epoch
    (checked in _steps); the weights move as the eager pack's do."""
    configs = [ModelConfig(skips=s, base_channels=8, img_size=64) for s in ("1111", "0101")]
    train = TrainConfig(scheduler_t0=2)  # lr 1e-3, 5.5e-4, 1e-3: stuck at 1e-3, the gap is 0.27 (CPU, fp32)
    start = _weights(_pack(train, configs))
    eager = _steps(train, configs, steps=2, epochs=3)
    graphed = _steps(dataclasses.replace(train, cuda_graphs=True), configs, steps=2, epochs=3)
    _assert_same_training(start, graphed, eager)


def test_per_variant_streams_equal_the_grouped_convolution() -> None:
    configs = [ModelConfig(skips=s, base_channels=8, img_size=64) for s in ("1111", "1010", "0110")]
    start = _weights(_pack(TrainConfig(), configs))
    grouped = _steps(TrainConfig(), configs)
    streams = _steps(TrainConfig(pack_conv="per_variant"), configs)
    _assert_same_training(start, streams, grouped)  # 0.017 on CPU, where the two orders differ too


def test_cuda_graph_pack_resumes_without_graphs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pack trained with CUDA graphs (bf16) checkpoints plain values; killed, its runs resume in eager mode,
    each alone: the fused Adam of a single NHWC network gets the saved moments laid out like its parameters."""
    train = {"cuda_graphs": True, "max_epochs": 3, "test_time_masks": False}
    configs = [dataclasses.replace(_config("unet", **train), seed=seed) for seed in (0, 1)]
    dirs = [tmp_path / str(seed) for seed in (0, 1)]
    real_validate, calls = Pack.validate, []

    def crashing_validate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # epoch 3; checkpoints exist from epoch 2
            raise RuntimeError("simulated crash")
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(Pack, "validate", crashing_validate)
    with pytest.raises(RuntimeError):
        train_packed(configs, dirs, device="cuda", progress=False)
    monkeypatch.setattr(Pack, "validate", real_validate)
    last = torch.load(dirs[0] / layout.LAST_CHECKPOINT, weights_only=True)
    assert last["epoch"] == 2 and all(isinstance(lr, float) for lr in last["scheduler"]["base_lrs"])
    eager = [dataclasses.replace(c, train=dataclasses.replace(c.train, cuda_graphs=False)) for c in configs]
    results = [train_packed([c], [d], device="cuda", progress=False)[0] for c, d in zip(eager, dirs)]
    assert all(
        r["status"] == "done" and r["epochs_run"] == 3 and math.isfinite(r["dice_mean"]) for r in results
    )
