"""Counting and timing: parameters, FLOPs (torch's own counter), latency."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def _call(module: nn.Module, example_inputs):
    if isinstance(example_inputs, dict):
        return module(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return module(*example_inputs)
    return module(example_inputs)


def count_params(module: nn.Module) -> int:
    """Number of parameter elements, shared parameters counted once."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def count_flops(module: nn.Module, example_inputs) -> int:
    """FLOPs of one forward pass on ``example_inputs``, as counted by torch's FlopCounterMode.

    Counts matmuls and convolutions (2 per multiply-add), the ops that dominate; elementwise
    ops are not counted. The LUMOS cost model uses the same convention so the two agree.
    """
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            _call(module, example_inputs)
    finally:
        module.train(was_training)
    return int(counter.get_total_flops())


def latency(module: nn.Module, example_inputs, repeats: int = 30, warmup: int = 5) -> float:
    """Median wall time (seconds) of one forward pass in eval mode without autograd."""
    was_training = module.training
    module.eval()
    times = []
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                _call(module, example_inputs)
            for _ in range(repeats):
                start = time.perf_counter()
                _call(module, example_inputs)
                times.append(time.perf_counter() - start)
    finally:
        module.train(was_training)
    return statistics.median(times)
