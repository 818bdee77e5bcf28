"""Training overhead of the gates, and where it goes: LUMOS's training step against the dense one.

    python -m benchmarks.overhead [--only NAME ...] [--size smoke|full] [--budget 0.25]
                                  [--rounds 7] [--out DIR] [--cache-dir DIR]

What is measured (GitHub issue 17, item 4), per suite workload, on one torch thread:

- ``epoch overhead``: the suite's measure (``benchmarks.suite.paired_epoch_times``): the
  median of alternating short epochs (``lumos.training.train``, up to 16 batches of the recipe's
  batch size) of the dense model and of a fresh SparseModel at ``--budget``, same process;
- ``step parts``: one batch, timed part by part in alternating rounds (forward; loss, penalty
  and backward; optimiser step; the SparseModel's ``set_progress`` / ``step`` bookkeeping),
  in microseconds: which part the added time is in;
- ``ops per step``: the ATen operators one training step dispatches (forward, backward and
  optimiser), counted with a ``TorchDispatchMode``: on small models the step's time is mostly
  the fixed cost of each operator call, so the added operators explain the added time;
- ``interleaved``: single training steps taken by the models in turn, median per model:
  the overhead figure least moved by a machine whose speed drifts;
- ``floor`` (MLP workloads, a dense ``nn.Sequential`` of ``Linear`` layers): the same gates
  written by hand in the fewest eager operators (one hard-concrete sample, one multiply per
  layer input, a one-line L0 penalty, the gates in their own Adam group), timed in the same
  alternating rounds: the overhead any eager implementation of these gates pays on this model.

Results: ``docs/results/overhead.json`` and ``overhead.md``.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader

from benchmarks.suite import RESULTS, chosen_workloads, machine_info, paired_epoch_times
from lumos.sparse_model import SparseModel
from lumos.training import make_optimizer
from lumos.training.batches import batch_pair, call_model
from lumos.workloads import build_dense, build_sparse, get_workload

PARTS = ("forward", "loss + backward", "optimizer", "bookkeeping")


class _HandGatedMLP(nn.Module):
    """The fewest eager operators for hard-concrete gates on every Linear input of an MLP."""

    def __init__(self, dense: nn.Sequential) -> None:
        super().__init__()
        self.net = dense
        widths = [m.in_features for m in dense if isinstance(m, nn.Linear)]
        self.slices = []
        start = 0
        for w in widths:
            self.slices.append(slice(start, start + w))
            start += w
        self.log_alpha = nn.Parameter(torch.full((start,), 3.0))

    def forward(self, x):
        u = torch.rand_like(self.log_alpha).clamp_(1e-6, 1 - 1e-6)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / (2.0 / 3.0))
        z = (s * 1.2 - 0.1).clamp(0.0, 1.0)
        k = 0
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                x = x * z[self.slices[k]]
                k += 1
            x = layer(x)
        return x

    def penalty(self):
        return 0.01 * torch.sigmoid(self.log_alpha).mean()


def _is_mlp(model: nn.Module) -> bool:
    return isinstance(model, nn.Sequential) and any(isinstance(m, nn.Linear) for m in model) \
        and all(isinstance(m, nn.Linear) or not list(m.parameters()) for m in model)


class _StepRunner:
    """One model's training step on a fixed batch, timed part by part."""

    def __init__(self, model: nn.Module, batch, loss_fn, lr: float, weight_decay: float) -> None:
        self.model, self.loss_fn = model, loss_fn
        self.inputs, self.targets = batch_pair(batch)
        self.sparse = isinstance(model, SparseModel)
        self.hand = isinstance(model, _HandGatedMLP)
        if self.hand:
            self.opt = torch.optim.Adam([
                {"params": list(model.net.parameters()), "weight_decay": weight_decay},
                {"params": [model.log_alpha], "lr": 0.05, "weight_decay": 0.0}], lr=lr)
        else:
            self.opt = make_optimizer(model, lr, None, weight_decay)
        model.train()
        self.seconds = collections.defaultdict(list)

    def step(self, record: bool = True) -> None:
        t0 = time.perf_counter()
        if self.sparse:
            self.model.set_progress(0.5)
        t1 = time.perf_counter()
        pred = call_model(self.model, self.inputs)
        t2 = time.perf_counter()
        loss = self.loss_fn(pred, self.targets)
        if self.sparse:
            loss = loss + self.model.penalty(loss)
        elif self.hand:
            loss = loss + self.model.penalty()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        self.opt.step()
        t4 = time.perf_counter()
        if self.sparse:
            self.model.step()
        t5 = time.perf_counter()
        if record:
            for part, seconds in zip(PARTS, (t2 - t1, t3 - t2, t4 - t3, (t1 - t0) + (t5 - t4))):
                self.seconds[part].append(seconds)

    def ops(self) -> int:
        counter = _OpCounter()
        with counter:
            self.step(record=False)
        return counter.count


class _OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def _paired_parts(runners: dict, rounds: int, steps: int) -> dict:
    for r in runners.values():
        for _ in range(5):
            r.step(record=False)
    per_round: dict = {name: collections.defaultdict(list) for name in runners}
    for _ in range(rounds):
        for name, r in runners.items():
            r.seconds.clear()
            for _ in range(steps):
                r.step()
            for part in PARTS:
                per_round[name][part].append(statistics.median(r.seconds[part]))
    return {name: {part: 1e6 * statistics.median(v) for part, v in parts.items()}
            for name, parts in per_round.items()}


def _interleaved_steps(runners: dict, steps: int) -> dict:
    """Median seconds of one training step per model, the models stepping in turn (one step
    each, then again), so that every model sees the same machine state. Rounds of several
    steps do not guarantee that where the machine's speed drifts (measured: the epoch
    overhead of one MLP read +46% and +21% in two runs of nearly the same code)."""
    times: dict = {name: [] for name in runners}
    for _ in range(steps):
        for name, r in runners.items():
            start = time.perf_counter()
            r.step(record=False)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(v) for name, v in times.items()}


#: seconds the interleaved measurement may take per workload, and its step bounds
INTERLEAVED_SECONDS, INTERLEAVED_STEPS = 15.0, (30, 600)


def run_workload(name: str, size: str, budget: float, seed: int, rounds: int,
                 cache_dir=None) -> dict:
    wl = get_workload(name)
    data = wl.data(size, seed=seed, cache_dir=cache_dir)
    recipe = wl.recipes[size]
    n_timing = min(len(data.train), 16 * recipe.batch_size)
    split = data.train.subset(torch.arange(n_timing))

    def loader():
        return DataLoader(split, batch_size=recipe.batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(seed), collate_fn=split.collate)

    epoch_dense, epoch_lumos = paired_epoch_times(
        build_dense(wl, data, seed=seed), build_sparse(wl, data, budget=budget, seed=seed),
        loader, wl.loss, recipe.lr, recipe.weight_decay, rounds=rounds)
    batch = next(iter(loader()))
    models = {"dense": build_dense(wl, data, seed=seed),
              "lumos": build_sparse(wl, data, budget=budget, seed=seed)}
    if _is_mlp(models["dense"]):
        models["floor"] = _HandGatedMLP(build_dense(wl, data, seed=seed))
    runners = {k: _StepRunner(m, batch, wl.loss, recipe.lr, recipe.weight_decay)
               for k, m in models.items()}
    parts = _paired_parts(runners, rounds, steps=20)
    totals = {k: sum(v.values()) for k, v in parts.items()}
    low, high = INTERLEAVED_STEPS
    steps = int(INTERLEAVED_SECONDS / (1e-6 * sum(totals.values())))
    interleaved = _interleaved_steps(runners, max(low, min(high, steps)))
    return {
        "workload": name, "architecture": wl.architecture, "batch_size": recipe.batch_size,
        "epoch_batches": len(loader()), "epoch_dense_s": epoch_dense, "epoch_lumos_s": epoch_lumos,
        "epoch_overhead": epoch_lumos / epoch_dense - 1.0,
        "step_parts_us": parts, "step_us": totals,
        "step_overhead": totals["lumos"] / totals["dense"] - 1.0,
        "floor_overhead": (totals["floor"] / totals["dense"] - 1.0) if "floor" in totals
        else None,
        "interleaved_step_s": interleaved,
        "interleaved_overhead": interleaved["lumos"] / interleaved["dense"] - 1.0,
        "interleaved_floor_overhead": (interleaved["floor"] / interleaved["dense"] - 1.0)
        if "floor" in interleaved else None,
        "ops_per_step": {k: r.ops() for k, r in runners.items()},
    }


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:+.1f}%"


def write_markdown(result: dict, path: Path) -> None:
    m = result["machine"]
    lines = [
        "# Training overhead of the gates (dense vs. LUMOS training step)", "",
        f"Command: `{result['command']}`  ",
        f"Machine: {m['cpu_model']}, {m['cpu_count']} cores, 1 torch thread, torch {m['torch']}; "
        f"{result['date']}; code {m['code']}", "",
        "Epoch overhead: the suite's measure (alternating short epochs of `lumos.training.train`"
        ", same process). Step: one batch, part by part (microseconds, median of alternating "
        "rounds); *added* is LUMOS minus dense. Ops: ATen operators dispatched by one training "
        "step. Floor: the same gates written by hand in the fewest eager operators (MLPs only). "
        "Interleaved: the median of single training steps taken by the models in turn (dense, "
        "LUMOS, floor, dense, ...; 30-600 steps, ~15 s), the figure least moved by a machine "
        "whose speed drifts.",
        "",
        "| workload | arch | batch | epoch overhead | step overhead, interleaved | floor, "
        "interleaved | step dense µs | step LUMOS µs | added: forward | added: loss+backward | "
        "added: optimizer | added: bookkeeping | ops dense → LUMOS | floor overhead |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["records"]:
        d, s = r["step_parts_us"]["dense"], r["step_parts_us"]["lumos"]
        ops = r["ops_per_step"]
        lines.append(
            f"| {r['workload']} | {r['architecture']} | {r['batch_size']} | "
            f"{_pct(r['epoch_overhead'])} | {_pct(r['interleaved_overhead'])} | "
            f"{_pct(r['interleaved_floor_overhead'])} | {r['step_us']['dense']:.0f} | "
            f"{r['step_us']['lumos']:.0f} | "
            + " | ".join(f"{s[p] - d[p]:+.0f}" for p in PARTS)
            + f" | {ops['dense']} → {ops['lumos']} | {_pct(r['floor_overhead'])} |")
    mean = statistics.mean(r["epoch_overhead"] for r in result["records"])
    interleaved = statistics.mean(r["interleaved_overhead"] for r in result["records"])
    within = sum(r["interleaved_overhead"] <= 0.10 for r in result["records"])
    lines += ["", f"Average epoch overhead: **{_pct(mean)}**; average interleaved step "
              f"overhead: **{_pct(interleaved)}**; at most +10% (interleaved): "
              f"{within} of {len(result['records'])} workloads.", ""]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these workloads")
    parser.add_argument("--size", choices=("smoke", "full"), default="full")
    parser.add_argument("--budget", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    names = chosen_workloads(parser, args.only)
    torch.set_num_threads(1)
    command = "python -m benchmarks.overhead " + " ".join(argv if argv is not None
                                                           else sys.argv[1:])
    records = []
    for name in names:
        record = run_workload(name, args.size, args.budget, args.seed, args.rounds,
                              args.cache_dir)
        records.append(record)
        print(f"[overhead] {name}: epoch {_pct(record['epoch_overhead'])}, step "
              f"{_pct(record['step_overhead'])}, interleaved "
              f"{_pct(record['interleaved_overhead'])}, floor "
              f"{_pct(record['floor_overhead'])}, ops {record['ops_per_step']}", flush=True)
    result = {"command": command.strip(), "machine": machine_info(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "records": records}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "overhead.json").write_text(json.dumps(result, indent=2))
    write_markdown(result, args.out / "overhead.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
