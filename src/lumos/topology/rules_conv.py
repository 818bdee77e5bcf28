"""Channel rules for convolutional models: conv, transposed conv, batch and instance norms,
pooling, resampling, padding, and LUMOS's Fourier layers (LayerNorm, GroupNorm:
``rules_norm``).

Channels of a conv input live at dim ``-(spatial dims + 1)`` (``(N, C, *spatial)`` or the
unbatched ``(C, *spatial)``); a rule that sees the tracked dim elsewhere pins it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch.nn.functional as F
from torch import fx, nn

from ..layers import SpectralConv1d, SpectralConv2d, frequencies_present
from .context import RuleContext, describe
from .infos import TensorInfo, TupleInfo
from .registry import REGISTRY, register_rule
from .rule_helpers import node_arg, positive_dim, target_path
from .rules_elementwise import elementwise_module, elementwise_pair, unary
from .spaces import Layout


def _channel_info(ctx: RuleContext, node: fx.Node, x, channel_dim: int) -> TensorInfo | None:
    """The input's info if its tracked dim is the channel dim; else pin it and return None."""
    info = ctx.tensor_info(x)
    if info is None:
        return None
    shape = ctx.shape(x)
    if shape is None or positive_dim(info.dim, len(shape)) != positive_dim(channel_dim, len(shape)):
        ctx.pin(info, f"{describe(node)} does not read the tracked dim as channels")
        return None
    return info


# ---- convolutions -----------------------------------------------------------------------------
def _conv(ctx: RuleContext, node: fx.Node, module: nn.modules.conv._ConvNd) -> object:
    """Conv/ConvTranspose: a Linear over channels at every output position.

    ``groups == 1``: input channels are read (gated, folded into the weight), output channels
    are a new space. Depthwise (``groups == in_channels``, ``out = m * in``): channel-wise with
    ``m`` outputs per input channel, so the output shares the input's channels (block ``m``) and
    consumers gate them. Other grouped convs cannot lose channels exactly: kept whole.
    """
    nd = len(module.kernel_size)
    cdim = -(nd + 1)
    owner = target_path(node)
    x = node.args[0] if node.args else node.kwargs.get("input")
    transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
    w_in, w_out = (0, 1) if transposed else (1, 0)
    info = _channel_info(ctx, node, x, cdim)
    c_in, c_out, groups = module.in_channels, module.out_channels, module.groups
    out_shape = ctx.shape(node)
    has_bias = module.bias is not None
    if groups == 1:
        if info is not None:
            in_layout = info.layout
            ctx.site(node, 0, cdim, in_layout)
        else:
            in_layout = ctx.opaque(c_in, "input is not tracked", f"{owner}.in")
        out_layout = Layout.of(ctx.new_space(c_out, "channel", owner))
        ctx.role(owner, "weight", w_in, in_layout, fold=True)
        ctx.role(owner, "weight", w_out, out_layout)
        ctx.param_cost(owner, "weight", (in_layout, out_layout))
        factors: tuple[Layout, ...] = (in_layout, out_layout)
    elif groups == c_in and c_out % c_in == 0 and info is not None:
        mult = c_out // c_in
        in_layout = info.layout
        out_layout = in_layout.with_block(mult)
        # weight dim 0 (conv: C*m outputs; transposed: C inputs) follows the channels, no
        # fold: the layer is channel-wise and its consumers gate.
        row_layout = in_layout if transposed else out_layout
        ctx.role(owner, "weight", 0, row_layout)
        ctx.param_cost(owner, "weight", (row_layout,))
        factors = (row_layout,)
    else:
        if info is not None:
            ctx.pin(info, f"{describe(node)} is a grouped conv (groups={groups})")
        ctx.ungated(describe(node), f"grouped conv with groups={groups} is kept whole")
        out_layout = ctx.opaque(c_out, "grouped conv output", f"{owner}.out")
        factors = ()
    if has_bias:
        ctx.role(owner, "bias", 0, out_layout)
        ctx.param_cost(owner, "bias", (out_layout,))
    if info is not None:
        info.layout.require_nonempty()  # torch convs cannot have 0 channels
    out_layout.require_nonempty()
    # torch's FlopCounterMode: 2 * batch * prod(weight.shape) * prod(spatial of the output for
    # a conv, of the input for a transposed conv).
    weight = module.weight
    per_weight = 2 * math.prod(weight.shape[2:])
    spatial = ctx.shape(x) if transposed else out_shape
    n_spatial = math.prod(spatial[-nd:]) if spatial else 0
    batch = math.prod(spatial[:-nd - 1]) if spatial and len(spatial) > nd + 1 else 1
    if factors == ():
        ctx.cost("flops", per_weight * batch * n_spatial * weight.shape[0] * weight.shape[1], (),
                 owner)
    elif groups == 1:
        ctx.cost("flops", per_weight * batch * n_spatial, factors, owner)
    else:  # depthwise: weight.shape[1] (or [0] transposed) == per-group width
        per_group = weight.shape[1]
        ctx.cost("flops", per_weight * batch * n_spatial * per_group, factors, owner)
    return TensorInfo(cdim, out_layout)


def _resize_conv(module: nn.modules.conv._ConvNd) -> None:
    transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
    w = module.weight
    if module.groups == 1:
        if transposed:
            module.in_channels, module.out_channels = w.shape[0], w.shape[1]
        else:
            module.out_channels, module.in_channels = w.shape[0], w.shape[1]
        return
    if module.groups != module.in_channels:
        return  # other grouped convs are kept whole
    # depthwise: the channel count follows the sliced rows; the multiplier is unchanged
    mult = module.out_channels // module.in_channels
    rows = w.shape[0]
    channels = rows if transposed else rows // mult
    module.in_channels = channels
    module.out_channels = channels * mult
    module.groups = channels


_cls: type[nn.Module]
for _cls in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
             nn.ConvTranspose3d):
    register_rule(_cls, _conv, resize=_resize_conv, input_dim=1)


# ---- norms ------------------------------------------------------------------------------------
def channelwise_params(ctx: RuleContext, node: fx.Node, module: nn.Module, layout: Layout,
                       names: tuple[str, ...]) -> None:
    """Per-channel parameters and buffers follow the channels (no fold: consumers gate)."""
    owner = target_path(node)
    layout.require_nonempty()
    for name in names:
        if getattr(module, name, None) is not None:
            ctx.role(owner, name, 0, layout)
            ctx.param_cost(owner, name, (layout,))


def _batchnorm(ctx: RuleContext, node: fx.Node, module: nn.modules.batchnorm._BatchNorm):
    info = _channel_info(ctx, node, node.args[0], _batch_channel_dim(ctx, node.args[0]))
    if info is None:
        return None
    channelwise_params(ctx, node, module, info.layout,
                       ("weight", "bias", "running_mean", "running_var"))
    return TensorInfo(info.dim, info.layout)


def _batch_channel_dim(ctx: RuleContext, x) -> int:
    """Norms and resampling take (N, C, ...): the channel dim is 1."""
    shape = ctx.shape(x)
    return 1 - len(shape) if shape else 1


def _resize_batchnorm(module: nn.modules.batchnorm._NormBase) -> None:
    for name in ("weight", "running_mean"):
        t = getattr(module, name, None)
        if t is not None:
            module.num_features = t.shape[0]
            return


def _instancenorm(ctx: RuleContext, node: fx.Node, module: nn.modules.instancenorm._InstanceNorm):
    shape = ctx.shape(node.args[0])
    nd = {nn.InstanceNorm1d: 1, nn.InstanceNorm2d: 2, nn.InstanceNorm3d: 3}[type(module)]
    cdim = -(nd + 1)
    info = _channel_info(ctx, node, node.args[0], cdim) if shape else None
    if info is None:
        return None
    channelwise_params(ctx, node, module, info.layout,
                       ("weight", "bias", "running_mean", "running_var"))
    return TensorInfo(info.dim, info.layout)


register_rule(nn.BatchNorm1d, _batchnorm, resize=_resize_batchnorm, input_dim=1)
register_rule(nn.BatchNorm2d, _batchnorm, resize=_resize_batchnorm, input_dim=1)
register_rule(nn.BatchNorm3d, _batchnorm, resize=_resize_batchnorm, input_dim=1)
for _cls in (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d):
    register_rule(_cls, _instancenorm, resize=_resize_batchnorm)


def _batchnorm_act(ctx: RuleContext, node: fx.Node, module: nn.BatchNorm2d) -> object:
    """timm's ``BatchNormAct2d`` (every timm CNN's norm): BatchNorm, then its ``drop`` and
    ``act`` children. Its channels follow as BatchNorm's when those two treat each element
    alone (a parameter-free activation or dropout with an elementwise rule); any other child
    keeps the channels whole, since the compacted layer still runs it."""
    x = node.args[0]
    odd = [f"{name} {type(child).__name__}" for name, child in module.named_children()
           if not elementwise_module(child)]
    if odd:
        info = ctx.tensor_info(x)
        if info is None:
            return None
        return ctx.kept_whole(node, info, odd, module.num_features, info.dim)
    return _batchnorm(ctx, node, module)


REGISTRY.register_when_imported("timm.layers.norm_act", "BatchNormAct2d", _batchnorm_act,
                                resize=_resize_batchnorm, input_dim=1)


# ---- pooling, resampling, padding ---------------------------------------------------------------
def _spatial_passthrough(nd: int | None):
    """Ops that act on the trailing ``nd`` spatial dims only (``None``: all dims after 1)."""

    def rule(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
        x = node.args[0] if node.args else node.kwargs.get("input")
        cdim = -(nd + 1) if nd is not None else _batch_channel_dim(ctx, x)
        info = _channel_info(ctx, node, x, cdim)
        if info is None:
            return None
        info.layout.require_nonempty()
        if isinstance(node.meta.get("tensor_meta"), (tuple, list)) and not hasattr(
            node.meta["tensor_meta"], "shape"
        ):  # pools with return_indices give (values, indices): both keep the channels
            return TupleInfo([TensorInfo(info.dim, info.layout)] * 2)
        return TensorInfo(info.dim, info.layout)

    return rule


_POOLS = {
    1: (nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d, nn.LPPool1d),
    2: (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d,
        nn.FractionalMaxPool2d),
    3: (nn.MaxPool3d, nn.AvgPool3d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d),
}
_POOL_FUNCTIONS = {
    1: (F.max_pool1d, F.avg_pool1d, F.adaptive_avg_pool1d, F.adaptive_max_pool1d),
    2: (F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d),
    3: (F.max_pool3d, F.avg_pool3d, F.adaptive_avg_pool3d, F.adaptive_max_pool3d),
}
_f: Callable[..., Any]
for _nd, _classes in _POOLS.items():
    for _cls in _classes:
        register_rule(_cls, _spatial_passthrough(_nd))
    for _f in _POOL_FUNCTIONS[_nd]:
        REGISTRY.register(_f, _spatial_passthrough(_nd))
register_rule(nn.Upsample, _spatial_passthrough(None))
register_rule(nn.UpsamplingNearest2d, _spatial_passthrough(2))
register_rule(nn.UpsamplingBilinear2d, _spatial_passthrough(2))
REGISTRY.register(F.interpolate, _spatial_passthrough(None))
REGISTRY.register(F.upsample, _spatial_passthrough(None))
for _cls in (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d):
    register_rule(_cls, _spatial_passthrough(None))
for _f in (F.dropout1d, F.dropout2d, F.dropout3d):
    REGISTRY.register(_f, _spatial_passthrough(None))


def _pad(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    x = node.args[0] if node.args else node.kwargs.get("input")
    info = ctx.tensor_info(x)
    if info is None:
        return None
    pad = node_arg(node, 1, "pad")
    if not isinstance(pad, (tuple, list)) or any(isinstance(p, fx.Node) for p in pad):
        ctx.unknown(node)
        return None
    if -info.dim <= len(pad) // 2:
        info.layout.pin(f"{describe(node)} pads the channel dim")
        return None
    info.layout.require_nonempty()
    return TensorInfo(info.dim, info.layout)


def _pad_module(
    ctx: RuleContext,
    node: fx.Node,
    module: (nn.modules.padding._ConstantPadNd | nn.modules.padding._ReflectionPadNd
             | nn.modules.padding._ReplicationPadNd | nn.modules.padding._CircularPadNd),
) -> object:
    info = ctx.tensor_info(node.args[0])
    if info is None:
        return None
    if -info.dim <= len(module.padding) // 2:
        info.layout.pin(f"{describe(node)} pads the channel dim")
        return None
    info.layout.require_nonempty()
    return TensorInfo(info.dim, info.layout)


REGISTRY.register(F.pad, _pad)
for _cls in (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d,
             nn.ConstantPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d,
             nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d, nn.CircularPad1d,
             nn.CircularPad2d, nn.CircularPad3d):
    register_rule(_cls, _pad_module)


def _prelu(ctx: RuleContext, node: fx.Node, module: nn.PReLU) -> object:
    """PReLU with one slope per channel (dim 1) follows the channels; a shared slope is unary."""
    if module.num_parameters == 1:
        return unary(ctx, node)
    x = node.args[0]
    info = _channel_info(ctx, node, x, _batch_channel_dim(ctx, x))
    if info is None:
        return None
    channelwise_params(ctx, node, module, info.layout, ("weight",))
    return TensorInfo(info.dim, info.layout)


register_rule(nn.PReLU, _prelu)


REGISTRY.register("masked_fill", elementwise_pair)


# ---- Fourier layers ---------------------------------------------------------------------------
def _spectral(ctx: RuleContext, node: fx.Node, module: SpectralConv1d | SpectralConv2d) -> object:
    """FNO spectral conv: per kept mode a complex Linear over channels; FFTs are channel-wise.

    Input channels are read (gated, folded into weight dim 0), output channels are a new space.
    Its Fourier modes are units too: one per frequency along each axis (1-D: the modes; 2-D:
    the rows of each corner and the columns both corners share), gated by scaling the weight's
    slices and cut with the layer's frequency buffers, so a compacted layer applies each kept
    weight to its own frequency. Modes the example's resolution does not reach are kept whole
    (their weight is unused there, so no gate could learn them).
    """
    nd = 1 if isinstance(module, SpectralConv1d) else 2
    cdim = -(nd + 1)
    owner = target_path(node)
    x = node.args[0]
    info = _channel_info(ctx, node, x, cdim)
    if info is not None:
        in_layout = info.layout
        ctx.site(node, 0, cdim, in_layout)
    else:
        in_layout = ctx.opaque(module.in_channels, "input is not tracked", f"{owner}.in")
    out_layout = Layout.of(ctx.new_space(module.out_channels, "channel", owner))
    in_layout.require_nonempty()
    out_layout.require_nonempty()
    shape = ctx.shape(x)
    batch = math.prod(shape[:cdim]) if shape and len(shape) > nd + 1 else 1
    layouts: dict[str, Layout] = {}  # per frequency buffer (2-D: both corners share columns)
    for name, axes in _mode_axes(module).items():
        ctx.role(owner, name, 0, in_layout, fold=True)
        ctx.role(owner, name, 1, out_layout)
        modes = []
        for dim, (buffer, signed, axis) in enumerate(axes, start=2):
            if buffer not in layouts:
                layouts[buffer] = _mode_layout(ctx, owner, buffer, shape, signed, axis)
            layout = layouts[buffer]
            if layout.segments[0].space.pinned is None:
                # a 2-D layer's corner rows are one of two parallel parts; its columns cut
                ctx.param_site(owner, name, dim, layout, cuts=not signed)
                ctx.role(owner, buffer, 0, layout)
            modes.append(layout)
        ctx.param_cost(owner, name, (in_layout, out_layout, *modes))
        # the mode-wise product is a batched complex matmul: 2 * modes * batch * in * out
        used = [_used(ctx.attr(owner, buf), shape, signed, axis) for buf, signed, axis in axes]
        if all(u == m.length for u, m in zip(used, modes)):
            ctx.cost("flops", 2 * batch, (in_layout, out_layout, *modes), f"{owner}.{name}")
        else:
            ctx.cost("flops", 2 * batch * math.prod(used), (in_layout, out_layout),
                     f"{owner}.{name}")
    return TensorInfo(cdim, out_layout)


def _mode_axes(module: SpectralConv1d | SpectralConv2d) -> dict[str, tuple]:
    """Per complex weight, its mode dims (2, 3, ...): (frequency buffer, signed, input axis
    from the end)."""
    if isinstance(module, SpectralConv1d):
        return {"weight": (("freqs", False, -1),)}
    cols = ("col_freqs", False, -1)
    return {"weight1": (("freqs1", True, -2), cols), "weight2": (("freqs2", True, -2), cols)}


def _used(freqs, shape, signed: bool, axis: int) -> int:
    """How many of ``freqs`` the example's FFT holds along ``axis`` (rfft on the last)."""
    if shape is None:
        return freqs.numel()
    n = shape[axis] if signed else shape[axis] // 2 + 1
    return int(frequencies_present(freqs, n, signed).sum())


def _mode_layout(ctx: RuleContext, owner: str, buffer: str, shape, signed: bool,
                 axis: int) -> Layout:
    """The units of one frequency buffer: a mode space, pinned when the example's resolution
    does not reach every frequency in it."""
    origin = f"{owner}.{buffer}"
    freqs = ctx.attr(owner, buffer)
    space = ctx.new_space(freqs.numel(), "mode", origin)
    used = _used(freqs, shape, signed, axis)
    if used < freqs.numel():
        space.pin(f"the example's resolution holds {used} of {origin}'s {freqs.numel()} "
                  "Fourier modes: modes are gated only when the example reaches them all")
    return Layout.of(space)


def _resize_spectral(module: SpectralConv1d | SpectralConv2d) -> None:
    w = module.weight if isinstance(module, SpectralConv1d) else module.weight1
    module.in_channels, module.out_channels = w.shape[0], w.shape[1]
    if isinstance(module, SpectralConv1d):
        module.modes = module.freqs.numel()
    else:
        module.modes1 = max(module.freqs1.numel(), module.freqs2.numel())
        module.modes2 = module.col_freqs.numel()
    module.refresh()


register_rule(SpectralConv1d, _spectral, resize=_resize_spectral, input_dim=1)
register_rule(SpectralConv2d, _spectral, resize=_resize_spectral, input_dim=1)
