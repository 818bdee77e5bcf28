"""Graph layers (torch-geometric): hidden dims coupled across message passing, GAT heads.

Message passing aggregates each channel over neighbours on its own, so a layer's input channels
are read like a Linear's (gated, folded into the weight columns) and its output channels are a
new space. GAT's and GATv2's attention logits mix the channels of a head, so their unit is the
head, or a channel within heads gated inside the layer before the attention, whichever is finer.
GIN is traced through its sum aggregation written in plain torch, so the MLP inside it is
gated like any other. Other message-passing layers are kept whole (listed in ``report()``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
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
from torch_geometric.nn.aggr import (
    Aggregation,
    MaxAggregation,
    MeanAggregation,
    MedianAggregation,
    MinAggregation,
    MulAggregation,
    StdAggregation,
    SumAggregation,
    VarAggregation,
)
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.nn.dense.linear import Linear as GeometricLinear
from torch_geometric.nn.models.attentive_fp import GATEConv
from torch_geometric.nn.models.schnet import CFConv
from torch_geometric.nn.norm import GraphNorm
from torch_geometric.nn.norm import InstanceNorm as GraphInstanceNorm
from torch_geometric.nn.norm import LayerNorm as GraphLayerNorm
from torch_geometric.utils import degree, scatter
from torch_geometric.utils import softmax as graph_softmax

from .context import RuleContext, describe
from .infos import TensorInfo
from .registry import REGISTRY, register_leaf_function, register_rule, register_trace_forward
from .rule_helpers import node_arg, positive_dim, target_path
from .rules_elementwise import elementwise_module
from .rules_linear import _linear_module
from .rules_norm import lower_stat_norm, stat_norm
from .spaces import Layout, unify


def _node_input(ctx: RuleContext, node: fx.Node, owner: str, width: int) -> Layout:
    """The node features ``x`` (arg 0), read on their last dim: gated there when tracked."""
    x = node.args[0] if node.args else node.kwargs.get("x")
    info = ctx.tensor_info(x)
    if info is not None and info.dim != -1:
        ctx.pin(info, f"{describe(node)} reads node features on the last dim")
        info = None
    if info is None:
        return ctx.opaque(width, "input is not tracked", f"{owner}.in")
    ctx.site(node, 0 if node.args else "x", -1, info.layout)
    info.layout.require_nonempty()  # message passing over 0 channels is not supported
    return info.layout


def _rows(ctx: RuleContext, node: fx.Node) -> int:
    x = node.args[0] if node.args else node.kwargs.get("x")
    shape = ctx.shape(x)
    return math.prod(shape[:-1]) if shape else 0


def _lin(ctx: RuleContext, owner: str, lin: str, in_layout: Layout, out_layout: Layout,
         rows: int) -> None:
    """A PyG ``Linear`` child reading ``in_layout`` and writing ``out_layout``."""
    path = f"{owner}.{lin}"
    ctx.role(path, "weight", 1, in_layout, fold=True)
    ctx.role(path, "weight", 0, out_layout)
    ctx.param_cost(path, "weight", (out_layout, in_layout))
    ctx.cost("flops", 2 * rows, (in_layout, out_layout), path)


def _gcn(ctx: RuleContext, node: fx.Node, module: GCNConv) -> object:
    owner = target_path(node)
    in_layout = _node_input(ctx, node, owner, module.in_channels)
    out = Layout.of(ctx.new_space(module.out_channels, "hidden", owner))
    _lin(ctx, owner, "lin", in_layout, out, _rows(ctx, node))
    if module.lin.bias is not None:
        ctx.role(f"{owner}.lin", "bias", 0, out)
        ctx.param_cost(f"{owner}.lin", "bias", (out,))
    if module.bias is not None:
        ctx.role(owner, "bias", 0, out)
        ctx.param_cost(owner, "bias", (out,))
    return TensorInfo(-1, out)


def _sage(ctx: RuleContext, node: fx.Node, module: SAGEConv) -> object:
    owner = target_path(node)
    x = node.args[0] if node.args else node.kwargs.get("x")
    aggr = getattr(module, "aggr", None)
    problem = None
    if module.project:
        problem = "project=True"
    elif not (isinstance(aggr, str) and aggr in ("mean", "add", "sum", "max", "min")):
        problem = f"aggregation {aggr!r} mixes channels"
    elif isinstance(x, (tuple, list)):
        problem = "bipartite input"
    if problem:
        return _keep_whole(ctx, node, problem, module.out_channels)
    in_layout = _node_input(ctx, node, owner, module.lin_l.in_channels)
    out = Layout.of(ctx.new_space(module.out_channels, "hidden", owner))
    rows = _rows(ctx, node)
    _lin(ctx, owner, "lin_l", in_layout, out, rows)
    if module.lin_l.bias is not None:
        ctx.role(f"{owner}.lin_l", "bias", 0, out)
        ctx.param_cost(f"{owner}.lin_l", "bias", (out,))
    if module.root_weight:
        _lin(ctx, owner, "lin_r", in_layout, out, rows)
    if module.normalize:  # L2 norm over the output channels couples them
        out.pin(f"{describe(node)} L2-normalises its output channels")
    return TensorInfo(-1, out)


#: channelwise aggregations: they commute with a per-channel gate (sum, mean, max, min)
_CHANNELWISE_AGGR = ("mean", "add", "sum", "max", "min")


class _LinearSum:
    """The rule of a layer computing ``sum_k lin_k(P_k(x)) (+ bias)``: each ``P_k`` a
    propagation that treats channels alone (neighbour sums, powers of the normalised
    adjacency, Chebyshev polynomials of the Laplacian), each ``lin_k`` a Linear child, or a
    sigmoid gate of such sums times another (ResGatedGraphConv). Every child reads the input
    channels (its columns) and writes the output channels (its rows), like GCN's ``lin``.

    ``children(module)`` names the Linear children; ``problem(module)`` says why a
    configuration mixes channels or keeps state (then the layer is kept whole)."""

    def __init__(self, children, problem) -> None:  # noqa: ANN001
        self.children, self.problem = children, problem

    def __call__(self, ctx: RuleContext, node: fx.Node, module: MessagePassing) -> object:
        owner = target_path(node)
        x = node.args[0] if node.args else node.kwargs.get("x")
        problem = self.problem(module) or (
            "bipartite input" if isinstance(x, (tuple, list))
            or not isinstance(module.in_channels, int) else None)
        if problem:
            return _keep_whole(ctx, node, problem, module.out_channels)
        in_layout = _node_input(ctx, node, owner, module.in_channels)
        out = Layout.of(ctx.new_space(module.out_channels, "hidden", owner))
        rows = _rows(ctx, node)
        for name in self.children(module):
            _lin(ctx, owner, name, in_layout, out, rows)
            if module.get_submodule(name).bias is not None:
                ctx.role(f"{owner}.{name}", "bias", 0, out)
                ctx.param_cost(f"{owner}.{name}", "bias", (out,))
        if isinstance(getattr(module, "bias", None), nn.Parameter):
            ctx.role(owner, "bias", 0, out)
            ctx.param_cost(owner, "bias", (out,))
        return TensorInfo(-1, out)


def _aggregation_problem(module: MessagePassing) -> str | None:
    aggr = getattr(module, "aggr", None)
    return None if isinstance(aggr, str) and aggr in _CHANNELWISE_AGGR \
        else f"aggregation {aggr!r} mixes channels"


def _resize_linear_children(module: MessagePassing) -> None:
    """in/out channels of the layer and of its PyG Linear children from their weights."""
    linears = [m for m in module.modules() if isinstance(m, GeometricLinear)]
    for lin in linears:
        lin.out_channels, lin.in_channels = lin.weight.shape
    module.out_channels, module.in_channels = linears[0].weight.shape


_LINEAR_SUMS: list[tuple[type[nn.Module], _LinearSum]] = [
    (GraphConv, _LinearSum(lambda m: ["lin_rel", "lin_root"], _aggregation_problem)),
    (SGConv, _LinearSum(lambda m: ["lin"], lambda m: "cached=True (it keeps the propagated "
                        "input, with all its channels)" if m.cached else None)),
    (TAGConv, _LinearSum(lambda m: [f"lins.{k}" for k in range(len(m.lins))],
                         lambda m: None)),
    (ChebConv, _LinearSum(lambda m: [f"lins.{k}" for k in range(len(m.lins))],
                          lambda m: None)),
    (LEConv, _LinearSum(lambda m: ["lin1", "lin2", "lin3"], _aggregation_problem)),
    (ResGatedGraphConv, _LinearSum(
        lambda m: ["lin_key", "lin_query", "lin_value"] + (["lin_skip"] if m.root_weight
                                                           else []),
        lambda m: "edge features (edge_dim)" if m.edge_dim is not None
        else f"activation {type(m.act).__name__}" if not elementwise_module(m.act)
        else _aggregation_problem(m))),
]


def _bipartite_input(ctx: RuleContext, node: fx.Node, x) -> Layout | None:
    """``(x_src, x_dst)`` read by one shared ``lin`` (an int ``in_channels``): both carry the
    same channels, gated by scaling ``lin``'s columns (one gate for both reads); None when
    either is untracked."""
    infos = [ctx.tensor_info(t) for t in x if t is not None]
    if len(infos) != sum(t is not None for t in x) or any(
            i is None or i.dim != -1 for i in infos):
        return None
    layout = infos[0].layout  # type: ignore[union-attr]
    for other in infos[1:]:
        unify(layout, other.layout, f"{describe(node)} reads both node sets with one lin")  # type: ignore[union-attr]
    layout.require_nonempty()
    return layout


def _head_units(ctx: RuleContext, node: fx.Node, owner: str, H: int, C: int, concat: bool,
                finer: bool = True) -> tuple[Layout, Layout, int, Layout, bool]:
    """The unit of a GAT layer's ``H * C`` projected channels, and what its attention reads.

    Two units are exact. A *head* (``C`` consecutive rows): its attention reads only its own
    channels, so a head no layer downstream reads is removed whole. A *channel within heads*
    (channel ``c`` of every head, one gate): its projection rows are scaled by the gate
    before the attention, so a closed channel adds nothing to any head's logits and is cut
    from every head alike (the layer keeps ``H`` heads of ``C'`` channels). The finer of the
    two is chosen: channels when ``C > H`` or when the heads are averaged (``concat=False``,
    where a head cannot close but a channel can); ``finer=False`` keeps heads (a projection
    the rule cannot scale, e.g. one shared between two names).

    Returns ``(projected, out, att_dim, att_layout, inside)``: the layout of the projected
    channels (``lin``'s rows), of the layer's output, the dim and layout of ``att``'s entries,
    and whether the projections' rows are gated inside the layer (the channel unit).
    """
    if finer and (C > H or not concat):
        channels = ctx.new_space(C, "hidden", owner)
        projected = Layout.concat([Layout.of(channels)] * H)  # channel c of head h at h*C + c
        projected.require_nonempty()
        out = projected if concat else Layout.of(channels)
        return projected, out, 2, Layout.of(channels), True
    head_space = ctx.new_space(H, "head", owner)
    projected = Layout.of(head_space, block=C)  # the H*C projected channels, C per head
    projected.require_nonempty()
    if concat:
        out = projected
    else:  # mean over heads: heads stay whole, the output channels are shared by all heads
        head_space.pin(f"{describe(node)} averages its heads (concat=False)")
        out = ctx.opaque(C, f"{describe(node)} averages its heads (concat=False)", owner)
    return projected, out, 1, Layout.of(head_space), False


def _att_roles(ctx: RuleContext, owner: str, names: tuple[str, ...], dim: int,
               layout: Layout) -> None:
    """``att*`` of shape (1, H, C): dim 1 by head, or dim 2 by channel within heads."""
    for name in names:
        ctx.role(owner, name, dim, layout)
        ctx.param_cost(owner, name, (layout,))


def _projection_rows(ctx: RuleContext, owner: str, lin: str, projected: Layout,
                     inside: bool) -> None:
    """Rows of projection ``owner.lin``: scaled by their gates inside the layer when the unit
    is a channel within heads (``inside``), else only indexed (a head is cut downstream)."""
    has_bias = getattr(ctx.gm.get_submodule(f"{owner}.{lin}"), "bias", None) is not None
    for name in ("weight", "bias") if has_bias else ("weight",):
        if inside:
            ctx.param_site(owner, f"{lin}.{name}", 0, projected)
        else:
            ctx.role(f"{owner}.{lin}", name, 0, projected)


def _gat(ctx: RuleContext, node: fx.Node, module: GATConv) -> object:
    owner = target_path(node)
    x = node.args[0] if node.args else node.kwargs.get("x")
    bipartite = isinstance(x, (tuple, list))
    in_layout = _bipartite_input(ctx, node, x) if bipartite and module.lin is not None else None
    if module.lin is None or (bipartite and in_layout is None):
        return _keep_whole(ctx, node, "bipartite input with separate or untracked node sets",
                           _gat_width(module))
    H, C = module.heads, module.out_channels
    if in_layout is None:
        in_layout = _node_input(ctx, node, owner, module.in_channels)
    # lin reads both node sets of a bipartite input
    parts: list = list(x) if isinstance(x, (tuple, list)) else []
    rows = sum(_rows_of(ctx, t) for t in parts if t is not None) if bipartite else _rows(
        ctx, node)
    projected, out, att_dim, att, inside = _head_units(ctx, node, owner, H, C, module.concat)
    if bipartite:  # the gate scales lin's columns: both node sets are read through them
        ctx.param_site(owner, "lin.weight", 1, in_layout)
    else:
        ctx.role(f"{owner}.lin", "weight", 1, in_layout, fold=True)
    _projection_rows(ctx, owner, "lin", projected, inside)
    ctx.param_cost(f"{owner}.lin", "weight", (projected, in_layout))
    ctx.cost("flops", 2 * rows, (in_layout, projected), f"{owner}.lin")
    _att_roles(ctx, owner, ("att_src", "att_dst"), att_dim, att)
    if module.lin_edge is not None:
        edge_attr = node_arg(node, 2, "edge_attr")
        ctx.pin(ctx.info(edge_attr), f"{describe(node)} edge features are not gated")
        _projection_rows(ctx, owner, "lin_edge", projected, inside)
        ctx.param_cost(f"{owner}.lin_edge", "weight", (projected,))
        _att_roles(ctx, owner, ("att_edge",), att_dim, att)
        _edge_flops(ctx, node, module, edge_attr, projected)
    if module.res is not None and bipartite:
        ctx.param_site(owner, "res.weight", 1, in_layout)
        ctx.role(f"{owner}.res", "weight", 0, out)
        ctx.param_cost(f"{owner}.res", "weight", (out, in_layout))
    elif module.res is not None:
        _lin(ctx, owner, "res", in_layout, out, rows)
    if module.bias is not None:
        ctx.role(owner, "bias", 0, out)
        ctx.param_cost(owner, "bias", (out,))
    return TensorInfo(-1, out)


def _edge_flops(ctx: RuleContext, node: fx.Node, module: GATConv | GATv2Conv, edge_attr,
                projected: Layout) -> None:
    """``lin_edge`` on every edge, self-loops added by the layer included (counted as one per
    node: a graph that already has self-loops, which the layer replaces, is over-counted)."""
    e_shape = ctx.shape(edge_attr) if isinstance(edge_attr, fx.Node) else None
    if e_shape is not None:
        edges = e_shape[0] + (_rows(ctx, node) if module.add_self_loops else 0)
        ctx.cost("flops", 2 * edges * module.edge_dim, (projected,),
                 f"{target_path(node)}.lin_edge")


def _rows_of(ctx: RuleContext, x) -> int:
    shape = ctx.shape(x)
    return math.prod(shape[:-1]) if shape else 0


def _gatv2(ctx: RuleContext, node: fx.Node, module: GATv2Conv) -> object:
    """GATv2: attention ``a . LeakyReLU(W_l x_j + W_r x_i)`` per head; its unit is a head or
    a channel within heads, as in GAT (the LeakyReLU of a channel scaled by its gate is the
    gate times its LeakyReLU, so a closed channel adds nothing to the logits)."""
    owner = target_path(node)
    x = node.args[0] if node.args else node.kwargs.get("x")
    if not isinstance(module.in_channels, int) or isinstance(x, (tuple, list)):
        return _keep_whole(ctx, node, "bipartite input", _gat_width(module))
    H, C = module.heads, module.out_channels
    in_layout = _node_input(ctx, node, owner, module.in_channels)
    rows = _rows(ctx, node)
    # share_weights: lin_r is lin_l under a second name, which a scaled call cannot swap
    projected, out, att_dim, att, inside = _head_units(ctx, node, owner, H, C, module.concat,
                                                       finer=not module.share_weights)
    for lin in ("lin_l",) if module.share_weights else ("lin_l", "lin_r"):
        path = f"{owner}.{lin}"
        ctx.role(path, "weight", 1, in_layout, fold=True)
        _projection_rows(ctx, owner, lin, projected, inside)
        ctx.param_cost(path, "weight", (projected, in_layout))
        ctx.cost("flops", 2 * rows, (in_layout, projected), path)
        if getattr(module, lin).bias is not None:
            ctx.param_cost(path, "bias", (projected,))
    _att_roles(ctx, owner, ("att",), att_dim, att)
    if module.lin_edge is not None:
        edge_attr = node_arg(node, 2, "edge_attr")
        ctx.pin(ctx.info(edge_attr), f"{describe(node)} edge features are not gated")
        _projection_rows(ctx, owner, "lin_edge", projected, inside)
        ctx.param_cost(f"{owner}.lin_edge", "weight", (projected,))
        _edge_flops(ctx, node, module, edge_attr, projected)
    if module.res is not None:
        _lin(ctx, owner, "res", in_layout, out, rows)
    if module.bias is not None:
        ctx.role(owner, "bias", 0, out)
        ctx.param_cost(owner, "bias", (out,))
    return TensorInfo(-1, out)


def _gat_width(module: GATConv | GATv2Conv) -> int:
    return module.out_channels * (module.heads if module.concat else 1)


def _keep_whole(ctx: RuleContext, node: fx.Node, problem: str, width: int) -> object:
    reason = f"{describe(node)}: {problem}; kept whole"
    ctx.pin([ctx.info(a) for a in (*node.args, *node.kwargs.values())], reason)
    ctx.ungated(describe(node), reason)
    ctx.measure_flops(node)
    return TensorInfo(-1, ctx.opaque(width, reason, target_path(node)))


def _resize_gcn(module: GCNConv) -> None:
    module.out_channels, module.in_channels = module.lin.weight.shape
    module.lin.out_channels, module.lin.in_channels = module.lin.weight.shape


def _resize_sage(module: SAGEConv) -> None:
    for lin in (module.lin_l, getattr(module, "lin_r", None)):
        if lin is not None:
            lin.out_channels, lin.in_channels = lin.weight.shape
    module.out_channels, module.in_channels = module.lin_l.weight.shape


def _resize_gat(module: GATConv | GATv2Conv) -> None:
    """Heads and channels per head from ``att`` (1, H, C): either may have been cut."""
    att = module.att_src if isinstance(module, GATConv) else module.att
    module.heads, module.out_channels = int(att.shape[1]), int(att.shape[2])
    first = module.lin if isinstance(module, GATConv) else module.lin_l
    module.in_channels = first.weight.shape[1]
    for lin in (getattr(module, name, None) for name in ("lin", "lin_l", "lin_r", "lin_edge",
                                                         "res")):
        if lin is not None:
            lin.out_channels, lin.in_channels = lin.weight.shape


# ---- norms over node features -----------------------------------------------------------------
def _node_features(ctx: RuleContext, node: fx.Node) -> TensorInfo | None:
    info = ctx.tensor_info(node.args[0] if node.args else node.kwargs.get("x"))
    if info is not None and info.dim != -1:
        ctx.pin(info, f"{describe(node)} normalises node features on the last dim")
        return None
    return info


def _graph_channelwise(ctx: RuleContext, node: fx.Node, module: nn.Module) -> object:
    """GraphNorm, InstanceNorm: statistics per graph and per channel, so channel-wise."""
    info = _node_features(ctx, node)
    if info is None:
        return None
    owner = target_path(node)
    info.layout.require_nonempty()
    for name in ("weight", "bias", "mean_scale", "running_mean", "running_var"):
        if getattr(module, name, None) is not None:
            ctx.role(owner, name, 0, info.layout)
            ctx.param_cost(owner, name, (info.layout,))
    return TensorInfo(-1, info.layout)


def _graph_layer_norm(ctx: RuleContext, node: fx.Node, module: GraphLayerNorm) -> object:
    """torch-geometric's LayerNorm: statistics over the channels (``mode="node"``) or over a
    whole graph's nodes and channels (``"graph"``); exact through the full-width twin."""
    info = _node_features(ctx, node)
    if info is None:
        return None
    stat_norm(ctx, node, module, info)
    return TensorInfo(-1, info.layout)


def _resize_graph_norm(module: nn.Module) -> None:
    stored = [t for t in (module._parameters.get("weight"), module._buffers.get("running_mean"))
              if t is not None]
    if not stored:
        return
    width = stored[0].shape[0]
    setattr(module, "in_channels" if isinstance(module, GraphNorm) else "num_features", width)


def _resize_geometric_linear(module: GeometricLinear) -> None:
    module.out_channels, module.in_channels = module.weight.shape




# ---- GIN: sum aggregation in plain torch, then its own MLP -------------------------------------
def _gin_forward(self: GINConv, x, edge_index, size=None):
    """``GINConv.forward``: ``nn((1 + eps) * x_i + sum_j x_j)``, the sum written in torch ops."""
    src, dst = (0, 1) if self.flow == "source_to_target" else (1, 0)
    messages = x.index_select(0, edge_index[src])
    out = torch.zeros_like(x).index_add(0, edge_index[dst], messages)
    out = out + (1 + self.eps) * x
    return self.nn(out)




def _gine_forward(self: GINEConv, x, edge_index, edge_attr=None, size=None):
    """``GINEConv.forward``: ``nn((1 + eps) * x_i + sum_j relu(x_j + lin(e_ji)))``, the sum
    written in torch ops (a closed channel of ``x`` and of ``lin``'s output share one gate:
    the ReLU of their gated sum is the gate times the ReLU of the sum)."""
    if isinstance(x, (tuple, list)) or edge_attr is None or self.aggr != "add":
        raise TypeError("LUMOS reads GINEConv with one node feature tensor, edge features and "
                        "the sum aggregation; keep this layer whole (keep=) otherwise")
    src, dst = (0, 1) if self.flow == "source_to_target" else (1, 0)
    edges = self.lin(edge_attr) if self.lin is not None else edge_attr
    messages = (x.index_select(0, edge_index[src]) + edges).relu()
    out = torch.zeros_like(x).index_add(0, edge_index[dst], messages)
    out = out + (1 + self.eps) * x
    return self.nn(out)


# ---- EdgeConv: nn([x_i, x_j - x_i]) per edge, aggregated per node, in plain torch -----------
def _edge_conv_forward(self: EdgeConv, x, edge_index):
    """``EdgeConv.forward`` for one node feature tensor and a string aggregation: the message
    MLP reads ``[x_i, x_j - x_i]`` (the same channels twice), the aggregation is PyG's own
    ``scatter`` over target nodes (empty neighbourhoods give 0, as in PyG)."""
    if not isinstance(self.aggr, str) or isinstance(x, (tuple, list)):
        raise TypeError("LUMOS reads EdgeConv with one node feature tensor and a named "
                        "aggregation ('max', 'mean', 'sum'); keep this layer whole (keep=) "
                        "for other configurations")
    src, dst = (0, 1) if self.flow == "source_to_target" else (1, 0)
    x_j = x.index_select(0, edge_index[src])
    x_i = x.index_select(0, edge_index[dst])
    messages = self.nn(torch.cat([x_i, x_j - x_i], dim=-1))
    return scatter(messages, edge_index[dst], dim=0, dim_size=x.size(0), reduce=self.aggr)




# PNA: the aggregators and degree scalers written with PyG's own scatter, so the towers' MLPs,
# the message channels and their aggregates are gated by the generic rules
_PNA_REDUCE = {"MeanAggregation": "mean", "SumAggregation": "sum", "MinAggregation": "min",
               "MaxAggregation": "max"}


def _pna_aggregate(aggr: Any, msg, index, n):
    name = type(aggr).__name__
    if name in _PNA_REDUCE:
        return scatter(msg, index, dim=0, dim_size=n, reduce=_PNA_REDUCE[name])
    var_aggr: Any = aggr if name == "VarAggregation" else getattr(aggr, "var_aggr", None)
    if name in ("VarAggregation", "StdAggregation") and not var_aggr.semi_grad:
        mean = scatter(msg, index, dim=0, dim_size=n, reduce="mean")
        var = scatter(msg * msg, index, dim=0, dim_size=n, reduce="mean") - mean * mean
        if name == "VarAggregation":
            return var
        out = var.clamp(min=1e-5).sqrt()
        return out.masked_fill(out <= math.sqrt(1e-5), 0.0)
    raise TypeError(f"LUMOS reads PNAConv with the aggregators mean, sum, min, max, var and std; "
                    f"{name} is not one of them: keep this layer whole (keep=)")


def _pna_forward(self: PNAConv, x, edge_index, edge_attr=None):
    """``PNAConv.forward`` in plain torch: messages ``pre_nn([x_i, x_j, e])`` per tower,
    aggregated per channel by each aggregator and scaled by each degree scaler (PyG's
    ``DegreeScalerAggregation``), then ``post_nn([x, aggregates])`` per tower and ``lin``."""
    module: Any = self.aggr_module
    inner: Any = getattr(module, "aggr", None)
    aggrs = list(inner.aggrs) if type(inner).__name__ == "MultiAggregation" else [inner]
    if (self.flow != "source_to_target" or isinstance(x, (tuple, list))
            or type(module).__name__ != "DegreeScalerAggregation"
            or (type(inner).__name__ == "MultiAggregation" and inner.mode != "cat")):
        raise TypeError("LUMOS reads PNAConv with one node feature tensor, an edge_index, "
                        "source-to-target flow and concatenated aggregators; keep this layer "
                        "whole (keep=) otherwise")
    if self.divide_input:
        x = x.view(-1, self.towers, self.F_in)
    else:
        x = x.view(-1, 1, self.F_in).repeat(1, self.towers, 1)
    n = x.size(0)
    x_j, x_i = x.index_select(0, edge_index[0]), x.index_select(0, edge_index[1])
    if edge_attr is not None:
        e = self.edge_encoder(edge_attr).view(-1, 1, self.F_in).repeat(1, self.towers, 1)
        h = torch.cat([x_i, x_j, e], dim=-1)
    else:
        h = torch.cat([x_i, x_j], dim=-1)
    msg = torch.stack([mlp(h[:, i]) for i, mlp in enumerate(self.pre_nns)], dim=1)
    index = edge_index[1]
    out = torch.cat([_pna_aggregate(a, msg, index, n) for a in aggrs], dim=-1) \
        if len(aggrs) > 1 else _pna_aggregate(aggrs[0], msg, index, n)
    deg = degree(index, num_nodes=n, dtype=out.dtype).view(-1, 1, 1)
    scaled = []
    for scaler in module.scaler:
        if scaler == "identity":
            scaled.append(out)
        elif scaler == "amplification":
            scaled.append(out * (torch.log(deg + 1) / module.avg_deg_log))
        elif scaler == "attenuation":
            scaled.append(out * (module.avg_deg_log / torch.log(deg.clamp(min=1) + 1)))
        elif scaler == "linear":
            scaled.append(out * (deg / module.avg_deg_lin))
        elif scaler == "inverse_linear":
            scaled.append(out * (module.avg_deg_lin / deg.clamp(min=1)))
        else:
            raise TypeError(f"unknown PNA scaler {scaler!r}: keep this layer whole (keep=)")
    out = torch.cat(scaled, dim=-1) if len(scaled) > 1 else scaled[0]
    out = torch.cat([x, out], dim=-1)
    out = torch.cat([mlp(out[:, i]) for i, mlp in enumerate(self.post_nns)], dim=1)
    return self.lin(out)




def _gate_conv_forward(self: GATEConv, x, edge_index, edge_attr):
    """AttentiveFP's ``GATEConv.forward`` in plain torch: the attention logits of edge
    ``j -> i`` are ``att_l . leaky_relu(lin1([x_j, e]))`` plus ``att_r . x_i`` (written as
    ``F.linear``, which the Linear rule reads), softmax over each node's incoming edges,
    messages ``lin2(x_j)`` weighted by them and summed."""
    n = x.size(0)
    x_j, x_i = x.index_select(0, edge_index[0]), x.index_select(0, edge_index[1])
    h = F.leaky_relu(self.lin1(torch.cat([x_j, edge_attr], dim=-1)))
    alpha = F.linear(h, self.att_l).squeeze(-1) + F.linear(x_i, self.att_r).squeeze(-1)
    alpha = graph_softmax(F.leaky_relu(alpha), edge_index[1], None, n)
    alpha = F.dropout(alpha, p=self.dropout, training=self.training)
    out = scatter(self.lin2(x_j) * alpha.unsqueeze(-1), edge_index[1], dim=0, dim_size=n,
                  reduce="sum")
    return out + self.bias






# ---- SchNet's continuous-filter convolution, in plain torch ----------------------------------
def _cfconv_forward(self: CFConv, x, edge_index, edge_weight, edge_attr):
    """``CFConv.forward``: ``lin2(sum_j lin1(x)_j * W_ij)`` with the filter
    ``W = nn(edge_attr) * cosine cutoff``; the filters of ``lin1`` and ``nn`` are one set of
    channels (they multiply), gated together like any elementwise product."""
    if self.aggr != "add":
        raise TypeError("LUMOS reads SchNet's CFConv with its sum aggregation; keep this layer "
                        "whole (keep=) for other configurations")
    cutoff = 0.5 * (torch.cos(edge_weight * math.pi / self.cutoff) + 1.0)
    filters = self.nn(edge_attr) * cutoff.view(-1, 1)
    x = self.lin1(x)
    src, dst = (0, 1) if self.flow == "source_to_target" else (1, 0)
    messages = x.index_select(0, edge_index[src]) * filters
    return self.lin2(scatter(messages, edge_index[dst], dim=0, dim_size=x.size(0),
                             reduce="sum"))


# ---- pooling and scatter: channel-wise over nodes ---------------------------------------------
def _node_pool(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    info = ctx.tensor_info(node.args[0] if node.args else node.kwargs.get("x"))
    if info is None:
        return None
    if info.dim != -1:
        info.layout.pin(f"{describe(node)} pools over the tracked dim")
        return None
    return TensorInfo(-1, info.layout)


#: torch-geometric aggregation modules that reduce each channel on its own, without parameters
_CHANNELWISE_AGGREGATIONS = (SumAggregation, MeanAggregation, MaxAggregation, MinAggregation,
                             MulAggregation, VarAggregation, StdAggregation, MedianAggregation)


def _aggregation(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    """``aggr(x, index, ptr, dim_size, dim=-2)``: each channel reduced over ``dim`` alone."""
    x = node.args[0] if node.args else node.kwargs.get("x")
    info = ctx.tensor_info(x)
    if info is None:
        return None
    dim = node_arg(node, 4, "dim", -2)
    shape = ctx.shape(x)
    if not isinstance(dim, int) or shape is None or \
            positive_dim(dim, len(shape)) == positive_dim(info.dim, len(shape)):
        info.layout.pin(f"{describe(node)} aggregates along the tracked dim")
        return None
    return TensorInfo(info.dim, info.layout)


def _scatter(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    src = node.args[0] if node.args else node.kwargs.get("src")
    info = ctx.tensor_info(src)
    if info is None:
        return None
    dim = node_arg(node, 2, "dim", 0)
    reduce = node_arg(node, 5, "reduce", "sum")
    shape = ctx.shape(src)
    if not isinstance(dim, int) or not isinstance(reduce, str) or shape is None or \
            positive_dim(dim, len(shape)) == positive_dim(info.dim, len(shape)):
        info.layout.pin(f"{describe(node)} scatters along the tracked dim")
        return None
    return TensorInfo(info.dim, info.layout)


# ---- registration ----------------------------------------------------------------------------
def register_all() -> None:
    """Register the torch-geometric rules that are not registered yet.

    LUMOS calls this once the user's code has imported torch-geometric
    (``REGISTRY.load_when_imported``): importing it costs seconds. It skips what is already
    registered (a user's own rule for one of these layers wins), so it may run again after
    ``lumos.rules.scoped()`` undid it.
    """
    modules: list[tuple[type[nn.Module], Any, dict]] = [
        (GCNConv, _gcn, {"resize": _resize_gcn}),
        (SAGEConv, _sage, {"resize": _resize_sage}),
        (GATConv, _gat, {"resize": _resize_gat}),
        (GATv2Conv, _gatv2, {"resize": _resize_gat}),
        (GeometricLinear, _linear_module, {"resize": _resize_geometric_linear}),
        (GraphNorm, _graph_channelwise, {"resize": _resize_graph_norm}),
        (GraphInstanceNorm, _graph_channelwise, {"resize": _resize_graph_norm}),
        (GraphLayerNorm, _graph_layer_norm, {"lower": lower_stat_norm}),
        *[(aggregation, _aggregation, {}) for aggregation in _CHANNELWISE_AGGREGATIONS],
        *[(layer, rule, {"resize": _resize_linear_children}) for layer, rule in _LINEAR_SUMS],
    ]
    for layer, rule, options in modules:
        if REGISTRY.entry("module", layer) is None:
            register_rule(layer, rule, input_dim=-1, **options)
    REGISTRY.register_opaque_base(MessagePassing)
    # readouts without a rule (attention, Set2Set, LSTM, softmax, multi-aggregation): one
    # node each, kept whole; traced into, they size their output from data (index.max())
    REGISTRY.register_opaque_base(Aggregation)
    forwards = REGISTRY.trace_forwards()
    for layer, forward in ((GINConv, _gin_forward), (GINEConv, _gine_forward),
                           (EdgeConv, _edge_conv_forward),
                           (PNAConv, _pna_forward), (GATEConv, _gate_conv_forward),
                           (CFConv, _cfconv_forward)):
        if layer not in forwards:
            register_trace_forward(layer, forward)
    functions: list[tuple[Any, Any]] = [(fn, _node_pool) for fn in (
        global_mean_pool, global_add_pool, global_max_pool)] + [(scatter, _scatter)]
    for fn, rule in functions:
        if REGISTRY.entry("function", fn) is None:
            register_leaf_function(fn, rule)
