"""The answer does not depend on the units of the target or of the inputs.

A scientist's target in SI units can have any size. LUMOS's pressure (budget controller and
feature gates) is measured in the task loss's own units when the loss is passed to
``penalty(loss)`` (``train()`` and the estimators do), so the features kept, the size reached
and the fit are the same whatever the scale of the loss. To isolate LUMOS's part, the README
loop and ``train()`` are run on a model whose output is in the target's units
(``Scaled``: the same network times the unit) with an optimiser that is itself
scale-free (Adam with a negligible eps): the dense run is then exactly the same at every
scale, and so must LUMOS's be. The estimator standardises, so it is checked on a plain MLP
with the raw targets and inputs rescaled.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lumos
from lumos.training import train

SCALES = (1e-4, 1.0, 1e4)


class Scaled(nn.Module):
    """A network whose output is in the target's units (times ``unit``)."""

    def __init__(self, unit: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                                 nn.Linear(32, 1))
        self.unit = unit

    def forward(self, x):
        return self.net(x) * self.unit


def _data(n: int = 800):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    y = (2 * x[:, 0] + x[:, 1] * x[:, 2] + 0.1 * torch.randn(n, generator=g))[:, None]
    return x, (y - y.mean()) / y.std()


def _r2(pred, y) -> float:
    return float(1 - ((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum())


def _readme_loop(unit: float, pass_loss: bool = True):
    torch.manual_seed(0)
    x, y = _data()
    y = y * unit
    sm = lumos.sparsify(Scaled(unit), x[:8], budget=0.3)
    opt = torch.optim.Adam(sm.parameter_groups(lr=3e-3), eps=1e-30)
    steps, step = 12 * (640 // 32), 0
    for _ in range(12):
        order = torch.randperm(640)
        for i in range(0, 640, 32):
            idx = order[i:i + 32]
            sm.set_progress(step / steps)
            loss = F.mse_loss(sm(x[idx]), y[idx])
            loss = loss + sm.penalty(loss if pass_loss else None)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sm.step()
            step += 1
    sm.set_progress(1.0)
    small = sm.eval().compact()
    with torch.no_grad():
        r2 = _r2(small(x[640:]), y[640:])
    return sm.selected_features()["x"], sm.compacted_counts()["params"] / sm.dense_params, r2


def _train_loop(unit: float):
    torch.manual_seed(0)
    x, y = _data()
    sm = lumos.sparsify(Scaled(unit), x[:8], budget=0.3)
    opt = torch.optim.Adam(sm.parameter_groups(lr=3e-3), eps=1e-30)
    train(sm, (x[:640], y[:640] * unit), epochs=12, batch_size=32, optimizer=opt,
          progress=False)
    small = sm.eval().compact()
    with torch.no_grad():
        r2 = _r2(small(x[640:]), y[640:] * unit)
    return sm.selected_features()["x"], sm.compacted_counts()["params"] / sm.dense_params, r2


@pytest.mark.parametrize("loop", [_readme_loop, _train_loop], ids=["readme-loop", "train"])
def test_kept_features_size_and_fit_do_not_depend_on_the_target_units(loop):
    base_features, base_size, base_r2 = loop(1.0)
    assert base_r2 > 0.8 and {0, 1, 2} <= set(base_features)  # a fit worth comparing
    for unit in (1e-4, 1e4):
        features, size, r2 = loop(unit)
        assert features == base_features, unit
        assert abs(size - base_size) <= 0.01, unit
        assert abs(r2 - base_r2) <= 0.01, unit


def test_without_the_loss_the_pressure_has_absolute_units():
    """What passing the loss fixes: a tiny loss is overwhelmed by an absolute pressure."""
    with pytest.warns(lumos.LumosWarning, match="every feature of input 'x' closed"):
        features, _, _ = _readme_loop(1e-4, pass_loss=False)
    base, _, _ = _readme_loop(1e-4)
    assert len(features) < len(base)


def test_the_loss_unit_is_fixed_after_calibration_and_resumes():
    torch.manual_seed(0)
    x, y = _data(64)
    sm = lumos.sparsify(Scaled(1.0), x[:8], budget=0.5)
    opt = torch.optim.Adam(sm.parameter_groups(lr=1e-3))
    for _ in range(sm.LOSS_CALIBRATION_STEPS + 5):
        loss = F.mse_loss(sm(x), 1e3 * y)
        (loss + sm.penalty(loss)).backward()
        opt.step()
        opt.zero_grad()
        sm.step()
    unit = sm._loss_scale
    assert unit is not None and unit > 100  # the loss of the first step(s): ~1e6 * var
    again = lumos.sparsify(Scaled(1.0), x[:8], budget=0.5)
    again.load_state_dict(sm.state_dict())
    assert again._loss_scale == unit
    with torch.no_grad():  # a later loss does not move it; penalty() alone uses it too
        torch.testing.assert_close(sm.penalty(torch.tensor(1e-9)), sm.penalty())
    with pytest.raises(lumos.InputError, match="one number"):
        sm.penalty(torch.ones(3))


@pytest.mark.parametrize("what", ["target", "inputs"])
def test_the_estimator_gives_the_same_answer_in_any_units(what):
    pytest.importorskip("sklearn")
    from lumos import LumosRegressor

    x, y = _data(600)
    X, Y = x.double().numpy(), y[:, 0].double().numpy()
    answers = []
    for unit in SCALES:
        Xu, Yu = (X, Y * unit) if what == "target" else (X * unit, Y)
        est = LumosRegressor(hidden=(32, 32), epochs=20, random_state=0).fit(Xu[:480], Yu[:480])
        answers.append((list(est.selected_features_), est.n_params_,
                        est.score(Xu[480:], Yu[480:])))
    base = answers[1]
    for features, params, r2 in answers:
        assert features == base[0]
        assert abs(params - base[1]) <= 0.01 * est.n_params_dense_
        assert abs(r2 - base[2]) <= 0.01
