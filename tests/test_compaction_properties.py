"""Property tests: compaction of random fully-connected models is exact and its counts are right.

A random model is a chain of blocks (Linear + activation, nested Sequentials, sums, products and
concatenations of two branches, a learnable per-channel scale, a residual loop over a
ModuleList, a constructor-flag branch, a module called twice, DenseNet-style concatenation with
the block input) ending in a Linear head. Gates are set to random log-alpha in [-4, 4], so about
a fifth are closed, a fifth fully open and the rest fractional.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

import lumos

RTOL = ATOL = 1e-5
ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
    "none": nn.Identity,
}
FUNCTIONAL = {
    "relu": torch.relu,
    "tanh": torch.tanh,
    "gelu": F.gelu,
    "sigmoid": torch.sigmoid,
    "silu": F.silu,
    "none": lambda t: t,
}


# ---- blocks -----------------------------------------------------------------------------------
class Dense(nn.Module):
    """Linear -> activation (module) -> optional Dropout, as a plain Sequential."""

    def __init__(self, w: int, h: int, act: str, drop: bool) -> None:
        super().__init__()
        layers = [nn.Linear(w, h, bias=(w + h) % 3 != 0), ACTIVATIONS[act]()]
        if drop:
            layers.append(nn.Dropout(0.3))
        self.net = nn.Sequential(*layers)
        self.width = h

    def forward(self, x):
        return self.net(x)


class Nested(nn.Module):
    """Sequential(Linear, act, Sequential(Linear, act, Dropout))."""

    def __init__(self, w: int, h: int, act: str, drop: bool) -> None:
        super().__init__()
        inner = [nn.Linear(h, h), ACTIVATIONS[act]()] + ([nn.Dropout(0.2)] if drop else [])
        self.net = nn.Sequential(nn.Linear(w, h), nn.SiLU(), nn.Sequential(*inner))
        self.width = h

    def forward(self, x):
        return self.net(x)


class Sum(nn.Module):
    """act(a(x)) + b(x): two branches tied channel by channel."""

    def __init__(self, w: int, h: int, act: str, drop: bool) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(w, h), nn.Linear(w, h)
        self.act = act
        self.width = h

    def forward(self, x):
        return FUNCTIONAL[self.act](self.a(x)) + self.b(x)


class Gate(nn.Module):
    """a(x) * sigmoid(b(x)): multiplicative gating between branches."""

    def __init__(self, w: int, h: int, act: str, drop: bool) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(w, h), nn.Linear(w, h)
        self.act = ACTIVATIONS[act]()
        self.width = h

    def forward(self, x):
        return self.act(self.a(x)) * torch.sigmoid(self.b(x))


class Cat(nn.Module):
    """cat([act(a(x)), b(x)], -1): two hidden branches side by side."""

    def __init__(self, w: int, h: int, act: str, drop: bool) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(w, h), nn.Linear(w, h % 3 + 1)
        self.act = act
        self.width = h + h % 3 + 1

    def forward(self, x):
        return torch.cat([FUNCTIONAL[self.act](self.a(x)), self.b(x)], dim=-1)


class Scale(nn.Module):
    """act(fc(x)) * scale with a learnable per-channel scale of shape [h]."""

    def __init__(self, w: int, h: int, act: str, drop: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(w, h)
        self.act = ACTIVATIONS[act]()
        self.scale = nn.Parameter(torch.rand(h) + 0.5)
        self.width = h

    def forward(self, x):
        return self.act(self.fc(x)) * self.scale


class Loop(nn.Module):
    """Python loop over a ModuleList with residual updates; `if self.flag` picks a branch."""

    def __init__(self, w: int, h: int, act: str, drop: bool) -> None:
        super().__init__()
        self.inp = nn.Linear(w, h)
        self.layers = nn.ModuleList([nn.Linear(h, h) for _ in range(2 if drop else 1)])
        self.act = act
        self.flag = drop
        self.width = h

    def forward(self, x):
        h = self.inp(x)
        for layer in self.layers:
            h = h + FUNCTIONAL[self.act](layer(h))
        if self.flag:  # noqa: SIM108 - Python control flow on a constructor flag, on purpose
            h = torch.tanh(h)
        else:
            h = h * 0.5
        return h


class Residual(nn.Module):
    """x + act(fc(x)) with fc square: the block input's channels join the fc's outputs."""

    def __init__(self, w: int, h: int, act: str, drop: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(w, w)
        self.act = act
        self.width = w

    def forward(self, x):
        return x + FUNCTIONAL[self.act](self.fc(x))


class Concat(nn.Module):
    """DenseNet style: cat([x, act(fc(x))], -1)."""

    def __init__(self, w: int, h: int, act: str, drop: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(w, h)
        self.act = ACTIVATIONS[act]()
        self.width = w + h

    def forward(self, x):
        return torch.cat([x, self.act(self.fc(x))], dim=-1)


class InScale(nn.Module):
    """fc(x * scale) / (1 + sigmoid(g(x))): a per-channel scale on the block input, a quotient."""

    def __init__(self, w: int, h: int, act: str, drop: bool) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.rand(w) + 0.5)
        self.fc = nn.Linear(w, h, bias=drop)
        self.g = nn.Linear(w, h, bias=not drop)
        self.act = act
        self.width = h

    def forward(self, x):
        y = self.fc(x * self.scale)
        return FUNCTIONAL[self.act](y) / (1.0 + torch.sigmoid(self.g(x)))


class Shared(nn.Module):
    """One Linear called twice: shared(act(shared(inp(x))))."""

    def __init__(self, w: int, h: int, act: str, drop: bool) -> None:
        super().__init__()
        self.inp = nn.Linear(w, h)
        self.shared = nn.Linear(h, h)
        self.act = ACTIVATIONS[act]()
        self.width = h

    def forward(self, x):
        return self.shared(self.act(self.shared(self.inp(x))))


BLOCKS = {
    "dense": Dense,
    "nested": Nested,
    "sum": Sum,
    "gate": Gate,
    "cat": Cat,
    "scale": Scale,
    "loop": Loop,
    "residual": Residual,
    "concat": Concat,
    "shared": Shared,
    "inscale": InScale,
}


class RandomNet(nn.Module):
    def __init__(self, d: int, blocks: list, out: int) -> None:
        super().__init__()
        mods = []
        w = d
        for kind, h, act, drop in blocks:
            block = BLOCKS[kind](w, h, act, drop)
            mods.append(block)
            w = block.width
        self.blocks = nn.ModuleList(mods)
        self.head = nn.Linear(w, out)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


@dataclass
class Case:
    model: nn.Module
    x: torch.Tensor
    sm: lumos.SparseModel


block_specs = st.tuples(
    st.sampled_from(sorted(BLOCKS)),
    st.integers(1, 6),
    st.sampled_from(sorted(ACTIVATIONS)),
    st.booleans(),
)
net_specs = st.fixed_dictionaries(
    {
        "d": st.integers(1, 6),
        "out": st.integers(1, 3),
        "blocks": st.lists(block_specs, min_size=1, max_size=4),
        "lead": st.sampled_from([(7,), (3, 4), (2, 1, 3)]),
        "seed": st.integers(0, 2**16),
        "train_mode": st.booleans(),
    }
)
SETTINGS = {
    "deadline": None,
    "derandomize": True,  # the same examples on every run: CI never flakes
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}


def build(spec: dict, low: float = -4.0, high: float = 4.0, randomize: bool = True) -> Case:
    torch.manual_seed(spec["seed"])
    model = RandomNet(spec["d"], spec["blocks"], spec["out"])
    model.train(spec["train_mode"])  # the mode at sparsify time must not matter
    x = torch.randn(*spec["lead"], spec["d"])
    sm = lumos.sparsify(model, x, budget=0.5)
    model.eval()
    if randomize:
        with torch.no_grad():
            sm.gates.log_alpha.uniform_(low, high)
    sm.eval()
    return Case(model, x, sm)


def _check_linears_consistent(module: nn.Module) -> None:
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Linear):
            assert (sub.out_features, sub.in_features) == tuple(sub.weight.shape), name
            if sub.bias is not None:
                assert sub.bias.shape == (sub.out_features,), name


def _close(actual, expected) -> None:
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL)


# ---- properties -------------------------------------------------------------------------------
@settings(max_examples=120, **SETTINGS)
@given(spec=net_specs)
def test_compacted_model_equals_gated_model_and_counts_match(spec):
    case = build(spec)
    sm, x, model = case.sm, case.x, case.model
    with torch.no_grad():
        expected = sm(x)
        small = sm.compact()
        got = small(x)
        # (f) outputs are never removed
        assert got.shape == expected.shape == model(x).shape
        # (a) exact at the deterministic gates, fractional ones folded
        _close(got, expected)
        # (b) the variant that takes only the kept features
        kept = sm.selected_features()["x"]
        assert kept == sorted(kept) and len(set(kept)) == len(kept)
        selected = sm.compact(inputs="selected")
        _close(selected(x[..., kept]), expected)
    _check_linears_consistent(small)
    _check_linears_consistent(selected)
    # (c) the cost model predicts the compacted model exactly
    counts = sm.compacted_counts()
    assert lumos.count_params(small) == counts["params"]
    assert lumos.count_params(selected) == counts["params"]
    assert lumos.count_flops(small, x) == counts["flops"]
    assert lumos.count_flops(selected, x[..., kept]) == counts["flops"]
    # (e) closed gates make the model smaller
    closed = ~sm.kept_mask()
    if bool(closed.any()):
        assert lumos.count_params(small) < lumos.count_params(model)
        assert counts["params"] < sm.dense_params
    else:
        assert lumos.count_params(small) == lumos.count_params(model)
    # compaction does not touch the sparse model or the original
    assert lumos.count_params(model) == sm.dense_params
    with torch.no_grad():
        _close(sm(x), expected)


@settings(max_examples=60, **SETTINGS)
@given(spec=net_specs)
def test_dense_counts_and_untrained_compaction_equal_the_original(spec):
    case = build(spec, randomize=False)
    sm, x, model = case.sm, case.x, case.model
    # (d) all gates open: the cost model's dense totals are the real model's
    assert bool((sm.gates.deterministic() == 1).all())
    assert sm.dense_params == lumos.count_params(model)
    assert sm.dense_flops == lumos.count_flops(model, x)
    assert sm.compacted_counts() == {"params": sm.dense_params, "flops": sm.dense_flops}
    # compaction right after sparsify is the original model
    small = sm.compact()
    assert lumos.count_params(small) == lumos.count_params(model)
    assert lumos.count_flops(small, x) == lumos.count_flops(model, x)
    with torch.no_grad():
        reference = model(x)
        _close(sm(x), reference)
        _close(small(x), reference)
    assert sm.selected_features()["x"] == list(range(spec["d"]))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:The TorchScript type system:UserWarning")
@settings(max_examples=15, **SETTINGS)
@given(spec=net_specs)
def test_compacted_model_survives_save_load_and_torchscript(spec, tmp_path_factory):
    case = build(spec)
    sm, x = case.sm, case.x
    kept = sm.selected_features()["x"]
    for mode, inp in (("full", x), ("selected", x[..., kept])):
        small = sm.compact(inputs=mode)
        with torch.no_grad():
            expected = small(inp)
        path = tmp_path_factory.mktemp("saved") / f"compact_{mode}.pt"
        torch.save(small, path)
        loaded = torch.load(path, weights_only=False)
        scripted = torch.jit.script(small)
        with torch.no_grad():
            _close(loaded(inp), expected)
            _close(scripted(inp), expected)
        # the plain state_dict reloads into the same GraphModule code
        state = {k: v.clone() for k, v in small.state_dict().items()}
        again = sm.compact(inputs=mode)
        again.load_state_dict(state)
        with torch.no_grad():
            _close(again(inp), expected)


@settings(max_examples=50, **SETTINGS)
@given(spec=net_specs, lam_mode=st.booleans())
def test_penalty_gradient_reaches_every_gate(spec, lam_mode):
    if lam_mode:
        torch.manual_seed(spec["seed"])
        model = RandomNet(spec["d"], spec["blocks"], spec["out"])
        sm = lumos.sparsify(model, torch.randn(*spec["lead"], spec["d"]), lam=1.0)
        with torch.no_grad():
            sm.gates.log_alpha.uniform_(-4.0, 4.0)
    else:
        # budget mode: past warm-up, a positive multiplier and over budget (mostly open gates)
        sm = build(spec, low=1.0, high=4.0).sm
        sm.set_progress(0.5)  # target at the budget, before it is enforced
        sm.controller.lambda1 = 1.0
        assert float(sm.expected_fraction().detach()) > 0.5
    sm.train()
    assume(sm.gates.num_gates > 0)  # some random nets pin every channel (nothing to gate)
    sm.penalty().backward()
    grad = sm.gates.log_alpha.grad
    assert grad is not None
    assert torch.isfinite(grad).all()
    assert (grad != 0).all(), grad


# ---- deterministic edge cases -----------------------------------------------------------------
class MLP(nn.Module):
    def __init__(self, d: int = 5, h: int = 8, out: int = 2, act: type = nn.Sigmoid) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d, h)
        self.act = act()
        self.fc2 = nn.Linear(h, h)
        self.head = nn.Linear(h, out)

    def forward(self, x):
        return self.head(torch.tanh(self.fc2(self.act(self.fc1(x)))))


def _set_group(sm: lumos.SparseModel, name: str, value: float) -> None:
    group = next(g for g in sm.graph_info.groups if g.name == name)
    with torch.no_grad():
        sm.gates.log_alpha[group.offset : group.offset + group.size] = value


def _mlp_case(seed: int = 0) -> Case:
    torch.manual_seed(seed)
    model = MLP().eval()
    x = torch.randn(16, 5)
    sm = lumos.sparsify(model, x, budget=0.5)
    with torch.no_grad():
        sm.gates.log_alpha.uniform_(-4, 4)
    return Case(model, x, sm.eval())


def _assert_exact(case: Case) -> tuple[nn.Module, nn.Module]:
    sm, x = case.sm, case.x
    kept = sm.selected_features()["x"]
    with torch.no_grad():
        expected = sm(x)
        full, selected = sm.compact(), sm.compact(inputs="selected")
        _close(full(x), expected)
        _close(selected(x[..., kept]), expected)
    counts = sm.compacted_counts()
    assert lumos.count_params(full) == counts["params"]
    assert lumos.count_flops(full, x) == counts["flops"]
    return full, selected


def test_hidden_layer_with_every_gate_closed_compacts_to_width_zero():
    case = _mlp_case()
    _set_group(case.sm, "fc1", -10.0)
    full, _ = _assert_exact(case)
    assert full.fc1.out_features == 0 and full.fc2.in_features == 0
    # fc2 then only emits tanh(bias), and sigmoid(0) = 0.5 never leaks through the closed gates
    with torch.no_grad():
        out = full(case.x)
        assert torch.allclose(out, out[:1].expand_as(out))


def test_every_hidden_gate_closed():
    case = _mlp_case(1)
    _set_group(case.sm, "fc1", -10.0)
    _set_group(case.sm, "fc2", -10.0)
    full, selected = _assert_exact(case)
    assert full.fc2.out_features == 0 and full.head.in_features == 0
    assert lumos.count_params(full) == full.head.out_features  # only the head's bias


def test_every_feature_gate_closed():
    case = _mlp_case(2)
    _set_group(case.sm, "x", -10.0)
    assert case.sm.selected_features() == {"x": []}
    full, selected = _assert_exact(case)
    assert full.fc1.in_features == 0
    with torch.no_grad():
        assert selected(case.x[..., []]).shape == (16, 2)
        # the output no longer depends on the input at all
        _close(full(case.x), full(torch.randn_like(case.x)))


def test_compacted_model_is_independent_of_further_training():
    case = _mlp_case(6)
    sm, x = case.sm, case.x
    small = sm.compact()
    with torch.no_grad():
        before = small(x).clone()
    sm.train()
    opt = torch.optim.SGD(sm.parameter_groups(lr=0.5), lr=0.5)
    loss = sm(x).pow(2).mean() + sm.penalty()
    loss.backward()
    opt.step()
    with torch.no_grad():
        _close(small(x), before)
        assert not torch.allclose(sm.eval()(x), before)


class InputResidual(nn.Module):
    """The input is added straight to the output: its features can never be pruned."""

    def __init__(self, d: int = 4, h: int = 6) -> None:
        super().__init__()
        self.fc = nn.Linear(d, h)
        self.head = nn.Linear(h, d)

    def forward(self, x):
        return x + self.head(torch.sigmoid(self.fc(x)))


def test_input_residual_to_output_keeps_features_ungated():
    torch.manual_seed(3)
    model = InputResidual().eval()
    x = torch.randn(10, 4)
    sm = lumos.sparsify(model, x, budget=0.5)
    kinds = {g.kind for g in sm.graph_info.groups}
    assert "feature" not in kinds
    assert [g.name for g in sm.graph_info.groups] == ["fc"]
    with torch.no_grad():
        sm.gates.log_alpha.fill_(-10.0)  # close everything that can be closed
    sm.eval()
    assert sm.selected_features() == {"x": [0, 1, 2, 3]}
    full, selected = _assert_exact(Case(model, x, sm))
    assert full.fc.out_features == 0 and full.fc.in_features == 4
    assert full.head.out_features == 4
    with torch.no_grad():
        _close(full(x), x + model.head.bias)


@pytest.mark.parametrize("act", [nn.ReLU, nn.Sigmoid, nn.GELU])
def test_compact_right_after_sparsify_is_the_original(act):
    torch.manual_seed(4)
    model = MLP(act=act).eval()
    x = torch.randn(3, 7, 5)
    sm = lumos.sparsify(model, x, budget=0.5)
    small = sm.compact()
    assert lumos.count_params(small) == lumos.count_params(model)
    with torch.no_grad():
        _close(small(x), model(x))
        _close(sm.eval()(x), model(x))


def test_init_keep_095_starts_fractional_warns_and_compaction_still_equals_the_gated_model():
    torch.manual_seed(5)
    model = MLP().eval()
    x = torch.randn(16, 5)
    with pytest.warns(lumos.LumosWarning, match="init_keep_probability"):
        sm = lumos.sparsify(model, x, budget=0.5,
                            gates=lumos.GateOptions(init_keep_probability=0.95))
    small = sm.compact()
    assert lumos.count_params(small) == lumos.count_params(model)  # nothing closed yet
    with torch.no_grad():
        _close(small(x), sm.eval()(x))
        assert not torch.allclose(small(x), model(x))  # fractional gates are folded in
