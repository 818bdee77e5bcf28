"""``lumos.testing.assert_compacts_exactly`` catches what it promises to catch, and leaves the
model and its gates as they were."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lumos
from lumos.testing import assert_compacts_exactly

pytestmark = pytest.mark.filterwarnings("ignore::lumos.LumosWarning")


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))


class Flip(nn.Module):
    """Reverses the channels: not channel-wise, whatever a wrong rule claims."""

    def forward(self, x):
        return torch.flip(x, dims=[-1])


class Scale(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.rand(channels) + 0.5)

    def forward(self, x):
        return x * self.scale


def _miscounts(ctx, node, module):
    """A wrong cost: ``scale`` follows the channels but is counted as if it were C x C."""
    info = ctx.tensor_info(node.args[0])
    ctx.role(node.target, "scale", 0, info.layout)
    ctx.param_cost(node.target, "scale", (info.layout, info.layout))
    return info


def test_a_wrong_rule_is_caught_with_the_state_and_the_difference():
    model = nn.Sequential(nn.Linear(4, 6), Flip(), nn.Linear(6, 2))
    with lumos.rules.scoped():
        lumos.register_rule(Flip, lumos.rules.channelwise())  # wrong: flip mixes channels
        with pytest.raises(AssertionError, match=r"gate state \d.*max abs difference"):
            assert_compacts_exactly(model, torch.randn(5, 4))


def test_wrong_counts_are_caught_with_both_numbers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), Scale(6), nn.Linear(6, 2))
    with lumos.rules.scoped():
        lumos.register_rule(Scale, _miscounts)
        with pytest.raises(AssertionError, match=r"has \d+ parameters but the cost model "
                                                 r"predicted [\d.]+"):
            assert_compacts_exactly(model, torch.randn(5, 4))


def test_a_model_without_gates_is_refused():
    with pytest.raises(AssertionError, match="no gates"):
        assert_compacts_exactly(nn.Linear(4, 3), torch.randn(5, 4),
                                sparsify_kwargs={"features": False})


def test_a_check_that_removes_nothing_is_refused():
    sm = lumos.sparsify(mlp(), torch.randn(5, 4), budget=0.5)
    everything = torch.ones(sm.gates.num_gates, dtype=torch.bool)
    sm.kept_mask = lambda: everything  # compaction keeps every channel (gate values folded)
    with pytest.raises(AssertionError, match="none of the 3 gate states removed a channel"):
        assert_compacts_exactly(sm, torch.randn(5, 4))


def test_an_output_that_changes_between_calls_is_caught():
    class Noisy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, x):
            h = self.a(x)
            return self.b(h + torch.rand_like(h))

    with pytest.raises(AssertionError, match="differs between two calls"):
        assert_compacts_exactly(Noisy(), torch.randn(5, 4))


def test_tuple_and_dict_outputs_and_other_batch_sizes():
    class Heads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(4, 6)
            self.a, self.b = nn.Linear(6, 2), nn.Linear(6, 1)

        def forward(self, x, scale):
            h = torch.relu(self.body(x))
            return {"a": self.a(h) * scale, "rest": (self.b(h), [h.sum(-1)])}

    check = assert_compacts_exactly(Heads(), (torch.randn(5, 4), torch.tensor(2.0)),
                                    batch_sizes=[1, 8], states=4)
    assert len(check.states) == 4 and any(s.removed for s in check.states)
    assert all(s.max_abs_diff < 1e-5 for s in check.states)


def test_modes_and_gates_are_put_back():
    model = mlp().train()
    model[1].eval()  # a mixed model keeps its mixture
    assert_compacts_exactly(model, torch.randn(5, 4))
    assert [m.training for m in model.modules()] == [True, True, False, True]

    sm = lumos.sparsify(mlp(), torch.randn(5, 4), budget=0.5).train()
    with torch.no_grad():
        sm.gates.log_alpha.uniform_(-3, 3)
    sm.gates.freeze(sm.kept_mask())
    before = (sm.gates.log_alpha.detach().clone(), sm.gates.shut.clone(),
              sm.gates.frozen_values.clone())
    check = assert_compacts_exactly(sm, torch.randn(5, 4))
    assert check.sparse_model is sm and sm.training and sm.gates.frozen
    assert torch.equal(sm.gates.log_alpha, before[0])
    assert torch.equal(sm.gates.shut, before[1])
    assert torch.equal(sm.gates.frozen_values, before[2])


def test_bad_arguments():
    with pytest.raises(ValueError, match="states"):
        assert_compacts_exactly(mlp(), torch.randn(5, 4), states=0)


def test_lumos_testing_is_reachable_from_lumos():
    assert lumos.testing.assert_compacts_exactly is assert_compacts_exactly
