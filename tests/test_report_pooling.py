"""The report pools only like with like: runs of one dataset name are replicates only when they agree in
everything but seed, split, connector and skip subset; otherwise each setting is reported as a dataset of its
own, labelled with the keys that differ, and the tables say why. Two dataset folders that share a name are two
datasets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fake_results import PlantedEffects, copy_as_setting, make_fake_results

from ablation.report import tables, write_report
from ablation.report.load import apart_note, load_results
from ablation.store import find_runs

LOW = PlantedEffects(base=0.40)  # far below the default 0.70, so pooling the two would show


def _study(root: Path, **kwargs: Any) -> None:
    options = {"subsets": ["0000", "1111", "1000"], "seeds": (0, 1), "folds": None, "n_images": 4}
    make_fake_results(root, **{**options, "predictions": 0, **kwargs})


def _set_env(root: Path, **env: Any) -> None:
    for run in find_runs(root):
        record = json.loads((run / "config.json").read_text())
        record["env"].update(env)
        (run / "config.json").write_text(json.dumps(record))


def _mean_dice(results, dataset: str) -> float:
    return float(results.images.loc[results.images["dataset"] == dataset, "dice"].mean())


def test_a_training_setting_that_differs_splits_the_dataset(tmp_path: Path) -> None:
    root = tmp_path / "results"
    _study(root)
    _study(tmp_path / "other", effects=LOW)
    copy_as_setting(tmp_path / "other", root, {"train.lr": 1e-4})
    results = load_results(root)
    high, low = "synthetic-nuclei@lr=0.001", "synthetic-nuclei@lr=0.0001"
    assert results.datasets == sorted([high, low])
    assert _mean_dice(results, high) > 0.7 > 0.6 > _mean_dice(results, low)  # never averaged together
    apart = results.apart.set_index("dataset")
    assert apart.loc[high].to_dict() == {
        "name": "synthetic-nuclei",
        "runs": 6,
        "differs": "train.lr",
        "setting": "train.lr = 0.001",
    }
    assert apart.loc[low, "setting"] == "train.lr = 0.0001"
    note = apart_note(results, low)
    assert note == (
        "Runs of synthetic-nuclei differ in train.lr, so they are not pooled: each setting is reported as a "
        f"dataset of its own ({low}: train.lr = 0.0001 (6 runs); {high}: train.lr = 0.001 (6 runs))."
    )
    subset = tables.subset_table(results, low).data
    assert set(subset.loc[subset["runs"] > 0, "runs"]) == {2}  # two seeds per subset, not four
    for table in tables.dataset_tables(results, high):
        assert note in table.markdown().replace("_", "")
    assert results.shared_name(low) == "synthetic-nuclei" and results.shared_name("glas") == "glas"


def test_every_report_item_keeps_the_settings_apart(tmp_path: Path) -> None:
    root = tmp_path / "results"
    _study(root, subsets="paper")
    _study(tmp_path / "other", subsets="paper", effects=LOW)
    copy_as_setting(tmp_path / "other", root, {"model.base_channels": 16})
    out = write_report(root, n_boot=100)
    written = {path.name for path in (out / "tables").iterdir()}
    for label in ("synthetic-nuclei@base_channels=8", "synthetic-nuclei@base_channels=16"):
        assert f"{label}_subsets.md" in written and f"{label}_skip_study.csv" in written
        assert (out / "figures" / f"{label}_unet_retrained_bars.png").is_file()
        assert (out / "stats" / f"{label}_unet_retrained_vs_all.csv").is_file()
    text = (out / "tables" / "synthetic-nuclei@base_channels=16_subsets.md").read_text()
    assert "differ in model.base_channels, so they are not pooled" in text
    findings = (out / "findings.md").read_text()
    assert "synthetic-nuclei@base_channels=16" in findings and "synthetic-nuclei@base_channels=8" in findings
    readme = (out / "README.md").read_text()
    apart = readme[readme.index("## Datasets kept apart") : readme.index("## Protocol behind the verdicts")]
    note = apart_note(load_results(root), "synthetic-nuclei@base_channels=16")
    assert apart.strip().splitlines()[1:] == ["", f"- {note}"]


@pytest.mark.parametrize(
    ("overrides", "labels"),
    [
        ({"interpolation": "bilinear"}, ("interpolation=reference", "interpolation=bilinear")),
        (
            {"train.max_epochs": 8, "train.patience": 3},
            ("max_epochs=4,patience=50", "max_epochs=8,patience=3"),
        ),
        ({"model.patch_sizes": [8, 4, 2, 1]}, ("patch_sizes=16-8-4-2", "patch_sizes=8-4-2-1")),
        ({"train.augment": False}, ("augment=true", "augment=false")),
        ({"num_folds": 3}, ("num_folds=5", "num_folds=3")),
    ],
    ids=["interpolation", "two-keys", "list", "bool", "num_folds"],
)
def test_labels_name_the_keys_that_differ(
    tmp_path: Path, overrides: dict[str, Any], labels: tuple[str, str]
) -> None:
    root = tmp_path / "results"
    _study(root)
    _study(tmp_path / "other", effects=LOW)
    copy_as_setting(tmp_path / "other", root, overrides)
    results = load_results(root)
    assert results.datasets == sorted(f"synthetic-nuclei@{label}" for label in labels)


def test_too_long_labels_are_numbered(tmp_path: Path) -> None:
    root = tmp_path / "results"
    _study(root)
    overrides = {
        "train.lr": 1e-4,
        "train.weight_decay": 1e-5,
        "train.scheduler_t0": 20,
        "train.bce_weight": 0.3,
    }
    _study(tmp_path / "other", seeds=(0,), effects=LOW)
    copy_as_setting(tmp_path / "other", root, overrides)
    results = load_results(root)
    assert results.datasets == ["synthetic-nuclei@1", "synthetic-nuclei@2"]  # 1: the setting with most runs
    assert _mean_dice(results, "synthetic-nuclei@1") > 0.7 > _mean_dice(results, "synthetic-nuclei@2")
    assert set(results.apart["differs"]) == {
        "train.bce_weight, train.lr, train.scheduler_t0, train.weight_decay"
    }


def test_two_folders_with_one_name_are_two_datasets(tmp_path: Path) -> None:
    root = tmp_path / "results"
    _study(root, datasets=[str(tmp_path / "site-a" / "ds")])
    _study(tmp_path / "other", datasets=[str(tmp_path / "site-b" / "ds")], effects=LOW)
    for run in find_runs(tmp_path / "other"):
        shutil.copytree(run, root / run.name)
    results = load_results(root)
    assert len(results.datasets) == 2 and all(d.startswith("ds@data=") for d in results.datasets)
    assert set(results.apart["differs"]) == {"data"}
    assert {s.split(" = ")[1] for s in results.apart["setting"]} == {
        f"folder {tmp_path / 'site-a' / 'ds'}",
        f"folder {tmp_path / 'site-b' / 'ds'}",
    }
    low = results.apart.loc[results.apart["setting"].str.contains("site-b"), "dataset"].item()
    assert _mean_dice(results, low) < 0.6


def test_the_recorded_fingerprint_identifies_the_data(tmp_path: Path) -> None:
    # One folder whose files changed between runs: two datasets, though the path is the same.
    root = tmp_path / "results"
    _study(root, datasets=["glas"])
    _set_env(root, dataset_fingerprint="aaaa1111bbbb2222")
    _study(tmp_path / "other", datasets=["glas"], seeds=(2, 3), effects=LOW)
    _set_env(tmp_path / "other", dataset_fingerprint="cccc3333dddd4444")
    for run in find_runs(tmp_path / "other"):
        shutil.copytree(run, root / run.name)
    results = load_results(root)
    assert results.datasets == ["glas@data=aaaa1111", "glas@data=cccc3333"]
    assert set(results.apart["differs"]) == {"data"}
    assert _mean_dice(results, "glas@data=cccc3333") < 0.6 < 0.7 < _mean_dice(results, "glas@data=aaaa1111")
    # The paper's GlaS numbers stay beside each of them.
    for dataset in results.datasets:
        study = tables.skip_study_table(results, dataset)
        assert study.data["dice_reported"].notna().any()


def test_one_dataset_under_two_data_roots_is_pooled(tmp_path: Path) -> None:
    root = tmp_path / "results"
    _study(root, datasets=["glas"], seeds=(0,))
    _set_env(root, dataset_fingerprint="aaaa1111bbbb2222")
    _study(tmp_path / "other", datasets=["glas"], seeds=(1,))
    _set_env(tmp_path / "other", dataset_fingerprint="aaaa1111bbbb2222")
    copy_as_setting(tmp_path / "other", root, {"data_root": "/mnt/cluster/data"})
    results = load_results(root)
    assert results.datasets == ["glas"] and results.apart.empty
    table = tables.subset_table(results, "glas").data
    assert set(table.loc[table["runs"] > 0, "runs"]) == {2}


@pytest.mark.parametrize(
    "overrides",
    [
        {"train.eval_batch_size": 64},
        {"train.save_predictions": 0},
        {"train.checkpoint_every": 3},
        {"train.compile": True},
    ],
    ids=["eval_batch_size", "save_predictions", "checkpoint_every", "compile"],
)
def test_settings_that_do_not_change_results_are_pooled(tmp_path: Path, overrides: dict[str, Any]) -> None:
    root = tmp_path / "results"
    _study(root, seeds=(0,))
    _study(tmp_path / "other", seeds=(1,))
    copy_as_setting(tmp_path / "other", root, overrides)
    results = load_results(root)
    assert results.datasets == ["synthetic-nuclei"] and results.apart.empty


def test_test_time_masks_on_the_all_skips_runs_do_not_split(tmp_path: Path) -> None:
    # The grid sets test_time_masks only on the all-skips runs: an extra evaluation, not another setting.
    _study(tmp_path, test_time_masks=True)
    results = load_results(tmp_path)
    assert results.datasets == ["synthetic-nuclei"] and results.apart.empty


def test_failed_and_running_runs_carry_their_setting(tmp_path: Path) -> None:
    root = tmp_path / "results"
    _study(root)
    _study(tmp_path / "other", failed=[{"skips": "1000"}], running=[{"skips": "0000", "seed": 1}])
    copy_as_setting(tmp_path / "other", root, {"train.lr": 1e-4})
    results = load_results(root)
    label = "synthetic-nuclei@lr=0.0001"
    assert set(results.failed["dataset"]) == {label} and set(results.incomplete["dataset"]) == {label}
    gaps = results.missing[results.missing["status"] != "absent"]
    assert set(gaps["dataset"]) == {label} and sorted(gaps["status"]) == ["failed", "failed", "running"]


def test_a_healthy_single_setting_folder_is_unchanged(tmp_path: Path) -> None:
    runs = make_fake_results(tmp_path, subsets=["0000", "1111"], seeds=(0, 1), folds=(0, 1), n_images=3)
    results = load_results(tmp_path)
    assert results.datasets == ["synthetic-nuclei"] and results.apart.empty
    for run in runs:
        written = pd.read_csv(run / "test_metrics.csv")
        read = results.images[
            (results.images["run_name"] == run.name) & (results.images["masking"] == "retrained")
        ]
        assert (
            read["dice"].tolist() == written["dice"].tolist()
            and read["hd95"].tolist() == written["hd95"].tolist()
        )


def test_a_recorded_run_without_a_folder_joins_the_label_with_most_runs(tmp_path: Path) -> None:
    root = tmp_path / "results"
    _study(root)
    _study(tmp_path / "other", seeds=(0,))
    copy_as_setting(tmp_path / "other", root, {"train.lr": 1e-4})
    names = [run.name for run in find_runs(root)]
    absent = next(name for name in names if "_1111_" in name).replace("_1111_", "_0110_")
    (root / "grid.json").write_text(json.dumps({"runs": [*names, absent]}))
    results = load_results(root)
    row = results.missing[results.missing["status"] == "absent"]
    assert row[["dataset", "skips"]].to_dict("records") == [
        {"dataset": "synthetic-nuclei@lr=0.001", "skips": "0110"}
    ]


def test_runs_started_from_other_runs_pool_with_them(tmp_path: Path) -> None:
    # The module ablation as the specs run it: U-Net from random weights, UCTransNet from the U-Net-all run of its
    # own seed (train.init_from is per connector, train.init_from_run per replicate).
    root = tmp_path / "results"
    _study(root)
    for seed in (0, 1):
        other = tmp_path / f"uctransnet{seed}"
        _study(other, connectors=("uctransnet",), seeds=(seed,))
        copy_as_setting(
            other, root, {"train.init_from": "unet/1111", "train.init_from_run": f"source-of-seed-{seed}"}
        )
    results = load_results(root)
    assert results.datasets == ["synthetic-nuclei"] and results.apart.empty
    assert set(results.runs["connector"]) == {"unet", "uctransnet"}
    assert set(results.runs.loc[results.runs["connector"] == "uctransnet", "init_from"]) == {"unet/1111"}


def _module_ablation_with_two_starts(root: Path, tmp_path: Path, dataset: str = "synthetic-nuclei") -> None:
    """U-Net from random weights; UCTransNet from the U-Net-all run of its seed and, planted far lower, UCTransNet
    from random weights too: one connector, two starts, in one folder."""
    _study(root, datasets=[dataset])
    for seed in (0, 1):
        other = tmp_path / f"pretrained{seed}"
        _study(other, datasets=[dataset], connectors=("uctransnet",), seeds=(seed,))
        copy_as_setting(
            other, root, {"train.init_from": "unet/1111", "train.init_from_run": f"source-{seed}"}
        )
    _study(tmp_path / "random", datasets=[dataset], connectors=("uctransnet",), effects=LOW)
    for run in find_runs(tmp_path / "random"):
        shutil.copytree(run, root / run.name)


def test_one_connector_from_two_starts_is_kept_apart(tmp_path: Path) -> None:
    root = tmp_path / "results"
    _module_ablation_with_two_starts(root, tmp_path)
    results = load_results(root)
    pretrained, random = "synthetic-nuclei@uctransnet=from-unet-1111", "synthetic-nuclei@uctransnet=random"
    assert results.datasets == [pretrained, random]
    runs = results.runs.groupby("dataset")["connector"].agg(lambda c: sorted(set(c))).to_dict()
    # The connector with one start (U-Net) stays with the start most UCTransNet runs share.
    assert runs == {pretrained: ["uctransnet", "unet"], random: ["uctransnet"]}
    uctransnet = results.images[results.images["connector"] == "uctransnet"]
    means = uctransnet.groupby("dataset")["dice"].mean()
    assert means[random] < 0.6 < 0.7 < means[pretrained]  # never averaged together
    apart = results.apart.set_index("dataset")
    assert apart.loc[pretrained, "setting"] == "train.init_from = unet random, uctransnet from unet/1111"
    assert apart.loc[random, "setting"] == "train.init_from = uctransnet random"
    note = apart_note(results, random)
    assert note.startswith("Runs of synthetic-nuclei differ in train.init_from, so they are not pooled")
    assert "runs that started from different weights (train.init_from) are not replicates" in note
    # The inferred grid expects of each start only its own connectors: no U-Net runs missing under "random".
    assert set(results.missing["dataset"]) == {pretrained}
    module = tables.module_table(results, pretrained).data.set_index("connector")
    assert module.loc["uctransnet", "runs"] == 2 and module.loc["unet", "runs"] == 2


def test_starts_and_another_setting_both_name_the_labels(tmp_path: Path) -> None:
    root = tmp_path / "results"
    _module_ablation_with_two_starts(root, tmp_path)
    _study(tmp_path / "lr", seeds=(0,))
    copy_as_setting(tmp_path / "lr", root, {"train.lr": 1e-4})
    results = load_results(root)
    # The lr=0.0001 runs (U-Net only) have no start of UCTransNet to name.
    assert results.datasets == [
        "synthetic-nuclei@lr=0.0001",
        "synthetic-nuclei@uctransnet=from-unet-1111,lr=0.001",
        "synthetic-nuclei@uctransnet=random,lr=0.001",
    ]
    assert set(results.apart["differs"]) == {"train.init_from, train.lr"}


def test_auto_precision_on_a_cpu_and_on_a_gpu_is_kept_apart(tmp_path: Path) -> None:
    # One config ("auto") but two precisions: fp32 on the CPU, bf16 autocast on CUDA.
    root = tmp_path / "results"
    _study(root / "gpu")
    _set_env(root / "gpu", device="NVIDIA H200")
    _study(tmp_path / "cpu", seeds=(2, 3), effects=LOW)
    _set_env(tmp_path / "cpu", device="cpu")
    shutil.copytree(tmp_path / "cpu", root / "cpu")
    results = load_results(root)
    assert results.datasets == ["synthetic-nuclei@precision=bf16", "synthetic-nuclei@precision=fp32"]
    assert "train.precision" in apart_note(results, "synthetic-nuclei@precision=fp32")


def test_auto_precision_on_a_gpu_pools_with_explicit_bf16(tmp_path: Path) -> None:
    root = tmp_path / "results"
    _study(root / "auto")
    _set_env(root / "auto", device="NVIDIA H200")
    copy_as_setting(root / "auto", tmp_path / "explicit", {"train.precision": "bf16"})
    shutil.copytree(tmp_path / "explicit", root / "explicit")
    assert load_results(root).datasets == ["synthetic-nuclei"]
