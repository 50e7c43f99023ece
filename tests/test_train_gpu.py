"""The CUDA path: bf16 autocast, channels_last, fused packs, per-variant streams, CUDA graphs, resume.

Skipped without CUDA. Comparisons between two CUDA paths run in fp32 with deterministic algorithms, where
they agree up to summation order.
"""

from __future__ import annotations

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


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ABLATION_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _config(connector: str, **train: object) -> RunConfig:
    options = {"max_epochs": 4, "min_best_epoch": 0, "checkpoint_every": 2, "test_time_masks": True, **train}
    return RunConfig(
        dataset="synthetic-glands",
        model=ModelConfig(connector=connector, base_channels=8, img_size=64),
        train=TrainConfig(**options),
    )


def test_cuda_setup_uses_bf16_and_channels_last() -> None:
    setup = setup_device("cuda")
    assert setup.dtype == torch.bfloat16 and setup.channels_last
    assert setup_device("cuda", precision="fp32").dtype is None


@pytest.mark.parametrize("connector", ["unet", "uctransnet"])
def test_cuda_run_completes_and_resumes_identically(connector: str, tmp_path: Path, monkeypatch) -> None:
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
    # Deterministic algorithms are on (warn-only), so the resumed run is expected to match bit for bit.
    for key in ("best_epoch", "dice_mean", "iou_mean", "hd95_mean", "dice_micro"):
        assert resumed[key] == whole[key], key


def _steps(train: TrainConfig, configs: list[ModelConfig], steps: int = 3) -> dict[str, torch.Tensor]:
    """Parameters and BatchNorm statistics of a pack after ``steps`` identical fp32 steps on CUDA."""
    setup = setup_device("cuda", precision="fp32")
    models = []
    for seed, config in enumerate(configs):
        torch.manual_seed(seed)
        models.append(build_model(config).to(setup.device).to(memory_format=torch.channels_last))
    pack = Pack(models, configs, setup=setup, train=train)
    generator = torch.Generator(device=setup.device).manual_seed(0)
    shape = (len(configs), train.batch_size, 3, 64, 64)
    with determinism(True):
        for _ in range(steps):
            images = torch.rand(shape, generator=generator, device=setup.device)
            masks = (
                torch.rand(shape[:2] + (1, 64, 64), generator=generator, device=setup.device) > 0.7
            ).float()
            losses = pack.step(images, masks)
    torch.cuda.synchronize()
    assert torch.isfinite(losses).all()
    return {
        k: v.detach().float().clone() for k, v in [*pack.network.named_parameters(), *pack.network.buffers()]
    }


@pytest.mark.parametrize("connector", ["unet", "uctransnet"])
def test_cuda_graph_step_equals_the_eager_step(connector: str) -> None:
    skips = ["1111", "0101", "0000"] if connector == "unet" else ["1111"] * 2
    configs = [ModelConfig(connector=connector, skips=s, base_channels=8, img_size=64, embedding_dropout=0.0,
                           attention_dropout=0.0) for s in skips]  # fmt: skip
    eager = _steps(TrainConfig(), configs)
    graphed = _steps(TrainConfig(cuda_graphs=True), configs)
    for name, tensor in eager.items():
        torch.testing.assert_close(graphed[name], tensor, rtol=1e-4, atol=1e-5, msg=name)


def test_per_variant_streams_equal_the_grouped_convolution() -> None:
    configs = [ModelConfig(skips=s, base_channels=8, img_size=64) for s in ("1111", "1010", "0110")]
    grouped = _steps(TrainConfig(), configs)
    streams = _steps(TrainConfig(pack_conv="per_variant"), configs)
    for name, tensor in grouped.items():
        torch.testing.assert_close(streams[name], tensor, rtol=1e-4, atol=1e-5, msg=name)


def test_cuda_graph_pack_resumes_without_graphs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pack trained with CUDA graphs (bf16) checkpoints plain values; killed, it resumes in eager mode."""
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
    results = train_packed(eager, dirs, device="cuda", progress=False)
    assert all(
        r["status"] == "done" and r["epochs_run"] == 3 and math.isfinite(r["dice_mean"]) for r in results
    )
