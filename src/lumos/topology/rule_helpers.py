"""Small helpers every rule module uses to read an fx node's arguments."""

from __future__ import annotations

from typing import TYPE_CHECKING, SupportsInt, cast

from torch import fx, nn

if TYPE_CHECKING:
    from .analysis import RuleContext


def node_arg(node: fx.Node, index: int, name: str, default=None):
    """Argument ``index`` of a call, or its keyword ``name`` (fx keeps whichever was written)."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def positive_dim(dim: int, ndim: int) -> int:
    """``dim`` counted from the front."""
    return dim + ndim if dim < 0 else dim


def target_path(node: fx.Node) -> str:
    """The dotted path a ``call_module`` or ``get_attr`` node names: its ``target``.

    fx types ``target`` as a callable or a string; for these two ops it is always the string
    (a module rule only ever sees ``call_module`` nodes).
    """
    target = node.target
    assert isinstance(target, str), f"{node.op} node '{node.name}' has no target path"
    return target


def known_shape(ctx: RuleContext, arg: object) -> tuple[int, ...]:
    """The shape of ``arg``, a tensor node whose shape the example run recorded.

    ``ctx.shape`` is None only for what is not a tensor node; a node that carries tracked
    channels always has a shape (it is checked against its info), so rules reading the shape
    of a tensor they know is there use this.
    """
    shape = ctx.shape(arg)
    assert shape is not None, f"no shape recorded for {arg!r}"
    return shape


def int_arg(arg: object) -> int:
    """``int(arg)`` for an fx argument a rule reads as a literal int (a dim): fx types
    arguments as any value a graph can hold, ``int()`` raises for those it does not take."""
    return int(cast(SupportsInt, arg))


_BINARY = ("input", "other")
_REDUCE = ("input", "dim", "keepdim")
#: leading parameters of ops whose rules read operands by position (function form; the
#: method form is the same without ``input``, which is the tensor the method is called on)
_ORDER: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("add", "sub", "subtract", "mul", "multiply", "div", "divide",
                     "true_divide", "pow", "maximum", "minimum", "fmax", "fmin", "atan2",
                     "hypot", "add_", "sub_", "mul_", "div_"), _BINARY),
    "where": ("condition", "input", "other"),
    **dict.fromkeys(("zeros_like", "ones_like", "empty_like", "rand_like", "randn_like",
                     "full_like"), ("input",)),
    **dict.fromkeys(("transpose", "swapaxes", "swapdims"), ("input", "dim0", "dim1")),
    **dict.fromkeys(("movedim", "moveaxis"), ("input", "source", "destination")),
    "permute": ("input", "dims"),
    **dict.fromkeys(("sum", "mean", "amax", "amin", "prod", "std", "var", "logsumexp",
                     "nansum", "nanmean", "max", "min", "any", "all"), _REDUCE),
    **dict.fromkeys(("softmax", "log_softmax"), ("input", "dim")),
    "masked_fill": ("input", "mask", "value"),
    "expand": ("input", "size"),
    **dict.fromkeys(("index_select",), ("input", "dim", "index")),
    **dict.fromkeys(("cat", "concat", "stack"), ("tensors", "dim")),
}


def canonicalize(node: fx.Node) -> None:
    """Move keyword operands of the ops in ``_ORDER`` into their positions, so every rule reads
    ``torch.add(input=a, other=b)`` as ``torch.add(a, b)`` and ``x.transpose(dim0=1, dim1=2)``
    as ``x.transpose(1, 2)`` (the same call; the graph keeps the positional form)."""
    if node.op not in ("call_function", "call_method") or not node.kwargs:
        return
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    order = _ORDER.get(name)
    if order is None:
        return
    if node.op == "call_method":
        order = order[1:]
        start = len(node.args) - 1
    else:
        start = len(node.args)
    args, kwargs = list(node.args), dict(node.kwargs)
    for param in order[max(start, 0):]:
        if param not in kwargs:
            break
        args.append(kwargs.pop(param))
    node.args, node.kwargs = tuple(args), kwargs


def stored_tensor(module: nn.Module, name: str):
    """The parameter or buffer ``module.name`` as registered, else the plain attribute.

    Some layers answer ``getattr`` with a view (tltorch's complex tensors return
    ``view_as_complex`` of the real parameter, a new tensor each time); records and
    compaction work on what is stored.
    """
    params, buffers = module._parameters, module._buffers
    if name in params:
        return params[name]
    if name in buffers:
        return buffers[name]
    return getattr(module, name)


def store_tensor(module: nn.Module, name: str, value) -> None:
    """Replace ``module.name`` where it is stored (see :func:`stored_tensor`)."""
    if name in module._parameters:
        module._parameters[name] = value
    elif name in module._buffers:
        module._buffers[name] = value
    else:
        setattr(module, name, value)


def plain_attributes(module: nn.Module) -> bool:
    """Whether ``module`` stores and reads attributes as ``nn.Module`` does (no custom
    ``__getattr__``/``__setattr__``), so ``torch.func.functional_call`` may swap its params."""
    cls = type(module)
    return cls.__setattr__ is nn.Module.__setattr__ and cls.__getattr__ is nn.Module.__getattr__


def call_override(module: nn.Module) -> type | None:
    """The class in ``module``'s MRO that defines its own ``__call__`` (None for plain modules
    and fx GraphModules, whose call is fx's). Such a ``__call__`` runs Python before fx sees
    the module call: the tracer bypasses it for leaves, compaction saves the call so that
    fx's re-trace on ``torch.load`` keeps it whole."""
    owner = next((c for c in type(module).__mro__ if "__call__" in vars(c)), nn.Module)
    if owner is nn.Module or not issubclass(owner, nn.Module) or issubclass(
            owner, fx.GraphModule):
        return None
    return owner


def source_line(frame) -> str:  # noqa: ANN001 - a traceback.FrameSummary
    """``file:line: "code"``: how LUMOS's messages point at a line of the user's code."""
    return f'{frame.filename}:{frame.lineno}: "{(frame.line or "").strip()}"'
