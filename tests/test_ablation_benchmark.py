"""The gate-ablation benchmark's studies compare what they say they compare."""

from __future__ import annotations

import torch
from benchmarks.ablation import INIT_CONFIGS, STUDIES, STUDY_CONFIGS

import lumos


def test_the_init_study_changes_how_open_the_units_start_and_nothing_else():
    """``benchmarks.ablation --study init`` compares unit gates at 0.99 / 0.999 / 0.9999; the
    feature gates start at 0.99 in every config, so feature selection is not what it varies."""

    assert STUDY_CONFIGS["init"] is INIT_CONFIGS and STUDIES["init"][0] in INIT_CONFIGS
    for name, options in INIT_CONFIGS.items():
        unit = float(name.split()[-1])
        sm = lumos.sparsify(torch.nn.Sequential(torch.nn.Linear(6, 64), torch.nn.ReLU(),
                                                torch.nn.Linear(64, 1)), torch.randn(4, 6),
                            budget=0.5, gates=options)
        p = sm.gates.prob_nonzero()
        feature = sm.gates.mask_of_kind("feature")
        torch.testing.assert_close(p[feature], torch.full_like(p[feature], 0.99), atol=2e-3,
                                   rtol=0)
        torch.testing.assert_close(p[~feature], torch.full_like(p[~feature], unit),
                                   atol=2e-3 * (1 - unit) / 0.01, rtol=0)
