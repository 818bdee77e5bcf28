"""Norms whose statistics span the channels (LayerNorm, GroupNorm with larger groups) and
parameters that join a stream (positional embeddings, class tokens, layer scales): gated, and
compaction equals the gated model for random (closed, fractional, open) gate states."""

from __future__ import annotations

import io

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import lumos
from lumos.testing import assert_compacts_exactly


class PreNormMLP(nn.Module):
    """A pre-norm residual stream: x + fc2(act(fc1(LN(x)))), twice, then LN and a head."""

    def __init__(self, d: int, hidden: int, affine: bool, bias: bool, rms: bool = False) -> None:
        super().__init__()
        self.inp = nn.Linear(5, d)
        self.norms = nn.ModuleList(
            [nn.RMSNorm(d, elementwise_affine=affine) if rms
             else nn.LayerNorm(d, elementwise_affine=affine, bias=bias) for _ in range(3)])
        self.fc1 = nn.ModuleList([nn.Linear(d, hidden) for _ in range(2)])
        self.fc2 = nn.ModuleList([nn.Linear(hidden, d) for _ in range(2)])
        self.head = nn.Linear(d, 2)

    def forward(self, x):
        h = self.inp(x)
        for norm, a, b in zip(self.norms, self.fc1, self.fc2):
            h = h + b(torch.relu(a(norm(h))))
        return self.head(self.norms[2](h))


class GroupNormNet(nn.Module):
    """conv -> GroupNorm(groups < channels) -> conv, with a residual around the second block."""

    def __init__(self, c: int, groups: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, c, 3, padding=1)
        self.norm1 = nn.GroupNorm(groups, c)
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, c, affine=False)
        self.head = nn.Conv2d(c, 1, 1)

    def forward(self, x):
        h = torch.relu(self.norm1(self.stem(x)))
        h = h + torch.relu(self.norm2(self.conv(h)))
        return self.head(h)


class TinyViT(nn.Module):
    """Patch embedding + positional embedding + class token + layer scale + LayerNorm."""

    def __init__(self, d: int = 12) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, d, 4, stride=4)
        self.pos = nn.Parameter(torch.randn(1, 4, d))
        self.cls = nn.Parameter(torch.randn(1, 1, d))
        self.scale = nn.Parameter(torch.rand(d) + 0.5)
        self.norm = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.fc = nn.Linear(d, d)
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1)
        n = self.norm(t)
        t = t + self.scale * self.attn(n, n, n, need_weights=False)[0]
        t = t + self.fc(self.norm(t))
        return self.head(t[:, 0])


def _stream_gated(sm: lumos.SparseModel, layer: str) -> bool:
    return any(g.name == layer for g in sm.graph_info.groups)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(d=st.integers(3, 12), hidden=st.integers(2, 9), affine=st.booleans(),
       bias=st.booleans(), rms=st.booleans(), seed=st.integers(0, 2**16))
def test_layernorm_and_rmsnorm_streams_are_gated_and_compact_exactly(d, hidden, affine, bias,
                                                                      rms, seed):
    torch.manual_seed(seed)
    model = PreNormMLP(d, hidden, affine, bias, rms)
    check = assert_compacts_exactly(model, torch.randn(7, 5), seed=seed, batch_sizes=(1, 3))
    assert _stream_gated(check.sparse_model, "inp"), check.sparse_model.report()


def test_an_rmsnorm_stream_is_gated_and_compacts_exactly():
    torch.manual_seed(0)
    check = assert_compacts_exactly(PreNormMLP(10, 6, True, False, rms=True), torch.randn(7, 5),
                                    batch_sizes=(1,))
    assert _stream_gated(check.sparse_model, "inp"), check.sparse_model.report()


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(groups=st.sampled_from([1, 2, 3]), per_group=st.integers(2, 4),
       seed=st.integers(0, 2**16))
def test_groupnorm_with_larger_groups_is_gated_and_compacts_exactly(groups, per_group, seed):
    torch.manual_seed(seed)
    model = GroupNormNet(groups * per_group, groups)
    check = assert_compacts_exactly(model, torch.randn(2, 2, 5, 5), seed=seed, batch_sizes=(1,))
    assert _stream_gated(check.sparse_model, "stem"), check.sparse_model.report()


def test_parameters_joining_a_stream_follow_its_channels():
    torch.manual_seed(0)
    check = assert_compacts_exactly(TinyViT(), torch.randn(3, 1, 8, 8), batch_sizes=(1, 2))
    sm = check.sparse_model
    assert _stream_gated(sm, "patch"), sm.report()
    roles = {(r.owner, r.name, r.dim) for r in sm.graph_info.records.roles}
    assert {("", "pos", 2), ("", "cls", 2), ("", "scale", 0)} <= roles


def test_expand_to_a_literal_channel_count_is_not_followed():
    """``cls.expand(B, 1, 12)`` bakes the width into the code: the stream is kept whole."""

    class Literal(TinyViT):
        def forward(self, x):
            t = self.patch(x).flatten(2).transpose(1, 2)
            t = torch.cat([self.cls.expand(t.shape[0], 1, 12), t], dim=1)
            return self.head(self.norm(t)[:, 0])

    sm = lumos.sparsify(Literal(), torch.randn(3, 1, 8, 8), budget=0.5)
    assert not _stream_gated(sm, "patch")
    assert "patch" in sm.report()


def test_compacted_norm_twins_train_save_reload_and_script():
    torch.manual_seed(1)
    x = torch.randn(6, 5)
    sm = lumos.sparsify(PreNormMLP(10, 6, True, True), x, budget=0.3)
    opt = torch.optim.Adam(sm.parameters(), lr=1e-2)
    target = torch.randn(6, 2)
    for i in range(60):
        sm.set_progress(i / 60)
        loss = (sm(x) - target).pow(2).mean() + sm.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sm.step()
    small = sm.eval().compact()
    assert small.inp.out_features < 10  # the stream itself lost channels
    with torch.no_grad():
        expected = sm(x)
        torch.testing.assert_close(small(x), expected, atol=1e-5, rtol=1e-4)
    buf = io.BytesIO()
    torch.save(small, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    scripted = torch.jit.script(small)
    with torch.no_grad():
        torch.testing.assert_close(again(x), expected, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(scripted(x), expected, atol=1e-5, rtol=1e-4)
    # the compacted model trains: gradients reach the sliced norm weights
    small.train()
    small(x).sum().backward()
    assert all(p.grad is not None for p in small.parameters())


@pytest.mark.parametrize("norm", [nn.LayerNorm((4, 6)), nn.GroupNorm(2, 6)])
def test_norms_lumos_cannot_make_exact_are_kept_whole_or_exact(norm):
    """LayerNorm over channels *and* another dim is kept whole; either way, exact."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(3, 6, 1) if isinstance(norm, nn.GroupNorm) else nn.Linear(3, 6)
            self.norm = norm
            self.head = nn.Linear(6, 1)

        def forward(self, x):
            h = self.norm(self.conv(x))
            return self.head(h if isinstance(norm, nn.LayerNorm) else h.transpose(1, 2))

    x = torch.randn(2, 3, 4) if isinstance(norm, nn.GroupNorm) else torch.randn(2, 4, 3)
    sm = lumos.sparsify(Net(), x, budget=0.5)
    if isinstance(norm, nn.LayerNorm):
        assert "normalises over the channels and other dims" in sm.report()
    else:
        assert_compacts_exactly(sm, x)


@pytest.mark.parametrize("kind", ["graph-layer", "node-layer", "graph", "instance"])
def test_torch_geometric_norms_keep_node_features_gated(kind):
    norm_module = pytest.importorskip("torch_geometric.nn.norm")
    make = {"graph-layer": lambda: norm_module.LayerNorm(8),
            "node-layer": lambda: norm_module.LayerNorm(8, mode="node"),
            "graph": lambda: norm_module.GraphNorm(8),
            "instance": lambda: norm_module.InstanceNorm(8, affine=True)}[kind]

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first, self.norm, self.last = nn.Linear(3, 8), make(), nn.Linear(8, 2)

        def forward(self, x, batch):
            return self.last(torch.relu(self.norm(self.first(x), batch)))

    torch.manual_seed(0)
    x, batch = torch.randn(12, 3), torch.arange(3).repeat_interleave(4)
    check = assert_compacts_exactly(Net(), (x, batch))
    assert _stream_gated(check.sparse_model, "first"), check.sparse_model.report()
