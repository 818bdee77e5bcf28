"""Tolerance decision rules: how the tolerance walk judges a cut, on the workloads whose
validation metric is noisy from epoch to epoch.

    python -m benchmarks.tolerance_rules [--only NAME ...] [--rules settled:paced ...]
                                         [--tolerance 0.01] [--cache-dir DIR]

Each (workload, rule) is one suite run in tolerance mode (``benchmarks.suite.run_workload``:
the same dense model, recipe, data order, selection and report halves of the validation set),
differing only in ``decide_on`` and ``compare_to`` (a rule ``settled:matched`` is both).
Recorded per run: the kept fraction and the metric of the compacted model on the report half,
whether it is within the tolerance, and the walk's own noise: the spread (standard deviation)
of the judged points' metric and the share of judged points inside the tolerance. Results:
``docs/results/tolerance_rules.{json,md}`` and a plot of every walk
(``tolerance_rules/<workload>_<decide>_<compare>.png``); ``fit_within_tolerance``'s defaults
are chosen from them.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

from lumos.plots import plot_tolerance_walk
from lumos.tolerance import COMPARISONS, DECISION_RULES

from .suite import RESULTS, chosen_workloads, machine_info, run_workload, signed_better

DEFAULT_WORKLOADS = ["conformer_energy", "burgers"]
#: a rule: how a cut is judged (``decide_on``) and against what (``compare_to``), and
#: optionally ``:K``, the walk's ``GateOptions.gate_step_every`` (1 if absent)
RULES = [f"{decide}:{against}" for decide in DECISION_RULES for against in COMPARISONS]
DEFAULT_RULES = ["settled:paced", "settled:final"]


def parse_rule(rule: str) -> tuple[str, str, int | None]:
    """``"settled:paced"`` or ``"settled:paced:4"`` -> (decide_on, compare_to, every)."""
    parts = rule.split(":")
    decide, against, every = parts[0], parts[1] if len(parts) > 1 else "", parts[2:]
    if f"{decide}:{against}" not in RULES or len(every) > 1 or (
            every and not (every[0].isdigit() and int(every[0]) >= 1)):
        raise argparse.ArgumentTypeError(
            f"rule {rule!r} is not decide_on:compare_to[:K] with decide_on:compare_to one of "
            f"{RULES} and K a whole number >= 1 (GateOptions.gate_step_every)")
    return decide, against, int(every[0]) if every else None


def rule_name(record: dict) -> str:
    """The rule a record ran, its split steps named when they were not 1."""
    every = record.get("gate_step_every", 1)
    return (f"{record['decide_on']}:{record.get('compare_to') or 'final'}"
            + (f":{every}" if every != 1 else ""))


def walk_noise(record: dict) -> dict:
    """How the walk's readings behaved: the share of judged points inside the tolerance, the
    median width of their bootstrap intervals and, for settled walks, each cut read twice —
    right after its epoch of gate training (what ``last`` judges) and after the settling
    epoch (what ``settled`` judges)."""
    walk = record["tolerance_walk"]["walk"]
    judged = [p for p in walk if p["phase"] == "walk"]
    widths = [p["high"] - p["low"] for p in judged if p.get("low") is not None]
    sign = 1.0 if record["higher_is_better"] else -1.0
    pairs = [(a, b) for a, b in zip(walk, walk[1:]) if a["phase"] == "cut"
             and b["phase"] == "walk" and a["budget"] == b["budget"]]
    return {
        "judged": len(judged),
        "judged_within": sum(p["within"] for p in judged) / max(len(judged), 1),
        "judged_interval_width": statistics.median(widths) if widths else None,
        "settling_gain": statistics.median(
            sign * (b["metric"] - a["metric"]) / max(abs(a["metric"]), 1e-12)
            for a, b in pairs) if pairs else None,
        "outside_before_settling": (sum(not a["within"] and b["within"] for a, b in pairs)
                                    / max(sum(b["within"] for _, b in pairs), 1))
        if pairs else None,
    }


def summarize(record: dict, rule: str, tolerance: float) -> dict:
    return {
        "workload": record["workload"], "rule": rule, "metric": record["metric"],
        "metric_dense": record["metric_dense"], "metric_lumos": record["metric_lumos"],
        "metric_change_better": signed_better(record),  # + is better
        "within": signed_better(record) >= -tolerance,
        "kept_fraction": 1.0 - record["param_reduction"],
        "flops_kept_fraction": 1.0 - record["flop_reduction"],
        "wall_s": record["wall_s"], "code": record.get("machine", {}).get("code", "?"),
        **walk_noise(record),
    }


def write_markdown(rows: list[dict], meta: dict, path: Path) -> None:
    lines = [
        "# Tolerance decision rules", "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']['cpu_model']}, {meta['machine']['cpu_count']} cores, "
        f"torch {meta['machine']['torch']}, code {meta['machine'].get('code', '?')}  ",
        f"Date: {meta['date']}; tolerance {meta['tolerance']}; seed {meta['seed']}", "",
        "`settled`: each cut trains one epoch with its gates learning, one with them frozen, "
        "and is judged after the second; `last`: one epoch per cut, judged right after it. "
        "`final`: a cut holds or misses against the finished dense model; `matched`: against "
        "the dense model's pace, its best validation metric up to the same epoch (never "
        "stricter than the finished model); `paced`: holds against the finished model, "
        "misses only behind the pace. A third part `:K`: gate noise on one training step in "
        "K, the deterministic gates on the others, where only the weights learn "
        "(`GateOptions.gate_step_every`; no third part: noise on every step). Rows come "
        "from the code named in their last column "
        "(`paced` rows are the suite's own records); wall times include any other job "
        "running on the machine. "
        "Metric change is on the report half of the validation set, relative to the dense "
        "model, + is better. The walk's readings: cuts judged and the share inside, the median "
        "width of their 90% bootstrap interval (validation-sample noise alone), and for "
        "settled walks the median gain of the settled reading over the one right after the "
        "cut's epoch of gate training (what `last` judges), with the share of accepted cuts "
        "that reading would have rejected.", "",
        f"| workload | rule | dense | LUMOS | change | within {100 * meta['tolerance']:g}% | "
        "params kept | FLOPs kept | judged | judged inside | interval width | settling gain "
        "| accepted, rejected unsettled | wall | code |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def pct(value, signed=False):
        return "-" if value is None else f"{100 * value:{'+' if signed else ''}.1f}%"

    for r in rows:
        width = r["judged_interval_width"]
        lines.append(
            f"| {r['workload']} | {r['rule']} | {r['metric_dense']:.4f} | "
            f"{r['metric_lumos']:.4f} | {100 * r['metric_change_better']:+.2f}% | "
            f"{'yes' if r['within'] else 'no'} | {100 * r['kept_fraction']:.1f}% | "
            f"{100 * r['flops_kept_fraction']:.1f}% | {r['judged']} | "
            f"{100 * r['judged_within']:.0f}% | {'-' if width is None else f'{width:.4f}'} | "
            f"{pct(r['settling_gain'], True)} | {pct(r['outside_before_settling'])} | "
            f"{r['wall_s']:.0f} s | {r.get('code', '?')} |")
    lines += ["", "Walks: `tolerance_rules/<workload>_<decide>_<compare>.png`."]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tolerance_rules",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="NAME", default=DEFAULT_WORKLOADS)
    parser.add_argument("--rules", nargs="+", default=DEFAULT_RULES, metavar="RULE",
                        help="decide_on:compare_to[:K] (lumos.tolerance; K: the walk's "
                             f"GateOptions.gate_step_every); pairs: {', '.join(RULES)}")
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--suite-records", type=Path, default=None, metavar="DIR",
                        help="take each workload's row from a tolerance-mode suite run's "
                             "DIR/<workload>.json (its own decide_on:compare_to rule) instead "
                             "of training again")
    parser.add_argument("--merge", action="store_true",
                        help="keep the rows of OUT/tolerance_rules.json this run does not redo")
    parser.add_argument("--markdown-only", action="store_true",
                        help="rewrite OUT/tolerance_rules.{md,png} from OUT/tolerance_rules.json")
    args = parser.parse_args(argv)
    for rule in args.rules:
        try:
            parse_rule(rule)
        except argparse.ArgumentTypeError as exc:
            parser.error(str(exc))
    if args.markdown_only:
        saved = json.loads((args.out / "tolerance_rules.json").read_text())
        meta, records = saved["meta"], saved["records"]
        rules = [row["rule"] for row in saved["rows"]]
        rows = [summarize(r, rule, meta["tolerance"]) for r, rule in zip(records, rules)]
        write_all(args.out, meta, rows, records)
        return 0
    names = chosen_workloads(parser, args.only)
    command = "python -m benchmarks.tolerance_rules " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    rows, records = [], []
    meta = {"command": command, "machine": machine_info(), "tolerance": args.tolerance,
            "seed": args.seed}
    from_suite = names if args.suite_records else []  # rows from a suite run, as they ran
    runs = [] if args.suite_records else [(n, rule) for n in names for rule in args.rules]
    for name in from_suite:
        record = json.loads((args.suite_records / f"{name}.json").read_text())
        if record.get("tolerance") != args.tolerance or record.get("seed") != args.seed:
            parser.error(f"{args.suite_records / name}.json ran tolerance "
                         f"{record.get('tolerance')}, seed {record.get('seed')}; this table "
                         f"is tolerance {args.tolerance}, seed {args.seed}")
        records.append(record)
        rows.append(summarize(record, rule_name(record), args.tolerance))
    for name, rule in runs:
        start = time.perf_counter()
        decide, against, every = parse_rule(rule)
        record = run_workload(name, "full", None, args.seed, args.cache_dir,
                              args.tolerance, decide_on=decide, compare_to=against,
                              gate_step_every=every or 1)
        record["wall_s"] = time.perf_counter() - start
        record["command"], record["machine"] = command, machine_info()
        records.append(record)
        rule = rule_name(record)
        rows.append(summarize(record, rule, args.tolerance))
        r = rows[-1]
        print(f"[tolerance_rules] {name} {rule}: {r['metric']} {r['metric_dense']:.4f} -> "
              f"{r['metric_lumos']:.4f}, kept {100 * r['kept_fraction']:.1f}%, "
              f"{r['wall_s']:.0f}s", flush=True)
    meta["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    saved = args.out / "tolerance_rules.json"
    if args.merge and saved.exists():
        old = json.loads(saved.read_text())
        done = {(r["workload"], r["rule"]) for r in rows}
        kept = [(row, record) for row, record in zip(old["rows"], old["records"])
                if (row["workload"], row["rule"]) not in done]
        rows = [row for row, _ in kept] + rows
        records = [record for _, record in kept] + records
        meta["command"] = f"{old['meta']['command']}; then {command}"
    write_all(args.out, meta, rows, records)
    return 0


def write_all(out: Path, meta: dict, rows: list[dict], records: list[dict]) -> None:
    """The JSON, the markdown table and one plot per walk."""
    plots = out / "tolerance_rules"
    plots.mkdir(parents=True, exist_ok=True)
    for record, row in zip(records, rows):
        plot_tolerance_walk(record["tolerance_walk"],
                            plots / f"{record['workload']}_{row['rule'].replace(':', '_')}.png",
                            record["metric"], record["higher_is_better"])
    (out / "tolerance_rules.json").write_text(
        json.dumps({"meta": meta, "rows": rows, "records": records}, indent=2))
    write_markdown(rows, meta, out / "tolerance_rules.md")


if __name__ == "__main__":
    sys.exit(main())
