"""lumos.gates: the hard-concrete distribution, its closed forms and the GateBank."""

from __future__ import annotations

import math

import pytest
import torch

import lumos
import lumos.gates as gates_module
from lumos.gates import (
    GateBank,
    HardConcreteConfig,
    deterministic_gates,
    fully_open_keep_probability,
    log_alpha_for_keep_probability,
    prob_nonzero,
    sample_gates,
)

DEFAULT = HardConcreteConfig()
CUSTOM = HardConcreteConfig(beta=0.5, gamma=-0.25, zeta=1.3)
CONFIGS = [pytest.param(DEFAULT, id="default"), pytest.param(CUSTOM, id="custom")]
N_DRAWS = 200_000


def _prob_one(log_alpha: float, cfg: HardConcreteConfig) -> float:
    """Closed form P(z == 1) of the stretched, clamped binary concrete (for the sampler check)."""
    return 1.0 / (
        1.0 + math.exp(-(log_alpha - cfg.beta * math.log((1.0 - cfg.gamma) / (cfg.zeta - 1.0))))
    )


def _tolerance(p: float, n: int = N_DRAWS) -> float:
    """5 binomial standard deviations, plus a hair for the u clamp away from 0 and 1."""
    return 5.0 * math.sqrt(max(p * (1.0 - p), 1.0 / n) / n) + 1e-5


# ---- Monte Carlo against the closed forms ----------------------------------------------------
@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("log_alpha", [-4.0, -1.5, 0.0, 1.0, 3.0, 5.0])
def test_monte_carlo_zero_probability_matches_prob_nonzero(cfg, log_alpha):
    torch.manual_seed(1234)
    la = torch.full((N_DRAWS,), log_alpha)
    z = sample_gates(la, cfg)
    p_zero = 1.0 - float(prob_nonzero(torch.tensor(log_alpha, dtype=torch.float64), cfg))
    observed = float((z == 0).double().mean())
    assert abs(observed - p_zero) <= _tolerance(p_zero), (observed, p_zero)
    # The sampler also puts the right mass on exactly 1 (the other clamp).
    p_one = _prob_one(log_alpha, cfg)
    observed_one = float((z == 1).double().mean())
    assert abs(observed_one - p_one) <= _tolerance(p_one), (observed_one, p_one)


@pytest.mark.parametrize("cfg", CONFIGS)
def test_samples_lie_in_unit_interval_with_exact_zeros_and_ones(cfg):
    torch.manual_seed(0)
    la = torch.linspace(-3.0, 3.0, N_DRAWS)
    z = sample_gates(la, cfg)
    assert torch.isfinite(z).all()
    assert float(z.min()) >= 0.0 and float(z.max()) <= 1.0
    assert bool((z == 0).any()) and bool((z == 1).any())
    assert bool(((z > 0) & (z < 1)).any())


def test_explicit_u_at_the_ends_gives_exact_zero_and_one():
    la = torch.zeros(2)
    z = sample_gates(la, DEFAULT, u=torch.tensor([0.0, 1.0]))
    assert z.tolist() == [0.0, 1.0]


# ---- gradients --------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", CONFIGS)
def test_gradient_reaches_log_alpha_through_sample_and_prob_nonzero(cfg):
    la = torch.tensor([-0.5, -0.2, 0.0, 0.3, 0.5], requires_grad=True)
    u = torch.full_like(la, 0.5)  # keeps every sample strictly inside (0, 1): no clamp
    z = sample_gates(la, cfg, u=u)
    assert bool(((z > 0) & (z < 1)).all())
    (grad_sample,) = torch.autograd.grad(z.sum(), la)
    assert torch.isfinite(grad_sample).all() and (grad_sample != 0).all()
    (grad_prob,) = torch.autograd.grad(prob_nonzero(la, cfg).sum(), la)
    assert torch.isfinite(grad_prob).all() and (grad_prob > 0).all()
    # Random draws: the gradient is finite everywhere and non-zero somewhere.
    torch.manual_seed(3)
    (grad_random,) = torch.autograd.grad(sample_gates(la, cfg).sum(), la)
    assert torch.isfinite(grad_random).all()


@pytest.mark.parametrize("cfg", CONFIGS)
def test_extreme_log_alpha_and_u_at_the_ends_stay_finite(cfg):
    values = torch.tensor([-1e4, -50.0, 0.0, 50.0, 1e4])
    us = [None, torch.zeros(5), torch.ones(5), torch.tensor([0.0, 1.0, 0.0, 1.0, 0.5])]
    for u in us:
        la = values.clone().requires_grad_(True)
        z = sample_gates(la, cfg, u=u)
        (g,) = torch.autograd.grad(z.sum(), la)
        z = z.detach()
        assert torch.isfinite(z).all() and float(z.min()) >= 0 and float(z.max()) <= 1
        assert torch.isfinite(g).all()
    la = values.clone().requires_grad_(True)
    d = deterministic_gates(la, cfg)
    p = prob_nonzero(la, cfg)
    assert torch.isfinite(d).all() and torch.isfinite(p).all()
    assert d[0] == 0 and d[-1] == 1
    (g,) = torch.autograd.grad(d.sum() + p.sum(), la)
    p = p.detach()
    assert float(p[0]) == pytest.approx(0.0, abs=1e-12) and float(p[-1]) == pytest.approx(1.0)
    assert torch.isfinite(g).all()
    # extremes are saturated: u does not matter any more
    for u in us[1:]:
        z = sample_gates(values, cfg, u=u)
        assert z[0] == 0 and z[-1] == 1


def test_u_exactly_zero_and_one_give_finite_gradients_inside_the_interval():
    # with a large temperature the clamped ends of u still give samples inside (0, 1)
    cfg = HardConcreteConfig(beta=50.0)
    la = torch.zeros(2, requires_grad=True)
    z = sample_gates(la, cfg, u=torch.tensor([0.0, 1.0]))
    assert bool(((z > 0) & (z < 1)).all())
    (g,) = torch.autograd.grad(z.sum(), la)
    assert torch.isfinite(g).all() and (g != 0).all()


# ---- deterministic gates and the GateBank -----------------------------------------------------
def test_deterministic_gates_are_deterministic_and_the_documented_formula():
    la = torch.linspace(-5, 5, 101)
    for cfg in (DEFAULT, CUSTOM):
        a = deterministic_gates(la, cfg)
        b = deterministic_gates(la, cfg)
        assert torch.equal(a, b)
        expected = (torch.sigmoid(la / cfg.beta) * (cfg.zeta - cfg.gamma) + cfg.gamma).clamp(0, 1)
        torch.testing.assert_close(a, expected)
        assert bool((a == 0).any()) and bool((a == 1).any())
        # it is the median of the training distribution: the sample at u = 1/2
        torch.testing.assert_close(a, sample_gates(la, cfg, u=torch.full_like(la, 0.5)))


def test_gatebank_eval_is_repeatable_and_train_samples():
    bank = GateBank([40, 60], ["feature", "neuron"])
    bank.eval()
    a, b = bank(), bank()
    assert torch.equal(a, b)
    assert torch.equal(a, bank.deterministic())
    bank.train()
    torch.manual_seed(5)
    s1, s2 = bank().detach(), bank().detach()
    assert s1.shape == s2.shape == (100,)
    assert not torch.equal(s1, s2)
    assert float(s1.min()) >= 0 and float(s1.max()) <= 1


def test_gatebank_groups_and_kinds():
    bank = GateBank([3, 0, 5], ["feature", "neuron", "neuron"])
    assert bank.num_gates == 8
    assert bank.group_slice(2) == slice(3, 8)
    assert bank.mask_of_kind("feature").tolist() == [True] * 3 + [False] * 5
    with pytest.raises(ValueError):
        GateBank([3], ["feature", "neuron"])


def _bank_at(log_alpha: list[float], essential: list[bool] | None, sizes=(3, 2)) -> GateBank:
    bank = GateBank(list(sizes), ["neuron"] * len(sizes), essential=essential)
    with torch.no_grad():
        bank.log_alpha.copy_(torch.tensor(log_alpha))
    return bank.train()


def test_an_essential_group_never_draws_all_closed_and_the_redraw_is_the_open_conditional():
    """The strongest gate of an essential group whose draw closed it all is redrawn from its
    distribution given open (checked against rejection sampling); nothing else changes."""
    log_alpha = [-3.0, -2.0, -4.0, -3.0, -3.0]
    plain, kept = _bank_at(log_alpha, None), _bank_at(log_alpha, [True, False])
    draws = 4000
    a = torch.stack([plain().detach() for _ in range(draws)])
    b = torch.stack([kept().detach() for _ in range(draws)])
    assert bool((a[:, :3].amax(1) == 0).float().mean() > 0.3)  # often all closed...
    assert bool((b[:, :3].amax(1) > 0).all())  # ...never, with the group marked essential
    assert torch.equal(a[:, 3:], b[:, 3:])  # the other group draws exactly as before
    had_one = a[:, :3].amax(1) > 0
    assert torch.equal(a[had_one], b[had_one])  # a draw with an open gate is left alone
    redrawn = b[~had_one, 1]  # the strongest gate (log alpha -2)
    reference = sample_gates(torch.full((400_000,), -2.0), DEFAULT)
    reference = reference[reference > 0]
    assert abs(float(redrawn.mean() - reference.mean())) < 5 * float(reference.std()) / math.sqrt(
        len(redrawn)) + 1e-3
    assert abs(float(redrawn.median() - reference.median())) < 0.05


def test_the_redraw_without_a_host_read_draws_the_same_gates_and_gradients(monkeypatch):
    """On a device where reading back costs a wait the redraw always resamples; it must give
    the gates (and log-alpha gradients) the CPU's early return gives."""
    log_alpha = [-3.0, -2.0, -4.0, -1.0, 2.0]

    def run():
        bank, zs, grads = _bank_at(log_alpha, [True, True]), [], []
        for _ in range(200):
            bank.log_alpha.grad = None
            z = bank()
            (z * torch.arange(1.0, 6.0)).sum().backward()
            zs.append(z.detach())
            grads.append(bank.log_alpha.grad.clone())
        return torch.stack(zs), torch.stack(grads)

    early_z, early_g = run()
    monkeypatch.setattr(gates_module, "host_reads_are_free", lambda device: False)
    always_z, always_g = run()
    assert bool((early_z[:, :3].amax(1) > 0).all())
    torch.testing.assert_close(always_z, early_z, rtol=0, atol=0)
    torch.testing.assert_close(always_g, early_g, rtol=0, atol=0)


def test_the_redrawn_gate_carries_a_gradient_and_shut_gates_stay_shut():
    bank = _bank_at([-8.0, -8.0, -9.0, 0.0, 0.0], [True, False])
    z = bank()
    assert float(z.detach()[:3].max()) > 0
    z[:3].sum().backward()
    assert float(bank.log_alpha.grad[:2].abs().max()) > 0  # the redrawn one is -8 (index 0/1)
    bank.shut_gates(torch.tensor([0, 1]))  # the projection shut the strongest: the next one
    for _ in range(50):
        z = bank().detach()
        assert float(z[0]) == float(z[1]) == 0.0 and float(z[2]) > 0
    bank.shut_gates(torch.tensor([2]))  # all shut: nothing is reopened by the draw
    assert float(bank().detach()[:3].max()) == 0.0


def test_a_one_channel_essential_group_is_not_gated():
    """A single input channel every path reads (a grey-scale image) has nothing to select:
    its gate could only scale it or cut the output off, and behind BatchNorm a near-closed
    draw overflowed the gradients (MONAI DenseNet-121). It is kept whole and says so."""
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                                torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1))
    sm = lumos.sparsify(model, torch.randn(4, 1, 8, 8), budget=0.5)
    assert all(g.kind != "feature" for g in sm.graph_info.groups)
    assert sm.selected_features()["input"] == [0]
    assert "every path from the inputs to the output" in sm.report()
    wide = lumos.sparsify(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
                                              torch.nn.Conv2d(8, 2, 1)),
                          torch.randn(4, 3, 8, 8), budget=0.5)
    assert any(g.kind == "feature" for g in wide.graph_info.groups)  # three: still selected


def test_gatebank_default_init_starts_fully_open():
    bank = GateBank([500], ["neuron"])
    assert bool((bank.deterministic() == 1).all())
    torch.testing.assert_close(bank.prob_nonzero(), torch.full((500,), 0.99), atol=5e-3, rtol=0)


def test_a_per_kind_init_starts_each_kind_as_asked_and_the_options_stay_hashable(
        starting_keep_probability):
    """``init_keep_probability`` per kind: named kinds start where asked, the others at the
    dict's "default"; options holding such a dict work as dict keys and in sets."""
    start = starting_keep_probability
    asked = {"feature": 0.9, "neuron": 0.99, "default": 0.9999}
    starts = start(lumos.GateOptions(init_keep_probability=asked))
    assert {"feature", "neuron", "channel"} <= set(starts)
    for kind, value in starts.items():
        expected = asked.get(kind, asked["default"])
        torch.testing.assert_close(value, torch.full_like(value, expected), rtol=0,
                                   atol=2e-3 * (1 - expected) / 0.01)
    for value in start(lumos.GateOptions()).values():  # the default: 0.99 everywhere
        torch.testing.assert_close(value, torch.full_like(value, 0.99), atol=2e-3, rtol=0)
    options = lumos.GateOptions(init_keep_probability=dict(asked))
    assert len({options, lumos.GateOptions(init_keep_probability=dict(asked))}) == 1
    assert hash(options) != hash(lumos.GateOptions())


def test_gatebank_init_095_keeps_every_gate():
    bank = GateBank([500], ["neuron"], init_keep_probability=0.95)
    assert bool((bank.deterministic() > 0).all())
    torch.testing.assert_close(bank.prob_nonzero(), torch.full((500,), 0.95), atol=5e-3, rtol=0)


def test_init_below_the_fully_open_probability_starts_fractional_as_documented():
    # The eval gate (the median) is exactly 1 only from P(z != 0) >= p_open.
    cfg = HardConcreteConfig()
    p_open = fully_open_keep_probability(cfg)
    assert 0.95 < p_open < 0.99
    assert bool((GateBank([50], ["neuron"], cfg, p_open + 0.005).deterministic() == 1).all())
    below = GateBank([500], ["neuron"], cfg, p_open - 0.02).deterministic()
    assert bool((below > 0.8).all()) and bool((below < 1.0).all())


# ---- the inverse and the config ---------------------------------------------------------------
@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("p", [1e-3, 0.05, 0.3, 0.5, 0.8, 0.95, 0.99, 0.999])
def test_log_alpha_for_keep_probability_inverts_prob_nonzero(cfg, p):
    la = log_alpha_for_keep_probability(p, cfg)
    assert math.isfinite(la)
    back = float(prob_nonzero(torch.tensor(la, dtype=torch.float64), cfg))
    assert back == pytest.approx(p, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("p", [0.0, 1.0, -0.1, 1.5])
def test_log_alpha_for_keep_probability_rejects_out_of_range(p):
    with pytest.raises(lumos.ConfigurationError):
        log_alpha_for_keep_probability(p, DEFAULT)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"beta": 0.0},
        {"beta": -0.5},
        {"beta": float("nan")},
        {"beta": float("inf")},
        {"gamma": 0.0},
        {"gamma": 0.1},
        {"gamma": float("nan")},
        {"zeta": 1.0},
        {"zeta": 0.9},
        {"zeta": float("nan")},
    ],
)
def test_config_rejects_bad_shape(kwargs):
    with pytest.raises(lumos.ConfigurationError) as info:
        HardConcreteConfig(**kwargs)
    assert isinstance(info.value, lumos.LumosError)


def test_config_accepts_valid_shapes_and_is_exported():
    assert lumos.HardConcreteConfig is HardConcreteConfig
    cfg = HardConcreteConfig(beta=0.1, gamma=-1e-3, zeta=1.0001)
    assert (cfg.beta, cfg.gamma, cfg.zeta) == (0.1, -1e-3, 1.0001)
    assert issubclass(lumos.ConfigurationError, lumos.LumosError)


def test_gate_noise_is_reproducible_across_processes_and_resumes_from_the_state_dict():
    a, b = GateBank([40], ["neuron"]), GateBank([40], ["neuron"])
    a.train()
    b.train()
    torch.testing.assert_close(a(), b())  # same seed, same draw: same gates on every rank
    first = a()
    state = {k: v.clone() if torch.is_tensor(v) else v for k, v in a.state_dict().items()}
    after = a()
    c = GateBank([40], ["neuron"])
    c.load_state_dict(state)
    c.train()
    torch.testing.assert_close(c(), after)  # a resumed bank continues the same noise stream
    assert not torch.equal(first, after)


@pytest.mark.parametrize("b", [0.0, 0.2, 0.5])
def test_noise_interval_narrows_the_uniform_draw(b):
    bank = GateBank([2000], ["neuron"])
    bank.noise_interval = b
    u = bank.draw_uniform()
    assert float(u.min()) >= b - 1e-6 and float(u.max()) <= 1 - b + 1e-6
    if b == 0.5:
        bank.train()
        torch.testing.assert_close(bank(), bank())  # deterministic at b = 0.5
