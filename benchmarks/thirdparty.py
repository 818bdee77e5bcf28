"""Third-party zoo: what LUMOS does with models built from their own packages.

    python -m benchmarks.thirdparty [--only NAME ...] [--steps 50] [--budget 0.3]

Runs the table of ``tests/thirdparty/zoo.py`` (torch.nn, torch-geometric, neuraloperator,
MONAI, e3nn, torchvision, timm; every model built from its constructor with random weights,
small sizes, nothing downloaded) through ``tests/thirdparty/harness.py``: sparsify at the
budget, train on one small random batch (target: the dense model's output + 10% noise),
compact, then check the compacted model against the gated one (eval, the example batch and
batch sizes 1 and 7), that eval output is finite and repeatable, that its parameter count
equals the cost model's, and that it reloads in a process where ``import lumos`` fails. Per
model: package, family, dense parameters, prunable share (parameters that vanish when every
gate closes), kept fraction after training, max |gated - compacted|, the checks, the status
(gated+exact / exact, not gated / refused / FAILED) and seconds. Writes
``docs/results/thirdparty.json`` and ``thirdparty.md``.

torchvision 0.28 (the release for torch 2.13) is a CUDA build on PyPI whose C++ extension
does not load on the CPU torch; ``tests/torchvision_cpu.py`` lets it
import (its classification and segmentation models are plain torch), and timm imports it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _table():
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from thirdparty import harness, zoo

    return zoo, harness


def _fmt(x, kind: str = "pct") -> str:
    if x is None:
        return "–"
    if kind == "pct":
        return f"{100 * x:.0f}%"
    if kind == "frac":
        return f"{x:.3f}"
    if kind == "sci":
        return "0" if x == 0 else f"{x:.1e}"
    if kind == "bool":
        return "yes" if x else "**no**"
    return str(x)


def _md(result: dict, rows: list[dict], known: dict[str, str]) -> str:
    m = result["machine"]
    counts = result["counts"]
    lines = [
        "# Third-party zoo: LUMOS on models from their own packages", "",
        f"Command: `{result['command']}`  ",
        f"Machine: {m['cpu_model']}, {m['cpu_count']} cores, 1 torch thread, torch {m['torch']}, "
        f"Python {m['python']}; {result['date']}; code {m['code']}  ",
        "Packages: " + ", ".join(f"{k} {v}" for k, v in result["packages"].items()), "",
        f"Each model: `lumos.sparsify(model, inputs, budget={result['budget']})`, "
        f"{result['steps']} Adam steps (lr 3e-3, gate lr 0.2) on one small random batch "
        "(target: the dense model's own output + 10% noise), `sm.compact()`, then the checks: "
        "compacted == gated within 1e-4 of the output scale (eval; the example batch and batch "
        "sizes 1 and 7), eval output finite and repeatable (two calls equal), "
        "`lumos.count_params(small) == sm.compacted_counts()['params']`, and `torch.load` of "
        "the saved compacted model in a process where `import lumos` fails. *Prunable*: the "
        "share of the dense parameters that vanish when every gate is closed "
        "(`1 - cost(all gates 0) / dense`); a model is *gated* when it is at least 50%. "
        "*Kept*: `sm.kept_fraction()` after training. Models are built from their "
        "constructors with random weights at small sizes (2D where a net allows "
        "`spatial_dims=2`); nothing is downloaded.", "",
        "torchvision 0.28 (the release for torch 2.13) is a CUDA build on PyPI: its C++ "
        "extension (detection operators) does not load on the CPU torch, so the zoo defines "
        "the two operator schemas torchvision registers at import "
        "(`tests/torchvision_cpu.py`); its models are plain "
        "torch. timm imports torchvision.", "",
        f"**{counts['total']} models** ({counts['ran_eagerly']} ran eagerly): "
        f"**{counts['gated_exact']} gated+exact**, {counts['exact_not_gated']} exact but not "
        f"gated (under half prunable), {counts['refused']} refused with a LUMOS error naming "
        f"the layer, **{counts['failed']} failed** (LUMOS wrong or crashing), "
        f"{counts['skipped']} skipped. Total {result['seconds']:.0f} s.", "",
        "| model | package | family | dense params | prunable | kept | max abs diff | finite "
        "| repeatable | params = cost model | reloads w/o LUMOS | status | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        status = r["status"].replace("|", "\\|")
        if len(status) > 260:
            status = status[:257] + "..."
        lines.append(
            f"| {r['name']} | {r['package']} | {r['family']} | "
            f"{_fmt(r['dense_params'], 'int')} | {_fmt(r['prunable'])} | "
            f"{_fmt(r['kept'], 'frac')} | {_fmt(r['max_diff'], 'sci')} | "
            f"{_fmt(r['finite'], 'bool')} | {_fmt(r['repeatable'], 'bool')} | "
            f"{_fmt(r['params_equal'], 'bool')} | {_fmt(r['reloads'], 'bool')} | {status} | "
            f"{r['seconds']:.1f} |")
    failed = [r for r in rows if r["outcome"] == "failed"]
    if failed:
        lines += ["", "## Failures (LUMOS wrong or crashing)", ""]
        for r in failed:
            lines.append(f"- **{r['name']}** ({r['stage']}): {r['reason']}")
            if r["name"] in known:
                lines.append(f"  - diagnosis: {known[r['name']]}")
    shallow = [r for r in rows if r["outcome"] == "exact" and not r["gated"]]
    if shallow:
        lines += ["", "## Exact but not gated: what LUMOS keeps whole", ""]
        for r in shallow:
            why = next((w for w in r["warnings"] if "kept whole" in w), "")
            why = why.split("because ", 1)[-1] if why else "(no warning)"
            why = why if len(why) <= 300 else why[:297] + "..."
            lines.append(f"- {r['name']} ({_fmt(r['prunable'])} prunable): {why}")
    notes = [r for r in rows if r["cost_dense_params"] is not None
             and abs(r["cost_dense_params"] - r["dense_params"]) > 0.5]
    if notes:
        lines += ["", "## Notes", ""]
        lines += [f"- {r['name']}: {r['dense_params'] - r['cost_dense_params']:.0f} parameters "
                  "the forward never uses are outside the cost model (and dropped by "
                  "compaction)" for r in notes]
    return "\n".join(lines) + "\n"


def _versions() -> dict:
    from importlib import metadata

    out = {}
    for dist in ("torch", "torch-geometric", "neuraloperator", "torch-harmonics", "monai",
                 "einops", "e3nn", "torchvision", "timm"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.thirdparty", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these models")
    parser.add_argument("--steps", type=int, default=50, help="training steps (default 50)")
    parser.add_argument("--budget", type=float, default=0.3, help="budget (default 0.3)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default docs/results)")
    args = parser.parse_args(argv)

    import torch

    from benchmarks.suite import RESULTS, machine_info

    zoo, harness = _table()
    names = [e.name for e in zoo.TABLE]
    unknown = [n for n in args.only or () if n not in names]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; available: {names}")
    torch.set_num_threads(1)
    out = args.out or RESULTS
    command = "python -m benchmarks.thirdparty " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    start = time.perf_counter()
    rows = []
    with harness.Reloader() as reloader:
        for entry in zoo.TABLE:
            if args.only and entry.name not in args.only:
                continue
            result = harness.run_entry(entry, reloader, steps=args.steps, budget=args.budget)
            rows.append(result.as_dict())
            print(f"[thirdparty] {entry.name}: {result.status[:160]} ({result.seconds:.1f} s)",
                  flush=True)
    outcomes = [r["outcome"] for r in rows]
    counts = {
        "total": len(rows),
        "ran_eagerly": sum(r["outcome"] not in ("skipped", "broken") for r in rows),
        "gated_exact": sum(r["outcome"] == "exact" and r["gated"] for r in rows),
        "exact_not_gated": sum(r["outcome"] == "exact" and not r["gated"] for r in rows),
        "refused": outcomes.count("refused"),
        "failed": outcomes.count("failed"),
        "skipped": outcomes.count("skipped") + outcomes.count("broken"),
    }
    result = {"command": command.strip(), "machine": machine_info(), "packages": _versions(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "budget": args.budget, "steps": args.steps, "counts": counts,
              "seconds": time.perf_counter() - start, "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / "thirdparty.json").write_text(json.dumps(result, indent=2))
    (out / "thirdparty.md").write_text(_md(result, rows, zoo.KNOWN_DEFECTS))
    print(f"[thirdparty] {counts}; wrote {out / 'thirdparty.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
