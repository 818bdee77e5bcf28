"""Keep ``self.training`` a run-time value in the traced graph.

torch.fx records Python values as constants: ``F.dropout(h, 0.5, self.training)`` traced in
train mode stays dropout-on forever, in the gated model and in the compacted one. While LUMOS
traces, every module's ``training`` attribute is a :class:`ModeFlag`:

- passed as an *argument* (functional dropout, ``stochastic_depth``, ``F.batch_norm``), the flag
  becomes a graph node that reads the mode at run time from a probe module (``mode_flag``, an
  ``nn.Identity``) that ``train()``/``eval()`` set with the rest of the model;
- used in a Python *branch* (``if self.training:``), the flag records where; the tracer then
  traces the other mode too and, when the graphs differ, keeps the branching module whole as
  one layer (its own forward runs, so it follows its mode) — or refuses, if it is the root.

The run-time read is ``getattr(mode_flag, "training", <first input>)``: a three-argument
``getattr`` marked as a wrapped function, so fx's own re-trace when a saved graph is loaded
(``torch.load``) keeps it as a node instead of folding it to the value it had then. The third
argument is never used (the probe always has the attribute); it only gives the re-trace a
proxy to hang the call on. Only torch and builtins appear in the graph: the compacted model
loads without LUMOS.
"""

from __future__ import annotations

import builtins
import contextlib
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field

from torch import fx, nn

from .rule_helpers import source_line

#: name of the probe module whose ``training`` flag the graph reads at run time
PROBE = "mode_flag"


@dataclass
class BranchRecord:
    """A Python branch on ``training`` seen while tracing: which module, where in the code."""

    module: str
    where: str


@dataclass
class ModeFlag:
    """Stands in for a module's ``training`` while tracing (see the module docstring)."""

    path: str
    value: bool
    branches: list[BranchRecord] = field(default_factory=list)

    def __bool__(self) -> bool:
        self.branches.append(BranchRecord(self.path, _caller()))
        return self.value

    def __eq__(self, other: object) -> bool:  # ``self.training == True`` is a branch too
        return bool(self) == other

    def __hash__(self) -> int:
        return hash(self.value)


def _caller() -> str:
    for frame in reversed(traceback.extract_stack()[:-2]):
        f = frame.filename.replace("\\", "/")
        if "/torch/fx/" not in f and not f.endswith("mode_flags.py"):
            return source_line(frame)
    return "unknown location"


#: (module, flag) pairs while flags are installed (for :func:`quiet`)
_INSTALLED: list[tuple[nn.Module, ModeFlag]] = []


@contextlib.contextmanager
def flags_installed(model: nn.Module, invert: bool = False) -> Iterator[list[ModeFlag]]:
    """Replace every module's ``training`` by a :class:`ModeFlag` for the block (restored
    after, whatever happens). ``invert``: trace the mode the model is *not* in."""
    # a TorchScript submodule keeps ``training`` in C++ (it is a leaf, run as compiled)
    saved = [(m, m.__dict__["training"]) for m in model.modules() if "training" in m.__dict__]
    flags = []
    try:
        for path, m in model.named_modules():
            if "training" not in m.__dict__:
                continue
            flag = ModeFlag(path, bool(m.__dict__["training"]) != invert)
            m.__dict__["training"] = flag
            flags.append(flag)
            _INSTALLED.append((m, flag))
        yield flags
    finally:
        _INSTALLED.clear()
        for m, value in saved:
            m.__dict__["training"] = value


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Run real code (example values) with every module in eval mode and no flags recorded:
    BatchNorm keeps its statistics, dropout is off, and no branch is attributed to a trace."""
    for m, _ in _INSTALLED:
        m.__dict__["training"] = False
    try:
        yield
    finally:
        for m, flag in _INSTALLED:
            m.__dict__["training"] = flag


def probe_name(model: nn.Module) -> str:
    """A free attribute name for the probe module on ``model``."""
    name, k = PROBE, 0
    while hasattr(model, name):
        k += 1
        name = f"{PROBE}_{k}"
    return name


def read_mode(graph: fx.Graph, name: str, create=None) -> tuple[fx.Node, fx.Node]:  # noqa: ANN001
    """The probe ``name`` and the node reading its mode at run time, added to ``graph``
    (``create``: the tracer's ``create_node`` while tracing, else the graph's)."""
    create = create or graph.create_node
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    probe = create("get_attr", name, (), {})
    args = (probe, "training", placeholders[0]) if placeholders else (probe, "training")
    node = create("call_function", builtins.getattr, args, {})
    node.meta["is_wrapped"] = True
    return probe, node


def flag_node(tracer: fx.Tracer, name: str) -> fx.Node:
    """The graph node that reads the mode at run time from probe ``name``."""
    probe, node = read_mode(tracer.graph, name, tracer.create_node)
    values = getattr(tracer, "values", None)
    if isinstance(values, dict):  # known-value tracing: the example runs in eval mode, so
        values[probe] = None      # what follows a dropout still has values (not static: the
        values[node] = False      # mode is read at run time)
    return node


def is_flag_node(node: object) -> bool:
    """Whether ``node`` reads the run-time mode (a node :func:`flag_node` made)."""
    return (isinstance(node, fx.Node) and node.op == "call_function"
            and node.target is builtins.getattr and len(node.args) >= 2
            and node.args[1] == "training" and isinstance(node.args[0], fx.Node)
            and node.args[0].op == "get_attr")


@contextlib.contextmanager
def probe_attached(model: nn.Module, name: str) -> Iterator[None]:
    """Attach the probe to ``model`` while a GraphModule copies what its graph reads, then
    take it off again: the user's model is left as it was."""
    probe = nn.Identity()
    probe.train(model.training)
    model.add_module(name, probe)
    try:
        yield
    finally:
        del model._modules[name]


def branching_modules(flags: list[ModeFlag]) -> dict[str, str]:
    """Module path -> first place its forward branched on ``training``."""
    out: dict[str, str] = {}
    for flag in flags:
        for record in flag.branches:
            out.setdefault(record.module, record.where)
    return out
