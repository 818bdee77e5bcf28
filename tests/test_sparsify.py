"""sparsify(): modes, penalty, selected features, reports and every user-facing error."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lumos
from lumos.training import train


class MLP(nn.Module):
    def __init__(self, d: int = 6, h: int = 16, out: int = 2) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d, h)
        self.fc2 = nn.Linear(h, h)
        self.head = nn.Linear(h, out)

    def forward(self, x):
        return self.head(F.gelu(self.fc2(torch.relu(self.fc1(x)))))


class TwoInputs(nn.Module):
    """A float input with features, a second float input, and an integer index input."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(3, 8)
        self.emb = nn.Embedding(5, 8)
        self.head = nn.Linear(8, 1)

    def forward(self, x, z, idx):
        return self.head(torch.tanh(self.a(x) + self.b(z) + self.emb(idx)))


def _x(n: int = 32, d: int = 6) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(1))


def test_groups_features_and_neurons_and_output_never_gated():
    sm = lumos.sparsify(MLP(), _x())
    kinds = {g.name: (g.kind, g.size) for g in sm.graph_info.groups}
    assert kinds == {"x": ("feature", 6), "fc1": ("neuron", 16), "fc2": ("neuron", 16)}
    # the head's outputs are model outputs: never a group
    assert "head" not in kinds


def test_compact_before_training_keeps_everything_and_matches_original():
    model = MLP()
    x = _x()
    sm = lumos.sparsify(model, x)
    small = sm.compact()
    assert lumos.count_params(small) == lumos.count_params(model)
    torch.testing.assert_close(small(x), model(x))
    assert sm.selected_features() == {"x": list(range(6))}


def test_penalty_modes():
    x = _x()
    sm_lam = lumos.sparsify(MLP(), x, lam=2.0, feature_penalty=0.0)
    expected = 2.0 * float(sm_lam.expected_fraction().detach())
    assert float(sm_lam.penalty().detach()) == pytest.approx(expected, rel=1e-5)
    sm_none = lumos.sparsify(MLP(), x, feature_penalty=0.0)
    assert float(sm_none.penalty()) == 0.0
    sm_feat = lumos.sparsify(MLP(), x, feature_penalty=0.3)
    keep = sm_feat.gates.prob_nonzero()[sm_feat.feature_mask].mean()
    assert float(sm_feat.penalty()) == pytest.approx(0.3 * float(keep), rel=1e-5)


@pytest.mark.parametrize("mode", ["lam", "budget_over", "budget_under", "frozen"])
def test_penalty_value_and_gradient_equal_the_differentiated_formula(mode):
    """penalty() hands autograd its gradient directly; it must be the gradient of
    size term + feature_penalty * mean P(feature kept), differentiated by autograd."""
    torch.manual_seed(0)
    kwargs = {"lam": 1.7} if mode == "lam" else {"budget": 0.3}
    sm = lumos.sparsify(MLP(d=6, h=24), _x(), feature_penalty=0.2, **kwargs)
    with torch.no_grad():
        sm.gates.log_alpha.uniform_(-3.0, 4.0)
        sm.gates.shut_gates(torch.tensor([7, 20]))
    sm.train()
    if mode != "lam":
        sm.controller.progress = 0.6 if mode == "budget_over" else 0.0
        sm.controller.lambda1 = 0.8
        sm.controller.lambda2 = 2.5
    if mode == "frozen":
        sm.gates.freeze(sm.kept_mask())
    la = sm.gates.log_alpha
    keep = sm.gates.prob_nonzero()
    fraction = sm.cost.total(keep, "params") / sm.dense_params
    ramp = min(1.0, (0.6 if mode == "budget_over" else 0.0 if mode != "lam" else 1.0)
               / sm.FEATURE_WARMUP)
    if mode in ("budget_under", "frozen"):  # progress 0: the feature pressure is ramped off
        assert sm._feature_ramp() == 0.0
        sm.FEATURE_WARMUP = 0.0  # (this instance) so that the formula is checked in full
        ramp = 1.0
    reference = 0.2 * ramp * keep[sm.feature_mask].mean()
    if mode == "lam":
        reference = reference + 1.7 * fraction
    else:
        realized = sm._realized_fraction(keep.dtype)
        over = torch.relu(fraction + (realized - fraction).detach() - sm.controller.target())
        reference = reference + 0.8 * over + 2.5 * over**2
    value = sm.penalty()
    assert float(value.detach()) == pytest.approx(float(reference.detach()), rel=1e-5)
    if mode == "frozen":  # frozen gates: a constant penalty, no gradient
        assert not reference.requires_grad
        assert torch.autograd.grad(value, la, allow_unused=True)[0] is None
        return
    (expected,) = torch.autograd.grad(reference, la)
    (got,) = torch.autograd.grad(value, la)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-8)
    if mode == "budget_under":  # under target: only the feature pressure pushes
        assert (got[~sm.feature_mask] == 0).all() and (got[sm.feature_mask] != 0).any()
    else:
        assert (got[~sm.gates.shut] != 0).all()


def test_the_feature_pressure_ramps_up_over_the_first_tenth_of_training():
    """A column the network has not learned to use yet has no gradient to defend it."""
    sm = lumos.sparsify(MLP(d=6, h=24), _x(), budget=None, feature_penalty=0.2)
    sm.train()
    slopes = []
    for progress in (0.0, 0.05, 0.1, 0.5, 0.8):  # (gates freeze for the final fine-tune)
        sm.set_progress(progress)
        _, grad = sm.penalty_terms()
        slopes.append(float(grad[sm.feature_mask].abs().sum()))
    assert slopes[0] == 0.0
    assert slopes[1] == pytest.approx(slopes[2] / 2, rel=1e-6)
    assert slopes[2] == slopes[3] == slopes[4] > 0


def test_penalty_gradient_reaches_every_gate():
    sm = lumos.sparsify(MLP(), _x(), budget=0.3)
    sm.train()
    sm.set_progress(0.5)  # target at the budget, before it is enforced
    sm.controller.lambda1 = 1.0
    sm.penalty().backward()
    grad = sm.gates.log_alpha.grad
    assert grad is not None and torch.isfinite(grad).all() and (grad != 0).all()


def test_cost_weighting_a_wide_consumer_costs_more():
    """A neuron feeding a 64-wide layer is worth more parameters than one feeding 4."""

    class Uneven(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 8), nn.Linear(3, 8)
            self.a2, self.b2 = nn.Linear(8, 64), nn.Linear(8, 4)
            self.head = nn.Linear(68, 1)

        def forward(self, x):
            return self.head(torch.cat([self.a2(self.a(x).relu()), self.b2(self.b(x).relu())], -1))

    sm = lumos.sparsify(Uneven(), torch.randn(4, 3), lam=1.0, feature_penalty=0.0)
    sm.penalty().backward()
    grad = sm.gates.log_alpha.grad
    groups = {g.name: g for g in sm.graph_info.groups}
    ga, gb = groups["a"], groups["b"]
    grad_a = grad[ga.offset : ga.offset + ga.size].mean()
    assert grad_a > 3 * grad[gb.offset : gb.offset + gb.size].mean()


def test_feature_names_and_selected_features():
    names = [f"v{i}" for i in range(6)]
    sm = lumos.sparsify(MLP(), _x(), feature_names=names)
    g = next(g for g in sm.graph_info.groups if g.kind == "feature")
    with torch.no_grad():
        sm.gates.log_alpha[g.offset + 1] = -10.0
        sm.gates.log_alpha[g.offset + 4] = -10.0
    assert sm.selected_features() == {"x": ["v0", "v2", "v3", "v5"]}
    scores = sm.feature_scores()["x"]
    assert scores[1] < 0.01 and scores[0] > 0.9


def test_multiple_inputs_integer_inputs_never_gated():
    model = TwoInputs()
    ex = (torch.randn(8, 4), torch.randn(8, 3), torch.randint(0, 5, (8,)))
    sm = lumos.sparsify(model, ex, feature_names={"x": list("abcd"), "z": list("pqr")})
    kinds = sorted((g.name, g.kind) for g in sm.graph_info.groups)
    assert ("x", "feature") in kinds and ("z", "feature") in kinds
    assert all(name != "idx" for name, _ in kinds)
    sm.eval()
    torch.testing.assert_close(sm.compact()(*ex), sm(*ex))
    # features= restricts which arguments are gated
    sm_x = lumos.sparsify(model, ex, features=["x"])
    assert [g.name for g in sm_x.graph_info.groups if g.kind == "feature"] == ["x"]


def test_keyword_example_inputs_and_call():
    model = TwoInputs()
    ex = {"x": torch.randn(8, 4), "z": torch.randn(8, 3), "idx": torch.randint(0, 5, (8,))}
    sm = lumos.sparsify(model, ex).eval()
    torch.testing.assert_close(sm(**ex), model(**ex))


def test_report_lists_groups_features_params():
    sm = lumos.sparsify(MLP(), _x(), budget=0.5, feature_names=list("abcdef"))
    text = sm.report()
    assert "fc1" in text and "features of 'x': 6/6 kept" in text
    assert "params:" in text and "budget 50%" in text


def test_unknown_op_is_kept_whole_and_reported_or_refused_in_strict_mode():
    class Weird(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(4, 8)
            self.fc2 = nn.Linear(8, 1)

        def forward(self, x):
            h = self.fc1(x)
            h = torch.cumsum(h, dim=-1)  # mixes channels: no rule
            return self.fc2(h)

    x = torch.randn(5, 4)
    sm = lumos.sparsify(Weird(), x)
    assert [g.name for g in sm.graph_info.groups] == ["x"]
    assert "cumsum" in sm.report()
    with torch.no_grad():
        sm.gates.log_alpha.fill_(-10)
    sm.eval()
    torch.testing.assert_close(sm.compact()(x), sm(x))
    with pytest.raises(lumos.UnsupportedModelError, match="cumsum"):
        lumos.sparsify(Weird(), x, strict=True)


def test_channel_count_used_as_a_number_pins_the_channels():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(4, 8)
            self.fc2 = nn.Linear(8, 1)

        def forward(self, x):
            h = self.fc1(x)
            return self.fc2(h / h.shape[-1] ** 0.5)

    sm = lumos.sparsify(Scaled(), torch.randn(3, 4))
    assert "fc1" not in [g.name for g in sm.graph_info.groups]


def test_view_with_literal_channel_count_is_rewritten():
    class Viewing(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(4, 8)
            self.fc2 = nn.Linear(8, 2)

        def forward(self, x):  # x: (B, T, 4)
            b, t = x.shape[0], x.shape[1]
            h = self.fc1(x).reshape(b * t, 8).relu()
            return self.fc2(h).view(b, t, 2)

    x = torch.randn(3, 5, 4)
    sm = lumos.sparsify(Viewing(), x)
    assert "fc1" in [g.name for g in sm.graph_info.groups]
    g = next(g for g in sm.graph_info.groups if g.name == "fc1")
    with torch.no_grad():
        sm.gates.log_alpha[g.offset : g.offset + 3] = -10.0
    sm.eval()
    small = sm.compact()
    assert small.fc1.out_features == 5
    torch.testing.assert_close(small(x), sm(x))


def test_all_gates_open_no_penalty_trains_like_the_original():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 6, generator=g)
    y = (x[:, :1] * x[:, 1:2]).sin()
    torch.manual_seed(0)
    dense = MLP(out=1)
    torch.manual_seed(0)
    sm = lumos.sparsify(MLP(out=1), x[:4], feature_penalty=0.0,
                        gates=lumos.GateOptions(init_keep_probability=0.999))
    h_dense = train(dense, (x, y), epochs=30, lr=3e-3, seed=0)
    h_sparse = train(sm, (x, y), epochs=30, lr=3e-3, seed=0)
    assert h_sparse.loss[-1] < 1.5 * h_dense.loss[-1] + 1e-3
    assert h_sparse.loss[-1] < 0.5 * h_sparse.loss[0]


# ---- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("budget", [0, -0.1, 1.5, float("nan"), "0.3"])
def test_budget_out_of_range(budget):
    with pytest.raises(lumos.ConfigurationError, match=r"budget must be .* in \(0, 1\]"):
        lumos.sparsify(MLP(), _x(), budget=budget)


def test_budget_and_lam_together_and_bad_lam():
    with pytest.raises(lumos.ConfigurationError, match="either budget"):
        lumos.sparsify(MLP(), _x(), budget=0.5, lam=1.0)
    with pytest.raises(lumos.ConfigurationError, match="lam must be"):
        lumos.sparsify(MLP(), _x(), lam=-1.0)


def test_not_a_module_and_bad_example_inputs():
    with pytest.raises(lumos.ConfigurationError, match="nn.Module"):
        lumos.sparsify(lambda x: x, _x())
    with pytest.raises(lumos.ConfigurationError, match="example_inputs"):
        lumos.sparsify(MLP(), 3.0)
    with pytest.raises(lumos.InputError, match="do not match"):
        lumos.sparsify(MLP(), (_x(), _x()))


def test_nan_in_example_inputs_and_training_batch():
    x = _x()
    bad = x.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(lumos.InputError, match="NaN/Inf"):
        lumos.sparsify(MLP(), bad)
    sm = lumos.sparsify(MLP(), x)
    sm.train()
    bad[3, 2] = float("inf")
    with pytest.raises(lumos.InputError, match="training batch contains 1 NaN/Inf"):
        sm(bad)


def test_the_finite_check_is_exact_whatever_the_sum_does():
    """The per-forward check reads one sum first: a sum that overflows on finite values must
    still pass, and +Inf with -Inf (a NaN sum) or half-precision inputs must still be told."""
    sm = lumos.sparsify(MLP(), _x()).train()
    huge = torch.full((4, 6), 3e38)  # finite, but the sum is inf
    assert torch.isinf(huge.sum())
    sm(huge)
    both = _x()
    both[0, 0], both[1, 1] = float("inf"), float("-inf")
    with pytest.raises(lumos.InputError, match="contains 2 NaN/Inf"):
        sm(both)
    half = lumos.sparsify(MLP().half(), _x().half()).train()
    big = torch.full((4, 6), 60000.0, dtype=torch.float16)  # a float16 sum would overflow
    half(big)
    big[2, 3] = float("nan")
    with pytest.raises(lumos.InputError, match="contains 1 NaN/Inf"):
        half(big)


def test_input_shape_mismatch():
    sm = lumos.sparsify(MLP(), _x())
    with pytest.raises(lumos.InputError, match="sparsified with 6 features"):
        sm(torch.randn(4, 7))


def test_untraceable_model_names_module_and_way_out():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 1)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow
                return self.fc(x)
            return -self.fc(x)

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Branchy()

        def forward(self, x):
            return self.inner(x)

    with pytest.raises(lumos.UntraceableModelError) as info:
        lumos.sparsify(Outer(), torch.randn(2, 4))
    msg = str(info.value)
    assert "'inner'" in msg and "x.sum() > 0" in msg and "register_rule" in msg


def test_feature_names_mismatch_and_compact_mode():
    with pytest.raises(lumos.ConfigurationError, match="3 feature_names given for 'x'"):
        lumos.sparsify(MLP(), _x(), feature_names=["a", "b", "c"])
    sm = lumos.sparsify(MLP(), _x())
    with pytest.raises(lumos.ConfigurationError, match="inputs must be one of"):
        sm.compact(inputs="some")


def test_errors_are_lumos_errors():
    for exc in (lumos.ConfigurationError, lumos.InputError, lumos.UntraceableModelError,
                lumos.UnsupportedModelError, lumos.CheckpointError):
        assert issubclass(exc, lumos.LumosError)


def test_state_dict_round_trip_restores_gates_and_controller():
    x = _x()
    sm = lumos.sparsify(MLP(), x, budget=0.4)
    sm.train()
    sm.controller.lambda1 = 0.7
    with torch.no_grad():
        sm.gates.log_alpha.uniform_(-3, 3)
    state = sm.state_dict()
    assert not any("lumos_gate_index" in k for k in state)
    fresh = lumos.sparsify(MLP(), x, budget=0.4)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.gates.log_alpha, sm.gates.log_alpha)
    assert float(fresh.controller.lambda1) == pytest.approx(0.7)
    fresh.eval()
    sm.eval()
    torch.testing.assert_close(fresh(x), sm(x))


class _TimeMajor(nn.Module):
    """(batch, time, channels) data read by a Conv1d after a permute or a transpose."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.conv = nn.Conv1d(4, 10, 3, padding=1)
        self.head = nn.Linear(10, 2)

    def forward(self, x):
        x = x.permute(0, 2, 1) if self.how == "permute" else x.transpose(1, 2)
        return self.head(torch.relu(self.conv(x)).transpose(1, 2))


@pytest.mark.parametrize("how", ["permute", "transpose"])
def test_features_are_the_dim_the_first_layer_reads_through_a_permute(how):
    x = torch.randn(8, 20, 4)
    sm = lumos.sparsify(_TimeMajor(how), x, lam=0.5)
    assert sm.graph_info.feature_spaces["x"].size == 4  # the channels, not the 20 time steps
    with torch.no_grad():
        sm.gates.log_alpha[:4] = torch.tensor([6.0, -6.0, 6.0, -6.0])
    sm.eval()
    assert sm.selected_features() == {"x": [0, 2]}
    with torch.no_grad():
        torch.testing.assert_close(sm.compact()(x), sm(x))
        torch.testing.assert_close(sm.compact(inputs="selected")(x[..., [0, 2]]), sm(x))


def test_sparsify_leaves_the_users_model_as_it_was():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1)).train()
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    lumos.sparsify(model, torch.randn(16, 4) * 5 + 3)
    assert model.training
    for k, v in model.state_dict().items():  # BatchNorm's running statistics included
        assert torch.equal(v, stats[k]), k


def test_a_model_that_fails_on_its_example_inputs_gets_an_input_error():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    with pytest.raises(lumos.InputError, match="fails on its own example_inputs.*dtype"):
        lumos.sparsify(model, torch.randint(0, 3, (4, 4)))


def test_misuse_gets_lumos_errors_that_name_the_fix():
    sm = lumos.sparsify(MLP(), _x())
    with pytest.raises(lumos.ConfigurationError, match="already a lumos.SparseModel"):
        lumos.sparsify(sm, _x())
    with pytest.raises(lumos.ConfigurationError, match=r"_orig_mod"):
        lumos.sparsify(torch.compile(MLP()), _x())
    with pytest.raises(lumos.ConfigurationError, match=r"repeat \['a'\]"):
        lumos.sparsify(MLP(), _x(), feature_names=["a", "a", "b", "c", "d", "e"])
    for wrong in (torch.randint(0, 3, (4, 6)), torch.randn(4, 6, dtype=torch.float64)):
        with pytest.raises(lumos.InputError, match=rf"dtype {wrong.dtype}.*x\.to\(torch.float32\)"):
            sm(wrong)
    assert sm.double()(torch.randn(4, 6, dtype=torch.float64)).dtype == torch.float64


class Conditioned(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 16)
        self.b = nn.Linear(3, 16)
        self.out = nn.Linear(16, 1)

    def forward(self, x, cond=None, scale: float = 1.0):
        h = self.a(x)
        if cond is not None:
            h = h + self.b(cond)
        return self.out(F.relu(h)) * scale


def test_an_optional_argument_left_at_none_is_traced_as_none():
    x = _x()
    model = Conditioned()
    sm = lumos.sparsify(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(sm.eval()(x), model(x))
        torch.testing.assert_close(sm(x, scale=2.0), 2.0 * model(x))
        torch.testing.assert_close(sm.compact()(x), model(x))
    assert set(sm.selected_features()) == {"x"}
    with pytest.raises(lumos.InputError, match="'cond' was None in example_inputs"):
        sm(x, torch.randn(32, 3))
    both = lumos.sparsify(Conditioned(), {"x": x, "cond": torch.randn(32, 3)})
    assert set(both.selected_features()) == {"x", "cond"}


def test_train_names_batches_that_are_not_pairs_and_targets_of_another_shape():
    from torch.utils.data import DataLoader, TensorDataset

    x, y = _x(64), torch.randn(64, 1)
    sm = lumos.sparsify(MLP(out=1), x, budget=0.5)
    triples = DataLoader(TensorDataset(x, y, y), batch_size=16)
    with pytest.raises(lumos.InputError, match="pair \\(inputs, targets\\), got a list of 3"):
        train(sm, triples, epochs=1, progress=False)
    with pytest.raises(lumos.InputError, match=r"predicts shape \(16, 1\).*\(16,\).*view\(-1, 1\)"):
        train(sm, (x, y.view(-1)), epochs=1, batch_size=16, progress=False)
    train(sm, (x, y), epochs=1, batch_size=16, progress=False)  # the right shapes train


def test_numpy_and_pandas_inputs_are_told_how_to_convert():
    np = pytest.importorskip("numpy")
    from lumos.training import train

    array = np.random.default_rng(0).normal(size=(8, 6))
    with pytest.raises(lumos.ConfigurationError, match=r"torch\.from_numpy\(x\)\.float\(\)"):
        lumos.sparsify(MLP(d=6), array, budget=0.5)
    sm = lumos.sparsify(MLP(d=6), _x(), budget=0.5)
    with pytest.raises(lumos.InputError, match=r"torch\.from_numpy"):
        sm(array)
    with pytest.raises(lumos.ConfigurationError, match=r"ndarray.*torch\.from_numpy"):
        train(sm, (array, array[:, :1]), epochs=1)
    pd = pytest.importorskip("pandas")
    with pytest.raises(lumos.ConfigurationError, match=r"df\.to_numpy\(\)"):
        lumos.sparsify(MLP(d=6), pd.DataFrame(array), budget=0.5)


@pytest.mark.parametrize("norm", [torch.nn.utils.weight_norm, torch.nn.utils.spectral_norm],
                         ids=["weight_norm", "spectral_norm"])
def test_hook_made_weights_are_kept_whole_and_compact_after_training(norm):
    """The hook-based weight_norm / spectral_norm rebuild ``weight`` before every call: its
    layer is kept whole (slicing ``weight`` would be undone), the rest is gated, and compact()
    copies the model although ``weight`` is not a graph leaf after a training step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), norm(nn.Linear(32, 16)), nn.ReLU(),
                          nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
    x = torch.randn(24, 6)
    sm = lumos.sparsify(model, (x,), budget=0.6)
    optimizer = torch.optim.Adam(sm.parameters(), 1e-2)
    for _ in range(5):
        optimizer.zero_grad()
        (sm(x).pow(2).mean() + sm.penalty()).backward()
        optimizer.step()
    sm.enforce_budget(0.6)
    sm.eval()
    assert "made by a forward pre-hook" in sm.report()
    small = sm.compact()
    torch.testing.assert_close(small(x), sm(x))
    assert small.get_submodule("2").weight.shape == (16, 32)  # the normed layer, whole
    assert sm.kept_fraction() < 0.9  # the layers after it are still gated


def test_copy_model_copies_hook_made_weights_and_leaves_the_model_untouched():
    from lumos.copying import copy_model

    layer = torch.nn.utils.weight_norm(nn.Linear(3, 2))
    y = layer(torch.randn(4, 3))
    layer.kept_for_a_loss = y  # an activation a training loop reads later (not a leaf)
    twin = copy_model(layer)
    assert layer.weight.grad_fn is not None and layer.kept_for_a_loss is y
    assert twin.weight.grad_fn is None and twin.weight is not layer.weight
    x = torch.randn(5, 3)
    torch.testing.assert_close(twin(x), layer(x))
