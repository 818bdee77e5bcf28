"""Fixtures shared by the test modules."""

from __future__ import annotations

import os

import pytest
import torch

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
