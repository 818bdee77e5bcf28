"""LUMOS side by side with the peers, in one run.

    python -m benchmarks.peers [--smoke] [--only NAME ...] [--part structured|features|all]
                               [--budget 0.25] [--seed 0] [--resume]

Part 1 (structured): LUMOS vs. Torch-Pruning (magnitude, Taylor) vs. global magnitude masks at
equal parameter count and equal epochs on workloads spanning MLP, CNN, GNN, FNO and attention
(see ``benchmarks/peers/structured.py``). Part 2 (features): LUMOS vs. STG, LassoNet and RF/MI
rankings against the ground truth of every workload, ``make_friedman1`` and physics laws
(``benchmarks/peers/features.py``). Results: ``docs/results/peers.{json,md}`` and PNG plots
(``peers_smoke.*`` with ``--smoke``); each record is also kept under ``docs/results/peers/`` so
an interrupted run resumes with ``--resume``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import shlex
import sys
import time
import warnings
from pathlib import Path

import torch

from lumos.workloads import workload_names

from ..suite import RESULTS, machine_info
from . import features, report, structured

#: the structured comparison's workloads: MLP, CNN, FNO, GNN and attention
STRUCTURED_WORKLOADS = ("atomistic_energy", "cosmo_power_spectrum", "ct_lesion", "cfd_pressure",
                        "darcy", "boiling_point", "mesh_pde", "conformer_energy", "combustion",
                        "burgers")
PEER_PACKAGES = ("torch-pruning", "stg", "lassonet", "scikit-learn")


def peer_versions() -> str:
    out = []
    for name in PEER_PACKAGES:
        try:
            out.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{name} (not installed)")
    return ", ".join(out)


def _reuse(path: Path, key: dict, resume: bool) -> dict | None:
    if not (resume and path.exists()):
        return None
    record = json.loads(path.read_text())
    return record if record.get("run_key") == key else None


def _lumos_from(record: dict | None, names: list[str]):
    """LUMOS's selection from a structured record of the same run (no second training); only
    for the training-only pipeline (a structured run confirms nothing)."""
    if record is None or "features_kept" not in record:
        return None
    import numpy as np

    kept = [names.index(n) for n in record["features_kept"]]
    return kept, np.asarray(record["feature_scores"]), {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true",
                        help="quick pass: smoke workloads, small synthetic sets, no plots")
    parser.add_argument("--workload-size", choices=("smoke", "full"), default=None,
                        help="workload data size and recipe (default: full; smoke with --smoke)")
    parser.add_argument("--full-for", nargs="+", metavar="NAME", default=[],
                        help="structured part: these workloads at full size whatever "
                             "--workload-size says")
    parser.add_argument("--features-full-for", nargs="+", metavar="NAME", default=[],
                        help="feature part: these workloads at full size")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="only these workloads / sets (friedman1, law:drag, ...)")
    parser.add_argument("--part", choices=("structured", "features", "all"), default="all")
    parser.add_argument("--budget", type=float, default=0.25)
    parser.add_argument("--budget-on", choices=("params", "flops"), default="params",
                        help="structured part: LUMOS's budget and the peers' target in "
                             "parameters (default) or FLOPs per sample; flops writes "
                             "peers_flops.md beside the parameter results")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--resume", action="store_true",
                        help="reuse records already in OUT/peers/ from the same settings")
    parser.add_argument("--confirm", action="store_true",
                        help="feature sets: LUMOS trains on 80%% of the training samples and "
                             "confirms its selection on the rest (lumos.confirm_features)")
    parser.add_argument("--rerun-lumos", action="store_true",
                        help="feature sets: run LUMOS again and reuse the peers' selections "
                             "(and downstream metrics of kept sets already trained) from the "
                             "record in OUT/peers/ of the same size, budget and seed")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    torch.set_num_threads(1)

    known = set(workload_names())
    stem = "peers" + ("_flops" if args.budget_on == "flops" else "") + (
        "_smoke" if args.smoke else "")
    if args.budget_on == "flops" and args.part == "all":
        args.part = "structured"  # feature selection does not depend on what the budget counts
    per = args.out / stem
    per.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.peers " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))

    workload_size = args.workload_size or ("smoke" if args.smoke else "full")

    def size_of(name: str, part: str = "structured") -> str:
        full = args.full_for if part == "structured" else args.features_full_for
        return "full" if name in full else workload_size

    def wanted(name: str) -> bool:
        return args.only is None or name in args.only

    struct_records: list[dict] = []
    by_workload: dict[str, dict] = {}
    if args.part in ("structured", "all"):
        for name in STRUCTURED_WORKLOADS:
            if not wanted(name):
                continue
            key = {"size": size_of(name), "budget": args.budget, "seed": args.seed}
            if args.budget_on != "params":
                key["budget_on"] = args.budget_on
            path = per / f"structured_{name}_{size_of(name)}.json"
            record = _reuse(path, key, args.resume)
            if record is not None:
                print(f"[peers] {name}: reused {path}", flush=True)
            else:
                start = time.perf_counter()
                record = structured.run_structured(name, size_of(name), args.budget, args.seed,
                                                   args.cache_dir, budget_on=args.budget_on)
                record["wall_s"] = time.perf_counter() - start
                record["run_key"] = key
                path.write_text(json.dumps(record, indent=2))
            struct_records.append(record)
            by_workload[name] = record

    feat_records: list[dict] = []
    if args.part in ("features", "all"):
        names = [n for n in workload_names() if wanted(n)]
        synthetic = [t for t in features.synthetic_tasks(args.budget, args.seed, args.smoke,
                                                             args.confirm)
                     if wanted(t.name)]
        for name in names + [t.name for t in synthetic]:
            size = size_of(name, "features") if name in known else (
                "synthetic-smoke" if args.smoke else "synthetic")
            base_key = {"size": size, "budget": args.budget, "seed": args.seed}
            key = {**base_key, "lumos": features.CONFIRMED_PIPELINE} if args.confirm \
                else base_key
            path = per / f"features_{name.replace(':', '_')}.json"
            record = _reuse(path, key, args.resume and not args.rerun_lumos)
            if record is None:
                start = time.perf_counter()
                lumos_result = None
                if name in known:
                    task = features.workload_task(name, size, args.budget, args.seed,
                                                  args.cache_dir, confirm=args.confirm)
                    reused = by_workload.get(name)
                    if reused and reused["size"] == size and not args.confirm:
                        lumos_result = _lumos_from(reused, task.feature_names)
                else:
                    task = next(t for t in synthetic if t.name == name)
                previous = None
                if args.rerun_lumos and path.exists():
                    old = json.loads(path.read_text())
                    old_key = {k: old.get("run_key", {}).get(k) for k in base_key}
                    previous = old if old_key == base_key else None
                record = features.run_task(task, args.seed, previous=previous,
                                           lumos_result=lumos_result)
                record["peers_reused"] = previous is not None
                record["lumos_reused_from_structured"] = lumos_result is not None
                record["wall_s"] = time.perf_counter() - start
                record["run_key"] = key
                path.write_text(json.dumps(record, indent=2))
            v = report.feature_verdict(record)
            print(f"[peers] features {name}: LUMOS F1 {v['lumos_f1']}, vs self "
                  f"{v['self']['verdict']}, vs ranked {v['ranked']['verdict']}", flush=True)
            feat_records.append(record)

    rows, epochs = features.SYNTHETIC["smoke" if args.smoke else "full"]
    full = sorted({r["workload"] for r in struct_records if r["size"] == "full"}
                  | {r["set"] for r in feat_records if r["size"] == "full"})
    sizes_note = (f"workloads at their `{workload_size}` data size and training recipe"
                  + (f" except {', '.join(full)} at `full`" if full and workload_size != "full"
                     else "") + "; "
                  f"synthetic sets {rows} rows, MLP trained {epochs} epochs")
    meta = {
        "command": command,
        "machine": machine_info(),
        "peer_versions": peer_versions(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "budget": args.budget,
        "budget_on": args.budget_on,
        "records": f"docs/results/{stem}/",
        "seed": args.seed,
        "workload_size": workload_size,
        "sizes_note": sizes_note,
    }
    plots = report.plot(struct_records, feat_records, args.out, stem) if not args.smoke else []
    summary = {"meta": meta, "structured": struct_records, "features": feat_records,
               "summary": report.summary_rows(struct_records, feat_records)}
    (args.out / f"{stem}.json").write_text(json.dumps(summary, indent=2))
    report.write_markdown(struct_records, feat_records, meta, args.out / f"{stem}.md", plots)
    print("\n".join(report.summary_rows(struct_records, feat_records)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
