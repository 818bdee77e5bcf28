"""Channel rules for elementwise ops: activations, arithmetic, casts, ``where``, ``*_like``.

Each rule says exactly when channels pass through unchanged (broadcast operands tie their
channels one to one); anything it cannot prove pins the channels instead of guessing.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from .context import RuleContext, describe
from .infos import AttrInfo, ShapeInfo, TensorInfo
from .registry import REGISTRY, register_rule
from .spaces import unify


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
        if isinstance(info, AttrInfo) and parameter_follows(ctx, info, dim, layout):
            continue
        layout.pin(f"{describe(node)} combines the channels with an untracked tensor")
    return TensorInfo(dim, layout)


def parameter_follows(ctx: RuleContext, info: AttrInfo, dim: int, layout) -> bool:
    """Record that a parameter read here (added, multiplied, concatenated: a positional
    embedding, a class token, a layer scale) follows ``layout``'s channels on the value's
    ``dim``; False when its dims cannot be matched to the value's."""
    raw = ctx.attr(info.owner, info.name)
    pdim = info.raw_dim(raw.dim(), dim)
    if pdim is None or raw.shape[pdim] != layout.length:
        return False
    ctx.role(info.owner, info.name, pdim, layout)
    ctx.param_cost(info.owner, info.name, (layout,))
    return True


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


def elementwise_module(module: nn.Module) -> bool:
    """A module that maps each element alone: registered as unary, with no state to slice
    (what a layer may run after its channels without keeping them whole)."""
    entry = REGISTRY.for_module(module)
    return (entry is not None and entry.propagate is unary
            and next(module.parameters(), None) is None and next(module.buffers(), None) is None)


# ---- registration -----------------------------------------------------------------------------
UNARY_FUNCTIONS: list[Callable[..., Any]] = [
    torch.relu, torch.sigmoid, torch.tanh, torch.exp, torch.log, torch.log1p, torch.expm1,
    torch.sin, torch.cos, torch.abs, torch.neg, torch.sqrt, torch.rsqrt, torch.square,
    torch.erf, torch.sign, torch.reciprocal, torch.nan_to_num, torch.sinh, torch.cosh,
    torch.asinh, torch.atan, torch.special.expit,
    F.relu, F.relu6, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.leaky_relu, F.softplus,
    F.softsign, F.tanhshrink, F.hardtanh, F.hardswish, F.hardsigmoid, F.logsigmoid,
    F.sigmoid, F.tanh, F.dropout, F.alpha_dropout, F.feature_alpha_dropout,
    operator.neg, operator.pos, torch.clamp, torch.clip,
    # in-place variants (``F.elu_`` and friends are torch's C functions, distinct objects)
    F.relu_, F.elu_, F.selu_, F.celu_, F.leaky_relu_, F.hardtanh_, F.rrelu_,
    getattr(F, "threshold_"),  # noqa: B009 (not in torch's type stubs)
    torch.sigmoid_, torch.tanh_, torch.exp_, torch.clamp_,  # (torch.relu_ is F.relu_)
]
BINARY_FUNCTIONS: list[Callable[..., Any]] = [
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
_LIKE_FUNCTIONS: list[Callable[..., Any]] = [
    torch.zeros_like, torch.ones_like, torch.empty_like, torch.rand_like, torch.randn_like,
    torch.full_like,
]
for _f in _LIKE_FUNCTIONS:
    REGISTRY.register(_f, like)
for _name in UNARY_METHODS:
    REGISTRY.register(_name, unary)
for _name in BINARY_METHODS:
    REGISTRY.register(_name, binary)
for _name in SHAPE_KEEPING_METHODS:
    REGISTRY.register(_name, shape_passthrough)
for _m in UNARY_MODULES:
    register_rule(_m, unary)

#: timm's own activation modules (``timm.layers.create_act_layer`` builds them): elementwise,
#: registered when a model's package has been imported
TIMM_ACTIVATIONS = (
    *(("timm.layers.activations", _name) for _name in (
        "Swish", "Mish", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid", "HardMish", "GELU",
        "GELUTanh", "QuickGELU")),
    *(("timm.layers.activations_me", _name) for _name in (
        "SwishMe", "MishMe", "HardSigmoidMe", "HardSwishMe", "HardMishMe")),
)
for _module, _name in TIMM_ACTIVATIONS:
    REGISTRY.register_when_imported(_module, _name, unary)


# ---- stochastic depth -------------------------------------------------------------------------
def sample_wise(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    """Stochastic depth / drop-connect: each *sample* is kept (scaled) or zeroed in training,
    identity in eval. Channel-independent, so the input's channels pass through; kept as one
    node so its ``training`` argument stays a run-time value instead of a traced branch."""
    info = ctx.tensor_info(node.args[0]) if node.args else None
    for a in (*node.args[1:], *node.kwargs.values()):
        if isinstance(ctx.info(a), (TensorInfo, ShapeInfo)):
            ctx.unknown(node)
            return None
    return TensorInfo(info.dim, info.layout) if info is not None else None


#: (module, function) of third-party stochastic-depth functions that branch on their
#: ``training`` argument; registered when a model's package has been imported
STOCHASTIC_DEPTH = (
    ("monai.networks.nets.efficientnet", "drop_connect"),
    ("torchvision.ops.stochastic_depth", "stochastic_depth"),
    ("timm.layers.drop", "drop_path"),
    ("timm.models.layers.drop", "drop_path"),
)
for _module, _name in STOCHASTIC_DEPTH:
    REGISTRY.register_when_imported(_module, _name, sample_wise, leaf=True)
