"""Inference latency in the forms a user deploys: dense, compacted, and their exported forms.

    python -m benchmarks.latency [--only NAME ...] [--size smoke|full] [--budget 0.25]
                                 [--threads N] [--out DIR] [--cache-dir DIR]

What is measured (GitHub issue 17). The suite times the compacted ``torch.fx`` module against
the dense one in eager PyTorch. A user ships neither: they export. For each workload this
trains the LUMOS model with the workload's recipe at ``--budget`` (params), compacts it, and
times, at batch 1 and batch 256 (or the whole validation split when smaller; a sample of a
graph workload is a graph), in the same
process and in alternating rounds (the median of each form's per-round medians, denormals
flushed as in the suite):

- ``dense``: the workload's dense model in eager mode (the weights do not change the time of a
  dense network, so it is the freshly built one);
- ``compacted``: ``sparse_model.compact()`` in eager mode;
- ``fast dense`` / ``fast``: ``lumos.export`` ``--format fast`` of each (BatchNorm folded,
  the fastest of plain / frozen / frozen + ``optimize_for_inference`` TorchScript), loaded back
  with ``torch.jit.load``: the deployment speed-up is ``fast dense`` over ``fast``;
- ``onnxruntime``: the compacted model's ``--format onnx`` in an ONNX Runtime CPU session, when
  ``onnx``, ``onnxscript`` and ``onnxruntime`` are installed (graph workloads: only ONNX, as
  TorchScript cannot compile torch-geometric layers).

A form that cannot be exported for a workload is recorded with the reason, not dropped.
Results: ``docs/results/latency.json`` and ``latency.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from benchmarks.suite import RESULTS, chosen_workloads, machine_info
from lumos.errors import LumosError
from lumos.export import export_model
from lumos.measure import call_latency
from lumos.workloads import build_dense, build_sparse, get_workload, train_recipe


def _timed_forms(dense, small, inputs: tuple, folder: Path) -> tuple[dict, dict]:
    """Each form as a callable on ``inputs`` (or the reason it is missing)."""
    forms: dict = {"dense": lambda: dense(*inputs), "compacted": lambda: small(*inputs)}
    missing: dict = {}
    for label, model in (("fast dense", dense), ("fast", small)):
        try:
            export_model(model, inputs, folder / label.replace(" ", "_"), "fast")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                loaded = torch.jit.load(str(folder / label.replace(" ", "_") / "model.fast.pt"))
            forms[label] = (lambda m: lambda: m(*inputs))(loaded)
        except LumosError as exc:
            missing[label] = str(exc).split(";")[0]
    if importlib.util.find_spec("onnxruntime") is None:
        missing["onnxruntime"] = "onnxruntime is not installed"
    else:
        try:
            import onnxruntime

            export_model(small, inputs, folder / "onnx", "onnx")
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            session = onnxruntime.InferenceSession(str(folder / "onnx" / "model.onnx"), options,
                                                   providers=["CPUExecutionProvider"])
            feed = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs)}
            forms["onnxruntime"] = lambda: session.run(None, feed)
        except (LumosError, RuntimeError, ValueError) as exc:
            missing["onnxruntime"] = str(exc).split(";")[0]
    return forms, missing


def time_rounds(forms: dict, rounds: int = 5, budget_s: float = 0.3) -> dict[str, float]:
    """Median latency of each callable, the forms timed in alternating rounds."""
    flushing = torch.set_flush_denormal(True)
    try:
        probe = {k: call_latency(f, repeats=3, warmup=3) for k, f in forms.items()}
        repeats = {k: max(5, min(500, int(budget_s / rounds / max(p, 1e-6))))
                   for k, p in probe.items()}
        times: dict[str, list[float]] = {k: [] for k in forms}
        for _ in range(rounds):
            for k, f in forms.items():
                times[k].append(call_latency(f, repeats=repeats[k], warmup=3))
        return {k: statistics.median(v) for k, v in times.items()}
    finally:
        if flushing:
            torch.set_flush_denormal(False)


def run_workload(name: str, size: str, budget: float, seed: int, cache_dir) -> dict:
    wl = get_workload(name)
    data = wl.data(size, seed=seed, cache_dir=cache_dir)
    recipe = wl.recipes[size]
    start = time.perf_counter()
    sm = build_sparse(wl, data, budget=budget, seed=seed)
    train_recipe(sm, wl, data, recipe, seed=seed)
    train_s = time.perf_counter() - start
    small = sm.eval().compact().eval()
    dense = build_dense(wl, data, seed=seed).eval()
    record: dict = {"workload": name, "architecture": wl.architecture, "size": size,
                    "budget": budget, "seed": seed, "train_s": train_s, "batches": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for label, n in (("batch 1", 1), ("batch 256", 256)):
            inputs = tuple(data.example_batch("val", n)[0])
            forms, missing = _timed_forms(dense, small, inputs, Path(tmp) / label.replace(" ", ""))
            with torch.inference_mode():
                seconds = time_rounds(forms)
            record["batches"][label] = {"samples": min(n, len(data.val)), "seconds": seconds,
                                        "missing": missing}
    return record


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def write_markdown(result: dict, path: Path) -> None:
    m = result["machine"]
    lines = ["# Inference latency: dense, compacted and exported forms", "",
             f"Command: `{result['command']}`  ",
             f"Machine: {m['cpu_model']}, {m['cpu_count']} cores, {m['torch_threads']} torch "
             f"threads, torch {m['torch']}; {result['date']}; code {m['code']}", "",
             "Each row: one workload, LUMOS trained with its recipe at the given budget "
             "(params), compacted, exported; every form timed in the same process in "
             "alternating rounds (median). Speed-ups are against `dense` (eager) unless the "
             "column says otherwise; `fast dense / fast` is the deployment speed-up, dense and "
             "compacted both exported with `--format fast`.", ""]
    header = ("| workload | arch | samples | dense ms | compacted | fast | fast dense / fast "
              "| fast / compacted | onnxruntime | not timed |")
    lines += [header, "|" + "---|" * (header.count("|") - 1)]
    for r in result["records"]:
        for b in r["batches"].values():
            s = b["seconds"]
            d = s.get("dense")
            lines.append(
                f"| {r['workload']} | {r['architecture']} | {b['samples']} | {1e3 * d:.3f} | "
                f"{_ratio(d, s.get('compacted'))} | {_ratio(d, s.get('fast'))} | "
                f"{_ratio(s.get('fast dense'), s.get('fast'))} | "
                f"{_ratio(s.get('compacted'), s.get('fast'))} | "
                f"{_ratio(d, s.get('onnxruntime'))} | "
                + ("; ".join(f"{k}: {v}" for k, v in b["missing"].items()) or "-") + " |")
    lines += ["", "## Geometric means", ""]
    for label in ("batch 1", "batch 256"):
        for num, den, what in (("dense", "compacted", "compacted vs. dense (eager)"),
                               ("dense", "fast", "fast export vs. dense (eager)"),
                               ("fast dense", "fast", "fast export, compacted vs. dense"),
                               ("compacted", "fast", "fast export vs. compacted (eager)")):
            ratios = [b["seconds"][num] / b["seconds"][den] for r in result["records"]
                      for k, b in r["batches"].items() if k == label
                      and num in b["seconds"] and den in b["seconds"]]
            if ratios:
                geo = statistics.geometric_mean(ratios)
                lines.append(f"- {label}, {what}: **{geo:.2f}x** over {len(ratios)} workloads")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these workloads")
    parser.add_argument("--size", choices=("smoke", "full"), default="smoke")
    parser.add_argument("--budget", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch (and ONNX Runtime) threads; default: torch's own")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    names = chosen_workloads(parser, args.only)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python -m benchmarks.latency " + " ".join(argv if argv is not None
                                                          else sys.argv[1:])
    records = []
    for name in names:
        record = run_workload(name, args.size, args.budget, args.seed, args.cache_dir)
        records.append(record)
        print(f"[latency] {name}: " + ", ".join(
            f"{k} dense/compacted {_ratio(s['dense'], s.get('compacted'))}, fast dense/fast "
            f"{_ratio(s.get('fast dense'), s.get('fast'))}"
            for k, s in ((k, v["seconds"]) for k, v in record["batches"].items())), flush=True)
    result = {"command": command.strip(), "machine": machine_info(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "records": records}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latency.json").write_text(json.dumps(result, indent=2))
    write_markdown(result, args.out / "latency.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
