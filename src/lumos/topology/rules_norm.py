"""Channel rules for norms whose statistics span the channels: LayerNorm, RMSNorm, GroupNorm.

A channel removed from a LayerNorm or a GroupNorm group changes the mean and variance every
other channel is normalised with, so plain slicing is not exact. What *is* exact: in the gated
model the norm reads its input through the gates (``RuleContext.stat_input``), so a closed
channel is an exact zero there; the compacted layer puts those zeros back before normalising.
It is rebuilt as plain torch (:func:`full_width_twin`, a ``GraphModule`` that reloads and
scripts without LUMOS): scale the kept channels by their gate values, scatter them
into the original width with zeros elsewhere, normalise without affine, take the kept channels
back, apply the sliced weight and bias. The norm's output channels follow its input's, and its
consumers gate them as for any channel-wise layer.

The cost is one padded normalisation per norm layer (for ``nn.LayerNorm`` one ``F.pad`` and the
fused kernel, affine included), small next to the matmuls or convolutions around it; the
parameters are those of the kept channels. A norm that keeps every channel at gate value 1
stays as it is.
"""

from __future__ import annotations

import copy
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from .context import RuleContext, describe
from .infos import TensorInfo
from .registry import REGISTRY, register_rule
from .rule_helpers import node_arg, positive_dim, target_path
from .spaces import Layout

#: ``node.meta`` key compaction sets on a norm call: ``(kept positions, their gate values,
#: channel dim)`` of the channels its statistics span (the ``StatInput`` record of its rule).
STAT_INPUT = "lumos_stat_input"


def stat_norm(ctx: RuleContext, node: fx.Node, module: nn.Module, info: TensorInfo) -> None:
    """Record a norm whose statistics span ``info``'s channels: its input gated, its ``weight``
    and ``bias`` following the channels, its compaction :func:`lower_stat_norm`."""
    owner = target_path(node)
    layout: Layout = info.layout
    layout.require_nonempty()
    ctx.stat_input(node, info.dim, layout)
    for name in ("weight", "bias"):
        if getattr(module, name, None) is not None:
            ctx.role(owner, name, 0, layout)
            ctx.param_cost(owner, name, (layout,))


def _layernorm(ctx: RuleContext, node: fx.Node, module: nn.LayerNorm | nn.RMSNorm) -> object:
    """Over the last dim only: channel statistics, exact through :func:`full_width_twin`.
    Channels tracked outside the normalised dims pass through; inside a multi-dim
    ``normalized_shape`` they are kept whole."""
    info = ctx.tensor_info(node.args[0])
    if info is None:
        return None
    k = len(module.normalized_shape)
    if -info.dim > k:
        return TensorInfo(info.dim, info.layout)
    if k == 1 and info.dim == -1:
        stat_norm(ctx, node, module, info)
        return TensorInfo(info.dim, info.layout)
    reason = (f"{describe(node)} normalises over the channels and other dims together "
              f"(normalized_shape={tuple(module.normalized_shape)}): kept whole")
    ctx.pin(info, reason)
    ctx.ungated(describe(node), reason)
    return TensorInfo(info.dim, info.layout)


def _groupnorm(ctx: RuleContext, node: fx.Node, module: nn.GroupNorm) -> object:
    """One group per channel is channel-wise; larger groups go through :func:`full_width_twin`."""
    info = ctx.tensor_info(node.args[0])
    if info is None:
        return None
    shape = ctx.shape(node.args[0])
    if shape is None or len(shape) < 2 or positive_dim(info.dim, len(shape)) != 1:
        ctx.pin(info, f"{describe(node)} does not read the tracked dim as channels")
        return None
    if module.num_groups == module.num_channels:
        owner = target_path(node)
        info.layout.require_nonempty()
        for name in ("weight", "bias"):
            if getattr(module, name, None) is not None:
                ctx.role(owner, name, 0, info.layout)
                ctx.param_cost(owner, name, (info.layout,))
    else:
        stat_norm(ctx, node, module, info)
    return TensorInfo(info.dim, info.layout)


def _resize_groupnorm(module: nn.GroupNorm) -> None:
    # a GroupNorm with larger groups is rebuilt by ``lower`` from its original sizes
    if module.weight is not None and module.num_groups == module.num_channels:
        module.num_channels = module.num_groups = module.weight.shape[0]


def full_width_inner(module: nn.Module) -> nn.Module:
    """The norm at its original width without its affine parameters (the twin applies the
    sliced ones): a fresh ``nn.LayerNorm``/``nn.GroupNorm``, else a copy of the layer with
    ``weight`` and ``bias`` set to None (torch-geometric's ``LayerNorm`` checks for None)."""
    if isinstance(module, nn.LayerNorm):
        return nn.LayerNorm(module.normalized_shape, eps=module.eps, elementwise_affine=False)
    if isinstance(module, nn.GroupNorm):
        return nn.GroupNorm(module.num_groups, module.num_channels, eps=module.eps,
                            affine=False)
    inner = copy.copy(module)  # shallow: its own parameter dicts, nothing else shared
    inner._parameters = dict(module._parameters)
    inner._buffers = dict(module._buffers)
    inner._modules = dict(module._modules)
    for name in ("weight", "bias"):
        if name in inner._parameters:
            inner._parameters[name] = None
    return inner


def full_width_twin(module: nn.Module, node: fx.Node, kept: torch.Tensor, scale: torch.Tensor,
                    dim: int) -> fx.GraphModule:
    """A GraphModule equal to ``module`` (weight and bias already sliced to ``kept``) on the
    kept channels of an input whose closed channels were zeros: scale by the gate values (when
    one is not 1), put the zeros back, normalise at full width, take the kept channels, apply
    the affine. Built node by node, taking the same arguments as ``node``'s call (the batch
    vector of a graph norm, ...), so it needs nothing of LUMOS to run or reload.

    LayerNorms (statistics over the whole last dim, blind to the order of its channels) get
    the zeros appended by one ``F.pad`` and keep the first channels by a view; a plain
    ``nn.LayerNorm`` also keeps its fused affine (the sliced weight and bias padded with zeros).
    GroupNorm puts each zero back in its own group with one ``index_select``.
    """
    root = nn.Module()
    width = _full_width(module)
    closed = width - len(kept)
    weight, bias = module._parameters.get("weight"), module._parameters.get("bias")
    trailing = [1] * (-dim - 1)
    dtype = weight.dtype if weight is not None else torch.get_default_dtype()
    for name, param in (("weight", weight), ("bias", bias)):
        if param is not None:
            root.register_parameter(name, param)
    g = fx.Graph()
    x = g.placeholder("x")
    extras = [g.placeholder(f"arg{i}") for i in range(1, len(node.args))]
    kw: dict[str, fx.node.Argument] = {k: g.placeholder(k) for k in node.kwargs}
    if not bool((scale == 1).all()):
        root.register_buffer("scale", scale.to(dtype).view(-1, *trailing).clone())
        x = g.call_function(operator.mul, (x, g.get_attr("scale")))
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):  # one fused kernel, affine included
        padded = g.call_function(F.pad, (x, (0, closed)))
        affine = [g.call_function(F.pad, (g.get_attr(name), (0, closed))) if p is not None
                  else None for name, p in (("weight", weight), ("bias", bias))]
        if isinstance(module, nn.RMSNorm):
            y = g.call_function(F.rms_norm, (padded, (width,), affine[0], module.eps))
        else:
            y = g.call_function(F.layer_norm, (padded, (width,), *affine, module.eps))
        g.output(g.call_method("narrow", (y, -1, 0, len(kept))))
        return _graph_module(root, g, module)
    root.inner = full_width_inner(module)
    root.inner.train(module.training)
    if isinstance(module, nn.GroupNorm):  # each zero back in its own group
        gather = torch.full((width,), len(kept), dtype=torch.long, device=kept.device)
        gather[kept] = torch.arange(len(kept), device=kept.device)
        root.register_buffer("gather", gather)
        root.register_buffer("kept", kept.clone())
        zero = g.call_function(torch.zeros_like, (g.call_method("narrow", (x, dim, 0, 1)),))
        padded = g.call_method("index_select", (g.call_function(torch.cat, ([x, zero], dim)),
                                                dim, g.get_attr("gather")))
        y = g.call_module("inner", (padded, *extras), kw)
        y = g.call_method("index_select", (y, dim, g.get_attr("kept")))
    else:  # statistics over the last dim, in any order: zeros appended
        padded = g.call_function(F.pad, (x, (0, closed)))
        y = g.call_module("inner", (padded, *extras), kw)
        y = g.call_method("narrow", (y, -1, 0, len(kept)))
    for name, op, param in (("weight", operator.mul, weight), ("bias", operator.add, bias)):
        if param is not None:
            y = g.call_function(op, (y, g.call_method("view", (g.get_attr(name),
                                                                 [-1, *trailing]))))
    g.output(y)
    return _graph_module(root, g, module)


def _graph_module(root: nn.Module, g: fx.Graph, module: nn.Module) -> fx.GraphModule:
    twin = fx.GraphModule(root, g, class_name=f"Pruned{type(module).__name__}")
    twin.train(module.training)
    return twin


def _full_width(module: nn.Module) -> int:
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        return int(module.normalized_shape[0])
    return int(getattr(module, "in_channels"))  # noqa: B009 (torch-geometric's LayerNorm)


def lower_stat_norm(module: nn.Module, node: fx.Node) -> nn.Module | None:
    """After slicing: the norm's plain-torch twin when its statistics span gated channels."""
    stat = node.meta.get(STAT_INPUT)
    if stat is None:
        return None
    kept, scale, dim = stat
    if len(kept) == _full_width(module) and bool((scale == 1).all()):
        return None  # every channel kept at gate value 1: the layer as it is
    return full_width_twin(module, node, kept, scale, dim)


def _layer_norm_function(
    ctx: RuleContext, node: fx.Node, module: nn.Module | None = None
) -> object:
    """``F.layer_norm`` in a forward: no layer to rebuild, so channels it normalises over are
    kept whole (``nn.LayerNorm`` is exact)."""
    info = ctx.tensor_info(node.args[0])
    if info is None:
        return None
    shape = node_arg(node, 1, "normalized_shape")
    k = len(shape) if isinstance(shape, (tuple, list)) else 1
    if -info.dim <= k:
        ctx.pin(info, f"{describe(node)} normalises over the channels")
    for a in list(node.args[2:]) + [node.kwargs.get("weight"), node.kwargs.get("bias")]:
        if isinstance(a, fx.Node) and ctx.info(a) is not None and -info.dim <= k:
            ctx.pin(ctx.info(a), f"{describe(node)} normalises over the channels")
    return TensorInfo(info.dim, info.layout)


register_rule(nn.GroupNorm, _groupnorm, resize=_resize_groupnorm, lower=lower_stat_norm)
register_rule(nn.LayerNorm, _layernorm, lower=lower_stat_norm)
register_rule(nn.RMSNorm, _layernorm, lower=lower_stat_norm)
REGISTRY.register(F.layer_norm, _layer_norm_function)
