"""Every benchmark's ``--help`` prints its usage and writes nothing (a benchmark overwrites
``docs/results`` when it runs, so asking how to run one must not run it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: every benchmark: each module and package of benchmarks/ (a new one is covered by itself)
BENCHMARKS = sorted(
    f"benchmarks.{p.stem if p.is_file() else p.name}" for p in (ROOT / "benchmarks").iterdir()
    if not p.name.startswith("_") and (p.suffix == ".py" or (p / "__main__.py").exists()))


@pytest.mark.parametrize("module", BENCHMARKS)
def test_help_prints_usage_and_leaves_the_results_alone(module):
    results = ROOT / "docs" / "results"
    before = {p: p.stat().st_mtime_ns for p in results.rglob("*") if p.is_file()}
    out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage" in out.stdout.lower()
    after = {p: p.stat().st_mtime_ns for p in results.rglob("*") if p.is_file()}
    assert after == before


def test_the_init_study_changes_how_open_the_units_start_and_nothing_else():
    """``benchmarks.ablation --study init`` compares unit gates at 0.99 / 0.999 / 0.9999; the
    feature gates start at 0.99 in every config, so feature selection is not what it varies."""
    import torch
    from benchmarks.ablation import INIT_CONFIGS, STUDIES, STUDY_CONFIGS

    import lumos

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
