"""Third-party zoo: LUMOS is never silently wrong on models built from their own packages.

For every model of :mod:`thirdparty.zoo` (torch.nn, torch-geometric, neuraloperator, MONAI,
e3nn; random weights, small sizes) LUMOS either sparsifies it at budget 0.3, trains ~50 steps,
compacts it and passes every check of :mod:`thirdparty.harness` (compacted == gated at three
batch sizes, finite and repeatable eval output, parameter count == cost model, reload without
LUMOS), or refuses it with a ``lumos.LumosError`` whose message names a module or a source line.
Any other exception, a ``CompactionError`` or a failed check fails the row.

Rows where LUMOS is wrong today are ``xfail(strict=True)`` with what happens, so the suite
stays green while the defect stays visible (and the mark must go once it is fixed).
``python -m benchmarks.thirdparty`` runs the same table and writes the results table.
"""

from __future__ import annotations

import pytest
import torch

from thirdparty.harness import Reloader, run_entry
from thirdparty.zoo import KNOWN_DEFECTS, TABLE

pytestmark = pytest.mark.slow


def _param(entry):
    marks = []
    if entry.name in KNOWN_DEFECTS:
        marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_DEFECTS[entry.name]))
    return pytest.param(entry, id=entry.name, marks=marks)


@pytest.fixture(scope="module")
def reloader():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: one thread is faster and leaves the other core
    with Reloader() as process:
        yield process
    torch.set_num_threads(threads)


def test_the_table_has_at_least_30_models_from_their_own_packages():
    assert len(TABLE) >= 30
    assert len({e.package for e in TABLE}) >= 5
    assert set(KNOWN_DEFECTS) <= {e.name for e in TABLE}


@pytest.mark.parametrize("entry", [_param(e) for e in TABLE])
def test_lumos_compacts_exactly_or_refuses_naming_the_layer(entry, reloader):
    missing = entry.missing()
    if missing:
        pytest.skip(missing)
    result = run_entry(entry, reloader)
    if result.outcome == "refused":
        assert result.names_module, (
            f"{entry.name}: refused without naming a module or line: {result.reason}")
        return
    assert result.outcome == "exact", f"{entry.name}: {result.status}"
    # what "exact" means, spelled out (run_entry checked each)
    assert result.finite and result.repeatable and result.params_equal and result.reloads
    assert result.max_diff is not None and result.kept is not None
