"""The CUDA path of a run: bf16 autocast, channels_last, device-resident data, resume. Skipped without CUDA."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ablation import store
from ablation.config import ModelConfig, RunConfig, TrainConfig
from ablation.train import loop
from ablation.train.device import setup_device
from ablation.train.loop import train_run

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ABLATION_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _config(connector: str) -> RunConfig:
    return RunConfig(
        dataset="synthetic-glands",
        model=ModelConfig(connector=connector, base_channels=8, img_size=64),
        train=TrainConfig(max_epochs=4, min_best_epoch=0, checkpoint_every=2, test_time_masks=True),
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
    assert (tmp_path / "whole" / store.MASKED_METRICS_FILE).is_file()

    real_validate, calls = loop.validate, []

    def crashing_validate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(loop, "validate", crashing_validate)
    with pytest.raises(RuntimeError):
        train_run(config, tmp_path / "split", device="cuda", progress=False)
    monkeypatch.setattr(loop, "validate", real_validate)
    resumed = train_run(config, tmp_path / "split", device="cuda", progress=False)
    # Deterministic algorithms are on (warn-only), so the resumed run is expected to match bit for bit.
    for key in ("best_epoch", "dice_mean", "iou_mean", "hd95_mean", "dice_micro"):
        assert resumed[key] == whole[key], key
