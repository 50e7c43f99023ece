"""Packing in the grid runner: grouping, automatic pack size, and a packed unit trained end to end."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from ablation.config import ModelConfig, RunConfig, TrainConfig
from ablation.errors import AblationError
from ablation.grid import expand_spec, run_grid
from ablation.grid.runner import plan_units, resolve_pack_size
from ablation.grid.spec import load_spec
from ablation.packing import MAX_AUTO_PACK, auto_pack_size, can_pack, estimated_variant_bytes
from ablation.store import run_name, run_status

pytest.importorskip("ablation.train.engine", reason="the packed trainer is not part of this build")

GIB = 1024**3


def _config(connector: str = "unet", skips: str = "1111", seed: int = 0, **model: object) -> RunConfig:
    return RunConfig(
        dataset="synthetic-nuclei",
        seed=seed,
        model=ModelConfig(connector=connector, skips=skips, img_size=32, base_channels=4, **model),
        train=TrainConfig(max_epochs=2, min_best_epoch=0, checkpoint_every=1, save_predictions=2),
    )


def test_plan_units_packs_maskable_subsets_and_keeps_cct_subsets_apart() -> None:
    unet = [_config("unet", skips) for skips in ("1111", "1010", "0000", "0110")]
    cct = [_config("uctransnet", skips) for skips in ("1111", "1011")]
    units = plan_units(unet + cct, pack_size=4)
    assert sorted(len(unit) for unit in units) == [1, 1, 4]
    assert all(can_pack(unit) for unit in units)
    assert plan_units(unet, pack_size=1) == [[config] for config in unet]
    with pytest.raises(AblationError, match="pack_size must be >= 1"):
        plan_units(unet, pack_size=0)


def test_test_time_masks_do_not_split_a_pack() -> None:
    masked = dataclasses.replace(_config(), train=dataclasses.replace(_config().train, test_time_masks=True))
    assert can_pack([masked, _config(skips="1010"), _config(skips="0000")])
    assert len(plan_units([masked, _config(skips="1010")], pack_size=16)) == 1


def test_runs_prepared_differently_never_share_a_pack() -> None:
    other = dataclasses.replace(_config(skips="1010"), interpolation="bicubic")
    assert not can_pack([_config(), other])
    spec = {"datasets": ["synthetic-nuclei"], "subsets": ["1111"], "interpolation": "bicubic"}
    assert {config.interpolation for config in expand_spec(spec)} == {"bicubic"}
    with pytest.raises(AblationError, match="unknown interpolation 'area'"):
        expand_spec({**spec, "interpolation": "area"})


def test_auto_pack_size_scales_with_memory_and_model() -> None:
    big = dataclasses.replace(_config(), model=ModelConfig(connector="unet", base_channels=64, img_size=224))
    ctrans = dataclasses.replace(big, model=dataclasses.replace(big.model, connector="uctransnet"))
    assert estimated_variant_bytes(ctrans) > estimated_variant_bytes(big)
    assert auto_pack_size([big], 80 * GIB) > auto_pack_size([ctrans], 80 * GIB) >= 1
    assert auto_pack_size([big], 1 * GIB) == 1
    assert auto_pack_size([_config()], 80 * GIB) == MAX_AUTO_PACK  # tiny models: capped
    # No GPU: automatic packing trains single runs; an explicit size is kept.
    assert resolve_pack_size(None, [big], "local", gpus=[]) == 1
    assert resolve_pack_size(3, [big], "local", gpus=[]) == 3


def test_spec_pack_size_accepts_auto_and_integers(tmp_path: Path) -> None:
    base = 'datasets = ["synthetic-nuclei"]\n'
    for text, expected in (("", None), ('pack_size = "auto"\n', None), ("pack_size = 4\n", 4)):
        (tmp_path / "s.toml").write_text(base + text)
        assert load_spec(tmp_path / "s.toml").pack_size == expected
    (tmp_path / "s.toml").write_text(base + 'pack_size = "lots"\n')
    with pytest.raises(AblationError, match="'pack_size' must be 'auto' or a positive integer, got 'lots'"):
        load_spec(tmp_path / "s.toml")


def test_grid_trains_a_packed_unit_and_writes_every_run(tmp_path: Path, monkeypatch) -> None:
    import torch

    import ablation.train.engine as packed

    monkeypatch.setattr(torch, "get_num_threads", torch.get_num_threads)  # keep the suite's thread setting
    calls: list[int] = []
    real = packed.train_packed

    def counting(configs, out_dirs, **kwargs):
        calls.append(len(configs))
        return real(configs, out_dirs, **kwargs)

    monkeypatch.setattr(packed, "train_packed", counting)
    spec = {
        "datasets": ["synthetic-nuclei"],
        "subsets": ["1111", "1010", "0000"],
        "pack_size": 3,
        "model": {"img_size": 32, "base_channels": 4},
        "train": {"max_epochs": 2, "min_best_epoch": 0, "checkpoint_every": 1, "save_predictions": 2},
    }
    configs = expand_spec(spec)
    summary = run_grid(configs, tmp_path, workers=1, pack_size=3, progress=False)
    assert calls == [3]
    assert summary.exit_code == 0 and sorted(summary.names("done")) == sorted(run_name(c) for c in configs)
    assert all(run_status(tmp_path / run_name(c)) == "done" for c in configs)
    # A rerun finds everything done and trains nothing.
    again = run_grid(configs, tmp_path, workers=1, pack_size=3, progress=False)
    assert calls == [3] and len(again.names("skipped")) == 3


def test_gpus_and_memory_are_read_from_nvidia_smi(tmp_path: Path, monkeypatch) -> None:
    from ablation.grid.local import detect_gpus, gpu_memory_bytes

    fake = tmp_path / "nvidia-smi"
    fake.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        '  --query-gpu=index) printf "0\\n1\\n" ;;\n'
        '  *) printf "0, GPU-aaa, 143771\\n1, GPU-bbb, 81559\\n" ;;\n'
        "esac\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert detect_gpus() == ["0", "1"]
    assert gpu_memory_bytes(["0"]) == 143771 * 1024**2
    assert gpu_memory_bytes(["0", "GPU-bbb"]) == 81559 * 1024**2  # the smallest card decides
    big = dataclasses.replace(_config(), model=ModelConfig(connector="unet", base_channels=64, img_size=224))
    # 0.7 * 81559 MiB / 1.7 GiB per U-Net variant -> 32 (below the cap of 48); UCTransNet (4.3 GiB) -> 12.
    assert resolve_pack_size(None, [big], "local", gpus=["1"]) == 32 < MAX_AUTO_PACK
    ctrans = dataclasses.replace(big, model=dataclasses.replace(big.model, connector="uctransnet"))
    assert resolve_pack_size(None, [ctrans], "local", gpus=["1"]) == 12
    assert resolve_pack_size(None, [ctrans], "ray", gpus=["1"]) == 1
