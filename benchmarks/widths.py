"""Hardware-friendly widths: what ``width_multiple="auto"`` measures here, and what it buys.

    python -m benchmarks.widths [--only NAME ...] [--size smoke|full] [--budget 0.25]
                                [--multiples 1 auto 8] [--threads 1 2] [--probes 3]

What is measured (GitHub issue 17, "hardware-friendly widths ... chosen by measurement per
device"):

1. **The probe** (:mod:`lumos.widths`), ``--probes`` times at each ``--threads`` count: the
   gain of cutting the probed widths to each candidate multiple (time saved over width given
   up) and the multiple ``"auto"`` picks from them, so the table shows whether it holds.
2. **What it buys**: each workload (default: the four MLP workloads, where widths are
   matmul widths) trained with its recipe at ``--budget`` (params) once per
   ``--multiples`` value, same seed; the compacted models' kept widths, parameters and
   validation metric, and their latency at batch 1 and 256, all variants and the dense
   model timed in one process in alternating rounds (1 torch thread; denormals flushed).

Results: ``docs/results/widths.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import nn

from benchmarks.latency import time_rounds
from benchmarks.suite import chosen_workloads, results_header, results_record, write_results
from lumos import GateOptions
from lumos.measure import count_params
from lumos.runs.results import validation_metrics
from lumos.widths import CANDIDATES, choose_width_multiple, cut_gain, probe_seconds
from lumos.workloads import build_dense, build_sparse, get_workload, train_recipe

MLP_WORKLOADS = ("atomistic_energy", "alloy_mixing", "critical_temperature",
                 "cosmo_power_spectrum")


def probe_row(threads: int) -> dict:
    """The probe's gains per candidate multiple and the choice, at ``threads`` threads."""
    torch.set_num_threads(threads)
    start = time.perf_counter()
    seconds = probe_seconds(torch.device("cpu"))
    spent = time.perf_counter() - start
    gains = {n: cut_gain(seconds, n) for n in CANDIDATES}
    return {"threads": threads, "gains": gains, "chosen": choose_width_multiple(seconds),
            "probe_s": spent, "seconds": {str(w): s for w, s in seconds.items()}}


def _widths(model: nn.Module) -> list[int]:
    return [m.out_features for m in model.modules() if isinstance(m, nn.Linear)][:-1]


def _caller(model: nn.Module, inputs: tuple):
    return lambda: model(*inputs)


def workload_row(name: str, size: str, budget: float, multiples: list, seed: int,
                 cache_dir) -> dict:
    wl = get_workload(name)
    data = wl.data(size, seed=seed, cache_dir=cache_dir)
    variants: dict = {}
    for multiple in multiples:
        sm = build_sparse(wl, data, budget=budget, seed=seed,
                          gates=GateOptions(width_multiple=multiple))
        train_recipe(sm, wl, data, wl.recipes[size], seed=seed)
        small = sm.eval().compact().eval()
        label = f"{multiple}" if multiple != "auto" else f"auto ({sm.width_multiple()})"
        variants[label] = {"model": small, "widths": _widths(small),
                           "params": count_params(small),
                           "metric": validation_metrics(small, data, wl, torch.device("cpu"))[
                               wl.primary]}
    dense = build_dense(wl, data, seed=seed).eval()
    row: dict = {"workload": name, "size": size, "budget": budget, "primary": wl.primary,
                 "dense_params": count_params(dense),
                 "variants": {k: {kk: vv for kk, vv in v.items() if kk != "model"}
                              for k, v in variants.items()}, "seconds": {}}
    for label, n in (("batch 1", 1), ("batch 256", 256)):
        inputs = tuple(data.example_batch("val", n)[0])
        models = {"dense": dense, **{k: v["model"] for k, v in variants.items()}}
        forms = {k: _caller(m, inputs) for k, m in models.items()}
        with torch.inference_mode():
            row["seconds"][label] = time_rounds(forms, rounds=7)
    return row


def write_markdown(result: dict) -> list[str]:
    lines = results_header("Hardware-friendly widths: the measured multiple and what it buys",
                           result)
    lines += ["## The probe (lumos.widths)", "",
              "The time saved by cutting each probe width (64-191) to the multiple of n below, "
              "over the width given up (mean over the widths); `auto` takes the smallest n "
              "within 10% of the best gain when that reaches 1.05, else 1.", "",
              "| torch threads | " + " | ".join(f"n={n}" for n in CANDIDATES)
              + " | chosen | probe s |", "|---|" + "---|" * (len(CANDIDATES) + 2)]
    for p in result["probe"]:
        lines.append(f"| {p['threads']} | " + " | ".join(
            f"{p['gains'][n]:.3f}" for n in CANDIDATES) + f" | {p['chosen']} | "
            f"{p['probe_s']:.2f} |")
    lines += ["", "## Compacted models per width multiple (1 torch thread)", "",
              "Speed-ups against the dense model, every variant timed in the same rounds.", "",
              "| workload | multiple | kept widths | params kept | metric | batch 1 | "
              "batch 256 |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        for label, v in r["variants"].items():
            s = r["seconds"]
            lines.append(
                f"| {r['workload']} | {label} | {v['widths']} | "
                f"{100 * v['params'] / r['dense_params']:.1f}% | {r['primary']} "
                f"{v['metric']:.4f} | {s['batch 1']['dense'] / s['batch 1'][label]:.2f}x | "
                f"{s['batch 256']['dense'] / s['batch 256'][label]:.2f}x |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.widths", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="NAME")
    parser.add_argument("--size", choices=("smoke", "full"), default="full")
    parser.add_argument("--budget", type=float, default=0.25)
    parser.add_argument("--multiples", nargs="+", default=["1", "auto", "8"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--probes", type=int, default=3,
                        help="probes per thread count (does the choice hold between runs?)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)
    names = chosen_workloads(parser, args.only or list(MLP_WORKLOADS))
    multiples = [m if m == "auto" else int(m) for m in args.multiples]
    probe = [probe_row(t) for t in args.threads for _ in range(args.probes)]
    for p in probe:
        print(f"[widths] probe at {p['threads']} threads: chosen {p['chosen']}, gains "
              + ", ".join(f"{n}: {g:.3f}" for n, g in p["gains"].items()), flush=True)
    torch.set_num_threads(1)
    rows = []
    for name in names:
        rows.append(workload_row(name, args.size, args.budget, multiples, args.seed,
                                 args.cache_dir))
        print(f"[widths] {name}: " + "; ".join(
            f"{k} {v['widths']}" for k, v in rows[-1]["variants"].items()), flush=True)
    result = results_record("benchmarks.widths", rows)
    result["probe"] = probe
    write_results("widths", result, write_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
