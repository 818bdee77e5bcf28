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


def test_a_tolerance_rule_names_its_split_steps_and_a_bad_rule_is_refused():
    from benchmarks.tolerance_rules import parse_rule, rule_name

    assert parse_rule("settled:paced") == ("settled", "paced", None)
    assert parse_rule("last:final:4") == ("last", "final", 4)
    record = {"decide_on": "settled", "compare_to": "paced"}
    assert rule_name(record) == "settled:paced"  # a record from before split steps: 1
    assert rule_name({**record, "gate_step_every": 4}) == "settled:paced:4"
    for bad in ("settled", "settled:paced:0", "settled:paced:x", "sometimes:paced"):
        with pytest.raises(Exception, match="decide_on:compare_to"):
            parse_rule(bad)
    out = subprocess.run([sys.executable, "-m", "benchmarks.tolerance_rules", "--rules",
                          "settled:paced:0", "--only", "darcy"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "gate_step_every" in out.stderr
