"""Split steps (``GateOptions.gate_step_every``): one step in k draws gate noise and trains
weights and gates, the others run the deterministic gates and train the weights alone, in any
loop."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lumos
from lumos.errors import ConfigurationError
from lumos.training import train


def _sm(every: int, seed: int = 0, **gate_options) -> lumos.SparseModel:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(6, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(),
                        nn.Linear(24, 1))
    return lumos.sparsify(net, torch.randn(4, 6), budget=0.5,
                          gates=lumos.GateOptions(gate_step_every=every, **gate_options))


def _data(n: int = 64):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=g)
    return x, x[:, :1] * 2 - x[:, 1:2]


def _weights(sm: lumos.SparseModel) -> list[torch.Tensor]:
    return [p.detach().clone() for p in sm.parameters() if p is not sm.gates.log_alpha]


def _moved(before: list[torch.Tensor], sm: lumos.SparseModel) -> bool:
    after = [p for p in sm.parameters() if p is not sm.gates.log_alpha]
    return any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def _step(sm, opts, x, y, accumulate: int = 1) -> None:
    for opt in opts:
        opt.zero_grad()
    for xb, yb in zip(x.chunk(accumulate), y.chunk(accumulate), strict=True):
        loss = ((sm(xb) - yb) ** 2).mean()
        (loss + sm.penalty(loss)).backward()
    for opt in opts:
        opt.step()


@pytest.mark.parametrize("every", [2, 3])
def test_the_gates_learn_on_noisy_steps_only_the_weights_on_every_step(every):
    sm = _sm(every)
    opt = torch.optim.Adam(sm.parameters(), 1e-2)
    x, y = _data()
    phases = []
    for _ in range(2 * every):
        weights, alpha = _weights(sm), sm.gates.log_alpha.detach().clone()
        _step(sm, [opt], x, y)
        phases.append(sm.gates.phase)
        # the penalty has a gradient in log alpha on every step: only noisy steps may use it
        assert (not torch.equal(alpha, sm.gates.log_alpha)) == (sm.gates.phase == "noisy")
        assert _moved(weights, sm)
    assert phases == (["noisy"] + ["deterministic"] * (every - 1)) * 2
    assert sm.gates.split_steps == 2 * every


def test_a_deterministic_step_runs_the_network_as_evaluated_and_a_noisy_one_does_not():
    sm = _sm(2)
    opt = torch.optim.Adam(sm.parameters(), 1e-2)
    x, y = _data()
    sm.eval()
    with torch.no_grad():
        evaluated = sm(x)
    sm.train()
    with torch.no_grad():
        noisy = sm(x)  # step 0 is noisy
    assert sm.gates.phase == "noisy" and not torch.allclose(noisy, evaluated)
    _step(sm, [opt], x, y)  # the noisy step; the next forward is deterministic
    with torch.no_grad():
        sm.train()
        trained = sm(x)
        assert sm.gates.phase == "deterministic"
        sm.eval()
        evaluated = sm(x)
    torch.testing.assert_close(trained, evaluated)


def test_plain_steps_train_both_and_set_no_phase():
    sm = _sm(1)
    opt = torch.optim.Adam(sm.parameters(), 1e-2)
    x, y = _data()
    weights, alpha = _weights(sm), sm.gates.log_alpha.detach().clone()
    _step(sm, [opt], x, y)
    assert sm.gates.phase is None and sm.gates.split_steps == 0
    assert _moved(weights, sm) and not torch.equal(alpha, sm.gates.log_alpha)


def test_accumulated_forwards_share_one_phase_and_count_one_step():
    sm = _sm(2)
    opt = torch.optim.Adam(sm.parameters(), 1e-2)
    x, y = _data()
    seen = []
    handle = sm.gates.register_forward_hook(lambda m, a, out: seen.append(m.phase))
    for _ in range(3):
        _step(sm, [opt], x, y, accumulate=4)
    handle.remove()
    assert seen == ["noisy"] * 4 + ["deterministic"] * 4 + ["noisy"] * 4
    assert sm.gates.split_steps == 3


def test_separate_optimisers_for_weights_and_gates_route_and_count_once():
    sm = _sm(2)
    gate_opt = torch.optim.Adam([sm.gates.log_alpha], 5e-2)
    weight_opt = torch.optim.SGD(
        [p for p in sm.parameters() if p is not sm.gates.log_alpha], 1e-2, momentum=0.9)
    x, y = _data()
    for expected in ("noisy", "deterministic", "noisy"):
        weights, alpha = _weights(sm), sm.gates.log_alpha.detach().clone()
        _step(sm, [weight_opt, gate_opt], x, y)
        assert sm.gates.phase == expected and _moved(weights, sm)
        assert (not torch.equal(alpha, sm.gates.log_alpha)) == (expected == "noisy")
    assert sm.gates.split_steps == 3


def test_frozen_gates_let_the_weights_train_on_every_step():
    sm = _sm(3)
    sm.gates.freeze(sm.kept_mask())
    opt = torch.optim.Adam(sm.parameters(), 1e-2)
    x, y = _data()
    for _ in range(3):
        weights = _weights(sm)
        _step(sm, [opt], x, y)
        assert sm.gates.phase is None and _moved(weights, sm)


def test_a_resumed_run_takes_the_phase_the_uninterrupted_one_would():
    sm = _sm(3)
    opt = torch.optim.Adam(sm.parameters(), 1e-2)
    x, y = _data()
    for _ in range(4):
        _step(sm, [opt], x, y)
    resumed = _sm(3, seed=5)
    resumed.load_state_dict(copy.deepcopy(sm.state_dict()))
    assert resumed.gates.split_steps == 4
    resumed.train()
    with torch.no_grad():
        resumed(x)
        sm(x)
    assert resumed.gates.phase == sm.gates.phase == "deterministic"


def test_the_training_loop_splits_steps_and_compaction_stays_exact():
    x, y = _data(256)
    sm = _sm(4, finetune=0.0)  # no frozen fine-tune at the end: every step is split
    history = train(sm, (x, y), epochs=4, batch_size=32, lr=5e-3, progress=False)
    assert sm.gates.split_steps == 4 * 8
    assert history.loss[-1] < history.loss[0]
    sm.eval()
    small = sm.compact()
    with torch.no_grad():
        torch.testing.assert_close(small(x), sm(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "4"])
def test_a_bad_gate_step_every_is_refused_by_name(bad):
    with pytest.raises(ConfigurationError, match="gate_step_every"):
        lumos.GateOptions(gate_step_every=bad)
