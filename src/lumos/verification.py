"""Check a compacted model against the gated one before handing it over.

``sm.eval()(x)`` and ``sm.compact()(x)`` must agree on every model LUMOS accepts; the example
inputs make that cheap to prove each time. When they do not agree, the error names the first
graph node (in the compacted graph's order) whose value differs while its shape is the same in
both graphs, which is where a rule that is not exact shows itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, cast

import torch
from torch import Tensor, fx, nn

from .errors import CompactionError, NonFiniteError
from .gating import GATES_PLACEHOLDER, source_name
from .modes import evaluating

#: relative tolerance of the check (float32 round-off through a deep net stays well inside)
RTOL = 1e-4
#: absolute tolerance, relative to the largest output magnitude
ATOL = 1e-5


def _tensors(out) -> Iterator[Tensor]:
    if isinstance(out, Tensor):
        yield out
    elif isinstance(out, dict):
        for v in out.values():
            yield from _tensors(v)
    elif isinstance(out, (tuple, list)):
        for v in out:
            yield from _tensors(v)


def largest_difference(a, b) -> tuple[float, float]:
    """(max |a - b|, max |a|) over every floating tensor of two outputs of the same structure."""
    diff, scale = 0.0, 0.0
    ta, tb = list(_tensors(a)), list(_tensors(b))
    if len(ta) != len(tb):
        return float("inf"), 0.0
    for x, y in zip(ta, tb):
        if x.shape != y.shape:
            return float("inf"), 0.0
        if not x.is_floating_point():
            if not torch.equal(x, y):
                return float("inf"), 0.0
            continue
        x, y = x.detach().double(), y.detach().double()
        finite = torch.isfinite(x) & torch.isfinite(y)
        if not torch.equal(torch.isfinite(x), torch.isfinite(y)):
            return float("inf"), 0.0
        if finite.any():
            diff = max(diff, float((x[finite] - y[finite]).abs().max()))
            scale = max(scale, float(x[finite].abs().max()))
    return diff, scale


def close(a, b) -> bool:
    diff, scale = largest_difference(a, b)
    return diff <= ATOL * max(scale, 1.0) + RTOL * scale


class _Gated(Protocol):
    """What :func:`verify` reads of the :class:`~lumos.SparseModel` it checks (a module above
    this one, which cannot import it)."""

    model: fx.GraphModule

    @property
    def example_args(self) -> tuple: ...

    def gate_values(self) -> Tensor: ...


def _node_values(gm: fx.GraphModule, args: tuple, kwargs: dict) -> dict[str, object]:
    values: dict[str, object] = {}

    class _Record(fx.Interpreter):
        def run_node(self, n: fx.Node):
            result = super().run_node(n)
            values[source_name(n)] = result
            return result

    _Record(gm).run(*args, *kwargs.values())
    return values


def verify(sm: nn.Module, small: fx.GraphModule, small_args: tuple) -> None:
    """Raise :class:`CompactionError` unless ``small(*small_args)`` equals ``sm``'s eval
    output on its example inputs (float tolerance: ``RTOL``, ``ATOL``)."""
    gated_model = cast(_Gated, sm)  # a SparseModel
    example = tuple(gated_model.example_args)
    with torch.no_grad(), evaluating(sm), evaluating(small):
        expected = sm(*example)
        if any(t.is_floating_point() and not bool(torch.isfinite(t).all())
               for t in _tensors(expected)):
            raise NonFiniteError(
                "the sparse model's output on its own example inputs holds NaN/Inf, so "
                "compacting it would hand over a broken model. Check the example inputs and "
                "the training (learning rate, NaN/Inf targets)."
            )
        try:
            got = small(*small_args)
        except Exception as exc:
            raise CompactionError(
                f"the compacted model fails on the example inputs ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:300]}): a LUMOS rule kept a size the compacted "
                "layers no longer have. Please report it with the model; meanwhile keep the "
                "layer involved whole (sparsify(..., keep=[...])) or pass verify=False."
            ) from exc
        if close(expected, got):
            return
        diff, scale = largest_difference(expected, got)
        z = gated_model.gate_values()
        gated = _node_values(gated_model.model, example, {GATES_PLACEHOLDER: z})
        compact = _node_values(small, small_args, {})
    where = "the output"
    for name, value in compact.items():
        ref = gated.get(name)
        if isinstance(value, Tensor) and isinstance(ref, Tensor) and \
                value.shape == ref.shape and value.is_floating_point() and not close(ref, value):
            node = next(n for n in small.graph.nodes if source_name(n) == name)
            where = f"node '{name}' ({node.op} {getattr(node.target, '__name__', node.target)})"
            break
    raise CompactionError(
        f"the compacted model differs from the gated model on the example inputs (largest "
        f"difference {diff:.3g} for outputs up to {scale:.3g}); first seen at {where}. This "
        "is a LUMOS bug or a custom rule that is not exact: please report it with the model. "
        "Meanwhile keep the layer whole (lumos.rules.keep_whole) or pass verify=False to "
        "compact() to get the model anyway."
    )
