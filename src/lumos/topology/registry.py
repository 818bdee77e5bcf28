"""The one registry of per-op channel rules.

A rule reads the infos of an fx node's inputs, records what it owns (parameter roles, gate sites,
cost terms) on the :class:`~lumos.topology.analysis.RuleContext`, and returns the info of the
node's output. Ops without a rule pin the channels that reach them (kept whole, reported) —
never treated as pass-through on a guess.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..errors import ConfigurationError

Rule = Callable  # (ctx, node, *extra) -> info


@dataclass(frozen=True)
class ModuleRule:
    """How one layer class moves channels, and how to fix its attributes after slicing.

    ``resize(module)`` is called after compaction sliced the module's parameters, to update
    size attributes (``in_features``, ``num_heads``, ...) from the new tensor shapes.
    ``lower(module, call_node)`` may then return a replacement module made of plain torch when
    the class cannot express the smaller shape (attention with fewer heads than
    ``embed_dim / head_dim``), or None to keep the module.
    ``input_dim`` is the dimension the layer reads channels from (used to find which dimension
    of a model input holds its features), or None if it reads none.
    """

    propagate: Callable
    resize: Callable[[nn.Module], None] | None = None
    input_dim: int | None = None
    lower: Callable | None = None


MODULE_RULES: dict[type, ModuleRule] = {}
FUNCTION_RULES: dict[object, Rule] = {}
METHOD_RULES: dict[str, Rule] = {}
#: layers traced through a substitute forward (same maths, written in traceable torch ops).
TRACE_FORWARDS: dict[type, Callable] = {}
#: functions kept as single graph nodes (not traced into) because their rule knows them.
LEAF_FUNCTIONS: list[Callable] = []
#: base classes whose subclasses without a rule are leaves (kept whole), not traced into.
OPAQUE_BASES: list[type] = []


def register_rule(
    layer: type[nn.Module],
    propagate: Callable | None = None,
    *,
    resize: Callable[[nn.Module], None] | None = None,
    input_dim: int | None = None,
    lower: Callable | None = None,
):
    """Teach the coordinator a layer class (usable as a decorator on ``propagate``).

    The layer becomes an fx leaf: its forward is not traced, ``propagate(ctx, node, module)``
    describes it instead. See ``docs/custom_layers.md`` for a worked example.
    """
    if not (isinstance(layer, type) and issubclass(layer, nn.Module)):
        raise ConfigurationError(
            f"register_rule expects an nn.Module subclass, got {layer!r}; pass the class, "
            "not an instance."
        )

    def _register(fn: Callable) -> Callable:
        if not callable(fn):
            raise ConfigurationError("register_rule needs a callable propagate(ctx, node, module).")
        MODULE_RULES[layer] = ModuleRule(fn, resize, input_dim, lower)
        return fn

    if propagate is None:
        return _register
    return _register(propagate)


def register_trace_forward(layer: type[nn.Module], forward: Callable) -> None:
    """Trace ``layer`` through ``forward(module, *args, **kwargs)`` instead of its own forward.

    For layers whose real forward cannot be traced (fast paths, ``isinstance`` dispatch,
    message passing) but whose maths is plain torch ops: the traced graph then shows the
    layer's submodules and ops, and the ordinary rules gate them.
    """
    TRACE_FORWARDS[layer] = forward


def register_leaf_function(fn: Callable, rule: Rule) -> None:
    """Keep calls of ``fn`` as one graph node (fx autowrap) described by ``rule(ctx, node)``."""
    if fn not in LEAF_FUNCTIONS:
        LEAF_FUNCTIONS.append(fn)
    FUNCTION_RULES[fn] = rule


def module_rule(module: nn.Module) -> ModuleRule | None:
    """The rule of a module's exact class (a subclass may change forward, so no MRO lookup)."""
    return MODULE_RULES.get(type(module))


def resize_hook(module: nn.Module) -> Callable[[nn.Module], None] | None:
    """The attribute fixer for a sliced module: its own class's, else its nearest base's.

    A subclass traced through (e.g. a Linear subclass calling F.linear) keeps its base's size
    attributes, so the base's hook is the right one.
    """
    for cls in type(module).__mro__:
        rule = MODULE_RULES.get(cls)
        if rule is not None and rule.resize is not None:
            return rule.resize
    return None


def leaf_types() -> tuple[type, ...]:
    return tuple(MODULE_RULES)


def function_rule(fn: Callable, target: object) -> None:
    FUNCTION_RULES[target] = fn


def method_rule(fn: Callable, name: str) -> None:
    METHOD_RULES[name] = fn
