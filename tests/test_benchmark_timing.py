"""The suite's timing copies: denormal weights (which the CPU multiplies tens of times slower,
and which flushing does not reach on worker threads) are zeroed, nothing else changes; and its
convergence evidence for the dense recipes."""

from __future__ import annotations

import torch
from benchmarks.suite import paired_latency, without_denormals


def test_denormal_weights_are_zeroed_on_a_copy_and_normal_ones_kept():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4)).eval()
    with torch.no_grad():
        model[0].weight[0, :2] = 1e-40  # denormal in float32
        model[0].weight[1, 0] = 1e-30  # tiny but normal
        model[1].running_var[0] = 1e-41
    clean = without_denormals(model)
    assert float(clean[0].weight[0, :2].abs().max()) == 0.0
    assert torch.equal(clean[0].weight[1], model[0].weight[1])  # 1e-30 is normal: kept
    assert float(clean[1].running_var[0]) == 0.0
    assert float(model[0].weight[0, 0]) != 0.0  # the original is left alone
    assert torch.equal(clean[0].weight[2:], model[0].weight[2:])


def test_paired_latency_times_both_models():
    model = torch.nn.Linear(8, 8).eval()
    try:
        dense, small = paired_latency(model, model, (torch.randn(4, 8),), rounds=2,
                                      budget_s=0.01)
    finally:
        # set_flush_denormal returns whether flushing is supported, not the previous state:
        # "restoring" that value turned flushing on for every later test of the worker, and
        # hypothesis then refuses to draw floats (it checks for subnormals)
        torch.set_flush_denormal(False)
    assert dense > 0 and small > 0


def test_last_change_says_whether_a_validation_curve_still_moves():
    from benchmarks.suite import last_change

    flat = [0.5, 0.8, 0.9] + [0.95] * 17
    rising = [0.5 + 0.02 * k for k in range(20)]
    assert last_change(flat, higher_is_better=True) == 0.0
    assert last_change(rising, higher_is_better=True) > 0.03
    falling_loss = [1.0 - 0.04 * k for k in range(20)]  # lower is better: still improving
    assert last_change(falling_loss, higher_is_better=False) > 0
    assert last_change([0.1, 0.2, 0.3], higher_is_better=True) is None
