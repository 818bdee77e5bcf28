"""torch.fx tracing with errors a user can act on.

fx raises from deep inside its proxy machinery; we re-raise a :class:`UntraceableModelError`
naming the module being traced and the line of the user's code that failed. Layers with a rule
are leaves; layers with a substitute forward are traced through it; functions registered as
leaves stay single nodes (all read from :data:`~lumos.topology.registry.REGISTRY`).
"""

from __future__ import annotations

import contextlib
import functools
import operator
import os
import sys
import traceback
import warnings
from collections.abc import Iterable, Iterator

import torch
from torch import fx, nn

from ..errors import LumosWarning, UnsupportedModelError, UntraceableModelError
from . import mode_flags
from .known_values import KnownValueTracer, jit_isinstance_patched, tensor_conversions_patched
from .mode_merge import MergeRefused, merge_mode_graphs
from .registry import REGISTRY
from .rule_helpers import call_override, source_line

_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
_LUMOS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


class LumosTracer(KnownValueTracer):
    """fx tracer that keeps registered layer classes as leaves, remembers where it is, and
    carries the example's values beside the proxies (shape-dependent Python traces)."""

    #: buffers are graph values like parameters: ``self.index[:n]`` with ``n`` read off the
    #: input must be a graph op, and a branch on a buffer is guarded instead of frozen
    proxy_buffer_attributes = True

    def __init__(self) -> None:
        leaf_functions = REGISTRY.leaf_functions()
        super().__init__(autowrap_functions=tuple(leaf_functions))
        # Also patch the leaf functions where a package re-exports them (``pyg.nn.global_mean_pool``
        # called as an attribute): fx only patches the traced code's globals by default.
        # ... and in the modules of substitute forwards, which call them by their own names
        homes = [fn.__module__ for fn in leaf_functions] + [
            fwd.__module__ for fwd in REGISTRY.trace_forwards().values()]
        for home in homes:
            for name in (home, home.rsplit(".", 2)[0]):
                mod = sys.modules.get(name)
                if mod is not None and mod not in self._autowrap_search:
                    self._autowrap_search.append(mod)
        self.module_stack_paths: list[str] = []
        self.failed_in: str | None = None  # innermost module being traced when tracing failed
        #: modules kept as one node because their forward branches on ``self.training``
        self.mode_leaves: set[str] = set()
        self.probe_name = mode_flags.PROBE
        #: modules the user asked to keep whole (one node each, never looked inside)
        self.keep: frozenset[str] = frozenset()
        #: modules kept as one node because their forward enters a region fx cannot record
        #: (``torch.autocast``, ``torch.no_grad``, ...)
        self.region_leaves: set[str] = set()

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.mode_leaves or module_qualified_name in self.keep \
                or module_qualified_name in self.region_leaves:
            return True
        if REGISTRY.trace_forward(m) is not None:
            return False
        if REGISTRY.is_leaf(m):
            return True
        if next(m.children(), None) is not None:
            # a composite without a rule (nn.TransformerDecoderLayer, a user block): its
            # children are what the rules know, so read through it, torch.nn's included
            return False
        return super().is_leaf_module(m, module_qualified_name)

    def trace(self, root, concrete_args=None) -> fx.Graph:  # noqa: ANN001 - fx signature
        # also when fx re-traces a saved gated model (its loader subclasses this tracer)
        modules = root.modules() if isinstance(root, nn.Module) else ()
        with _leaf_calls_direct(self, modules):
            return super().trace(root, concrete_args)

    def create_arg(self, a):  # noqa: ANN001 - fx signature
        if isinstance(a, mode_flags.ModeFlag):  # self.training passed on: read it at run time
            return mode_flags.flag_node(self, self.probe_name)
        return super().create_arg(a)

    def call_module(self, m, forward, args, kwargs):  # noqa: ANN001 - fx signature
        self.module_stack_paths.append(self.path_of_module(m) or type(m).__name__)
        substitute = REGISTRY.trace_forward(m)
        if substitute is not None:
            forward = functools.partial(substitute, m)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = self.module_stack_paths[-1]
            raise
        finally:
            self.module_stack_paths.pop()


def _user_frame(exc: BaseException) -> str:
    """The innermost traceback line outside torch and LUMOS (by their install folders, so a
    user project in a folder named ``lumos`` is still found): the user's or a third-party
    package's code; failing that, the innermost line of torch's own modules (not fx's)."""
    frames = traceback.extract_tb(exc.__traceback__)
    fallback = None
    for frame in reversed(frames):
        f = os.path.abspath(frame.filename)
        where = source_line(frame)
        if not f.startswith((_TORCH_DIR, _LUMOS_DIR)) and not frame.filename.startswith("<"):
            return where
        if fallback is None and f.startswith(_TORCH_DIR) and os.sep + "fx" + os.sep not in f:
            fallback = where
    return fallback or "unknown location"


def trace(model: nn.Module, concrete_args: dict | None = None,
          keep: frozenset[str] = frozenset(), example: dict | None = None) -> fx.GraphModule:
    """Symbolically trace ``model``; on failure raise :class:`UntraceableModelError` with a fix.

    ``self.training`` stays a run-time value (:mod:`~lumos.topology.mode_flags`): passed to a
    function it becomes a graph node; a module whose forward *branches* on it in a way that
    changes the graph is kept as one layer, so it runs its own forward in either mode; the
    root's own branches are merged into one graph that reads the mode at run time
    (:mod:`.mode_merge`).
    """
    tracer = LumosTracer()
    tracer.example = dict(example or {})
    tracer.keep = frozenset(keep)
    tracer.probe_name = mode_flags.probe_name(model)
    for _ in range(8):  # each round may only add modules kept whole
        graph, branched = _trace_once(tracer, model, concrete_args, invert=False)
        if not branched:
            break
        known = (tracer.values, tracer.data)
        other, branched_other = _trace_once(tracer, model, concrete_args, invert=True)
        if _same_graph(graph, other):
            break
        branched.update(branched_other)
        new = set(branched) - tracer.mode_leaves - {""}
        if not new:  # only the root's own forward branches: one graph for both modes
            if "" in branched:
                graph = _merge_modes(tracer, model, graph, other, known, branched[""])
            break
        tracer.mode_leaves |= new
        for path in sorted(new):
            warnings.warn(
                f"module '{path}' ({type(model.get_submodule(path)).__name__}) branches on "
                f"self.training at {branched[path]}; LUMOS keeps it as one layer (not gated "
                "inside) so that train and eval mode behave as in the original model.",
                LumosWarning, stacklevel=3)
    _state_slices_as_narrow(graph, tracer)
    with mode_flags.probe_attached(model, tracer.probe_name):
        gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    _drop_trace_internals(gm)
    return gm


def _merge_modes(tracer: LumosTracer, model: nn.Module, graph: fx.Graph, other: fx.Graph,
                 known: tuple[dict, set], where: str) -> fx.Graph:
    """One graph for both modes of a root that branches on ``self.training`` (see
    :mod:`.mode_merge`); the example values follow, for the passes after tracing."""
    # ``graph`` was traced in the model's own mode, ``other`` (the last trace) in the other
    traces = {model.training: (graph, *known), not model.training: (other, tracer.values,
                                                                     tracer.data)}
    (train, train_values, train_data), (evaluation, eval_values, eval_data) = \
        traces[True], traces[False]
    try:
        merged = merge_mode_graphs(train, evaluation, model, tracer.probe_name,
                                   (train_values, eval_values), (train_data, eval_data))
    except MergeRefused as exc:
        raise UnsupportedModelError(
            f"the forward of {type(model).__name__} itself branches on self.training at "
            f"{where}, and LUMOS cannot give both modes one graph: {exc}. Ways out: pass the "
            "flag on instead of branching (e.g. F.dropout(x, p, self.training)), or move the "
            "mode-dependent part into a submodule (LUMOS then keeps that submodule whole and "
            "it follows train()/eval())."
        ) from None
    tracer.values, tracer.data = merged.values, merged.data
    return merged.graph


def _trace_once(tracer: LumosTracer, model: nn.Module, concrete_args: dict | None,
                invert: bool) -> tuple[fx.Graph, dict[str, str]]:
    """One trace in one mode; a module whose forward enters a region fx cannot record
    (``torch.autocast``, ``torch.no_grad``, ...) is kept as one node and the trace starts
    again (once per such class)."""
    while True:
        try:
            return _trace_in_mode(tracer, model, concrete_args, invert)
        except _RegionEntered as entered:
            _keep_region_module(tracer, model, entered)


class _RegionEntered(Exception):
    """A forward entered a region fx cannot record while being traced (see
    :func:`_regions_stopped`)."""

    def __init__(self, kind: str, where: str) -> None:
        super().__init__(kind, where)
        self.kind, self.where = kind, where


#: context managers fx runs while tracing and records nothing of, and what they change
_REGIONS: dict[str, str] = {
    "torch.autocast": "so the traced model would run the region in the caller's precision",
    "torch.no_grad": "so gradients would flow through the region in training",
    "torch.enable_grad": "so the region would follow the caller's gradient mode",
    "torch.set_grad_enabled": "so the region would follow the caller's gradient mode",
    "torch.inference_mode": "so the region would follow the caller's gradient mode",
}


def _region_classes() -> dict[type, str]:
    return {torch.amp.autocast_mode.autocast: "torch.autocast",
            torch.no_grad: "torch.no_grad", torch.enable_grad: "torch.enable_grad",
            torch.set_grad_enabled: "torch.set_grad_enabled",
            torch.inference_mode: "torch.inference_mode"}


@contextlib.contextmanager
def _regions_stopped() -> Iterator[None]:
    """Stop a trace where the traced code makes or enters one of :data:`_REGIONS`.

    fx runs a ``with`` block's enter and exit while tracing and records neither, so the traced
    model would run the region's ops without it: under mixed precision a
    ``torch.autocast(enabled=False)`` block returned bfloat16 where the model returns float32,
    and a ``torch.no_grad()`` block would pass gradients in training. The module that enters
    one is kept as one node instead (it runs its own forward, region included). Regions that
    torch or LUMOS open while tracing are not the model's and pass."""
    saved = []
    for cls, kind in _region_classes().items():
        methods = ("__init__", "__enter__") if kind == "torch.autocast" else ("__enter__",)
        for name in methods:
            original = vars(cls).get(name) or getattr(cls, name)
            saved.append((cls, name, name in vars(cls), original))
            setattr(cls, name, _stop_at(kind, original))
    try:
        yield
    finally:
        for cls, name, own, original in reversed(saved):
            if own:
                setattr(cls, name, original)
            else:
                delattr(cls, name)


def _stop_at(kind: str, original):  # noqa: ANN001, ANN202
    def stop(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        where = _caller_line()
        if where is None:  # torch's or LUMOS's own region
            return original(self, *args, **kwargs)
        raise _RegionEntered(kind, where)
    return stop


def _caller_line() -> str | None:
    """Where the model's code (the user's or a package's) made the region, or None when torch
    or LUMOS made it (``torch.utils.checkpoint`` runs its function under ``no_grad``: a region
    of torch's that changes memory, not values or gradients).

    The code that made it is the innermost frame outside the context-manager machinery (the
    decorator forms of ``no_grad``/``autocast`` and ``contextlib``)."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        f = os.path.abspath(frame.filename)
        if f.endswith(_REGION_MACHINERY) or frame.filename.startswith("<"):
            continue
        if f.startswith((_TORCH_DIR, _LUMOS_DIR)):
            return None
        return source_line(frame)
    return None


#: where ``with``-statement and decorator forms of the regions run (skipped to find their user)
_REGION_MACHINERY = tuple(os.sep + os.path.join(*p) for p in (
    ("torch", "utils", "_contextlib.py"), ("torch", "amp", "autocast_mode.py"),
    ("torch", "autograd", "grad_mode.py"), ("contextlib.py",)))


def _keep_region_module(tracer: LumosTracer, model: nn.Module, entered: _RegionEntered) -> None:
    """Keep every module of the class that entered the region as one node (warned), or refuse
    when the model's own forward did: the root cannot be one node of itself."""
    path, kind, where = tracer.failed_in or "", entered.kind, entered.where
    why = f"torch.fx cannot record a {kind} region, {_REGIONS[kind]}"
    if not path:
        raise UnsupportedModelError(
            f"the forward of {type(model).__name__} itself uses {kind} at {where}; {why} "
            "(it would differ from your model). Way out: move the region into a submodule; "
            "LUMOS then keeps that submodule as one layer (not gated inside) and it runs its "
            "own forward."
        )
    cls = type(model.get_submodule(path))
    paths = {p for p, m in model.named_modules() if type(m) is cls and p}
    if paths <= tracer.region_leaves:  # cannot happen: a leaf is never traced into
        raise UnsupportedModelError(f"module '{path}' uses {kind} at {where}; {why}.")
    tracer.region_leaves |= paths
    warnings.warn(
        f"module '{path}' ({cls.__name__}) uses {kind} at {where}; {why}, so LUMOS keeps every "
        f"{cls.__name__} as one layer (not gated inside): it runs its own forward, region "
        "included, as in the original model.",
        LumosWarning, stacklevel=4)


def _trace_in_mode(tracer: LumosTracer, model: nn.Module, concrete_args: dict | None,
                   invert: bool) -> tuple[fx.Graph, dict[str, str]]:
    tracer.failed_in = None
    tracer.module_stack_paths = []
    tracer.init_known_values(getattr(tracer, "example", None))
    try:
        with mode_flags.flags_installed(model, invert=invert) as flags, \
                jit_isinstance_patched(tracer), tensor_conversions_patched(), \
                _regions_stopped():
            graph = tracer.trace(model, concrete_args)
    except (UnsupportedModelError, _RegionEntered):
        raise
    except Exception as exc:  # fx raises many types (TraceError, TypeError, RuntimeError...)
        where = tracer.failed_in
        module_type = type(model if where is None else model.get_submodule(where)).__name__
        raise UntraceableModelError(
            f"torch.fx could not trace the model: in module '{where or '<root>'}' "
            f"({module_type}) at "
            f"{_user_frame(exc)}: {type(exc).__name__}: {exc}. "
            "LUMOS reads the layer graph with torch.fx, which cannot follow Python control flow "
            "that depends on tensor values (if/for on a tensor, .item(), data-dependent shapes). "
            "Ways out: make that branch depend on a constructor argument instead of data, move "
            "it into a small submodule and register it as a leaf with "
            "lumos.register_rule(YourModule, ...), pass the constant via "
            "sparsify(..., concrete_args={...})"
            + (f", or keep that module whole: sparsify(..., keep=['{where}']) (one layer, not "
               "gated inside)." if where else ".")
        ) from exc
    return graph, mode_flags.branching_modules(flags)


@contextlib.contextmanager
def _leaf_calls_direct(tracer: LumosTracer, modules: Iterable[nn.Module]) -> Iterator[None]:
    """Leaves whose class overrides ``__call__`` are recorded as the user called them.

    fx sees a module call in ``nn.Module.__call__``; a class that overrides ``__call__`` runs
    its own Python first (torch-geometric's aggregations compute ``int(index.max()) + 1``,
    data that cannot steer a trace). For a leaf that code belongs to the layer, not to the
    graph: the node keeps the user's arguments and, at run time, the real ``__call__`` runs.
    """
    saved = {}
    for m in modules:
        owner = call_override(m)
        if owner is not None:
            saved[owner] = vars(owner)["__call__"]

    def direct(original):
        def __call__(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, N807
            try:
                path = tracer.path_of_module(self) if self is not tracer.root else ""
            except NameError:  # not a submodule of the traced model
                path = ""
            if path and tracer.is_leaf_module(self, path):
                return nn.Module.__call__(self, *args, **kwargs)  # fx's, while tracing
            return original(self, *args, **kwargs)
        return __call__

    try:
        for cls, original in saved.items():
            cls.__call__ = direct(original)  # type: ignore[method-assign]
        yield
    finally:
        for cls, original in saved.items():
            cls.__call__ = original  # type: ignore[method-assign]


def _state_slices_as_narrow(graph: fx.Graph, tracer: LumosTracer) -> None:
    """``self.index[:n, :n]`` (a buffer sliced by a size read off the input) as ``narrow``.

    ``torch.load`` traces a saved GraphModule again with buffers as real tensors, and a real
    tensor cannot be sliced by a proxy (torch asks the bound for ``__index__``); ``narrow``
    takes one. Only plain slices of the model's state whose bounds held on the example
    (``narrow`` raises where slicing would clamp) are rewritten; the rest stays as written.
    """
    values: dict = getattr(tracer, "values", {})
    data: set = getattr(tracer, "data", set())

    def known(v):  # noqa: ANN001, ANN202
        return values.get(v) if isinstance(v, fx.Node) else v

    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not operator.getitem:
            continue
        base, key = node.args
        value = values.get(base) if isinstance(base, fx.Node) and base not in data else None
        items = key if isinstance(key, tuple) else (key,)
        if not isinstance(value, torch.Tensor) or len(items) > value.dim() or not all(
                isinstance(i, slice) and i.step in (None, 1) for i in items) or not any(
                isinstance(b, fx.Node) for i in items for b in (i.start, i.stop)):
            continue
        bounds = [(known(i.start) or 0, value.shape[d] if i.stop is None else known(i.stop))
                  for d, i in enumerate(items)]
        if not all(isinstance(a, int) and isinstance(b, int) and 0 <= a <= b <= value.shape[d]
                   for d, (a, b) in enumerate(bounds)):
            continue
        with graph.inserting_before(node):
            current = base
            for d, item in enumerate(items):
                if item == slice(None):
                    continue
                start = 0 if item.start is None else item.start
                stop = item.stop if item.stop is not None else graph.call_method(
                    "size", (current, d))
                length = stop if start == 0 else graph.call_function(operator.sub, (stop, start))
                current = graph.call_method("narrow", (current, d, start, length))
        node.replace_all_uses_with(current)
        graph.erase_node(node)


def _same_graph(a: fx.Graph, b: fx.Graph) -> bool:
    """Whether two traces are the same program (same ops on the same arguments)."""
    return a.python_code("self").src == b.python_code("self").src


def _drop_trace_internals(gm: fx.GraphModule) -> None:
    """Remove what tracing leaves that is not the model: fx's checks that a None argument is
    None (the sparse model checks absent arguments itself; left in, a saved compacted model
    poisons later fx loads in the process), and type annotations written as strings
    (``from __future__ import annotations``), which fx cannot import when it saves the code."""
    g = gm.graph
    for node in list(g.nodes):
        if node.op == "call_function" and getattr(node.target, "__name__", "") == \
                "_assert_is_none" and not node.users:
            g.erase_node(node)
        elif isinstance(node.type, str):
            node.type = None
    gm.recompile()
