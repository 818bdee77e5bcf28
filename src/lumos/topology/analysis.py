"""Propagate channel infos through an fx graph and collect the gate groups.

The result, :class:`ChannelGraph`, is everything the later layers need: which spaces are gate
groups, where gates are applied, which parameter dims each group slices, and the cost terms.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import re
from dataclasses import dataclass

import torch
from torch import fx
from torch.fx.node import map_aggregate
from torch.fx.passes.shape_prop import ShapeProp, _extract_tensor_metadata

from ..errors import InputError, LumosError
from ..modes import evaluating
from .context import RuleContext, _iter_infos, describe
from .infos import (
    AttrInfo,
    GateSite,
    ParamRole,
    ParamSite,
    TensorInfo,
)
from .mode_flags import is_flag_node
from .registry import REGISTRY, RuleEntry
from .rule_helpers import canonicalize, target_path
from .spaces import Layout, Space


@dataclass
class Group:
    """One gate group: a merged space whose channels each get one gate."""

    index: int
    root: Space
    name: str
    kind: str
    size: int
    offset: int = 0
    #: every path from the model's inputs to its output reads these channels: closing all
    #: of them would leave an output that no longer depends on the inputs
    essential: bool = False

    @property
    def nonempty(self) -> bool:
        return self.root.nonempty


def propagate_shapes(gm: fx.GraphModule, example_args: tuple) -> None:
    """Record every node's shape from one run on the example inputs.

    The run is in eval mode without autograd: it must not touch the user's model (BatchNorm
    running statistics would otherwise take a step towards the example batch). A model that
    fails on its own example inputs gets an :class:`InputError` naming the layer.
    """
    try:
        with evaluating(gm), torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            _ShapeProp(gm).propagate(*example_args)
    except Exception as exc:
        cause = exc.__cause__ or exc
        node = re.search(r"node=%(\S+)", str(exc))
        where = f" at '{node.group(1)}'" if node else ""
        first = str(cause).strip().splitlines()[0][:300] if str(cause).strip() else ""
        raise InputError(
            f"the model fails on its own example_inputs{where}: {type(cause).__name__}: "
            f"{first}. Pass example inputs the model runs on as it is (same dtypes, shapes "
            "and devices as real batches, several samples per batch) and check that "
            "model(*example_inputs) works."
        ) from None


class _ShapeProp(ShapeProp):
    """fx's ShapeProp, whose metadata step survives values it cannot rebuild.

    fx records a node's metadata by rebuilding its value with every tensor replaced by its
    metadata; a ``PackedSequence`` (``pack_padded_sequence``, for variable-length sequences
    into a recurrent layer) reads ``.device`` off its fields when rebuilt, so the run failed as
    if the model could not run its own example. Such a node records no tensor metadata (what
    reads it is then kept whole by the rules) and the run goes on."""

    def run_node(self, n: fx.Node):  # noqa: ANN201 - fx's signature
        try:
            result = fx.Interpreter.run_node(self, n)
        except Exception as exc:
            raise RuntimeError(f"ShapeProp error for: node={n.format_node()}") from exc
        found = False

        def extract(value):  # noqa: ANN001, ANN202
            nonlocal found
            if isinstance(value, torch.Tensor):
                found = True
                return _extract_tensor_metadata(value)
            return value

        try:
            meta = map_aggregate(result, extract)
        except Exception:  # noqa: BLE001 - a container fx cannot rebuild from metadata
            found = False
        if found:
            n.meta["tensor_meta"] = meta
        n.meta["type"] = type(result)
        return result


class ChannelGraph:
    """The coordinator's reading of one traced model on its example inputs."""

    _infos_by_name: dict[str, object]  # set when unpickled (the fx nodes are not kept)

    def __init__(
        self,
        gm: fx.GraphModule,
        example_args: tuple,
        feature_inputs: dict[str, int],
        strict: bool = False,
        shapes_known: bool = False,
        keep: frozenset[str] = frozenset(),
        fixed_kinds: dict[str, str] | None = None,
    ) -> None:
        self.gm = gm
        #: modules the user asked to keep whole (``sparsify(keep=...)``)
        self.keep = frozenset(keep)
        if not shapes_known:
            propagate_shapes(gm, example_args)
        self._run_rules(feature_inputs, strict)
        self.ctx.finish()
        for space in self.ctx.spaces:  # unit kinds the options keep whole
            reason = (fixed_kinds or {}).get(space.kind)
            if reason is not None:
                space.pin(reason)
        self.records = self.ctx.records
        self.spaces = self.ctx.spaces
        self._count_unclaimed_params()
        self._count_measured_flops(example_args)
        self.groups = self._collect_groups()
        self._mark_essential(self.groups)
        lone = [g for g in self.groups if g.essential and g.size == 1]
        if lone:  # its gate could only scale it, or cut the output off the inputs
            for group in lone:
                group.root.pin("one channel that every path from the inputs to the output "
                               "reads: closing it would cut the output off, so it is not gated")
            self.groups = self._collect_groups()
            self._mark_essential(self.groups)

    def _mark_essential(self, groups: list[Group]) -> None:
        """Flag the groups that are the only way from the inputs to the output.

        A read of a tensor whose channels all belong to a group (a gate site over it only, or
        units inside a layer gated by it) carries nothing once all its gates are closed; if
        every path from an input to the output crosses such a read, the group is essential.
        Over-flagging is harmless (one gate is kept open); missing one is not.
        """
        graph = self.gm.graph
        # the data: floating inputs (an edge_index or a batch vector steers, it is no path)
        inputs = [n for n in graph.nodes if n.op == "placeholder"
                  and getattr(n.meta.get("tensor_meta"), "dtype", None) is not None
                  and n.meta["tensor_meta"].dtype.is_floating_point]
        output = next((n for n in graph.nodes if n.op == "output"), None)
        if output is None or not inputs:
            return
        cuts: dict[int, set[tuple[fx.Node, fx.Node]]] = {}
        for site in self.records.sites:
            roots = {id(seg.space.find()) for seg in site.layout.segments}
            value = site.node.args[site.arg] if isinstance(site.arg, int) \
                else site.node.kwargs.get(site.arg)
            if len(roots) == 1 and isinstance(value, fx.Node):
                cuts.setdefault(roots.pop(), set()).add((site.node, value))
        calls: dict[str, list[fx.Node]] = {}
        for n in graph.nodes:
            if n.op == "call_module":
                calls.setdefault(str(n.target), []).append(n)
        for psite in self.records.param_sites:  # units inside a layer: all its reads cut
            roots = {id(seg.space.find()) for seg in psite.layout.segments}
            if len(roots) == 1 and psite.cuts:
                cut = cuts.setdefault(roots.pop(), set())
                for n in calls.get(psite.owner, []):
                    cut.update((n, a) for a in n.all_input_nodes)
        for group in groups:
            group_cut = cuts.get(id(group.root))
            if group_cut and not _reaches(inputs, output, group_cut):
                group.essential = True

    def _run_rules(self, feature_inputs: dict[str, int], strict: bool) -> None:
        self.ctx = RuleContext(self.gm, strict)
        self.feature_spaces: dict[str, Space] = {}
        self.feature_dims: dict[str, int] = {}
        #: the registry entry that described each node (by node name): what the rules reached
        self.rules_used: dict[str, RuleEntry] = {}
        for node in self.gm.graph.nodes:
            self.ctx.infos[node] = self._propagate(node, feature_inputs)

    @classmethod
    def feature_dim(cls, gm: fx.GraphModule, name: str, rank: int) -> int:
        """The dim of input ``name`` that the model reads as channels (shapes already known).

        Each dim is tried as the feature dim and the rules run over the graph: the one whose
        channels a layer reads first (the earliest gate site the rules record for them) wins;
        -1 when none is read. The rules' own records decide — a permute, a transpose or a
        layer reading dim 1 is followed by the same rule that gates it, not by a copy.
        """
        best: tuple[int, int] | None = None  # (site position, candidate order)
        chosen = -1
        order = {n: i for i, n in enumerate(gm.graph.nodes)}
        for rank_order, dim in enumerate([-1, *range(rank - 2, -1, -1)]):
            trial = cls.__new__(cls)
            trial.gm = gm
            try:
                with contextlib.redirect_stderr(io.StringIO()):
                    trial._run_rules({name: dim % rank}, strict=False)
            except Exception:  # a candidate a rule cannot follow is simply not the one
                continue
            space = trial.feature_spaces.get(name)
            if space is None:
                continue
            root = space.find()
            reads = [order[site.node] for site in trial.ctx.records.sites
                     if any(seg.space.find() is root for seg in site.layout.segments)]
            if reads and (best is None or (min(reads), rank_order) < best):
                best = (min(reads), rank_order)
                chosen = dim
        return chosen

    # ---- propagation ---------------------------------------------------------------------
    def _propagate(self, node: fx.Node, feature_inputs: dict[str, int]):
        ctx = self.ctx
        if node.op == "placeholder":
            shape = ctx.shape(node)
            if node.target not in feature_inputs or shape is None:
                return None
            dim = feature_inputs[node.target]
            space = Space(shape[dim], "feature", node.target)
            ctx.spaces.append(space)
            self.feature_spaces[node.target] = space
            self.feature_dims[node.target] = dim - len(shape) if dim >= 0 else dim
            return TensorInfo(self.feature_dims[node.target], Layout.of(space))
        if node.op == "get_attr":
            owner, _, name = target_path(node).rpartition(".")
            return AttrInfo(owner, name)
        if node.op == "output":
            for value in node.all_input_nodes:
                info = ctx.info(value)
                ctx.pin(info, "model output (outputs are never pruned)")
                if isinstance(info, AttrInfo):
                    ctx.fix_attr(info)
            return None
        if is_flag_node(node):
            return None  # the run-time train/eval flag: a bool, no channels
        canonicalize(node)
        module = ctx.module(node) if node.op == "call_module" else None
        if module is not None and node.target in getattr(self, "keep", ()):
            reason = f"{describe(node)} is kept whole at the user's request (sparsify keep=)"
            ctx.pin([ctx.info(a) for a in (*node.args, *node.kwargs.values())], reason)
            ctx.ungated(describe(node), "kept whole at the user's request (sparsify keep=)")
            ctx.measure_flops(node)
            return None
        entry = REGISTRY.for_node(node, module)
        if entry is None:
            ctx.unknown(node)
            return None
        self.rules_used[node.name] = entry
        before = (len(ctx.records.sites), len(ctx.records.roles), len(ctx.records.param_sites))
        try:
            out = entry.propagate(ctx, node, module)
        except LumosError:
            raise
        except Exception as exc:  # a rule that cannot read this call: keep its channels whole
            ctx.unknown(node)
            ctx.ungated(describe(node), f"its rule could not read this call "
                        f"({type(exc).__name__}: {exc}); the channels reaching it are kept")
            return None
        self._check(node, out)
        self._pin_dropped(node, out, before)
        return out

    def _pin_dropped(self, node: fx.Node, out, before: tuple[int, int, int]) -> None:
        """Pin input channels a rule neither read nor passed on: a tensor made from tracked
        channels whose rule lost track of them would otherwise leave them silently ungated
        (never listed as kept whole, never refused in strict mode)."""
        if self.ctx.shape(node) is None:
            return  # not a tensor (a dtype, a device, a bool): nothing flows on
        records = self.ctx.records
        seen = {id(seg.space.find()) for item in _iter_infos(out) for seg in item.layout.segments}
        new: list[GateSite | ParamRole | ParamSite] = [
            *records.sites[before[0]:], *records.roles[before[1]:],
            *records.param_sites[before[2]:]]
        for rec in new:
            seen.update(id(seg.space.find()) for seg in rec.layout.segments)
        claimed = {(r.owner, r.name) for r in records.roles[before[1]:]}
        out_attrs = [out] if isinstance(out, AttrInfo) else []
        for arg in (*node.args, *node.kwargs.values()):
            info = self.ctx.info(arg)
            if isinstance(info, AttrInfo) and (info.owner, info.name) not in claimed and \
                    not any(a.owner == info.owner and a.name == info.name for a in out_attrs):
                # a parameter read by a rule that neither describes nor passes it on (a
                # transposed tie, ``F.linear(h, enc.weight.t())``) keeps its shape
                self.ctx.fix_attr(info)
            for item in _iter_infos(info):
                if not isinstance(item, TensorInfo):
                    continue
                for seg in item.layout.segments:
                    root = seg.space.find()
                    if root.pinned is None and id(root) not in seen:
                        root.pin(f"{describe(node)} does not pass on or read its input "
                                 "channels in a way LUMOS can follow")
                        self.ctx.ungated(describe(node), "the channels reaching it are kept "
                                         "whole (its rule does not follow them)")

    def _check(self, node: fx.Node, out) -> None:
        """A rule's claim must agree with the real shape: catches rule bugs, never user errors."""
        if isinstance(out, TensorInfo):
            shape = self.ctx.shape(node)
            if shape is None or -out.dim > len(shape) or shape[out.dim] != out.layout.length:
                raise AssertionError(
                    f"internal: rule for {describe(node)} produced a layout of length "
                    f"{out.layout.length} for a tensor of shape {shape} at dim {out.dim}"
                )

    # ---- after propagation ---------------------------------------------------------------
    def _count_unclaimed_params(self) -> None:
        """Parameters no rule claimed still count (as constant) so totals equal the real model."""
        seen: set[int] = set()
        for mod_name, module in self.gm.named_modules():
            for p_name, p in module.named_parameters(recurse=False):
                if id(p) in seen:
                    continue
                seen.add(id(p))
                if (mod_name, p_name) not in self.records.claimed:
                    label = f"{mod_name}.{p_name}" if mod_name else p_name
                    self.ctx.cost("params", p.numel(), (), label)

    def _count_measured_flops(self, example_args: tuple) -> None:
        """Run the example once and count the FLOPs of the nodes no rule describes."""
        targets = set(self.records.measured)
        if not targets:
            return
        from ..measure import flop_counter

        measured: dict[fx.Node, int] = {}

        class _Measure(fx.Interpreter):
            def run_node(self, n: fx.Node):
                if n not in targets:
                    return super().run_node(n)
                with flop_counter() as counter:
                    result = super().run_node(n)
                measured[n] = counter.get_total_flops()
                return result

        with evaluating(self.gm), torch.no_grad():
            _Measure(self.gm).run(*example_args)
        for n, flops in measured.items():
            if flops:
                self.ctx.cost("flops", flops, (), describe(n))

    def _collect_groups(self) -> list[Group]:
        roots: dict[int, Space] = {}
        sites: list[GateSite | ParamSite] = [*self.records.sites, *self.records.param_sites]
        for site in sites:
            for seg in site.layout.segments:
                root = seg.space.find()
                if root.pinned is None and root.size > 0:
                    roots.setdefault(id(root), root)
        groups = []
        offset = 0
        for i, root in enumerate(roots.values()):
            groups.append(Group(i, root, root.origin, root.kind, root.size, offset))
            offset += root.size
        self._group_of = {id(g.root): g for g in groups}
        return groups

    def info_by_name(self) -> dict[str, object]:
        """What the coordinator knows about each graph value, by node name."""
        if "ctx" in self.__dict__:
            return {n.name: info for n, info in self.ctx.infos.items()}
        return self._infos_by_name

    def __getstate__(self) -> dict:
        """Pickle without fx nodes (they drag their graph along): records keep node names."""
        state = dict(self.__dict__)
        state["_infos_by_name"] = self.info_by_name()
        state.pop("ctx", None)
        state.pop("rules_used", None)  # rules are code: they stay in the registry
        state["gm"] = None  # the SparseModel pickles its own (gated) copy of the graph module
        records = copy.copy(self.records)

        def named(items):
            return [dataclasses.replace(i, node=getattr(i.node, "name", i.node)) for i in items]

        records.sites = named(records.sites)
        records.rewrites = named(records.rewrites)
        records.measured = [getattr(n, "name", n) for n in records.measured]
        state["records"] = records
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._group_of = {id(g.root): g for g in self.groups}  # ids change across pickling

    def group_of(self, space: Space) -> Group | None:
        return self._group_of.get(id(space.find()))

    @property
    def num_gates(self) -> int:
        return sum(g.size for g in self.groups)

    def gate_index(self, layout: Layout) -> torch.Tensor:
        """For each position of ``layout``, its gate's index (``num_gates`` = always open)."""
        parts = []
        sentinel = self.num_gates
        for seg in layout.segments:
            group = self.group_of(seg.space)
            if group is None:
                parts.append(torch.full((seg.length,), sentinel, dtype=torch.long))
            else:
                idx = torch.arange(seg.start, seg.stop) + group.offset
                parts.append(idx.repeat_interleave(seg.block))
        if not parts:
            return torch.zeros(0, dtype=torch.long)
        return torch.cat(parts)

    def pinned_spaces(self) -> list[Space]:
        """Roots of units that were kept whole (not gated), with their reasons, for the report:
        every space a layer made or an input holds, whether or not a layer reads it."""
        seen: dict[int, Space] = {}
        sites: list[GateSite | ParamSite] = [*self.records.sites, *self.records.param_sites]
        candidates = [seg.space for site in sites for seg in site.layout.segments]
        for space in [*candidates, *getattr(self, "spaces", ())]:
            root = space.find()
            if root.pinned is not None and root.kind != "opaque":
                seen.setdefault(id(root), root)
        return list(seen.values())


#: ops whose result depends on their input's shape, dtype or device only: no data flows on
_SHAPE_ONLY_FUNCTIONS = {torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like,
                         torch.rand_like, torch.randn_like}
_SHAPE_ONLY_ATTRIBUTES = {"shape", "dtype", "device", "ndim", "layout", "is_cuda", "training"}
_SHAPE_ONLY_METHODS = {"size", "dim", "new_zeros", "new_ones", "new_empty", "new_full",
                       "new_tensor", "numel"}


def _carries_data(user: fx.Node) -> bool:
    if user.op == "call_function" and user.target is getattr:
        return not (len(user.args) > 1 and user.args[1] in _SHAPE_ONLY_ATTRIBUTES)
    if user.op == "call_function":
        return user.target not in _SHAPE_ONLY_FUNCTIONS
    if user.op == "call_method":
        return user.target not in _SHAPE_ONLY_METHODS
    return True


def _reaches(sources: list[fx.Node], target: fx.Node, cut: set) -> bool:
    """Whether ``target`` depends on a source's values through edges (user, producer) not in
    ``cut`` (a ``zeros_like(x)`` reads x's shape only)."""
    seen = set(sources)
    stack = list(sources)
    while stack:
        node = stack.pop()
        for user in node.users:
            if user in seen or (user, node) in cut or not _carries_data(user):
                continue
            if user is target:
                return True
            seen.add(user)
            stack.append(user)
    return False
