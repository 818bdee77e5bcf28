"""Conformance: one tiny model per registered op, each compacted exactly.

Every row is a small model whose forward applies one registered op (or layer) to gated
channels — ``Linear -> op -> Linear``, ``Conv -> op -> Conv`` for spatial ops, a graph layer
between two Linears — checked with :func:`lumos.testing.assert_compacts_exactly` (random
closed / fractional / open gate states: compacted == gated eval output, repeatable outputs,
parameter and FLOP counts equal to the cost model's). Each row also asserts that the traced
graph really reached its op (``sm.graph_info.rules_used``), and the coverage test at the end
checks that the rows together reach every entry of ``lumos.rules.REGISTRY`` and every layer
with a substitute forward, as registered when the test runs.

Rows are generated per family (one template per family, parametrised by the op). A few
registered ops never appear in a graph that ``torch.fx`` traces from ordinary code (fx records
``x += y`` as ``operator.add``, ``F.sigmoid(x)`` as ``.sigmoid()``, ``F.upsample`` as
``F.interpolate``, ``x.__add__(y)`` as ``operator.add``); their rows put the node in the graph
directly with :func:`_node`, the way another graph producer would.
"""

from __future__ import annotations

import builtins
import importlib.util
import operator
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import lumos
from lumos.layers import SpectralConv1d, SpectralConv2d
from lumos.rules import REGISTRY
from lumos.testing import assert_compacts_exactly

HAS_PYG = importlib.util.find_spec("torch_geometric") is not None
if HAS_PYG:  # module globals: fx keeps the registered leaf functions as single nodes
    import torch_geometric.nn as pyg_nn
    from torch_geometric.nn import (
        ChebConv,
        EdgeConv,
        GATConv,
        GATv2Conv,
        GCNConv,
        GINConv,
        GINEConv,
        GraphConv,
        LEConv,
        PNAConv,
        ResGatedGraphConv,
        SAGEConv,
        SGConv,
        TAGConv,
        global_add_pool,
        global_max_pool,
        global_mean_pool,
    )
    from torch_geometric.nn import aggr as pyg_aggr
    from torch_geometric.nn.dense.linear import Linear as GeometricLinear
    from torch_geometric.nn.models.schnet import CFConv
    from torch_geometric.nn.norm import GraphNorm
    from torch_geometric.nn.norm import InstanceNorm as GraphInstanceNorm
    from torch_geometric.nn.norm import LayerNorm as GraphLayerNorm
    from torch_geometric.utils import scatter

pytestmark = [
    pytest.mark.filterwarnings("ignore::lumos.LumosWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

D, H, O = 4, 6, 3  # input features, gated width, output width
BATCHES = (1, 3)  # other batch sizes every row is also compared at (when it has a batch dim)


# ---- the rows ---------------------------------------------------------------------------------
@dataclass
class Row:
    """One conformance case: ``build()`` returns ``(model, example_inputs)``."""

    id: str
    build: Callable[[], tuple]
    targets: tuple  # registry keys (class, function or method name) the trace must reach
    traces: tuple = ()  # layers the row must trace through their substitute forward
    pyg: bool = False
    xfail: str | None = None
    batch_sizes: tuple | None = BATCHES
    atol: float = 1e-5
    rtol: float = 1e-4
    #: compare the compacted model's parameter and FLOP counts with the cost model's (off
    #: where a layer's FLOPs are a measured constant: a factorized spectral conv's
    #: contraction order is opt-einsum's, so the cost model's FLOPs are an upper bound there)
    counts: bool = True


ROWS: list[Row] = []

#: torch-geometric (2.7+) replaces torch.index_select by a Python wrapper
#: (torch_geometric/hash_tensor.py); a trace records the original builtin it calls
_PYG_INDEX_SELECT = getattr(torch.index_select, "__module__", "") == "torch_geometric.hash_tensor"
_TRACED_INDEX_SELECT = (torch.index_select.__globals__["_old_index_select"] if _PYG_INDEX_SELECT
                        else torch.index_select)
#: whichever LUMOS registered: the wrapper when torch_geometric was imported before lumos
INDEX_SELECTS = tuple(f for f in dict.fromkeys([_TRACED_INDEX_SELECT, torch.index_select])
                      if REGISTRY.entry("function", f) is not None) or (torch.index_select,)
INDEX_SELECT_XFAIL = (
    "torch_geometric was imported before lumos: LUMOS registered torch-geometric's wrapper of "
    "torch.index_select, but the traced graph calls the original builtin, which has no rule "
    "(its channels are kept whole)"
    if _PYG_INDEX_SELECT and _TRACED_INDEX_SELECT not in INDEX_SELECTS else None
)


def add(id_: str, build: Callable[[], tuple], *targets, **options) -> None:
    assert id_ not in {r.id for r in ROWS}, f"duplicate row id {id_}"
    ROWS.append(Row(id_, build, tuple(targets), **options))


def _kind(target) -> str:
    if isinstance(target, str):
        return "method"
    if isinstance(target, type) and issubclass(target, nn.Module):
        return "module"
    return "function"


def _node(op, *args, **kwargs):
    """Call ``op`` (a function, or a method name on ``args[0]``) as exactly that graph node.

    Eagerly it is a plain call; while tracing it records a ``call_function``/``call_method``
    node with ``op`` as its target, for registered ops fx would otherwise record as another op.
    """
    proxy = next((a for a in args if isinstance(a, fx.Proxy)), None)
    if proxy is not None:
        kind = "call_method" if isinstance(op, str) else "call_function"
        return proxy.tracer.create_proxy(kind, op, args, kwargs)
    if isinstance(op, str):
        return getattr(args[0], op)(*args[1:], **kwargs)
    return op(*args, **kwargs)


_NAMESPACES = [("torch", torch), ("F", F), ("torch.special", torch.special),
               ("operator", operator), ("builtins", builtins)]
if HAS_PYG:
    _NAMESPACES += [("pyg", pyg_nn),
                    ("pyg.utils", importlib.import_module("torch_geometric.utils"))]


def label(target) -> str:
    """A readable, unique name for a registry key: ``F.max_pool2d``, ``.view()``, ``nn.ReLU``."""
    if isinstance(target, str):
        return f".{target}()"
    if isinstance(target, type):
        prefix = "nn." if target.__module__.startswith("torch.nn") else ""
        return prefix + target.__name__
    for prefix, namespace in _NAMESPACES:
        for name in dir(namespace):
            public = not name.startswith("_") or prefix == "operator"
            if public and getattr(namespace, name, None) is target:
                return f"{prefix}.{name}"
    return getattr(target, "__qualname__", repr(target))


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


class Chain(nn.Module):
    """``last(fn(self, first(x)))``, or ``last(fn(self, first(x), branch(x)))`` with a branch.

    ``extra`` modules, parameters and buffers become attributes that ``fn`` may use.
    """

    def __init__(self, first: nn.Module, fn: Callable, last: nn.Module,
                 branch: nn.Module | None = None, **extra) -> None:
        super().__init__()
        self.first, self.last, self.branch = first, last, branch
        self.fn = fn
        for name, value in extra.items():
            if isinstance(value, nn.Module):
                setattr(self, name, value)
            elif isinstance(value, nn.Parameter):
                self.register_parameter(name, value)
            else:
                self.register_buffer(name, value)

    def forward(self, x):
        h = self.first(x)
        if self.branch is None:
            return self.last(self.fn(self, h))
        return self.last(self.fn(self, h, self.branch(x)))


def mlp(fn: Callable, *, lead=(5,), out_width: int = H, last: nn.Module | None = None,
        branch: bool = False, **extra):
    """``Linear(D, H) -> fn -> Linear(out_width, O)`` on inputs of shape ``(*lead, D)``."""
    model = Chain(nn.Linear(D, H), fn, last or nn.Linear(out_width, O),
                  nn.Linear(D, H) if branch else None, **extra)
    return model, _randn(*lead, D)


CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
CONV_T = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
SIZE = {1: 8, 2: 6, 3: 4}  # spatial size per dim count
C = 4  # gated channels of the conv template


def conv(fn: Callable, *, nd: int = 2, out_width: int = C, last: nn.Module | None = None,
         size: int | None = None, **extra):
    """``Conv(3, C, 3, padding=1) -> fn -> Conv(out_width, 2, 1)`` on ``(2, 3, *spatial)``."""
    size = size or SIZE[nd]
    model = Chain(CONVS[nd](3, C, 3, padding=1), fn, last or CONVS[nd](out_width, 2, 1),
                  **extra)
    return model, _randn(2, 3, *[size] * nd)


def _apply(s, h):
    return s.m(h)


def with_module(template: Callable, module_factory: Callable, **kw):
    return lambda: template(_apply, m=module_factory(), **kw)


def randomized(module: nn.Module) -> nn.Module:
    """Random affine parameters and running statistics (a fresh norm is the identity)."""
    with torch.no_grad():
        for name in ("weight", "bias"):
            t = getattr(module, name, None)
            if isinstance(t, torch.Tensor):
                t.copy_(torch.randn_like(t) * 0.5 + (1.0 if name == "weight" else 0.0))
        if getattr(module, "running_mean", None) is not None:
            module.running_mean.copy_(torch.randn_like(module.running_mean))
            module.running_var.copy_(torch.rand_like(module.running_var) + 0.5)
    return module


def positive(h):
    return h.abs() + 0.5


# ---- elementwise: unary functions, methods and modules ------------------------------------------
# The families as a spec of their own (not imported from the rule modules): an op added to a
# rule module without a row here shows up in the coverage test.
UNARY_FUNCTIONS = [
    torch.relu, torch.sigmoid, torch.tanh, torch.exp, torch.log, torch.log1p, torch.expm1,
    torch.sin, torch.cos, torch.abs, torch.neg, torch.sqrt, torch.rsqrt, torch.square,
    torch.erf, torch.sign, torch.reciprocal, torch.nan_to_num, torch.sinh, torch.cosh,
    torch.asinh, torch.atan, torch.special.expit,
    F.relu, F.relu6, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.leaky_relu, F.softplus,
    F.softsign, F.tanhshrink, F.hardtanh, F.hardswish, F.hardsigmoid, F.logsigmoid,
    F.sigmoid, F.tanh, F.dropout, F.alpha_dropout, F.feature_alpha_dropout,
    operator.neg, operator.pos, torch.clamp, torch.clip,
    F.relu_, F.elu_, F.selu_, F.celu_, F.leaky_relu_, F.hardtanh_, F.rrelu_,
    getattr(F, "threshold_"), torch.sigmoid_, torch.tanh_, torch.exp_, torch.clamp_,  # noqa: B009
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
UNARY_FUNCTION_ARGS = {
    torch.clamp: (-0.5, 0.5), torch.clip: (-0.5, 0.5), F.leaky_relu: (0.1,),
    F.hardtanh: (-0.5, 0.5), F.elu: (0.7,), F.celu: (0.7,), F.leaky_relu_: (0.1,),
    F.hardtanh_: (-0.5, 0.5), F.elu_: (0.7,), F.celu_: (0.7,), torch.clamp_: (-0.5, 0.5),
    getattr(F, "threshold_"): (0.1, 0.0),  # noqa: B009
}
UNARY_FUNCTION_KWARGS = {
    F.dropout: {"p": 0.3, "training": False}, F.alpha_dropout: {"p": 0.3, "training": False},
    F.feature_alpha_dropout: {"p": 0.3, "training": False},
}
POSITIVE_DOMAIN = {torch.log, torch.sqrt, torch.rsqrt, torch.reciprocal, torch.log1p,
                   "log", "sqrt", "rsqrt", "reciprocal", "log1p"}
#: registered functions fx records as another op when traced from ordinary code
FORCED = {F.sigmoid, F.tanh, F.upsample, operator.iadd, operator.isub, operator.imul,
          operator.itruediv, "__add__", "__sub__", "__mul__", "__truediv__", "__radd__",
          "__rmul__"}


def _unary_function_row(op):
    args = UNARY_FUNCTION_ARGS.get(op, ())
    kwargs = UNARY_FUNCTION_KWARGS.get(op, {})
    call = (lambda *a, **k: _node(op, *a, **k)) if op in FORCED else op
    if op is operator.neg:
        def fn(s, h):
            return -h
    elif op is operator.pos:
        def fn(s, h):
            return +h
    elif op in POSITIVE_DOMAIN:
        def fn(s, h):
            return call(positive(h), *args, **kwargs)
    else:
        def fn(s, h):
            return call(h, *args, **kwargs)
    return lambda: mlp(fn)


for _op in UNARY_FUNCTIONS:
    add(f"unary-{label(_op)}", _unary_function_row(_op), _op)

UNARY_METHOD_ARGS = {"clamp": (-0.5, 0.5), "clip": (-0.5, 0.5), "clamp_": (-0.5, 0.5),
                     "clamp_min": (0.1,), "clamp_max": (0.1,)}


def _unary_method_row(name):
    args = UNARY_METHOD_ARGS.get(name, ())

    def fn(s, h):
        x = positive(h) if name in POSITIVE_DOMAIN else h
        return getattr(x, name)(*args)

    return lambda: mlp(fn)


for _name in UNARY_METHODS:
    add(f"unary-{label(_name)}", _unary_method_row(_name), _name)

UNARY_MODULE_ARGS = {nn.LeakyReLU: (0.1,), nn.Hardtanh: (-0.5, 0.5), nn.Dropout: (0.3,),
                     nn.AlphaDropout: (0.3,), nn.FeatureAlphaDropout: (0.3,), nn.ELU: (0.7,)}
for _cls in UNARY_MODULES:
    add(f"unary-{label(_cls)}",
        with_module(mlp, lambda c=_cls: c(*UNARY_MODULE_ARGS.get(c, ()))), _cls)


# ---- elementwise: binary functions and methods (two branches tied channel by channel) -----------
POWERS = {operator.pow, torch.pow, "pow"}
QUOTIENTS = {operator.truediv, operator.floordiv, operator.itruediv, torch.div, torch.divide,
             torch.true_divide, "div", "div_", "__truediv__"}


def _binary_row(op):
    def call(a, b):
        if op in FORCED:
            return _node(op, a, b)
        if isinstance(op, str):
            return getattr(a, op)(b)
        return op(a, b)

    def fn(s, h, g):
        if op in POWERS:
            return call(positive(h), g)
        if op in QUOTIENTS:
            return call(h, positive(g))
        return call(h, g)

    return lambda: mlp(fn, branch=True)


for _op in [*BINARY_FUNCTIONS, *BINARY_METHODS]:
    add(f"binary-{label(_op)}", _binary_row(_op), _op)


def _scalar_operand(s, h):
    return 2.0 * h - 1.0


add("binary-scalar-operands", lambda: mlp(_scalar_operand), operator.mul, operator.sub)


def _where(s, h, g):
    return torch.where(s.mask, h, g)


add("where", lambda: mlp(_where, branch=True, mask=torch.tensor([1, 0, 1, 1, 0, 0]).bool()),
    torch.where)


def _masked_fill(s, h):
    return h.masked_fill(s.mask, -1.0)


add("masked_fill", lambda: mlp(_masked_fill, mask=torch.tensor([1, 0, 1, 1, 0, 0]).bool()),
    "masked_fill")


def _masked_fill_other_dim(s, h):  # (2, 4, H) filled along dim 1 with a (4, 1) mask
    return h.masked_fill(s.mask, 0.5)


add("masked_fill-broadcast", lambda: mlp(_masked_fill_other_dim, lead=(2, 4),
                                         mask=torch.tensor([[1], [0], [0], [1]]).bool()),
    "masked_fill")

LIKES = {
    torch.zeros_like: lambda h: h + torch.zeros_like(h),
    torch.ones_like: lambda h: h * torch.ones_like(h),
    torch.full_like: lambda h: h * torch.full_like(h, 2.0),
    torch.empty_like: lambda h: h + torch.empty_like(h).zero_(),
    torch.rand_like: lambda h: h + 0.0 * torch.rand_like(h),
    torch.randn_like: lambda h: h + 0.0 * torch.randn_like(h),
}
for _op, _body in LIKES.items():
    add(f"like-{label(_op)}", lambda body=_body: mlp(lambda s, h: body(h)), _op)

SHAPE_KEEPING = {
    "contiguous": lambda h: h.contiguous(), "clone": lambda h: h.clone(),
    "detach": lambda h: h.detach(), "float": lambda h: h.float(),
    "double": lambda h: h.double().float(), "half": lambda h: h.half().float(),
    "bfloat16": lambda h: h.bfloat16().float(), "to": lambda h: h.to(torch.float32),
    "requires_grad_": lambda h: h.requires_grad_(),
}
LOW_PRECISION = {"half", "bfloat16"}
for _name in SHAPE_KEEPING_METHODS:
    if _name == "type_as":
        continue
    tol = {"atol": 2e-2, "rtol": 2e-2} if _name in LOW_PRECISION else {}
    add(f"shape-keeping-{label(_name)}",
        lambda body=SHAPE_KEEPING[_name]: mlp(lambda s, h: body(h)), _name, **tol)


def _type_as(s, h):
    return h.type_as(s.ref)


add("shape-keeping-.type_as()", lambda: mlp(_type_as, ref=torch.zeros(1)), "type_as")


# ---- Linear -----------------------------------------------------------------------------------
add("nn.Linear", lambda: mlp(lambda s, h: torch.relu(h)), nn.Linear)


def _f_linear(s, h):
    return F.linear(h, s.w, s.b)


def _f_linear_no_bias(s, h):
    return F.linear(h, s.w)


add("F.linear", lambda: mlp(_f_linear, out_width=5, w=nn.Parameter(_randn(5, H)),
                            b=nn.Parameter(_randn(5))), F.linear)
add("F.linear-no-bias", lambda: mlp(_f_linear_no_bias, out_width=5,
                                    w=nn.Parameter(_randn(5, H))), F.linear)


# ---- reshapes ---------------------------------------------------------------------------------
FLAT = C * SIZE[2] ** 2  # a (2, C, 6, 6) conv output flattened per sample


def flat_head():
    return nn.Linear(FLAT, 2)


RESHAPES = {
    "view-infer": (lambda s, h: h.view(h.size(0), -1), ("view", "size")),
    "view-literal": (lambda s, h: h.view(-1, FLAT), ("view",)),
    "view-tuple": (lambda s, h: h.view((h.shape[0], FLAT)), ("view", builtins.getattr)),
    "reshape": (lambda s, h: h.reshape(h.shape[0], FLAT), ("reshape", builtins.getattr,
                                                              operator.getitem)),
    "torch.reshape": (lambda s, h: torch.reshape(h, (-1, FLAT)), (torch.reshape,)),
    "flatten": (lambda s, h: h.flatten(1), ("flatten",)),
    "torch.flatten": (lambda s, h: torch.flatten(h, 1), (torch.flatten,)),
    "nn.Flatten": (lambda s, h: s.flat(h), (nn.Flatten,)),
}
for _id, (_fn, _targets) in RESHAPES.items():
    add(f"reshape-{_id}", lambda fn=_fn: conv(fn, last=flat_head(), flat=nn.Flatten()),
        *_targets)


def _view_tokens(s, h):  # (2, 5, H) -> (10, H): the channels stay the last dim
    return h.view(-1, H)


add("reshape-view-rows", lambda: mlp(_view_tokens, lead=(2, 5)), "view")


def _view_split_channels(s, h):  # (5, H) -> (5, 2, 3): the channel dim is split: pinned
    return h.view(h.size(0), 2, 3).flatten(1)


add("reshape-view-splits-channels", lambda: mlp(_view_split_channels), "view", "flatten")


def _bn_on_rows_reshape_as(s, h):  # LeViT's LinearNorm: BatchNorm1d over (2 * 5, H) rows
    return s.bn(h.flatten(0, 1)).reshape_as(h)


def _view_as_tokens(s, h):  # the same with view_as
    return s.bn(h.flatten(0, 1)).view_as(h)


def _reshape_as_other_channels(s, h):  # shaped like a tensor of other channels: both pinned
    return h.reshape_as(s.other(h))


add("reshape_as-same-channels", lambda: mlp(_bn_on_rows_reshape_as, lead=(2, 5),
                                            bn=nn.BatchNorm1d(H)), "reshape_as", "flatten")
add("view_as-same-channels", lambda: mlp(_view_as_tokens, lead=(2, 5), bn=nn.BatchNorm1d(H)),
    "view_as", "flatten")
add("reshape_as-other-channels", lambda: mlp(_reshape_as_other_channels, lead=(5,),
                                             other=nn.Linear(H, H)), "reshape_as")

SQUEEZES = {
    "squeeze": (lambda s, h: h.squeeze(1), (5, 1), "squeeze"),
    "torch.squeeze": (lambda s, h: torch.squeeze(h, 1), (5, 1), torch.squeeze),
    "unsqueeze": (lambda s, h: h.unsqueeze(1), (5,), "unsqueeze"),
    "torch.unsqueeze": (lambda s, h: torch.unsqueeze(h, 0), (5,), torch.unsqueeze),
}
for _id, (_fn, _lead, _target) in SQUEEZES.items():
    add(f"reshape-{_id}", lambda fn=_fn, lead=_lead: mlp(fn, lead=lead), _target)


def conv1d_head():
    return nn.Conv1d(H, O, 1)


# (2, 5, H) -> (2, H, 5), read by a Conv1d: the tracked dim moves from -1 to -2
PERMUTES = {
    "permute": (lambda s, h: h.permute(0, 2, 1), "permute"),
    "torch.permute": (lambda s, h: torch.permute(h, (0, 2, 1)), torch.permute),
    "transpose": (lambda s, h: h.transpose(1, 2), "transpose"),
    "torch.transpose": (lambda s, h: torch.transpose(h, -1, -2), torch.transpose),
    "movedim": (lambda s, h: h.movedim(2, 1), "movedim"),
    "torch.movedim": (lambda s, h: torch.movedim(h, -1, 1), torch.movedim),
    "swapaxes": (lambda s, h: h.swapaxes(1, 2), "swapaxes"),
    "swapdims": (lambda s, h: h.swapdims(1, 2), "swapdims"),
    "torch.swapaxes": (lambda s, h: torch.swapaxes(h, 1, 2), torch.swapaxes),
}
for _id, (_fn, _target) in PERMUTES.items():
    add(f"permute-{_id}", lambda fn=_fn: mlp(fn, lead=(2, 5), last=conv1d_head()), _target)

# (5, H) -> (H, 5): an unbatched Conv1d reads it
for _id, (_fn, _target) in {
    "t": (lambda s, h: h.t(), "t"),
    "torch.t": (lambda s, h: torch.t(h), torch.t),
    "getattr-T": (lambda s, h: h.T, builtins.getattr),
}.items():
    add(f"permute-{_id}", lambda fn=_fn: mlp(fn, last=conv1d_head()), _target)


def _expand(s, h):  # (5, H) -> (5, 3, H) with the channel count written out
    return h.unsqueeze(1).expand(-1, 3, H)


def _expand_sizes(s, h):
    return h.unsqueeze(1).expand((h.size(0), 3, -1))


def _expand_as(s, h):  # (2, 5, H): the mean over dim 1 broadcast back
    return h.mean(1, keepdim=True).expand_as(h) + h


add("expand", lambda: mlp(_expand), "expand")
add("expand-tuple", lambda: mlp(_expand_sizes), "expand", "size")
add("expand_as", lambda: mlp(_expand_as, lead=(2, 5)), "expand_as")

GETITEMS = {
    "none": lambda s, h: h[:, None, :],
    "ellipsis": lambda s, h: h[..., :],
    "rows": lambda s, h: h[1:],
    "partial-channels": lambda s, h: h[:, :4].repeat(1, 2)[:, :H],  # pinned: a partial slice
}
for _id, _fn in GETITEMS.items():
    add(f"getitem-{_id}", lambda fn=_fn: mlp(fn), operator.getitem,
        batch_sizes=(3,) if _id == "rows" else BATCHES)


# shape queries that steer Python (traced with the example's values and a guard); only where
# registered
for _name in ("dim", "ndimension", "numel", "nelement"):
    if REGISTRY.entry("method", _name) is not None:
        add(f"static-{label(_name)}", lambda n=_name: mlp(
            lambda s, h: h.mean(1) if getattr(h, n)() in (3, 2 * 4 * H) else h, lead=(2, 4)),
            _name)


# ---- joins and splits -------------------------------------------------------------------------
JOINS = {
    "cat": (lambda s, h, g: torch.cat([h, g], -1), 2 * H, torch.cat),
    "concat": (lambda s, h, g: torch.concat((h, g), dim=1), 2 * H, torch.concat),
    "cat-rows": (lambda s, h, g: torch.cat([h, g], 0), H, torch.cat),
    "stack": (lambda s, h, g: torch.stack([h, g], 1), H, torch.stack),
    "stack-last": (lambda s, h, g: torch.stack([h, g], -1).flatten(1), 2 * H, torch.stack),
}
for _id, (_fn, _width, _target) in JOINS.items():
    add(f"join-{_id}", lambda fn=_fn, w=_width: mlp(fn, branch=True, out_width=w), _target)


def _cat_input(s, h, g):  # the model input itself joins: feature gates and neurons side by side
    return h


class CatInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(D, H)
        self.last = nn.Linear(D + H, O)

    def forward(self, x):
        return self.last(torch.cat([x, torch.relu(self.a(x))], dim=-1))


add("join-cat-with-input", lambda: (CatInput(), _randn(5, D)), torch.cat)


def _two(pieces):
    a, b = pieces
    return a + 2 * b


SPLITS = {  # (2, 4, H) split along dim 1, the pieces added back together
    "split": (lambda s, h: _two(h.split(2, dim=1)), "split"),
    "chunk": (lambda s, h: _two(h.chunk(2, 1)), "chunk"),
    "tensor_split": (lambda s, h: _two(h.tensor_split(2, dim=1)), "tensor_split"),
    "torch.split": (lambda s, h: _two(torch.split(h, 2, 1)), torch.split),
    "torch.chunk": (lambda s, h: _two(torch.chunk(h, 2, dim=1)), torch.chunk),
}
for _id, (_fn, _target) in SPLITS.items():
    add(f"split-{_id}", lambda fn=_fn: mlp(fn, lead=(2, 4)), _target, operator.getitem)


def _unbind(s, h):
    a, b, c, d = h.unbind(1)
    return a + b - c * d


def _torch_unbind(s, h):
    a, b = torch.unbind(h, 0)
    return a * b


def _split_channels(s, h):  # along the channel dim: pinned
    a, b = h.split(3, dim=-1)
    return torch.cat([b, a], -1)


add("split-unbind", lambda: mlp(_unbind, lead=(2, 4)), "unbind", operator.getitem)
add("split-torch.unbind", lambda: mlp(_torch_unbind, lead=(2, 4)), torch.unbind,
    batch_sizes=None)  # unbinds the batch dim itself
add("split-along-channels", lambda: mlp(_split_channels), "split", torch.cat)


# ---- reductions (over dim 1 of (2, 4, H)) and softmax ------------------------------------------
REDUCE_METHODS = ["sum", "mean", "amax", "amin", "prod", "std", "var", "logsumexp", "nansum",
                  "nanmean"]
REDUCE_FUNCTIONS = [torch.sum, torch.mean, torch.amax, torch.amin, torch.prod, torch.std,
                    torch.var, torch.logsumexp, torch.nansum, torch.nanmean]
for _name in REDUCE_METHODS:
    add(f"reduce-{label(_name)}",
        lambda n=_name: mlp(lambda s, h: getattr(h, n)(1), lead=(2, 4)), _name)
for _op in REDUCE_FUNCTIONS:
    add(f"reduce-{label(_op)}", lambda op=_op: mlp(lambda s, h: op(h, 1), lead=(2, 4)), _op)
for _name in ("max", "min"):
    add(f"reduce-{label(_name)}",
        lambda n=_name: mlp(lambda s, h: getattr(h, n)(dim=1)[0], lead=(2, 4)), _name,
        operator.getitem)
    add(f"reduce-{label(_name)}-binary",
        lambda n=_name: mlp(lambda s, h, g: getattr(h, n)(g), branch=True), _name)
for _op in (torch.max, torch.min):
    add(f"reduce-{label(_op)}", lambda op=_op: mlp(lambda s, h: op(h, 1)[1].float() + op(
        h, 1, keepdim=True)[0].squeeze(1), lead=(2, 4)), _op, operator.getitem)
    add(f"reduce-{label(_op)}-binary",
        lambda op=_op: mlp(lambda s, h, g: op(h, g), branch=True), _op)
for _name in ("any", "all"):
    add(f"reduce-{label(_name)}",
        lambda n=_name: mlp(lambda s, h: getattr(h, n)(1).float(), lead=(2, 4)), _name)

add("reduce-keepdim", lambda: mlp(lambda s, h: h.sum(dim=(1,), keepdim=True), lead=(2, 4)),
    "sum")
add("reduce-over-channels", lambda: mlp(lambda s, h: h - h.mean(-1, keepdim=True)), "mean")
add("reduce-everything", lambda: mlp(lambda s, h: h * h.sum()), "sum")

SOFTMAXES = {  # over dim 1 of (2, 4, H): channel-wise
    F.softmax: lambda s, h: F.softmax(h, dim=1),
    F.log_softmax: lambda s, h: F.log_softmax(h, 1),
    torch.softmax: lambda s, h: torch.softmax(h, 1),
    torch.log_softmax: lambda s, h: torch.log_softmax(h, dim=1),
    "softmax": lambda s, h: h.softmax(1),
    "log_softmax": lambda s, h: h.log_softmax(dim=1),
}
for _op, _fn in SOFTMAXES.items():
    add(f"softmax-{label(_op)}", lambda fn=_fn: mlp(fn, lead=(2, 4)), _op)
    # over the channels: kept whole
    add(f"softmax-{label(_op)}-over-channels",
        lambda op=_op: mlp(lambda s, h: getattr(h, op)(-1) if isinstance(op, str) else op(
            h, -1)), _op)
for _cls in (nn.Softmax, nn.LogSoftmax):
    add(f"softmax-{label(_cls)}", with_module(mlp, lambda c=_cls: c(dim=1), lead=(2, 4)), _cls)
    add(f"softmax-{label(_cls)}-over-channels", with_module(mlp, lambda c=_cls: c(dim=-1)),
        _cls)


# ---- gathers and scatters along another dim ----------------------------------------------------
def _idx():
    return torch.tensor([3, 0, 0])


GATHERS = {
    "index_select": (lambda s, h: h.index_select(1, s.idx), "index_select"),
    "torch.index_select": (lambda s, h: torch.index_select(h, 1, s.idx), torch.index_select),
    "index_add": (lambda s, h: torch.zeros_like(h).index_add(1, s.idx, h[:, :3]),
                  "index_add"),
    "index_add_": (lambda s, h: h.clone().index_add_(1, s.idx, h[:, 1:]), "index_add_"),
    "torch.index_add": (lambda s, h: torch.index_add(h, 1, s.idx, 2 * h[:, :3]),
                        torch.index_add),
}
for _id, (_fn, _target) in GATHERS.items():
    if _target is torch.index_select:  # the function LUMOS registered, wrapped or not
        add(f"gather-{_id}", lambda fn=_fn: mlp(fn, lead=(2, 4), idx=_idx()),
            *INDEX_SELECTS, xfail=INDEX_SELECT_XFAIL)
    else:
        add(f"gather-{_id}", lambda fn=_fn: mlp(fn, lead=(2, 4), idx=_idx()), _target)
add("gather-index_select-channels", lambda: mlp(
    lambda s, h: h.index_select(-1, s.idx), lead=(2, 4), out_width=3, idx=_idx()),
    "index_select")


# ---- ops called with keyword arguments -----------------------------------------------------------
KWARG_ROWS = {  # id: (template, fn, template options, targets, xfail reason or None)
    "torch.add(input=, other=)": (
        mlp, lambda s, h, g: torch.add(input=h, other=g), {"branch": True}, (torch.add,), None),
    "torch.mul(input=, other=)": (
        mlp, lambda s, h, g: torch.mul(input=h, other=g), {"branch": True}, (torch.mul,), None),
    "torch.sub(alpha=)": (mlp, lambda s, h, g: torch.sub(h, g, alpha=0.5), {"branch": True},
                          (torch.sub,), None),
    "torch.div(rounding_mode=)": (
        mlp, lambda s, h, g: torch.div(h, positive(g), rounding_mode="floor"),
        {"branch": True}, (torch.div,), None),
    ".masked_fill(mask=, value=)": (
        mlp, lambda s, h: h.masked_fill(mask=s.mask, value=0.0),
        {"mask": torch.tensor([1, 0, 1, 1, 0, 0]).bool()}, ("masked_fill",), None),
    "torch.where(condition=, input=, other=)": (
        mlp, lambda s, h, g: torch.where(condition=s.mask, input=h, other=g),
        {"branch": True, "mask": torch.tensor([1, 0, 1, 1, 0, 0]).bool()}, (torch.where,), None),
    ".expand(size=)": (
        mlp, lambda s, h: h.unsqueeze(1).expand(size=(-1, 3, H)), {}, ("expand",), None),
    ".expand_as(other=)": (mlp, lambda s, h: h.mean(1, keepdim=True).expand_as(other=h) + h,
                           {"lead": (2, 5)}, ("expand_as",), None),
    ".transpose(dim0=, dim1=)": (
        mlp, lambda s, h: h.transpose(dim0=1, dim1=2), {"lead": (2, 5), "last": "conv1d"},
        ("transpose",), None),
    "torch.transpose(input=, dim0=, dim1=)": (
        mlp, lambda s, h: torch.transpose(input=h, dim0=1, dim1=2),
        {"lead": (2, 5), "last": "conv1d"}, (torch.transpose,), None),
    ".permute(dims=)": (
        mlp, lambda s, h: h.permute(dims=(0, 2, 1)), {"lead": (2, 5), "last": "conv1d"},
        ("permute",), None),
    ".movedim(source=, destination=)": (
        mlp, lambda s, h: h.movedim(source=2, destination=1),
        {"lead": (2, 5), "last": "conv1d"}, ("movedim",), None),
    "torch.movedim(source=, destination=)": (
        mlp, lambda s, h: torch.movedim(h, source=2, destination=1),
        {"lead": (2, 5), "last": "conv1d"}, (torch.movedim,), None),
    "torch.sum(input=, dim=)": (
        mlp, lambda s, h: torch.sum(input=h, dim=1), {"lead": (2, 4)}, (torch.sum,), None),
    "torch.max(input=, dim=)": (
        mlp, lambda s, h: torch.max(input=h, dim=1)[0], {"lead": (2, 4)}, (torch.max,), None),
    ".max(dim=, keepdim=)": (mlp, lambda s, h: h.max(dim=1, keepdim=False)[0],
                             {"lead": (2, 4)}, ("max",), None),
    "torch.log_softmax(input=, dim=)": (
        mlp, lambda s, h: torch.log_softmax(input=h, dim=1), {"lead": (2, 4)},
        (torch.log_softmax,), None),
    ".softmax(dim=)": (mlp, lambda s, h: h.softmax(dim=1), {"lead": (2, 4)}, ("softmax",),
                       None),
    "torch.zeros_like(input=)": (
        mlp, lambda s, h: h + torch.zeros_like(input=h), {}, (torch.zeros_like,), None),
    "torch.stack(tensors=, dim=)": (mlp, lambda s, h, g: torch.stack(tensors=[h, g], dim=1),
                                    {"branch": True}, (torch.stack,), None),
    "torch.cat(tensors=, dim=)": (mlp, lambda s, h, g: torch.cat(tensors=[h, g], dim=-1),
                                  {"branch": True, "out_width": 2 * H}, (torch.cat,), None),
    ".split(split_size=, dim=)": (mlp, lambda s, h: _two(h.split(split_size=2, dim=1)),
                                  {"lead": (2, 4)}, ("split",), None),
    ".chunk(chunks=, dim=)": (mlp, lambda s, h: _two(h.chunk(chunks=2, dim=1)),
                              {"lead": (2, 4)}, ("chunk",), None),
    ".index_select(dim=, index=)": (mlp, lambda s, h: h.index_select(dim=1, index=s.idx),
                                    {"lead": (2, 4), "idx": torch.tensor([3, 0, 0])},
                                    ("index_select",), None),
    "torch.index_add(dim=, index=, source=)": (
        mlp, lambda s, h: torch.index_add(h, dim=1, index=s.idx, source=h[:, :3]),
        {"lead": (2, 4), "idx": torch.tensor([3, 0, 0])}, (torch.index_add,), None),
    ".unsqueeze(dim=)": (mlp, lambda s, h: h.unsqueeze(dim=1), {}, ("unsqueeze",), None),
    "torch.squeeze(input=, dim=)": (mlp, lambda s, h: torch.squeeze(input=h, dim=1),
                                    {"lead": (5, 1)}, (torch.squeeze,), None),
    ".to(dtype=)": (mlp, lambda s, h: h.to(dtype=torch.float32), {}, ("to",), None),
    "F.linear(input=, weight=)": (mlp, lambda s, h: F.linear(input=h, weight=s.w),
                                  {"out_width": 5, "w": nn.Parameter(_randn(5, H))},
                                  (F.linear,), None),
    ".view(size=)": (conv, lambda s, h: h.view(size=(h.size(0), -1)), {"last": "flat"},
                     ("view",), None),
    ".size(dim=)": (conv, lambda s, h: h.view(h.size(dim=0), -1), {"last": "flat"},
                    ("size",), None),
    "torch.flatten(input=, start_dim=)": (conv, lambda s, h: torch.flatten(input=h, start_dim=1),
                                          {"last": "flat"}, (torch.flatten,), None),
    "torch.reshape(input=, shape=)": (conv, lambda s, h: torch.reshape(input=h, shape=(-1, FLAT)),
                                      {"last": "flat"}, (torch.reshape,), None),  # pinned
    "F.pad(input=, pad=)": (conv, lambda s, h: F.pad(input=h, pad=(1, 1)), {}, (F.pad,), None),
    "F.interpolate(input=, scale_factor=)": (
        conv, lambda s, h: F.interpolate(input=h, scale_factor=2.0), {}, (F.interpolate,), None),
    "F.max_pool2d(input=, kernel_size=)": (
        conv, lambda s, h: F.max_pool2d(input=h, kernel_size=2), {}, (F.max_pool2d,), None),
    "F.layer_norm(input=, normalized_shape=)": (
        conv, lambda s, h: F.layer_norm(input=h, normalized_shape=(SIZE[2], SIZE[2])), {},
        (F.layer_norm,), None),
}
_LASTS = {"conv1d": conv1d_head, "flat": flat_head}


def _kwarg_row(template, fn, options):
    def build():
        opts = dict(options)
        if isinstance(opts.get("last"), str):
            opts["last"] = _LASTS[opts["last"]]()
        return template(fn, **opts)

    return build


for _id, (_template, _fn, _options, _targets, _xfail) in KWARG_ROWS.items():
    add(f"kwargs-{_id}", _kwarg_row(_template, _fn, _options), *_targets, xfail=_xfail)


# ---- convolutions -----------------------------------------------------------------------------
for _nd in (1, 2, 3):
    add(f"conv-{label(CONVS[_nd])}", lambda nd=_nd: conv(
        lambda s, h: s.m(F.relu(h)), nd=nd, out_width=5, m=CONVS[nd](C, 5, 3, padding=1)),
        CONVS[_nd])
    add(f"conv-{label(CONVS[_nd])}-strided-no-bias", lambda nd=_nd: conv(
        lambda s, h: s.m(h), nd=nd, out_width=5,
        m=CONVS[nd](C, 5, 2, stride=2, bias=False)), CONVS[_nd])
    add(f"conv-{label(CONVS[_nd])}-depthwise", lambda nd=_nd: conv(
        lambda s, h: s.m(h), nd=nd, out_width=2 * C, m=CONVS[nd](C, 2 * C, 3, padding=1,
                                                                 groups=C)), CONVS[_nd])
    add(f"conv-{label(CONVS[_nd])}-grouped", lambda nd=_nd: conv(
        lambda s, h: s.m(h), nd=nd, m=CONVS[nd](C, C, 1, groups=2)), CONVS[_nd])
    add(f"conv-{label(CONV_T[_nd])}", lambda nd=_nd: conv(
        lambda s, h: s.m(h), nd=nd, out_width=5,
        m=CONV_T[nd](C, 5, 3, stride=2, padding=1, output_padding=1)), CONV_T[_nd])
    add(f"conv-{label(CONV_T[_nd])}-depthwise", lambda nd=_nd: conv(
        lambda s, h: s.m(h), nd=nd, out_width=2 * C, m=CONV_T[nd](C, 2 * C, 3, groups=C)),
        CONV_T[_nd])
    add(f"conv-{label(CONV_T[_nd])}-first", lambda nd=_nd: (Chain(
        CONV_T[nd](3, C, 2, stride=2), lambda s, h: F.relu(h), CONVS[nd](C, 2, 1)),
        _randn(2, 3, *[3] * nd)), CONV_T[_nd])


# ---- norms ------------------------------------------------------------------------------------
BATCHNORMS = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
INSTANCENORMS = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
for _nd in (1, 2, 3):
    add(f"norm-{label(BATCHNORMS[_nd])}",
        with_module(conv, lambda nd=_nd: randomized(BATCHNORMS[nd](C)), nd=_nd),
        BATCHNORMS[_nd])
    for _affine, _track in ((True, False), (False, False), (True, True)):
        add(f"norm-{label(INSTANCENORMS[_nd])}-affine={_affine}-track={_track}",
            with_module(conv, lambda nd=_nd, a=_affine, t=_track: randomized(
                INSTANCENORMS[nd](C, affine=a, track_running_stats=t)), nd=_nd),
            INSTANCENORMS[_nd])
add("norm-nn.BatchNorm1d-features",
    with_module(mlp, lambda: randomized(nn.BatchNorm1d(H))), nn.BatchNorm1d)
add("norm-nn.BatchNorm1d-no-affine",
    with_module(mlp, lambda: randomized(nn.BatchNorm1d(H, affine=False))), nn.BatchNorm1d)
add("norm-nn.GroupNorm-per-channel", with_module(conv, lambda: randomized(nn.GroupNorm(C, C))),
    nn.GroupNorm)
add("norm-nn.GroupNorm-groups", with_module(conv, lambda: randomized(nn.GroupNorm(2, C))),
    nn.GroupNorm)
add("norm-nn.LayerNorm-channels", with_module(mlp, lambda: randomized(nn.LayerNorm(H))),
    nn.LayerNorm)
add("norm-nn.RMSNorm-channels", with_module(mlp, lambda: randomized(nn.RMSNorm(H))),
    nn.RMSNorm)
add("norm-nn.LayerNorm-spatial",
    with_module(conv, lambda: randomized(nn.LayerNorm((SIZE[2], SIZE[2])))), nn.LayerNorm)


def _layer_norm_over_positions(s, h):  # (2, 5, H) -> (2, H, 5): normalised over the 5
    return s.m(h.transpose(1, 2)).transpose(1, 2)


add("norm-nn.LayerNorm-other-dim", lambda: mlp(
    _layer_norm_over_positions, lead=(2, 5), m=randomized(nn.LayerNorm(5))), nn.LayerNorm,
    "transpose")


def _f_layer_norm_spatial(s, h):
    return F.layer_norm(h, (SIZE[2], SIZE[2]), s.w, s.b)


def _f_layer_norm_channels(s, h):
    return F.layer_norm(h, (H,))


add("norm-F.layer_norm-spatial", lambda: conv(
    _f_layer_norm_spatial, w=nn.Parameter(_randn(SIZE[2], SIZE[2])),
    b=nn.Parameter(_randn(SIZE[2], SIZE[2]))), F.layer_norm)
add("norm-F.layer_norm-channels", lambda: mlp(_f_layer_norm_channels), F.layer_norm)


# ---- pooling, resampling, dropout, padding ------------------------------------------------------
POOL_ARGS = {
    "MaxPool": {"kernel_size": 2}, "AvgPool": {"kernel_size": 2},
    "AdaptiveAvgPool": {"output_size": 2}, "AdaptiveMaxPool": {"output_size": 2},
    "LPPool": {"norm_type": 2, "kernel_size": 2},
    # an integer ratio (6 - 2) / (3 - 1): the random pooling regions are always the same
    "FractionalMaxPool": {"kernel_size": 2, "output_size": 3},
}


def _pool_args(cls) -> dict:
    return POOL_ARGS[cls.__name__.rstrip("123d")]


for _nd, _classes in {1: (nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d,
                          nn.AdaptiveMaxPool1d, nn.LPPool1d),
                      2: (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                          nn.AdaptiveMaxPool2d, nn.LPPool2d, nn.FractionalMaxPool2d),
                      3: (nn.MaxPool3d, nn.AvgPool3d, nn.AdaptiveAvgPool3d,
                          nn.AdaptiveMaxPool3d)}.items():
    for _cls in _classes:
        add(f"pool-{label(_cls)}", with_module(conv, lambda c=_cls: c(**_pool_args(c)), nd=_nd),
            _cls)
    for _op in (getattr(F, f"max_pool{_nd}d"), getattr(F, f"avg_pool{_nd}d")):
        add(f"pool-{label(_op)}", lambda op=_op, nd=_nd: conv(lambda s, h: op(h, 2), nd=nd),
            _op)
    for _op in (getattr(F, f"adaptive_avg_pool{_nd}d"), getattr(F, f"adaptive_max_pool{_nd}d")):
        add(f"pool-{label(_op)}", lambda op=_op, nd=_nd: conv(lambda s, h: op(h, 3), nd=nd),
            _op)
add("pool-nn.MaxPool2d-return_indices", lambda: conv(
    lambda s, h: s.m(h)[0] + s.m(h)[1].float() * 0.01, m=nn.MaxPool2d(2, return_indices=True)),
    nn.MaxPool2d, operator.getitem)
# fx records F.adaptive_max_pool2d(..., return_indices=True) as
# F.adaptive_max_pool2d_with_indices, which has no rule: the channels are kept whole (exact)
add("pool-F.adaptive_max_pool2d-return_indices", lambda: conv(
    lambda s, h: F.adaptive_max_pool2d(h, 2, return_indices=True)[0]), operator.getitem)

UPSAMPLES = {
    "nn.Upsample-nearest": (lambda: nn.Upsample(scale_factor=2), 2, nn.Upsample),
    "nn.Upsample-linear": (lambda: nn.Upsample(scale_factor=2, mode="linear"), 1, nn.Upsample),
    "nn.Upsample-trilinear": (lambda: nn.Upsample(size=5, mode="trilinear"), 3, nn.Upsample),
    "nn.UpsamplingNearest2d": (lambda: nn.UpsamplingNearest2d(scale_factor=2), 2,
                               nn.UpsamplingNearest2d),
    "nn.UpsamplingBilinear2d": (lambda: nn.UpsamplingBilinear2d(size=(4, 7)), 2,
                                nn.UpsamplingBilinear2d),
}
for _id, (_factory, _nd, _target) in UPSAMPLES.items():
    add(f"resample-{_id}", with_module(conv, _factory, nd=_nd), _target)
add("resample-F.interpolate", lambda: conv(lambda s, h: F.interpolate(
    h, scale_factor=1.5, mode="bilinear", align_corners=False)), F.interpolate)
add("resample-F.interpolate-1d", lambda: conv(lambda s, h: F.interpolate(h, size=5), nd=1),
    F.interpolate)
add("resample-F.upsample", lambda: conv(lambda s, h: _node(F.upsample, h, scale_factor=2)),
    F.upsample)

for _nd, _cls in {1: nn.Dropout1d, 2: nn.Dropout2d, 3: nn.Dropout3d}.items():
    add(f"dropout-{label(_cls)}", with_module(conv, lambda c=_cls: c(0.4), nd=_nd), _cls)
    _op = getattr(F, f"dropout{_nd}d")
    add(f"dropout-{label(_op)}", lambda op=_op, nd=_nd: conv(
        lambda s, h: op(h, 0.4, training=False), nd=nd), _op)

PADS = {
    "Zero": lambda cls: cls(1), "Constant": lambda cls: cls(1, 0.5),
    "Reflection": lambda cls: cls(1), "Replication": lambda cls: cls((1, 2) * cls_nd(cls)),
    "Circular": lambda cls: cls(1),
}


def cls_nd(cls) -> int:
    return int(cls.__name__[-2])


for _pad, _factory in PADS.items():
    for _nd in (1, 2, 3):
        _cls = getattr(nn, f"{_pad}Pad{_nd}d")
        add(f"pad-{label(_cls)}", with_module(conv, lambda c=_cls, f=_factory: f(c), nd=_nd),
            _cls)
add("pad-nn.ZeroPad2d-on-a-3d-input-channels", lambda: mlp(
    lambda s, h: s.m(h), lead=(2, 5), out_width=H + 2, m=nn.ZeroPad2d((1, 1, 0, 0))),
    nn.ZeroPad2d)
add("pad-F.pad", lambda: conv(lambda s, h: F.pad(h, (1, 1, 2, 0))), F.pad)
add("pad-F.pad-reflect", lambda: conv(lambda s, h: F.pad(h, (2, 1), mode="reflect"), nd=1),
    F.pad)
add("pad-F.pad-channels", lambda: conv(lambda s, h: F.pad(h, (0, 0, 0, 0, 1, 1)),
                                       out_width=C + 2), F.pad)


# ---- PReLU ------------------------------------------------------------------------------------
def prelu(n: int = 1) -> nn.PReLU:
    m = nn.PReLU(n)
    with torch.no_grad():
        m.weight.copy_(torch.rand(n) * 0.5)
    return m


add("prelu-per-channel-conv", with_module(conv, lambda: prelu(C)), nn.PReLU)
add("prelu-per-channel-features", with_module(mlp, lambda: prelu(H)), nn.PReLU)
add("prelu-shared", with_module(conv, prelu), nn.PReLU)


# ---- torchvision and timm (when installed) ------------------------------------------------------
def _drop_path_residual(s, h):  # timm: each sample's branch dropped in training
    return h + drop_path(F.relu(h), 0.2, s.training)


def _stochastic_depth_residual(s, h):  # torchvision: the same, rows or the whole batch
    return h + stochastic_depth(F.relu(h), 0.2, "row", s.training)


if importlib.util.find_spec("torchvision") is not None:
    from torchvision_cpu import ensure_torchvision_importable

    ensure_torchvision_importable()  # its PyPI wheel is a CUDA build (see the function)
    from torchvision.ops import stochastic_depth

    add("torchvision-stochastic_depth", lambda: conv(_stochastic_depth_residual),
        stochastic_depth)

HAS_TIMM = importlib.util.find_spec("timm") is not None
if HAS_TIMM:
    from torchvision_cpu import ensure_torchvision_importable

    ensure_torchvision_importable()  # timm imports torchvision
    import timm.layers.activations as timm_activations
    import timm.layers.activations_me as timm_activations_me
    from timm.layers import BatchNormAct2d

    def bn_act(**options) -> BatchNormAct2d:
        m = BatchNormAct2d(C, **options)
        with torch.no_grad():  # statistics and affine values that are not the identity
            m.running_mean.copy_(torch.randn(C))
            m.running_var.copy_(torch.rand(C) + 0.5)
            m.weight.copy_(torch.rand(C) + 0.5)
            m.bias.copy_(torch.randn(C))
        return m

    add("timm-BatchNormAct2d-silu", with_module(conv, lambda: bn_act(act_layer=nn.SiLU)),
        BatchNormAct2d)
    add("timm-BatchNormAct2d-no-act", with_module(conv, lambda: bn_act(apply_act=False)),
        BatchNormAct2d)
    add("timm-BatchNormAct2d-dropout", with_module(conv, lambda: bn_act(
        act_layer=timm_activations.GELU, drop_layer=nn.Dropout)), BatchNormAct2d)
    # an activation with one parameter per channel: the channels reaching it are kept whole
    add("timm-BatchNormAct2d-prelu-kept-whole", with_module(conv, lambda: bn_act(
        act_layer=nn.PReLU, act_kwargs={"num_parameters": C})), BatchNormAct2d)
    from timm.layers import drop_path

    add("timm-drop_path", lambda: conv(_drop_path_residual), drop_path)
    for _module in (timm_activations, timm_activations_me):
        for _name in ("Swish", "Mish", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid", "HardMish",
                      "GELU", "GELUTanh", "QuickGELU", "SwishMe", "MishMe", "HardSigmoidMe",
                      "HardSwishMe", "HardMishMe"):
            _cls = getattr(_module, _name, None)
            if _cls is not None:
                add(f"timm-{_name}", with_module(mlp, _cls), _cls)


# ---- Fourier layers ---------------------------------------------------------------------------
add("spectral-SpectralConv1d", lambda: conv(
    lambda s, h: s.m(h), nd=1, out_width=5, m=SpectralConv1d(C, 5, 3)), SpectralConv1d)
add("spectral-SpectralConv2d", lambda: conv(
    lambda s, h: s.m(h), out_width=5, size=8, m=SpectralConv2d(C, 5, 3, 2)), SpectralConv2d)
add("spectral-SpectralConv2d-first", lambda: (Chain(
    SpectralConv2d(3, C, 2, 2), lambda s, h: F.gelu(h), nn.Conv2d(C, 2, 1)), _randn(2, 3, 6, 6)),
    SpectralConv2d)


# ---- attention and Transformer encoders ---------------------------------------------------------
class Attention(nn.Module):
    def __init__(self, kdim: int | None = None, batch_first: bool = True) -> None:
        super().__init__()
        self.q = nn.Linear(D, 8)
        self.kv = nn.Linear(D, kdim) if kdim else None
        self.mha = nn.MultiheadAttention(8, 2, kdim=kdim, vdim=kdim, batch_first=batch_first)
        self.last = nn.Linear(8, O)

    def forward(self, x):
        q = self.q(x)
        kv = q if self.kv is None else self.kv(x)
        out, _ = self.mha(q, kv, kv, need_weights=False)
        return self.last(out)


add("attention-nn.MultiheadAttention", lambda: (Attention(), _randn(2, 5, D)),
    nn.MultiheadAttention)
add("attention-nn.MultiheadAttention-kdim", lambda: (Attention(kdim=6), _randn(2, 5, D)),
    nn.MultiheadAttention)
add("attention-nn.MultiheadAttention-seq-first",
    lambda: (Attention(batch_first=False), _randn(5, 2, D)), nn.MultiheadAttention,
    batch_sizes=None)


class MaskedAttention(nn.Module):
    """Attention with a key padding mask; ``weights=True`` also returns the attention weights
    (averaged over heads, so the heads are kept whole)."""

    def __init__(self, weights: bool = False) -> None:
        super().__init__()
        self.q = nn.Linear(D, 8)
        self.mha = nn.MultiheadAttention(8, 4, batch_first=True)
        self.last = nn.Linear(8, O)
        self.weights = weights

    def forward(self, x, pad):
        q = self.q(x)
        out, w = self.mha(q, q, q, key_padding_mask=pad, need_weights=self.weights)
        if self.weights:
            return self.last(out), w
        return self.last(out)


def _padding():
    return torch.tensor([[False, False, False, True, True], [False] * 5])


add("attention-nn.MultiheadAttention-key_padding_mask",
    lambda: (MaskedAttention(), (_randn(2, 5, D), _padding())), nn.MultiheadAttention)
add("attention-nn.MultiheadAttention-weights-used",
    lambda: (MaskedAttention(weights=True), (_randn(2, 5, D), _padding())),
    nn.MultiheadAttention)


def encoder_layer(norm_first: bool = False) -> nn.TransformerEncoderLayer:
    return nn.TransformerEncoderLayer(8, 2, dim_feedforward=12, dropout=0.0, batch_first=True,
                                      norm_first=norm_first)


def _encoder(s, h):
    return s.m(h)


add("trace-nn.TransformerEncoderLayer",
    lambda: (Chain(nn.Linear(D, 8), _encoder, nn.Linear(8, O), m=encoder_layer()),
             _randn(2, 5, D)),
    nn.MultiheadAttention, nn.LayerNorm, traces=(nn.TransformerEncoderLayer,))
add("trace-nn.TransformerEncoder",
    lambda: (Chain(nn.Linear(D, 8), _encoder, nn.Linear(8, O),
                   m=nn.TransformerEncoder(encoder_layer(norm_first=True), 2,
                                           enable_nested_tensor=False)), _randn(2, 5, D)),
    nn.MultiheadAttention, traces=(nn.TransformerEncoder, nn.TransformerEncoderLayer))


# ---- recurrent layers and embeddings (where registered) ------------------------------------------
def _sequence(s, h):  # (2, 4, H) -> the recurrent layer's output sequence
    return s.m(h)[0]


def _with_final_state(s, h):  # the output's last step plus h_n: the same units
    out, state = s.m(h)
    h_n = state[0] if isinstance(s.m, nn.LSTM) else state
    return out[:, -1] + h_n[0]


for _cls in (nn.LSTM, nn.GRU, nn.RNN):
    if REGISTRY.entry("module", _cls) is None:
        continue
    add(f"recurrent-{label(_cls)}", lambda c=_cls: mlp(
        _sequence, lead=(2, 4), out_width=5, m=c(H, 5, batch_first=True)), _cls)
    add(f"recurrent-{label(_cls)}-2-layers-bidirectional", lambda c=_cls: mlp(
        _sequence, lead=(4, 2), out_width=10, m=c(H, 5, num_layers=2, bidirectional=True)),
        _cls, batch_sizes=None)  # sequence first: dim 0 is time
    add(f"recurrent-{label(_cls)}-final-state", lambda c=_cls: mlp(
        _with_final_state, lead=(2, 4), out_width=5, m=c(H, 5, batch_first=True)), _cls)


def _cell_loop(s, h):  # three steps of a cell on the same input, the state starting as None
    state = None
    for _ in range(3):
        state = s.m(h, state)
    return state[0] if isinstance(s.m, nn.LSTMCell) else state


for _cls in (nn.LSTMCell, nn.GRUCell, nn.RNNCell):
    add(f"recurrent-{label(_cls)}-loop", lambda c=_cls: mlp(_cell_loop, out_width=5,
                                                            m=c(H, 5)), _cls)


class Embed(nn.Module):
    def __init__(self, **options) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, H, **options)
        self.hidden = nn.Linear(H, 5)
        self.last = nn.Linear(5, O)

    def forward(self, tokens):
        return self.last(torch.relu(self.hidden(self.embed(tokens))))


def _tokens():
    return torch.randint(0, 10, (5, 3), generator=torch.Generator().manual_seed(0))


if REGISTRY.entry("module", nn.Embedding) is not None:
    add("embedding-nn.Embedding", lambda: (Embed(), _tokens()), nn.Embedding)
    add("embedding-nn.Embedding-max_norm", lambda: (Embed(max_norm=1.0), _tokens()),
        nn.Embedding)


# ---- graph layers (torch-geometric) ------------------------------------------------------------
def graphs(n_graphs: int = 3, nodes: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    edges = []
    for k in range(n_graphs):
        src = torch.randint(0, nodes, (2 * nodes,), generator=g) + k * nodes
        dst = torch.randint(0, nodes, (2 * nodes,), generator=g) + k * nodes
        edges.append(torch.stack([torch.cat([src, dst]), torch.cat([dst, src])]))
    x = torch.randn(n_graphs * nodes, D, generator=g)
    batch = torch.arange(n_graphs).repeat_interleave(nodes)
    return x, torch.cat(edges, dim=1), batch


#: graph layers between the two Linears: kind -> (factory, output width)
GRAPH_LAYERS = {
    "gcn": (lambda: GCNConv(H, 5), 5),
    "gcn-no-bias": (lambda: GCNConv(H, 5, bias=False), 5),
    "sage": (lambda: SAGEConv(H, 5), 5),
    "sage-max": (lambda: SAGEConv(H, 5, aggr="max"), 5),
    "sage-no-root": (lambda: SAGEConv(H, 5, root_weight=False), 5),
    "sage-normalize": (lambda: SAGEConv(H, 5, normalize=True), 5),  # output kept whole
    # GAT's unit: a channel within heads (gated on the projection's rows) when C > H or the
    # heads are averaged, else a head
    "gat": (lambda: GATConv(H, 3, heads=2), 6),
    "gat-heads": (lambda: GATConv(H, 2, heads=3), 6),
    "gat-residual": (lambda: GATConv(H, 3, heads=2, residual=True), 6),
    "gat-mean-heads": (lambda: GATConv(H, 3, heads=2, concat=False), 3),
    "gat-stream": (lambda: GATConv(H, 3, heads=2), H),  # h + conv(h): reads what it writes
    "gat-heads-stream": (lambda: GATConv(H, 2, heads=3), H),
    "gat-edge": (lambda: GATConv(H, 3, heads=2, edge_dim=3, add_self_loops=False), 6),
    "gatv2": (lambda: GATv2Conv(H, 3, heads=2), 6),
    "gatv2-stream": (lambda: GATv2Conv(H, 3, heads=2, residual=True), H),
    "gatv2-mean-heads": (lambda: GATv2Conv(H, 3, heads=2, concat=False), 3),
    "gatv2-edge": (lambda: GATv2Conv(H, 3, heads=2, edge_dim=3, add_self_loops=False), 6),
    "gatv2-shared-residual": (lambda: GATv2Conv(H, 3, heads=3, share_weights=True,
                                                residual=True), 9),
    "gin": (lambda: GINConv(nn.Sequential(nn.Linear(H, 5), nn.ReLU(), nn.Linear(5, 5)),
                            train_eps=True), 5),
    "linear": (lambda: GeometricLinear(H, 5), 5),
    "edge": (lambda: EdgeConv(nn.Sequential(nn.Linear(2 * H, 5), nn.ReLU(), nn.Linear(5, 5)),
                              aggr="max"), 5),
    # sums of Linear children over channelwise propagations
    "graphconv": (lambda: GraphConv(H, 5), 5),
    "graphconv-mean": (lambda: GraphConv(H, 5, aggr="mean"), 5),
    "graphconv-multi": (lambda: GraphConv(H, 5, aggr=pyg_aggr.MultiAggregation(
        ["mean", "std"], mode="proj", mode_kwargs={"in_channels": H, "out_channels": H})),
        5),  # an aggregation that mixes channels: kept whole
    "sgconv": (lambda: SGConv(H, 5, K=2), 5),
    "sgconv-cached": (lambda: SGConv(H, 5, K=2, cached=True), 5),  # kept whole
    "tagconv": (lambda: TAGConv(H, 5, K=2), 5),
    "tagconv-plain": (lambda: TAGConv(H, 5, K=3, normalize=False, bias=False), 5),
    "chebconv": (lambda: ChebConv(H, 5, K=3), 5),
    "chebconv-rw": (lambda: ChebConv(H, 5, K=2, normalization="rw"), 5),
    "leconv": (lambda: LEConv(H, 5), 5),
    "resgated": (lambda: ResGatedGraphConv(H, 5), 5),
    "resgated-no-root-relu": (lambda: ResGatedGraphConv(H, 5, act=nn.ReLU(),
                                                        root_weight=False), 5),
    "resgated-prelu": (lambda: ResGatedGraphConv(H, 5, act=nn.PReLU(5)), 5),  # kept whole
    # GINE: relu(x_j + lin(e)) per edge; "-edge" rows pass 3 edge features
    "gine-edge": (lambda: GINEConv(nn.Sequential(nn.Linear(H, 5), nn.ReLU(), nn.Linear(5, 5)),
                                   edge_dim=3, train_eps=True), 5),
    "gine-stream-edge": (lambda: GINEConv(nn.Sequential(nn.Linear(H, 8), nn.ReLU(),
                                                        nn.Linear(8, H)), edge_dim=3), H),
}
#: PNA with every aggregator and scaler PyG has for it (a degree histogram of small graphs)
PNA_AGGREGATORS = ["mean", "min", "max", "std", "var", "sum"]
PNA_SCALERS = ["identity", "amplification", "attenuation", "linear", "inverse_linear"]
if HAS_PYG:
    GRAPH_LAYERS.update({
        "pna": (lambda: PNAConv(H, 5, PNA_AGGREGATORS, PNA_SCALERS,
                                deg=torch.tensor([1, 4, 6, 3, 2])), 5),
        "pna-towers": (lambda: PNAConv(H, 6, ["mean", "max"], ["identity"],
                                       deg=torch.tensor([0, 5, 5]), towers=2,
                                       divide_input=False, pre_layers=2, post_layers=2), 6),
    })
#: norms over node features, called with the batch vector
GRAPH_NORMS = {"graph-norm", "graph-instance-norm", "graph-layer-norm", "node-layer-norm"}
if HAS_PYG:
    GRAPH_LAYERS.update({
        "graph-norm": (lambda: GraphNorm(H), H),
        "graph-instance-norm": (lambda: GraphInstanceNorm(H, affine=True), H),
        "graph-layer-norm": (lambda: GraphLayerNorm(H), H),
        "node-layer-norm": (lambda: GraphLayerNorm(H, mode="node"), H),
    })
if HAS_PYG:  # SchNet's continuous-filter conv (called with edge weights and features)
    GRAPH_LAYERS["cfconv"] = (lambda: CFConv(H, 5, 4, nn.Sequential(
        nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4)), cutoff=2.0), 5)
#: readout aggregation modules (their class overrides __call__: traced as the user called
#: them, saved as ``operator.call`` nodes that fx keeps whole when it loads them)
AGGREGATIONS: dict[str, Callable[[], nn.Module]] = {} if not HAS_PYG else {
    f"aggr-{name.removesuffix('Aggregation').lower()}": getattr(pyg_aggr, name)
    for name in ("SumAggregation", "MeanAggregation", "MaxAggregation", "MinAggregation",
                 "MulAggregation", "VarAggregation", "StdAggregation", "MedianAggregation")}


class GraphNet(nn.Module):
    """``Linear -> graph layer -> pool -> Linear``; ``kind`` picks the layer (GRAPH_LAYERS) or
    the pool."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.first = nn.Linear(D, H)
        width = H
        if kind in GRAPH_LAYERS:
            factory, width = GRAPH_LAYERS[kind]
            self.conv = factory()
        if kind in AGGREGATIONS:
            self.aggr = AGGREGATIONS[kind]()
        self.last = nn.Linear(width, O)

    def forward(self, x, edge_index, batch):
        h = torch.relu(self.first(x))
        if self.kind == "linear":
            h = self.conv(h)
        elif self.kind in GRAPH_NORMS:
            h = self.conv(h, batch)
        elif self.kind == "cfconv":
            edges = edge_index.shape[1]
            h = self.conv(h, edge_index, torch.linspace(0.1, 1.9, edges),
                          torch.linspace(-1, 1, 3 * edges).view(edges, 3))
        elif self.kind.endswith("-edge"):  # "-stream-edge": h + conv(h), reads what it writes
            edges = edge_index.shape[1]
            out = self.conv(h, edge_index, torch.linspace(-1, 1, 3 * edges).view(edges, 3))
            h = h + out if self.kind.endswith("-stream-edge") else out
        elif self.kind.endswith("-stream"):
            h = h + self.conv(h, edge_index)
        elif self.kind in GRAPH_LAYERS:
            h = self.conv(h, edge_index)
        if self.kind == "add":
            h = global_add_pool(h, batch)
        elif self.kind == "max":
            h = global_max_pool(h, batch)
        elif self.kind == "scatter":
            h = scatter(h, batch, 0, dim_size=3, reduce="mean")
        elif self.kind == "scatter-sum":
            h = scatter(h, batch, dim=0, dim_size=3)
        elif self.kind in AGGREGATIONS:
            h = self.aggr(h, batch, dim_size=3)
        else:
            h = global_mean_pool(h, batch)
        return self.last(h)


def _graph_row(kind: str) -> Callable[[], tuple]:
    def build():
        return GraphNet(kind), graphs()

    return build


_GRAPH_ROWS = {  # id: (GraphNet kind, targets (names in this module), layers traced through)
    "GCNConv": ("gcn", ("GCNConv", "global_mean_pool"), ()),
    "GCNConv-no-bias": ("gcn-no-bias", ("GCNConv",), ()),
    "SAGEConv": ("sage", ("SAGEConv",), ()),
    "SAGEConv-max": ("sage-max", ("SAGEConv",), ()),
    "SAGEConv-no-root": ("sage-no-root", ("SAGEConv",), ()),
    "SAGEConv-normalize": ("sage-normalize", ("SAGEConv",), ()),
    "GATConv": ("gat", ("GATConv",), ()),
    "GATConv-residual": ("gat-residual", ("GATConv",), ()),
    "GATConv-mean-heads": ("gat-mean-heads", ("GATConv",), ()),
    "GATConv-heads": ("gat-heads", ("GATConv",), ()),
    "GATConv-stream": ("gat-stream", ("GATConv",), ()),
    "GATConv-heads-stream": ("gat-heads-stream", ("GATConv",), ()),
    "GATConv-edge": ("gat-edge", ("GATConv",), ()),
    "GATv2Conv": ("gatv2", ("GATv2Conv",), ()),
    "GATv2Conv-stream": ("gatv2-stream", ("GATv2Conv",), ()),
    "GATv2Conv-mean-heads": ("gatv2-mean-heads", ("GATv2Conv",), ()),
    "GATv2Conv-edge": ("gatv2-edge", ("GATv2Conv",), ()),
    "GATv2Conv-shared-residual": ("gatv2-shared-residual", ("GATv2Conv",), ()),
    "GINConv": ("gin", ("index_add",), ("GINConv",)),
    "PNAConv": ("pna", ("scatter",), ("PNAConv",)),
    "PNAConv-towers": ("pna-towers", ("scatter",), ("PNAConv",)),
    "GraphNorm": ("graph-norm", ("GraphNorm",), ()),
    "pyg-InstanceNorm": ("graph-instance-norm", ("GraphInstanceNorm",), ()),
    "pyg-LayerNorm-graph": ("graph-layer-norm", ("GraphLayerNorm",), ()),
    "pyg-LayerNorm-node": ("node-layer-norm", ("GraphLayerNorm",), ()),
    "pyg-Linear": ("linear", ("GeometricLinear",), ()),
    "global_add_pool": ("add", ("global_add_pool",), ()),
    "global_max_pool": ("max", ("global_max_pool",), ()),
    "scatter-mean": ("scatter", ("scatter",), ()),
    "scatter-sum": ("scatter-sum", ("scatter",), ()),
    "EdgeConv": ("edge", ("scatter",), ("EdgeConv",)),
    "GINEConv-edge": ("gine-edge", ("index_add",), ("GINEConv",)),
    "GINEConv-stream-edge": ("gine-stream-edge", ("index_add",), ("GINEConv",)),
    "GraphConv": ("graphconv", ("GraphConv",), ()),
    "GraphConv-mean": ("graphconv-mean", ("GraphConv",), ()),
    "GraphConv-mixing-aggregation": ("graphconv-multi", ("GraphConv",), ()),
    "SGConv": ("sgconv", ("SGConv",), ()),
    "SGConv-cached": ("sgconv-cached", ("SGConv",), ()),
    "TAGConv": ("tagconv", ("TAGConv",), ()),
    "TAGConv-plain": ("tagconv-plain", ("TAGConv",), ()),
    "ChebConv": ("chebconv", ("ChebConv",), ()),
    "ChebConv-rw": ("chebconv-rw", ("ChebConv",), ()),
    "LEConv": ("leconv", ("LEConv",), ()),
    "ResGatedGraphConv": ("resgated", ("ResGatedGraphConv",), ()),
    "ResGatedGraphConv-no-root-relu": ("resgated-no-root-relu", ("ResGatedGraphConv",), ()),
    "ResGatedGraphConv-prelu": ("resgated-prelu", ("ResGatedGraphConv",), ()),
    "CFConv": ("cfconv", ("scatter",), ("CFConv",)),
    **{f"pyg-{kind}": (kind, (f"_{kind}",), ()) for kind in AGGREGATIONS},
}
for _kind_name, _cls in AGGREGATIONS.items():  # the targets by a name in this module
    globals()[f"_{_kind_name}"] = _cls
for _id, (_kind_name, _names, _traced) in _GRAPH_ROWS.items():
    # without torch-geometric the rows still exist (and skip), so the table reads the same
    _targets = tuple(globals()[n] if HAS_PYG and n in globals() else n for n in _names
                     if HAS_PYG or n == "index_add")
    add(f"graph-{_id}", _graph_row(_kind_name), *_targets, pyg=True, batch_sizes=None,
        traces=tuple(globals()[n] for n in _traced) if HAS_PYG else ())


if HAS_PYG:
    from torch_geometric.nn.models.attentive_fp import GATEConv

    class _Readout(nn.Module):
        """AttentiveFP's pattern: GATEConv with edge features, then a bipartite GATConv from
        the nodes to their pooled graph (one shared ``lin`` reads both node sets)."""

        def __init__(self) -> None:
            super().__init__()
            self.first = nn.Linear(D, H)
            self.gate = GATEConv(H, H, edge_dim=3)
            self.mol = GATConv(H, H, heads=2, add_self_loops=False, concat=True)
            self.last = nn.Linear(2 * H, O)

        def forward(self, x, edge_index, batch):
            h = torch.relu(self.first(x))
            edge_attr = torch.ones(edge_index.shape[1], 3)
            h = torch.relu(self.gate(h, edge_index, edge_attr)) + h
            pooled = global_add_pool(h, batch)
            to_graph = torch.stack([torch.arange(batch.shape[0]), batch])
            return self.last(self.mol((h, pooled), to_graph))

    add("graph-GATEConv-bipartite-GATConv", lambda: (_Readout(), graphs()), GATConv,
        global_add_pool, pyg=True, batch_sizes=None, traces=(GATEConv,))


# ---- third-party layers and functions (registered once their package is imported) -------------
if importlib.util.find_spec("monai") is not None:
    from monai.networks.nets import efficientnet as _efficientnet

    class _MBConv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(2, 8, 3, padding=1)
            self.block = _efficientnet.MBConvBlock(2, 8, 8, 3, 1, [6, 6], expand_ratio=2,
                                                   se_ratio=0.25, drop_connect_rate=0.3)
            self.head = nn.Conv2d(8, 1, 1)

        def forward(self, x):
            return self.head(self.block(self.stem(x)))

    add("monai-drop_connect", lambda: (_MBConv(), torch.randn(4, 2, 6, 6)),
        _efficientnet.drop_connect)

    from monai.networks.blocks.selfattention import SABlock as _SABlock

    add("monai-SABlock", lambda: (Chain(nn.Linear(D, 8), _apply, nn.Linear(8, O),
                                        m=_SABlock(8, 2, qkv_bias=True)), _randn(2, 5, D)),
        _SABlock)

if importlib.util.find_spec("neuralop") is not None and importlib.util.find_spec("tltorch"):
    if "wandb" not in sys.modules and importlib.util.find_spec("wandb") is None:
        sys.modules["wandb"] = types.ModuleType("wandb")  # neuraloperator 0.3.0 imports it
    from neuralop.layers.spectral_convolution import SpectralConv as _NeuralopSpectralConv

    class _Operator(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lift = nn.Conv2d(2, 6, 1)
            self.conv = _NeuralopSpectralConv(6, 6, (4, 4), n_layers=2)
            self.project = nn.Conv2d(6, 1, 1)

        def forward(self, x):
            h = self.lift(x)
            for i in range(2):
                h = torch.tanh(self.conv(h, i)) + h
            return self.project(h)

    add("neuralop-SpectralConv", lambda: (_Operator(), torch.randn(3, 2, 8, 8)),
        _NeuralopSpectralConv)

    class _FactorizedOperator(_Operator):
        def __init__(self, factorization: str) -> None:  # ranks gated too
            super().__init__()
            self.conv = _NeuralopSpectralConv(6, 6, (4, 4), n_layers=2, rank=0.8,
                                              factorization=factorization,
                                              implementation="factorized")

    for _factorization in ("tucker", "cp"):
        add(f"neuralop-SpectralConv-{_factorization}",
            lambda f=_factorization: (_FactorizedOperator(f), torch.randn(3, 2, 8, 8)),
            _NeuralopSpectralConv, counts=False)

if importlib.util.find_spec("einops") is not None:
    import einops as _einops

    add("einops-rearrange", lambda: conv(
        lambda s, h: _einops.rearrange(h, "b c h w -> b h w c"), last=nn.Linear(C, 2)),
        _einops.rearrange)
    add("einops-rearrange-grouped", lambda: conv(
        lambda s, h: _einops.rearrange(h, "b c ... -> b (...) c"), last=nn.Linear(C, 2)),
        _einops.rearrange)


def _checked_sizes(s, h):
    """A model's own checks on its sizes (and the guards known-value tracing writes): the
    literal channel count follows compaction."""
    if len(h.shape) != 4 or h.shape[1] != C:
        raise ValueError("unexpected input")
    assert h.size(1) == C
    return h * 2


add("size-checks", lambda: conv(_checked_sizes), builtins.len, operator.ne)


# ---- running the rows -------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every row on one thread without oneDNN (tests/conftest.py)."""


#: what each row's trace reached: row id -> (registry keys as (kind, key), layers traced through)
_REACHED: dict[str, tuple[set, set]] = {}


def _reached(sm: lumos.SparseModel, model: nn.Module) -> tuple[set, set]:
    keys = {(e.kind, e.key) for e in sm.graph_info.rules_used.values()}
    substitutes = REGISTRY.trace_forwards()
    # a layer traced through is no graph node itself, but its submodules are (called, or read
    # by a gated call)
    used = {n.target for n in sm.model.graph.nodes if n.op in ("call_module", "get_attr")}
    traced = set()
    for name, module in model.named_modules():
        if type(module) in substitutes and name not in used and any(
                str(t).startswith(f"{name}.") for t in used):
            traced.add(type(module))
    return keys, traced


def _build(row: Row) -> tuple[nn.Module, object]:
    torch.manual_seed(0)
    model, inputs = row.build()
    return model.eval(), inputs


def _param(row: Row):
    marks = []
    if row.pyg:
        marks.append(pytest.mark.skipif(not HAS_PYG, reason="needs torch-geometric"))
    if row.xfail:
        marks.append(pytest.mark.xfail(strict=True, reason=row.xfail))
    return pytest.param(row, id=row.id, marks=marks)


@pytest.mark.parametrize("row", [_param(r) for r in ROWS])
def test_op_compacts_exactly(row: Row):
    if row.pyg:
        pytest.importorskip("torch_geometric")
    model, inputs = _build(row)
    sm = lumos.sparsify(model, inputs, budget=0.5)
    reached, traced = _reached(sm, model)
    _REACHED[row.id] = (reached, traced)
    missing = [label(t) for t in row.targets if (_kind(t), t) not in reached]
    missing += [f"{cls.__name__} (substitute forward)" for cls in row.traces
                if cls not in traced]
    assert not missing, f"{row.id}: the traced graph never reached {missing}"
    assert sm.dense_params == lumos.count_params(model)
    assert sm.dense_flops == lumos.count_flops(model, inputs)
    check = assert_compacts_exactly(sm, inputs, batch_sizes=row.batch_sizes, atol=row.atol,
                                    rtol=row.rtol, check_counts=row.counts)
    if not row.counts:
        small = sm.eval().compact()
        assert lumos.count_params(small) == sm.compacted_counts()["params"]
    assert check.sparse_model is sm and len(check.states) == 3


def test_every_registered_op_and_substitute_forward_is_reached():
    """The rows together reach every registry entry registered now (the rows above fill the
    cache; a row not run in this session, e.g. deselected, is traced here)."""
    reached: set = set()
    traced: set = set()
    broken = []  # rows that no longer sparsify (their own test says why)
    for row in ROWS:
        if row.pyg and not HAS_PYG:
            continue
        if row.xfail:  # a row marked xfail for a known bug stands in for the ops it targets
            reached |= {(_kind(t), t) for t in row.targets}
        if row.id not in _REACHED:
            try:
                model, inputs = _build(row)
                _REACHED[row.id] = _reached(lumos.sparsify(model, inputs, budget=0.5), model)
            except Exception as exc:
                if not row.xfail:
                    broken.append(f"{row.id} ({type(exc).__name__}: {exc})"[:200])
                continue
        reached |= _REACHED[row.id][0]
        traced |= _REACHED[row.id][1]
    expected = {(e.kind, e.key) for e in REGISTRY.entries()}
    missing = sorted(label(key) for _, key in expected - reached)
    missing_forwards = sorted(cls.__name__ for cls in REGISTRY.trace_forwards()
                              if cls not in traced)
    assert not missing and not missing_forwards, (
        f"no conformance row reaches {len(missing)} registered op(s): {missing}; "
        f"substitute forwards never traced through: {missing_forwards}"
        + (f"; rows that fail to sparsify: {broken}" if broken else "")
    )
