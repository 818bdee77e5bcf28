"""A graph capture that survives real code: shape-dependent Python, flags left at their
defaults, torch.jit.isinstance, composites of torch.nn without a rule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lumos


class ShapeCode(nn.Module):
    """neuraloperator-style: list(x.shape[2:]), a branch on dims, a loop over the rank."""

    def __init__(self):
        super().__init__()
        self.lift, self.proj = nn.Conv2d(3, 12, 1), nn.Conv2d(12, 2, 1)

    def forward(self, x):
        in_shape = list(x.shape[2:])
        h = self.lift(x)
        if x.dim() == 4 and in_shape[0] > 2:
            h = torch.relu(h)
        for _ in range(len(in_shape)):
            h = h * 0.5
        return F.interpolate(self.proj(h), size=in_shape)


def test_shape_dependent_python_traces_and_is_guarded_at_run_time():
    x = torch.randn(2, 3, 8, 8)
    sm = lumos.sparsify(ShapeCode(), x, budget=0.5)
    assert "lift" in [g.name for g in sm.graph_info.groups]
    lumos.testing.assert_compacts_exactly(sm, x)
    small = sm.eval().compact()
    assert small(torch.randn(5, 3, 8, 8)).shape == (5, 2, 8, 8)  # other batch sizes are fine
    # an input the trace does not fit (in_shape[0] > 2 decided on 8) is refused, not guessed
    with pytest.raises(lumos.InputError, match="traced by LUMOS"):
        sm.eval()(torch.randn(2, 3, 2, 2))
    with pytest.raises(AssertionError, match="traced by LUMOS"):
        small(torch.randn(2, 3, 2, 2))


class Flags(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(6, 16), nn.Linear(16, 1)

    def forward(self, x, mask=None, double: bool = False, steps: int = 2, scale: float = 1.0):
        h = torch.relu(self.l1(x))
        for _ in range(steps):
            h = h * 1.0
        if double:
            h = 2 * h
        if mask is not None:
            h = h * mask
        return self.l2(h) * scale


def test_flag_defaults_are_constants_numbers_stay_inputs():
    x = torch.randn(8, 6)
    sm = lumos.sparsify(Flags(), x, budget=0.5)
    assert sm.inputs.constants == {"mask": None, "double": False}
    torch.testing.assert_close(sm.eval()(x, scale=2.0), 2 * sm(x))  # a number is data
    with pytest.raises(lumos.InputError, match="double=False"):
        sm(x, double=True)
    with pytest.raises(lumos.InputError, match="steps is 2"):
        sm(x, steps=3)  # a loop count is traced on its example value, then guarded
    doubled = lumos.sparsify(Flags(), {"x": x, "double": True}, budget=0.5)
    torch.testing.assert_close(doubled.eval()(x, double=True),
                               doubled.eval().compact()(x, double=True))


class JitIsinstance(nn.Module):
    """MONAI-style: a skip concatenation behind torch.jit.isinstance."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(11, 4, 1)

    def forward(self, x):
        h = torch.relu(self.a(x))
        if torch.jit.isinstance(x, torch.Tensor):
            h = torch.cat([h, x], dim=1)
        return self.b(h)


def test_torch_jit_isinstance_follows_the_example_value():
    x = torch.randn(2, 3, 8, 8)
    model = JitIsinstance().eval()
    sm = lumos.sparsify(model, x, budget=0.5)
    with torch.no_grad():  # gates start open: the sparse model is the original, skip included
        torch.testing.assert_close(sm.eval()(x), model(x))
    lumos.testing.assert_compacts_exactly(sm, x)


def test_torch_nn_transformer_with_decoder_is_gated_and_exact():
    torch.manual_seed(0)
    t = nn.Transformer(d_model=16, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                       dim_feedforward=32, batch_first=True)
    src, tgt = torch.randn(4, 5, 16), torch.randn(4, 3, 16)
    sm = lumos.sparsify(t, (src, tgt), budget=0.5)
    names = {g.name for g in sm.graph_info.groups}
    assert {"decoder.layers.0.linear1", "decoder.layers.0.self_attn",
            "decoder.layers.0.multihead_attn", "encoder.layers.0.linear1"} <= names
    lumos.testing.assert_compacts_exactly(sm, (src, tgt))


class TruthOfShape(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 1)

    def forward(self, x):
        h = self.a(x)
        if h.shape[-1]:
            h = torch.relu(h)
        return self.b(h)


def test_guards_survive_save_and_load():
    import io

    small = lumos.sparsify(TruthOfShape(), torch.randn(3, 4), budget=0.5).eval().compact()
    buf = io.BytesIO()
    torch.save(small, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    x = torch.randn(2, 4)
    torch.testing.assert_close(again(x), small(x))


class VarKeyword(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 1)

    def forward(self, x, output_shape=None, **kwargs):
        return self.b(torch.relu(self.a(x)))


def test_empty_variadic_arguments_trace_and_later_calls_must_leave_them_empty():
    x = torch.randn(5, 4)
    sm = lumos.sparsify(VarKeyword(), x, budget=0.5)
    lumos.testing.assert_compacts_exactly(sm, x)
    with pytest.raises(lumos.InputError, match="variadic 'kwargs'"):
        sm(x, extra=1)


def test_a_diverged_model_is_refused_not_handed_over():
    sm = lumos.sparsify(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)),
                        torch.randn(5, 4), budget=0.5)
    with torch.no_grad():
        sm.model.get_submodule("0").weight[0, 0] = float("nan")
    with pytest.raises(lumos.NonFiniteError, match="'model.0.weight'"):
        sm.compact()


class DictOfRecipes(nn.Module):
    """einops-style: a dict indexed by x.ndim, and len(x.shape)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 1)
        self.recipes = {2: "flat", 3: "tokens"}

    def forward(self, x):
        dims = len(x.shape)
        h = self.a(x)
        if self.recipes[x.ndim] == "tokens" and dims == 3:
            h = h.mean(1)
        return self.b(torch.relu(h))


def test_static_values_index_dicts_and_answer_len_of_shape():
    x = torch.randn(5, 3, 4)
    sm = lumos.sparsify(DictOfRecipes(), x, budget=0.5)
    assert "a" in [g.name for g in sm.graph_info.groups]
    lumos.testing.assert_compacts_exactly(sm, x)


class PositionFromLength(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 1)

    def forward(self, x):
        pos = torch.arange(x.size(1)).float().unsqueeze(-1)
        return self.b(torch.relu(self.a(x) + pos))


def test_sizes_read_off_a_tensor_stay_run_time_values():
    """torch.arange(x.size(1)) must follow each input's length, not the example's."""
    sm = lumos.sparsify(PositionFromLength(), torch.randn(2, 5, 4), budget=0.5)
    assert sm.eval()(torch.randn(2, 9, 4)).shape == (2, 9, 1)
    assert sm.compact()(torch.randn(3, 11, 4)).shape == (3, 11, 1)


# ---- Swin-style code: numpy of a shape, int() of a channel count, masks built in place, a
# buffer sliced by a size read off the input, a branch on a buffer ----------------------------
class WindowCode(nn.Module):
    """What MONAI's Swin does on the way to its window attention, in a few lines."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 12, 3, padding=1), nn.Conv2d(12, 2, 1)
        self.register_buffer("table", torch.randn(64, 64))
        self.register_buffer("ready", torch.tensor(True))

    def forward(self, x):
        import numpy as np

        spatial = np.array(x.shape[2:])  # numpy of a static shape
        if (spatial % 2).any():
            raise ValueError("even sizes only")
        h = torch.relu(self.a(x))
        ch = int(h.shape[1])  # "force a constant" (MONAI's proj_out)
        assert h.shape[1] == ch  # the model's own check on a gated channel count
        n = h.shape[2] * h.shape[3] // 8
        mask = torch.zeros((1, h.shape[2], h.shape[3], 1))  # built in place from the shape
        for i, rows in enumerate((slice(0, 2), slice(2, None))):
            mask[:, rows, :, :] = i
        bias = self.table.clone()[:n, :n].sum() * 1e-3  # a buffer sliced by an input size
        if self.ready:  # a branch on the model's state
            h = h + mask.permute(0, 3, 1, 2) + bias
        return self.b(h)


def test_swin_style_shape_code_traces_compacts_exactly_and_reloads(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    sm = lumos.sparsify(WindowCode(), x, budget=0.5)
    assert "a" in [g.name for g in sm.graph_info.groups]  # the checked channel count is gated
    lumos.testing.assert_compacts_exactly(sm, x)
    group = next(g for g in sm.graph_info.groups if g.name == "a")
    with torch.no_grad():
        sm.gates.log_alpha[group.offset:group.offset + 6] = -10.0
    small = sm.eval().compact()
    assert small.get_submodule("a").out_channels == 6
    torch.save(small, tmp_path / "small.pt")
    torch.save(sm, tmp_path / "sm.pt")
    with torch.no_grad():
        for other in (x, torch.randn(5, 3, 8, 8)):
            expected = sm(other)
            torch.testing.assert_close(small(other), expected)
            torch.testing.assert_close(
                torch.load(tmp_path / "small.pt", weights_only=False)(other), expected)
            torch.testing.assert_close(
                torch.load(tmp_path / "sm.pt", weights_only=False).eval()(other), expected)
    sm.model.get_buffer("ready").fill_(False)  # the state the trace branched on changed
    with pytest.raises(lumos.InputError, match="buffers"):
        sm(x)


def test_einops_rearrange_moves_the_channels_or_keeps_them_whole():
    einops = pytest.importorskip("einops")

    class Tokens(nn.Module):
        def __init__(self, pattern: str):
            super().__init__()
            self.pattern = pattern
            self.conv, self.out = nn.Conv2d(3, 8, 1), nn.Linear(8, 2)

        def forward(self, x):
            h = einops.rearrange(torch.relu(self.conv(x)), self.pattern)
            return self.out(h)

    x = torch.randn(2, 3, 4, 4)
    for pattern in ("b c h w -> b h w c", "b c ... -> b ... c"):
        sm = lumos.sparsify(Tokens(pattern), x, budget=0.5)
        assert "conv" in [g.name for g in sm.graph_info.groups], pattern
        lumos.testing.assert_compacts_exactly(sm, x)
    grouped = lumos.sparsify(Tokens("b c h w -> b (h w) c"), x, budget=0.5)
    assert "conv" in [g.name for g in grouped.graph_info.groups]
    lumos.testing.assert_compacts_exactly(grouped, x)

    class Split(Tokens):  # the channel axis split into groups: kept whole, named
        def forward(self, x):
            h = einops.rearrange(torch.relu(self.conv(x)), "b (g c) h w -> b h w g c", g=2)
            return h.sum((-1, -2))

    with pytest.warns(lumos.LumosWarning, match="regroups the tracked axis"):
        sm = lumos.sparsify(Split(""), x, budget=0.5)
    assert "conv" not in [g.name for g in sm.graph_info.groups]
    assert "regroups the tracked axis" in sm.report()


def test_int_of_the_batch_size_is_still_refused_naming_the_line():
    """int() of a channel count is a constant the model asks for; of the batch size it would
    freeze the batch into the graph (the last, smaller batch of an epoch would then fail)."""

    class FrozenBatch(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 4)

        def forward(self, x):
            return self.fc(x).view(int(x.shape[0]), 2, 2)

    with pytest.raises(lumos.UntraceableModelError, match=r"int\(x.shape\[0\]\)"):
        lumos.sparsify(FrozenBatch(), torch.randn(8, 6), budget=0.5)
