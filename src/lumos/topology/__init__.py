"""The topology coordinator: reads a model into channel groups that live or die together."""

from . import builtin_rules  # noqa: F401  (registers the built-in rules)
from .analysis import ChannelGraph, Group, RuleContext
from .registry import ModuleRule, register_rule
from .spaces import Layout, Space
from .tracer import trace

__all__ = ["ChannelGraph", "Group", "Layout", "ModuleRule", "RuleContext", "Space",
           "register_rule", "trace"]
