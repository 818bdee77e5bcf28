"""One graph for a model whose own forward branches on ``self.training``.

A submodule that branches on its mode is kept whole (its own forward runs, so it follows
``train()``/``eval()``). The root cannot be: nothing inside it would be gated. So LUMOS traces
the root in both modes and *merges* the two programs into one graph that is right in either
mode:

- the two node sequences are aligned (``difflib``: the longest runs of the same ops in the
  same order); an aligned pair is one node, computed once;
- where an aligned node reads different values in the two modes (a VAE decoder reads the
  sampled latent in training and the mean at inference), it reads
  ``torch.where(<mode>, train_value, eval_value)``, the mode read at run time from the same
  probe as a dropout flag (plain torch: the compacted model loads without LUMOS);
- nodes that only one mode has are kept and computed in both modes (their result is unused in
  the other): what a mode adds is usually cheap (a noise draw, a statistic).

Refused, with the reason, where that would be wrong rather than only wasteful: the two modes
return differently shaped or typed results, or a node only one mode has changes a tensor the
other mode reads, in place (a running statistic updated in training only).
"""

from __future__ import annotations

import builtins
import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from . import mode_flags

#: methods that may return a view of (or the very) tensor they are called on: an in-place op
#: on their result may change their input
_ALIASING_METHODS = {
    "view", "view_as", "reshape", "reshape_as", "transpose", "permute", "narrow", "select",
    "expand", "expand_as", "squeeze", "unsqueeze", "flatten", "unflatten", "t", "T", "mT",
    "as_strided", "split", "chunk", "unbind", "contiguous", "detach", "to", "type", "type_as",
    "float", "double", "half", "bfloat16", "movedim", "swapaxes", "swapdims", "diagonal",
    "unfold", "real", "imag", "view_as_real", "view_as_complex", "requires_grad_",
}


class MergeRefused(Exception):
    """The two modes' graphs cannot share one graph; the message says why."""


@dataclass
class MergedGraph:
    graph: fx.Graph
    #: example value of each merged node (what known-value tracing recorded for its source)
    values: dict[fx.Node, Any] = field(default_factory=dict)
    #: merged nodes computed from the inputs
    data: set[fx.Node] = field(default_factory=set)


def merge_mode_graphs(train: fx.Graph, evaluation: fx.Graph, root: nn.Module, probe: str,
                      known: tuple[dict, dict], data: tuple[set, set]) -> MergedGraph:
    """Merge the train-mode and eval-mode traces of ``root`` (see the module docstring).

    Args:
        train, evaluation: the two traces of the same model.
        root: the traced model (to tell in-place modules, ``nn.ReLU(inplace=True)``).
        probe: the attribute name of the mode probe the graphs read the mode from.
        known, data: per trace, the example values and the data-dependent nodes that
            known-value tracing recorded.

    Returns:
        The merged graph with its example values.

    Raises:
        MergeRefused: with the reason, where one graph cannot serve both modes.
    """
    return _Merger(train, evaluation, root, probe, known, data).run()


def _key(node: fx.Node) -> str:
    """What a node does, its tensor inputs left out: aligned nodes share it."""
    target = node.target
    if callable(target):
        target = f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', target)}"
    args = fx.node.map_aggregate((node.args, node.kwargs),
                                 lambda a: "%" if isinstance(a, fx.Node) else a)
    return f"{node.op}|{target}|{args!r}"


class _Merger:
    def __init__(self, train: fx.Graph, evaluation: fx.Graph, root: nn.Module, probe: str,
                 known: tuple[dict, dict], data: tuple[set, set]) -> None:
        self.sides = (list(train.nodes), list(evaluation.nodes))
        self.root, self.probe = root, probe
        self.known, self.data = known, data
        self.graph = fx.Graph()
        self.maps: tuple[dict, dict] = ({}, {})
        self.out = MergedGraph(self.graph)
        self.source: dict[fx.Node, tuple[int, fx.Node]] = {}  # merged -> (side, original)
        self.only: set[fx.Node] = set()  # merged nodes that only one mode has
        self._mode: fx.Node | None = None
        #: (train value, eval value) -> the ``torch.where`` that picks between them
        self._selects: dict[tuple[fx.Node, fx.Node], fx.Node] = {}

    # ---- the walk -----------------------------------------------------------------------------
    def run(self) -> MergedGraph:
        t_nodes, e_nodes = self.sides
        *t_body, t_out = t_nodes
        *e_body, e_out = e_nodes
        matcher = difflib.SequenceMatcher(
            None, [_key(n) for n in t_body], [_key(n) for n in e_body], autojunk=False)
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            if tag == "equal":
                for t, e in zip(t_body[i1:i2], e_body[j1:j2]):
                    self._emit_pair(t, e)
            else:
                for t in t_body[i1:i2]:
                    self._emit_one(0, t)
                for e in e_body[j1:j2]:
                    self._emit_one(1, e)
        outputs = self._paired_args(t_out.args, e_out.args, where="the output")
        self.graph.output(outputs[0] if len(outputs) == 1 else outputs)
        self._check_in_place()
        return self.out

    def _emit_pair(self, t: fx.Node, e: fx.Node) -> None:
        if t.op == "placeholder" or not self._needs_select(t.args, e.args) and \
                not self._needs_select(t.kwargs, e.kwargs):
            node = self.graph.node_copy(t, lambda a: self.maps[0][a])
            self._record(node, 0, t, e)
            return
        if _mutates(t, self.root):  # an in-place op on a selected copy would miss its input
            self._emit_one(0, t)
            self._emit_one(1, e)
            return
        try:  # checked before any torch.where is built, so none is left unused
            self._paired_args(t.args, e.args, where=t.name, build=False)
            self._paired_args(t.kwargs, e.kwargs, where=t.name, build=False)
        except MergeRefused:  # the reads differ in shape: keep both nodes
            self._emit_one(0, t)
            self._emit_one(1, e)
            return
        args = self._paired_args(t.args, e.args, where=t.name)
        kwargs = self._paired_args(t.kwargs, e.kwargs, where=t.name)
        node = self.graph.create_node(t.op, t.target, args, kwargs, t.name)
        node.meta = dict(t.meta)
        self._record(node, 0, t, e)

    def _emit_one(self, side: int, n: fx.Node) -> None:
        if n.op == "placeholder":
            raise MergeRefused(f"the modes take different inputs ('{n.target}')")
        node = self.graph.node_copy(n, lambda a: self.maps[side][a])
        self.maps[side][n] = node
        self.source[node] = (side, n)
        self.only.add(node)
        self.out.values[node] = self.known[side].get(n)
        if n in self.data[side]:
            self.out.data.add(node)

    def _record(self, node: fx.Node, side: int, t: fx.Node, e: fx.Node) -> None:
        self.maps[0][t] = node
        self.maps[1][e] = node
        self.source[node] = (side, t)
        self.out.values[node] = self.known[1].get(e, self.known[0].get(t))
        if t in self.data[0] or e in self.data[1]:
            self.out.data.add(node)

    # ---- reads that follow the mode -----------------------------------------------------------
    def _needs_select(self, ta: object, ea: object) -> bool:
        found: list[bool] = []

        def note(t: fx.Node, e: fx.Node) -> fx.Node:
            found.append(self.maps[0][t] is not self.maps[1][e])
            return t
        _zip_map(ta, ea, note)
        return any(found)

    def _paired_args(self, ta: Any, ea: Any, where: str, build: bool = True) -> Any:
        """``ta`` with each node that reads differently in the modes replaced by a pick
        between them (``build=False``: only check that each such pick can be made)."""
        def pick(t: fx.Node, e: fx.Node) -> fx.Node:
            mt, me = self.maps[0][t], self.maps[1][e]
            if mt is me:
                return mt
            if not build:
                self._check_selectable(t, e, where)
                return mt
            return self._select(mt, me, t, e, where)
        try:
            return _zip_map(ta, ea, pick)
        except _Mismatch as exc:
            raise MergeRefused(f"the modes pass differently structured values to {where} "
                               f"({exc})") from None

    def _check_selectable(self, t: fx.Node, e: fx.Node, where: str) -> None:
        """``torch.where`` can pick between ``t`` (training) and ``e`` (eval): two tensors of
        one shape and dtype; else :class:`MergeRefused`."""
        vt, ve = self.known[0].get(t), self.known[1].get(e)
        if not (isinstance(vt, torch.Tensor) and isinstance(ve, torch.Tensor)):
            raise MergeRefused(f"{where} reads '{t.name}' in training and '{e.name}' in eval "
                               "mode, and they are not both tensors")
        if vt.shape != ve.shape or vt.dtype != ve.dtype:
            raise MergeRefused(
                f"{where} reads '{t.name}' ({tuple(vt.shape)}, {vt.dtype}) in training and "
                f"'{e.name}' ({tuple(ve.shape)}, {ve.dtype}) in eval mode")

    def _select(self, mt: fx.Node, me: fx.Node, t: fx.Node, e: fx.Node, where: str) -> fx.Node:
        if (mt, me) in self._selects:
            return self._selects[(mt, me)]
        self._check_selectable(t, e, where)
        ve = self.known[1][e]
        g = self.graph
        device = g.call_function(builtins.getattr, (mt, "device"))
        mode = g.call_function(torch.full, ((), self._mode_node()),
                               {"dtype": torch.bool, "device": device})
        node = g.call_function(torch.where, (mode, mt, me))
        self.out.values[device] = ve.device
        self.out.values[mode] = torch.tensor(False)
        self.out.values[node] = ve
        if mt in self.out.data or me in self.out.data:
            self.out.data.add(node)
        self._selects[(mt, me)] = node
        return node

    def _mode_node(self) -> fx.Node:
        """``getattr(probe, "training", <first input>)``, as :mod:`.mode_flags` reads it."""
        if self._mode is None:
            probe, self._mode = mode_flags.read_mode(self.graph, self.probe)
            self.out.values[probe] = None
            self.out.values[self._mode] = False
        return self._mode

    # ---- what would be wrong, not only wasteful -----------------------------------------------
    def _check_in_place(self) -> None:
        """A node only one mode has may write in place to a tensor only that mode made, or to
        one that the other mode no longer reads after it (in the merged order)."""
        order = {n: i for i, n in enumerate(self.graph.nodes)}
        picks = {where: values for values, where in self._selects.items()}
        for node in self.only:
            if not _mutates(node, self.root):
                continue
            side, original = self.source[node]
            target = node.args[0] if node.args else None
            if isinstance(target, fx.Node) and self._fresh(target):
                continue
            if not (isinstance(target, fx.Node)
                    and self._read_only_by(side, node, target, order, picks)):
                mode = "training" if side == 0 else "eval"
                raise MergeRefused(
                    f"'{original.name}' ({original.op} {_describe(original)}) runs in {mode} "
                    "mode only and changes, in place, a tensor the other mode reads")

    def _read_only_by(self, side: int, writer: fx.Node, target: fx.Node,
                      order: dict[fx.Node, int], picks: dict[fx.Node, tuple]) -> bool:
        """Whether, after ``writer``, only mode ``side`` reads ``target`` (or a view of it)."""
        base = target
        while base.op == "call_method" and base.target in _ALIASING_METHODS or (
                base.op == "call_function" and getattr(base.target, "__name__", "") == "getitem"):
            if not (base.args and isinstance(base.args[0], fx.Node)):
                return False
            base = base.args[0]
        if base.op not in ("call_function", "call_method") or base.target is builtins.getattr:
            return False  # an input, the model's state, or a module's (maybe aliasing) output
        views, stack = set(), [base]
        while stack:
            x = stack.pop()
            views.add(x)
            stack += [u for u in x.users if u not in views and u.op == "call_method"
                      and u.target in _ALIASING_METHODS]
        for x in views:
            for user in x.users:
                if user is writer or order[user] < order[writer] or user in views \
                        or user.target is builtins.getattr:
                    continue
                if user in picks:  # where(mode, train_value, eval_value)
                    if picks[user][side] is x:
                        continue
                    return False
                if user not in self.only or self.source[user][0] != side:
                    return False
        return True

    def _fresh(self, node: fx.Node) -> bool:
        """Whether ``node`` is a tensor only its mode made and nothing else sees."""
        if node not in self.only or node.op != "call_function" and node.op != "call_method":
            return False
        if _mutates(node, self.root):  # ``a.mul_(b)`` returns ``a``
            first = node.args[0] if node.args else None
            return isinstance(first, fx.Node) and self._fresh(first)
        name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
        return name not in _ALIASING_METHODS and node.target is not builtins.getattr \
            and getattr(node.target, "__name__", "") != "getitem"


class _Mismatch(Exception):
    pass


def _zip_map(ta: Any, ea: Any, fn: Callable[[fx.Node, fx.Node], fx.Node]) -> Any:
    """``ta`` with each node replaced by ``fn(node, the node at the same place in ea)``."""
    if isinstance(ta, fx.Node):
        if not isinstance(ea, fx.Node):
            raise _Mismatch(f"'{ta.name}' against {ea!r}")
        return fn(ta, ea)
    if isinstance(ta, (tuple, list)):
        if type(ta) is not type(ea) or len(ta) != len(ea):
            raise _Mismatch(f"{type(ta).__name__} of {len(ta)} against {ea!r}")
        return type(ta)(_zip_map(a, b, fn) for a, b in zip(ta, ea))
    if isinstance(ta, dict):
        if not isinstance(ea, dict) or ta.keys() != ea.keys():
            raise _Mismatch(f"keys {sorted(ta)} against {ea!r}")
        return {k: _zip_map(ta[k], ea[k], fn) for k in ta}
    if isinstance(ta, slice):
        if not isinstance(ea, slice):
            raise _Mismatch(f"{ta!r} against {ea!r}")
        return slice(*(_zip_map(a, b, fn) for a, b in ((ta.start, ea.start),
                                                        (ta.stop, ea.stop), (ta.step, ea.step))))
    if isinstance(ea, fx.Node):
        raise _Mismatch(f"{ta!r} against '{ea.name}'")
    return ta


def _mutates(node: fx.Node, root: nn.Module) -> bool:
    """Whether ``node`` writes to its first argument in place."""
    if node.kwargs.get("inplace") is True:
        return True
    if node.op == "call_method":
        name = str(node.target)
        return name.endswith("_") and not name.startswith("__") or name in (
            "__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__")
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        return (name.endswith("_") and not name.startswith("__")) or name in (
            "setitem", "iadd", "isub", "imul", "itruediv")
    if node.op == "call_module":
        try:
            return getattr(root.get_submodule(str(node.target)), "inplace", False) is True
        except AttributeError:
            return False
    return False


def _describe(node: fx.Node) -> str:
    target = node.target
    return str(target) if isinstance(target, str) else getattr(target, "__name__", str(target))
