"""Cut closed channels out of the weights and return a plain PyTorch module.

The result is a ``torch.fx.GraphModule`` made only of the model's own layer classes (smaller)
and torch ops: it pickles with ``torch.save``, scripts with ``torch.jit.script`` and reloads
without LUMOS. Fractional deterministic gates are folded into the reading layer's weights, so
``compact(sm)(x)`` equals ``sm.eval()(x)`` to float tolerance.
"""

from __future__ import annotations

import operator
from collections import defaultdict

import torch
from torch import fx, nn

from .copying import copy_model
from .errors import ConfigurationError
from .gating import strip_gates
from .topology.registry import REGISTRY
from .topology.rule_helpers import call_override, store_tensor, stored_tensor
from .topology.rules_norm import STAT_INPUT
from .topology.spaces import Layout

INPUT_MODES = ("full", "selected")


def compact(sm, inputs: str = "full") -> fx.GraphModule:
    """Compacted copy of ``sm``'s model at its deterministic gates.

    ``inputs="full"`` keeps the original call signature: the model takes every input column and
    picks the kept features itself. ``inputs="selected"`` expects only the kept features, in
    the order of ``sm.selected_features()``.
    """
    if inputs not in INPUT_MODES:
        raise ConfigurationError(f"inputs must be one of {INPUT_MODES}, got {inputs!r}.")
    graph_info = sm.graph_info
    # decisions on the CPU (gate indices live there); tensors are cut on their own device
    values = sm.gate_values().double().cpu()
    keep = torch.cat([sm.kept_mask().cpu(), torch.ones(1, dtype=torch.bool)])
    device = sm.gates.log_alpha.device
    gm = copy_model(sm.model)
    nodes = {n.name: n for n in gm.graph.nodes}

    def kept(layout: Layout) -> torch.Tensor:
        return torch.nonzero(keep[graph_info.gate_index(layout)]).flatten()

    # 1. fold fractional gates into the readers, then slice every role's dimension.
    roles_by_tensor = defaultdict(list)
    for role in graph_info.records.roles:
        roles_by_tensor[(role.owner, role.name)].append(role)
    touched = set()
    # a parameter tied between modules (``c.weight = b.weight``) stays one parameter; the
    # coordinator keeps tied channels whole, so every owner computes the same tensor
    rebuilt: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # original kept alive: ids
    # of freed tensors are reused
    with torch.no_grad():
        for (owner, name), roles in roles_by_tensor.items():
            module = gm.get_submodule(owner) if owner else gm
            tensor = stored_tensor(module, name)
            if id(tensor) in rebuilt and rebuilt[id(tensor)][0] is tensor:
                store_tensor(module, name, rebuilt[id(tensor)][1])
                touched.add(owner)
                continue
            new = tensor.detach().clone()
            for role in roles:
                idx = graph_info.gate_index(role.layout)
                if role.fold:
                    shape = [1] * new.dim()
                    shape[role.dim] = -1
                    new = new * values[idx].to(device=new.device, dtype=new.dtype).view(shape)
                new = new.index_select(role.dim,
                                       torch.nonzero(keep[idx]).flatten().to(new.device))
            if isinstance(tensor, nn.Parameter):
                new = nn.Parameter(new, requires_grad=tensor.requires_grad)
            store_tensor(module, name, new)
            rebuilt[id(tensor)] = (tensor, new)
            touched.add(owner)
    for owner in touched:
        module = gm.get_submodule(owner) if owner else gm
        resize = REGISTRY.resize_hook(module)
        if resize is not None:
            resize(module)

    # 2. literal sizes in view/reshape/expand follow the kept channel counts.
    for rw in graph_info.records.rewrites:
        node = nodes[getattr(rw.node, "name", rw.node)]  # a name once the model was pickled
        node.args = _replace_at(node.args, rw.arg_path, int(kept(rw.layout).numel()) * rw.factor)

    # 3. drop the gate nodes and the gate placeholder; gated leaf calls become plain calls.
    g = gm.graph
    strip_gates(gm)

    # 4. layers whose class cannot express their new shape are rebuilt in plain torch; norms
    # with statistics over gated channels learn which they keep and at what gate value.
    stats = {s.owner: s for s in getattr(graph_info.records, "stat_inputs", [])}
    for node in g.nodes:
        stat = stats.get(node.target) if node.op == "call_module" else None
        if stat is not None:
            idx = kept(stat.layout)
            scale = values[graph_info.gate_index(stat.layout)][idx]
            node.meta[STAT_INPUT] = (idx.to(device), scale.float().to(device), stat.dim)
    for node in list(g.nodes):
        if node.op != "call_module":
            continue
        entry = REGISTRY.for_module(gm.get_submodule(node.target))
        if entry is not None and entry.lower is not None:
            replacement = entry.lower(gm.get_submodule(node.target), node)
            if replacement is not None:
                owner, _, name = node.target.rpartition(".")
                setattr(gm.get_submodule(owner) if owner else gm, name, replacement)

    # 5. the compacted model picks its kept features itself (inputs="full").
    if inputs == "full":
        for name, space in graph_info.feature_spaces.items():
            idx = kept(Layout.of(space))
            if idx.numel() == space.size:
                continue
            node = next(n for n in g.nodes if n.op == "placeholder" and n.target == name)
            buffer = f"kept_features_{name}"
            gm.register_buffer(buffer, idx.to(device))
            dim = graph_info.feature_dims[name]
            users = list(node.users)
            with g.inserting_after(node):
                idx_node = g.get_attr(buffer)
            with g.inserting_after(idx_node):
                selected = g.call_method("index_select", (node, dim, idx_node))
            for user in users:
                user.replace_input_with(node, selected)
    _reloadable_calls(gm)
    g.lint()
    gm.recompile()
    # fx remembers the tracer class and pickles a reference to it: the result must load
    # without LUMOS installed.
    gm._tracer_cls = None
    g._tracer_cls = None
    gm.eval()
    return gm


def _reloadable_calls(gm: fx.GraphModule) -> None:
    """Calls of layers whose class overrides ``__call__`` become ``operator.call(layer, ...)``
    nodes that fx keeps whole when it re-traces the saved code on ``torch.load``.

    ``torch.load`` of a GraphModule traces its code again with every module a leaf, but a
    class's own ``__call__`` (torch-geometric's aggregations: ``int(index.max()) + 1``) runs
    before fx sees the module call and cannot run on proxies. (``operator.call`` is Python
    3.11+; on 3.10 such a model still runs but does not reload.)
    """
    call = getattr(operator, "call", None)
    if call is None:
        return
    g = gm.graph
    for node in list(g.nodes):
        if node.op != "call_module":
            continue
        if call_override(gm.get_submodule(node.target)) is None:
            continue
        with g.inserting_before(node):
            attr = g.get_attr(node.target)
            direct = g.call_function(call, (attr, *node.args), dict(node.kwargs))
        direct.meta = dict(node.meta)
        direct.meta["is_wrapped"] = True
        node.replace_all_uses_with(direct)
        g.erase_node(node)


def kept_feature_indices(sm) -> dict[str, torch.Tensor]:
    """Per gated input, the indices of the features compaction keeps (ascending)."""
    graph_info = sm.graph_info
    keep = torch.cat([sm.kept_mask().cpu(), torch.ones(1, dtype=torch.bool)])
    return {name: torch.nonzero(keep[graph_info.gate_index(Layout.of(space))]).flatten()
            for name, space in graph_info.feature_spaces.items()}


def example_for(sm, inputs: str) -> tuple:
    """``sm``'s example inputs as the compacted model takes them (``inputs`` mode)."""
    args = list(sm.example_args)
    if inputs == "selected":
        kept = kept_feature_indices(sm)
        names = list(sm.signature.parameters)
        for i, (name, value) in enumerate(zip(names, args)):
            if name in kept:
                dim = sm.graph_info.feature_dims[name]
                args[i] = value.index_select(dim, kept[name].to(value.device))
    return tuple(args)


def _replace_at(args, path: tuple, value: int):
    """Copy of nested tuple ``args`` with the entry at ``path`` replaced."""
    head, rest = path[0], path[1:]
    items = list(args)
    items[head] = value if not rest else _replace_at(items[head], rest, value)
    return type(args)(items) if isinstance(args, tuple) else items
