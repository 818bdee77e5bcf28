"""Channel rules for neuraloperator's ``SpectralConv`` (the layer of its FNO, TFNO and UNO).

A spectral conv is, per kept Fourier mode, a complex Linear over channels; the FFTs around it
are channel-wise. Its weight is a tltorch factorized tensor per layer (``n_layers`` layers share
one module, called with a layer index), stored as real parameters with a trailing (real, imag)
dim of 2:

- dense (``ComplexDenseTensor``): ``weight.{i}.tensor`` of shape ``(in, out, *modes, 2)``;
- Tucker and CP (``ComplexTuckerTensor``, ``ComplexCPTensor``): the rows of
  ``weight.{i}.factors.factor_0`` are the input channels, of ``factor_1`` the output channels.
  Their *ranks* are units too, most of such a layer's size: Tucker's rank ``k`` is a column
  of ``factor_k`` and a slice of the core along dim ``k`` (one space per factor), CP's rank a
  column of every factor and an entry of ``weights`` (one space). The gate scales the core
  (the CP weights), compaction cuts the closed slices and columns, and tltorch's ``rank``
  follows;

Input channels are read (gated, folded into the rows that read them: the gate is real, the
contraction linear), output channels are a new space shared by every layer of the module (one
``in_channels``/``out_channels`` attribute holds them all, so all layers keep the same ones).
A jointly factorized weight, a tensor-train weight, ``separable=True`` (whose forward fails in
neuraloperator 0.3.0, so it cannot be checked) or a layer index computed at run time keep the
layer whole. Its Fourier modes are not units: its forward slices a centred window of
``n_modes``, so only a nested cut (outermost modes first) would compact exactly, which
independent gates cannot promise; ``report()`` says so. Registered when ``neuralop`` is
imported: LUMOS does not import it itself.
"""

from __future__ import annotations

import math
from typing import Any

from torch import fx, nn

from .context import RuleContext, describe
from .infos import TensorInfo
from .registry import REGISTRY
from .rule_helpers import node_arg, positive_dim, stored_tensor, target_path
from .spaces import Layout

#: why this layer's Fourier modes are not units (its channels and ranks are)
MODES_KEPT = ("its Fourier modes are kept: neuraloperator's forward slices a centred window "
              "of modes, so only nested cuts would be exact (lumos.layers.SpectralConv1d/2d "
              "gate their modes); its channels and ranks are gated")


def _weight_rows(weight: nn.Module) -> tuple[str, str, str] | None:
    """(sub-path, input-rows parameter, output-rows parameter) of one layer's weight, or None."""
    kind = type(weight).__name__
    if hasattr(weight, "tensor") and "Dense" in kind:
        return "", "tensor", "tensor"
    if ("Tucker" in kind or "CP" in kind) and hasattr(weight, "factors"):
        return "factors", "factor_0", "factor_1"
    return None


def _spectral_conv(ctx: RuleContext, node: fx.Node, module: Any) -> object:
    owner = target_path(node)
    order = len(module.n_modes)
    cdim = -(order + 1)
    x = node.args[0] if node.args else node.kwargs.get("x")
    index = node_arg(node, 1, "indices", 0)
    info = ctx.tensor_info(x)
    shape = ctx.shape(x)
    if info is not None and (shape is None or positive_dim(info.dim, len(shape)) != 1):
        ctx.pin(info, f"{describe(node)} does not read the tracked dim as channels")
        info = None
    weights = module.weight
    problems = []
    if not isinstance(weights, nn.ModuleList):
        problems.append("a jointly factorized weight")
    elif any(_weight_rows(w) is None for w in weights):
        problems.append(f"a {type(weights[0]).__name__} weight")
    if getattr(module, "separable", False):
        problems.append("separable=True")
    if not isinstance(index, int):
        problems.append("a layer index computed at run time")
    if problems:
        return ctx.kept_whole(node, info, problems, module.out_channels, cdim)
    ctx.ungated(describe(node), MODES_KEPT)
    if info is not None:
        in_layout = info.layout
        ctx.site(node, 0, cdim, in_layout)
    else:
        in_layout = ctx.opaque(module.in_channels, "input is not tracked", f"{owner}.in")
    out_layout = Layout.of(ctx.new_space(module.out_channels, "channel", owner))
    in_layout.require_nonempty()
    out_layout.require_nonempty()
    # every layer's weight, on every call: the module's one in/out width ties them
    for i, weight in enumerate(weights):
        sub, rows_in, rows_out = _weight_rows(weight)  # type: ignore[misc]
        path = ".".join(p for p in (owner, "weight", str(i), sub) if p)
        if rows_in == rows_out:  # dense: (in, out, *modes, 2)
            ctx.role(path, rows_in, 0, in_layout, fold=True)
            ctx.role(path, rows_out, 1, out_layout)
            ctx.param_cost(path, rows_in, (in_layout, out_layout))
        else:
            ctx.role(path, rows_in, 0, in_layout, fold=True)
            ctx.role(path, rows_out, 0, out_layout)
            _rank_units(ctx, owner, i, weight, path, in_layout, out_layout)
    if getattr(module, "bias", None) is not None:
        ctx.role(owner, "bias", 1, out_layout)
        ctx.param_cost(owner, "bias", (out_layout,))
    dense = all(_weight_rows(w)[0] == "" for w in weights)  # type: ignore[index]
    if dense and shape is not None:
        # the mode-wise contraction is a batched complex matmul: 2 * modes * batch * in * out
        fft = list(shape[2:])
        fft[-1] = fft[-1] // 2 + 1
        modes = math.prod(min(s, n) for s, n in zip(fft, module.n_modes))
        ctx.cost("flops", 2 * modes * shape[0], (in_layout, out_layout), owner)
    else:
        ctx.measure_flops(node)
    return TensorInfo(cdim, out_layout)


def _rank_units(ctx: RuleContext, owner: str, i: int, weight: Any, factors_path: str,
                in_layout: Layout, out_layout: Layout) -> None:
    """The ranks of one factorized layer: gated on the core (CP: ``weights``), cut from it and
    from the factors' columns (see the module docstring)."""
    layer = f"{owner}.weight.{i}"
    factors = sorted((n for n, _ in weight.factors.named_parameters()), key=lambda n: int(
        n.rpartition("_")[2]))
    rows = {0: in_layout, 1: out_layout}
    if hasattr(weight, "core"):  # Tucker: one rank space per factor
        core_ranks = []
        for k, name in enumerate(factors):
            size = stored_tensor(weight.factors, name).shape[1]
            rank = Layout.of(ctx.new_space(size, "rank", f"{layer}.rank{k}"))
            rank.require_nonempty()
            ctx.param_site(owner, f"weight.{i}.core", k, rank)
            ctx.role(factors_path, name, 1, rank)
            ctx.param_cost(factors_path, name, (rows[k], rank) if k in rows else (rank,))
            core_ranks.append(rank)
        ctx.param_cost(layer, "core", tuple(core_ranks))
        return
    size = stored_tensor(weight.factors, factors[0]).shape[1]  # CP: one rank for all factors
    rank = Layout.of(ctx.new_space(size, "rank", f"{layer}.rank"))
    rank.require_nonempty()
    ctx.param_site(owner, f"weight.{i}.weights", 0, rank)
    for k, name in enumerate(factors):
        ctx.role(factors_path, name, 1, rank)
        ctx.param_cost(factors_path, name, (rows[k], rank) if k in rows else (rank,))
    ctx.param_cost(layer, "weights", (rank,))


def _resize_spectral_conv(module: Any) -> None:
    weights = module.weight
    if not isinstance(weights, nn.ModuleList) or any(_weight_rows(w) is None for w in weights):
        return
    sub, rows_in, rows_out = _weight_rows(weights[0])  # type: ignore[misc]
    holder = weights[0].get_submodule(sub) if sub else weights[0]
    n_in = getattr(holder, rows_in).shape[0]
    if module.separable:
        return
    if rows_in == rows_out:
        n_out = getattr(holder, rows_out).shape[1]
    else:
        n_out = getattr(holder, rows_out).shape[0]
    module.in_channels, module.out_channels = n_in, n_out
    for weight in weights:  # tltorch keeps the full shape for its repr and its indexing
        shape = tuple(getattr(weight, "shape", ()))
        if shape:
            setattr(weight, "shape", (n_in, n_out) + shape[2:])  # noqa: B010 (typed as Tensor)
        core: Any = getattr(weight, "core", None)
        cp_weights: Any = getattr(weight, "weights", None)
        if sub and core is not None:  # ... and its ranks, which compaction cut
            setattr(weight, "rank", tuple(core.shape))  # noqa: B010
        elif sub and cp_weights is not None:
            setattr(weight, "rank", int(cp_weights.shape[0]))  # noqa: B010


REGISTRY.register_when_imported("neuralop.layers.spectral_convolution", "SpectralConv",
                                _spectral_conv, resize=_resize_spectral_conv, input_dim=1)
