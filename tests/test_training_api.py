"""The training API does what it says under every loop: penalty() is a pure query, the
controller moves once per optimiser step, and a loop without set_progress is told so."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lumos


def _sm(**kw) -> lumos.SparseModel:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 1))
    return lumos.sparsify(model, torch.randn(8, 12), budget=0.3, **kw)


def test_penalty_is_a_pure_query():
    sm = _sm()
    before = sm.state_dict()
    values = [float(sm.penalty()) for _ in range(4)]
    assert values == [values[0]] * 4
    after = sm.state_dict()
    assert sm.controller.lambda1 == 0.0 and sm.controller.steps == 0
    for key, value in before.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, after[key]), key


def _loop(sm, accumulate: int, explicit_step: bool, steps: int = 12):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 12, generator=g), torch.randn(64, 1, generator=g)
    opt = torch.optim.Adam(sm.parameter_groups(lr=1e-3))
    for step in range(steps):
        sm.set_progress(step / steps)
        opt.zero_grad()
        for chunk in range(accumulate):
            xs = x[chunk::accumulate]
            ys = y[chunk::accumulate]
            loss = (F.mse_loss(sm(xs), ys) + sm.penalty()) / accumulate
            loss.backward()
            float(sm.penalty())  # logging it changes nothing
        opt.step()
        if explicit_step:
            sm.step()
    return sm


@pytest.mark.parametrize("explicit_step", [False, True])
def test_controller_moves_once_per_optimiser_step_whatever_the_loop(explicit_step):
    plain = _loop(_sm(), accumulate=1, explicit_step=explicit_step)
    accumulated = _loop(_sm(), accumulate=4, explicit_step=explicit_step)
    assert plain.controller.steps == accumulated.controller.steps == 12
    assert plain.controller.lambda1 > 0
    assert accumulated.controller.lambda1 == pytest.approx(plain.controller.lambda1, rel=0.2)


def test_explicit_step_after_the_hook_does_not_count_twice():
    sm = _loop(_sm(), accumulate=1, explicit_step=True, steps=5)
    assert sm.controller.steps == 5


def test_a_loop_without_set_progress_is_told_and_the_budget_still_holds():
    sm = _sm()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(64, 12, generator=g), torch.randn(64, 1, generator=g)
    opt = torch.optim.Adam(sm.parameters(), lr=2e-3)
    for _ in range(30):
        loss = F.mse_loss(sm(x), y) + sm.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert "sm.set_progress" in sm.report()
    with pytest.warns(lumos.LumosWarning, match="never called sm.set_progress"):
        small = sm.eval().compact()
    assert lumos.count_params(small) <= 0.3 * sm.dense_params + 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", lumos.LumosWarning)
        sm.compact()  # enforced once: no second warning


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 16), nn.Linear(16, 16), nn.Linear(16, 16)
        self.c.weight = self.b.weight  # one parameter, two layers
        self.d = nn.Linear(16, 1)

    def forward(self, x):
        return self.d(torch.relu(self.c(torch.relu(self.b(torch.relu(self.a(x)))))))


def test_tied_weights_stay_tied_after_compaction():
    model = Tied()
    x = torch.randn(8, 6)
    sm = lumos.sparsify(model, x, budget=0.5)
    with torch.no_grad():
        sm.gates.log_alpha[6:10] = -10.0
    small = sm.eval().compact()
    assert small.get_submodule("b").weight is small.get_submodule("c").weight
    assert lumos.count_params(small) <= lumos.count_params(model)


class TransposedTie(nn.Module):
    """The autoencoder idiom: the decoder reads the encoder's weight transposed."""

    def __init__(self):
        super().__init__()
        self.enc, self.mid = nn.Linear(6, 16), nn.Linear(16, 16)
        self.out_bias = nn.Parameter(torch.zeros(6))
        self.head = nn.Linear(6, 1)

    def forward(self, x):
        h = torch.relu(self.mid(torch.relu(self.enc(x))))
        return self.head(F.linear(h, self.enc.weight.t(), self.out_bias))


def test_a_transposed_tie_keeps_the_shared_weight_whole_and_compacts_exactly():
    x = torch.randn(8, 6)
    sm = lumos.sparsify(TransposedTie(), x, budget=0.5)
    with torch.no_grad():
        sm.gates.log_alpha[:] = -10.0  # close everything that has a gate
    small = sm.eval().compact()  # verifies itself; before, it crashed on its first call
    assert small.get_submodule("enc").weight.shape == (16, 6)
    torch.testing.assert_close(small(x), sm(x))


def test_numbers_given_as_numpy_or_tensor_scalars_work_and_strings_are_refused():
    import numpy as np

    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 1))
    x = torch.randn(4, 4)
    assert lumos.sparsify(model, x, budget=np.float32(0.25)).budget == 0.25
    assert lumos.sparsify(model, x, budget=torch.tensor(0.25)).budget == 0.25
    for bad in (dict(feature_penalty="0.1"), dict(budget="0.25"), dict(budget=True)):
        with pytest.raises(lumos.ConfigurationError, match="pass a number"):
            lumos.sparsify(model, x, **bad)
    with pytest.raises(lumos.ConfigurationError, match="progress must be .*got '0.5'"):
        lumos.sparsify(model, x, budget=0.5).set_progress("0.5")


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_sparsify_train_and_compact_on_every_present_device(device):
    """Every path device-correct: the CUDA row runs wherever a GPU is present."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(3, 8, 3, padding=1), nn.BatchNorm1d(8), nn.ReLU(),
                          nn.Conv1d(8, 4, 1)).to(device)
    x = torch.randn(6, 3, 10, device=device)
    sm = lumos.sparsify(model, x, budget=0.5)
    opt = torch.optim.Adam(sm.parameter_groups(lr=1e-2))
    for step in range(10):
        sm.set_progress(step / 10)
        loss = sm(x).pow(2).mean() + sm.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
    sm.set_progress(1.0)
    with torch.no_grad():
        sm.gates.log_alpha[:2] = -10.0
    for inputs in ("full", "selected"):
        small = sm.eval().compact(inputs=inputs)  # verifies itself on the device
        assert next(small.parameters()).device.type == device


def test_train_of_a_torch_compiled_sparse_model_trains_the_sparse_model():
    """train(torch.compile(sm)) keeps the penalty and the budget, and gate draws do not make
    dynamo recompile every step."""
    from torch._dynamo.utils import counters

    from lumos.training import train

    torch.manual_seed(0)
    x = torch.randn(256, 12)
    y = x[:, :2].sum(1, keepdim=True)
    sm = lumos.sparsify(nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 1)), x[:8],
                        budget=0.3)
    counters.clear()
    train(torch.compile(sm, backend="eager"), (x, y), epochs=3, lr=3e-3, seed=0,
          progress=False)
    assert sm.kept_fraction() <= 0.3 + 1e-9
    assert sm.controller.steps == 6
    assert counters["stats"]["unique_graphs"] <= 4


def test_feature_names_as_one_string_nan_in_eval_and_one_dimensional_inputs_are_told():
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 1))
    x = torch.randn(6, 4)
    with pytest.raises(lumos.ConfigurationError, match="split into letters"):
        lumos.sparsify(model, x, feature_names="abcd")
    sm = lumos.sparsify(model, x, budget=0.5).eval()
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(lumos.InputError, match="NaN/Inf"):
        sm(bad)

    class Scalarwise(nn.Module):
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(1, 1)

        def forward(self, t):
            return self.l(t.unsqueeze(-1))

    with pytest.warns(lumos.LumosWarning, match="1-D .* not gated"):
        lumos.sparsify(Scalarwise(), torch.randn(6), budget=0.5)
    with pytest.raises(lumos.ConfigurationError, match="1-D"):
        lumos.sparsify(Scalarwise(), torch.randn(6), budget=0.5, features=["t"])


def test_load_state_dict_from_another_architecture_names_what_differs():
    x = torch.randn(6, 4)
    small = lumos.sparsify(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 1)), x, budget=0.5)
    wide = lumos.sparsify(nn.Sequential(nn.Linear(4, 16), nn.Linear(16, 1)), x, budget=0.5)
    with pytest.raises(lumos.CheckpointError, match="shape.*differ.*model.0.weight"):
        small.load_state_dict(wide.state_dict())
    twin = lumos.sparsify(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 1)), x, budget=0.5)
    twin.load_state_dict(small.state_dict())  # the same model loads as before


def test_an_lr_schedule_sets_every_groups_rate_from_progress_and_resumes_exactly(tmp_path):
    """lr_schedule multiplies each group's own rate (weights and gates) at every step; a run
    stopped and resumed from its checkpoint steps with the same rates as one that was not."""
    from lumos.training import make_optimizer, train

    torch.manual_seed(0)
    x, y = torch.randn(256, 12), torch.randn(256, 1)
    schedule = lumos.Schedule("linear", 1.0, 0.25)

    def run(folder, stop_after=None, resume=False):
        sm = _sm()
        optimizer = make_optimizer(sm, 1e-2, None, 0.0)
        seen = []

        def on_epoch(epoch, history):
            seen.append([g["lr"] for g in optimizer.param_groups])
            if stop_after is not None and epoch == stop_after:
                raise KeyboardInterrupt  # the run is killed here

        train(sm, (x, y), epochs=4, batch_size=64, lr=1e-2, optimizer=optimizer,
              lr_schedule=schedule, checkpoint_dir=tmp_path / folder, resume=resume,
              on_epoch=on_epoch)
        return sm, optimizer, seen

    sm, optimizer, seen = run("whole")
    initial = [g["initial_lr"] for g in optimizer.param_groups]
    assert len(set(initial)) == 2  # weights and gates keep their own rates
    last_step = (4 * 4 - 1) / (4 * 4)  # the rate set for the last step of the run
    assert seen[-1] == pytest.approx([r * schedule(last_step) for r in initial])
    assert seen[0][0] > seen[1][0] > seen[2][0] > seen[3][0]
    with pytest.raises(KeyboardInterrupt):
        run("parts", stop_after=1)
    resumed, _, later = run("parts", resume=True)
    assert later and later == seen[-len(later):]
    for a, b in zip(sm.state_dict().values(), resumed.state_dict().values()):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)
    with pytest.raises(lumos.ConfigurationError, match="lr_schedule"):
        train(_sm(), (x, y), epochs=1, lr_schedule=0.5)
    with pytest.raises(lumos.ConfigurationError, match="stay >= 0"):
        train(_sm(), (x, y), epochs=1, lr_schedule=lumos.Schedule("constant", 0.0))
