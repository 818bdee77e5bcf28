"""Fixtures shared by the test modules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import lumos
from torchvision_cpu import ensure_torchvision_importable

# torchvision's PyPI wheel for torch 2.13 is a CUDA build: let it import beside the CPU torch
# (torchmetrics, under Lightning, imports it too), here and in the processes tests start
ensure_torchvision_importable()
_SITE = str(Path(__file__).resolve().parent / "_site")
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (_SITE, os.environ.get("PYTHONPATH", "")) if p)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # one worker per core (README: pytest -n auto): a second torch thread per worker would
    # only fight the other workers for the same cores.
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_thread():
    """Hundreds of tiny models: one thread and no oneDNN primitive per new shape is ~10x faster
    on a busy machine (exactness does not depend on the kernel; both models use the same)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.backends.mkldnn.flags(enabled=False):
            yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def starting_keep_probability():
    """``options -> {kind: P(open) of each gate}`` right after ``sparsify`` of one model with
    input features, conv channels and MLP neurons: what ``init_keep_probability`` did."""
    net = torch.nn.Sequential(torch.nn.Conv1d(3, 16, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(16 * 6, 32), torch.nn.ReLU(),
                              torch.nn.Linear(32, 1))
    x = torch.randn(4, 3, 8)

    def start(options) -> dict[str, torch.Tensor]:
        sm = lumos.sparsify(net, x, budget=0.5, gates=options)
        p = sm.gates.prob_nonzero()
        return {k: p[sm.gates.mask_of_kind(k)] for k in dict.fromkeys(sm.gates.kinds)}

    return start
