"""Every example script runs end to end on its smoke size (as a user would run it)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest
import torch

import lumos

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.py"))
#: examples that need an optional package (skipped without it)
NEEDS = {"gnn_graphs": "torch_geometric"}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_on_its_smoke_size(path, monkeypatch, capsys):
    if path.stem in NEEDS:
        pytest.importorskip(NEEDS[path.stem])
    monkeypatch.setattr(sys, "argv", [str(path), "--smoke"])
    namespace = runpy.run_path(str(path), run_name="not_main")
    torch.manual_seed(0)
    result = namespace["main"](smoke=True)
    out = capsys.readouterr().out
    assert "LUMOS report" in out and "validation R²" in out
    assert "smoke size" in out  # the broken-looking smoke numbers say why
    small = result["small"]
    assert isinstance(small, torch.nn.Module)
    assert not any(type(m).__module__.startswith("lumos") for m in small.modules())
    assert result["features"]  # some inputs were kept


def test_there_is_an_example_per_architecture():
    assert {p.stem for p in EXAMPLES} >= {"mlp_tabular", "cnn_fields", "gnn_graphs",
                                         "attention_sequences"}
    assert lumos.metrics.r2 is not None
