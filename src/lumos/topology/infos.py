"""What the coordinator knows about each fx value and what each rule records about the model."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import fx

from .spaces import Layout


@dataclass
class TensorInfo:
    """A tensor whose dimension ``dim`` (negative index, broadcast-aligned) carries ``layout``."""

    dim: int
    layout: Layout


@dataclass
class ShapeInfo:
    """A ``torch.Size`` (or one of its entries) whose entry ``dim`` is a tracked channel count."""

    dim: int | None  # None: this value *is* the tracked entry (an int)
    layout: Layout


@dataclass
class TupleInfo:
    """A tuple/list whose items have their own infos (outputs of split, max(dim), ...)."""

    items: list


@dataclass
class AttrInfo:
    """A parameter/buffer read with get_attr, possibly through elementwise ops."""

    owner: str  # dotted module path ("" for the root)
    name: str
    elementwise_of_raw: bool = True  # still aligned element-for-element with the stored tensor
    #: the stored tensor broadcast to a larger shape (``cls_token.expand(B, -1, -1)``): dims
    #: align from the right, so a channel dim of the value is a dim of the stored tensor
    broadcast_of_raw: bool = False

    def raw_dim(self, raw_ndim: int, dim: int) -> int | None:
        """The stored tensor's dim under the value's (negative) ``dim``, or None."""
        if not (self.elementwise_of_raw or self.broadcast_of_raw) or -dim > raw_ndim:
            return None
        return raw_ndim + dim


@dataclass
class ParamRole:
    """Dimension ``dim`` of parameter ``owner.name`` is indexed by ``layout``.

    ``fold``: this dim reads gated channels; compaction multiplies it by the deterministic gate
    value of each channel so fractional gates are kept exactly.
    """

    owner: str
    name: str
    dim: int
    layout: Layout
    fold: bool = False


@dataclass
class GateSite:
    """Where gated channels are read: argument ``arg`` of ``node``, along ``dim``."""

    node: fx.Node
    arg: int | str
    dim: int
    layout: Layout


@dataclass
class ParamSite:
    """Gates applied *inside* a leaf module by scaling its parameter ``name`` along ``dim``.

    For units that only exist inside a layer (attention heads): scaling out_proj's columns of
    head h by its gate equals gating that head's output; compaction folds the same values.
    """

    owner: str  # the leaf module's path (the call_module target)
    param: str  # parameter path relative to the owner, e.g. "out_proj.weight"
    dim: int
    layout: Layout
    #: closing every unit leaves the layer's output independent of its inputs (False for
    #: units that are one of several parallel parts, such as one corner of a spectrum)
    cuts: bool = True


@dataclass
class ShapeRewrite:
    """A literal size in a shape argument that must follow the kept channel count."""

    node: fx.Node
    arg_path: tuple  # indices into node.args (nested for shape tuples)
    layout: Layout
    factor: int = 1  # positions per layout position (e.g. flatten of C x HW into one view entry)


@dataclass
class CostTerm:
    """``coeff * prod(live(layout) for layout in factors)`` parameters or FLOPs."""

    kind: str  # "params" | "flops"
    coeff: float
    factors: tuple[Layout, ...]
    label: str


@dataclass
class StatInput:
    """Layer ``owner`` computes statistics over the channels of ``layout`` (LayerNorm,
    GroupNorm): its input is gated so closed channels are exact zeros, and compaction hands
    the layer the kept channels and their gate values (``lumos.compaction.STAT_INPUT``) so
    its plain-torch twin computes the same statistics over the original width."""

    owner: str
    layout: Layout
    dim: int  # the channel dim of the norm's input (negative)


@dataclass
class Ungated:
    """A place the coordinator left ungated, with the reason (shown by report())."""

    where: str
    reason: str


@dataclass
class Records:
    roles: list[ParamRole] = field(default_factory=list)
    sites: list[GateSite] = field(default_factory=list)
    param_sites: list[ParamSite] = field(default_factory=list)
    rewrites: list[ShapeRewrite] = field(default_factory=list)
    costs: list[CostTerm] = field(default_factory=list)
    claimed: set = field(default_factory=set)  # (owner, name) params accounted for by a rule
    ungated: list[Ungated] = field(default_factory=list)
    resized_modules: set = field(default_factory=set)
    measured: list = field(default_factory=list)  # nodes whose FLOPs are measured, not modelled
    stat_inputs: list[StatInput] = field(default_factory=list)
