"""Gate schedules and options: values at given progress points, DDP-safe, exact freezing."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import lumos
from lumos import GateOptions, Schedule
from lumos.gates import HardConcreteConfig, prob_nonzero, sample_gates


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        (Schedule("constant", 0.3), [0.3, 0.3, 0.3, 0.3]),
        (Schedule("linear", 0.5, 0.0), [0.5, 0.375, 0.25, 0.0]),
        (Schedule("cosine", 0.5, 0.0), [0.5, 0.5 * (1 + math.cos(math.pi / 4)) / 2, 0.25, 0.0]),
        (Schedule("step", 1.0, 0.1, finish=0.5), [1.0, 1.0, 0.1, 0.1]),
        (Schedule("linear", 0.0, 1.0, begin=0.5, finish=1.0), [0.0, 0.0, 0.0, 1.0]),
    ],
)
def test_schedule_values_at_progress_points(schedule, expected):
    got = [schedule(p) for p in (0.0, 0.25, 0.5, 1.0)]
    assert got == pytest.approx(expected)


def test_bad_schedules_and_options_are_configuration_errors():
    with pytest.raises(lumos.ConfigurationError, match="kind"):
        Schedule("exponential", 1.0)
    with pytest.raises(lumos.ConfigurationError, match="begin"):
        Schedule("linear", 0, 1, begin=0.8, finish=0.2)
    with pytest.raises(lumos.ConfigurationError, match="noise_interval"):
        GateOptions(noise_interval=Schedule("linear", 0.6, 0.0))
    with pytest.raises(lumos.ConfigurationError, match="temperature"):
        GateOptions(temperature=0.0)
    with pytest.raises(lumos.ConfigurationError, match="finetune"):
        GateOptions(finetune=1.0)
    with pytest.raises(lumos.ConfigurationError, match="GateOptions"):
        lumos.sparsify(nn.Linear(3, 1), torch.randn(2, 3), gates={"finetune": 0.1})


def _sm(**kw) -> lumos.SparseModel:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1))
    return lumos.sparsify(model, torch.randn(4, 6), **kw)


def test_b_half_gives_deterministic_training_gates_and_b_zero_the_plain_distribution():
    sm = _sm(lam=0.1, gates=GateOptions(noise_interval=0.5))
    sm.train()
    sm.set_progress(0.3)
    a, b = sm.gates(), sm.gates()
    torch.testing.assert_close(a, b)
    # b = 0: the empirical P(z = 0) matches the closed form of the plain hard-concrete gate
    cfg = HardConcreteConfig()
    log_alpha = torch.full((200_000,), -0.5)
    bank = lumos.gates.GateBank([log_alpha.numel()], ["neuron"])
    with torch.no_grad():
        bank.log_alpha.copy_(log_alpha)
    bank.train()
    z = bank()
    expected = 1 - float(prob_nonzero(log_alpha[:1], cfg))
    assert float((z == 0).double().mean()) == pytest.approx(expected, abs=0.005)
    u = torch.rand(200_000, generator=torch.Generator().manual_seed(1))
    plain = sample_gates(log_alpha, cfg, u)
    assert float((plain == 0).double().mean()) == pytest.approx(expected, abs=0.005)


def test_schedules_follow_progress_and_travel_in_the_state_dict():
    sm = _sm(lam=0.1, gates=GateOptions(noise_interval=Schedule("cosine", 0.5, 0.0),
                                        temperature=Schedule("linear", 1.0, 0.2)))
    sm.set_progress(0.5)
    assert sm.gates.noise_interval == pytest.approx(0.25)
    assert sm.gates.cfg.beta == pytest.approx(0.6)
    fresh = _sm(lam=0.1)
    fresh.load_state_dict(sm.state_dict())
    assert fresh.gates.cfg.beta == pytest.approx(0.6)
    assert fresh.gates.noise_interval == pytest.approx(0.25)


def test_log_alpha_clamp_and_per_kind_initial_keep_probability():
    sm = _sm(lam=0.1, gates=GateOptions(
        log_alpha_range=(-3.0, 3.0),
        init_keep_probability={"feature": 0.995, "default": 0.999}))
    probs = sm.gates.prob_nonzero().detach()
    assert probs[sm.feature_mask].mean() == pytest.approx(0.995, abs=2e-3)
    assert probs[~sm.feature_mask].mean() == pytest.approx(0.999, abs=2e-3)
    with torch.no_grad():
        sm.gates.log_alpha.mul_(100)
    sm.set_progress(0.1)
    assert float(sm.gates.log_alpha.detach().abs().max()) <= 3.0


def test_finetune_phase_freezes_gates_where_they_are_and_stays_exact():
    sm = _sm(budget=0.4, gates=GateOptions(finetune=0.2))
    with torch.no_grad():
        sm.gates.log_alpha.copy_(torch.linspace(-4, 4, sm.gates.num_gates))
    sm.set_progress(0.7)
    assert not sm.gates.frozen
    sm.enforce_budget(fill=True)  # what freezing does first
    x = torch.randn(8, 6)
    sm.eval()
    with torch.no_grad():
        before_freeze, values = sm(x), sm.gates.deterministic().clone()
    assert bool(((values > 0) & (values < 1)).any())  # some gates sit half-open
    sm.set_progress(0.85)
    assert sm.gates.frozen
    # frozen where they were: the same gates in training and eval, the same function
    sm.train()
    torch.testing.assert_close(sm.gates(), values)
    sm.eval()
    with torch.no_grad():
        torch.testing.assert_close(sm(x), before_freeze)
    assert sm.compacted_counts()["params"] <= 0.4 * sm.dense_params
    # a frozen model survives a state_dict round trip
    twin = _sm(budget=0.4, gates=GateOptions(finetune=0.2))
    twin.load_state_dict(sm.state_dict())
    assert twin.gates.frozen
    torch.testing.assert_close(twin.gates.deterministic(), values)
    # and the frozen values move with the model (a buffer)
    twin.double()
    assert twin.gates.deterministic().dtype == torch.float64
    with torch.no_grad():
        torch.testing.assert_close(twin.eval()(x.double()), before_freeze.double())
    with torch.no_grad():
        torch.testing.assert_close(sm.compact()(x), sm(x))
    before = sm.gates.log_alpha.detach().clone()
    loss = sm(x).sum() + sm.penalty()
    loss.backward()
    assert sm.gates.log_alpha.grad is None or float(sm.gates.log_alpha.grad.abs().sum()) == 0
    torch.testing.assert_close(sm.gates.log_alpha.detach(), before)


def test_training_in_pieces_follows_one_schedule_through_progress_range():
    from lumos.training import train

    sm = _sm(lam=0.1, gates=GateOptions(noise_interval=Schedule("linear", 0.4, 0.0)))
    x, y = torch.randn(64, 6), torch.randn(64, 1)
    train(sm, (x, y), epochs=1, batch_size=16, progress_range=(0.0, 0.5))
    assert sm.gates.noise_interval == pytest.approx(0.2)
    train(sm, (x, y), epochs=1, batch_size=16, progress_range=(0.5, 1.0))
    assert sm.gates.noise_interval == pytest.approx(0.0)
    with pytest.raises(lumos.ConfigurationError, match="progress_range"):
        train(sm, (x, y), epochs=1, progress_range=(0.8, 0.2))


def test_old_gate_keywords_still_work_with_a_deprecation_warning():
    old_cfg = HardConcreteConfig(beta=0.5, gamma=-0.2, zeta=1.2)
    with pytest.warns(DeprecationWarning, match="GateOptions"):
        old = _sm(budget=0.5, gate_config=old_cfg, init_keep_probability=0.999, warmup=0.3)
    new = _sm(budget=0.5, gates=GateOptions(temperature=0.5, stretch=(-0.2, 1.2),
                                            init_keep_probability=0.999, budget_warmup=0.3))
    assert old.gates.cfg == new.gates.cfg == old_cfg
    assert old.controller.warmup == new.controller.warmup == 0.3
    torch.testing.assert_close(old.gates.log_alpha, new.gates.log_alpha)
    # a setting made twice (old keyword and GateOptions) is refused, not silently resolved
    with pytest.raises(lumos.ConfigurationError, match="init_keep_probability"), \
            pytest.warns(DeprecationWarning):
        _sm(budget=0.5, init_keep_probability=0.999,
            gates=GateOptions(init_keep_probability=0.995))


def test_gate_options_validate_every_field():
    for bad in (dict(stretch=(0.1, 1.1)), dict(init_keep_probability=1.0),
                dict(budget_warmup=1.5), dict(temperature=-1.0)):
        with pytest.raises(lumos.ConfigurationError):
            GateOptions(**bad)
