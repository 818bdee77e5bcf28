"""The topology coordinator: reads a model into channel groups that live or die together."""

from . import (  # noqa: F401  (importing a rule module registers its rules)
    rules_attention,
    rules_conv,
    rules_einops,
    rules_elementwise,
    rules_linear,
    rules_monai,
    rules_neuralop,
    rules_norm,
    rules_recurrent,
    rules_shape,
)
from .analysis import ChannelGraph, Group, RuleContext
from .registry import REGISTRY, ModuleRule, RuleEntry, RuleRegistry, register_rule
from .spaces import Layout, Space
from .tracer import trace


def _load_graph_rules() -> None:
    """torch-geometric's rules, once the user's code imported it (it costs seconds)."""
    from . import rules_graph

    rules_graph.register_all()


REGISTRY.load_when_imported("torch_geometric", _load_graph_rules)

__all__ = ["REGISTRY", "ChannelGraph", "Group", "Layout", "ModuleRule", "RuleContext",
           "RuleEntry", "RuleRegistry", "Space", "register_rule", "trace"]
