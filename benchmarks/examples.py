"""Every example at the size its docs tell users to run (no ``--smoke``).

    python -m benchmarks.examples [--only NAME ...]

The tests run the examples at smoke size (seconds, to check they run); this runs
``examples/*.py`` as documented and records what each prints as its result: validation R²,
the features kept and the wall time. Writes ``docs/results/examples.{json,md}``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from benchmarks.suite import RESULTS, machine_info

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"example_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.examples", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="example file names without .py (default: all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for path in sorted(EXAMPLES.glob("*.py")):
        if args.only and path.stem not in args.only:
            continue
        module = _load(path)
        printed = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(printed):
            out = module.main(False)
        seconds = time.perf_counter() - start
        last = [line for line in printed.getvalue().splitlines() if line.strip()][-1]
        rows.append({"example": path.name, "r2": float(out["r2"]),
                     "features": [str(f) for f in out["features"]], "seconds": seconds,
                     "params": int(sum(p.numel() for p in out["small"].parameters())),
                     "printed": last})
        print(f"{path.name}: R² {out['r2']:.4f}, {seconds:.0f} s", flush=True)
    command = "python -m benchmarks.examples " + " ".join(map(shlex.quote, sys.argv[1:]))
    result = {"command": command.strip(), "machine": machine_info(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "examples.json").write_text(json.dumps(result, indent=2))
    m = result["machine"]
    lines = [
        "# Examples at their documented size", "",
        f"Command: `{result['command']}`  ",
        f"Machine: {m['cpu_model']}, {m['cpu_count']} cores, 1 torch thread, torch {m['torch']}; "
        f"{result['date']}; code {m['code']}", "",
        "Each `examples/*.py` run as its docstring says (`python examples/NAME.py`, no "
        "`--smoke`).", "",
        "| example | validation R² | features kept | compacted params | wall s "
        "| last line printed |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| `{r['example']}` | {r['r2']:.4f} | {', '.join(r['features'])} | "
                     f"{r['params']} | {r['seconds']:.0f} | {r['printed']} |")
    (RESULTS / "examples.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
