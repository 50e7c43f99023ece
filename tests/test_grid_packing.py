"""Packing in the grid runner: grouping, automatic pack size, packed units claimed and recorded run by run
(with a stand-in trainer), and a packed unit trained end to end."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from pathlib import Path

import pytest
from test_grid_fakes import diverging_train, entries, failing_train, fake_train, unit_sizes

from ablation.config import ModelConfig, RunConfig, TrainConfig
from ablation.errors import AblationError
from ablation.grid import expand_spec, grid_status, locks, run_grid
from ablation.grid.runner import plan_units, resolve_pack_size
from ablation.grid.spec import load_spec
from ablation.packing import MAX_AUTO_PACK, auto_pack_size, can_pack, estimated_variant_bytes
from ablation.store.layout import run_name
from ablation.store.state import read_run_state

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
    assert all(read_run_state(tmp_path / run_name(c))[0] == "done" for c in configs)
    # A rerun finds everything done and trains nothing.
    again = run_grid(configs, tmp_path, workers=1, pack_size=3, progress=False)
    assert calls == [3] and len(again.names("skipped")) == 3


def test_gpus_and_memory_are_read_from_nvidia_smi(tmp_path: Path, monkeypatch) -> None:
    from ablation.grid.gpus import detect_gpus, gpu_memory_bytes

    _fake_nvidia_smi(tmp_path, monkeypatch)
    assert detect_gpus() == ["0", "1"]
    assert gpu_memory_bytes(["0"]) == 143771 * 1024**2
    assert gpu_memory_bytes(["0", "GPU-bbb"]) == 81559 * 1024**2  # the smallest card decides
    big = dataclasses.replace(_config(), model=ModelConfig(connector="unet", base_channels=64, img_size=224))
    # 0.7 * 81559 MiB / 1.7 GiB per U-Net variant -> 32 (below the cap of 48); UCTransNet (4.3 GiB) -> 12.
    assert resolve_pack_size(None, [big], "local", gpus=["1"]) == 32 < MAX_AUTO_PACK
    ctrans = dataclasses.replace(big, model=dataclasses.replace(big.model, connector="uctransnet"))
    assert resolve_pack_size(None, [ctrans], "local", gpus=["1"]) == 12
    assert resolve_pack_size(None, [ctrans], "ray", gpus=["1"]) == 1


def _fake_nvidia_smi(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An nvidia-smi on PATH that reports two GPUs (140 GiB and 80 GiB)."""
    fake = folder / "nvidia-smi"
    fake.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        '  --query-gpu=index) printf "0\\n1\\n" ;;\n'
        '  *) printf "0, GPU-aaa, 143771\\n1, GPU-bbb, 81559\\n" ;;\n'
        "esac\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


TINY = {
    "datasets": ["synthetic-nuclei"],
    "model": {"img_size": 32, "base_channels": 4},
    "train": {"max_epochs": 1},
}


def test_packed_units_claim_train_and_record_run_by_run(tmp_path: Path) -> None:
    configs = expand_spec({**TINY, "subsets": ["none", "all", "1000", "0100", "0010", "0001"]})
    dirs = [tmp_path / run_name(c) for c in configs]
    run_grid([configs[1]], tmp_path, train_unit=fake_train, progress=False)  # already done
    dirs[2].mkdir()  # held by another live runner
    record = {"pid": os.getppid(), "host": socket.gethostname(), "started": time.time()}
    locks.lock_path(dirs[2]).write_text(json.dumps(record))

    # Five runs to do in packs of at most 3: [none, 1000 (busy), 0100] and [0010, 0001].
    summary = run_grid(configs, tmp_path, pack_size=3, train_unit=failing_train, progress=False)
    assert summary.names("skipped") == [dirs[1].name] and summary.names("busy") == [dirs[2].name]
    (failed,) = summary.failed
    assert failed.name == dirs[0].name and failed.error == "ValueError: synthetic failure in the no-skip run"
    assert "Traceback" in read_run_state(dirs[0])[2]["traceback"]
    assert sorted(summary.names("done")) == sorted(d.name for d in dirs[3:])
    assert [unit_sizes(d) for d in dirs] == [[2], [1], [], [2], [2], [2]], "the claimed runs train together"
    assert summary.exit_code == 1 and not list(tmp_path.rglob(".*.tmp"))
    assert [locks.lock_path(d).exists() for d in dirs] == [False, False, True, False, False, False]

    retried = run_grid(configs, tmp_path, pack_size=3, train_unit=fake_train, progress=False)
    assert retried.names("done") == [dirs[0].name] and retried.names("busy") == [dirs[2].name]
    assert [entries(d) for d in dirs] == [2, 1, 0, 1, 1, 1], "nothing done is trained again"
    assert [s.status for s in grid_status(tmp_path, configs)] == [
        "done",
        "done",
        "running",
        "done",
        "done",
        "done",
    ]


def test_a_diverged_variant_keeps_its_own_reason_and_the_pack_goes_on(tmp_path: Path) -> None:
    configs = expand_spec({**TINY, "subsets": ["none", "all", "1000"]})
    summary = run_grid(configs, tmp_path, pack_size=3, train_unit=diverging_train, progress=False)
    (failed,) = summary.failed
    assert (failed.name, failed.error) == (run_name(configs[0]), "non-finite loss at epoch 2")
    assert read_run_state(tmp_path / failed.name)[2]["status"] == "failed: non-finite loss at epoch 2"
    assert len(summary.names("done")) == 2 and unit_sizes(tmp_path / failed.name) == [3]


def test_grid_packs_automatically_on_a_gpu_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_nvidia_smi(tmp_path, monkeypatch)
    configs = expand_spec({**TINY, "subsets": ["none", "all", "1000", "0100"]})
    summary = run_grid(configs, tmp_path / "results", workers=1, train_unit=fake_train, progress=False)
    assert len(summary.names("done")) == 4
    assert all(unit_sizes(tmp_path / "results" / run_name(c)) == [4] for c in configs)
