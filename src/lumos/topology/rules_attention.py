"""Attention: one gate per head of ``nn.MultiheadAttention``; Transformer encoder layers are
traced through their own (slow-path) maths so their FFN width and heads are gated too.

A head is the rows ``h*d:(h+1)*d`` of the q/k/v projections and the same columns of the output
projection. Its gate scales those out-projection columns (equal to gating the head's output)
and compaction folds or removes them. ``nn.MultiheadAttention`` requires
``embed_dim == num_heads * head_dim`` and a query of width ``embed_dim``, so an attention with
fewer heads (or fewer input/output channels) is rebuilt as plain torch: ``nn.Linear``
projections and ``F.scaled_dot_product_attention`` in a ``torch.fx.GraphModule``, which reloads
and scripts without LUMOS.
"""

from __future__ import annotations

import inspect
import math
import operator
from typing import Optional

import torch
import torch.nn.functional as F
from torch import fx, nn

from .context import RuleContext, describe
from .infos import TensorInfo, TupleInfo
from .registry import register_rule, register_trace_forward
from .rule_helpers import known_shape, target_path
from .spaces import Layout, unify

_MHA_SIGNATURE = inspect.signature(nn.MultiheadAttention.forward)


def _bind(node: fx.Node) -> dict:
    bound = _MHA_SIGNATURE.bind(None, *node.args, **node.kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def _weights_used(node: fx.Node) -> bool:
    """Is the attention-weights output (item 1) read by anything?"""
    for user in node.users:
        if user.op == "call_function" and user.target is operator.getitem:
            if user.args[1] != 0 and user.users:
                return True
        else:
            return True  # the tuple itself escapes
    return False


def _mha(ctx: RuleContext, node: fx.Node, module: nn.MultiheadAttention) -> object:
    owner = target_path(node)
    a = _bind(node)
    q, k, v = a["query"], a["key"], a["value"]
    E, H = module.embed_dim, module.num_heads
    D = E // H
    infos = [ctx.tensor_info(t) for t in (q, k, v)]
    problems = []
    if module.bias_k is not None or module.add_zero_attn:
        problems.append("add_bias_kv/add_zero_attn")
    if _weights_used(node):
        problems.append("its averaged attention weights are used")
    mask = a["attn_mask"]
    mask_shape = ctx.shape(mask) if isinstance(mask, fx.Node) else None
    if mask_shape is not None and len(mask_shape) == 3:
        problems.append("a per-head (3-D) attn_mask")
    for key in ("need_weights", "average_attn_weights", "is_causal"):
        if isinstance(a[key], fx.Node):
            problems.append(f"{key} computed at run time")
    if _other_calls_differ(ctx, node):
        problems.append("it is called with different options at different places")
    if problems:
        reason = f"{describe(node)} uses {', '.join(problems)}: kept whole"
        ctx.pin(infos, reason)
        ctx.ungated(describe(node), reason)
        out = ctx.opaque(module.out_proj.out_features, "attention kept whole", f"{owner}.out")
        whole = [ctx.opaque(w, "attention kept whole") for w in (E, module.kdim, module.vdim)]
        _mha_flops(ctx, node, module, whole, ctx.opaque(E, "attention kept whole"), out)
        return TupleInfo([TensorInfo(-1, out), None])

    # inputs: read on their last dim by the projections (gated there, folded into columns)
    layouts = []
    for info, width in zip(infos, (E, module.kdim, module.vdim)):
        if info is not None and info.dim != -1:
            ctx.pin(info, f"{describe(node)} reads the last dim, not the tracked one")
            info = None
        layouts.append(info.layout if info is not None else
                       ctx.opaque(width, "input is not tracked", f"{owner}.in"))
    for arg, info, layout in zip(("query", "key", "value"), infos, layouts):
        if info is not None:
            ctx.site(node, _arg_key(node, arg), -1, layout)
    heads = Layout.of(ctx.new_space(H, "head", owner), block=D)
    heads.require_nonempty()  # attention with no head left is not a layer torch can build
    qkv_rows = Layout.concat([heads, heads, heads])
    if module._qkv_same_embed_dim:
        reason = f"{describe(node)} projects query, key and value with the same columns"
        unify(layouts[0], layouts[1], reason)
        unify(layouts[0], layouts[2], reason)
        ctx.role(owner, "in_proj_weight", 0, qkv_rows)
        ctx.role(owner, "in_proj_weight", 1, layouts[0], fold=True)
        ctx.param_cost(owner, "in_proj_weight", (qkv_rows, layouts[0]))
    else:
        for name, layout in zip(("q_proj_weight", "k_proj_weight", "v_proj_weight"), layouts):
            ctx.role(owner, name, 0, heads)
            ctx.role(owner, name, 1, layout, fold=True)
            ctx.param_cost(owner, name, (heads, layout))
    if module.in_proj_bias is not None:
        ctx.role(owner, "in_proj_bias", 0, qkv_rows)
        ctx.param_cost(owner, "in_proj_bias", (qkv_rows,))
    out_path = f"{owner}.out_proj"
    out = Layout.of(ctx.new_space(module.out_proj.out_features, "neuron", out_path))
    ctx.param_site(owner, "out_proj.weight", 1, heads)
    ctx.role(out_path, "weight", 0, out)
    ctx.param_cost(out_path, "weight", (out, heads))
    if module.out_proj.bias is not None:
        ctx.role(out_path, "bias", 0, out)
        ctx.param_cost(out_path, "bias", (out,))

    _mha_flops(ctx, node, module, layouts, heads, out)
    return TupleInfo([TensorInfo(-1, out), None])


def _mha_flops(ctx: RuleContext, node: fx.Node, module: nn.MultiheadAttention,
               inputs: list[Layout], heads: Layout, out: Layout) -> None:
    """torch's FlopCounterMode on the slow path: projections 2*rows*in*out each, attention
    2*B*H*Lq*Lk*D twice (scores and weighted values)."""
    owner = target_path(node)
    a = _bind(node)
    q_shape, k_shape = known_shape(ctx, a["query"]), known_shape(ctx, a["key"])
    rows_q, rows_k = math.prod(q_shape[:-1]), math.prod(k_shape[:-1])
    seq_dim = 1 if module.batch_first and len(q_shape) == 3 else 0
    lq, lk = q_shape[seq_dim], k_shape[seq_dim]
    batch = rows_q // lq
    ctx.cost("flops", 2 * rows_q, (inputs[0], heads), f"{owner}.q")
    ctx.cost("flops", 2 * rows_k, (inputs[1], heads), f"{owner}.k")
    ctx.cost("flops", 2 * rows_k, (inputs[2], heads), f"{owner}.v")
    ctx.cost("flops", 4 * batch * lq * lk, (heads,), f"{owner}.attention")
    ctx.cost("flops", 2 * rows_q, (heads, out), f"{owner}.out_proj")


def _arg_key(node: fx.Node, name: str) -> int | str:
    index = {"query": 0, "key": 1, "value": 2}[name]
    return index if len(node.args) > index else name


def _options(node: fx.Node) -> tuple:
    a = _bind(node)
    return (
        a["key_padding_mask"] is None, a["attn_mask"] is None, a["need_weights"],
        a["average_attn_weights"], a["is_causal"],
    )


def _other_calls_differ(ctx: RuleContext, node: fx.Node) -> bool:
    calls = [n for n in node.graph.nodes if n.op == "call_module" and n.target == node.target]
    return len({_options(n) for n in calls}) > 1


# ---- compaction: attention with fewer heads as plain torch --------------------------------------
class _PrunedAttention(nn.Module):
    """Multi-head attention whose inner width ``heads * head_dim`` differs from its in/out width.

    Traced into a GraphModule at compaction, so the flags below are baked into the code.
    """

    def __init__(self, mha: nn.MultiheadAttention, mask_dtypes: dict, unbatched: bool) -> None:
        super().__init__()
        w = mha.in_proj_weight if mha._qkv_same_embed_dim else None
        inner = (w.shape[0] // 3) if w is not None else mha.q_proj_weight.shape[0]
        self.num_heads = mha.num_heads
        self.head_dim = mha.head_dim
        self.batch_first = mha.batch_first
        self.unbatched = unbatched
        self.kpm_bool = mask_dtypes.get("key_padding_mask") == torch.bool
        self.mask_bool = mask_dtypes.get("attn_mask") == torch.bool
        self.has_kpm = "key_padding_mask" in mask_dtypes
        self.has_mask = "attn_mask" in mask_dtypes
        b = mha.in_proj_bias
        projections = []
        for i, name in enumerate(("q_proj_weight", "k_proj_weight", "v_proj_weight")):
            weight = w[i * inner : (i + 1) * inner] if w is not None else getattr(mha, name)
            lin = nn.Linear(weight.shape[1], weight.shape[0], bias=b is not None)
            lin.weight = nn.Parameter(weight.detach().clone())
            if b is not None:
                lin.bias = nn.Parameter(b[i * inner : (i + 1) * inner].detach().clone())
            projections.append(lin)
        self.q_proj, self.k_proj, self.v_proj = projections
        self.out_proj = nn.Linear(inner, mha.out_proj.out_features,
                                  bias=mha.out_proj.bias is not None)
        self.out_proj.weight = nn.Parameter(mha.out_proj.weight.detach().clone())
        if mha.out_proj.bias is not None:
            self.out_proj.bias = nn.Parameter(mha.out_proj.bias.detach().clone())

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        if self.unbatched:  # (L, E): one sequence
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
        elif not self.batch_first:  # (L, N, E)
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        b, lq, lk = query.shape[0], query.shape[1], key.shape[1]
        h, d = self.num_heads, self.head_dim
        q = self.q_proj(query).view(b, lq, h, d).transpose(1, 2)
        k = self.k_proj(key).view(b, lk, h, d).transpose(1, 2)
        v = self.v_proj(value).view(b, lk, h, d).transpose(1, 2)
        mask = None
        if self.has_mask:  # bool masks mean "may not attend", as in nn.MultiheadAttention
            mask = attn_mask
            if self.mask_bool:
                mask = torch.zeros_like(attn_mask, dtype=q.dtype).masked_fill(
                    attn_mask, float("-inf"))
        if self.has_kpm:
            kpm = key_padding_mask
            if self.kpm_bool:
                kpm = torch.zeros_like(kpm, dtype=q.dtype).masked_fill(kpm, float("-inf"))
            kpm = kpm.view(b, 1, 1, lk)
            mask = kpm if mask is None else mask + kpm
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = self.out_proj(out.transpose(1, 2).reshape(b, lq, h * d))
        if self.unbatched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, None


# Real types (not the strings ``from __future__ import annotations`` makes): TorchScript needs
# them, and fx must be able to name them when the compacted model is pickled.
_PrunedAttention.forward.__annotations__ = {
    "query": torch.Tensor, "key": torch.Tensor, "value": torch.Tensor,
    "key_padding_mask": Optional[torch.Tensor], "need_weights": bool,  # noqa: UP045
    "attn_mask": Optional[torch.Tensor], "average_attn_weights": bool, "is_causal": bool,  # noqa: UP045
}


def lower_attention(module: nn.MultiheadAttention, node: fx.Node) -> nn.Module | None:
    """After slicing: keep ``module`` if it is still a valid MHA, else its plain-torch twin."""
    inner = (module.in_proj_weight.shape[0] // 3 if module._qkv_same_embed_dim
             else module.q_proj_weight.shape[0])
    in_width = (module.in_proj_weight.shape[1] if module._qkv_same_embed_dim
                else module.q_proj_weight.shape[1])
    heads = inner // module.head_dim
    out_width = module.out_proj.weight.shape[0]
    if inner == module.embed_dim and in_width == module.embed_dim == out_width:
        return None
    a = _bind(node)
    dtypes = {}
    for key in ("key_padding_mask", "attn_mask"):
        if isinstance(a[key], fx.Node):
            meta = a[key].meta.get("tensor_meta")
            dtypes[key] = getattr(meta, "dtype", torch.float32)
    q_meta = a["query"].meta.get("tensor_meta") if isinstance(a["query"], fx.Node) else None
    unbatched = q_meta is not None and len(q_meta.shape) == 2
    module.num_heads = heads
    twin = _PrunedAttention(module, dtypes, unbatched)
    traced = fx.symbolic_trace(twin)
    traced.train(module.training)
    # what a reader of the compacted model looks for on an attention layer (torch types
    # Module.__setattr__ for tensors and modules only, but any value may be set)
    traced.num_heads, traced.head_dim = heads, module.head_dim
    traced.embed_dim, traced.batch_first = inner, module.batch_first  # type: ignore[assignment]
    return traced


register_rule(nn.MultiheadAttention, _mha, input_dim=-1, lower=lower_attention)


# ---- Transformer encoder layers: traced through their slow-path maths ---------------------------
def _encoder_layer_forward(self: nn.TransformerEncoderLayer, src, src_mask=None,
                           src_key_padding_mask=None, is_causal=False):
    """The maths of ``TransformerEncoderLayer.forward`` without its fused fast path."""
    x = src
    if self.norm_first:
        x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal=is_causal)
        x = x + self._ff_block(self.norm2(x))
    else:
        x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal=is_causal))
        x = self.norm2(x + self._ff_block(x))
    return x


def _encoder_forward(self: nn.TransformerEncoder, src, mask=None, src_key_padding_mask=None,
                     is_causal=None):
    """``TransformerEncoder.forward`` without nested-tensor conversion (same values except at
    padded positions, which the fast path sets to 0)."""
    out = src
    for layer in self.layers:
        out = layer(out, src_mask=mask, src_key_padding_mask=src_key_padding_mask,
                    is_causal=bool(is_causal))
    if self.norm is not None:
        out = self.norm(out)
    return out


register_trace_forward(nn.TransformerEncoderLayer, _encoder_layer_forward)
register_trace_forward(nn.TransformerEncoder, _encoder_forward)
