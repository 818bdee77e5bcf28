"""The rule registry: one way to register, errors for bad targets, scoping, the ready-made rules
and the worked example of ``docs/custom_layers.md``."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import lumos
import lumos.testing
from lumos.rules import REGISTRY
from lumos.testing import assert_compacts_exactly

DOC = Path(__file__).resolve().parents[1] / "docs" / "custom_layers.md"

pytestmark = pytest.mark.filterwarnings("ignore::lumos.LumosWarning")


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every row on one thread without oneDNN (tests/conftest.py)."""


def _passthrough(ctx, node, module):
    """An element-wise rule: the output carries the first argument's channels."""
    return ctx.tensor_info(node.args[0])


def _other_rule(ctx, node, module):
    return ctx.tensor_info(node.args[0])


class Twice(nn.Module):
    def forward(self, x):
        return 2 * x


def _gated_groups(sm: lumos.SparseModel) -> set[str]:
    return {g.name for g in sm.graph_info.groups}


# ---- registering twice, override, scoped -------------------------------------------------------
@pytest.mark.parametrize("target", [Twice, torch.special.sinc, "sinc"],
                         ids=["module", "function", "method"])
def test_registering_twice_raises_unless_override(target):
    with lumos.rules.scoped():
        first = REGISTRY.register(target, _passthrough)
        with pytest.raises(lumos.ConfigurationError, match="already registered.*override=True"):
            REGISTRY.register(target, _other_rule)
        with pytest.raises(lumos.ConfigurationError, match="already registered"):
            lumos.register_rule(target, _other_rule)
        assert REGISTRY.entry(first.kind, target).propagate is _passthrough  # unchanged
        replaced = REGISTRY.register(target, _other_rule, override=True)
        assert replaced.kind == first.kind
        assert REGISTRY.entry(first.kind, target).propagate is _other_rule
    assert REGISTRY.entry(first.kind, target) is None


def test_registering_a_builtin_op_twice_raises():
    with pytest.raises(lumos.ConfigurationError, match="already registered"):
        lumos.register_rule(nn.Linear, _passthrough)
    with pytest.raises(lumos.ConfigurationError, match="already registered"):
        lumos.register_rule("view", _passthrough)


def test_trace_forward_twice_raises_unless_override():
    def forward(module, x):
        return 2 * x

    with lumos.rules.scoped():
        lumos.rules.register_trace_forward(Twice, forward)
        with pytest.raises(lumos.ConfigurationError, match="override=True"):
            lumos.rules.register_trace_forward(Twice, forward)
        lumos.rules.register_trace_forward(Twice, forward, override=True)
    assert Twice not in REGISTRY.trace_forwards()


def test_scoped_undoes_registrations_and_overrides_even_when_the_block_raises():
    entries = REGISTRY.entries()
    relu = REGISTRY.entry("module", nn.ReLU)
    forwards = REGISTRY.trace_forwards()
    with pytest.raises(RuntimeError, match="inside the block"), lumos.rules.scoped():
        lumos.register_rule(Twice, _passthrough)
        lumos.register_rule("sinc", _passthrough)
        lumos.register_rule(nn.ReLU, _other_rule, override=True)
        REGISTRY.register(torch.special.sinc, _passthrough, leaf=True)
        lumos.rules.register_trace_forward(Twice, lambda m, x: 2 * x)
        lumos.rules.register_trace_forward(nn.TransformerEncoderLayer,
                                           lambda m, src, *a, **k: src, override=True)
        REGISTRY.register_opaque_base(Twice)
        assert REGISTRY.entry("module", nn.ReLU).propagate is _other_rule
        raise RuntimeError("inside the block")
    assert REGISTRY.entries() == entries
    assert REGISTRY.entry("module", nn.ReLU) is relu
    assert REGISTRY.entry("module", Twice) is None
    assert REGISTRY.entry("method", "sinc") is None
    assert REGISTRY.entry("function", torch.special.sinc) is None
    assert torch.special.sinc not in REGISTRY.leaf_functions()
    assert REGISTRY.trace_forwards() == forwards
    assert not REGISTRY.is_leaf(Twice())  # the opaque base is gone too


def test_scoped_blocks_nest():
    with lumos.rules.scoped():
        lumos.register_rule(Twice, _passthrough)
        with lumos.rules.scoped():
            lumos.register_rule(Twice, _other_rule, override=True)
            lumos.register_rule("sinc", _passthrough)
        assert REGISTRY.entry("module", Twice).propagate is _passthrough
        assert REGISTRY.entry("method", "sinc") is None
    assert REGISTRY.entry("module", Twice) is None


# ---- bad targets ------------------------------------------------------------------------------
class NotAModule:
    pass


@pytest.mark.parametrize(
    ("target", "rule", "match"),
    [
        (nn.ReLU(), _passthrough, "class, not an instance"),
        (NotAModule, _passthrough, "NotAModule"),
        (int, _passthrough, r"\bint\b"),
        ("not a name", _passthrough, "not a method name"),
        ("x.view", _passthrough, "not a method name"),
        (42, _passthrough, "cannot register a rule"),
        (Twice, 42, "must be callable"),
        ("sinc", "not callable", "must be callable"),
    ],
    ids=["instance", "plain-class", "builtin-class", "spaces", "dotted", "number",
         "rule-number", "rule-string"],
)
def test_bad_targets_and_rules_raise_configuration_errors(target, rule, match):
    with lumos.rules.scoped():
        entries = REGISTRY.entries()
        with pytest.raises(lumos.ConfigurationError, match=match):
            lumos.register_rule(target, rule)
        with pytest.raises(lumos.ConfigurationError, match=match):
            REGISTRY.register(target, rule)
        assert REGISTRY.entries() == entries


def test_layer_options_on_functions_and_leaf_on_layers_raise():
    with lumos.rules.scoped():
        with pytest.raises(lumos.ConfigurationError, match="describe layers"):
            lumos.register_rule(torch.special.sinc, _passthrough, resize=lambda m: None)
        with pytest.raises(lumos.ConfigurationError, match="describe layers"):
            lumos.register_rule("sinc", _passthrough, input_dim=-1)
        with pytest.raises(lumos.ConfigurationError, match="leaf=True"):
            lumos.register_rule(Twice, _passthrough, leaf=True)
        with pytest.raises(lumos.ConfigurationError, match="leaf=True"):
            lumos.register_rule("sinc", _passthrough, leaf=True)
        with pytest.raises(lumos.ConfigurationError, match="nn.Module subclass"):
            lumos.rules.register_trace_forward(NotAModule, lambda m, x: x)
        with pytest.raises(lumos.ConfigurationError, match="nn.Module subclass"):
            lumos.rules.register_trace_forward(nn.ReLU(), lambda m, x: x)


def test_register_rule_as_a_decorator_returns_the_rule():
    with lumos.rules.scoped():
        @lumos.register_rule(Twice)
        def rule(ctx, node, module):
            return ctx.tensor_info(node.args[0])

        assert callable(rule) and REGISTRY.entry("module", Twice).propagate is rule


# ---- a function and a method rule are used ------------------------------------------------------
def wobble(x):
    """Element-wise, but fx cannot trace into it (it branches on a value)."""
    if float(x.detach().abs().max()) > 1e6:
        return x
    return x * torch.sigmoid(x)


class CustomOps(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        h = wobble(self.a(x))  # a module global: fx can keep it as one node
        return self.head(self.b(h).sinc())


@pytest.mark.parametrize("how", ["register_rule", "register_leaf_function"])
def test_a_leaf_function_rule_and_a_method_rule_are_used(how):
    x = torch.randn(7, 4)
    with pytest.raises(lumos.UntraceableModelError):
        lumos.sparsify(CustomOps(), x, budget=0.5)  # fx traces into wobble and fails
    with lumos.rules.scoped():
        if how == "register_rule":
            lumos.register_rule(wobble, _passthrough, leaf=True)
        else:
            lumos.rules.register_leaf_function(wobble, _passthrough)
        sm_pinned = lumos.sparsify(CustomOps(), x, budget=0.5)
        assert _gated_groups(sm_pinned) == {"x", "a"}  # .sinc() has no rule: b is kept whole
        lumos.register_rule("sinc", _passthrough)
        torch.manual_seed(0)
        check = assert_compacts_exactly(CustomOps(), x, batch_sizes=[1, 3])
        sm = check.sparse_model
    used = {(e.kind, e.key) for e in sm.graph_info.rules_used.values()}
    assert ("function", wobble) in used and ("method", "sinc") in used
    calls = [n for n in sm.model.graph.nodes if n.target is wobble]
    assert len(calls) == 1 and calls[0].op == "call_function"
    assert _gated_groups(sm) == {"x", "a", "b"}
    assert REGISTRY.entry("function", wobble) is None  # scoped


# ---- the ready-made rules and substitute forwards ----------------------------------------------
class MyDense(nn.Module):
    """``x @ W.T + b`` with its own parameter names and size attributes."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        self.kernel = nn.Parameter(torch.randn(d_out, d_in) / d_in**0.5)
        self.offset = nn.Parameter(torch.randn(d_out) * 0.1)

    def forward(self, x):
        return x @ self.kernel.T + self.offset


def _resize_dense(layer: MyDense) -> None:
    layer.d_out, layer.d_in = layer.kernel.shape


def test_dense_rule():
    model = nn.Sequential(MyDense(4, 8), nn.Tanh(), MyDense(8, 6), nn.ReLU(), nn.Linear(6, 2))
    x = torch.randn(5, 3, 4)
    with lumos.rules.scoped():
        lumos.register_rule(MyDense, lumos.rules.dense(weight="kernel", bias="offset"),
                            resize=_resize_dense, input_dim=-1)
        check = assert_compacts_exactly(model, x, batch_sizes=[1, 2])
        sm = check.sparse_model
        assert _gated_groups(sm) == {"input", "0", "2"}  # nn.Sequential names its input "input"
        with torch.no_grad():
            sm.gates.log_alpha.fill_(10.0)
            group = next(g for g in sm.graph_info.groups if g.name == "0")
            sm.gates.log_alpha[group.offset] = -10.0  # one neuron of the first MyDense
        small = sm.eval().compact()
    first, second = small.get_submodule("0"), small.get_submodule("2")
    assert (first.d_out, first.d_in) == (7, 4) == tuple(first.kernel.shape)
    assert second.d_in == 7 and first.offset.shape == (7,)


class PerChannel(nn.Module):
    """``x * scale + shift`` per channel, on the last dim or (``conv=True``) on dim 1."""

    def __init__(self, channels: int, conv: bool = False) -> None:
        super().__init__()
        self.conv = conv
        self.scale = nn.Parameter(torch.rand(channels) + 0.5)
        self.shift = nn.Parameter(torch.randn(channels))

    def forward(self, x):
        if self.conv:
            return x * self.scale.view(1, -1, 1, 1) + self.shift.view(1, -1, 1, 1)
        return x * self.scale + self.shift


@pytest.mark.parametrize("conv", [False, True], ids=["features", "conv-channels"])
def test_channelwise_rule(conv):
    if conv:
        model = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), PerChannel(5, conv=True),
                              nn.ReLU(), nn.Conv2d(5, 2, 1))
        x, channel_dim = torch.randn(2, 3, 6, 6), 1
    else:
        model = nn.Sequential(nn.Linear(4, 6), PerChannel(6), nn.Sigmoid(), nn.Linear(6, 2))
        x, channel_dim = torch.randn(5, 4), -1
    with lumos.rules.scoped():
        lumos.register_rule(PerChannel, lumos.rules.channelwise("scale", "shift",
                                                                channel_dim=channel_dim))
        check = assert_compacts_exactly(model, x, batch_sizes=[1, 3])
        assert "0" in _gated_groups(check.sparse_model)
        # the per-channel parameters are sliced with the channels
        removed = [s for s in check.states if s.params < lumos.count_params(model)]
        assert removed


def test_channelwise_on_the_wrong_dim_pins():
    model = nn.Sequential(nn.Linear(4, 6), PerChannel(6), nn.Linear(6, 2))
    with lumos.rules.scoped():
        lumos.register_rule(PerChannel, lumos.rules.channelwise("scale", "shift", channel_dim=0))
        check = assert_compacts_exactly(model, torch.randn(6, 4))
    assert _gated_groups(check.sparse_model) == {"input"}  # "0" is kept whole


class Moody(nn.Module):
    """Data-dependent control flow: fx cannot trace it."""

    def forward(self, x):
        if x.sum() > 0:
            return x * 2.0
        return torch.flip(x, dims=[-1])


def test_keep_whole_rule():
    model = nn.Sequential(nn.Linear(4, 6), Moody(), nn.Linear(6, 2))
    x = torch.randn(5, 4)
    with pytest.raises(lumos.UntraceableModelError):
        lumos.sparsify(model, x, budget=0.5)
    with lumos.rules.scoped():
        lumos.register_rule(Moody, lumos.rules.keep_whole)
        check = assert_compacts_exactly(model, x, batch_sizes=[2])
        sm = check.sparse_model
    assert _gated_groups(sm) == {"input"}  # only the features: what reaches Moody is kept whole
    assert "registered as kept whole" in sm.report()


class Untraceable(nn.Module):
    """An MLP block whose forward fx cannot follow; its maths is plain torch."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(6, 10)
        self.down = nn.Linear(10, 6)

    def forward(self, x):
        if x.abs().max() > 1e6:  # a guard fx cannot trace
            raise ValueError("diverged")
        return x + self.down(torch.relu(self.up(x)))


def _untraceable_forward(module: Untraceable, x):
    return x + module.down(torch.relu(module.up(x)))


def test_register_trace_forward():
    model = nn.Sequential(nn.Linear(4, 6), Untraceable(), nn.GELU(), nn.Linear(6, 2))
    x = torch.randn(5, 4)
    with pytest.raises(lumos.UntraceableModelError):
        lumos.sparsify(model, x, budget=0.5)
    with lumos.rules.scoped():
        lumos.rules.register_trace_forward(Untraceable, _untraceable_forward)
        check = assert_compacts_exactly(model, x, batch_sizes=[1, 3])
    sm = check.sparse_model
    assert {"1.up", "0"} <= _gated_groups(sm)  # the hidden width inside it is gated
    used = {n.target for n in sm.model.graph.nodes if n.op in ("call_module", "get_attr")}
    assert "1" not in used and {"1.up", "1.down"} <= used  # traced through, not a leaf
    assert Untraceable not in REGISTRY.trace_forwards()


# ---- docs/custom_layers.md ----------------------------------------------------------------------
def _doc_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_custom_layers_doc_has_code():
    assert _doc_blocks(), f"no ```python blocks in {DOC}"


def test_custom_layers_doc_example_runs():
    namespace: dict = {}
    before = REGISTRY.entries()
    with lumos.rules.scoped():
        for i, block in enumerate(_doc_blocks()):
            exec(compile(block, f"{DOC.name} (python block {i + 1})", "exec"), namespace)
    assert REGISTRY.entries() == before  # the doc's registrations did not leak
    sm = namespace.get("sm")
    if isinstance(sm, lumos.SparseModel):
        assert sm.gates.num_gates > 0


def test_custom_layers_doc_example_runs_in_a_fresh_interpreter():
    """As a reader runs it: only ``import lumos`` (nothing the test session imported)."""
    code = "\n".join(["import lumos", "with lumos.rules.scoped():"] + [
        "    " + line for block in _doc_blocks() for line in block.splitlines()])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_a_rule_for_a_package_lumos_does_not_import_waits_until_the_package_is_imported():
    """``register_when_imported``: no import of the package by LUMOS; once the user's code has
    imported it, calls of the function are one graph node described by the rule."""
    import sys
    import types

    from lumos.topology.rules_elementwise import sample_wise

    package = types.ModuleType("lumos_test_fake_depth")

    def drop_sample(x, p, training):
        if not training:  # a branch on the mode: traced into, it would freeze the mode
            return x
        return x * (torch.rand(x.shape[0], 1) > p) / (1 - p)

    package.drop_sample = drop_sample
    drop_sample.__module__ = package.__name__

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 6), nn.Linear(6, 1)

        def forward(self, x):
            return self.b(sys.modules["lumos_test_fake_depth"].drop_sample(
                torch.relu(self.a(x)), 0.5, self.training))

    with REGISTRY.scoped():
        REGISTRY.register_when_imported(package.__name__, "drop_sample", sample_wise, leaf=True)
        REGISTRY.register_when_imported(package.__name__, "missing", sample_wise, leaf=True)
        assert drop_sample not in REGISTRY.leaf_functions()  # not imported yet
        sys.modules[package.__name__] = package
        try:
            assert drop_sample in REGISTRY.leaf_functions()
            sm = lumos.sparsify(Net(), torch.randn(8, 3), budget=0.5)
            assert any(n.target is drop_sample for n in sm.model.graph.nodes)
            assert "a" in {g.name for g in sm.graph_info.groups}
            sm.train()
            x = torch.randn(64, 3)
            assert not torch.equal(sm(x), sm(x))
            sm.eval()
            assert torch.equal(sm(x), sm(x))
        finally:
            del sys.modules[package.__name__]
    assert REGISTRY.entry("function", drop_sample) is None


def test_import_lumos_leaves_the_heavy_packages_alone():
    """Rules for torch-geometric, MONAI and neuraloperator wait until the user imports them,
    and dynamo is imported only when a gate bank is made: ``import lumos`` and ``lumos --help``
    stay close to ``import torch``."""
    code = ("import sys, lumos, lumos.cli; heavy = [m for m in ('torch_geometric', 'monai', "
            "'neuralop', 'torch._dynamo') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_graph_rules_load_when_torch_geometric_is_imported_after_lumos():
    pytest.importorskip("torch_geometric")
    code = textwrap.dedent("""
        import torch, lumos
        from lumos.rules import REGISTRY
        from torch import nn
        import torch_geometric.nn as g
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv, self.out = g.GCNConv(3, 8), nn.Linear(8, 1)
            def forward(self, x, edge_index):
                return self.out(torch.relu(self.conv(x, edge_index)))
        x, ei = torch.randn(6, 3), torch.tensor([[0, 1, 2, 3, 4], [1, 2, 3, 4, 5]])
        with REGISTRY.scoped():  # loaded inside a scope, undone by it ...
            assert "conv" in {gr.name for gr in lumos.sparsify(Net(), (x, ei)).graph_info.groups}
        assert REGISTRY.entry("module", g.GCNConv) is None
        sm = lumos.sparsify(Net(), (x, ei))  # ... and loaded again when needed
        assert "conv" in {gr.name for gr in sm.graph_info.groups}
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
