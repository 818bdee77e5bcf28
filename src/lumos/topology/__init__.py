"""The topology coordinator: reads a model into channel groups that live or die together."""

import contextlib

from . import (  # noqa: F401  (importing a rule module registers its rules)
    rules_attention,
    rules_conv,
    rules_elementwise,
    rules_linear,
    rules_monai,
    rules_neuralop,
    rules_norm,
    rules_recurrent,
    rules_shape,
)

with contextlib.suppress(ImportError):  # graph layers, when torch-geometric is installed
    from . import rules_graph  # noqa: F401
from .analysis import ChannelGraph, Group, RuleContext
from .registry import REGISTRY, ModuleRule, RuleEntry, RuleRegistry, register_rule
from .spaces import Layout, Space
from .tracer import trace

__all__ = ["REGISTRY", "ChannelGraph", "Group", "Layout", "ModuleRule", "RuleContext",
           "RuleEntry", "RuleRegistry", "Space", "register_rule", "trace"]
