"""Fourier-mode gates of LUMOS's spectral convs: each kept frequency is a unit, compaction
keeps any subset exactly (at the traced resolution and at others), costs count the modes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lumos
from lumos.layers import SpectralConv1d, SpectralConv2d
from lumos.testing import assert_compacts_exactly


class FNO1d(nn.Module):
    def __init__(self, width: int = 6, modes: int = 8) -> None:
        super().__init__()
        self.lift = nn.Conv1d(2, width, 1)
        self.spectral = SpectralConv1d(width, width, modes)
        self.skip = nn.Conv1d(width, width, 1)
        self.proj = nn.Conv1d(width, 1, 1)

    def forward(self, x):
        h = self.lift(x)
        h = F.gelu(self.spectral(h) + self.skip(h))
        return self.proj(h)


class FNO2d(nn.Module):
    def __init__(self, width: int = 5, modes1: int = 4, modes2: int = 3) -> None:
        super().__init__()
        self.lift = nn.Conv2d(3, width, 1)
        self.spectral = SpectralConv2d(width, width, modes1, modes2)
        self.skip = nn.Conv2d(width, width, 1)
        self.proj = nn.Conv2d(width, 1, 1)

    def forward(self, x):
        h = self.lift(x)
        return self.proj(F.gelu(self.spectral(h) + self.skip(h)))


def _groups(sm):
    return {g.name: (g.kind, g.size) for g in sm.graph_info.groups}


def _subset_layer(full: SpectralConv2d, rows1, rows2, cols) -> SpectralConv2d:
    """``full`` cut to these weight indices the way compaction cuts it (weights and buffers)."""
    small = SpectralConv2d(full.in_channels, full.out_channels, 1, 1)
    with torch.no_grad():
        small.weight1 = nn.Parameter(full.weight1[:, :, rows1][:, :, :, cols].clone())
        small.weight2 = nn.Parameter(full.weight2[:, :, rows2][:, :, :, cols].clone())
    small.freqs1 = full.freqs1[rows1].clone()
    small.freqs2 = full.freqs2[rows2].clone()
    small.col_freqs = full.col_freqs[cols].clone()
    small.refresh()
    return small


def _zeroed(full: SpectralConv2d, rows1, rows2, cols) -> SpectralConv2d:
    """``full`` with every weight slice outside the subset set to zero (what closed gates do)."""
    out = SpectralConv2d(full.in_channels, full.out_channels, full.modes1, full.modes2)
    out.load_state_dict(full.state_dict())
    with torch.no_grad():
        for weight, rows in ((out.weight1, rows1), (out.weight2, rows2)):
            keep = torch.zeros(weight.shape[2:4], dtype=torch.bool)
            keep[torch.tensor(rows, dtype=torch.long)[:, None],
                 torch.tensor(cols, dtype=torch.long)[None, :]] = True
            weight.mul_(keep[None, None, :, :, None])
    return out


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_any_subset_of_modes_equals_the_full_layer_with_the_others_zeroed(data):
    """The property compaction rests on, at resolutions coarser and finer than the modes."""
    m1, m2 = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 4))
    rows1 = [i for i in range(m1) if data.draw(st.booleans())]
    rows2 = [i for i in range(m1) if data.draw(st.booleans())]
    cols = [i for i in range(m2) if data.draw(st.booleans())]
    h, w = data.draw(st.integers(2, 13)), data.draw(st.integers(2, 11))
    torch.manual_seed(data.draw(st.integers(0, 100)))
    full = SpectralConv2d(3, 2, m1, m2)
    x = torch.randn(2, 3, h, w)
    expected = _zeroed(full, rows1, rows2, cols)(x)
    got = _subset_layer(full, rows1, rows2, cols)(x)
    assert torch.allclose(got, expected, atol=1e-6), (rows1, rows2, cols, h, w)


@pytest.mark.parametrize("runs", [True, False])
def test_the_sliced_and_the_gathering_forward_agree(runs):
    """Frequency runs take the slicing forward; forcing the gathering one changes nothing."""
    torch.manual_seed(0)
    for layer, shapes in ((SpectralConv1d(3, 4, 6), [(2, 3, 32), (2, 3, 6), (2, 3, 5)]),
                          (SpectralConv2d(3, 4, 4, 3), [(2, 3, 16, 16), (2, 3, 6, 4),
                                                         (2, 3, 7, 3)])):
        for shape in shapes:
            x = torch.randn(shape)
            expected = layer(x)
            if not runs:
                layer._runs = tuple(None for _ in layer._runs)
            assert torch.allclose(layer(x), expected, atol=1e-6)
            layer.refresh()


def test_files_saved_before_the_layers_carried_frequencies_still_load():
    torch.manual_seed(0)
    for layer, x in ((SpectralConv1d(3, 4, 5), torch.randn(2, 3, 16)),
                     (SpectralConv2d(3, 4, 4, 3), torch.randn(2, 3, 12, 12))):
        old = {k: v for k, v in layer.state_dict().items() if "freqs" not in k}
        fresh = type(layer)(3, 4, *([5] if isinstance(layer, SpectralConv1d) else [4, 3]))
        fresh.load_state_dict(old)
        assert torch.equal(fresh(x), layer(x))


def test_a_compacted_layers_state_dict_loads_into_a_layer_of_its_shape():
    """Files keep which frequencies the kept weights multiply; loading re-reads them."""
    torch.manual_seed(0)
    full = SpectralConv2d(3, 2, 4, 3)
    small = _subset_layer(full, [0, 2], [3], [1, 2])
    target = SpectralConv2d(3, 2, 2, 2)
    target.weight2 = nn.Parameter(torch.zeros(3, 2, 1, 2, 2))
    target.freqs2 = torch.zeros(1, dtype=torch.long)
    target.load_state_dict(small.state_dict())
    x = torch.randn(2, 3, 10, 10)
    assert torch.equal(target(x), small(x))
    assert target._runs == small._runs == (None, 1, None)


def test_each_frequency_axis_is_a_mode_group_unless_the_options_say_channels_only():
    model, x = FNO2d(), torch.randn(4, 3, 12, 12)
    groups = _groups(lumos.sparsify(model, x))
    assert groups["spectral.freqs1"] == ("mode", 4)
    assert groups["spectral.freqs2"] == ("mode", 4)
    assert groups["spectral.col_freqs"] == ("mode", 3)
    sm = lumos.sparsify(model, x, gates=lumos.GateOptions(fourier_modes=False))
    assert all(kind != "mode" for kind, _ in _groups(sm).values())
    assert "fourier_modes=False" in sm.report()
    with pytest.raises(lumos.ConfigurationError, match="fourier_modes"):
        lumos.GateOptions(fourier_modes="yes")


def test_modes_the_example_does_not_reach_are_kept_whole_and_the_report_says_why():
    model = FNO1d(modes=20)
    sm = lumos.sparsify(model, torch.randn(4, 2, 16))  # rfft of 16 points has 9 frequencies
    assert "spectral.freqs" not in _groups(sm)
    assert "holds 9 of spectral.freqs's 20 Fourier modes" in sm.report()
    assert_compacts_exactly(sm, (torch.randn(4, 2, 16),))


@pytest.mark.parametrize("family", ["1d", "2d"])
def test_random_gate_states_compact_exactly_and_counts_match(family):
    torch.manual_seed(1)
    model, x = ((FNO1d(), torch.randn(4, 2, 32)) if family == "1d"
                else (FNO2d(), torch.randn(4, 3, 12, 12)))
    sm = lumos.sparsify(model, x)
    check = assert_compacts_exactly(sm, (x,), states=4, seed=3)
    assert check.sparse_model is sm


def test_a_compacted_fno_is_exact_at_other_resolutions_and_has_fewer_modes():
    """FNOs are run at resolutions other than the training one: the kept modes must still
    multiply their own frequencies there."""
    torch.manual_seed(0)
    model = FNO2d(width=6, modes1=5, modes2=4)
    sm = lumos.sparsify(model, torch.randn(4, 3, 16, 16))
    with torch.no_grad():
        la = sm.gates.log_alpha
        la.normal_(0, 3)
        for name in ("spectral.freqs1", "spectral.col_freqs"):  # a gap inside the runs
            g = next(g for g in sm.graph_info.groups if g.name == name)
            la[sm.gates.group_slice(g.index)][1] = -10.0
            la[sm.gates.group_slice(g.index)][0] = 10.0
    sm.eval()
    small = sm.compact()
    layer = small.get_submodule("spectral")
    assert 1 not in layer.freqs1.tolist() and 1 not in layer.col_freqs.tolist()
    assert layer.weight1.shape[2:4] == (layer.freqs1.numel(), layer.col_freqs.numel())
    for size in [(16, 16), (32, 24), (9, 7), (6, 6)]:
        x = torch.randn(3, 3, *size)
        with torch.no_grad():
            assert torch.allclose(small(x), sm(x), atol=1e-5), size


def test_mode_gates_get_gradients_and_training_closes_unneeded_modes():
    """A target that only holds the lowest frequencies: under a budget, the high modes go."""
    torch.manual_seed(0)
    n = 64
    x = torch.randn(256, 2, n)
    spectrum = torch.fft.rfft(x[:, :1], norm="ortho")
    spectrum[..., 3:] = 0  # the target is a low-pass of the first channel
    y = torch.fft.irfft(spectrum, n=n, norm="ortho")
    model = FNO1d(width=8, modes=16)
    sm = lumos.sparsify(model, x[:16], budget=0.5, features=False)
    opt = torch.optim.Adam(sm.parameters(), lr=1e-2)
    group = next(g for g in sm.graph_info.groups if g.name == "spectral.freqs")
    for step in range(300):
        sm.set_progress(step / 300)
        batch = torch.randint(0, 256, (32,))
        loss = F.mse_loss(sm(x[batch]), y[batch]) + sm.penalty()
        opt.zero_grad()
        loss.backward()
        if step == 0:
            grad = sm.gates.log_alpha.grad[sm.gates.group_slice(group.index)]
            assert grad.abs().sum() > 0
        opt.step()
    sm.eval()
    kept = sm.kept_mask()[sm.gates.group_slice(group.index)]
    assert kept[:3].all(), kept  # the frequencies the target holds stay
    assert not kept[8:].all(), kept  # some of those it does not hold close
    small = sm.compact()
    with torch.no_grad():
        assert torch.allclose(small(x[:8]), sm(x[:8]), atol=1e-5)
    assert small.get_submodule("spectral").weight.shape[2] == int(kept.sum())


def test_a_spectral_conv_called_twice_has_one_set_of_mode_gates():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lift = nn.Conv1d(2, 4, 1)
            self.spectral = SpectralConv1d(4, 4, 6)
            self.proj = nn.Conv1d(4, 1, 1)

        def forward(self, x):
            h = self.lift(x)
            h = F.gelu(self.spectral(h)) + h
            return self.proj(F.gelu(self.spectral(h)) + h)

    x = torch.randn(4, 2, 32)
    sm = lumos.sparsify(Twice(), x)
    modes = [g for g in sm.graph_info.groups if g.kind == "mode"]
    assert [g.size for g in modes] == [6]
    assert_compacts_exactly(sm, (x,), states=3, seed=0)


def test_neuraloperators_spectral_conv_keeps_its_modes_and_says_why():
    """Its forward slices a centred window of modes: independent mode gates could not be cut
    exactly, so only its channels are units, and the report names the LUMOS layers that gate
    modes."""
    import importlib.util
    import sys
    import types

    if "wandb" not in sys.modules and importlib.util.find_spec("wandb") is None:
        sys.modules["wandb"] = types.ModuleType("wandb")  # neuraloperator 0.3.0 imports it
    spectral = pytest.importorskip("neuralop.layers.spectral_convolution")

    class Operator(nn.Module):
        def __init__(self):
            super().__init__()
            self.lift = nn.Conv2d(2, 6, 1)
            self.conv = spectral.SpectralConv(6, 6, (4, 4))
            self.proj = nn.Conv2d(6, 1, 1)

        def forward(self, x):
            return self.proj(F.gelu(self.conv(self.lift(x))))

    x = torch.randn(3, 2, 8, 8)
    sm = lumos.sparsify(Operator(), x)
    assert all(g.kind != "mode" for g in sm.graph_info.groups)
    assert any(g.name == "conv" and g.kind == "channel" for g in sm.graph_info.groups)
    assert "lumos.layers.SpectralConv1d/2d gate their modes" in sm.report()
    assert_compacts_exactly(sm, (x,), states=2, seed=0)
