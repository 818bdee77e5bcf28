"""Channel rules for ``nn.Linear`` and ``F.linear``: the model's neurons.

A Linear reads its input's channels (gated there, folded into the weight's columns) and
makes a new space of neurons (its rows and bias).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import fx, nn

from .context import RuleContext, describe
from .infos import AttrInfo, TensorInfo
from .registry import REGISTRY, register_rule
from .rule_helpers import node_arg, target_path
from .spaces import Layout


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
    return linear_like(ctx, node, node.args[0], 0, target_path(node), "weight", bias)


def _resize_linear(module: nn.Linear) -> None:
    module.out_features, module.in_features = module.weight.shape


def _linear_function(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    x = node_arg(node, 0, "input")
    w = node_arg(node, 1, "weight")
    b = node_arg(node, 2, "bias")
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
