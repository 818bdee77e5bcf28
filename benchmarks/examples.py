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
import sys
import time
from pathlib import Path

import torch

import lumos
from benchmarks.suite import results_header, results_record, write_results

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
                     "params": lumos.count_params(out["small"]),
                     "printed": last})
        print(f"{path.name}: R² {out['r2']:.4f}, {seconds:.0f} s", flush=True)
    result = results_record("benchmarks.examples", rows)
    lines = results_header("Examples at their documented size", result) + [
        "Each `examples/*.py` run as its docstring says (`python examples/NAME.py`, no "
        "`--smoke`).", "",
        "| example | validation R² | features kept | compacted params | wall s "
        "| last line printed |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| `{r['example']}` | {r['r2']:.4f} | {', '.join(r['features'])} | "
                     f"{r['params']} | {r['seconds']:.0f} | {r['printed']} |")
    write_results("examples", result, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
