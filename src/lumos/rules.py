"""Teach LUMOS your own layers: ``lumos.register_rule(MyLayer, lumos.rules.dense())``.

Ready-made rules: :func:`dense` (``x @ W.T + b``), :func:`channelwise` (each channel on its
own), :func:`keep_whole` (do not look inside). A full rule is ``propagate(ctx, node, module)``
using :class:`RuleContext`; see ``docs/custom_layers.md``. ``register_rule`` takes a layer
class, a function or a method name; :func:`scoped` undoes registrations at the end of a block
(tests); :data:`REGISTRY` is the one registry every LUMOS pass reads.
"""

from .topology.context import RuleContext
from .topology.custom import channelwise, dense, keep_whole
from .topology.infos import TensorInfo, TupleInfo
from .topology.registry import (
    REGISTRY,
    Rule,
    RuleEntry,
    register_leaf_function,
    register_rule,
    register_trace_forward,
    scoped,
)
from .topology.spaces import Layout, Space

__all__ = [
    "REGISTRY",
    "Layout",
    "Rule",
    "RuleEntry",
    "RuleContext",
    "Space",
    "TensorInfo",
    "TupleInfo",
    "channelwise",
    "dense",
    "keep_whole",
    "register_leaf_function",
    "register_rule",
    "register_trace_forward",
    "scoped",
]
