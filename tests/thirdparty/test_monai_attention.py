"""MONAI's self-attention block (``SABlock``, in its ViT/UNETR/ViTAutoEnc): one gate per head,
compaction exact for random gate states, and a compacted block with fewer heads is still a
``SABlock`` whose einops head split follows."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lumos
from lumos.testing import assert_compacts_exactly

selfattention = pytest.importorskip("monai.networks.blocks.selfattention")


class Tokens(nn.Module):
    def __init__(self, **options) -> None:
        super().__init__()
        self.embed = nn.Linear(5, 16)
        self.attn = selfattention.SABlock(16, 4, **options)
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        h = self.embed(x)
        return self.head(h + self.attn(h))


@pytest.mark.parametrize("options", [
    {}, {"use_combined_linear": False}, {"qkv_bias": True},
    {"causal": True, "sequence_length": 6}, {"use_flash_attention": True},
])
def test_sablock_heads_are_gated_and_compact_exactly(options):
    torch.manual_seed(0)
    x = torch.randn(3, 6, 5)
    check = assert_compacts_exactly(Tokens(**options), x, batch_sizes=(1,))
    sm = check.sparse_model
    kinds = {g.name: g.kind for g in sm.graph_info.groups}
    assert kinds.get("attn") == "head" and "embed" in kinds, sm.report()


def test_a_block_with_fewer_heads_is_still_a_sablock_and_splits_them_right():
    torch.manual_seed(0)
    x = torch.randn(3, 6, 5)
    sm = lumos.sparsify(Tokens(), x, budget=0.5)
    heads = next(g for g in sm.graph_info.groups if g.name == "attn")
    with torch.no_grad():
        sm.gates.log_alpha[heads.offset:heads.offset + 2] = -10.0  # close two of four heads
    small = sm.eval().compact()
    assert type(small.attn) is selfattention.SABlock
    assert small.attn.num_heads == 2 and small.attn.input_rearrange.axes_lengths["l"] == 2
    with torch.no_grad():
        torch.testing.assert_close(small(x), sm(x), rtol=1e-4, atol=1e-5)


def test_a_relative_position_block_is_kept_whole_and_says_why():
    torch.manual_seed(0)
    model = Tokens(rel_pos_embedding="decomposed", input_size=(2, 3))
    sm = lumos.sparsify(model, torch.randn(3, 6, 5), budget=0.5)
    assert "relative positional embedding" in sm.report()
    assert "attn" not in {g.name for g in sm.graph_info.groups}
