"""Channel rules for MONAI's self-attention block (``SABlock``: its ViT, UNETR, ViTAutoEnc and
transformer blocks), registered when ``monai`` is imported (LUMOS does not import it).

The q/k/v projections write ``heads x dim_head`` rows each (one ``qkv`` Linear, ``(qkv, head,
d)`` order, or ``to_q``/``to_k``/``to_v``); a head's rows and the same columns of ``out_proj``
are its unit, as in ``nn.MultiheadAttention``. The gate scales those ``out_proj`` columns
(equal to gating the head's output) and compaction removes them, then sets ``num_heads`` and
rebuilds the einops ``Rearrange`` that splits the projection into heads. Without ``out_proj``
(``include_fc=False``) the heads' outputs are the block's output channels and its readers gate
them. A relative positional embedding or an ``attention_dtype`` keeps the block whole.
"""

from __future__ import annotations

from typing import Any

from torch import fx, nn

from .context import RuleContext, describe
from .infos import TensorInfo
from .registry import REGISTRY
from .rule_helpers import node_arg, target_path
from .spaces import Layout


def _sablock(ctx: RuleContext, node: fx.Node, module: Any) -> object:
    owner = target_path(node)
    x = node_arg(node, 0, "x")
    info = ctx.tensor_info(x)
    shape = ctx.shape(x)
    problems = []
    if getattr(module, "rel_positional_embedding", None) is not None:
        problems.append("a relative positional embedding")
    if getattr(module, "attention_dtype", None) is not None:
        problems.append("attention_dtype")
    if shape is None or len(shape) != 3:
        problems.append("an input that is not (batch, tokens, channels)")
    if info is not None and info.dim != -1:
        ctx.pin(info, f"{describe(node)} reads the last dim, not the tracked one")
        info = None
    width_out = module.out_proj.out_features if module.include_fc else module.inner_dim
    if problems:
        return ctx.kept_whole(node, info, problems, width_out)
    assert shape is not None
    batch, tokens = shape[0], shape[1]
    H, D = module.num_heads, module.dim_head
    head_space = ctx.new_space(H, "head", owner)
    heads = Layout.of(head_space, block=D)
    heads.require_nonempty()
    if info is not None:
        in_layout = info.layout
        ctx.site(node, 0 if node.args else "x", -1, in_layout)
    else:
        in_layout = ctx.opaque(module.hidden_input_size, "input is not tracked", f"{owner}.in")
    projections = (("qkv", Layout.concat([heads] * 3)),) if module.use_combined_linear else (
        ("to_q", heads), ("to_k", heads), ("to_v", heads))
    for name, rows in projections:
        path = f"{owner}.{name}"
        ctx.role(path, "weight", 0, rows)
        ctx.role(path, "weight", 1, in_layout, fold=True)
        ctx.param_cost(path, "weight", (rows, in_layout))
        ctx.cost("flops", 2 * batch * tokens, (rows, in_layout), path)
        if getattr(module, name).bias is not None:
            ctx.role(path, "bias", 0, rows)
            ctx.param_cost(path, "bias", (rows,))
    # q k^T and attention @ v: 2 * 2 * batch * tokens^2 per head channel
    ctx.cost("flops", 4 * batch * tokens * tokens, (heads,), f"{owner}.attention")
    if not module.include_fc:
        return TensorInfo(-1, heads)
    path = f"{owner}.out_proj"
    out = Layout.of(ctx.new_space(module.out_proj.out_features, "neuron", path))
    ctx.param_site(owner, "out_proj.weight", 1, heads)
    ctx.role(path, "weight", 0, out)
    ctx.param_cost(path, "weight", (out, heads))
    ctx.cost("flops", 2 * batch * tokens, (out, heads), path)
    if module.out_proj.bias is not None:
        ctx.role(path, "bias", 0, out)
        ctx.param_cost(path, "bias", (out,))
    return TensorInfo(-1, out)


def _lower_sablock(module: Any, node: fx.Node) -> nn.Module | None:
    """After slicing: the head count follows the projections' rows; the einops layer that
    splits them into heads is rebuilt with it (the block itself stays a MONAI SABlock)."""
    rows = (module.qkv.weight.shape[0] // 3 if module.use_combined_linear
            else module.to_q.weight.shape[0])
    heads = rows // module.dim_head
    if heads == module.num_heads:
        return None
    module.num_heads, module.inner_dim = heads, rows
    split = module.input_rearrange
    lengths = dict(getattr(split, "axes_lengths", {}))
    lengths["l"] = heads
    module.input_rearrange = type(split)(split.pattern, **lengths)
    return None


REGISTRY.register_when_imported("monai.networks.blocks.selfattention", "SABlock", _sablock,
                                lower=_lower_sablock, input_dim=-1)
