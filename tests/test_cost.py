"""The cost of a grid before it runs: image passes, FLOPs and the wall-time estimate (ablation.grid.cost)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ablation.config import ModelConfig
from ablation.errors import AblationError
from ablation.grid.cost import (
    BENCHMARKS_DIR,
    estimate_cost,
    format_cost,
    load_throughput_tables,
)
from ablation.grid.spec import expand_spec

ROOT = Path(__file__).resolve().parents[1]
# Forward GFLOPs made up so that every number below can be worked out by hand: proportional to the width and
# the area, plus 1 per switched-on skip; the CTrans connectors cost twice the plain U-Net.
FACTOR = {"unet": 1.0, "cca": 1.0, "cct": 2.0, "uctransnet": 2.0}


def fake_gflops(model: ModelConfig) -> float:
    area = (model.img_size / 32) ** 2
    return FACTOR[model.connector] * (model.base_channels / 4) * area + model.skips.count("1")


TINY = {
    "datasets": ["synthetic-nuclei"],
    "subsets": ["none", "all"],
    "model": {"img_size": 32, "base_channels": 4},
    "train": {"max_epochs": 3},
}


def test_synthetic_grid_by_hand():
    # synthetic sets: 24 train, 6 val, 12 test; 2 runs x 3 epochs
    cost = estimate_cost(expand_spec(TINY), gflops=fake_gflops)
    assert (cost.runs, cost.unknown) == (2, {})
    assert (cost.train_passes, cost.val_passes, cost.test_passes) == (2 * 24 * 3, 2 * 6 * 3, 2 * 12)
    # "none": 1 GFLOP, "all": 1 + 4 = 5 GFLOP per forward; a training step is 3 forwards
    per_run = 3 * 24 * 3 + 6 * 3 + 12  # 246 forwards: 6e9 x 246 = 1.476e12 FLOP
    assert cost.flop == pytest.approx((1 + 5) * 1e9 * per_run)
    assert cost.wall_seconds is None
    lines = format_cost(cost)
    assert lines[0].startswith(
        "cost: 2 runs, at most 144 training-image passes (+ 60 eval) over at most 3 epochs"
    )
    assert "early stopping may end runs sooner" in lines[0]
    assert "at most 1.5e12 FLOP (training step = 3 x forward, eval = 1 x forward)" in lines[1]
    assert lines[-1] == "wall time: device unknown; pass --throughput IMG_PER_S"


def test_kfold_sizes_and_test_time_masks_by_hand():
    # k-fold pools train + val (24 + 6 = 30): 5 folds of 6; test-time masks score the all-skips model 17 times
    spec = {**TINY, "folds": 5, "test_time_masks": True}
    cost = estimate_cost(expand_spec(spec), gflops=fake_gflops)
    assert cost.runs == 10
    assert cost.train_passes == 10 * 24 * 3
    assert cost.val_passes == 10 * 6 * 3
    assert cost.test_passes == 5 * 12 + 5 * 12 * 17


def test_official_split_without_val_folder_is_fold_zero(tmp_path):
    # 7 training images and no Val_Folder: validation is fold 0 of 5 (2 images, as np.array_split gives)
    _layout(tmp_path / "custom", {"Train_Folder": 7, "Test_Folder": 3})
    spec = {**TINY, "datasets": [str(tmp_path / "custom")]}
    cost = estimate_cost(expand_spec(spec), gflops=fake_gflops)
    assert (cost.train_passes, cost.val_passes, cost.test_passes) == (2 * 5 * 3, 2 * 2 * 3, 2 * 3)
    folds = {**spec, "folds": 5, "subsets": ["all"]}  # folds of 2, 2, 1, 1, 1 validation images
    cost = estimate_cost(expand_spec(folds), gflops=fake_gflops)
    assert cost.val_passes == (2 + 2 + 1 + 1 + 1) * 3
    assert cost.train_passes == (5 * 7 - 7) * 3


def test_paper_skip_study_on_the_real_datasets(shared_datasets, monkeypatch):
    monkeypatch.setenv("ABLATION_DATA", str(shared_datasets))
    cost = estimate_cost(expand_spec(ROOT / "experiments" / "paper_skip_study.toml"), gflops=fake_gflops)
    # GlaS: 85 training images in 5 folds of 17, 80 test; MoNuSeg: 24 + 6 pooled in folds of 6, 14 test
    glas, monuseg = 16 * 15, 16 * 15
    assert cost.unknown == {}
    assert cost.train_passes == glas * 68 * 2000 + monuseg * 24 * 2000 == 44_160_000
    assert cost.val_passes == glas * 17 * 2000 + monuseg * 6 * 2000
    assert cost.test_passes == glas * 80 + monuseg * 14


def test_missing_dataset_is_unknown_not_an_error(tmp_path):
    spec = {**TINY, "datasets": ["synthetic-nuclei", "glas"], "data_root": str(tmp_path)}
    cost = estimate_cost(expand_spec(spec), throughput=100.0, gflops=fake_gflops)
    assert cost.unknown == {f"dataset not found: {tmp_path / 'GlaS'}": 2}
    assert cost.train_passes == 2 * 24 * 3  # the synthetic runs still count
    lines = format_cost(cost)
    assert (
        f"cost: 2 runs unknown (dataset not found: {tmp_path / 'GlaS'}); the totals count the other 2"
        in lines
    )


def test_unreadable_layout_is_unknown_naming_the_problem(tmp_path):
    _layout(tmp_path / "broken", {"Train_Folder": 3})  # no Test_Folder
    cost = estimate_cost(expand_spec({**TINY, "datasets": [str(tmp_path / "broken")]}), gflops=fake_gflops)
    ((reason, runs),) = cost.unknown.items()
    assert runs == 2 and "Test_Folder" in reason and cost.train_passes == 0
    assert format_cost(cost)[0] == "cost: 2 runs, none of them countable"
    assert format_cost(cost)[-1] == "wall time: nothing to estimate (no run could be counted)"


def test_throughput_override():
    cost = estimate_cost(expand_spec(TINY), throughput=12.0, device="NVIDIA H200", gflops=fake_gflops)
    train, evaluation = 2 * 24 * 3, 2 * (6 * 3 + 12)
    assert cost.wall_seconds == pytest.approx(train / 12.0 + evaluation / (3 * 12.0))
    assert cost.train_images_per_s == pytest.approx(12.0)
    lines = format_cost(cost)
    assert "at 12 training img/s, eval at 3 x that (no backward) - an estimate" in lines[2]
    assert lines[2].startswith("estimated wall time: 14 s on 1 x NVIDIA H200")
    assert lines[3] == "  unet, 2 single runs: 12 img/s from --throughput"
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(AblationError, match="--throughput"):
            estimate_cost(expand_spec(TINY), throughput=bad, gflops=fake_gflops)


def _table(folder: Path, name: str, device: str, records: list[dict], base: int = 4, size: int = 32) -> None:
    meta = {"device": device, "base": base, "size": size, "batch": 4, "precision": "bf16"}
    (folder / name).write_text(json.dumps({"meta": meta, "records": records}))


def _record(model: str, method: str, k: int, rate: float) -> dict:
    return {"model": model, "method": method, "k": k, "images_per_s": rate, "ms_per_step": 1.0}


@pytest.fixture
def tables(tmp_path):
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    records = [
        _record("unet", "baseline", 1, 999.0),  # the reference-style loop: never how the grid trains
        _record("unet", "single", 1, 100.0),
        _record("unet", "packed", 4, 200.0),
        _record("unet", "packed", 16, 400.0),
        {"model": "unet", "method": "packed+compile", "k": 16, "error": "RuntimeError"},  # failed: no rate
        _record("uctransnet", "single", 1, 50.0),
    ]
    _table(folder, "packed_training_nvidia-h200.json", "NVIDIA H200", records)
    _table(folder, "packed_training_cpu.json", "cpu", [_record("unet", "single", 1, 10.0)])
    (folder / "train_step.json").write_text(json.dumps([{"other": "format"}]))  # ignored
    (folder / "broken.json").write_text("{")  # ignored
    return folder


def test_tables_are_matched_by_device_name(tables):
    assert {row.images_per_s for row in load_throughput_tables(tables, "nvidia h200")} == {
        100.0,
        200.0,
        400.0,
        50.0,
    }
    assert [row.images_per_s for row in load_throughput_tables(tables, "cpu")] == [10.0]
    cost = estimate_cost(expand_spec(TINY), device="NVIDIA A100", benchmarks_dir=tables, gflops=fake_gflops)
    assert cost.wall_seconds is None
    assert (
        format_cost(cost)[-1]
        == "wall time: no throughput measured for NVIDIA A100; pass --throughput IMG_PER_S"
    )


def test_single_runs_take_the_single_run_row(tables):
    cost = estimate_cost(expand_spec(TINY), device="cpu", benchmarks_dir=tables, gflops=fake_gflops)
    assert cost.wall_seconds == pytest.approx(2 * 24 * 3 / 10.0 + 2 * (6 * 3 + 12) / 30.0)
    assert (
        format_cost(cost)[-1]
        == f"  unet, 2 single runs: 10 img/s from {tables}/packed_training_cpu.json: unet single run"
    )


def test_packs_take_the_nearest_pack_size(tables):
    # 16 subsets x 1 split = one pack of 16 at pack_size 16, four packs of 4 at pack_size 4
    spec = {**TINY, "subsets": "all"}
    configs = expand_spec(spec)
    train, evaluation = 16 * 24 * 3, 16 * (6 * 3 + 12)
    cases = [
        (16, 400.0, ["unet, 1 pack of 16: 400 img/s"]),
        (4, 200.0, ["unet, 4 packs of 4: 200 img/s"]),
        # 16 runs at pack_size 6: 6 + 5 + 5, as the runner cuts them; the K = 4 row is the nearest
        (6, 200.0, ["unet, 1 pack of 6: 200 img/s", "unet, 2 packs of 5: 200 img/s"]),
    ]
    for pack_size, rate, labels in cases:
        cost = estimate_cost(
            configs, device="NVIDIA H200", pack_size=pack_size, benchmarks_dir=tables, gflops=fake_gflops
        )
        assert cost.wall_seconds == pytest.approx(train / rate + evaluation / (3 * rate))
        assert [line.split(" from ")[0] for line in cost.rates] == labels
    # four packs of 4 on 2 devices: half the time; one pack of 16 cannot be split, so 2 devices do not halve it
    for pack_size, rate, share in [(4, 200.0, 2), (16, 400.0, 1)]:
        cost = estimate_cost(
            configs,
            device="NVIDIA H200",
            pack_size=pack_size,
            devices=2,
            benchmarks_dir=tables,
            gflops=fake_gflops,
        )
        assert cost.wall_seconds == pytest.approx((train / rate + evaluation / (3 * rate)) / share)
        assert "on 2 x NVIDIA H200" in format_cost(cost)[2]


def test_other_model_sizes_and_connectors_are_scaled_by_flops(tables):
    # measured at base 4, 32 px; the grid trains base 8 at 64 px: fake GFLOPs (all skips) 2 x 4 + 4 = 12 vs 5
    spec = {**TINY, "subsets": ["all"], "model": {"img_size": 64, "base_channels": 8}}
    cost = estimate_cost(expand_spec(spec), device="NVIDIA H200", benchmarks_dir=tables, gflops=fake_gflops)
    rate = 100.0 * 5 / 12
    assert cost.train_images_per_s == pytest.approx(rate)
    assert format_cost(cost)[-1].endswith(
        "unet single run, scaled by FLOPs from base 4, 32 px; unlike the runs' train.deterministic=true"
    )
    # cct has no row: the connector nearest in FLOPs (uctransnet, same fake GFLOPs) at the same size, unscaled
    spec = {**TINY, "connectors": ["cct", "cca"], "subsets": ["all"]}
    cost = estimate_cost(expand_spec(spec), device="NVIDIA H200", benchmarks_dir=tables, gflops=fake_gflops)
    lines = format_cost(cost)
    assert any(
        line.startswith("  cct, 1 single run: 50 img/s") and "uctransnet single run, scaled by FLOPs" in line
        for line in lines
    )
    assert any(
        line.startswith("  cca, 1 single run: 100 img/s") and "unet single run, scaled by FLOPs" in line
        for line in lines
    )


def test_shipped_h200_table_times_the_paper_grid_as_packs_of_16(shared_datasets, monkeypatch):
    monkeypatch.setenv("ABLATION_DATA", str(shared_datasets))
    configs = expand_spec(ROOT / "experiments" / "paper_skip_study.toml")
    rows = load_throughput_tables(BENCHMARKS_DIR, "NVIDIA H200")
    measured = next(
        r for r in rows if (r.connector, r.method, r.k, r.compiled) == ("unet", "packed", 16, False)
    )
    cost = estimate_cost(
        configs, device="NVIDIA H200", pack_size=16, benchmarks_dir=BENCHMARKS_DIR, gflops=fake_gflops
    )
    # the vmap engine's rows: autotuned, and neither pack_conv; the paper spec keeps the deterministic default
    unlike = "train.deterministic=true, train.pack_conv=grouped"
    assert cost.rates == (
        f"unet, 30 packs of 16: {measured.images_per_s:,.0f} img/s from {measured.describe()}; unlike the "
        f"runs' {unlike}",
    )
    assert measured.source.startswith("results/benchmarks/")
    rate = measured.images_per_s
    assert cost.wall_seconds == pytest.approx(44_160_000 / rate + cost.eval_passes / (3 * rate))


@pytest.mark.parametrize(
    ("train", "rate", "row"),
    [
        # the defaults: deterministic, eager, grouped; two rows differ in one setting, CUDA graphs ranks first
        ({}, 100.0, "grouped convolutions; unlike the runs' train.deterministic=true"),
        (
            {"deterministic": False, "cuda_graphs": True, "pack_conv": "per_variant"},
            210.0,
            "per_variant convolutions, CUDA graphs",
        ),
        ({"cuda_graphs": True}, 150.0, "grouped convolutions, CUDA graphs, deterministic"),
        ({"deterministic": False, "pack_conv": "per_variant"}, 110.0, "per_variant convolutions"),
        ({"deterministic": False, "channels_last": False}, 90.0, "grouped convolutions, NCHW"),
    ],
)
def test_rows_are_matched_on_the_runs_engine_settings(tmp_path, train, rate, row):
    """Rows of one pack size that differ only in CUDA graphs, determinism, 3x3 convolutions or memory format
    never tie: the row measured as the runs will train wins, wherever it stands in the table."""
    records = [
        _record("unet", "packed+grouped+eager", 16, 100.0),
        _record("unet", "packed+per_variant+eager", 16, 110.0),
        _record("unet", "packed+grouped+eager+nchw", 16, 90.0),
        _record("unet", "packed+grouped+graph", 16, 200.0),
        _record("unet", "packed+per_variant+graph", 16, 210.0),
        _record("unet", "packed+grouped+graph+det", 16, 150.0),
        _record("unet", "single+grouped+graph+det", 1, 10.0),
    ]
    for order in (records, records[::-1]):
        _table(tmp_path, "packed_training_nvidia-h200.json", "NVIDIA H200", order)
        spec = {**TINY, "subsets": "all", "train": {**TINY["train"], **train}}
        cost = estimate_cost(
            expand_spec(spec), device="NVIDIA H200", pack_size=16, benchmarks_dir=tmp_path, gflops=fake_gflops
        )
        assert cost.train_images_per_s == pytest.approx(rate)
        assert cost.rates == (
            f"unet, 1 pack of 16: {rate:.0f} img/s from {tmp_path}/packed_training_nvidia-h200.json: unet pack "
            f"of 16, {row}",
        )


def test_settings_that_change_nothing_on_cpu_are_not_compared(tmp_path):
    records = [
        _record("unet", "packed+per_variant+eager", 4, 30.0),
        _record("unet", "packed+grouped+eager", 4, 20.0),
    ]
    _table(tmp_path, "packed_training_cpu.json", "cpu", records)
    configs = expand_spec({**TINY, "subsets": ["none", "all", "1000", "0100"]})  # deterministic: the default
    cost = estimate_cost(configs, device="cpu", pack_size=4, benchmarks_dir=tmp_path, gflops=fake_gflops)
    assert cost.rates == (
        f"unet, 1 pack of 4: 20 img/s from {tmp_path}/packed_training_cpu.json: unet pack of 4, "
        "grouped convolutions",
    )
    (row,) = [row for row in load_throughput_tables(tmp_path, "cpu") if row.pack_conv == "grouped"]
    assert (row.compiled, row.cuda_graphs, row.deterministic, row.channels_last) == (None, None, None, None)


def test_real_flop_counter_counts_three_forwards_per_training_image():
    from ablation.models import model_summary

    cost = estimate_cost(expand_spec({**TINY, "subsets": ["all"]}))
    forward = model_summary(ModelConfig(img_size=32, base_channels=4))["gflops"] * 1e9
    assert cost.flop == pytest.approx(forward * (3 * 24 * 3 + 6 * 3 + 12))


def test_counting_needs_no_torch(tables):
    code = (
        "import sys; from ablation.grid.cost import estimate_cost, format_cost; "
        "from ablation.grid.spec import expand_spec; "
        f"spec = {TINY!r}; "
        "cost = estimate_cost(expand_spec(spec), throughput=5.0, gflops=lambda model: 1.0); "
        "print(format_cost(cost)[0]); assert 'torch' not in sys.modules, 'torch was imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "144 training-image passes" in result.stdout


def _layout(root: Path, splits: dict[str, int]) -> None:
    """Empty files in the reference layout: the cost reads file names only, never the images."""
    for folder, count in splits.items():
        for sub in ("img", "labelcol"):
            (root / folder / sub).mkdir(parents=True)
        for i in range(count):
            (root / folder / "img" / f"image_{i}.png").write_bytes(b"")
            (root / folder / "labelcol" / f"image_{i}.png").write_bytes(b"")


# `ablation run SPEC --dry-run`: the cost after the listing ---------------------------------------------------


@pytest.fixture
def tiny_spec(tmp_path, monkeypatch):
    """TINY as a spec file; this machine offers no GPU (the CLI asks ablation.grid.gpus)."""
    from ablation.grid import gpus

    monkeypatch.setattr(gpus, "detect_gpus", lambda: [])
    path = tmp_path / "tiny.toml"
    path.write_text(
        'datasets = ["synthetic-nuclei"]\nsubsets = ["none", "all"]\n'
        "[model]\nimg_size = 32\nbase_channels = 4\n[train]\nmax_epochs = 3\n"
    )
    return path


def _dry_run(spec: Path, out: Path, capsys, *flags: str) -> list[str]:
    from ablation.cli import main

    assert main(["run", str(spec), "--out", str(out), "--dry-run", *flags]) == 0
    return capsys.readouterr().out.splitlines()


def test_dry_run_ends_with_the_cost_at_a_given_throughput(tiny_spec, tmp_path, capsys):
    lines = _dry_run(tiny_spec, tmp_path / "results", capsys, "--throughput", "100")
    listing = next(i for i, line in enumerate(lines) if line.startswith("2 runs in "))
    assert lines[listing + 1].startswith("cost: 2 runs, at most 144 training-image passes (+ 60 eval)")
    wall = next(line for line in lines if line.startswith("estimated wall time"))
    assert "on 1 x cpu at 100 training img/s" in wall and wall.endswith("- an estimate")
    assert lines[-1] == "  unet, 2 single runs: 100 img/s from --throughput"
    assert not (tmp_path / "results").exists()  # a dry run writes nothing


def test_dry_run_on_cpu_uses_the_cpu_table_or_says_there_is_none(
    tiny_spec, tmp_path, capsys, monkeypatch, tables
):
    from ablation.grid import cost

    monkeypatch.setattr(cost, "BENCHMARKS_DIR", tables)
    lines = _dry_run(tiny_spec, tmp_path / "results", capsys)
    assert any(
        line.startswith("estimated wall time: ") and "on 1 x cpu at 10 training" in line for line in lines
    )
    assert lines[-1].endswith("packed_training_cpu.json: unet single run")
    monkeypatch.setattr(cost, "BENCHMARKS_DIR", tmp_path / "no-tables")
    lines = _dry_run(tiny_spec, tmp_path / "results", capsys)
    assert lines[-1] == "wall time: no throughput measured for cpu; pass --throughput IMG_PER_S"


def test_dry_run_on_a_gpu_looks_up_its_name(tiny_spec, tmp_path, capsys, monkeypatch, tables):
    from ablation.grid import cost, gpus

    smi = {"index": "0", "uuid": "GPU-1234", "name": "NVIDIA H200", "memory.total": "143771"}
    monkeypatch.setattr(gpus, "_query_gpus", lambda fields: [[smi[field] for field in fields]])
    monkeypatch.setattr(gpus, "detect_gpus", lambda: ["0"])
    assert gpus.gpu_names(["GPU-1234"]) == gpus.gpu_names(["0"]) == ["NVIDIA H200"]
    assert gpus.gpu_names(["1"]) == gpus.gpu_names([]) == []
    monkeypatch.setattr(cost, "BENCHMARKS_DIR", tables)
    lines = _dry_run(tiny_spec, tmp_path / "results", capsys)
    # pack_size "auto" on a 140 GiB GPU: both runs in one pack, timed by the nearest pack row (K = 4)
    assert any("on 1 x NVIDIA H200 at 200 training img/s" in line for line in lines)
    assert lines[-1].startswith("  unet, 1 pack of 2: 200 img/s from ")


def test_throughput_flag_is_checked(tiny_spec, tmp_path, capsys):
    from ablation.cli import main

    for flags, message in [
        (["--dry-run", "--throughput", "0"], "--throughput must be a positive number"),
        (["--throughput", "100"], "--throughput only applies to --dry-run"),
    ]:
        assert main(["run", str(tiny_spec), "--out", str(tmp_path / "results"), *flags]) == 2
        assert message in capsys.readouterr().err


def test_the_cost_lines_in_the_docs_are_what_the_code_prints(shared_datasets, monkeypatch):
    """README.md and docs/cost.md quote the dry run of paper_skip_study.toml: on an H200 (packs of 48 and 16)
    and on the CPU. A changed benchmark table or estimate must change the quotes too."""
    monkeypatch.setenv("ABLATION_DATA", str(shared_datasets))
    configs = expand_spec(ROOT / "experiments" / "paper_skip_study.toml")
    printed = {
        line
        for device, pack_size in (("NVIDIA H200", 48), ("NVIDIA H200", 16), ("cpu", 1))
        for line in format_cost(estimate_cost(configs, device=device, pack_size=pack_size))
    }
    starts = ("cost: 480 runs", "cost: eval =", "estimated wall time:", "  unet, ")
    quoted = [
        (doc, line)
        for doc in ("README.md", "docs/cost.md")
        for line in (ROOT / doc).read_text().splitlines()
        if line.startswith(starts)
    ]
    assert len(quoted) >= 8
    assert [(doc, line) for doc, line in quoted if line not in printed] == []
