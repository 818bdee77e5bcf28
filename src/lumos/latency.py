"""Layer latency on the device the model runs on: what ``budget_on="latency"`` budgets.

A FLOP is not a second: a 3x3 convolution at 64x64 pixels, a small matmul and an attention
product run at different speeds on the same chip, so a FLOP budget can keep the layers that are
slow per FLOP. With ``budget_on="latency"`` every layer that carries FLOP terms in the cost model
is timed once at full width on the example inputs (forward hooks around it, the median of a few
forwards, synchronised on CUDA). A call costs a fixed part that no width changes (the
framework's dispatch, measured once per device on a one-weight ``Linear``) plus a part that
grows with the work; the second, divided by the layer's FLOPs, weights its FLOP terms. The
budget's cost is therefore each layer's measured width-dependent time, scaled by the FLOPs the
layer keeps, and compaction keeps it at or under the budget exactly as for FLOPs.

What it leaves out, by design: layers without FLOP terms (norms, activations, pooling) and the
fixed per-call part count as constant time (a budget of 0.25 asks for a quarter of the time that
width can remove), so the *measured* speed-up of a compacted model is not promised to match the
estimate (``benchmarks/latency.py`` measures it).
Times are measured once per process for each (layer, input shapes, device), and travel with the
SparseModel (its state_dict and pickles), so a resumed run budgets what the first one measured.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

#: forwards timed per measurement (after one untimed warm-up)
REPEATS = 5
#: measured seconds per (layer type, layer settings, input shapes, device), for this process
_CACHE: dict[tuple, float] = {}


def owner_of(label: str, owners: Iterable[str]) -> str | None:
    """The longest module path among ``owners`` that ``label`` (a cost term's) belongs to."""
    best = None
    for path in owners:
        if (label == path or label.startswith(path + ".")) and (best is None
                                                                or len(path) > len(best)):
            best = path
    return best


def layer_seconds(model: nn.Module, run: Callable[[], object], paths: Iterable[str],
                  device: torch.device, repeats: int = REPEATS) -> dict[str, float]:
    """Seconds one call of ``run()`` spends inside each module of ``paths`` (exclusive of the
    listed modules nested in it), measured with forward hooks on ``device``.

    Args:
        model: the module that ``paths`` name submodules of.
        run: a function that runs the model's forward once (no grad needed).
        paths: submodule paths to time.
        device: where the forward runs (CUDA is synchronised around every timed layer).
        repeats: timed forwards; each layer's median is taken.

    Returns:
        ``{path: seconds}`` for every path the forward called: the part of its time that
        grows with its work (each call's fixed part, :func:`call_seconds`, taken off).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from lumos.latency import layer_seconds
        >>> net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
        >>> x = torch.randn(16, 8)
        >>> seconds = layer_seconds(net, lambda: net(x), ["0", "2"], torch.device("cpu"))
        >>> sorted(seconds), all(s > 0 for s in seconds.values())
        (['0', '2'], True)
    """
    modules = dict(model.named_modules())
    paths = [p for p in paths if p in modules]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    keys: dict[str, tuple] = {}
    spent: dict[str, float] = {}
    calls: dict[str, int] = {}
    starts: dict[str, list[float]] = {}

    def before(path: str):
        def hook(module, args, kwargs):
            if path not in keys:
                keys[path] = _key(module, args, kwargs, device)
            sync()
            starts.setdefault(path, []).append(time.perf_counter())
        return hook

    def after(path: str):
        def hook(module, args, kwargs, output):
            sync()
            spent[path] = spent.get(path, 0.0) + time.perf_counter() - starts[path].pop()
            calls[path] = calls.get(path, 0) + 1
        return hook

    handles = []
    for path in paths:
        handles.append(modules[path].register_forward_pre_hook(before(path), with_kwargs=True))
        handles.append(modules[path].register_forward_hook(after(path), with_kwargs=True))
    samples: dict[str, list[float]] = {}
    try:
        with torch.no_grad():
            run()  # warm-up, and the cache keys and call counts
            per_forward = {p: calls[p] for p in keys}
            if all(keys[p] in _CACHE for p in keys):
                inclusive = {p: _CACHE[keys[p]] for p in keys}
            else:
                for _ in range(repeats):
                    spent.clear()
                    run()
                    for p, s in spent.items():
                        samples.setdefault(p, []).append(s)
                inclusive = {p: statistics.median(v) for p, v in samples.items()}
                for p, s in inclusive.items():
                    _CACHE[keys[p]] = s
    finally:
        for h in handles:
            h.remove()
    fixed = call_seconds(device)
    exclusive = _exclusive(inclusive)
    # the width-dependent part: what is left after each call's fixed part (at least a tenth
    # of the measured time, so a layer is never free)
    return {p: max(s - per_forward[p] * fixed, 0.1 * s) for p, s in exclusive.items()}


def call_seconds(device: torch.device, repeats: int = 200) -> float:
    """The fixed time of one hooked layer call on ``device`` (a one-weight ``Linear`` on one
    number: dispatch and hooks, no work), measured once per process and device."""
    key = ("call", str(device))
    if key not in _CACHE:
        layer = nn.Linear(1, 1).to(device)
        x = torch.zeros(1, 1, device=device)
        times: list[float] = []
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        layer.register_forward_pre_hook(lambda *a: sync())
        layer.register_forward_hook(lambda *a: sync())
        with torch.no_grad():
            for _ in range(repeats):
                start = time.perf_counter()
                layer(x)
                times.append(time.perf_counter() - start)
        _CACHE[key] = statistics.median(times)
    return _CACHE[key]


def _exclusive(inclusive: dict[str, float]) -> dict[str, float]:
    """Each module's time without the timed modules nested in it (never below zero)."""
    def inside(p: str, q: str) -> bool:
        return p != q and (q == "" or p.startswith(q + "."))

    out = {}
    for path, seconds in inclusive.items():
        nested = [p for p in inclusive if inside(p, path)]
        direct = [p for p in nested if not any(inside(p, q) for q in nested)]
        out[path] = max(seconds - sum(inclusive[p] for p in direct), 0.0)
    return out


def _key(module: nn.Module, args: tuple, kwargs: dict, device: torch.device) -> tuple:
    def describe(v):
        if isinstance(v, Tensor):
            return ("tensor", tuple(v.shape), str(v.dtype))
        if isinstance(v, (tuple, list)):
            return tuple(describe(x) for x in v)
        return type(v).__name__
    params = tuple((n, tuple(p.shape), str(p.dtype)) for n, p in module.named_parameters())
    return (type(module).__qualname__, module.extra_repr(), params, describe(args),
            tuple(sorted((k, describe(v)) for k, v in kwargs.items())), str(device))


def seconds_per_flop(flops_by_label: dict[str, float], seconds: dict[str, float]
                     ) -> tuple[dict[str, float], float]:
    """Each measured layer's seconds per FLOP, keyed by layer path, and the FLOP-weighted
    mean over them (for FLOP terms no timed layer owns: a function such as ``matmul``)."""
    flops_by_owner: dict[str, float] = {}
    for label, flops in flops_by_label.items():
        owner = owner_of(label, seconds)
        if owner is not None:
            flops_by_owner[owner] = flops_by_owner.get(owner, 0.0) + flops
    rates = {o: seconds[o] / f for o, f in flops_by_owner.items() if f > 0}
    total_flops = sum(f for o, f in flops_by_owner.items() if o in rates)
    mean = (sum(seconds[o] for o in rates) / total_flops) if total_flops > 0 else 1e-9
    return rates, mean
