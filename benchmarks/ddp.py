"""DDP scaling, exact resume and fault recovery, measured on this machine.

    python -m benchmarks.ddp [--samples 16384] [--epochs 6] [--batch 256] [--quick]

What it runs (each configuration launched by ``torchrun --standalone``, gloo on loopback):

1. Throughput: the demo MLP (aerodynamic drag + 12 noise columns, budget 0.25) trained with
   the same global batch by 1 process with 1 thread, 1 process with 2 threads, and 2 processes
   with 1 thread each. Samples/s over the training steps (validation excluded), final R² and
   kept parameters; the two ranks' gates are compared bit for bit.
2. Fault recovery: the 2-process run again with ``--max-restarts=1`` and rank 1 SIGKILLed in
   the middle of epoch 2; the final gates are compared with the undisturbed 2-process run.
3. Resume exactness: a 1-process run that crashes mid-epoch and is resumed from its last
   checkpoint, compared bit for bit with the uninterrupted run.
4. The command line as-is under torchrun: ``lumos fit burgers --size smoke`` on 2 processes.

Results: ``docs/results/ddp.json`` and ``docs/results/ddp.md`` (with the machine, its load
average and the exact commands). A GPU row is added when CUDA is available.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
BUDGET = 0.25


class Samples(Dataset):
    """Tensors on disk, fetched one sample at a time; may SIGKILL its process at one fetch."""

    def __init__(self, path: Path, kill_at: int | None = None) -> None:
        data = torch.load(path, weights_only=True)
        self.x, self.y = data["x"], data["y"]
        self.kill_at, self.fetched = kill_at, 0

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        self.fetched += 1
        if self.fetched == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.x[i], self.y[i]


def make_data(folder: Path, samples: int) -> tuple[Path, Path]:
    from lumos.workloads.laws import make_law_data, train_val_split

    data = make_law_data("drag", n_samples=samples + samples // 4, n_noise=12, seed=0)
    tr, va = train_val_split(data, 0.2, seed=0)
    paths = folder / "train.pt", folder / "val.pt"
    for part, path in zip((tr, va), paths):
        torch.save({"x": torch.from_numpy(part.X), "y": torch.from_numpy(part.y)}, path)
    return paths


def worker(args: argparse.Namespace) -> None:
    """One rank of one configuration (started by torchrun)."""
    import lumos
    from lumos import distributed
    from lumos.demo import demo_mlp
    from lumos.metrics import r2
    from lumos.training import predict, train

    torch.set_num_threads(args.threads)
    ctx = distributed.init_from_env()
    device = torch.device("cuda", ctx.local_rank) if args.cuda else None
    first_life = distributed.restart_count() == 0
    kill_at = args.kill_at if ctx.rank == 1 and first_life else None
    train_set = Samples(Path(args.data) / "train.pt", kill_at)
    val = torch.load(Path(args.data) / "val.pt", weights_only=True)
    torch.manual_seed(0)
    dense = demo_mlp(train_set.x.shape[1], args.width)
    sm = dense if args.dense else lumos.sparsify(dense, train_set.x[:8], budget=BUDGET)
    per_rank = args.batch // ctx.world_size
    loader = DataLoader(train_set, batch_size=per_rank, shuffle=True)
    history = train(sm, loader, epochs=args.epochs, lr=2e-3, seed=0, device=device,
                    checkpoint_dir=args.checkpoints, checkpoint_every=args.checkpoint_every,
                    resume=args.checkpoints is not None, progress=False)
    sm.cpu()
    pred, target = predict(sm, (val["x"], val["y"]))
    out = Path(args.out)
    if not args.dense:
        torch.save({"log_alpha": sm.gates.log_alpha.detach(), "shut": sm.gates.shut,
                    "state": {k: v for k, v in sm.state_dict().items() if torch.is_tensor(v)}},
                   out / f"rank{ctx.rank}.pt")
    if ctx.is_main:
        record = {
            "world_size": ctx.world_size,
            "threads_per_process": args.threads,
            "device": "cuda" if args.cuda else "cpu",
            "global_batch": args.batch,
            "epochs": args.epochs,
            "samples_per_epoch": len(train_set),
            "epoch_seconds": history.epoch_seconds,
            "val_r2": r2(pred, target),
            "model": "dense" if args.dense else "LUMOS",
            "kept_params": (lumos.count_params(sm) if args.dense
                            else sm.compacted_counts()["params"]),
            "dense_params": lumos.count_params(dense),
            "restarts": distributed.restart_count(),
        }
        (out / "record.json").write_text(json.dumps(record, indent=1))
    distributed.shutdown()


def launch(name: str, nproc: int, threads: int, args, workdir: Path, *, restarts: int = 0,
           kill_at: int | None = None, checkpoint_every: int | None = None,
           cuda: bool = False, dense: bool = False) -> tuple[dict, list[str], float]:
    out = workdir / name
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", f"--max-restarts={restarts}", "-m", "benchmarks.ddp",
           "--worker", "--data", str(workdir), "--out", str(out), "--threads", str(threads),
           "--epochs", str(args.epochs), "--batch", str(args.batch), "--width", str(args.width)]
    if kill_at is not None:
        cmd += ["--kill-at", str(kill_at)]
    if checkpoint_every is not None:
        cmd += ["--checkpoints", str(out / "checkpoints"),
                "--checkpoint-every", str(checkpoint_every)]
    if cuda:
        cmd += ["--cuda"]
    if dense:
        cmd += ["--dense"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1",
               PYTHONWARNINGS="ignore")
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stderr[-4000:]}")
    record = json.loads((out / "record.json").read_text())
    return record, cmd, wall


def _gates(workdir: Path, name: str, rank: int = 0) -> dict:
    return torch.load(workdir / name / f"rank{rank}.pt", weights_only=True)


def _resume_exactness(workdir: Path, args) -> dict:
    """One process: crash mid-epoch (an exception at a data fetch), resume, compare."""
    import lumos
    from lumos.demo import demo_mlp
    from lumos.training import train

    class Crash(Exception):
        pass

    class Crashing(Samples):
        def __getitem__(self, i):
            self.fetched += 1
            if self.fetched == self.kill_at:
                raise Crash
            return self.x[i], self.y[i]

    torch.set_num_threads(1)
    epochs = min(args.epochs, 3)

    def run(checkpoints, crash_at=None):
        data = Crashing(workdir / "train.pt", crash_at)
        torch.manual_seed(0)
        sm = lumos.sparsify(demo_mlp(data.x.shape[1], args.width), data.x[:8], budget=BUDGET)
        history = train(sm, DataLoader(data, batch_size=args.batch, shuffle=True),
                        epochs=epochs, lr=2e-3, checkpoint_dir=checkpoints,
                        checkpoint_every=5 if checkpoints else None, resume=bool(checkpoints),
                        progress=False)
        return sm, history

    reference, ref_history = run(None)
    n = len(Samples(workdir / "train.pt"))
    crash_at = n + n // 2 + 7  # in the middle of epoch 2
    ckpt = workdir / "resume-checkpoints"
    with contextlib.suppress(Crash):
        run(ckpt, crash_at)
    resumed, history = run(ckpt)
    a, b = reference.state_dict(), resumed.state_dict()
    identical = all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k]
                    for k in a)
    return {
        "epochs": epochs,
        "crashed_at_sample_fetch": crash_at,
        "state_bitwise_identical": identical,
        "loss_history_identical": history.loss == ref_history.loss,
        "max_abs_log_alpha_diff": float((reference.gates.log_alpha.detach()
                                         - resumed.gates.log_alpha.detach()).abs().max()),
    }


def _cli_under_torchrun(workdir: Path) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "lumos.cli", "fit", "burgers", "--size", "smoke", "--threads", "1",
           "--out", str(workdir / "cli-run"), "--cache-dir", str(workdir / "cache")]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    record = {"command": _shell(cmd), "returncode": done.returncode, "wall_seconds": wall}
    if done.returncode == 0:
        metrics = json.loads((workdir / "cli-run" / "metrics.json").read_text())
        record.update(world_size=metrics["world_size"], final=metrics["final"]["compacted"],
                      params=metrics["params"], stdout=done.stdout.strip().splitlines())
    else:
        record["stderr"] = done.stderr[-3000:]
    return record


def _shell(cmd: list[str]) -> str:
    shown = ["python" if c == sys.executable else c for c in cmd]
    return " ".join(shlex.quote(c) for c in shown)


def _throughput(record: dict) -> float:
    # the first epoch pays for warm-up (allocations, gloo buckets): report the steady ones
    seconds = record["epoch_seconds"][1:] or record["epoch_seconds"]
    return record["samples_per_epoch"] * len(seconds) / sum(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=16384)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch", type=int, default=256, help="global batch")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a try")
    parser.add_argument("--out", type=Path, default=RESULTS)
    # worker options (set by launch)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--kill-at", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoints", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint-every", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cuda", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dense", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.quick:
        args.samples, args.epochs = 4096, 3
    from benchmarks.suite import machine_info

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="lumos-ddp-") as tmp:
        workdir = Path(tmp)
        make_data(workdir, args.samples)
        rows, commands = [], {}
        for name, nproc, threads in (("1 process x 1 thread", 1, 1),
                                     ("1 process x 2 threads", 1, 2),
                                     ("2 processes x 1 thread", 2, 1)):
            record, cmd, wall = launch(name.replace(" ", "_"), nproc, threads, args, workdir)
            record.update(name=name, wall_seconds=wall, samples_per_second=_throughput(record))
            rows.append(record)
            commands[name] = _shell(cmd)
        # the plain model through the same loop and DDP: how much of the scaling is LUMOS's
        for name, nproc in (("dense model, 1 process x 1 thread", 1),
                            ("dense model, 2 processes x 1 thread", 2)):
            record, cmd, wall = launch(name.replace(" ", "_").replace(",", ""), nproc, 1, args,
                                       workdir, dense=True)
            record.update(name=name, wall_seconds=wall, samples_per_second=_throughput(record))
            rows.append(record)
            commands[name] = _shell(cmd)
        if torch.cuda.is_available():
            record, cmd, wall = launch("gpu", 1, 1, args, workdir, cuda=True)
            record.update(name="1 GPU", wall_seconds=wall, samples_per_second=_throughput(record))
            rows.append(record)
            commands["1 GPU"] = _shell(cmd)
        two = "2_processes_x_1_thread"
        r0, r1 = _gates(workdir, two, 0), _gates(workdir, two, 1)
        ranks_identical = all(torch.equal(r0["state"][k], r1["state"][k]) for k in r0["state"])

        # fault: kill rank 1 in the middle of epoch 2; checkpoints every 10 steps
        per_rank = args.samples // 2
        kill_at = per_rank + per_rank // 2 + 3
        undisturbed, _, wall_ok = launch("undisturbed", 2, 1, args, workdir, checkpoint_every=10)
        faulty, cmd, wall_fault = launch("fault", 2, 1, args, workdir, restarts=1,
                                         kill_at=kill_at, checkpoint_every=10)
        g_ok, g_fault = _gates(workdir, "undisturbed"), _gates(workdir, "fault")
        fault = {
            "command": _shell(cmd),
            "killed": f"rank 1, SIGKILL at its sample fetch {kill_at} (epoch 2 of "
                      f"{args.epochs}), checkpoints every 10 steps",
            "restarts": faulty["restarts"],
            "max_abs_log_alpha_diff": float((g_ok["log_alpha"] - g_fault["log_alpha"]).abs()
                                            .max()),
            "same_shut_gates": bool(torch.equal(g_ok["shut"], g_fault["shut"])),
            "state_bitwise_identical": all(torch.equal(g_ok["state"][k], g_fault["state"][k])
                                           for k in g_ok["state"]),
            "val_r2": {"undisturbed": undisturbed["val_r2"], "after_fault": faulty["val_r2"]},
            "wall_seconds": {"undisturbed": wall_ok, "with_fault_and_restart": wall_fault},
        }
        resume = _resume_exactness(workdir, args)
        cli = _cli_under_torchrun(workdir)
    result = {
        "machine": machine_info() | {"load_average_before": load_before,
                                     "load_average_after": os.getloadavg()},
        "command": _shell([sys.executable, "-m", "benchmarks.ddp", *sys.argv[1:]]),
        "setup": {"samples": args.samples, "epochs": args.epochs, "global_batch": args.batch,
                  "width": args.width, "budget": BUDGET, "backend": "gloo (loopback)"},
        "throughput": rows,
        "commands": commands,
        "ranks_bitwise_identical": ranks_identical,
        "fault_recovery": fault,
        "resume": resume,
        "cli_under_torchrun": cli,
        "gpu": "measured" if torch.cuda.is_available() else "no GPU on this machine",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ddp.json").write_text(json.dumps(result, indent=1))
    (args.out / "ddp.md").write_text(markdown(result))
    print(markdown(result))


def markdown(r: dict) -> str:
    m, s = r["machine"], r["setup"]
    lines = [
        "# DDP: throughput, fault recovery, exact resume",
        "",
        f"`{r['command']}` — {m['cpu_model']} ({m['cpu_count']} cores), torch {m['torch']}, "
        f"LUMOS {m['lumos']}. Load average before/after: "
        f"{', '.join(f'{x:.1f}' for x in m['load_average_before'])} / "
        f"{', '.join(f'{x:.1f}' for x in m['load_average_after'])} (on a shared machine other "
        "jobs may run at the same time: the ratios are indicative).",
        "",
        f"Demo MLP (width {s['width']}, aerodynamic drag + 12 noise columns), budget "
        f"{s['budget']}, {s['samples']} samples, global batch {s['global_batch']}, "
        f"{s['epochs']} epochs, {s['backend']}. Throughput over the training steps of epochs "
        "2+ (validation excluded).",
        "",
        "| configuration | samples/s | vs 1 process of the same model | val R² | kept params |"
        " wall s |",
        "|---|---|---|---|---|---|",
    ]
    bases = {}
    for row in r["throughput"]:
        bases.setdefault(row.get("model", "LUMOS"), row["samples_per_second"])
    for row in r["throughput"]:
        base = bases[row.get("model", "LUMOS")]
        lines.append(
            f"| {row['name']} | {row['samples_per_second']:.0f} | "
            f"{row['samples_per_second'] / base:.2f}x | {row['val_r2']:.4f} | "
            f"{row['kept_params']:.0f} / {row['dense_params']:.0f} | {row['wall_seconds']:.1f} |"
        )
    f, res, cli = r["fault_recovery"], r["resume"], r["cli_under_torchrun"]
    walls = f["wall_seconds"]
    lines += [
        "",
        f"- The two ranks' parameters, gates and controller state after training: "
        f"{'bit-for-bit identical' if r['ranks_bitwise_identical'] else 'DIFFERENT'}.",
        f"- Fault recovery: {f['killed']}; torchrun restarted the group {f['restarts']} time(s) "
        f"from the last checkpoint. Final gates vs. the undisturbed run: max |Δ log α| = "
        f"{f['max_abs_log_alpha_diff']:.3g}, same shut gates: {f['same_shut_gates']}, whole "
        f"state bit-for-bit identical: {f['state_bitwise_identical']}; val R² "
        f"{f['val_r2']['undisturbed']:.4f} vs {f['val_r2']['after_fault']:.4f}; wall "
        f"{walls['undisturbed']:.1f} s vs {walls['with_fault_and_restart']:.1f} s.",
        f"- Resume (1 process, crash mid-epoch 2 of {res['epochs']}, resumed from the last "
        f"checkpoint): state bit-for-bit identical to the uninterrupted run: "
        f"{res['state_bitwise_identical']}; loss history identical: "
        f"{res['loss_history_identical']}.",
        f"- `lumos fit` under torchrun as-is: `{cli['command']}` → exit {cli['returncode']}"
        + (f", world size {cli['world_size']}, compacted {cli['params']['compacted']:.0f} / "
           f"{cli['params']['dense']:.0f} params" if cli["returncode"] == 0 else "") + ".",
        f"- GPU: {r['gpu']}.",
        "",
        "Commands (run from the repository root):",
        "",
    ]
    for name, cmd in r["commands"].items():
        lines.append(f"- {name}: `{cmd}`")
    lines.append(f"- fault: `{f['command']}`")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
