"""Channel spaces: the unit the coordinator reasons about.

A *space* is a set of channels that live or die together channel by channel: the output
neurons of a Linear, the input features of a model argument, a residual stream shared by every
block that adds into it. Spaces that an op ties together (``a + b``) are merged with union-find;
the root of a merged set becomes one gate group. A *layout* says how the positions of one tensor
dimension map onto spaces: a concatenation of segments, each a slice of a space whose channels
may each span ``block`` consecutive positions (``flatten`` of C x H x W, or a head of size d).

A space whose channels are independent (a layer's outputs) may later be *split* into parts,
when an op ties it to a concatenation (``cat([a, b]) + fc(x)``): every layout that names it
then reads through to the parts, so each part joins its own piece.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

_ids = itertools.count()


class Space:
    """A set of channels; merged spaces share a root found by :meth:`find`."""

    __slots__ = ("size", "kind", "origin", "_parent", "_pinned", "_nonempty", "parts", "id")

    def __init__(self, size: int, kind: str, origin: str) -> None:
        self.size = int(size)
        self.kind = kind
        self.origin = origin
        self._parent: Space | None = None
        self._pinned: str | None = None
        self._nonempty = False
        self.parts: tuple[Space, ...] | None = None  # set by split()
        self.id = next(_ids)

    def find(self) -> Space:
        root = self
        while root._parent is not None:
            root = root._parent
        node = self
        while node._parent is not None and node._parent is not root:
            node._parent, node = root, node._parent
        return root

    @property
    def pinned(self) -> str | None:
        """Why this space may not be gated, or None if it may."""
        return self.find()._pinned

    def pin(self, reason: str) -> None:
        root = self.find()
        if root.parts:
            for part in root.parts:
                part.pin(reason)
        if root._pinned is None:
            root._pinned = reason

    @property
    def nonempty(self) -> bool:
        """True if some layer reading or writing these channels cannot have width 0 (torch's
        conv and norm layers): compaction then keeps one inert channel if all gates close."""
        return self.find()._nonempty

    def require_nonempty(self) -> None:
        root = self.find()
        root._nonempty = True
        for part in root.parts or ():
            part.require_nonempty()

    def split(self, sizes: list[int]) -> tuple[Space, ...]:
        """Cut this (root) space into consecutive parts of the given sizes."""
        root = self.find()
        assert root.parts is None and sum(sizes) == root.size, (root, sizes)
        root.parts = tuple(
            Space(n, root.kind, f"{root.origin}[{i}]") for i, n in enumerate(sizes)
        )
        for part in root.parts:
            part._pinned, part._nonempty = root._pinned, root._nonempty
        return root.parts

    def __repr__(self) -> str:
        return f"Space({self.origin!r}, size={self.size}, kind={self.kind})"


def union(a: Space, b: Space) -> Space:
    """Merge two equally sized spaces; a pin or a 'feature' kind on either side survives."""
    ra, rb = a.find(), b.find()
    if ra is rb:
        return ra
    if ra.size != rb.size:
        raise ValueError(f"cannot merge spaces of size {ra.size} and {rb.size}")
    if ra.parts or rb.parts:  # callers unify expanded segments, which are never split
        raise ValueError("cannot merge a split space as a whole")
    # Feature spaces stay the root so the merged group is reported as input features;
    # otherwise the earliest space (first in graph order) names the group.
    if (rb.kind == "feature") != (ra.kind == "feature"):
        if rb.kind == "feature":
            ra, rb = rb, ra
    elif rb.id < ra.id:
        ra, rb = rb, ra
    rb._parent = ra
    ra._nonempty = ra._nonempty or rb._nonempty
    if ra._pinned is None and rb._pinned is not None:
        ra._pinned = rb._pinned
    return ra


@dataclass(frozen=True)
class Segment:
    """Channels ``start:stop`` of ``space``, each occupying ``block`` consecutive positions."""

    space: Space
    start: int
    stop: int
    block: int = 1

    @property
    def length(self) -> int:
        return (self.stop - self.start) * self.block

    @property
    def whole(self) -> bool:
        return self.start == 0 and self.stop == self.space.size


def _expand(seg: Segment) -> list[Segment]:
    """A segment over a split space, as segments over its parts (recursively)."""
    root = seg.space.find()
    if not root.parts:
        return [seg]
    out, offset = [], 0
    for part in root.parts:
        lo, hi = max(seg.start, offset), min(seg.stop, offset + part.size)
        if lo < hi:
            out += _expand(Segment(part, lo - offset, hi - offset, seg.block))
        offset += part.size
    return out


@dataclass(frozen=True)
class Layout:
    """How the positions of one tensor dimension map onto channel spaces."""

    raw: tuple[Segment, ...]

    @property
    def segments(self) -> tuple[Segment, ...]:
        """The segments, read through any space split after this layout was made."""
        if not any(seg.space.find().parts for seg in self.raw):
            return self.raw
        return tuple(part for seg in self.raw for part in _expand(seg))

    @staticmethod
    def of(space: Space, block: int = 1) -> Layout:
        return Layout((Segment(space, 0, space.size, block),))

    @staticmethod
    def concat(layouts: list[Layout]) -> Layout:
        return Layout(tuple(seg for lay in layouts for seg in lay.raw))

    @property
    def length(self) -> int:
        return sum(seg.length for seg in self.segments)

    def spaces(self) -> list[Space]:
        return [seg.space for seg in self.segments]

    def pin(self, reason: str) -> None:
        for seg in self.segments:
            seg.space.pin(reason)

    def require_nonempty(self) -> None:
        for seg in self.segments:
            seg.space.require_nonempty()

    def with_block(self, factor: int) -> Layout:
        """Each position expands into ``factor`` consecutive ones (flatten of a trailing dim)."""
        return Layout(
            tuple(Segment(s.space, s.start, s.stop, s.block * factor) for s in self.raw)
        )


def unify(a: Layout, b: Layout, reason: str) -> bool:
    """Tie two layouts channel by channel (elementwise op between them).

    Exact merging needs matching segment boundaries over whole spaces; anything else pins both
    sides (kept whole, never gated) and returns False — conservative, never wrong.
    """
    if a.length != b.length:
        a.pin(reason)
        b.pin(reason)
        return False
    for x, y in ((a, b), (b, a)):
        if _splittable_onto(x, y):  # a layer's outputs tied to a concatenation: split them
            x.segments[0].space.split([seg.space.size for seg in y.segments])
    sa_all, sb_all = a.segments, b.segments
    if len(sa_all) == len(sb_all) and all(
        sa.whole and sb.whole and sa.block == sb.block and sa.space.size == sb.space.size
        for sa, sb in zip(sa_all, sb_all)
    ):
        for sa, sb in zip(sa_all, sb_all):
            union(sa.space, sb.space)
        return True
    a.pin(reason)
    b.pin(reason)
    return False


def _splittable_onto(x: Layout, y: Layout) -> bool:
    """Is ``x`` one whole fresh space that ``y`` (several whole spaces, same block) tiles?"""
    xs, ys = x.segments, y.segments
    if len(xs) != 1 or len(ys) < 2:
        return False
    seg = xs[0]
    root = seg.space.find()
    return (
        seg.whole
        and root.pinned is None
        and root.kind != "feature"
        and all(t.whole and t.block == seg.block for t in ys)
        and sum(t.space.size for t in ys) == root.size
    )
