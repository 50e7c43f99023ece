"""Shapley values recover planted per-skip effects and interactions, and always sum to Dice(all) - Dice(none)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from fake_results import PlantedEffects, make_fake_results

from ablation.errors import AblationError
from ablation.report.load import load_results, replicate_means
from ablation.report.shapley import interaction_indices, main_effects, shapley_analysis, shapley_values
from ablation.skips import ALL_SUBSETS


def _game(effects: PlantedEffects) -> dict[str, float]:
    return {s: effects.dice("unet", s) for s in ALL_SUBSETS}


def test_additive_game_gives_each_skip_its_effect():
    effects = PlantedEffects(skip=(0.01, -0.02, 0.03, 0.05))
    values = shapley_values(_game(effects))
    assert list(values.values()) == pytest.approx(effects.skip)
    assert all(abs(v) < 1e-12 for v in interaction_indices(_game(effects)).values())
    assert list(main_effects(_game(effects)).values()) == pytest.approx(effects.skip)


def test_pairwise_interaction_is_recovered_and_split_evenly():
    effects = PlantedEffects(skip=(0.01, 0.02, 0.03, 0.04), interactions={(1, 2): -0.03, (3, 4): 0.02})
    game = _game(effects)
    values = shapley_values(game)
    assert values["L1"] == pytest.approx(0.01 - 0.015)
    assert values["L2"] == pytest.approx(0.02 - 0.015)
    assert values["L4"] == pytest.approx(0.04 + 0.01)
    interactions = interaction_indices(game)
    assert interactions["L1×L2"] == pytest.approx(-0.03)
    assert interactions["L3×L4"] == pytest.approx(0.02)
    assert interactions["L1×L3"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_values_sum_to_all_minus_none_for_any_game(seed):
    game = dict(zip(ALL_SUBSETS, np.random.default_rng(seed).uniform(0.4, 0.9, 16)))
    assert sum(shapley_values(game).values()) == pytest.approx(game["1111"] - game["0000"])


def test_three_way_interaction_is_shared_by_three_skips():
    game = {s: float(s[:3] == "111") for s in ALL_SUBSETS}
    values = shapley_values(game)
    assert [values[k] for k in ("L1", "L2", "L3", "L4")] == pytest.approx([1 / 3, 1 / 3, 1 / 3, 0.0])


def test_missing_subset_is_an_error():
    game = {s: 0.5 for s in ALL_SUBSETS if s != "0101"}
    with pytest.raises(AblationError, match="0101"):
        shapley_values(game)


def test_analysis_on_a_result_folder_recovers_planted_effects(tmp_path):
    effects = PlantedEffects(
        skip=(0.005, 0.02, 0.03, 0.04), interactions={(1, 2): -0.02}, noise_sd=0.004, run_sd=0.002
    )
    make_fake_results(
        tmp_path,
        seeds=(0, 1, 2),
        folds=(0, 1),
        n_images=6,
        effects=effects,
        predictions=0,
        history_epochs=2,
        missing=[{"skips": "0110", "seed": 2, "fold": 1}],
    )
    means = replicate_means(load_results(tmp_path).images)
    replicates = means.pivot_table(index=["seed", "split"], columns="skips", values="dice")
    result = shapley_analysis(replicates)
    assert result.n_replicates == 5  # the replicate with a missing subset is dropped
    table = result.skips.set_index("skip")
    truth = {"L1": 0.5 - 1.0, "L2": 2.0 - 1.0, "L3": 3.0, "L4": 4.0}  # points
    for level, value in truth.items():
        assert table.loc[level, "shapley_ci_low"] - 0.3 < value < table.loc[level, "shapley_ci_high"] + 0.3
        assert table.loc[level, "shapley"] == pytest.approx(value, abs=0.5)
    assert table["shapley"].sum() == pytest.approx(result.total)
    pairs = result.interactions.set_index("pair")["interaction"]
    assert pairs["L1×L2"] == pytest.approx(-2.0, abs=0.5)
    assert pairs.drop("L1×L2").abs().max() < 0.6


def test_noise_free_folder_gives_exact_values(tmp_path):
    effects = PlantedEffects(interactions={(2, 4): 0.01}, noise_sd=0.0, image_sd=0.02)
    make_fake_results(tmp_path, folds=None, n_images=4, effects=effects, predictions=0, history_epochs=2)
    means = replicate_means(load_results(tmp_path).images)
    result = shapley_analysis(means.pivot_table(index=["seed", "split"], columns="skips", values="dice"))
    expected = shapley_values({s: 100 * effects.dice("unet", s) for s in ALL_SUBSETS})
    assert result.skips.set_index("skip")["shapley"].to_dict() == pytest.approx(expected)
    assert result.n_replicates == 1 and np.isnan(result.skips["shapley_ci_low"]).all()


def test_no_complete_replicate_is_an_error():
    replicates = pd.DataFrame([dict.fromkeys(itertools.islice(ALL_SUBSETS, 15), 0.5)])
    with pytest.raises(AblationError, match="all 16 subsets"):
        shapley_analysis(replicates)
