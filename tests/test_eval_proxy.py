"""CORE: which results count once, and with which chance level."""

from __future__ import annotations

import pytest

from ipt.eval.proxy import core_table, core_units, task_chance


def test_core_counts_a_scored_group_once_and_opens_an_unscored_one():
    results = {
        "paper": {"alias": "paper"},  # a group without its own metric: its members count
        "arc": {"acc,none": 0.5, "acc_norm,none": 0.4},
        "mmlu": {"acc,none": 0.3},  # a group with its own accuracy: one unit
        "mmlu_a": {"acc,none": 0.2},
        "mmlu_b": {"acc,none": 0.4},
        "boolq": {"acc,none": 0.75},
        "wikitext": {"word_perplexity,none": 30.0},  # not multiple choice: no chance level
    }
    groups = {"paper": ["arc", "mmlu"], "mmlu": ["mmlu_a", "mmlu_b"]}
    chance = {"arc": 0.25, "mmlu_a": 0.25, "mmlu_b": 0.5, "boolq": 0.5}
    units = core_units(results, groups, chance, {"mmlu_a": 3, "mmlu_b": 1, "arc": 10, "boolq": 4})
    assert units == {"arc": 0.25, "mmlu": pytest.approx((3 * 0.25 + 0.5) / 4), "boolq": 0.5}
    rows, core = core_table(results, units)
    assert rows["arc"]["metric"] == "acc_norm" and rows["arc"]["centered"] == pytest.approx(
        (0.4 - 0.25) / 0.75
    )
    assert rows["boolq"]["centered"] == pytest.approx(0.5)
    mmlu = (0.3 - 0.3125) / (1 - 0.3125)
    assert core == pytest.approx((0.2 + mmlu + 0.5) / 3)


def test_chance_is_the_mean_of_one_over_the_number_of_choices():
    samples = [{"arguments": [0] * 4}, {"arguments": [0] * 2}]
    assert task_chance(samples) == pytest.approx((0.25 + 0.5) / 2)
