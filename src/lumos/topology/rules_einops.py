"""The functional ``einops.rearrange``, read as the permutation it is.

einops cannot run on an fx proxy (its backend lookup does not know the type), so the function
is a leaf, registered when ``einops`` is imported (LUMOS does not import it). A pattern that
moves the tracked channel axis as an axis of its own (``"n c h w -> n h w c"``, also with
``...`` and with other axes grouped, ``"b c h w -> b (h w) c"``) keeps the channels, now at
their new position. One that splits or merges the channel axis (``"b (g c) n -> b g c n"``) or
names its length keeps them whole.
"""

from __future__ import annotations

import re

from torch import fx, nn

from .context import RuleContext, describe
from .infos import TensorInfo
from .registry import REGISTRY
from .rule_helpers import node_arg, positive_dim

_TOKEN = re.compile(r"\(|\)|\.\.\.|[^\s()]+")


def _tokens(side: str) -> list[str | tuple[str, ...]] | None:
    """One entry per output/input dim: an axis name, ``"..."``, or a group of names."""
    out: list[str | tuple[str, ...]] = []
    group: list[str] | None = None
    for tok in _TOKEN.findall(side):
        if tok == "(":
            if group is not None:
                return None
            group = []
        elif tok == ")":
            if group is None:
                return None
            out.append(tuple(group))
            group = None
        elif group is not None:
            group.append(tok)
        else:
            out.append(tok)
    return out if group is None else None


def _moved_dim(pattern: str, dim: int, ndim: int) -> int | None:
    """Where input dim ``dim`` (of ``ndim``) lands, if it moves as an axis of its own."""
    if pattern.count("->") != 1:
        return None
    left, right = (_tokens(side) for side in pattern.split("->"))
    if left is None or right is None:
        return None
    ellipsis = ndim - (len(left) - left.count("..."))  # dims the ``...`` stands for
    if ellipsis < 0 or left.count("...") > 1:
        return None
    position = 0
    for token in left:
        width = ellipsis if token == "..." else 1
        if position <= dim < position + width:
            if token == "...":
                if right.count("...") != 1:
                    return None
                before = right.index("...")
                return sum(ellipsis if t == "..." else 1 for t in right[:before]) + dim - position
            if not isinstance(token, str) or token.isdigit() or right.count(token) != 1:
                return None  # grouped, a literal 1, or repeated/removed
            return sum(ellipsis if t == "..." else 1 for t in right[:right.index(token)])
        position += width
    return None


def _rearrange(ctx: RuleContext, node: fx.Node, module: nn.Module | None = None) -> object:
    x = node_arg(node, 0, "tensor")
    info = ctx.tensor_info(x)
    if info is None:
        return None
    pattern = node_arg(node, 1, "pattern")
    shape = ctx.shape(x)
    if not isinstance(pattern, str) or shape is None:
        ctx.pin(info, f"{describe(node)} has no literal pattern")
        return None
    ndim = len(shape)
    moved = _moved_dim(pattern, positive_dim(info.dim, ndim), ndim)
    out_shape = ctx.shape(node)
    if moved is None or out_shape is None or _axis_named(pattern, info.dim, ndim, node):
        ctx.pin(info, f"{describe(node)} regroups the tracked axis ('{pattern}')")
        return None
    return TensorInfo(moved - len(out_shape), info.layout)


def _axis_named(pattern: str, dim: int, ndim: int, node: fx.Node) -> bool:
    """Whether the channel axis's length is given as a keyword (a constant after compaction)."""
    left = _tokens(pattern.split("->")[0]) or []
    names = [t for t in left if isinstance(t, str) and t != "..."]
    return any(name in node.kwargs for name in names if len(left) == ndim and
               left.index(name) == positive_dim(dim, ndim))


REGISTRY.register_when_imported("einops.einops", "rearrange", _rearrange, leaf=True)
