"""The one registry of per-op channel rules.

A rule reads the infos of an fx node's inputs, records what it owns (parameter roles, gate sites,
cost terms) on the :class:`~lumos.topology.analysis.RuleContext`, and returns the info of the
node's output. Ops without a rule pin the channels that reach them (kept whole, reported) —
never treated as pass-through on a guess.

Everything the tracer, the coordinator and compaction need to know about an op lives in one
:class:`RuleRegistry` (``REGISTRY``): module rules (by exact class), function rules (by the
function object), method rules (by method name), substitute forwards for layers traced
through, and base classes whose unknown subclasses are kept whole. There is one way to add an
entry, :meth:`RuleRegistry.register`, one rule signature (:class:`Rule`), and registering the
same op twice is an error unless ``override=True`` — a second registration silently winning is
how a library's behaviour changes with import order.
"""

from __future__ import annotations

import contextlib
import copy
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch
from torch import fx, nn

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from .analysis import RuleContext

Kind = Literal["module", "function", "method"]


class Rule(Protocol):
    """``rule(ctx, node, module)``: describe one fx node; return the info of its output.

    ``module`` is the called layer for a module rule and None for a function or method rule.
    Return a :class:`~lumos.topology.infos.TensorInfo` when the output carries tracked
    channels, None when it carries none (or they were pinned).
    """

    def __call__(self, ctx: RuleContext, node: fx.Node, module: nn.Module | None) -> Any: ...


#: A rule as :meth:`RuleRegistry.register` takes it: a :class:`Rule`, or a module rule that
#: names the class it is registered for (``module: nn.Linear``), which is what it is called
#: with. A static type cannot tie that parameter to ``target``, so it is not checked here.
AnyRule = Callable[..., Any]
#: ``resize(module)`` as ``register`` takes it: like a module rule, it may name its class.
ResizeHook = Callable[[Any], None]
#: ``lower(module, call_node)`` as ``register`` takes it: it may name its class too.
LowerHook = Callable[[Any, fx.Node], nn.Module | None]


@dataclass(frozen=True)
class RuleEntry:
    """One registered op and everything LUMOS knows about it.

    ``resize(module)`` is called after compaction sliced a module's parameters, to update size
    attributes (``in_features``, ``num_heads``, ...) from the new tensor shapes.
    ``lower(module, call_node)`` may return a replacement module made of plain torch when the
    class cannot express the smaller shape (attention with fewer heads than
    ``embed_dim / head_dim``), or None to keep the module.
    ``input_dim``: the dimension a layer reads channels from (documentation for users'
    rules; the feature dim of a model input is found from the gate sites the rules record).
    ``leaf``: a function kept as one graph node (fx autowrap) rather than traced into.
    """

    kind: Kind
    key: object  # the class, the function, or the method name
    propagate: Rule
    resize: Callable[[nn.Module], None] | None = None
    input_dim: int | None = None
    lower: Callable[[nn.Module, fx.Node], nn.Module | None] | None = None
    leaf: bool = False

    @property
    def name(self) -> str:
        """A readable name for reports and tests: ``nn.Linear``, ``torch.cat``, ``.view()``."""
        if self.kind == "method":
            return f".{self.key}()"
        module = getattr(self.key, "__module__", "") or ""
        qualname = getattr(self.key, "__qualname__", None) or getattr(self.key, "__name__", "")
        return f"{module}.{qualname}" if module else str(qualname or self.key)


#: The previous name of :class:`RuleEntry` (``lumos.topology.ModuleRule``).
ModuleRule = RuleEntry


class RuleRegistry:
    """All op rules, substitute forwards and opaque base classes, in one object.

    Example:
        >>> import torch
        >>> from lumos.topology.registry import REGISTRY
        >>> REGISTRY.entry("module", torch.nn.Linear).input_dim
        -1
        >>> REGISTRY.entry("method", "view").name
        '.view()'
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[Kind, object], RuleEntry] = {}
        self._trace_forwards: dict[type, Callable] = {}
        self._opaque_bases: list[type] = []
        #: rules for functions of packages LUMOS does not import itself (importing MONAI or
        #: timm costs seconds): ``(module, attribute, rule, leaf)``, resolved once the user's
        #: code has imported the module
        self._pending: list[tuple[str, str, AnyRule, dict[str, Any]]] = []
        #: ``(module, loader)``: call ``loader()`` once ``module`` is imported (a family of
        #: rules for one package, e.g. torch-geometric's)
        self._loaders: list[tuple[str, Callable[[], None]]] = []

    # ---- adding ----------------------------------------------------------------------------
    def register(
        self,
        target: type[nn.Module] | Callable | str,
        propagate: AnyRule,
        *,
        resize: ResizeHook | None = None,
        input_dim: int | None = None,
        lower: LowerHook | None = None,
        leaf: bool = False,
        override: bool = False,
    ) -> RuleEntry:
        """Add the rule for a layer class, a function, or a method name (see :class:`Rule`).

        Args:
            target: an ``nn.Module`` subclass (becomes an fx leaf; matched by exact class), a
                function such as ``torch.cat`` (matched by identity), or a method name such
                as ``"view"``.
            propagate: the rule.
            resize: module rules only: fix size attributes after compaction sliced weights.
            input_dim: module rules only: the dim the layer reads channels from.
            lower: module rules only: rebuild the compacted module in plain torch.
            leaf: function rules only: keep calls as one graph node (fx autowrap) instead of
                tracing into the function.
            override: replace an existing rule for the same target.

        Returns:
            The stored :class:`RuleEntry`.

        Raises:
            ConfigurationError: for a target that is none of the three, a non-callable rule,
                module-only options on a function, or a second registration without
                ``override=True``.
        """
        if not callable(propagate):
            raise ConfigurationError(
                f"the rule for {target!r} must be callable as rule(ctx, node, module), got "
                f"{type(propagate).__name__}."
            )
        kind = self._kind_of(target)
        if kind != "module" and (resize or lower or input_dim is not None):
            raise ConfigurationError(
                f"resize=, lower= and input_dim= describe layers; {target!r} is a {kind}."
            )
        if leaf and kind != "function":
            raise ConfigurationError("leaf=True keeps a *function* as one graph node; "
                                     f"{target!r} is a {kind}.")
        key = (kind, target)
        if key in self._entries and not override:
            raise ConfigurationError(
                f"a rule for {self._entries[key].name} is already registered; pass "
                "override=True to replace it (or use lumos.rules.scoped() in tests)."
            )
        entry = RuleEntry(kind, target, propagate, resize, input_dim, lower, leaf)
        self._entries[key] = entry
        return entry

    def register_when_imported(self, module: str, attribute: str, propagate: AnyRule,
                               **options: Any) -> None:
        """:meth:`register` ``module.attribute`` (a layer class or a function) once ``module``
        is imported; ``options`` are :meth:`register`'s (``leaf=``, ``resize=``, ...).

        For the layers and functions of third-party packages (neuraloperator's
        ``SpectralConv``, MONAI's ``drop_connect``) without importing them (seconds each): a
        model built from the package has imported it before it is traced. A missing
        attribute (another version of the package) is skipped.
        """
        self._pending.append((module, attribute, propagate, options))

    def load_when_imported(self, module: str, loader: Callable[[], None]) -> None:
        """Call ``loader()`` (which registers a package's rules) once ``module`` is imported.

        ``import lumos`` then stays fast for users of other packages; ``loader`` must skip what
        is registered already, since it runs again after :meth:`scoped` undid it.
        """
        self._loaders.append((module, loader))

    def _resolve_pending(self) -> None:
        if self._loaders:
            ready = [loader for module, loader in self._loaders if module in sys.modules]
            self._loaders = [e for e in self._loaders if e[0] not in sys.modules]
            for loader in ready:  # after the list is updated: a loader's lookups do not recurse
                loader()
        if not self._pending:
            return
        waiting = []
        for pending in self._pending:
            module, attribute, propagate, options = pending
            mod = sys.modules.get(module)
            if mod is None:
                waiting.append(pending)
                continue
            target = getattr(mod, attribute, None)
            if callable(target) and (self._kind_of(target), target) not in self._entries:
                self.register(target, propagate, **options)
        self._pending = waiting

    def register_trace_forward(
        self, layer: type[nn.Module], forward: Callable, *, override: bool = False
    ) -> None:
        """Trace ``layer`` through ``forward(module, *args, **kwargs)`` instead of its own.

        Raises:
            ConfigurationError: ``layer`` is not an ``nn.Module`` subclass, or already has a
                substitute forward and ``override`` is False.
        """
        if not (isinstance(layer, type) and issubclass(layer, nn.Module)):
            raise ConfigurationError(
                f"register_trace_forward expects an nn.Module subclass, got {layer!r}."
            )
        if layer in self._trace_forwards and not override:
            raise ConfigurationError(
                f"{layer.__name__} already has a substitute forward; pass override=True."
            )
        self._trace_forwards[layer] = forward

    def register_opaque_base(self, base: type[nn.Module]) -> None:
        """Subclasses of ``base`` without a rule of their own are leaves kept whole."""
        if base not in self._opaque_bases:
            self._opaque_bases.append(base)

    @staticmethod
    def _kind_of(target: object) -> Kind:
        if isinstance(target, type):
            if issubclass(target, nn.Module):
                return "module"
            raise ConfigurationError(
                f"rules are registered for nn.Module subclasses, functions or method names; "
                f"{target.__name__} is a class that is not an nn.Module."
            )
        if isinstance(target, nn.Module):
            raise ConfigurationError(
                f"register a rule for the class, not an instance: pass {type(target).__name__}."
            )
        if isinstance(target, str):
            if not target.isidentifier():
                raise ConfigurationError(f"{target!r} is not a method name.")
            return "method"
        if callable(target):
            return "function"
        raise ConfigurationError(
            f"cannot register a rule for {target!r}: give an nn.Module subclass, a function, "
            "or a method name."
        )

    # ---- reading ---------------------------------------------------------------------------
    def entry(self, kind: Kind, key: object) -> RuleEntry | None:
        """The entry registered for exactly this key, or None."""
        return self._entries.get((kind, key))

    def for_node(self, node: fx.Node, module: nn.Module | None = None) -> RuleEntry | None:
        """The rule describing ``node`` (``module``: the called layer of a call_module node).

        A module's rule is its exact class's: a subclass may change forward, so no MRO lookup.
        """
        self._resolve_pending()
        if node.op == "call_module":
            return self._entries.get(("module", type(module)))
        if node.op == "call_function":
            try:
                return self._entries.get(("function", node.target))
            except TypeError:  # an unhashable callable
                return None
        if node.op == "call_method":
            return self._entries.get(("method", node.target))
        return None

    def for_module(self, module: nn.Module) -> RuleEntry | None:
        """The entry of a module's exact class, or None."""
        self._resolve_pending()
        return self._entries.get(("module", type(module)))

    def resize_hook(self, module: nn.Module) -> Callable[[nn.Module], None] | None:
        """The attribute fixer for a sliced module: its own class's, else its nearest base's.

        A subclass traced through (e.g. a Linear subclass calling F.linear) keeps its base's
        size attributes, so the base's hook is the right one.
        """
        self._resolve_pending()
        for cls in type(module).__mro__:
            entry = self._entries.get(("module", cls))
            if entry is not None and entry.resize is not None:
                return entry.resize
        return None

    def trace_forward(self, module: nn.Module) -> Callable | None:
        self._resolve_pending()
        return self._trace_forwards.get(type(module))

    def is_leaf(self, module: nn.Module) -> bool:
        """Whether the tracer keeps ``module`` as one node: it has a rule, or an opaque base."""
        self._resolve_pending()
        if type(module) in self._trace_forwards:
            return False
        if ("module", type(module)) in self._entries:
            return True
        if any(("module", cls) in self._entries for cls in type(module).__mro__[1:]):
            return True  # a subclass of a layer with a rule: kept whole unless it has its own
        return bool(self._opaque_bases) and isinstance(module, tuple(self._opaque_bases))

    def leaf_functions(self) -> list[Callable]:
        self._resolve_pending()
        return [e.key for e in self._entries.values() if e.leaf]  # type: ignore[misc]

    def entries(self, kind: Kind | None = None) -> list[RuleEntry]:
        """Every registered entry (of one kind), in registration order."""
        self._resolve_pending()
        return [e for e in self._entries.values() if kind is None or e.kind == kind]

    def trace_forwards(self) -> dict[type, Callable]:
        self._resolve_pending()
        return dict(self._trace_forwards)

    # ---- scoping ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def scoped(self) -> Iterator[RuleRegistry]:
        """Registrations made inside the block are undone when it ends (tests, experiments).

        Example:
            >>> import torch
            >>> from lumos.topology.registry import REGISTRY
            >>> class Scale(torch.nn.Module):
            ...     def forward(self, x):
            ...         return 2 * x
            >>> with REGISTRY.scoped():
            ...     _ = REGISTRY.register(Scale, lambda ctx, node, module: None)
            ...     REGISTRY.entry("module", Scale) is not None
            True
            >>> REGISTRY.entry("module", Scale) is None
            True
        """
        saved = (dict(self._entries), dict(self._trace_forwards), list(self._opaque_bases),
                 list(self._pending), list(self._loaders))
        try:
            yield self
        finally:
            (self._entries, self._trace_forwards, self._opaque_bases, self._pending,
             self._loaders) = saved

    def __copy__(self) -> RuleRegistry:
        new = RuleRegistry()
        new._entries = dict(self._entries)
        new._trace_forwards = dict(self._trace_forwards)
        new._opaque_bases = list(self._opaque_bases)
        new._pending = list(self._pending)
        new._loaders = list(self._loaders)
        return new

    def copy(self) -> RuleRegistry:
        return copy.copy(self)


#: The registry every LUMOS pass reads.
REGISTRY = RuleRegistry()
# TorchScript submodules (torch.jit.script / trace): compiled, fx cannot read them; they run as
# they are, their channels kept whole
REGISTRY.register_opaque_base(torch.jit.ScriptModule)


def register_rule(
    target: type[nn.Module] | Callable | str,
    propagate: AnyRule | None = None,
    *,
    resize: ResizeHook | None = None,
    input_dim: int | None = None,
    lower: LowerHook | None = None,
    leaf: bool = False,
    override: bool = False,
):
    """Teach the coordinator a layer class, a function or a method (usable as a decorator).

    A layer class becomes an fx leaf: its forward is not traced, ``propagate(ctx, node,
    module)`` describes it instead. See ``docs/custom_layers.md`` for a worked example.

    Args:
        target: an ``nn.Module`` subclass, a function (``torch.cat``), or a method name
            (``"view"``).
        propagate: the rule ``(ctx, node, module) -> info`` (``module`` is None for functions
            and methods); omit it to use ``register_rule`` as a decorator.
        resize, input_dim, lower: layer options, see :class:`RuleEntry`.
        leaf: keep calls of a function as one graph node instead of tracing into it.
        override: replace an existing rule for ``target``.

    Returns:
        ``propagate`` (so that the decorator form leaves the function usable).

    Raises:
        ConfigurationError: see :meth:`RuleRegistry.register`.

    Example:
        >>> import torch, lumos
        >>> class Twice(torch.nn.Module):
        ...     def forward(self, x):
        ...         return 2 * x
        >>> with lumos.rules.scoped():
        ...     _ = lumos.register_rule(Twice, lumos.rules.channelwise())
        ...     sm = lumos.sparsify(torch.nn.Sequential(torch.nn.Linear(4, 8), Twice(),
        ...                                             torch.nn.Linear(8, 1)),
        ...                         torch.randn(16, 4), budget=0.5)
        >>> sm.gates.num_gates  # 4 input features + 8 neurons
        12
    """
    if isinstance(target, type) and not issubclass(target, nn.Module):
        raise ConfigurationError(
            f"register_rule expects an nn.Module subclass, a function or a method name, got "
            f"the class {target.__name__}."
        )
    if isinstance(target, nn.Module):
        raise ConfigurationError(
            f"register_rule expects the class, not an instance: pass {type(target).__name__}."
        )

    def _register(fn: AnyRule) -> AnyRule:
        REGISTRY.register(target, fn, resize=resize, input_dim=input_dim, lower=lower,
                          leaf=leaf, override=override)
        return fn

    if propagate is None:
        return _register
    return _register(propagate)


def register_trace_forward(
    layer: type[nn.Module], forward: Callable, *, override: bool = False
) -> None:
    """Trace ``layer`` through ``forward(module, *args, **kwargs)`` instead of its own forward.

    For layers whose real forward cannot be traced (fast paths, ``isinstance`` dispatch,
    message passing) but whose maths is plain torch ops: the traced graph then shows the
    layer's submodules and ops, and the ordinary rules gate them.

    Raises:
        ConfigurationError: see :meth:`RuleRegistry.register_trace_forward`.
    """
    REGISTRY.register_trace_forward(layer, forward, override=override)


def register_leaf_function(fn: Callable, rule: Rule, *, override: bool = False) -> None:
    """Keep calls of ``fn`` as one graph node (fx autowrap) described by ``rule``.

    The same as ``register_rule(fn, rule, leaf=True)``.
    """
    REGISTRY.register(fn, rule, leaf=True, override=override)


def scoped():
    """``REGISTRY.scoped()``: registrations inside the block are undone when it ends."""
    return REGISTRY.scoped()
