"""Checkpoints: exact resume after a crash, atomic writes, refusal of damaged or foreign files."""

from __future__ import annotations

import copy
import errno
import json
import os
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import lumos
from lumos import checkpoint
from lumos.training import EpochBatches, latest_checkpoint, train

EPOCHS, BATCH = 4, 16


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Crash(Exception):
    pass


class Samples(Dataset):
    """A small regression set that can raise at one fetch, like a process dying mid-epoch."""

    def __init__(self, crash_at: int | None = None) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(120, 7, generator=g)
        self.y = (self.x[:, :1] * self.x[:, 1:2]).tanh()
        self.crash_at, self.fetched = crash_at, 0

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        self.fetched += 1
        if self.fetched == self.crash_at:
            raise Crash
        return self.x[i], self.y[i]


def _run(ckpt: Path | None, crash_at: int | None = None, resume=False, epochs: int = EPOCHS):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(7, 24), nn.ReLU(), nn.Dropout(0.2), nn.Linear(24, 1))
    sm = lumos.sparsify(model, torch.zeros(2, 7), budget=0.35)
    data = Samples(crash_at)
    history = train(
        sm, DataLoader(data, batch_size=BATCH, shuffle=True), epochs=epochs, lr=3e-3,
        val_data=(data.x, data.y), metrics=lambda p, t: {"mse": float(((p - t) ** 2).mean())},
        record_gates=True, checkpoint_dir=ckpt, checkpoint_every=3 if ckpt else None,
        resume=resume,
    )
    return sm, history


def test_a_state_dict_holds_everything_the_next_training_steps_depend_on():
    """A model rebuilt from a state_dict mid-training (what resuming does) takes the same
    steps as the original: no hidden Python-side state (caches, counters, schedules)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 7, generator=g), torch.randn(64, 1, generator=g)

    def build():
        torch.manual_seed(0)
        sm = lumos.sparsify(nn.Sequential(nn.Linear(7, 24), nn.ReLU(), nn.Linear(24, 1)),
                            x[:2], budget=0.3)
        return sm, torch.optim.Adam(sm.parameter_groups(1e-2, gate_lr=0.5))

    def step(sm, opt, k, total=40):
        sm.set_progress(k / total)
        loss = ((sm(x[k % 8 * 8:][:8]) - y[k % 8 * 8:][:8]) ** 2).mean() + sm.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss)

    sm, opt = build()
    for k in range(13):
        step(sm, opt, k)
    twin, twin_opt = build()
    twin.load_state_dict(copy.deepcopy(sm.state_dict()))
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # as if read from a file
    for k in range(13, 40):
        assert step(sm, opt, k) == step(twin, twin_opt, k), k
    _same_state(sm, twin)
    assert sm.gates.shut.any()  # the budget really moved gates across zero meanwhile


def _same_state(a: nn.Module, b: nn.Module) -> None:
    _same(a.state_dict(), b.state_dict(), "state")


def _same(x, y, where: str) -> None:
    """Bit-for-bit equal, through the dicts of extra state (which may hold tensors)."""
    if isinstance(x, torch.Tensor):
        assert isinstance(y, torch.Tensor) and torch.equal(x, y), where
    elif isinstance(x, dict):
        assert isinstance(y, dict) and x.keys() == y.keys(), where
        for k in x:
            _same(x[k], y[k], f"{where}.{k}")
    else:
        assert x == y, where


@pytest.fixture(scope="module")
def uninterrupted():
    return _run(None)


@pytest.mark.parametrize("crash_at", [5 * BATCH + 3, 120 + 4 * BATCH + 1, 2 * 120 + 1])
def test_resume_after_a_crash_reproduces_the_uninterrupted_run_exactly(
    uninterrupted, tmp_path, crash_at
):
    with pytest.raises(Crash):
        _run(tmp_path, crash_at)
    assert latest_checkpoint(tmp_path) is not None
    sm, history = _run(tmp_path, resume=True)
    ref_sm, ref_history = uninterrupted
    _same_state(sm, ref_sm)  # weights, gates, controller multipliers, noise draws, shut gates
    assert history.to_dict() == ref_history.to_dict() | {"epoch_seconds": history.epoch_seconds}
    assert sm.selected_features() == ref_sm.selected_features()
    assert sm.gates.draws == ref_sm.gates.draws and bool(sm.controller.settled)


def test_resume_true_without_a_checkpoint_starts_afresh_and_a_finished_run_is_returned(
    uninterrupted, tmp_path
):
    sm, history = _run(tmp_path, resume=True)
    _same_state(sm, uninterrupted[0])
    again, history_again = _run(tmp_path, resume=True)  # nothing left to train
    _same_state(again, sm)
    assert history_again.loss == history.loss


def test_resume_with_another_configuration_is_refused(tmp_path):
    _run(tmp_path)
    with pytest.raises(lumos.CheckpointError, match="epochs=4.*epochs=5"):
        _run(tmp_path, resume=True, epochs=5)


def test_checkpoints_load_without_executing_code_and_keep_the_newest(tmp_path):
    _run(tmp_path)
    index = json.loads((tmp_path / "index.json").read_text())
    assert len(index["files"]) == 2 and index["latest"] == list(index["files"])[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*index["files"], "index.json"])
    state = torch.load(latest_checkpoint(tmp_path), weights_only=True)
    assert state["position"]["finished"] and state["position"]["epoch"] == EPOCHS
    assert {"model", "optimizer", "history", "rng", "run"} <= state.keys()


def _flip_byte(path: Path, at: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", ["truncate", "flip", "unindexed-truncate"])
def test_a_damaged_checkpoint_is_refused_with_its_name_and_the_fix(tmp_path, damage):
    _run(tmp_path)
    path = latest_checkpoint(tmp_path)
    if damage == "flip":
        _flip_byte(path, len(path.read_bytes()) // 2)
    else:
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])
    if damage == "unindexed-truncate":  # no recorded digest: the reader itself must refuse
        (tmp_path / "index.json").unlink()
    with pytest.raises(lumos.CheckpointError) as err:
        checkpoint.load_file(path)
    assert str(path) in str(err.value) and "resume" in str(err.value)
    if damage != "unindexed-truncate":
        with pytest.raises(lumos.CheckpointError, match="damaged"):
            _run(tmp_path, resume=path)  # the damaged file itself, asked for by name
        # resuming skips the damaged latest checkpoint, naming it, for the newest intact one
        with pytest.warns(lumos.LumosWarning, match=f"damaged.*{path.name}"):
            _run(tmp_path, resume=True)
        assert checkpoint.load_file(latest_checkpoint(tmp_path))["position"]["finished"]


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_checkpoint_with_code_in_it_is_refused_and_the_code_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "model": _Exploit()}, path)
    with pytest.raises(lumos.CheckpointError, match="plain containers"):
        checkpoint.load_file(path)
    assert not (tmp_path / "PWNED").exists()
    path.write_bytes(pickle.dumps({"format": checkpoint.FORMAT}))  # not a torch file at all
    with pytest.raises(lumos.CheckpointError):
        checkpoint.load_file(path)


def test_a_crash_while_writing_leaves_the_previous_checkpoint_as_latest(tmp_path, monkeypatch):
    manager = checkpoint.CheckpointManager(tmp_path)
    manager.prepare(1000)
    first = manager.save({"value": torch.arange(3)}, step=1)
    real_save = torch.save

    def dies_halfway(obj, fh):
        real_save(obj, fh)
        fh.truncate(10)
        raise KeyboardInterrupt  # the process is stopped mid-write

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        manager.save({"value": torch.arange(5)}, step=2)
    monkeypatch.undo()
    assert manager.latest() == first
    assert torch.equal(manager.load()["value"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, "index.json"])


def test_an_unusable_output_folder_stops_training_before_the_first_step(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    steps = []
    model = nn.Linear(3, 1)
    model.register_forward_hook(lambda *a: steps.append(1))
    data = (torch.randn(8, 3), torch.randn(8, 1))
    with pytest.raises(lumos.CheckpointError, match="cannot create the checkpoint folder"):
        train(model, data, epochs=1, checkpoint_dir=blocker / "ckpts")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: SimpleNamespace(total=10, free=10))
    with pytest.raises(lumos.CheckpointError, match="MB free"):
        train(model, data, epochs=1, checkpoint_dir=tmp_path / "full")
    assert steps == []


def test_disk_full_while_saving_names_the_file_and_the_way_out(tmp_path, monkeypatch):
    def no_space(obj, fh):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(lumos.CheckpointError, match="no space left.*--resume"):
        checkpoint.save_file(tmp_path / "c.pt", {"x": 1})
    assert list(tmp_path.iterdir()) == []


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    import random

    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    state = checkpoint.rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    checkpoint.save_file(tmp_path / "rng.pt", {"format": checkpoint.FORMAT, "rng": state})
    torch.rand(5), np.random.rand(5), random.random()
    checkpoint.set_rng_state(checkpoint.load_file(tmp_path / "rng.pt")["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2] == expected[2]


def _values(batches) -> list[list[float]]:
    return [x.flatten().tolist() for x, _ in batches]


@pytest.mark.parametrize("own_generator", [True, False])
def test_one_process_sees_the_batches_of_a_plain_loop_and_replays_an_epoch_on_resume(
    own_generator,
):
    from lumos.distributed import ProcessContext

    data = TensorDataset(torch.arange(50.0)[:, None], torch.zeros(50, 1))

    def loader(batch_size: int = 8):
        g = torch.Generator().manual_seed(4) if own_generator else None
        return DataLoader(data, batch_size=batch_size, shuffle=True, generator=g)

    torch.manual_seed(0)
    plain, reference = loader(), []
    for _ in range(3):
        reference.append(_values(plain))
    torch.manual_seed(0)
    batches = EpochBatches(loader(), 8, 0, ProcessContext())
    seen = [_values(batches.epoch(e)) for e in range(2)]
    state = batches._epoch_state  # what a checkpoint in epoch 1 records
    seen.append(_values(batches.epoch(2)))
    assert seen == reference and len(batches) == 7
    assert reference[0] != reference[1]

    torch.manual_seed(123)  # a new process: other global RNG state, a fresh loader
    resumed = EpochBatches(loader(), 8, 0, ProcessContext())
    resumed.restore(state, epoch=1, batch=3)
    assert _values(resumed.epoch(1, start=3)) == reference[1][3:]
    assert _values(resumed.epoch(2)) == reference[2]

    ranks = [EpochBatches(loader(4), 4, 0, ProcessContext(rank=r, world_size=2)) for r in (0, 1)]
    torch.manual_seed(0)
    shard0 = _values(ranks[0].epoch(0))
    torch.manual_seed(0)
    shard1 = _values(ranks[1].epoch(0))
    assert len(shard0) == len(ranks[0]) == 7
    for k in range(6):  # together, the k-th batches of two ranks are one batch of 8
        assert sorted(shard0[k] + shard1[k]) == sorted(reference[0][k])
