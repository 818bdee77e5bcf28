"""The ``lumos`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import LumosError


def _demo(args: argparse.Namespace) -> int:
    from .demo import format_table, run_demo

    result = run_demo(budget=args.budget, epochs=args.epochs, seed=args.seed)
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result.to_dict(), fh, indent=2)
    return 0


def _default_out(source: str, size: str | None) -> Path:
    stem = Path(source).stem if source.endswith((".yaml", ".yml", ".json")) else source
    stem = stem.replace(":", "-").replace("/", "-").replace(".", "-")
    return Path("runs") / f"{stem}-{size or 'run'}"


def _fit(args: argparse.Namespace) -> int:
    from . import distributed
    from .runs import fit_run, format_summary, load_config

    config = load_config(
        args.source, budget=args.budget, tolerance=args.tolerance, size=args.size,
        budget_on=args.budget_on, width_multiple=args.width_multiple,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        device=args.device, threads=args.threads, checkpoint_every=args.checkpoint_every,
        dense_baseline=True if args.dense_baseline else None,
        plots=False if args.no_plots else None, cache_dir=args.cache_dir,
    )
    out = Path(args.out) if args.out else _default_out(args.source, config.size)
    try:
        result = fit_run(config, out, resume=args.resume, progress=args.progress)
    finally:
        distributed.shutdown()
    if result is not None:
        print(format_summary(result.metrics))
        print(f"run directory: {result.run_dir}")
    return 0


def _width_multiple(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a whole number nor 'auto'") from None


def _report(args: argparse.Namespace) -> int:
    from .runs import read_metrics, report_run

    text = report_run(args.run_dir, plots=not args.no_plots)
    print(json.dumps(read_metrics(args.run_dir), indent=1) if args.json else text)
    return 0


def _export(args: argparse.Namespace) -> int:
    from .export import export_run

    folder, result = export_run(args.run_dir, args.format, args.out)
    print(
        f"exported {args.format} to {folder}: {', '.join(result.files)} (reloaded and checked "
        f"with {result.checked_with}: max |difference| {result.max_abs_diff:.2g})"
    )
    return 0


def _workloads(args: argparse.Namespace) -> int:
    from .runs import workload_table

    rows = workload_table()
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    header = f"{'name':<22} {'model':<10} {'metric':<24} {'smoke':<16} {'full':<16} status"
    print(header)
    print("-" * len(header))
    for r in rows:
        if "error" in r:
            print(f"{r['name']:<22} error: {r['error']}")
            continue
        sizes = [f"{v['epochs']} ep x b{v['batch_size']}" for v in
                 (r["recipes"]["smoke"], r["recipes"]["full"])]
        status = "ok" if not r["unavailable"] else "needs packages"
        print(f"{r['name']:<22} {r['architecture']:<10} {r['metric']:<24} {sizes[0]:<16} "
              f"{sizes[1]:<16} {status}")
    print("\nsizes: smoke = seconds on a laptop (tests), full = the real problem; "
          "`lumos fit NAME --size smoke` to try one.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lumos", description="L0-regularised feature selection and structured pruning."
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser("demo", help="dense vs. LUMOS on a built-in physics regression")
    demo.add_argument("--budget", type=float, default=0.25, help="kept parameter fraction")
    demo.add_argument("--epochs", type=int, default=40)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    demo.set_defaults(func=_demo)

    fit = sub.add_parser(
        "fit", help="train a workload or a YAML config into a run directory",
        description="Train WORKLOAD (see `lumos workloads`) or CONFIG.yaml (see docs/runs.md) "
        "into a run directory; under torchrun every process trains its shard.",
    )
    fit.add_argument("source", metavar="WORKLOAD|CONFIG.yaml")
    size = fit.add_mutually_exclusive_group()
    size.add_argument("--budget", type=float, help="keep at most this parameter fraction")
    fit.add_argument("--budget-on", choices=("params", "flops", "latency"),
                     help="what --budget (and --tolerance's walk) measures (default: params)")
    fit.add_argument("--width-multiple", type=_width_multiple, metavar="N|auto",
                     help="keep gated widths at multiples of N (default 1: any width); 'auto': "
                     "the multiple this device runs fastest, measured once")
    size.add_argument("--tolerance", type=float,
                      help="smallest model within this relative loss of the dense metric")
    fit.add_argument("--out", metavar="DIR", help="run directory (default runs/NAME-SIZE)")
    fit.add_argument("--size", choices=["smoke", "full"])
    fit.add_argument("--epochs", type=int)
    fit.add_argument("--batch-size", type=int, help="per process")
    fit.add_argument("--lr", type=float)
    fit.add_argument("--seed", type=int)
    fit.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    fit.add_argument("--threads", type=int, help="torch threads per process")
    fit.add_argument("--checkpoint-every", type=int, metavar="STEPS",
                     help="also checkpoint every STEPS steps inside an epoch")
    fit.add_argument("--dense-baseline", action="store_true",
                     help="also train the dense model to compare")
    fit.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                     help="continue the run in --out from its newest intact checkpoint, or "
                     "from the checkpoint file CHECKPOINT")
    fit.add_argument("--no-plots", action="store_true")
    fit.add_argument("--cache-dir", help="where generated workload data are cached")
    fit.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bars (default: only on a terminal)")
    fit.set_defaults(func=_fit)

    rep = sub.add_parser("report", help="summary of a run; redraws its plots")
    rep.add_argument("run_dir", metavar="RUN_DIR")
    rep.add_argument("--no-plots", action="store_true")
    rep.add_argument("--json", action="store_true", help="print metrics.json instead")
    rep.set_defaults(func=_report)

    exp = sub.add_parser("export", help="write a run's compacted model for use without LUMOS")
    exp.add_argument("run_dir", metavar="RUN_DIR")
    from .export import FORMATS

    exp.add_argument("--format", required=True, choices=list(FORMATS))
    exp.add_argument("--out", metavar="DIR", help="default RUN_DIR/export/FORMAT")
    exp.set_defaults(func=_export)

    wl = sub.add_parser("workloads", help="list the built-in workloads and their sizes")
    wl.add_argument("--json", action="store_true")
    wl.set_defaults(func=_workloads)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except LumosError as exc:
        print(f"lumos: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
