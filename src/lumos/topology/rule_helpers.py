"""Small helpers every rule module uses to read an fx node's arguments."""

from __future__ import annotations

from torch import fx


def node_arg(node: fx.Node, index: int, name: str, default=None):
    """Argument ``index`` of a call, or its keyword ``name`` (fx keeps whichever was written)."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def positive_dim(dim: int, ndim: int) -> int:
    """``dim`` counted from the front."""
    return dim + ndim if dim < 0 else dim
