"""Ready-made rules for user layers: ``lumos.register_rule(MyLayer, lumos.rules.dense())``.

Three shapes cover most custom layers; for anything else write ``propagate(ctx, node, module)``
against :class:`~lumos.topology.analysis.RuleContext` (see ``docs/custom_layers.md``).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import fx, nn

from .context import RuleContext, describe
from .infos import TensorInfo
from .rule_helpers import known_shape, positive_dim, target_path
from .rules_linear import linear_like

Propagate = Callable[[RuleContext, fx.Node, nn.Module], object]


def dense(weight: str = "weight", bias: str | None = "bias") -> Propagate:
    """A layer computing ``x @ W.T + b`` over the last dim, ``W`` of shape ``(out, in)``.

    Its input channels are gated and folded into ``W``'s columns, its outputs are a new group.
    Pair it with a ``resize`` hook that updates the layer's own size attributes.
    """

    def propagate(ctx: RuleContext, node: fx.Node, module: nn.Module) -> object:
        b = bias if bias is not None and getattr(module, bias, None) is not None else None
        return linear_like(ctx, node, node.args[0], 0, target_path(node), weight, b)

    return propagate


def channelwise(*params: str, channel_dim: int = -1) -> Propagate:
    """A layer that treats every channel on its own (activation, per-channel scale or shift).

    ``params`` are per-channel parameters/buffers of shape ``(channels,)`` that follow the
    channels; ``channel_dim`` is where the input holds them (``1`` for ``(N, C, H, W)``).
    """

    def propagate(ctx: RuleContext, node: fx.Node, module: nn.Module) -> object:
        x = node.args[0] if node.args else next(iter(node.kwargs.values()))
        info = ctx.tensor_info(x)
        if info is None:
            return None
        ndim = len(known_shape(ctx, x))
        if positive_dim(info.dim, ndim) != positive_dim(channel_dim, ndim):
            ctx.pin(info, f"{describe(node)} does not act on the tracked dim channel-wise")
            return None
        for name in params:
            if getattr(module, name, None) is not None:
                owner = target_path(node)
                ctx.role(owner, name, 0, info.layout)
                ctx.param_cost(owner, name, (info.layout,))
        return TensorInfo(info.dim, info.layout)

    return propagate


def keep_whole(ctx: RuleContext, node: fx.Node, module: nn.Module) -> object:
    """A layer LUMOS must not look inside: the channels reaching it are kept whole, its FLOPs
    are measured on the example inputs, and ``report()`` lists it."""
    reason = f"{describe(node)} is registered as kept whole"
    infos = [ctx.info(a) for a in (*node.args, *node.kwargs.values())]
    ctx.pin(infos, reason)
    ctx.ungated(describe(node), reason)
    ctx.measure_flops(node)
    return None
