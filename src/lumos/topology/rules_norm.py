"""Channel rules for norms whose statistics span the channels: LayerNorm and GroupNorm.

A channel removed from a LayerNorm or a GroupNorm group changes the mean and variance every
other channel is normalised with, so plain slicing is not exact. What *is* exact: in the gated
model the norm reads its input through the gates (``RuleContext.stat_input``), so a closed
channel is an exact zero there; the compacted layer puts those zeros back before normalising.
It is rebuilt as plain torch (:class:`_FullWidthNorm`, traced to a ``GraphModule`` that
reloads and scripts without LUMOS): scale the kept channels by their gate values, scatter them
into the original width with zeros elsewhere, normalise without affine, take the kept channels
back, apply the sliced weight and bias. The norm's output channels follow its input's, and its
consumers gate them as for any channel-wise layer.

The cost is one full-width normalisation per norm layer, which is small next to the matmuls or
convolutions around it; the parameters are those of the kept channels.
"""

from __future__ import annotations

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


def _stat_norm(ctx: RuleContext, node: fx.Node, module: nn.Module, info: TensorInfo) -> None:
    owner = target_path(node)
    layout: Layout = info.layout
    layout.require_nonempty()
    ctx.stat_input(node, info.dim, layout)
    for name in ("weight", "bias"):
        if getattr(module, name, None) is not None:
            ctx.role(owner, name, 0, layout)
            ctx.param_cost(owner, name, (layout,))


def _layernorm(ctx: RuleContext, node: fx.Node, module: nn.LayerNorm) -> object:
    """Over the last dim only: channel statistics, exact through :class:`_FullWidthNorm`.
    Channels tracked outside the normalised dims pass through; inside a multi-dim
    ``normalized_shape`` they are kept whole."""
    info = ctx.tensor_info(node.args[0])
    if info is None:
        return None
    k = len(module.normalized_shape)
    if -info.dim > k:
        return TensorInfo(info.dim, info.layout)
    if k == 1 and info.dim == -1:
        _stat_norm(ctx, node, module, info)
        return TensorInfo(info.dim, info.layout)
    reason = (f"{describe(node)} normalises over the channels and other dims together "
              f"(normalized_shape={tuple(module.normalized_shape)}): kept whole")
    ctx.pin(info, reason)
    ctx.ungated(describe(node), reason)
    return TensorInfo(info.dim, info.layout)


def _groupnorm(ctx: RuleContext, node: fx.Node, module: nn.GroupNorm) -> object:
    """One group per channel is channel-wise; larger groups go through :class:`_FullWidthNorm`."""
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
        _stat_norm(ctx, node, module, info)
    return TensorInfo(info.dim, info.layout)


def _resize_groupnorm(module: nn.GroupNorm) -> None:
    # a GroupNorm with larger groups is rebuilt by ``lower`` from its original sizes
    if module.weight is not None and module.num_groups == module.num_channels:
        module.num_channels = module.num_groups = module.weight.shape[0]


class _FullWidthNorm(nn.Module):
    """A LayerNorm/GroupNorm on a subset of its channels, statistics over the original width.

    Traced into a GraphModule at compaction, so the branches below are baked into the code.
    """

    def __init__(self, norm: nn.LayerNorm | nn.GroupNorm, kept: torch.Tensor,
                 scale: torch.Tensor, dim: int) -> None:
        super().__init__()
        self.is_group = isinstance(norm, nn.GroupNorm)
        if isinstance(norm, nn.GroupNorm):
            self.width, self.num_groups = norm.num_channels, norm.num_groups
        else:
            self.width, self.num_groups = int(norm.normalized_shape[0]), 1
        self.eps = norm.eps
        self.dim = dim
        device = kept.device
        gather = torch.full((self.width,), len(kept), dtype=torch.long, device=device)
        gather[kept] = torch.arange(len(kept), device=device)
        trailing = [1] * (-dim - 1)
        ref = norm.weight if norm.weight is not None else None
        dtype = ref.dtype if ref is not None else torch.get_default_dtype()
        self.register_buffer("gather", gather)
        self.register_buffer("kept", kept.clone())
        self.register_buffer("scale", scale.to(dtype).view(-1, *trailing).clone())
        self.weight = norm.weight  # already sliced to the kept channels by compaction
        self.bias = norm.bias
        self.affine_shape = [-1, *trailing]

    def forward(self, x):
        x = x * self.scale
        zero = torch.zeros_like(x.narrow(self.dim, 0, 1))
        full = torch.cat([x, zero], self.dim).index_select(self.dim, self.gather)
        if self.is_group:
            y = F.group_norm(full, self.num_groups, None, None, self.eps)
        else:
            y = F.layer_norm(full, (self.width,), None, None, self.eps)
        y = y.index_select(self.dim, self.kept)
        if self.weight is not None:
            y = y * self.weight.view(self.affine_shape)
        if self.bias is not None:
            y = y + self.bias.view(self.affine_shape)
        return y


def lower_stat_norm(module: nn.LayerNorm | nn.GroupNorm, node: fx.Node) -> nn.Module | None:
    """After slicing: the norm's plain-torch twin when its statistics span gated channels."""
    stat = node.meta.get(STAT_INPUT)
    if stat is None:
        return None
    kept, scale, dim = stat
    twin = _FullWidthNorm(module, kept, scale, dim)
    traced = fx.symbolic_trace(twin)
    traced.train(module.training)
    return traced


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
REGISTRY.register(F.layer_norm, _layer_norm_function)
