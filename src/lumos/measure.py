"""Counting and timing: parameters, FLOPs (torch's own counter), latency, memory, energy."""

from __future__ import annotations

import contextlib
import math
import statistics
import time
import weakref

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from .modes import evaluating


def _call(module: nn.Module, example_inputs):
    if isinstance(example_inputs, dict):
        return module(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return module(*example_inputs)
    return module(example_inputs)


def count_params(module: nn.Module) -> int:
    """Number of parameter elements, shared parameters counted once."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    """Scores and weighted values: 2*B*H*Lq*Lk*(Dq + Dv), torch's own convention for SDPA."""
    *batch, lq, dq = query_shape
    lk, dv = key_shape[-2], value_shape[-1]
    return 2 * math.prod(batch) * lq * lk * (dq + dv)


def _cpu_rnn_layer_flops(input_shape, w_ih_shape, w_hh_shape, *args, **kwargs) -> int:
    """One direction of one LSTM layer (oneDNN kernel): the input and recurrent matmuls of
    every step, 2 * steps * (rows * in + rows * hidden); gate nonlinearities not counted."""
    steps = math.prod(input_shape[:-1])
    return 2 * steps * (math.prod(w_ih_shape) + math.prod(w_hh_shape))


# torch's counter knows the CUDA attention kernels but not the CPU one, nor the CPU LSTM.
_EXTRA_FLOP_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    torch.ops.aten.mkldnn_rnn_layer: _cpu_rnn_layer_flops,
}


def count_flops(module: nn.Module, example_inputs) -> int:
    """FLOPs of one forward pass on ``example_inputs``, as counted by torch's FlopCounterMode.

    Counts matmuls, convolutions and attention (2 per multiply-add), the ops that dominate;
    elementwise ops, FFTs and message-passing scatters are not counted. Fused inference fast
    paths (``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer``) are switched off while
    counting so that their matmuls are seen. The LUMOS cost model uses the same convention.
    """
    with evaluating(module), torch.no_grad(), flop_counter() as counter:
        _call(module, example_inputs)
    return int(counter.get_total_flops())


@contextlib.contextmanager
def flop_counter():
    """torch's FlopCounterMode with the CPU attention kernel known and fused fast paths off."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS) as counter:
            yield counter
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def latency(module: nn.Module, example_inputs, repeats: int = 30, warmup: int = 5) -> float:
    """Median wall time (seconds) of one forward pass in eval mode without autograd."""
    with evaluating(module):
        return call_latency(lambda: _call(module, example_inputs), repeats, warmup)


def call_latency(fn, repeats: int = 30, warmup: int = 5) -> float:
    """Median wall time (seconds) of ``fn()`` without autograd: for callables without a
    train/eval mode of their own, such as frozen TorchScript."""
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


class _LiveTensorBytes(TorchDispatchMode):
    """Tracks the bytes of tensors created while active and still alive: their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in self._seen or storage.nbytes() == 0:
            return
        self._seen.add(key)
        size = storage.nbytes()
        self.live += size
        self.peak = max(self.peak, self.live)

        def release(key=key, size=size) -> None:
            self._seen.discard(key)
            self.live -= size

        weakref.finalize(storage, release)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out


def peak_memory(module: nn.Module, example_inputs) -> int:
    """Peak bytes of tensors allocated during one inference forward pass (activations and
    outputs; the weights themselves are ``count_params`` x element size). Measured by tracking
    every tensor torch creates, so it is exact and repeatable, unlike process RSS."""
    tracker = _LiveTensorBytes()
    with evaluating(module), torch.inference_mode(), tracker:
        _call(module, example_inputs)
    return tracker.peak


_RAPL = "/sys/class/powercap/intel-rapl:0/energy_uj"


def energy_joules(fn, repeats: int = 1) -> float | None:
    """Energy of ``repeats`` calls of ``fn`` from the CPU package counter (Intel RAPL), or None
    where the machine does not expose it — never an estimate."""
    try:
        with open(_RAPL) as fh:
            start = int(fh.read())
    except OSError:
        return None
    for _ in range(repeats):
        fn()
    with open(_RAPL) as fh:
        end = int(fh.read())
    return (end - start) / 1e6 if end >= start else None
