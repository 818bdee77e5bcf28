"""LUMOS in a Lightning Trainer (LumosCallback) and in TensorBoard (GateLogger), end to end
on CPU: the budget is met, the true features found, the compacted model equals the gated
one, the event files hold the gate trajectories, and misuse is named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lumos

lightning = pytest.importorskip("lightning")
pytest.importorskip("tensorboard")
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

from lumos.integrations.lightning import LumosCallback  # noqa: E402
from lumos.integrations.tensorboard import GateLogger  # noqa: E402


def _data(n: int = 1024, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, :1] * x[:, 1:2] + 0.8 * x[:, 2:3])
    return x, (y - y.mean()) / y.std()


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(),
                         nn.Linear(64, 1))


class Regression(lightning.LightningModule):
    def __init__(self, budget: float = 0.3, gates_in_optimizer: bool = True) -> None:
        super().__init__()
        self.sm = lumos.sparsify(_net(), _data()[0][:8], budget=budget)
        self.gates_in_optimizer = gates_in_optimizer

    def training_step(self, batch, _):
        x, y = batch
        return F.mse_loss(self.sm(x), y)

    def configure_optimizers(self):
        if not self.gates_in_optimizer:
            return torch.optim.Adam(self.sm.model.parameters(), lr=3e-3)
        return torch.optim.Adam(self.sm.parameter_groups(lr=3e-3))


def _loader(batch_size: int = 64):
    x, y = _data()
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y),
                                       batch_size=batch_size, shuffle=True,
                                       generator=torch.Generator().manual_seed(0))


def _trainer(tmp_path, **kwargs):
    return lightning.Trainer(max_epochs=kwargs.pop("max_epochs", 25), accelerator="cpu",
                             devices=1, logger=TensorBoardLogger(str(tmp_path), name="tb"),
                             enable_progress_bar=False, enable_checkpointing=False,
                             enable_model_summary=False, log_every_n_steps=8, **kwargs)


def _scalars(folder) -> dict[str, list[float]]:
    events = [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs
              if f.startswith("events.out")]
    out: dict[str, list[float]] = {}
    for path in events:
        acc = EventAccumulator(path, size_guidance={"scalars": 0, "histograms": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend(e.value for e in acc.Scalars(tag))
        for tag in acc.Tags()["histograms"]:
            out.setdefault(tag, []).append(float(len(acc.Histograms(tag))))
    return out


@pytest.mark.parametrize("accumulate", [1, 2])
def test_lightning_fit_meets_the_budget_finds_the_features_and_compacts_exactly(
        tmp_path, accumulate):
    torch.manual_seed(0)
    module = Regression(budget=0.3)
    callback = LumosCallback(save_compacted=tmp_path / "small.pt")
    _trainer(tmp_path, accumulate_grad_batches=accumulate,
             callbacks=[callback]).fit(module, _loader())
    sm = module.sm
    assert lumos.count_params(callback.compacted) <= 0.3 * sm.dense_params + 1e-9
    assert {0, 1, 2} <= set(sm.selected_features()["input"])
    x, y = _data(512, seed=1)
    sm.eval()
    with torch.no_grad():
        torch.testing.assert_close(callback.compacted(x), sm(x), rtol=1e-4, atol=1e-5)
        assert lumos.metrics.r2(callback.compacted(x), y) > 0.9
        reloaded = torch.load(tmp_path / "small.pt", weights_only=False)
        torch.testing.assert_close(reloaded(x), callback.compacted(x))
    scalars = _scalars(tmp_path / "tb")
    kept = scalars["lumos/kept/params"]
    assert kept[0] > 0.9 and kept[-1] <= 0.3 + 1e-9  # the trajectory, start to end
    assert "lumos/budget_target" in scalars and "lumos/keep_probability" in scalars
    assert any(tag.startswith("lumos/width/") for tag in scalars)
    assert "lumos/feature/input/0" in scalars and "lumos/penalty" in scalars


def test_the_penalty_added_after_backward_is_the_loops_penalty(tmp_path):
    """The callback's gradient step equals (loss + sm.penalty(loss)).backward()."""
    torch.manual_seed(0)
    x, y = _data(64)
    by_hand, module = Regression(), Regression()
    module.load_state_dict(by_hand.state_dict())
    loss = F.mse_loss(by_hand.sm(x), y)
    (loss + by_hand.sm.penalty(loss)).backward()
    callback = LumosCallback(module.sm)
    loss = F.mse_loss(module.sm(x), y)
    callback.on_before_backward(None, module, loss)
    loss.backward()
    module.log = lambda *a, **k: None  # no Trainer attached: nothing to log to
    callback.on_after_backward(type("T", (), {"accumulate_grad_batches": 1})(), module)
    torch.testing.assert_close(module.sm.gates.log_alpha.grad, by_hand.sm.gates.log_alpha.grad)


def test_misuse_is_named(tmp_path):
    with pytest.raises(lumos.ConfigurationError, match="parameter_groups"):
        _trainer(tmp_path, max_epochs=1, callbacks=[LumosCallback()]).fit(
            Regression(gates_in_optimizer=False), _loader())

    class Dense(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = _net()

        def training_step(self, batch, _):
            return F.mse_loss(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters())

    with pytest.raises(lumos.ConfigurationError, match="found 0 lumos.SparseModel"):
        _trainer(tmp_path, max_epochs=1, callbacks=[LumosCallback()]).fit(Dense(), _loader())
    with pytest.raises(lumos.ConfigurationError, match="log_dir"):
        GateLogger(Regression().sm)
    with pytest.raises(lumos.ConfigurationError, match="SparseModel"):
        GateLogger(_net(), tmp_path)


def test_gate_logger_as_the_train_loops_epoch_hook(tmp_path):
    from lumos.training import train

    torch.manual_seed(0)
    x, y = _data()
    sm = lumos.sparsify(_net(), x[:8], budget=0.3, feature_names=list("abcdef"))
    logger = GateLogger(sm, tmp_path / "tb")
    train(sm, (x, y), epochs=12, lr=3e-3, batch_size=64, on_epoch=logger, progress=False)
    logger.close()
    scalars = _scalars(tmp_path / "tb")
    assert len(scalars["lumos/kept/params"]) == 12
    assert scalars["lumos/kept/params"][-1] <= 0.3 + 1e-9
    widths = scalars["lumos/width/0"]
    assert widths[0] == 64 and widths[-1] < 64
    assert set(scalars) >= {f"lumos/feature/input/{c}" for c in "abcdef"}


DDP_SCRIPT = textwrap.dedent('''
    import json, sys, torch, torch.nn.functional as F, lightning
    from torch import nn
    import lumos
    from lumos.integrations.lightning import LumosCallback

    class Regression(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            net = nn.Sequential(nn.Linear(6, 32), nn.SiLU(), nn.Linear(32, 1))
            self.sm = lumos.sparsify(net, torch.randn(8, 6), budget=0.4)

        def training_step(self, batch, _):
            return F.mse_loss(self.sm(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.Adam(self.sm.parameter_groups(lr=3e-3))

    if __name__ == "__main__":
        torch.manual_seed(0)
        x = torch.randn(512, 6)
        y = x[:, :1] * x[:, 1:2] + x[:, 2:3]
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y),
                                             batch_size=32, shuffle=True)
        module, callback = Regression(), LumosCallback()
        trainer = lightning.Trainer(max_epochs=6, accelerator="cpu", devices=2,
                                    strategy="ddp", logger=False, enable_progress_bar=False,
                                    callbacks=[callback],
                                    enable_checkpointing=False, enable_model_summary=False)
        trainer.fit(module, loader)
        sm = module.sm
        out = {"log_alpha": sm.gates.log_alpha.detach().tolist(),
               "kept": lumos.count_params(callback.compacted) / sm.dense_params}
        with open(f"{sys.argv[1]}/rank{trainer.global_rank}.json", "w") as fh:
            json.dump(out, fh)
''')


@pytest.mark.slow
def test_lightning_ddp_keeps_the_gates_identical_on_every_rank(tmp_path):
    script = tmp_path / "fit_ddp.py"
    script.write_text(DDP_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True,
                          text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["log_alpha"] == ranks[1]["log_alpha"]
    assert ranks[0]["kept"] <= 0.4 + 1e-9
