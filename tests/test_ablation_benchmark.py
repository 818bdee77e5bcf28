"""The gate-ablation benchmark's studies compare what they say they compare."""

from __future__ import annotations

import torch
from benchmarks.ablation import INIT_CONFIGS, STUDIES, STUDY_CONFIGS

import lumos
from lumos.gates import keep_probability_of


def test_the_init_study_changes_how_open_the_units_start_and_nothing_else(
        starting_keep_probability):
    """``benchmarks.ablation --study init`` compares how open the unit gates start; the
    feature gates start at 0.99 in every config, so feature selection is not what it varies,
    and the baseline starts every kind as the library default does."""

    assert STUDY_CONFIGS["init"] is INIT_CONFIGS and STUDIES["init"][0] in INIT_CONFIGS
    default = lumos.GateOptions().init_keep_probability
    baseline = INIT_CONFIGS[STUDIES["init"][0]].init_keep_probability
    seen = set()
    for options in INIT_CONFIGS.values():
        for kind, p in starting_keep_probability(options).items():
            expected = keep_probability_of(options.init_keep_probability, kind)
            if kind == "feature":
                assert expected == 0.99
            torch.testing.assert_close(p, torch.full_like(p, expected),
                                       atol=2e-3 * (1 - expected) / 0.01, rtol=0)
            seen.add(kind)
            assert keep_probability_of(baseline, kind) == keep_probability_of(default, kind)
    assert {"feature", "neuron", "channel"} <= seen
