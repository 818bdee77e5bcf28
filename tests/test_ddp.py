"""Two processes on loopback (gloo, ``torchrun``) train one SparseModel as one big batch.

This file is also the worker script ``torchrun`` launches (see ``__main__`` at the bottom), so
the tests and the workers share one definition of the run.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import lumos
from lumos import distributed
from lumos.training import train

N_SAMPLES, PER_RANK_BATCH, EPOCHS, CHECKPOINT_EVERY = 256, 16, 3, 3
#: the worker of rank 1 dies in its first life when it fetches this sample (epoch 1, mid-way)
FAULT_AT_ITEM = N_SAMPLES // 2 + 5 * PER_RANK_BATCH + 3


class Samples(Dataset):
    """A fixed regression set; optionally SIGKILLs its own process at one fetch (a crash)."""

    def __init__(self, kill_at: int | None = None) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(N_SAMPLES, 9, generator=g)
        self.y = torch.stack([self.x[:, 0] * self.x[:, 1], self.x[:, 2].sin()], 1)
        self.kill_at = kill_at
        self.fetched = 0

    def __len__(self) -> int:
        return N_SAMPLES

    def __getitem__(self, i: int):
        self.fetched += 1
        if self.kill_at is not None and self.fetched == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.x[i], self.y[i]


def run(batch_size: int, checkpoint_dir: Path | None = None, kill_at: int | None = None):
    """The run every test compares: same model, data, seed; returns the trained SparseModel."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(9, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                          nn.Linear(32, 2))
    sm = lumos.sparsify(model, torch.zeros(4, 9), budget=0.4)
    loader = DataLoader(Samples(kill_at), batch_size=batch_size, shuffle=True)
    history = train(sm, loader, epochs=EPOCHS, lr=3e-3, seed=0, checkpoint_dir=checkpoint_dir,
                    checkpoint_every=CHECKPOINT_EVERY if checkpoint_dir else None,
                    resume=checkpoint_dir is not None)
    return sm, history


def _worker(out: Path, fault: bool) -> None:
    torch.set_num_threads(1)
    ctx = distributed.init_from_env()
    first_life = distributed.restart_count() == 0
    kill_at = FAULT_AT_ITEM if fault and ctx.rank == 1 and first_life else None
    sm, history = run(PER_RANK_BATCH, out / "checkpoints", kill_at)
    torch.save({"state": sm.state_dict(), "loss": history.loss,
                "restarts": distributed.restart_count()}, out / f"rank{ctx.rank}.pt")
    distributed.shutdown()


def _torchrun(out: Path, fault: bool = False) -> subprocess.CompletedProcess:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           f"--max-restarts={int(fault)}", __file__, str(out)] + (["--fault"] if fault else [])
    # restarts need a fresh rendezvous store per attempt (pytorch/pytorch#135712, README)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _tensors(state: dict) -> dict:
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    _torchrun(out)
    return out


@pytest.mark.slow
def test_ranks_agree_bit_for_bit_and_match_one_process_with_twice_the_batch(undisturbed):
    r0 = torch.load(undisturbed / "rank0.pt", weights_only=True)
    r1 = torch.load(undisturbed / "rank1.pt", weights_only=True)
    s0, s1 = _tensors(r0["state"]), _tensors(r1["state"])
    assert all(torch.equal(s0[k], s1[k]) for k in s0)
    assert r0["loss"] == r1["loss"]

    torch.set_num_threads(1)
    single, history = run(2 * PER_RANK_BATCH)
    ref = _tensors(single.state_dict())
    # the budget was enforced and every rank shut the same gates
    assert s0["gates.shut"].any()
    assert torch.equal(s0["gates.shut"], ref["gates.shut"])
    # Compare the model, not the weights of units that were cut: a closed neuron's weights get
    # gradients of ~1e-9 that are rounding noise (an all-reduced mean of two half batches and
    # a mean of the whole batch round differently), and Adam divides them by their own size,
    # so those dead weights random-walk by ~lr. They are not part of the model; what compaction
    # keeps must agree, and it does to float tolerance.
    ddp_model = run(2 * PER_RANK_BATCH)[0]  # same architecture, loaded with rank 0's state
    ddp_model.load_state_dict(r0["state"])
    kept, want = ddp_model.eval().compact().state_dict(), single.eval().compact().state_dict()
    assert kept.keys() == want.keys()
    for k in kept:
        torch.testing.assert_close(kept[k], want[k], rtol=1e-4, atol=1e-5, msg=k)
    for k in ("gates.log_alpha", "gates.frozen_values"):
        torch.testing.assert_close(s0[k], ref[k], rtol=1e-4, atol=1e-4, msg=k)
    assert history.loss == pytest.approx(r0["loss"], rel=1e-4)


@pytest.mark.slow
def test_a_killed_rank_restarts_from_the_last_checkpoint_and_ends_where_it_would_have(
    undisturbed, tmp_path
):
    _torchrun(tmp_path, fault=True)
    survived = torch.load(tmp_path / "rank0.pt", weights_only=True)
    assert survived["restarts"] == 1  # the group really was restarted once
    reference = torch.load(undisturbed / "rank0.pt", weights_only=True)
    got, want = _tensors(survived["state"]), _tensors(reference["state"])
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-7, msg=k)
    assert survived["loss"] == pytest.approx(reference["loss"], rel=1e-6)


if __name__ == "__main__":  # the worker torchrun starts
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--fault", action="store_true", help="rank 1 dies once, mid-epoch")
    args = parser.parse_args()
    _worker(args.out, args.fault)
