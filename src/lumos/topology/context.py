"""What a rule may ask and record: :class:`RuleContext`, one per traced model.

Rules read the infos of a node's inputs through it and record parameter roles, gate sites,
cost terms and pins on it; :class:`~lumos.topology.analysis.ChannelGraph` runs the rules and
collects what they recorded.
"""

from __future__ import annotations

import math

from torch import fx, nn

from ..errors import UnsupportedModelError
from .infos import (
    AttrInfo,
    CostTerm,
    GateSite,
    ParamRole,
    ParamSite,
    Records,
    ShapeInfo,
    ShapeRewrite,
    StatInput,
    TensorInfo,
    TupleInfo,
    Ungated,
)
from .rule_helpers import stored_tensor, target_path
from .spaces import Layout, Space, unify


def _iter_infos(info):
    if isinstance(info, (TensorInfo, ShapeInfo)):
        yield info
    elif isinstance(info, TupleInfo):
        for item in info.items:
            yield from _iter_infos(item)
    elif isinstance(info, (list, tuple)):
        for item in info:
            yield from _iter_infos(item)


def describe(node: fx.Node) -> str:
    if node.op == "call_module":
        return f"module '{node.target}'"
    if node.op == "call_function":
        return f"function {getattr(node.target, '__name__', node.target)}"
    if node.op == "call_method":
        return f"method .{node.target}()"
    return f"{node.op} '{node.target}'"


class RuleContext:
    """What a rule may ask and record. One context per traced model."""

    def __init__(self, gm: fx.GraphModule, strict: bool) -> None:
        self.gm = gm
        self.strict = strict
        self.infos: dict[fx.Node, object] = {}
        self.records = Records()
        self._roles: dict[tuple[str, str, int], ParamRole] = {}
        self._fixed_attrs: set[tuple[str, str]] = set()
        #: every space of units a layer made (for the report: gated or kept whole, and why)
        self.spaces: list[Space] = []

    # ---- reading -------------------------------------------------------------------------
    def info(self, arg):
        """What the coordinator knows about an fx argument (or a list of them), or None."""
        if isinstance(arg, fx.Node):
            return self.infos.get(arg)
        if isinstance(arg, (list, tuple)):
            return [self.info(a) for a in arg]
        return None

    def tensor_info(self, arg) -> TensorInfo | None:
        """``TensorInfo(dim, layout)`` when ``arg`` carries tracked channels on ``dim`` (a
        negative index), else None: the one question most rules ask first."""
        info = self.info(arg)
        return info if isinstance(info, TensorInfo) else None

    @staticmethod
    def shape(arg) -> tuple[int, ...] | None:
        """The shape ``arg`` (an fx node) had on the example inputs, or None."""
        if not isinstance(arg, fx.Node):
            return None
        meta = arg.meta.get("tensor_meta")
        shape = getattr(meta, "shape", None)
        return tuple(shape) if shape is not None else None

    def module(self, node: fx.Node) -> nn.Module:
        """The layer a ``call_module`` node calls."""
        return self.gm.get_submodule(target_path(node))

    def attr(self, owner: str, name: str):
        """The tensor ``owner.name`` (``owner`` a dotted module path, "" for the root)."""
        mod = self.gm.get_submodule(owner) if owner else self.gm
        return stored_tensor(mod, name)

    # ---- recording -----------------------------------------------------------------------
    def new_space(self, size: int, kind: str, origin: str) -> Space:
        """A fresh set of ``size`` channels that live or die one by one (one gate each, if a
        layer reads them). ``kind`` ("neuron", "channel", "head", ...) selects per-kind
        options; ``origin`` names it in reports."""
        space = Space(size, kind, origin)
        self.spaces.append(space)
        return space

    def opaque(self, size: int, reason: str, origin: str = "opaque") -> Layout:
        """A layout of ``size`` channels that are never gated (an untracked input's width)."""
        space = Space(size, "opaque", origin)
        space.pin(reason)
        return Layout.of(space)

    def pin(self, info, reason: str) -> None:
        """Keep every channel ``info`` carries whole; ``reason`` is shown by ``report()``.
        Pinning is always exact: when a rule cannot prove a channel may close, it pins."""
        for item in _iter_infos(info):
            item.layout.pin(reason)

    def role(self, owner: str, name: str, dim: int, layout: Layout, fold: bool = False) -> None:
        """Record that ``owner.name``'s dimension ``dim`` is indexed by ``layout``."""
        key = (owner, name, dim)
        existing = self._roles.get(key)
        if existing is None:
            role = ParamRole(owner, name, dim, layout, fold)
            self._roles[key] = role
            self.records.roles.append(role)
            return
        # A shared module called twice reads both inputs with the same columns: tie them.
        unify(existing.layout, layout, f"parameter {owner}.{name} shared between call sites")
        if fold != existing.fold:
            existing.layout.pin(f"parameter {owner}.{name} is both read and passed through")

    def fix_attr(self, info: AttrInfo) -> None:
        """A parameter used in a way no rule understands must keep its shape."""
        self._fixed_attrs.add((info.owner, info.name))

    def finish(self) -> None:
        """Pin the channels of parameters that must keep their shape (used opaquely or tied)."""
        by_tensor: dict[int, set[tuple[str, str]]] = {}
        for role in self.records.roles:
            tensor = self.attr(role.owner, role.name)
            by_tensor.setdefault(id(tensor), set()).add((role.owner, role.name))
        for role in self.records.roles:
            key = (role.owner, role.name)
            if key in self._fixed_attrs:
                role.layout.pin(f"parameter {role.owner}.{role.name} is also used by an op "
                                "without a channel rule")
            elif len(by_tensor[id(self.attr(*key))]) > 1:
                role.layout.pin(f"parameter {role.owner}.{role.name} is tied to another module")
            elif self._made_by_a_pre_hook(*key):
                role.layout.pin(
                    f"{role.owner}.{role.name} is not stored but made by a forward pre-hook on "
                    "every call (torch.nn.utils.weight_norm / spectral_norm): kept whole")

    def _made_by_a_pre_hook(self, owner: str, name: str) -> bool:
        """``owner.name`` is a plain tensor attribute of a module with forward pre-hooks: the
        hook-based ``weight_norm``/``spectral_norm`` rebuild ``weight`` from other parameters
        before each call, so slicing it would be undone (and its sources stay whole)."""
        module = self.gm.get_submodule(owner) if owner else self.gm
        return (bool(module._forward_pre_hooks) and name not in module._parameters
                and name not in module._buffers)

    def site(self, node: fx.Node, arg: int | str, dim: int, layout: Layout) -> None:
        """Gate argument ``arg`` (position or keyword) of ``node`` along ``dim``: the layer
        *reads* these channels here, so a closed one is simply never read."""
        self.records.sites.append(GateSite(node, arg, dim, layout))

    def stat_input(self, node: fx.Node, dim: int, layout: Layout) -> None:
        """Layer ``node`` normalises with statistics over ``layout``'s channels on ``dim``.

        Its input is gated (closed channels read as zeros); compaction rebuilds it so the
        statistics still span the original width (see ``lumos.topology.rules_norm``)."""
        self.site(node, 0, dim, layout)
        self.records.stat_inputs.append(StatInput(target_path(node), layout, dim))

    def param_site(self, owner: str, param: str, dim: int, layout: Layout,
                   cuts: bool = True) -> None:
        """Gate ``layout``'s channels inside leaf ``owner`` by scaling ``owner.param`` on ``dim``;
        compaction folds the gate values into the same parameter. ``cuts=False`` says the
        layer still reads its input when all of them close (one of several parallel parts),
        so they are never the only path from the inputs to the output."""
        mod_path, _, name = f"{owner}.{param}".rpartition(".")
        self.role(mod_path, name, dim, layout, fold=True)  # a second call: layouts tied
        if any((s.owner, s.param, s.dim) == (owner, param, dim)
               for s in self.records.param_sites):
            return  # one layer called twice (a cell in a loop): its parameter is gated once
        self.records.param_sites.append(ParamSite(owner, param, dim, layout, cuts))

    def cost(self, kind: str, coeff: float, factors: tuple[Layout, ...], label: str) -> None:
        """``coeff * prod(live(layout))`` parameters or FLOPs (``kind``); FLOPs follow torch's
        convention of 2 per multiply-add."""
        self.records.costs.append(CostTerm(kind, float(coeff), tuple(factors), label))

    def param_cost(self, owner: str, name: str, factors: tuple[Layout, ...]) -> None:
        """Count parameter ``owner.name`` once, as ``numel / prod(len(factors)) * prod(live)``."""
        if (owner, name) in self.records.claimed:
            return
        tensor = self.attr(owner, name)
        if not isinstance(tensor, nn.Parameter):
            return
        self.records.claimed.add((owner, name))
        denom = math.prod(f.length for f in factors) if factors else 1
        if denom == 0:
            return
        label = f"{owner}.{name}" if owner else name
        self.cost("params", tensor.numel() / denom, factors, label)

    def rewrite(self, node: fx.Node, path: tuple, layout: Layout, factor: int = 1) -> None:
        """A literal size at ``path`` in ``node.args`` becomes ``live(layout) * factor`` after
        compaction (``view(n, 64)`` where 64 channels were tracked)."""
        self.records.rewrites.append(ShapeRewrite(node, path, layout, factor))

    def measure_flops(self, node: fx.Node) -> None:
        """Count this node's FLOPs as a constant, measured on the example inputs (for layers
        kept whole, whose maths no rule describes)."""
        self.records.measured.append(node)

    def kept_whole(self, node: fx.Node, infos, problems: list[str], width: int,
                   dim: int = -1) -> TensorInfo:
        """A layer not gated because of ``problems``: pin the channels ``infos`` carry in,
        list it in ``report()``, count its FLOPs as measured, and return its output: ``width``
        untracked channels on ``dim``."""
        reason = f"{describe(node)} uses {', '.join(problems)}: kept whole"
        self.pin(infos, reason)
        self.ungated(describe(node), reason)
        self.measure_flops(node)
        return TensorInfo(dim, self.opaque(width, reason, f"{target_path(node)}.out"))

    def ungated(self, where: str, reason: str) -> None:
        self.records.ungated.append(Ungated(where, reason))

    def unknown(self, node: fx.Node) -> None:
        """No rule for this op: pin every tracked channel that reaches it."""
        infos = [self.info(a) for a in node.args] + [self.info(v) for v in node.kwargs.values()]
        touched = [
            i for i in _iter_infos(infos) if any(s.pinned is None for s in i.layout.spaces())
        ]
        reason = f"{describe(node)} has no channel rule"
        self.measure_flops(node)
        for a in list(node.args) + list(node.kwargs.values()):
            if isinstance(self.info(a), AttrInfo):
                self.fix_attr(self.info(a))
        if touched and self.strict:
            raise UnsupportedModelError(
                f"{describe(node)} (node '{node.name}') reads gated channels but LUMOS has no "
                "rule for it. Ways out: register one with lumos.register_rule(...) (see "
                "docs/custom_layers.md), or call sparsify(..., strict=False) to keep the "
                "channels that reach it whole (they are then listed in report())."
            )
        if touched:
            self.ungated(describe(node), "no channel rule: the channels reaching it are kept")
        self.pin(infos, reason)
