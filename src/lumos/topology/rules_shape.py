"""Channel rules for ops that move, pick, join, split or reduce dims.

Reshapes follow a channel's positions (a ``flatten`` of C x HW multiplies its block),
indexing and gathers keep or pin what they touch, ``cat`` lays its pieces side by side,
reductions over other dims keep the channels. Anything not provable pins the channels.
"""

from __future__ import annotations

import builtins
import math
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from .context import RuleContext, describe
from .infos import AttrInfo, ShapeInfo, TensorInfo, TupleInfo
from .registry import REGISTRY, register_rule
from .rule_helpers import int_arg, known_shape, node_arg, positive_dim
from .rules_elementwise import binary, elementwise_pair, parameter_follows
from .spaces import Layout, unify


# ---- reshapes ---------------------------------------------------------------------------------
def _map_reshape(in_shape, p: int, out_shape) -> tuple[int, int] | None:
    """Where the tracked dim ``p`` of ``in_shape`` lands in ``out_shape``, and its block factor.

    Row-major order keeps a channel's positions together only if everything before it stays
    before it: the dims before ``p`` must multiply to the same prefix in the output.
    """
    channels = in_shape[p]
    prefix = math.prod(in_shape[:p])
    trailing = in_shape[p + 1 :]
    running = 1
    for q, size in enumerate(out_shape):
        if running == prefix:
            if size == channels and channels != 1:
                return q, 1
            for j in range(1, len(trailing) + 1):
                block = math.prod(trailing[:j])
                if size == channels * block and block > 1:
                    return q, block
        running *= size
        if running > prefix and prefix != 0:
            break
    return None


def _reshaped(ctx: RuleContext, node: fx.Node, x_arg, shape_args: list, path_of=None):
    """``path_of(i)``: where shape entry ``i`` sits in ``node.args`` (for literal rewrites)."""
    info = ctx.tensor_info(x_arg)
    if info is None:
        ctx.pin([ctx.info(a) for a in shape_args], f"{describe(node)} sizes from a channel count")
        return None
    in_shape, out_shape = known_shape(ctx, x_arg), known_shape(ctx, node)
    p = positive_dim(info.dim, len(in_shape))
    mapped = _map_reshape(in_shape, p, out_shape)
    if mapped is None:
        info.layout.pin(f"{describe(node)} splits or mixes the channel dim")
        return None
    q, block = mapped
    layout = info.layout.with_block(block) if block > 1 else info.layout
    for i, a in enumerate(shape_args):
        a_info = ctx.info(a)
        if i == q:
            if isinstance(a, int) and a != -1 and path_of is not None:
                ctx.rewrite(node, path_of(i), info.layout, block)
            elif isinstance(a_info, ShapeInfo) and a_info.dim is None and block == 1:
                unify(info.layout, a_info.layout, f"{describe(node)} size from another tensor")
            elif isinstance(a, fx.Node) and not isinstance(a_info, ShapeInfo):
                info.layout.pin(f"{describe(node)} computes the channel size at run time")
        elif a_info is not None:
            ctx.pin(a_info, f"{describe(node)} uses a channel count for another dim")
    return TensorInfo(q - len(out_shape), layout)


def _view(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    rest = list(node.args[1:])
    if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
        return _reshaped(ctx, node, node.args[0], list(rest[0]), lambda i: (1, i))
    if "shape" in node.kwargs or "size" in node.kwargs:
        shape = node.kwargs.get("shape", node.kwargs.get("size"))
        if isinstance(shape, (tuple, list)):
            info = ctx.tensor_info(node.args[0])
            if info:
                info.layout.pin(f"{describe(node)} passes its shape as a keyword")
            return None
    return _reshaped(ctx, node, node.args[0], rest, lambda i: (1 + i,))


def _reshape_function(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    shape = node_arg(node, 1, "shape")
    if not isinstance(shape, (tuple, list)) or len(node.args) < 2:
        ctx.unknown(node)
        return None
    return _reshaped(ctx, node, node.args[0], list(shape), lambda i: (1, i))


def _shape_only(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    """flatten/squeeze/unsqueeze: no literal sizes to rewrite, mapping follows from shapes."""
    x = node.args[0] if node.args else node.kwargs.get("input")
    return _reshaped(ctx, node, x, [])


def _reshape_as(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    """``x.reshape_as(other)`` / ``x.view_as(other)``: the output has ``other``'s shape, so the
    size of the dim that carries ``x``'s channels comes from ``other``. Exact when ``other``
    carries the same channels there (their gates become one); otherwise both are kept whole
    (LeViT's ``bn(x.flatten(0, 1)).reshape_as(x)`` is the first case)."""
    x = node.args[0]
    other = ctx.info(node.args[1]) if len(node.args) > 1 else None
    before = ctx.tensor_info(x)
    out = _reshaped(ctx, node, x, [])
    if (isinstance(out, TensorInfo) and isinstance(other, TensorInfo) and before is not None
            and out.layout is before.layout and other.dim == out.dim):
        unify(out.layout, other.layout, f"{describe(node)} takes its shape from another tensor")
        return out
    reason = f"{describe(node)} takes the channel size from another tensor"
    ctx.pin([i for i in (out, other) if isinstance(i, TensorInfo)], reason)
    return out


def _flatten_module(ctx: RuleContext, node: fx.Node, module: nn.Flatten) -> object:
    return _reshaped(ctx, node, node.args[0], [])


register_rule(nn.Flatten, _flatten_module)


def _permute(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    info = ctx.tensor_info(node.args[0])
    if info is None:
        return None
    ndim = len(known_shape(ctx, node.args[0]))
    p = positive_dim(info.dim, ndim)
    name = node.target if isinstance(node.target, str) else node.target.__name__
    if name in ("t", "T") or name == "mT":
        dims = list(range(ndim))
        if ndim >= 2:
            dims[-1], dims[-2] = dims[-2], dims[-1]
    elif name in ("transpose", "swapaxes", "swapdims"):
        a, b = (positive_dim(int_arg(d), ndim) for d in node.args[1:3])
        dims = list(range(ndim))
        dims[a], dims[b] = dims[b], dims[a]
    elif name == "movedim":
        src = positive_dim(int_arg(node.args[1]), ndim)
        dst = positive_dim(int_arg(node.args[2]), ndim)
        dims = [d for d in range(ndim) if d != src]
        dims.insert(dst, src)
    else:  # permute
        rest = node.args[1:]
        listed = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest
        dims = [positive_dim(int_arg(d), ndim) for d in listed]
    return TensorInfo(dims.index(p) - ndim, info.layout)


def _expand(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    info = ctx.tensor_info(node.args[0])
    if info is None:
        return _expand_parameter(ctx, node)
    rest = list(node.args[1:])
    path_of: Callable[[int], tuple[int, ...]]
    if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
        sizes, path_of = list(rest[0]), (lambda i: (1, i))
    else:
        sizes, path_of = rest, (lambda i: (1 + i,))
    q = len(sizes) + info.dim
    for i, a in enumerate(sizes):
        if i == q and isinstance(a, int) and a != -1:
            ctx.rewrite(node, path_of(i), info.layout)
        elif isinstance(a, fx.Node):
            ctx.pin(ctx.info(a), f"{describe(node)} uses a channel count for a size")
    return TensorInfo(info.dim, info.layout)


def _expand_parameter(ctx: RuleContext, node: fx.Node) -> AttrInfo | None:
    """A parameter broadcast by ``expand`` (``cls_token.expand(B, -1, -1)``) may still follow
    channels, if every dim it holds more than once is kept with ``-1`` (no literal size that
    compaction would have to rewrite before it knows which dim carries the channels)."""
    attr = ctx.info(node.args[0])
    if not isinstance(attr, AttrInfo) or not (attr.elementwise_of_raw or attr.broadcast_of_raw):
        return None
    raw = ctx.attr(attr.owner, attr.name)
    rest = list(node.args[1:])
    sizes = list(rest[0]) if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest
    for back in range(1, raw.dim() + 1):
        if raw.shape[-back] > 1 and (back > len(sizes) or sizes[-back] != -1):
            return None
    return AttrInfo(attr.owner, attr.name, elementwise_of_raw=False, broadcast_of_raw=True)


# ---- indexing ---------------------------------------------------------------------------------
def _getitem(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    src, index = node.args[0], node.args[1]
    info = ctx.info(src)
    if isinstance(info, TupleInfo):
        return info.items[index] if isinstance(index, int) else None
    if isinstance(info, ShapeInfo) and info.dim is not None:
        if isinstance(index, int):
            n = (len(known_shape(ctx, src.args[0]))
                 if isinstance(src, fx.Node) and src.args else None)
            if n is not None and positive_dim(index, n) == info.dim:
                return ShapeInfo(None, info.layout)
            return None
        n = (len(known_shape(ctx, src.args[0]))
             if isinstance(src, fx.Node) and src.args else None)
        if isinstance(index, slice) and n is not None and all(
                v is None or isinstance(v, int) for v in (index.start, index.stop, index.step)):
            kept = list(range(n))[index]  # ``x.shape[2:]``: the spatial sizes only
            return ShapeInfo(kept.index(info.dim), info.layout) if info.dim in kept else None
        info.layout.pin(f"{describe(node)} slices a shape that contains a channel count")
        return None
    if not isinstance(info, TensorInfo):
        if isinstance(info, AttrInfo):
            ctx.fix_attr(info)
        ctx.pin(ctx.info(index), f"{describe(node)} indexes with a channel count")
        return None
    return _index_tensor(ctx, node, info, index)


def _index_tensor(ctx: RuleContext, node: fx.Node, info: TensorInfo, index) -> object:
    """Basic indexing (ints, slices, None, ...) that leaves the tracked dim whole keeps it."""
    in_shape = known_shape(ctx, node.args[0])
    ndim = len(in_shape)
    p = positive_dim(info.dim, ndim)
    items = list(index) if isinstance(index, tuple) else [index]
    if any(isinstance(i, (fx.Node, list, torch.Tensor)) for i in items):
        ctx.pin(info, f"{describe(node)} uses advanced indexing")
        ctx.pin([ctx.info(i) for i in items], f"{describe(node)} indexes with a channel count")
        return None
    consumed = sum(1 for i in items if i is not None and i is not Ellipsis)
    if Ellipsis in items:
        e = items.index(Ellipsis)
        items = items[:e] + [slice(None)] * (ndim - consumed) + items[e + 1 :]
    else:
        items += [slice(None)] * (ndim - consumed)
    in_dim = 0
    out_dim = 0
    for item in items:
        if item is None:
            out_dim += 1
            continue
        if in_dim == p:
            if item == slice(None) or (
                isinstance(item, slice)
                and item.step in (None, 1)
                and (item.start in (None, 0))
                and (item.stop is None or item.stop >= in_shape[p])
            ):
                out_shape = known_shape(ctx, node)
                return TensorInfo(out_dim - len(out_shape), info.layout)
            info.layout.pin(f"{describe(node)} selects part of the channels")
            return None
        if isinstance(item, int):
            in_dim += 1
            continue
        in_dim += 1
        out_dim += 1
    return None


def _size(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    info = ctx.tensor_info(node.args[0])
    if info is None:
        return None
    ndim = len(known_shape(ctx, node.args[0]))
    p = positive_dim(info.dim, ndim)
    dim = node_arg(node, 1, "dim")
    if dim is None:
        return ShapeInfo(p, info.layout)
    return ShapeInfo(None, info.layout) if positive_dim(int(dim), ndim) == p else None


def _getattr(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    src, name = node.args[0], node.args[1]
    info = ctx.info(src)
    if name == "shape" and isinstance(info, TensorInfo):
        return ShapeInfo(positive_dim(info.dim, len(known_shape(ctx, src))), info.layout)
    if name in ("T", "mT") and isinstance(info, TensorInfo):
        return _transpose_attr(ctx, node)
    if name in ("dtype", "device", "ndim", "is_cuda", "requires_grad"):
        return None
    if isinstance(info, (TensorInfo, ShapeInfo)):
        ctx.pin(info, f"attribute .{name} of a tracked tensor")
    return None


def _transpose_attr(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    info = ctx.tensor_info(node.args[0])
    assert info is not None  # _getattr calls it for a tracked tensor only
    ndim = len(known_shape(ctx, node.args[0]))
    p = positive_dim(info.dim, ndim)
    if ndim < 2:
        return info
    dims = list(range(ndim))
    dims[-1], dims[-2] = dims[-2], dims[-1]
    return TensorInfo(dims.index(p) - ndim, info.layout)


# ---- joins and splits -------------------------------------------------------------------------
def _cat(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    tensors = node_arg(node, 0, "tensors")
    dim = node_arg(node, 1, "dim", 0)
    if not isinstance(tensors, (list, tuple)) or not isinstance(dim, int):
        ctx.unknown(node)
        return None
    stack = node.target in (torch.stack,)
    d_out = dim - len(known_shape(ctx, node)) if dim >= 0 else dim
    infos = [ctx.tensor_info(t) for t in tensors]
    tracked = [i for i in infos if i is not None]
    if not tracked:
        return None
    if not stack and all(i is None or i.dim == d_out for i in infos):
        parts = []
        for t, i in zip(tensors, infos):
            if i is not None:
                parts.append(i.layout)
            else:
                width = known_shape(ctx, t)[d_out]
                parts.append(ctx.opaque(width, "concatenated untracked tensor"))
        return TensorInfo(d_out, Layout.concat(parts))
    # Joined along another dim: the pieces share their channels one to one; a parameter
    # among them (a class token) follows them.
    first = tracked[0]
    infos = [i if i is not None or not _parameter_joins(ctx, t, first) else first
             for t, i in zip(tensors, infos)]
    if any(i is None or i.dim != first.dim for i in infos):
        ctx.pin(tracked, f"{describe(node)} joins tracked and untracked channels")
        return None
    for i in tracked[1:]:
        unify(first.layout, i.layout, f"channels tied by {describe(node)}")
    new_dim = first.dim
    if stack:
        # torch.stack inserts a dim at ``dim`` of the output; recompute from positives.
        in_nd = len(known_shape(ctx, tensors[0]))
        p = positive_dim(first.dim, in_nd)
        ins = positive_dim(dim, in_nd + 1)
        new_dim = (p + (1 if ins <= p else 0)) - (in_nd + 1)
    return TensorInfo(new_dim, first.layout)


def _parameter_joins(ctx: RuleContext, t, first: TensorInfo) -> bool:
    info = ctx.info(t)
    return isinstance(info, AttrInfo) and parameter_follows(ctx, info, first.dim, first.layout)


def _split(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    info = ctx.tensor_info(node.args[0])
    if info is None:
        return None
    name = node.target if isinstance(node.target, str) else node.target.__name__
    ndim = len(known_shape(ctx, node.args[0]))
    default = 0
    dim = node_arg(node, 2 if name in ("split", "chunk", "tensor_split") else 1, "dim", default)
    if name == "unbind":
        dim = node_arg(node, 1, "dim", 0)
    if not isinstance(dim, int):
        ctx.unknown(node)
        return None
    p = positive_dim(info.dim, ndim)
    d = positive_dim(dim, ndim)
    if d == p:
        info.layout.pin(f"{describe(node)} splits the channel dim")
        return None
    shapes = node.meta.get("tensor_meta")
    count = len(shapes) if isinstance(shapes, (list, tuple)) else 0
    new_dim = info.dim
    if name == "unbind" and d > p:
        new_dim = info.dim + 1
    return TupleInfo([TensorInfo(new_dim, info.layout) for _ in range(count)])


# ---- reductions -------------------------------------------------------------------------------
def _reduce(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    info = ctx.tensor_info(node.args[0] if node.args else node.kwargs.get("input"))
    if info is None:
        return None
    name = node.target if isinstance(node.target, str) else node.target.__name__
    dim = node_arg(node, 1, "dim")
    if name in ("max", "min") and isinstance(dim, fx.Node):
        return binary(ctx, node)
    if dim is None:
        info.layout.pin(f"{describe(node)} reduces over every dim, channels included")
        return None
    keepdim = bool(node_arg(node, 2, "keepdim", False))
    ndim = len(known_shape(ctx, node.args[0]))
    dims = [dim] if isinstance(dim, int) else list(dim)
    reduced = {positive_dim(int(d), ndim) for d in dims}
    p = positive_dim(info.dim, ndim)
    if p in reduced:
        info.layout.pin(f"{describe(node)} reduces over the channel dim")
        return None
    new_dim = info.dim if keepdim else info.dim + sum(1 for r in reduced if r > p)
    out = TensorInfo(new_dim, info.layout)
    if name in ("max", "min"):
        return TupleInfo([out, TensorInfo(new_dim, info.layout)])
    return out


def _softmax(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    info = ctx.tensor_info(node.args[0])
    if info is None:
        return None
    dim = node_arg(node, 1, "dim")
    ndim = len(known_shape(ctx, node.args[0]))
    if dim is None or positive_dim(int(dim), ndim) == positive_dim(info.dim, ndim):
        info.layout.pin(f"{describe(node)} normalises across channels")
    return info


def _softmax_module(ctx: RuleContext, node: fx.Node, module: nn.Softmax | nn.LogSoftmax) -> object:
    info = ctx.tensor_info(node.args[0])
    if info is None:
        return None
    ndim = len(known_shape(ctx, node.args[0]))
    if module.dim is None or positive_dim(module.dim, ndim) == positive_dim(info.dim, ndim):
        info.layout.pin(f"{describe(node)} normalises across channels")
    return info


# ---- gathers and scatters along other dims (message passing by hand) --------------------------
def _index_select(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    """``x.index_select(dim, index)``: rows picked along a non-channel dim keep the channels."""
    x = node.args[0] if node.args else node.kwargs.get("input")
    info = ctx.tensor_info(x)
    if info is None:
        return None
    dim = node_arg(node, 1, "dim")
    ndim = len(known_shape(ctx, x))
    if ctx.info(node_arg(node, 2, "index")) is not None:
        ctx.pin(ctx.info(node_arg(node, 2, "index")), f"{describe(node)} indexes with channels")
    if not isinstance(dim, int) or positive_dim(dim, ndim) == positive_dim(info.dim, ndim):
        info.layout.pin(f"{describe(node)} selects channels")
        return None
    return TensorInfo(info.dim, info.layout)


def _index_add(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    """``self.index_add(dim, index, source)`` along a non-channel dim: channels tied one to one."""
    target, dim = node.args[0], node_arg(node, 1, "dim")
    source = node_arg(node, 3, "source")
    infos = [ctx.tensor_info(target), ctx.tensor_info(source)]
    tracked = [i for i in infos if i is not None]
    if not tracked:
        return None
    ndim = len(known_shape(ctx, target))
    first = tracked[0]
    if (
        not isinstance(dim, int)
        or any(i is None or i.dim != first.dim for i in infos)
        or positive_dim(dim, ndim) == positive_dim(first.dim, ndim)
    ):
        ctx.pin(tracked, f"{describe(node)} adds along the channel dim or mixes tracked dims")
        return None
    target_info, source_info = infos
    assert target_info is not None and source_info is not None  # both tracked, checked above
    unify(target_info.layout, source_info.layout, f"channels tied by {describe(node)}")
    return TensorInfo(first.dim, first.layout)


def _rank(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    """``x.dim()``: the number of dims, which pruning never changes (no channel count read)."""
    return None


def _length(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    """``len(x.shape)`` is a rank (pruning never changes it); ``len(x)`` is dim 0's size."""
    info = ctx.info(node.args[0]) if node.args else None
    if isinstance(info, TensorInfo):
        shape = ctx.shape(node.args[0])
        if shape is not None and positive_dim(info.dim, len(shape)) == 0:
            return ShapeInfo(None, info.layout)
    return None


def _size_comparison(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    """``x.shape == (4, 12, 8, 8)``, ``x.size(1) != 12`` (the guards of known-value tracing,
    or the model's own checks): the literal channel count follows compaction, as the literal
    sizes of ``view`` do, so the check still holds on the compacted model."""
    if len(node.args) != 2 or node.kwargs:
        ctx.pin([ctx.info(a) for a in node.args], f"{describe(node)} compares channel counts")
        return None
    for side in (0, 1):
        info, literal = ctx.info(node.args[side]), node.args[1 - side]
        if not isinstance(info, ShapeInfo):
            continue
        if info.dim is None and isinstance(literal, int) and not isinstance(literal, bool):
            ctx.rewrite(node, (1 - side,), info.layout)
        elif info.dim is not None and isinstance(literal, (tuple, list)) and \
                info.dim < len(literal) and isinstance(literal[info.dim], int):
            ctx.rewrite(node, (1 - side, info.dim), info.layout)
        else:
            info.layout.pin(f"{describe(node)} compares a channel count with a computed value")
        return None
    ctx.pin([ctx.info(a) for a in node.args], f"{describe(node)} compares channel values")
    return None


# ---- registration -----------------------------------------------------------------------------
_f: Callable[..., Any]
REGISTRY.register("view", _view)
REGISTRY.register("reshape", _view)
REGISTRY.register(torch.reshape, _reshape_function)
for _name in ("flatten", "squeeze", "unsqueeze"):
    REGISTRY.register(_name, _shape_only)
for _f in (torch.flatten, torch.squeeze, torch.unsqueeze):
    REGISTRY.register(_f, _shape_only)
for _name in ("permute", "transpose", "t", "movedim", "swapaxes", "swapdims"):
    REGISTRY.register(_name, _permute)
for _f in (torch.permute, torch.transpose, torch.t, torch.movedim, torch.swapaxes):
    REGISTRY.register(_f, _permute)
REGISTRY.register("expand", _expand)
REGISTRY.register("expand_as", elementwise_pair)
REGISTRY.register("reshape_as", _reshape_as)
REGISTRY.register("view_as", _reshape_as)
REGISTRY.register(operator.getitem, _getitem)
REGISTRY.register(builtins.getattr, _getattr)
REGISTRY.register("size", _size)
REGISTRY.register(builtins.len, _length)
for _f in (operator.eq, operator.ne):
    REGISTRY.register(_f, _size_comparison)
for _name in ("dim", "ndimension"):
    REGISTRY.register(_name, _rank)
REGISTRY.register(torch.cat, _cat)
REGISTRY.register(torch.concat, _cat)
REGISTRY.register(torch.stack, _cat)
for _name in ("split", "chunk", "unbind", "tensor_split"):
    REGISTRY.register(_name, _split)
for _f in (torch.split, torch.chunk, torch.unbind):
    REGISTRY.register(_f, _split)
for _name in ("sum", "mean", "amax", "amin", "prod", "std", "var", "logsumexp", "nansum",
              "nanmean", "max", "min", "any", "all"):
    REGISTRY.register(_name, _reduce)
for _f in (torch.sum, torch.mean, torch.amax, torch.amin, torch.prod, torch.std, torch.var,
           torch.logsumexp, torch.nansum, torch.nanmean, torch.max, torch.min):
    REGISTRY.register(_f, _reduce)
for _f in (F.softmax, F.log_softmax, torch.softmax, torch.log_softmax):
    REGISTRY.register(_f, _softmax)
REGISTRY.register("softmax", _softmax)
REGISTRY.register("log_softmax", _softmax)
register_rule(nn.Softmax, _softmax_module)
register_rule(nn.LogSoftmax, _softmax_module)
REGISTRY.register("index_select", _index_select)
REGISTRY.register(torch.index_select, _index_select)
for _name in ("index_add", "index_add_"):
    REGISTRY.register(_name, _index_add)
REGISTRY.register(torch.index_add, _index_add)
