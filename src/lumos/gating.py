"""The gated graph: its format, the pass that inserts gates, and the pass that removes them.

This module is the one home of what the gated ``GraphModule`` looks like, so that the side
that inserts gates (:func:`insert_gates`, used by ``sparsify``) and the side that removes them
(:func:`strip_gates`, used by compaction) share it instead of matching names as strings:

- the gate vector enters as one extra placeholder, :data:`GATES_PLACEHOLDER` (the gate of
  every group, followed by a 1 for "always open" positions);
- one :func:`gather_gates` node reads every site's gates from it at once (one gather, one
  split: its backward is one scatter and one concatenation, where a gather per site cost
  three operators a site and a sum per reuse on every training step); each site reads its
  *piece*, a ``getitem`` of that node;
- an activation read by a layer is gated by :func:`apply_gates` (``x * piece`` along one dim);
- a layer whose gated units live inside it (attention heads), or whose input is cheaper to
  gate by scaling the weight that reads it, is called through :func:`call_with_gated_params`
  (the layer with some parameters scaled by their pieces).

Which parameter reads which channels comes from the rules' records (``ParamRole`` with
``fold=True``), never from a list of layer classes: any layer whose rule records the fold gets
the cheaper weight-side gating, and compaction folds the same values.
"""

from __future__ import annotations

import math
import operator
import weakref

import torch
from torch import Tensor, fx, nn

from .topology.analysis import ChannelGraph
from .topology.infos import GateSite
from .topology.rule_helpers import (
    plain_attributes,
    store_tensor,
    stored_tensor,
    target_path,
)

#: name of the placeholder that carries the gate vector into the gated graph
GATES_PLACEHOLDER = "lumos_gates"
#: the (non-persistent) buffer holding every site's gate indices, one piece after another
PIECES_INDEX = "lumos_gate_index"
#: names of the gather node and of its pieces in the gated graph
PIECES_NODE = "lumos_gate_pieces"
PIECE_PREFIX = "lumos_gates_"
#: node meta key: the name a layer call had in the traced graph before gating replaced it
SOURCE_NAME = "source_name"


def source_name(node: fx.Node) -> str:
    """The traced graph's name for ``node`` (the same in the gated and compacted graphs)."""
    return node.meta.get(SOURCE_NAME, node.name)


def gather_gates(gates: Tensor, index: Tensor | None, sizes: tuple[int, ...]) -> tuple:
    """Every gate site's gates from the gate vector in one read: ``gates[index]`` cut into
    pieces of ``sizes`` (``index`` None: the vector itself, already in site order)."""
    return (gates if index is None else gates.index_select(0, index)).split(sizes)


torch.fx.wrap("gather_gates")


def _along(piece: Tensor, dim: int, like: Tensor) -> Tensor:
    """``piece`` shaped to broadcast along ``dim`` of ``like``, in its dtype. Along the last
    dim it broadcasts as it is: no view, nor the view's backward, on every step."""
    if dim == -1 or dim == like.dim() - 1:
        return piece.to(like.dtype)
    shape = [1] * like.dim()
    shape[dim] = -1
    return piece.view(shape).to(like.dtype)


def apply_gates(x: Tensor, piece: Tensor, dim: int) -> Tensor:
    """Multiply ``x`` along ``dim`` by the gate of each position (its site's ``piece``)."""
    return x * _along(piece, dim, x)


torch.fx.wrap("apply_gates")


def call_with_gated_params(module: nn.Module, specs: tuple, *args, **kwargs):
    """Call ``module`` with some parameters scaled by gates.

    ``specs`` holds ``(parameter path, dim, piece)`` triples; the module's own parameters
    are untouched, so gradients reach both the weights and the gates.
    """
    # One multiply per parameter: the gates of its dims (an FNO weight's input channels, rows
    # and columns of modes) are first multiplied together into a small broadcast tensor. A
    # multiply per dim cost three weight-sized multiplies and reductions in every step
    # (measured: ~8 of Darcy's ~23 ms of gate overhead).
    scales: dict[str, Tensor] = {}
    stored: dict[str, Tensor] = {}
    for name, dim, piece in specs:
        owner, _, attr = name.rpartition(".")
        p = stored.setdefault(name, stored_tensor(module.get_submodule(owner), attr))
        scale = _along(piece, dim, p)
        scales[name] = scale if name not in scales else scales[name] * scale
    params = {name: stored[name] * _inner_dims_filled(scale, stored[name].shape)
              for name, scale in scales.items()}
    if torch.compiler.is_compiling() or not _swappable(module, tuple(params)):
        return torch.func.functional_call(module, params, args, kwargs)
    return _call_with_swapped(module, params, args, kwargs)


torch.fx.wrap("call_with_gated_params")


def _inner_dims_filled(scale: Tensor, shape: torch.Size) -> Tensor:
    """``scale`` materialised along the parameter's innermost dims it broadcasts over, when
    that stays small next to the parameter: a multiply (and the reduction in its backward)
    that broadcasts over an inner dim runs element by element (an FNO weight's trailing
    real/imaginary pair: 1.6 ms against 0.25 ms for forward and backward, measured)."""
    if scale.dim() != len(shape):  # a last-dim scale: no inner dim to fill
        return scale
    target = list(scale.shape)
    d = len(shape)
    while d > 0 and target[d - 1] == 1 and shape[d - 1] > 1:
        target[d - 1] = shape[d - 1]
        d -= 1
    if target == list(scale.shape) or 4 * math.prod(target) > math.prod(shape):
        return scale
    return scale.expand(target).contiguous()


#: per module (by identity): which parameter sets :func:`_call_with_swapped` may swap
_SWAPPABLE: weakref.WeakKeyDictionary[nn.Module, dict[tuple, bool]] = weakref.WeakKeyDictionary()


def _swappable(module: nn.Module, names: tuple[str, ...]) -> bool:
    """Whether :func:`_call_with_swapped` gives ``functional_call``'s result for these
    parameters: no tensor of ``module`` is stored under a second name (functional_call ties
    such names itself), and each named one sits in its owner's parameter or buffer table
    (not behind a parametrization or a property). Asked once per module and parameter set:
    the answer is structure, and this runs on every training step."""
    known = _SWAPPABLE.setdefault(module, {})
    answer = known.get(names)
    if answer is None:
        tensors = [*module.named_parameters(remove_duplicate=False),
                   *module.named_buffers(remove_duplicate=False)]
        untied = len({id(t) for _, t in tensors}) == len(tensors)
        owners = [(module.get_submodule(name.rpartition(".")[0]), name.rpartition(".")[2])
                  for name in names]
        answer = known[names] = untied and all(
            attr in owner._parameters or attr in owner._buffers for owner, attr in owners)
    return answer


def _call_with_swapped(module: nn.Module, params: dict[str, Tensor], args, kwargs):
    """``functional_call`` for the plain modules the gated graph calls this way: put the
    gated tensors where the parameters are stored, call, put the parameters back.

    Same result and gradients as ``torch.func.functional_call``, without its general
    machinery (~70 us a call on the CPU, measured: a small MLP's training step spent more in
    it than in the layer it gated). ``_weight_side`` only picks modules whose attributes are
    plain (no custom ``__setattr__``), and ``_swappable`` leaves the rest to functional_call.
    """
    swapped: list[tuple[nn.Module, str, object]] = []
    try:
        for name, value in params.items():
            owner_path, _, attr = name.rpartition(".")
            owner = module.get_submodule(owner_path)
            swapped.append((owner, attr, stored_tensor(owner, attr)))
            store_tensor(owner, attr, value)
        return module(*args, **kwargs)
    finally:
        for owner, attr, original in reversed(swapped):
            store_tensor(owner, attr, original)


_GATE_OPS = (apply_gates, call_with_gated_params)


def is_gate_call(node: fx.Node) -> bool:
    """Whether ``node`` is one of the gate ops this module inserts."""
    return node.op == "call_function" and node.target in _GATE_OPS


def is_gate_plumbing(node: fx.Node) -> bool:
    """Whether ``node`` only carries gates to the gate ops: the gather, its pieces, and the
    index buffer the gather reads."""
    if node.op == "call_function" and node.target is gather_gates:
        return True
    if node.op == "call_function" and node.target is operator.getitem:
        source = node.args[0]
        return isinstance(source, fx.Node) and source.op == "call_function" \
            and source.target is gather_gates
    return node.op == "get_attr" and node.target == PIECES_INDEX


def is_gates_placeholder(node: fx.Node) -> bool:
    return node.op == "placeholder" and node.target == GATES_PLACEHOLDER


# ---- prepare: insert the gates -------------------------------------------------------------
class _Pieces:
    """The gather node and its pieces, built while the sites are visited: one piece per
    distinct index, the gather's arguments filled in by :meth:`finish`."""

    def __init__(self, gm: fx.GraphModule, gates_node: fx.Node, num_gates: int) -> None:
        self.gm, self.gates_node, self.length = gm, gates_node, num_gates + 1
        g = gm.graph
        with g.inserting_after(gates_node):  # (traced graphs may interleave placeholders)
            self.node = g.create_node("call_function", gather_gates, (gates_node, None, ()),
                                      name=PIECES_NODE)
        self.node.meta["is_wrapped"] = True  # one node when fx re-traces (unpickling)
        self.last = self.node
        self.indices: list[Tensor] = []
        self.by_index: dict[tuple, fx.Node] = {}

    def piece(self, index: Tensor) -> fx.Node:
        """The node holding the gates at ``index`` (one per distinct index)."""
        key = tuple(index.tolist())
        node = self.by_index.get(key)
        if node is None:
            g = self.gm.graph
            with g.inserting_after(self.last):
                node = g.create_node("call_function", operator.getitem,
                                     (self.node, len(self.indices)),
                                     name=f"{PIECE_PREFIX}{len(self.indices)}")
            self.indices.append(index)
            self.by_index[key] = self.last = node
        return node

    def finish(self) -> None:
        """Point the gather at the pieces' indices (none: erase it)."""
        g = self.gm.graph
        if not self.indices:
            g.erase_node(self.node)
            return
        index = torch.cat(self.indices)
        sizes = [len(i) for i in self.indices]
        if torch.equal(index, torch.arange(len(index))):  # the vector is already in order
            rest = self.length - len(index)
            self.node.args = (self.gates_node, None, tuple(sizes + [rest] if rest else sizes))
            return
        self.gm.register_buffer(PIECES_INDEX, index, persistent=False)
        with g.inserting_before(self.node):
            index_node = g.get_attr(PIECES_INDEX)
        self.node.args = (self.gates_node, index_node, tuple(sizes))


def insert_gates(gm: fx.GraphModule, graph: ChannelGraph) -> None:
    """Rewrite the traced graph so every gate site reads its input through the gates."""
    g = gm.graph
    # after the named inputs, before *args / **kwargs (Python allows nothing after those)
    placeholders = [n for n in g.nodes
                    if n.op == "placeholder" and not str(n.target).startswith("*")]
    variadic = [n for n in g.nodes if n.op == "placeholder" and str(n.target).startswith("*")]
    if variadic:
        with g.inserting_before(variadic[0]):
            gates_node = g.placeholder(GATES_PLACEHOLDER, default_value=None)
    else:
        with g.inserting_after(placeholders[-1]):
            gates_node = g.placeholder(GATES_PLACEHOLDER, default_value=None)
    pieces = _Pieces(gm, gates_node, graph.num_gates)
    # per called layer: the (param, dim, piece) specs it is called with
    param_specs: dict[fx.Node, list[tuple[str, int, fx.Node]]] = {}
    _collect_param_sites(gm, graph, pieces, param_specs)
    sites_per_node: dict[fx.Node, int] = {}
    for site in graph.records.sites:
        sites_per_node[site.node] = sites_per_node.get(site.node, 0) + 1
    # One gated node per (value, dim, gates): a layer that reads one tensor through several
    # arguments (self-attention's query, key and value) must still see one tensor, or it
    # takes its slower separate-input path (measured: three projections and their copies
    # instead of one packed one in nn.MultiheadAttention). Reused only by a later node.
    order = {node: position for position, node in enumerate(g.nodes)}
    shared: dict[tuple, tuple[fx.Node, int]] = {}
    for site in graph.records.sites:
        index = graph.gate_index(site.layout)
        if not bool((index < graph.num_gates).any()):
            continue
        value = (site.node.args[site.arg] if isinstance(site.arg, int)
                 else site.node.kwargs[site.arg])
        key = (value, site.dim, tuple(index.tolist()))
        earlier = shared.get(key)
        if earlier is not None and earlier[1] <= order[site.node]:
            _replace_arg(site, earlier[0])
            continue
        piece = pieces.piece(index)
        folds = _weight_side(gm, graph, site, value, sites_per_node, param_specs)
        if folds:
            param_specs.setdefault(site.node, []).extend(
                (param, dim, piece) for param, dim in folds)
            continue
        with g.inserting_before(site.node):
            gated = g.call_function(apply_gates, (value, piece, site.dim))
        shared[key] = (gated, order[site.node])
        # one graph node even when fx re-traces the code (unpickling a SparseModel)
        gated.meta["is_wrapped"] = True
        _replace_arg(site, gated)
    for node, specs in param_specs.items():
        with g.inserting_before(node):
            module_node = g.get_attr(target_path(node))
            call = g.call_function(
                call_with_gated_params, (module_node, tuple(specs), *node.args),
                dict(node.kwargs))
        call.meta = dict(node.meta)
        call.meta["is_wrapped"] = True
        call.meta[SOURCE_NAME] = source_name(node)
        node.replace_all_uses_with(call)
        g.erase_node(node)
    pieces.finish()
    g.lint()
    gm.recompile()


def _replace_arg(site: GateSite, gated: fx.Node) -> None:
    if isinstance(site.arg, int):
        args = list(site.node.args)
        args[site.arg] = gated
        site.node.args = tuple(args)
    else:
        kwargs = dict(site.node.kwargs)
        kwargs[site.arg] = gated
        site.node.kwargs = kwargs


def _collect_param_sites(gm: fx.GraphModule, graph: ChannelGraph, pieces: _Pieces,
                         param_specs: dict[fx.Node, list]) -> None:
    """Layers with gated inner units (``ParamSite``) are called with those params gated."""
    by_owner: dict[str, list[tuple[str, int, fx.Node]]] = {}
    for site in graph.records.param_sites:
        index = graph.gate_index(site.layout)
        if not bool((index < graph.num_gates).any()):
            continue
        by_owner.setdefault(site.owner, []).append((site.param, site.dim, pieces.piece(index)))
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target in by_owner:
            param_specs[node] = list(by_owner[node.target])


def _weight_side(gm: fx.GraphModule, graph: ChannelGraph, site: GateSite, value,
                 sites_per_node: dict, param_specs: dict) -> list[tuple[str, int]]:
    """The parameters (path, dim) to scale instead of gating the activation, or [].

    ``layer(x * z)`` equals the layer with the parameters that read ``x``'s channels scaled by
    ``z`` exactly when compaction's fold of those parameters is exact, which every rule that
    records ``fold=True`` promises. It is chosen when the activation is the bigger tensor
    (convolutions, tokens, graph nodes); small-batch MLPs keep the activation gate, where the
    weight is the bigger one. Only for a layer called with the gated input as its one gated
    argument, so the fold parameters read nothing else. A layer whose inner units are gated
    too (an FNO spectral conv's modes) scales the same parameter along another dim as well:
    each spec multiplies in turn, as compaction folds each (measured on Darcy: an activation
    gate on every 32 x 64 x 64 field its spectral conv and skip conv both read cost ~8 ms of a
    ~55 ms step).
    """
    node = site.node
    if node.op != "call_module" or sites_per_node[node] != 1:
        return []
    if not isinstance(value, fx.Node) or sum(a is value for a in node.args) + sum(
            v is value for v in node.kwargs.values()) != 1:
        return []
    index = graph.gate_index(site.layout)
    prefix = f"{node.target}."
    inner = {(param, dim) for param, dim, _ in param_specs.get(node, ())}
    folds = []
    for role in graph.records.roles:
        if not (role.fold and (role.owner == node.target or role.owner.startswith(prefix))):
            continue
        rel_owner = role.owner[len(prefix):] if role.owner != node.target else ""
        path = f"{rel_owner}.{role.name}" if rel_owner else role.name
        if (path, role.dim) in inner:
            # the layer's own inner units (an FNO's modes, a GAT's channels within heads),
            # gated by their param site, even where they share the input's gates (a GAT
            # reading the residual stream its rows write): never scaled twice
            continue
        if role.layout.length != len(index) or not torch.equal(
                graph.gate_index(role.layout), index):
            return []  # this layer folds gates of another layout too: not ours to move
        folds.append((path, role.dim))
    if not folds:
        return []
    module = gm.get_submodule(target_path(node))
    if not all(plain_attributes(module.get_submodule(p.rpartition(".")[0]))
               for p, _ in folds):
        return []  # functional_call cannot swap parameters behind a custom __setattr__
    if len(list(module.named_modules(remove_duplicate=False))) != len(list(module.modules())):
        return []  # a submodule under two names (GATv2's share_weights): functional_call
        # would restore the second name's parameter to the swapped-in tensor
    weight_numel = sum(module.get_parameter(p).numel() for p, _ in folds)
    meta = value.meta.get("tensor_meta")
    activation = math.prod(meta.shape) if meta is not None else 0
    return folds if 4 * activation > weight_numel else []  # the example batch is a small one


# ---- convert: remove the gates -------------------------------------------------------------
def strip_gates(gm: fx.GraphModule) -> None:
    """Turn a gated graph back into a plain one (gates already folded into the weights).

    Gated layer calls become plain calls, activation gates disappear, and the gate
    placeholder, the gather, its pieces and its index buffer go with them.
    """
    g = gm.graph
    for node in list(g.nodes):
        if node.op != "call_function":
            continue
        if node.target is call_with_gated_params:
            module_node, _, *args = node.args
            with g.inserting_before(node):
                call = g.call_module(module_node.target, tuple(args), dict(node.kwargs))
            call.meta = dict(node.meta)
            node.replace_all_uses_with(call)
            g.erase_node(node)
            if not module_node.users:
                g.erase_node(module_node)
        elif node.target is apply_gates:
            node.replace_all_uses_with(node.args[0])
            g.erase_node(node)
    for node in reversed(list(g.nodes)):
        if is_gate_plumbing(node) and not node.users:
            g.erase_node(node)
    if hasattr(gm, PIECES_INDEX):
        delattr(gm, PIECES_INDEX)
    for node in list(g.nodes):
        if is_gates_placeholder(node):
            g.erase_node(node)
