"""Channel rules for the ops of fully-connected models: Linear, elementwise ops, reshapes.

Each rule is small and says exactly when channels pass through unchanged; anything it cannot
prove pins the channels (kept whole) instead of guessing.
"""

from __future__ import annotations

import builtins
import math
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from .analysis import RuleContext, describe
from .infos import AttrInfo, ShapeInfo, TensorInfo, TupleInfo
from .registry import REGISTRY, register_rule
from .spaces import Layout, unify


def _arg(node: fx.Node, index: int, name: str, default=None):
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _positive(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


# ---- elementwise ------------------------------------------------------------------------------
def elementwise(ctx: RuleContext, node: fx.Node, operands: list) -> object:
    """Channel-wise op over broadcast operands: their channels are tied one to one."""
    tensor_infos = [ctx.info(a) for a in operands if isinstance(ctx.info(a), TensorInfo)]
    if not tensor_infos:
        infos = [ctx.info(a) for a in operands]
        ctx.pin(infos, f"{describe(node)} uses a channel count as a number")
        attrs = [i for i in infos if isinstance(i, AttrInfo)]
        others = [a for a, i in zip(operands, infos) if isinstance(a, fx.Node) and i is None]
        if len(attrs) == 1 and not others:
            return attrs[0]  # an elementwise function of one parameter (e.g. exp(log_scale))
        for info in attrs:
            ctx.fix_attr(info)
        return None
    first = tensor_infos[0]
    dim, layout = first.dim, first.layout
    if any(t.dim != dim for t in tensor_infos):
        ctx.pin(tensor_infos, f"{describe(node)} combines tensors tracked on different dims")
        return None
    reason = f"channels tied by {describe(node)}"
    for a in operands:
        if not isinstance(a, fx.Node):
            continue
        info = ctx.info(a)
        shape = ctx.shape(a)
        if shape is None:
            ctx.pin(info, f"{describe(node)} uses a channel count as a number")
            continue
        size = shape[dim] if len(shape) >= -dim else 1
        if isinstance(info, TensorInfo):
            if info is not first and info.layout.length == layout.length:
                unify(layout, info.layout, reason)
            elif info.layout.length != layout.length:  # broadcast of a single channel
                info.layout.pin(f"single channel broadcast by {describe(node)}")
            continue
        if size == 1:
            continue  # broadcast along the channel dim: channel-independent
        if isinstance(info, AttrInfo) and info.elementwise_of_raw:
            pdim = len(shape) + dim
            raw = ctx.attr(info.owner, info.name)
            if tuple(raw.shape) == shape:
                ctx.role(info.owner, info.name, pdim, layout)
                ctx.param_cost(info.owner, info.name, (layout,))
                continue
        layout.pin(f"{describe(node)} combines the channels with an untracked tensor")
    return TensorInfo(dim, layout)


def unary(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    operands = [a for a in node.args if isinstance(a, fx.Node)]
    operands += [v for v in node.kwargs.values() if isinstance(v, fx.Node)]
    if len(operands) == 1:
        info = ctx.info(operands[0])
        if isinstance(info, (TensorInfo, AttrInfo)):
            return info
    return elementwise(ctx, node, operands)


def binary(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    operands = list(node.args[:2]) + [node.kwargs[k] for k in ("other",) if k in node.kwargs]
    for key in ("alpha", "rounding_mode"):
        if isinstance(node.kwargs.get(key), fx.Node):
            ctx.unknown(node)
            return None
    return elementwise(ctx, node, operands)


def elementwise_pair(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    """``a.expand_as(b)``, ``a.masked_fill(mask, v)``: the first two operands broadcast together."""
    return elementwise(ctx, node, list(node.args[:2]))


def where(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    return elementwise(ctx, node, list(node.args[:3]))


def like(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    """zeros_like/ones_like/...: same shape as the input, no values read."""
    info = ctx.tensor_info(node.args[0])
    return TensorInfo(info.dim, info.layout) if info else None


def shape_passthrough(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    """Ops that keep shape and read no other tensor: .to(dtype), .contiguous(), .clone()."""
    info = ctx.info(node.args[0])
    for a in list(node.args[1:]) + list(node.kwargs.values()):
        if isinstance(ctx.info(a), (TensorInfo, ShapeInfo)) and not isinstance(a, torch.dtype):
            ctx.pin(ctx.info(a), f"{describe(node)} reads a tracked tensor as an argument")
    return info if isinstance(info, (TensorInfo, AttrInfo)) else None


# ---- Linear -----------------------------------------------------------------------------------
def linear_like(
    ctx: RuleContext,
    node: fx.Node,
    x_arg,
    arg_key: int | str,
    owner: str,
    weight: str,
    bias: str | None,
) -> TensorInfo:
    """y = x W^T + b along the last dim: reads the input's channels, makes a new neuron space.

    Gates are applied to the input (consumer side) and folded into W's columns, so a closed
    channel is simply not read; its producer's rows can then be cut whatever lies in between.
    """
    w = ctx.attr(owner, weight)
    out_features = w.shape[0]
    in_features = w.shape[1]
    label = owner or node.name
    info = ctx.tensor_info(x_arg)
    if info is not None and info.dim != -1:
        ctx.pin(info, f"{describe(node)} reads the last dim, not the tracked one")
        info = None
    if info is not None:
        in_layout = info.layout
        ctx.site(node, arg_key, -1, in_layout)
    else:
        in_layout = ctx.opaque(in_features, "input is not tracked", f"{label}.in")
    out_layout = Layout.of(ctx.new_space(out_features, "neuron", label))
    ctx.role(owner, weight, 1, in_layout, fold=True)
    ctx.role(owner, weight, 0, out_layout)
    ctx.param_cost(owner, weight, (out_layout, in_layout))
    if bias is not None:
        ctx.role(owner, bias, 0, out_layout)
        ctx.param_cost(owner, bias, (out_layout,))
    x_shape = ctx.shape(x_arg)
    rows = math.prod(x_shape[:-1]) if x_shape else 0
    ctx.cost("flops", 2 * rows, (in_layout, out_layout), label)
    return TensorInfo(-1, out_layout)


def _linear_module(ctx: RuleContext, node: fx.Node, module: nn.Linear) -> TensorInfo:
    bias = "bias" if module.bias is not None else None
    return linear_like(ctx, node, node.args[0], 0, node.target, "weight", bias)


def _resize_linear(module: nn.Linear) -> None:
    module.out_features, module.in_features = module.weight.shape


def _linear_function(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    x = _arg(node, 0, "input")
    w = _arg(node, 1, "weight")
    b = _arg(node, 2, "bias")
    w_info = ctx.info(w)
    b_info = ctx.info(b) if b is not None else None
    plain_w = isinstance(w_info, AttrInfo) and w.op == "get_attr"
    plain_b = b is None or (isinstance(b_info, AttrInfo) and b.op == "get_attr")
    if not (plain_w and plain_b) or (b_info and b_info.owner != w_info.owner):
        ctx.unknown(node)
        for info in (w_info, b_info):
            if isinstance(info, AttrInfo):
                ctx.fix_attr(info)
        return None
    key = 0 if len(node.args) > 0 else "input"
    return linear_like(
        ctx, node, x, key, w_info.owner, w_info.name, b_info.name if b_info else None
    )


register_rule(nn.Linear, _linear_module, resize=_resize_linear, input_dim=-1)
REGISTRY.register(F.linear, _linear_function)


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
    in_shape, out_shape = ctx.shape(x_arg), ctx.shape(node)
    p = _positive(info.dim, len(in_shape))
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
    shape = _arg(node, 1, "shape")
    if not isinstance(shape, (tuple, list)) or len(node.args) < 2:
        ctx.unknown(node)
        return None
    return _reshaped(ctx, node, node.args[0], list(shape), lambda i: (1, i))


def _shape_only(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    """flatten/squeeze/unsqueeze: no literal sizes to rewrite, mapping follows from shapes."""
    x = node.args[0] if node.args else node.kwargs.get("input")
    return _reshaped(ctx, node, x, [])


def _flatten_module(ctx: RuleContext, node: fx.Node, module: nn.Module) -> object:
    return _reshaped(ctx, node, node.args[0], [])


register_rule(nn.Flatten, _flatten_module)


def _permute(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    info = ctx.tensor_info(node.args[0])
    if info is None:
        return None
    ndim = len(ctx.shape(node.args[0]))
    p = _positive(info.dim, ndim)
    name = node.target if isinstance(node.target, str) else node.target.__name__
    if name in ("t", "T") or name == "mT":
        dims = list(range(ndim))
        if ndim >= 2:
            dims[-1], dims[-2] = dims[-2], dims[-1]
    elif name in ("transpose", "swapaxes", "swapdims"):
        a, b = (_positive(int(d), ndim) for d in node.args[1:3])
        dims = list(range(ndim))
        dims[a], dims[b] = dims[b], dims[a]
    elif name == "movedim":
        src, dst = _positive(int(node.args[1]), ndim), _positive(int(node.args[2]), ndim)
        dims = [d for d in range(ndim) if d != src]
        dims.insert(dst, src)
    else:  # permute
        rest = node.args[1:]
        nested = len(rest) == 1 and isinstance(rest[0], (tuple, list))
        dims = list(rest[0]) if nested else list(rest)
        dims = [_positive(int(d), ndim) for d in dims]
    return TensorInfo(dims.index(p) - ndim, info.layout)


def _expand(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    info = ctx.tensor_info(node.args[0])
    if info is None:
        return None
    rest = list(node.args[1:])
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


# ---- indexing ---------------------------------------------------------------------------------
def _getitem(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    src, index = node.args[0], node.args[1]
    info = ctx.info(src)
    if isinstance(info, TupleInfo):
        return info.items[index] if isinstance(index, int) else None
    if isinstance(info, ShapeInfo) and info.dim is not None:
        if isinstance(index, int):
            n = len(ctx.shape(src.args[0])) if isinstance(src, fx.Node) and src.args else None
            if n is not None and _positive(index, n) == info.dim:
                return ShapeInfo(None, info.layout)
            return None
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
    in_shape = ctx.shape(node.args[0])
    ndim = len(in_shape)
    p = _positive(info.dim, ndim)
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
                out_shape = ctx.shape(node)
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
    ndim = len(ctx.shape(node.args[0]))
    p = _positive(info.dim, ndim)
    dim = _arg(node, 1, "dim")
    if dim is None:
        return ShapeInfo(p, info.layout)
    return ShapeInfo(None, info.layout) if _positive(int(dim), ndim) == p else None


def _getattr(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    src, name = node.args[0], node.args[1]
    info = ctx.info(src)
    if name == "shape" and isinstance(info, TensorInfo):
        return ShapeInfo(_positive(info.dim, len(ctx.shape(src))), info.layout)
    if name in ("T", "mT") and isinstance(info, TensorInfo):
        return _transpose_attr(ctx, node)
    if name in ("dtype", "device", "ndim", "is_cuda", "requires_grad"):
        return None
    if isinstance(info, (TensorInfo, ShapeInfo)):
        ctx.pin(info, f"attribute .{name} of a tracked tensor")
    return None


def _transpose_attr(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    info = ctx.tensor_info(node.args[0])
    ndim = len(ctx.shape(node.args[0]))
    p = _positive(info.dim, ndim)
    if ndim < 2:
        return info
    dims = list(range(ndim))
    dims[-1], dims[-2] = dims[-2], dims[-1]
    return TensorInfo(dims.index(p) - ndim, info.layout)


# ---- joins and splits -------------------------------------------------------------------------
def _cat(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    tensors = _arg(node, 0, "tensors")
    dim = _arg(node, 1, "dim", 0)
    if not isinstance(tensors, (list, tuple)) or not isinstance(dim, int):
        ctx.unknown(node)
        return None
    out_shape = ctx.shape(node)
    stack = node.target in (torch.stack,)
    d_out = dim - len(out_shape) if dim >= 0 else dim
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
                parts.append(ctx.opaque(ctx.shape(t)[d_out], "concatenated untracked tensor"))
        return TensorInfo(d_out, Layout.concat(parts))
    # Joined along another dim: the pieces share their channels one to one.
    first = tracked[0]
    if any(i is None or i.dim != first.dim for i in infos):
        ctx.pin(tracked, f"{describe(node)} joins tracked and untracked channels")
        return None
    for i in tracked[1:]:
        unify(first.layout, i.layout, f"channels tied by {describe(node)}")
    new_dim = first.dim
    if stack:
        # torch.stack inserts a dim at ``dim`` of the output; recompute from positives.
        in_nd = len(ctx.shape(tensors[0]))
        p = _positive(first.dim, in_nd)
        ins = _positive(dim, in_nd + 1)
        new_dim = (p + (1 if ins <= p else 0)) - (in_nd + 1)
    return TensorInfo(new_dim, first.layout)


def _split(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    info = ctx.tensor_info(node.args[0])
    if info is None:
        return None
    name = node.target if isinstance(node.target, str) else node.target.__name__
    ndim = len(ctx.shape(node.args[0]))
    default = 0
    dim = _arg(node, 2 if name in ("split", "chunk", "tensor_split") else 1, "dim", default)
    if name == "unbind":
        dim = _arg(node, 1, "dim", 0)
    if not isinstance(dim, int):
        ctx.unknown(node)
        return None
    p = _positive(info.dim, ndim)
    d = _positive(dim, ndim)
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
    dim = _arg(node, 1, "dim")
    if name in ("max", "min") and isinstance(dim, fx.Node):
        return binary(ctx, node)
    if dim is None:
        info.layout.pin(f"{describe(node)} reduces over every dim, channels included")
        return None
    keepdim = bool(_arg(node, 2, "keepdim", False))
    ndim = len(ctx.shape(node.args[0]))
    dims = [dim] if isinstance(dim, int) else list(dim)
    reduced = {_positive(int(d), ndim) for d in dims}
    p = _positive(info.dim, ndim)
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
    dim = _arg(node, 1, "dim")
    ndim = len(ctx.shape(node.args[0]))
    if dim is None or _positive(int(dim), ndim) == _positive(info.dim, ndim):
        info.layout.pin(f"{describe(node)} normalises across channels")
    return info


def _softmax_module(ctx: RuleContext, node: fx.Node, module: nn.Module) -> object:
    info = ctx.tensor_info(node.args[0])
    if info is None:
        return None
    ndim = len(ctx.shape(node.args[0]))
    if module.dim is None or _positive(module.dim, ndim) == _positive(info.dim, ndim):
        info.layout.pin(f"{describe(node)} normalises across channels")
    return info


# ---- gathers and scatters along other dims (message passing by hand) --------------------------
def _index_select(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    """``x.index_select(dim, index)``: rows picked along a non-channel dim keep the channels."""
    x = node.args[0] if node.args else node.kwargs.get("input")
    info = ctx.tensor_info(x)
    if info is None:
        return None
    dim = _arg(node, 1, "dim")
    ndim = len(ctx.shape(x))
    if ctx.info(_arg(node, 2, "index")) is not None:
        ctx.pin(ctx.info(_arg(node, 2, "index")), f"{describe(node)} indexes with channels")
    if not isinstance(dim, int) or _positive(dim, ndim) == _positive(info.dim, ndim):
        info.layout.pin(f"{describe(node)} selects channels")
        return None
    return TensorInfo(info.dim, info.layout)


def _index_add(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    """``self.index_add(dim, index, source)`` along a non-channel dim: channels tied one to one."""
    target, dim = node.args[0], _arg(node, 1, "dim")
    source = _arg(node, 3, "source")
    infos = [ctx.tensor_info(target), ctx.tensor_info(source)]
    tracked = [i for i in infos if i is not None]
    if not tracked:
        return None
    ndim = len(ctx.shape(target))
    first = tracked[0]
    if (
        not isinstance(dim, int)
        or any(i is None or i.dim != first.dim for i in infos)
        or _positive(dim, ndim) == _positive(first.dim, ndim)
    ):
        ctx.pin(tracked, f"{describe(node)} adds along the channel dim or mixes tracked dims")
        return None
    unify(infos[0].layout, infos[1].layout, f"channels tied by {describe(node)}")
    return TensorInfo(first.dim, first.layout)


# ---- registration -----------------------------------------------------------------------------
UNARY_FUNCTIONS = [
    torch.relu, torch.sigmoid, torch.tanh, torch.exp, torch.log, torch.log1p, torch.expm1,
    torch.sin, torch.cos, torch.abs, torch.neg, torch.sqrt, torch.rsqrt, torch.square,
    torch.erf, torch.sign, torch.reciprocal, torch.nan_to_num, torch.sinh, torch.cosh,
    torch.asinh, torch.atan, torch.special.expit,
    F.relu, F.relu6, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.leaky_relu, F.softplus,
    F.softsign, F.tanhshrink, F.hardtanh, F.hardswish, F.hardsigmoid, F.logsigmoid,
    F.sigmoid, F.tanh, F.dropout, F.alpha_dropout, F.feature_alpha_dropout,
    operator.neg, operator.pos, torch.clamp, torch.clip,
]
BINARY_FUNCTIONS = [
    operator.add, operator.sub, operator.mul, operator.truediv, operator.pow,
    operator.floordiv, operator.iadd, operator.isub, operator.imul, operator.itruediv,
    torch.add, torch.sub, torch.subtract, torch.mul, torch.multiply, torch.div, torch.divide,
    torch.true_divide, torch.pow, torch.maximum, torch.minimum, torch.fmax, torch.fmin,
    torch.atan2, torch.hypot,
]
UNARY_METHODS = [
    "relu", "sigmoid", "tanh", "exp", "log", "log1p", "expm1", "sin", "cos", "abs", "neg",
    "sqrt", "rsqrt", "square", "erf", "sign", "reciprocal", "clamp", "clip", "clamp_min",
    "clamp_max", "relu_", "sigmoid_", "tanh_", "exp_", "abs_", "neg_", "clamp_", "nan_to_num",
]
BINARY_METHODS = [
    "add", "sub", "mul", "div", "pow", "maximum", "minimum", "add_", "sub_", "mul_", "div_",
    "__add__", "__sub__", "__mul__", "__truediv__", "__radd__", "__rmul__",
]
SHAPE_KEEPING_METHODS = [
    "contiguous", "clone", "detach", "float", "double", "half", "bfloat16", "to", "type_as",
    "requires_grad_",
]
UNARY_MODULES = [
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid, nn.ELU,
    nn.SELU, nn.CELU, nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.Hardtanh, nn.Hardswish,
    nn.Hardsigmoid, nn.LogSigmoid, nn.Dropout, nn.AlphaDropout, nn.FeatureAlphaDropout,
    nn.Identity,
]

for _f in UNARY_FUNCTIONS:
    REGISTRY.register(_f, unary)
for _f in BINARY_FUNCTIONS:
    REGISTRY.register(_f, binary)
REGISTRY.register(torch.where, where)
for _f in (torch.zeros_like, torch.ones_like, torch.empty_like, torch.rand_like,
           torch.randn_like, torch.full_like):
    REGISTRY.register(_f, like)
for _name in UNARY_METHODS:
    REGISTRY.register(_name, unary)
for _name in BINARY_METHODS:
    REGISTRY.register(_name, binary)
for _name in SHAPE_KEEPING_METHODS:
    REGISTRY.register(_name, shape_passthrough)
for _m in UNARY_MODULES:
    register_rule(_m, unary)

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
REGISTRY.register(operator.getitem, _getitem)
REGISTRY.register(builtins.getattr, _getattr)
REGISTRY.register("size", _size)
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
