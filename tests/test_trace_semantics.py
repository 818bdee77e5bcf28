"""Trace semantics are run semantics: train/eval mode, absent arguments, annotations, and
compact() checking itself."""

from __future__ import annotations

import copy
import io
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lumos
from lumos import compaction, topology


class FunctionalDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(6, 16), nn.Linear(16, 1)

    def forward(self, x):
        return self.l2(F.dropout(torch.relu(self.l1(x)), 0.5, self.training))


class Noisy(nn.Module):
    """A custom branch on self.training (train-time noise)."""

    def forward(self, x):
        if self.training:
            return x + 0.5 * torch.randn_like(x)
        return x


class WithNoisyBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.noise, self.l2 = nn.Linear(6, 16), Noisy(), nn.Linear(16, 1)

    def forward(self, x):
        return self.l2(self.noise(torch.relu(self.l1(x))))


class RootBranches(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(6, 1)

    def forward(self, x):
        if self.training:
            x = x * 2
        return self.l1(x)


def _reload(module: nn.Module) -> nn.Module:
    buf = io.BytesIO()
    torch.save(module, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def _varies(module: nn.Module, x) -> bool:
    with torch.no_grad():
        return not torch.equal(module(x), module(x))


@pytest.mark.parametrize("cls", [FunctionalDropout, WithNoisyBlock])
@pytest.mark.parametrize("traced_in", ["train", "eval"])
def test_train_and_eval_mode_follow_the_model_not_the_trace(cls, traced_in):
    torch.manual_seed(0)
    x = torch.randn(32, 6)
    model = cls().train(traced_in == "train")
    sm = lumos.sparsify(model, x, budget=0.5)
    assert model.training == (traced_in == "train")  # the user's model is left as it was
    assert not hasattr(model, "mode_flag")
    assert _varies(sm.train(), x)
    assert not _varies(sm.eval(), x)
    small = sm.compact()
    assert not _varies(small.eval(), x)
    assert _varies(small.train(), x)
    torch.testing.assert_close(small.eval()(x), sm.eval()(x))
    again = _reload(small)
    assert not _varies(again.eval(), x)
    assert _varies(again.train(), x)
    torch.testing.assert_close(again.eval()(x), sm(x))


def test_a_module_that_branches_on_training_is_kept_whole_and_named():
    with pytest.warns(lumos.LumosWarning, match="'noise'.*branches on self.training"):
        sm = lumos.sparsify(WithNoisyBlock(), torch.randn(8, 6), budget=0.5)
    assert any(n.op == "call_module" and n.target == "noise" for n in sm.model.graph.nodes)


def test_the_root_branching_on_training_follows_the_mode_gated_and_compacted():
    x = torch.randn(8, 6)
    sm = lumos.sparsify(RootBranches(), x, budget=0.5)
    small = sm.eval().compact()
    with torch.no_grad():
        assert torch.allclose(small(x), sm(x), atol=1e-6)
        in_eval = small(2 * x)
        small.train()  # the original doubles its input in training: so does the compacted one
        assert torch.allclose(small(x), in_eval, atol=1e-6)
        assert not torch.allclose(small(x), small.eval()(x))
    assert "lumos" not in small.code.replace("lumos_", "")


class NoisyLatent(nn.Module):
    """A VAE-style root: sample in training, the mean at inference; a decoder after both."""

    def __init__(self, use_mean=True):
        super().__init__()
        self.use_mean = use_mean
        self.enc, self.mu, self.logvar = nn.Linear(6, 16), nn.Linear(16, 4), nn.Linear(16, 4)
        self.dec = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, x):
        h = torch.relu(self.enc(x))
        mu, logvar = self.mu(h), self.logvar(h)
        if not self.training and self.use_mean:
            z = mu
        else:
            std = torch.exp(0.5 * logvar)
            if self.training:
                std = torch.randn_like(std).mul_(std)
            z = std.add_(mu)
        return self.dec(z), mu


@pytest.mark.parametrize("use_mean", [True, False])
@pytest.mark.parametrize("start_training", [True, False])
def test_a_root_branching_on_training_is_one_graph_right_in_both_modes(use_mean, start_training):
    model = NoisyLatent(use_mean).train(start_training)
    x = torch.randn(5, 6)
    gm = topology.trace(model, example={"x": x})
    assert sum(n.target is torch.where for n in gm.graph.nodes) >= 1
    decoders = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == "dec.0"]
    assert len(decoders) == 1  # the decoder is computed once, on the latent the mode picks
    for training in (True, False):
        model.train(training)
        gm.train(training)
        torch.manual_seed(3)
        want = model(x)
        torch.manual_seed(3)
        got = gm(x)
        for a, b in zip(want, got):
            assert torch.equal(a, b), training
    reloaded = _reload(gm)
    for training in (True, False):
        reloaded.train(training)
        model.train(training)
        torch.manual_seed(4)
        want = model(x)[0]
        torch.manual_seed(4)
        assert torch.equal(reloaded(x)[0], want)


def test_a_root_branching_vae_trains_and_compacts_exactly():
    torch.manual_seed(0)
    x = torch.randn(64, 6)
    sm = lumos.sparsify(NoisyLatent(), x, budget=0.5)
    opt = torch.optim.Adam(sm.parameters(), lr=1e-2)
    for _ in range(30):
        out, _mu = sm(x)
        loss = out.pow(2).mean() + sm.penalty(out.pow(2).mean())
        opt.zero_grad()
        loss.backward()
        opt.step()
    sm.eval()
    small = sm.compact()
    with torch.no_grad():
        assert torch.allclose(small(x)[0], sm(x)[0], atol=1e-5)
        assert torch.equal(small(x)[0], small(x)[0])  # eval is deterministic: the mean


class TrainOnlyStatistic(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(6, 4)
        self.register_buffer("seen", torch.zeros(4))

    def forward(self, x):
        h = self.l1(x)
        if self.training:
            self.seen.add_(h.detach().mean(0))
        return h - self.seen


class TrainOnlyInPlaceOnShared(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(6, 4), nn.Linear(4, 1)

    def forward(self, x):
        h = self.l1(x)
        g = torch.relu(h)
        if self.training:
            h.mul_(0.5)
        return self.l2(g + h)


@pytest.mark.parametrize("model", [TrainOnlyStatistic(), TrainOnlyInPlaceOnShared()])
def test_a_root_branch_that_writes_what_the_other_mode_reads_is_refused(model):
    with pytest.raises(lumos.UnsupportedModelError, match="in place, a tensor the other mode"):
        lumos.sparsify(model, torch.randn(8, 6), budget=0.5)


class ModeShapes(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(6, 4)

    def forward(self, x):
        h = self.l1(x)
        return h if self.training else h.sum(-1)


def test_a_root_whose_modes_return_different_shapes_is_refused_with_the_way_out():
    with pytest.raises(lumos.UnsupportedModelError, match="branches on self.training.*Ways out"):
        lumos.sparsify(ModeShapes(), torch.randn(8, 6), budget=0.5)


def test_dropout_flag_keeps_the_neurons_gated():
    sm = lumos.sparsify(FunctionalDropout(), torch.randn(8, 6), budget=0.5)
    assert [g.name for g in sm.graph_info.groups] == ["x", "l1"]


class OptionalMask(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(6, 16), nn.Linear(16, 1)

    def forward(self, x, mask=None):
        h = torch.relu(self.l1(x))
        if mask is not None:
            h = h * mask
        return self.l2(h)


def test_absent_optional_argument_leaves_no_fx_internals_and_saves_cleanly(tmp_path):
    x = torch.randn(16, 6)
    sm = lumos.sparsify(OptionalMask(), x, budget=0.5)
    small = sm.eval().compact()
    names = {getattr(n.target, "__name__", str(n.target)) for n in small.graph.nodes}
    assert "_assert_is_none" not in names
    assert "lumos" not in small.code.replace("lumos_", "")
    path = tmp_path / "small.pt"
    torch.save(small, path)
    # reload in a fresh process without LUMOS importable, then trace another model there
    script = textwrap.dedent(f"""
        import sys
        sys.modules["lumos"] = None
        import torch
        m = torch.load({str(path)!r}, weights_only=False)
        print(tuple(m(torch.randn(3, 6)).shape))
        torch.fx.symbolic_trace(torch.nn.Linear(2, 2))
        torch.load({str(path)!r}, weights_only=False)
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["(3,", "1)", "ok"]


ANNOTATED = '''
from __future__ import annotations
import torch
from torch import nn, Tensor


class Annotated(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(6, 16), nn.Linear(16, 1)

    def forward(self, x: Tensor) -> Tensor:
        h: Tensor = torch.relu(self.l1(x))
        return self.l2(h)
'''


def test_string_annotations_do_not_reach_the_saved_code(tmp_path):
    namespace: dict = {}
    exec(compile(ANNOTATED, str(tmp_path / "annotated.py"), "exec"), namespace)
    sm = lumos.sparsify(namespace["Annotated"](), torch.randn(8, 6), budget=0.5)
    small = _reload(sm.eval().compact())
    assert small(torch.randn(2, 6)).shape == (2, 1)
    torch.jit.trace(small, torch.randn(2, 6))


def test_compact_verifies_itself_and_names_the_first_diverging_node(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(),
                          nn.Linear(8, 1))
    sm = lumos.sparsify(model, torch.randn(32, 6), budget=0.5)
    sm.compact()  # exact: passes
    real = compaction.compact

    def broken(sm_, inputs="full"):  # a fault on purpose: one kept weight perturbed
        small = real(sm_, inputs=inputs)
        with torch.no_grad():
            small.get_submodule("2").weight.add_(0.5)
        return small

    monkeypatch.setattr(compaction, "compact", broken)
    with pytest.raises(lumos.CompactionError, match="node '_2'"):
        sm.compact()
    assert isinstance(sm.compact(verify=False), torch.fx.GraphModule)


def test_compact_verifies_the_selected_inputs_form():
    torch.manual_seed(1)
    sm = lumos.sparsify(nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1)),
                        torch.randn(32, 6), budget=0.5)
    with torch.no_grad():
        sm.gates.log_alpha[:2] = -10.0  # close two input features
    small = sm.eval().compact(inputs="selected")
    assert small.get_submodule("0").in_features == 4


def test_untraceable_error_points_at_user_code_even_in_a_folder_named_lumos(tmp_path):
    folder = tmp_path / "lumos" / "project"
    folder.mkdir(parents=True)
    source = folder / "model.py"
    source.write_text(textwrap.dedent("""
        import torch
        from torch import nn


        class DataDependent(nn.Module):
            def __init__(self):
                super().__init__()
                self.l1 = nn.Linear(4, 4)

            def forward(self, x):
                if x.sum() > 0:
                    return self.l1(x)
                return x
    """))
    namespace: dict = {}
    exec(compile(source.read_text(), str(source), "exec"), namespace)
    with pytest.raises(lumos.UntraceableModelError) as err:
        lumos.sparsify(namespace["DataDependent"](), torch.randn(4, 4), budget=0.5)
    assert f"{source}:" in str(err.value)
    assert "if x.sum() > 0" in str(err.value)


def test_as_tensor_of_a_traced_tensor_is_that_tensor():
    """``x + torch.as_tensor(pad(x))`` (MONAI's HighResNet): torch does not hand as_tensor to
    fx; LUMOS traces it as the tensor itself, or a ``.to()`` when a dtype is given."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 1)

        def forward(self, x):
            h = torch.relu(self.a(x))
            h = h + torch.as_tensor(h) + torch.asarray(h, dtype=torch.float64).float()
            return self.b(torch.as_tensor(h))

    x = torch.randn(6, 4)
    check = lumos.testing.assert_compacts_exactly(Net(), x, batch_sizes=(1, 3))
    assert "a" in {g.name for g in check.sparse_model.graph_info.groups}
    assert torch.as_tensor([1, 2]).tolist() == [1, 2]  # torch's own function is back


@pytest.mark.parametrize("make", [
    lambda x: torch.zeros(x.shape[0], 8), lambda x: torch.ones(x.size(0), 8) * 0.5,
    lambda x: torch.randn(x.shape[0], 8) * 0, lambda x: torch.empty(x.size(0), 8).fill_(1.0)])
def test_a_tensor_made_with_a_size_read_off_the_input_follows_the_batch(make):
    """``torch.zeros(x.shape[0], 8)``: torch would not hand the call to fx (it asks the size
    for an int first); LUMOS traces it with the size as a graph value."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 1)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)) + make(x))

    torch.manual_seed(0)
    model = Net()
    sm = lumos.sparsify(model, torch.randn(6, 4), budget=0.5).eval()
    x = torch.randn(11, 4)  # another batch size than the example's
    with torch.no_grad():
        if make(x).abs().sum() == 0 or make(x).std() == 0:
            torch.testing.assert_close(sm(x), model.eval()(x))
        assert sm(x).shape == (11, 1)


def test_shape_dependent_python_after_a_mode_dependent_dropout_traces():
    """``F.dropout(h, p, self.training)`` reads the mode at run time; what follows it still
    has the example's shapes while tracing (MONAI's FlexibleUNet: a drop-connect encoder, then
    ``len(x.shape)`` in its decoder)."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 1)

        def forward(self, x):
            h = F.dropout(torch.relu(self.a(x)), 0.5, self.training)
            if len(h.shape) == 2 and h.shape[-1] == 8:
                h = h * 2
            return self.b(h)

    torch.manual_seed(0)
    x = torch.randn(6, 4)
    check = lumos.testing.assert_compacts_exactly(Net(), x, batch_sizes=(1, 3))
    sm = check.sparse_model.train()
    assert not torch.equal(sm(torch.randn(64, 4)), sm(torch.randn(64, 4)))


def test_guards_on_static_conditions_script_trace_and_still_fire():
    """``if x.dim() == 2 and x.shape[-1] > 0`` steers the trace; a condition that held is
    asserted as it is, so the compacted model scripts (TorchScript has no ``operator.truth``),
    traces, and refuses an input of another layout, compacted and scripted alike."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 1)

        def forward(self, x):
            if x.dim() == 2 and x.shape[-1] > 0:
                x = x * 1.5
            return self.b(torch.relu(self.a(x)))

    torch.manual_seed(0)
    sm = lumos.sparsify(Net(), torch.randn(6, 4), budget=0.5)
    small = sm.eval().compact()
    scripted = torch.jit.script(small)
    x = torch.randn(5, 4)
    traced = torch.jit.trace(small, (x,), check_trace=False)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), small(x))
        torch.testing.assert_close(traced(x), small(x))
    for model in (small, scripted):
        with pytest.raises(Exception, match="traced by LUMOS"):
            model(torch.randn(2, 5, 4))


# ---- torch.autocast regions -------------------------------------------------------------------
class FullPrecisionBlock(nn.Module):
    """A block that leaves the caller's mixed precision for its second layer (timm's
    EfficientViT attention does this, with the device read off a tensor)."""

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(d, 16), nn.Linear(16, d)

    def forward(self, x):
        h = torch.relu(self.a(x))
        with torch.autocast(device_type=h.device.type, enabled=False):
            return self.b(h.float())


def _with_blocks():
    return nn.Sequential(nn.Linear(4, 8), FullPrecisionBlock(), nn.ReLU(), nn.Linear(8, 32),
                         nn.ReLU(), nn.Linear(32, 8), FullPrecisionBlock(), nn.Linear(8, 1))


def test_a_module_entering_autocast_is_kept_whole_so_mixed_precision_matches_the_model():
    torch.manual_seed(0)
    model, x = _with_blocks(), torch.randn(16, 4)
    with pytest.warns(lumos.LumosWarning, match=r"'1' \(FullPrecisionBlock\) uses "
                      r"torch.autocast at .*test_trace_semantics.py"):
        sm = lumos.sparsify(model, (x,), budget=0.6)
    sm.enforce_budget(0.6)
    small = sm.eval().compact()
    assert sm.kept_fraction() < 0.7  # the layers between the blocks are still gated
    with torch.no_grad():
        torch.testing.assert_close(small(x), sm(x))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            gated, compacted = sm(x), small(x)
    # under mixed precision too: the blocks ran their own full-precision region in both
    assert gated.dtype == compacted.dtype
    torch.testing.assert_close(compacted.float(), gated.float(), rtol=2e-2, atol=2e-2)


def test_with_gates_open_the_traced_model_keeps_the_regions_precision():
    torch.manual_seed(0)
    model, x = _with_blocks().eval(), torch.randn(16, 4)
    with pytest.warns(lumos.LumosWarning, match="torch.autocast"):
        sm = lumos.sparsify(model, (x,), budget=None).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        # without the region the block's second layer ran in bfloat16 (0.0023 apart)
        torch.testing.assert_close(sm(x), model(x), rtol=0, atol=0)


def test_a_root_forward_entering_autocast_is_refused_with_the_way_out():
    with pytest.raises(lumos.UnsupportedModelError,
                       match=r"FullPrecisionBlock itself uses torch.autocast at .*test_trace_sema"
                             r"ntics.py.*move the region into a submodule"):
        lumos.sparsify(FullPrecisionBlock(), (torch.randn(3, 8),))


class ScaleWithoutGradient(nn.Module):
    """Divides by a statistic computed without autograd (a normaliser the loss must not move)."""

    def __init__(self, decorated: bool = False) -> None:
        super().__init__()
        self.decorated = decorated

    @torch.no_grad()
    def _statistic_decorated(self, h):
        return h.abs().mean(0, keepdim=True) + 1.0

    def forward(self, h):
        if self.decorated:
            return h / self._statistic_decorated(h)
        with torch.no_grad():
            scale = h.abs().mean(0, keepdim=True) + 1.0
        return h / scale


@pytest.mark.parametrize("decorated", [False, True], ids=["with-block", "decorator"])
def test_a_no_grad_region_keeps_its_module_whole_so_gradients_match_the_model(decorated):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), ScaleWithoutGradient(decorated), nn.ReLU(),
                          nn.Linear(8, 1))
    original, x = copy.deepcopy(model), torch.randn(16, 4)
    with pytest.warns(lumos.LumosWarning, match=r"'1' \(ScaleWithoutGradient\) uses "
                                                r"torch.no_grad at .*gradients would flow"):
        sm = lumos.sparsify(model, (x,), budget=None, features=[])
    sm.eval()  # deterministic gates, all open: the gated model is the model
    original(x).pow(2).sum().backward()
    sm(x).pow(2).sum().backward()
    gated_grad = next(p.grad for n, p in sm.named_parameters() if n.endswith("0.weight"))
    # traced through, the statistic passed gradients: they differed by up to 0.11
    torch.testing.assert_close(gated_grad, original[0].weight.grad)


class DataBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        h = self.lin(x)
        return h if h.sum() > 0 else -h  # a branch on the data: fx cannot follow it


def test_an_untraceable_submodule_error_offers_keep_and_keep_works():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), DataBranch(), nn.Linear(8, 1))
    x = torch.randn(6, 4)
    with pytest.raises(lumos.UntraceableModelError,
                       match=r"in module '2' \(DataBranch\).*keep=\['2'\]"):
        lumos.sparsify(model, (x,))
    sm = lumos.sparsify(model, (x,), keep=["2"]).eval()
    torch.testing.assert_close(sm(x), model.eval()(x))
    torch.testing.assert_close(sm.compact()(x), sm(x))


class Checkpointed(nn.Module):
    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.a, self.c = nn.Linear(6, 32), nn.Linear(32, 1)
        self.b = nn.Sequential(nn.Linear(32, 32), nn.ReLU())
        self.reentrant = reentrant

    def forward(self, x):
        h = torch.relu(self.a(x))
        h = torch.utils.checkpoint.checkpoint(self.b, h, use_reentrant=self.reentrant)
        return self.c(h)


@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing_is_torch_s_region_and_stays_gated(reentrant):
    """torch.utils.checkpoint runs its function under no_grad (reentrant) or saved-tensor
    hooks: regions of torch's that change memory, not values or gradients."""
    torch.manual_seed(0)
    model, x = Checkpointed(reentrant), torch.randn(16, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", lumos.LumosWarning)
        sm = lumos.sparsify(model, (x,), budget=0.6)
    sm.enforce_budget(0.6)
    sm.eval()
    assert sm.kept_fraction() <= 0.6
    torch.testing.assert_close(sm.compact()(x), sm(x))
