"""Loading result folders: tidy frames, test-time masking rows, and the gaps of partial grids."""

from __future__ import annotations

import json

import pytest
from fake_results import make_fake_results

from ablation.errors import AblationError
from ablation.report.load import TEST_TIME, image_means, load_results
from ablation.skips import ALL_SUBSETS


@pytest.fixture(scope="module")
def partial(tmp_path_factory):
    root = tmp_path_factory.mktemp("partial")
    make_fake_results(
        root,
        datasets=("glas",),
        connectors=("unet", "uctransnet"),
        seeds=(0, 1),
        folds=(0, 1),
        n_images=5,
        predictions=0,
        failed=[{"skips": "0101", "seed": 0, "fold": 0}],
        running=[{"skips": "1000", "seed": 1, "fold": 1}],
        missing=[{"skips": "0011", "seed": 1}],
        test_time_masks=True,
    )
    return root


def test_tidy_frame_has_one_row_per_run_and_image(partial):
    results = load_results(partial)
    retrained = results.images[results.images["masking"] == "retrained"]
    # 16 unet subsets + 1 uctransnet, x 4 replicates, minus 1 failed, 1 running, 2 absent; 5 images each.
    assert len(results.runs) == 17 * 4 - 4
    assert len(retrained) == len(results.runs) * 5
    assert set(retrained["skips"]) == set(ALL_SUBSETS)
    for column in (
        "run_id",
        "run_name",
        "dataset",
        "connector",
        "skips",
        "skip_label",
        "seed",
        "fold",
        "image",
    ):
        assert column in results.images.columns
    assert {"dice", "iou", "hd95"} <= set(results.metrics)
    row = results.runs.iloc[0]
    assert {"parameters", "gflops", "dice_mean", "dice_micro"} <= set(results.runs.columns)
    assert row["run_name"].startswith("glas_")


def test_test_time_rows_come_from_masked_metrics(partial):
    results = load_results(partial)
    masked = results.images[results.images["masking"] == TEST_TIME]
    # Each all-skips run (unet and uctransnet, 4 replicates) x 16 masks x 5 images.
    assert len(masked) == 2 * 4 * 16 * 5
    assert set(masked["skips"]) == set(ALL_SUBSETS)
    source = masked["run_name"].str.contains("_1111_")
    assert source.all()


def test_partial_grid_reports_failed_running_and_missing(partial):
    results = load_results(partial)
    assert list(results.failed["skips"]) == ["0101"]
    assert results.failed["error"].iloc[0] == "non-finite loss at epoch 2"  # the status line, with its epoch
    assert list(results.incomplete["status"]) == ["running"]
    missing = results.missing.set_index(["skips", "seed", "split"])["status"].to_dict()
    assert missing == {
        ("0101", 0, "r0f0"): "failed",
        ("1000", 1, "r0f1"): "running",
        ("0011", 1, "r0f0"): "absent",
        ("0011", 1, "r0f1"): "absent",
    }
    # The module-ablation connector ran only with all skips, so only that subset is expected of it.
    assert set(results.expected.loc[results.expected["connector"] == "uctransnet", "skips"]) == {"1111"}


def test_image_means_pair_images_across_seeds_and_folds(partial):
    results = load_results(partial).filter(connector="unet", masking="retrained")
    scores = image_means(results.images)
    assert scores.shape == (5, 16)
    manual = results.images[results.images["skips"] == "1111"].groupby("image")["dice"].mean()
    assert scores["1111"].to_dict() == pytest.approx(manual.to_dict())


def test_filter_rejects_unknown_values(partial):
    results = load_results(partial)
    assert set(results.filter(masking="test-time").images["masking"]) == {TEST_TIME}
    with pytest.raises(AblationError, match="unknown connector 'nope'"):
        results.filter(connector="nope")


def test_bad_folders_raise_ablation_errors(tmp_path):
    with pytest.raises(AblationError, match="does not exist"):
        load_results(tmp_path / "absent")
    with pytest.raises(AblationError, match="no run folders"):
        load_results(tmp_path)


def test_corrupt_run_is_listed_as_failed_not_fatal(tmp_path):
    runs = make_fake_results(tmp_path, subsets=["0000", "1111"], folds=None, n_images=3, predictions=0)
    (runs[0] / "test_metrics.csv").unlink()
    (runs[1] / "config.json").write_text("{not json")
    results = load_results(tmp_path)
    assert len(results.runs) == 0
    assert len(results.failed) == 2
    assert any("test_metrics.csv" in e for e in results.failed["error"])
    assert any("config.json" in e for e in results.failed["error"])


def test_fixture_writes_the_store_format(tmp_path):
    (run,) = make_fake_results(tmp_path, subsets=["1011"], folds=None, n_images=3, predictions=2)
    config = json.loads((run / "config.json").read_text())
    assert {"run_id", "run_name", "env", "model", "train"} <= set(config)
    assert config["model"]["skips"] == "1011"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "done" and metrics["fold"] is None
    from ablation.store import METRICS_KEYS

    assert set(METRICS_KEYS) <= set(metrics)  # the same keys train_run writes
    assert run.name == config["run_name"] and run.name.endswith(config["run_id"])
    assert "_official_" in run.name
    import numpy as np

    with np.load(run / "predictions.npz") as data:
        assert data["image"].shape == (2, 32, 32, 3) and data["image"].dtype == np.uint8
        assert data["pred"].shape == data["mask"].shape == (2, 32, 32)
        assert list(data["name"]) == ["img000", "img001"]
