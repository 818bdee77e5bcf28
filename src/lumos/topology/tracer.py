"""torch.fx tracing with errors a user can act on.

fx raises from deep inside its proxy machinery; we re-raise a :class:`UntraceableModelError`
naming the module being traced and the line of the user's code that failed. Layers with a rule
are leaves; layers with a substitute forward are traced through it; functions registered as
leaves stay single nodes (all read from :data:`~lumos.topology.registry.REGISTRY`).
"""

from __future__ import annotations

import functools
import sys
import traceback

import torch
from torch import fx, nn

from ..errors import UntraceableModelError
from .registry import REGISTRY


class LumosTracer(fx.Tracer):
    """fx tracer that keeps registered layer classes as leaves and remembers where it is."""

    def __init__(self) -> None:
        leaf_functions = REGISTRY.leaf_functions()
        super().__init__(autowrap_functions=tuple(leaf_functions))
        # Also patch the leaf functions where a package re-exports them (``pyg.nn.global_mean_pool``
        # called as an attribute): fx only patches the traced code's globals by default.
        for fn in leaf_functions:
            for name in (fn.__module__, fn.__module__.rsplit(".", 2)[0]):
                mod = sys.modules.get(name)
                if mod is not None and mod not in self._autowrap_search:
                    self._autowrap_search.append(mod)
        self.module_stack_paths: list[str] = []
        self.failed_in: str | None = None  # innermost module being traced when tracing failed

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if REGISTRY.trace_forward(m) is not None:
            return False
        if REGISTRY.is_leaf(m):
            return True
        return super().is_leaf_module(m, module_qualified_name)

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
    """The innermost traceback line that is not inside torch or lumos: the user's code."""
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        f = frame.filename.replace("\\", "/")
        if "/torch/" not in f and "/lumos/" not in f and "/torch_geometric/" not in f:
            return f'{frame.filename}:{frame.lineno}: "{(frame.line or "").strip()}"'
    return "unknown location"


def trace(model: nn.Module, concrete_args: dict | None = None) -> fx.GraphModule:
    """Symbolically trace ``model``; on failure raise :class:`UntraceableModelError` with a fix."""
    tracer = LumosTracer()
    try:
        graph = tracer.trace(model, concrete_args)
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
            "lumos.register_rule(YourModule, ...), or pass the constant via "
            "sparsify(..., concrete_args={...})."
        ) from exc
    name = type(model).__name__
    gm = fx.GraphModule(tracer.root, graph, name)
    return gm


def is_floating(t: object) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point()
