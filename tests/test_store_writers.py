"""The run-folder writers of ablation.store (torch-free): what training, report fixtures and fake runs share."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from ablation.config import RunConfig
from ablation.errors import AblationError
from ablation.io import read_json
from ablation.store import layout, readers, state, writers


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_writers_make_a_done_run_folder(tmp_path: Path) -> None:
    config = RunConfig(seed=3)
    run_dir = tmp_path / layout.run_name(config)
    writers.write_run_config(run_dir, config, {"device": "cpu"})
    # started again from epoch 0: today's record
    writers.write_run_config(run_dir, config, {"device": "other"})
    assert read_json(run_dir / layout.CONFIG_FILE)["env"]["device"] == "other"
    (run_dir / layout.LAST_CHECKPOINT).write_bytes(b"")
    writers.write_run_config(run_dir, config, {"device": "third"})  # a resumed run keeps its original record
    (run_dir / layout.LAST_CHECKPOINT).unlink()
    recorded = read_json(run_dir / layout.CONFIG_FILE)
    assert (
        recorded["run_id"] == layout.run_id(config)
        and recorded["seed"] == 3
        and recorded["env"]["device"] == "other"
    )
    with pytest.raises(AblationError, match="belongs to run"):
        writers.write_run_config(run_dir, RunConfig(seed=4), {})

    epoch = {"epoch": 1, "train_loss": 0.5, "val_loss": 0.6, "val_dice": 0.1, "lr": 1e-3, "seconds": 2.0}
    writers.write_history(run_dir, [])
    writers.append_history(run_dir, [epoch])
    writers.append_history(run_dir, [{**epoch, "epoch": 2}, {**epoch, "epoch": 3}])
    assert list(_rows(run_dir / layout.HISTORY_FILE)[0]) == list(layout.HISTORY_COLUMNS)
    assert [row["epoch"] for row in _rows(run_dir / layout.HISTORY_FILE)] == ["1", "2", "3"]
    writers.write_history(run_dir, [epoch])  # resuming from a checkpoint at epoch 1 drops the later rows
    assert [row["epoch"] for row in _rows(run_dir / layout.HISTORY_FILE)] == ["1"]

    writers.write_image_metrics(run_dir / layout.TEST_METRICS_FILE, [{"image": "a", "dice": 0.5, "iou": 0.3}])
    writers.write_image_metrics(tmp_path / "empty.csv", [])
    assert (tmp_path / "empty.csv").read_text() == "image\n"
    metrics = {key: 0 for key in layout.METRICS_KEYS} | {"seed": 3}
    with pytest.raises(ValueError, match="lacks dice_mean"):
        writers.write_metrics(run_dir, {k: v for k, v in metrics.items() if k != "dice_mean"})
    assert state.read_run_state(run_dir)[0] == "pending"
    typed = layout.metrics_identity(config) | {"stopped_early": False, "device": "cpu"}
    writers.write_metrics(run_dir, {**metrics, **typed})  # the types the store's reader validates
    assert state.read_run_state(run_dir)[0] == "done" and readers.done_run_problem(run_dir) is None


def test_metrics_identity_is_what_the_reader_checks_against_the_run(tmp_path: Path) -> None:
    config = RunConfig(dataset="glas", seed=2, fold=1, repeat=1, num_folds=3)
    identity = layout.metrics_identity(config)
    assert tuple(identity) == layout.METRICS_KEYS[:9]  # status .. repeat: the rest are results
    assert identity == {
        "status": "done", "run_id": layout.run_id(config), "run_name": layout.run_name(config),
        "dataset": "glas", "connector": "unet", "skips": "1111", "seed": 2, "fold": 1, "repeat": 1,
    }  # fmt: skip
    run_dir = tmp_path / identity["run_name"]
    record = {"run_id": identity["run_id"], "run_name": identity["run_name"]}
    readers.check_identity(run_dir, config, record, identity)
    for key, other in [("fold", 2), ("repeat", 0), ("seed", 3), ("run_id", "0" * 8), ("dataset", "monuseg")]:
        with pytest.raises(AblationError, match=f"metrics.json: '{key}' is {other!r}, but config.json"):
            readers.check_identity(run_dir, config, record, identity | {key: other})


def test_metrics_writer_refuses_what_the_readers_would_call_damaged(tmp_path: Path) -> None:
    import numpy as np

    config = RunConfig()
    record = {key: 0 for key in layout.METRICS_KEYS}
    record.update(status="done", run_id=layout.run_id(config), run_name="x", dataset="d", connector="unet")
    record.update(skips="1111", fold=None, stopped_early=False, device="cpu")
    for key, bad in [("dice_mean", 1.5), ("hd95_mean", float("nan")), ("skips", "12"), ("seed", -1)]:
        with pytest.raises(ValueError, match=f"refusing to write .*{key}"):
            writers.write_metrics(tmp_path, {**record, key: bad})
        assert not (tmp_path / layout.METRICS_FILE).exists()
    writers.write_metrics(tmp_path, {**record, "seed": np.int64(2), "dice_mean": np.float32(0.5)})  # as JSON
    check = read_json(tmp_path / layout.METRICS_FILE)
    assert check["seed"] == 2 and check["dice_mean"] == 0.5
