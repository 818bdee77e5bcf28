"""The training step's cheaper paths give what the general ones give (issue 17, item 4).

Each shortcut the gated step takes on every batch (the host-side path test of the gate draw,
the quadratic form of the penalty's gradient, one gather for every site's gates, the
weight-side call that swaps parameters itself) is checked here against the general path it
replaces, so a speed-up can never change what is trained.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

import lumos
from lumos.gates import GateBank
from lumos.gating import (
    PIECES_INDEX,
    call_with_gated_params,
    gather_gates,
    is_gate_call,
    is_gate_plumbing,
)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_the_host_side_path_test_agrees_with_the_tensor_test(data):
    sizes = data.draw(st.lists(st.integers(1, 6), min_size=1, max_size=5))
    essential = data.draw(st.lists(st.booleans(), min_size=len(sizes), max_size=len(sizes)))
    assume(any(essential))  # without an essential group the draw never asks
    bank = GateBank(sizes, ["neuron"] * len(sizes), essential=essential)
    n = bank.num_gates
    shut = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    bank.shut_gates(torch.tensor([i for i, s in enumerate(shut) if s], dtype=torch.long))
    closed = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    z = torch.rand(n) * (~torch.tensor(closed)).float()
    index, usable, any_usable = bank._path_layout()
    drawn = z[index].masked_fill(~usable, 0.0)
    expected = bool(((drawn.amax(dim=1) <= 0) & any_usable).any())
    assert bank._closes_a_path_on_host(z) == expected


class _Tower(nn.Module):
    """Linear, conv and norm terms: every cost term has at most two factors."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 8, 3, padding=1)
        self.norm = nn.BatchNorm1d(8)
        self.conv2 = nn.Conv1d(8, 6, 3, padding=1)
        self.head = nn.Linear(6 * 10, 1)

    def forward(self, x):
        h = torch.relu(self.norm(self.conv(x)))
        return self.head(torch.relu(self.conv2(h)).flatten(1))


def _without_quadratic_form(cost, keep, kind):
    cost._quadratic_form = lambda *args: None
    try:
        return cost.marginal(keep, kind)
    finally:
        del cost._quadratic_form


@pytest.mark.parametrize("kind", ["params", "flops"])
@pytest.mark.parametrize("make", [
    lambda: (nn.Sequential(nn.Linear(7, 16), nn.SiLU(), nn.Linear(16, 9), nn.SiLU(),
                           nn.Linear(9, 2)), torch.randn(5, 7)),
    lambda: (_Tower(), torch.randn(4, 3, 10)),
], ids=["mlp", "conv"])
def test_the_quadratic_form_gives_the_gradient_of_the_cost(make, kind):
    torch.manual_seed(0)
    model, x = make()
    sm = lumos.sparsify(model, x, budget=0.5)
    cost = sm.cost
    keep = torch.rand(cost.num_gates, dtype=torch.float64)
    assert cost._quadratic_form(kind, keep) is not None
    jacobian = torch.autograd.functional.jacobian(lambda k: cost.total(k, kind), keep)
    torch.testing.assert_close(cost.marginal(keep, kind), jacobian, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(_without_quadratic_form(cost, keep, kind), jacobian,
                               rtol=1e-10, atol=1e-9)
    # in float32 too (the training dtype), through its own cached copy
    keep32 = keep.float()
    torch.testing.assert_close(cost.marginal(keep32, kind), jacobian.float(), rtol=1e-4,
                               atol=1e-3)


def test_a_kind_rebuilt_from_new_weights_drops_its_cached_quadratic_form():
    torch.manual_seed(0)
    sm = lumos.sparsify(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)),
                        torch.randn(3, 4), budget=0.5)
    cost = sm.cost
    keep = torch.rand(cost.num_gates, dtype=torch.float64)
    labels = cost.labels["flops"]
    cost.add_weighted_kind("timed", "flops", dict.fromkeys(labels, 1.0))
    before = cost.marginal(keep, "timed")
    cost.add_weighted_kind("timed", "flops", dict.fromkeys(labels, 3.0))
    torch.testing.assert_close(cost.marginal(keep, "timed"), 3.0 * before)


def test_the_penalty_gradient_falls_back_where_a_term_has_more_than_two_factors():
    """FNO spectral weights are (in x out x modes): the general path runs."""
    from lumos.layers import SpectralConv1d

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 6, 1), SpectralConv1d(6, 6, 4), nn.GELU(),
                          nn.Conv1d(6, 1, 1))
    sm = lumos.sparsify(model, torch.randn(2, 2, 16), budget=0.5)
    keep = torch.rand(sm.cost.num_gates, dtype=torch.float64)
    assert sm.cost._quadratic_form("params", keep) is None
    jacobian = torch.autograd.functional.jacobian(lambda k: sm.cost.total(k, "params"), keep)
    torch.testing.assert_close(sm.cost.marginal(keep, "params"), jacobian, rtol=1e-10,
                               atol=1e-9)


def test_one_gather_serves_every_site_and_compaction_leaves_none_of_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(),
                          nn.Linear(12, 1))
    sm = lumos.sparsify(model, torch.randn(64, 6), budget=0.5)
    nodes = list(sm.model.graph.nodes)
    gathers = [n for n in nodes if n.op == "call_function" and n.target is gather_gates]
    assert len(gathers) == 1
    gate_ops = [n for n in nodes if is_gate_call(n)]
    assert gate_ops and all(any(is_gate_plumbing(a) for a in n.all_input_nodes)
                            for n in gate_ops)
    small = sm.compact()
    assert not any(is_gate_plumbing(n) or is_gate_call(n) for n in small.graph.nodes)
    assert not hasattr(small, PIECES_INDEX)
    assert PIECES_INDEX not in sm.state_dict()


def test_sites_that_read_gates_out_of_order_gather_them_by_index():
    """Two layers reading the same two groups in opposite orders (concatenations of two
    branches) need the gather's index; the gated model still equals its compacted form."""

    class Swapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a1, self.a2 = nn.Linear(5, 8), nn.Linear(5, 6)
            self.b, self.c = nn.Linear(14, 1), nn.Linear(14, 1)

        def forward(self, x):
            h1, h2 = torch.relu(self.a1(x)), torch.relu(self.a2(x))
            return self.b(torch.cat([h1, h2], dim=-1)) + self.c(torch.cat([h2, h1], dim=-1))

    torch.manual_seed(0)
    sm = lumos.sparsify(Swapped(), torch.randn(16, 5), budget=0.5)
    gather = next(n for n in sm.model.graph.nodes if n.op == "call_function"
                  and n.target is gather_gates)
    assert gather.args[1] is not None  # read by index, not in order
    with torch.no_grad():
        sm.gates.log_alpha.normal_(0.0, 2.0)
    sm.train()
    z = sm.gates()
    (sm(torch.randn(16, 5)).sum() + z.sum()).backward()
    assert sm.gates.log_alpha.grad is not None
    lumos.testing.assert_compacts_exactly(sm.eval(), torch.randn(16, 5))


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner, self.other = nn.Linear(4, 3), nn.Linear(4, 3)
        self.other.weight = self.inner.weight  # one parameter, two names: gated under both

    def forward(self, x):
        return self.other(x) + self.inner(x)


@pytest.mark.parametrize("make", [lambda: nn.Linear(4, 3), _Tied], ids=["plain", "tied"])
def test_the_weight_side_call_equals_functional_call_and_restores_the_parameters(make):
    torch.manual_seed(0)
    module = make()
    name = "weight" if isinstance(module, nn.Linear) else "inner.weight"
    original = module.get_parameter(name)
    piece = torch.rand(4, requires_grad=True)
    x = torch.randn(5, 4)
    got = call_with_gated_params(module, ((name, 1, piece),), x)
    expected = torch.func.functional_call(module, {name: original * piece}, (x,))
    torch.testing.assert_close(got, expected)
    assert module.get_parameter(name) is original
    got.sum().backward()
    assert piece.grad is not None and original.grad is not None


def test_the_weight_side_call_puts_the_parameters_back_when_the_layer_raises():
    layer = nn.Linear(4, 3)
    original = layer.weight
    with pytest.raises(RuntimeError):
        call_with_gated_params(layer, (("weight", 1, torch.ones(4)),), torch.randn(5, 7))
    assert layer.weight is original and isinstance(layer.weight, nn.Parameter)


def test_gather_gates_reads_in_order_or_by_index():
    gates = torch.arange(6.0)
    assert [p.tolist() for p in gather_gates(gates, None, (2, 3, 1))] == [[0, 1], [2, 3, 4],
                                                                           [5]]
    pieces = gather_gates(gates, torch.tensor([5, 0, 0, 3]), (1, 3))
    assert [p.tolist() for p in pieces] == [[5], [0, 0, 3]]


def test_several_gated_dims_of_one_parameter_equal_scaling_each_in_turn():
    """An FNO weight gated on input channels and both mode axes is multiplied once by the
    product of its gates (inner dims filled in); values and gradients are those of one
    multiply per dim."""
    from lumos.layers import SpectralConv2d

    torch.manual_seed(0)
    layer = SpectralConv2d(4, 3, modes1=3, modes2=2)
    x = torch.randn(2, 4, 8, 8)
    pieces = [torch.rand(4, requires_grad=True), torch.rand(3, requires_grad=True),
              torch.rand(2, requires_grad=True)]
    specs = (("weight1", 0, pieces[0]), ("weight1", 2, pieces[1]), ("weight1", 3, pieces[2]),
             ("weight2", 3, pieces[2]))
    got = call_with_gated_params(layer, specs, x)
    grads = torch.autograd.grad(got.square().sum(), [*pieces, layer.weight1, layer.weight2])

    def turn(p, dim, piece):
        shape = [1] * p.dim()
        shape[dim] = -1
        return p * piece.view(shape)

    w1 = turn(turn(turn(layer.weight1, 0, pieces[0]), 2, pieces[1]), 3, pieces[2])
    w2 = turn(layer.weight2, 3, pieces[2])
    expected = torch.func.functional_call(layer, {"weight1": w1, "weight2": w2}, (x,))
    reference = torch.autograd.grad(expected.square().sum(),
                                    [*pieces, layer.weight1, layer.weight2])
    torch.testing.assert_close(got, expected)
    for a, b in zip(grads, reference):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("general", [False, True], ids=["quadratic form", "term by term"])
def test_the_marginal_folds_its_scale_and_an_addend_as_addmv_does(general, monkeypatch):
    """The penalty folds its scale and the feature weights into the marginal's last call."""
    torch.manual_seed(0)
    sm = lumos.sparsify(nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 1)),
                        torch.randn(3, 5), budget=0.5)
    if general:
        monkeypatch.setattr(type(sm.cost), "QUADRATIC_FORM_ENTRIES", 0)
    keep = torch.rand(sm.cost.num_gates, dtype=torch.float64)
    add = torch.rand_like(keep)
    plain = sm.cost.marginal(keep, "params")
    torch.testing.assert_close(sm.cost.marginal(keep, "params", alpha=0.3), 0.3 * plain)
    torch.testing.assert_close(sm.cost.marginal(keep, "params", alpha=0.3, add=add, beta=2.0),
                               0.3 * plain + 2.0 * add)
    assert (sm.cost._quadratic_form("params", keep) is None) == general


def test_the_penalty_in_the_units_of_the_loss_is_the_plain_penalty_times_its_unit():
    """Before the unit is fixed it is a tensor (this step's loss), after it a number: both
    scale the value and the gradient the same way."""
    torch.manual_seed(0)
    sm = lumos.sparsify(nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1)),
                        torch.randn(4, 6), budget=0.3, feature_penalty=0.2)
    sm.train()
    sm.set_progress(0.6)
    sm.controller.lambda1 = 0.8
    plain_value, plain_grad = sm.penalty_terms()
    value, grad = sm.penalty_terms(torch.tensor(2.5))
    torch.testing.assert_close(value, 2.5 * plain_value)
    torch.testing.assert_close(grad, 2.5 * plain_grad)
    sm.step()  # the unit is fixed at 2.5: a number from now on, whatever loss is passed
    assert sm._loss_scale == 2.5
    value, grad = sm.penalty_terms(torch.tensor(7.0))
    sm._loss_scale = None  # (the unscaled reference)
    plain_value, plain_grad = sm.penalty_terms()
    torch.testing.assert_close(value, 2.5 * plain_value)
    torch.testing.assert_close(grad, 2.5 * plain_grad)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(0, 2**31 - 1))
def test_the_gate_sample_with_a_ceiling_is_the_plain_sample_times_the_open_mask(n, seed):
    """Shut gates are zeroed in the clamp of the sample, not by a multiply after it: same
    values, and the same gradient wherever the sample is not exactly 0."""
    from lumos.gates import HardConcreteConfig, sample_gates

    generator = torch.Generator().manual_seed(seed)
    cfg = HardConcreteConfig()
    log_alpha = (6 * torch.rand(n, generator=generator) - 3).requires_grad_()
    u = torch.rand(n, generator=generator)
    mask = (torch.rand(n, generator=generator) > 0.3).float()
    reference = sample_gates(log_alpha, cfg, u) * mask
    got = sample_gates(log_alpha, cfg, u, ceiling=mask)
    torch.testing.assert_close(got, reference)
    weights = torch.rand(n, generator=generator)
    (g_ref,) = torch.autograd.grad((reference * weights).sum(), log_alpha)
    (g_got,) = torch.autograd.grad((got * weights).sum(), log_alpha)
    nonzero = reference.detach() != 0
    torch.testing.assert_close(g_got[nonzero], g_ref[nonzero])
    torch.testing.assert_close(g_got[mask == 0], torch.zeros_like(g_got[mask == 0]))


def test_the_gate_bank_draws_in_the_noise_interval_and_zeroes_shut_gates():
    bank = GateBank([30, 20], ["neuron", "neuron"], essential=[True, False])
    bank.train()
    bank.noise_interval = 0.3
    u = bank.draw_uniform()
    assert ((u >= 0.3) & (u <= 0.7)).all()
    bank.shut_gates(torch.arange(25, 40))
    z = bank()
    assert (z[25:40] == 0).all() and z.requires_grad


@pytest.mark.parametrize("dim", [-1, 2, 1, 0])
def test_apply_gates_on_the_last_dim_equals_the_viewed_multiply(dim):
    from lumos.gating import apply_gates

    x = torch.randn(4, 5, 6, requires_grad=True)
    piece = torch.rand(x.shape[dim], requires_grad=True)
    shape = [1, 1, 1]
    shape[dim] = -1
    expected = x * piece.view(shape)
    got = apply_gates(x, piece, dim)
    torch.testing.assert_close(got, expected)
    grads = torch.autograd.grad((got * got).sum(), (x, piece))
    reference = torch.autograd.grad((expected * expected).sum(), (x, piece))
    for a, b in zip(grads, reference):
        torch.testing.assert_close(a, b)


def test_a_training_forward_under_inference_mode_does_not_break_the_next_training_step():
    """The sample's cached constants and open mask are made outside inference mode: cached
    as inference tensors, the next step's backward would refuse to save them."""
    torch.manual_seed(0)
    sm = lumos.sparsify(nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 1)),
                        torch.randn(4, 5), budget=0.5)
    sm.train()
    sm.set_progress(0.5)
    sm.gates.shut_gates(torch.tensor([7, 8]))
    sm.gates.to(torch.float64)  # a dtype no other test made the constants in
    sm.to(torch.float64)
    with torch.inference_mode():
        sm(torch.randn(3, 5, dtype=torch.float64))
    out = sm(torch.randn(3, 5, dtype=torch.float64))
    (out.sum() + sm.penalty()).backward()
    grad = sm.gates.log_alpha.grad
    assert grad is not None and torch.isfinite(grad).all() and (grad[7:9] == 0).all()


def test_the_cost_models_conversions_made_under_inference_mode_serve_autograd_later():
    """A penalty logged in an inference-mode validation loop fills the cost model's dtype
    cache; the expected fraction differentiated afterwards must still work."""
    torch.manual_seed(0)
    sm = lumos.sparsify(nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 1)),
                        torch.randn(4, 5), budget=0.5)
    sm.cost._converted.clear()
    with torch.inference_mode():
        sm.penalty_terms()
        sm.expected_fraction()
    sm.expected_fraction().backward()
    assert sm.gates.log_alpha.grad is not None
