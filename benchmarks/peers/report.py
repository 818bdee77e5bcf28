"""Markdown, plots and the win/tie/loss summary of the peer comparison."""

from __future__ import annotations

import math
from pathlib import Path

from .features import METHOD_LABELS as FEATURE_LABELS
from .features import RANKINGS, SELF_SELECTING
from .structured import METHOD_LABELS as STRUCT_LABELS
from .structured import relative_gap

#: relative metric gap (structured) or F1 gap (features) within which two results tie
TIE_METRIC = 0.01
TIE_F1 = 0.02


def _f(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}"


# ---- verdicts ----------------------------------------------------------------------------------
def structured_verdict(record: dict) -> dict:
    """LUMOS vs. the better Torch-Pruning variant at (about) the same parameter count."""
    m = record["methods"]
    lumos = m["lumos"]
    hib = record["higher_is_better"]
    ran = {k: v for k, v in m.items() if k.startswith("tp_") and v["status"] == "ok"}
    peers = {k: v for k, v in ran.items() if v.get("reached_target", True)}
    note = ""
    if not peers:
        # a peer that could not prune down to the target only counts against LUMOS if LUMOS,
        # with fewer parameters, is still worse: then it is "peer failed", not a loss
        if ran and all(relative_gap(lumos["metric"], v["metric"], hib) > TIE_METRIC
                       for v in ran.values()):
            peers, note = ran, "peer kept more parameters"
        else:
            return {"verdict": "peer failed", "peer": None, "gap": None, "cost_ratio": None,
                    "note": "it raised an error" if not ran else "could not prune to the target"}
    best = max(peers, key=lambda k: peers[k]["metric"] if hib else -peers[k]["metric"])
    gap = relative_gap(lumos["metric"], peers[best]["metric"], hib)
    verdict = "tie" if abs(gap) <= TIE_METRIC else ("win" if gap > 0 else "loss")
    return {"verdict": verdict, "peer": best, "gap": gap, "note": note,
            "cost_ratio": lumos["wall_s"] / peers[best]["wall_s"]}


def feature_verdict(record: dict) -> dict:
    """LUMOS's F1 vs. the best self-selecting peer and vs. the best ranking given the true k."""
    m = record["methods"]
    f1 = m["lumos"]["f1"] if m.get("lumos", {}).get("status") == "ok" else None

    def best(names) -> tuple[str | None, float | None]:
        ok = {k: m[k]["f1"] for k in names if k in m and m[k]["status"] == "ok"}
        if not ok:
            return None, None
        k = max(ok, key=ok.get)
        return k, ok[k]

    out = {}
    for key, names in (("self", [n for n in SELF_SELECTING if n != "lumos"]),
                       ("ranked", [n for n in RANKINGS if n != "lumos_at_k"])):
        peer, pf1 = best(names)
        if f1 is None or pf1 is None:
            verdict = "n/a"
        else:
            verdict = ("tie" if abs(f1 - pf1) <= TIE_F1 else ("win" if f1 > pf1 else "loss"))
        out[key] = {"verdict": verdict, "peer": peer, "peer_f1": pf1}
    out["lumos_f1"] = f1
    return out


def tally(verdicts: list[str]) -> dict:
    return {v: verdicts.count(v) for v in ("win", "tie", "loss", "peer failed", "n/a")
            if verdicts.count(v)}


# ---- markdown ----------------------------------------------------------------------------------
#: what lies behind the peer failures seen (matched on the error text)
FAILURE_NOTES = {
    "building the dependency graph": (
        "Torch-Pruning's dependency-graph construction on the FNO (spectral layers: rfft2, a "
        "complex einsum, irfft2) keeps expanding index mappings without finishing; in an "
        "uncapped trial it ran 13 minutes while its memory grew past 4 GB."
    ),
    "must match the size of tensor": (
        "Torch-Pruning traces PyG's GCNConv (inner Linear, separate bias, scatter-add message "
        "passing) into groups that prune the layer's weight and bias to different widths; the "
        "pruned model fails in its forward pass."
    ),
    "backward through the graph a second time": (
        "`torch.nn.utils.prune` recomputes a masked weight in its module's forward pre-hook; "
        "`nn.MultiheadAttention` reads `out_proj.weight` without calling `out_proj`, so the "
        "masked weight is computed once and its autograd graph reused: the second backward "
        "fails (a known limitation of the pruning utility with attention layers)."
    ),
}
NOT_PRUNED_NOTE = (
    "Torch-Pruning ran but found no prunable channel group in PyG's GATConv (attention "
    "coefficients over heads): no parameter was removed, so it never reaches the target."
)


def failure_notes(records: list[dict]) -> list[str]:
    notes = []
    for r in records:
        dense = r["methods"]["dense"]["params"]
        for method, v in r["methods"].items():
            label = f"{r['workload']}, {STRUCT_LABELS.get(method, method)}"
            if v["status"] == "error":
                why = next((t for k, t in FAILURE_NOTES.items() if k in v["error"]), None)
                notes.append(f"- {label}: `{v['error'][:120]}`" + (f" {why}" if why else ""))
            elif method.startswith("tp_") and v["params"] == dense:
                notes.append(f"- {label}: {NOT_PRUNED_NOTE}")
            elif method.startswith("tp_") and not v.get("reached_target", True):
                flops = r.get("budget_on") == "flops"
                reached, target, unit = ((v["flops"], r["target_flops"], "FLOPs") if flops
                                         else (v["params"], r["target_params"], "parameters"))
                notes.append(
                    f"- {label}: stopped at {reached:,} {unit}, above the target "
                    f"{target:,}, after all 100 pruning steps (the last at ratio "
                    "0.99): the channel groups it found leave the rest unprunable.")
    return notes


def structured_table(records: list[dict]) -> list[str]:
    lines = [
        "| workload | arch | metric | method | status | metric value | params (non-zero) | "
        "FLOPs / dense | speed-up b1 | speed-up b256 | wall time |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        dense_params = r["methods"]["dense"]["params"]
        for method, v in r["methods"].items():
            label = STRUCT_LABELS.get(method, method)
            head = f"| {r['workload']} | {r['architecture']} | {r['metric']} | {label} |"
            if v["status"] != "ok":
                lines.append(f"{head} **failed**: `{v['error']}` ({v.get('where', '')}) | – | "
                             f"– | – | – | – | {v['wall_s']:.0f} s |")
                continue
            nz = v["nonzero_params"]
            params = f"{v['params']:,}" + (f" ({nz:,})" if nz != v["params"] else "")
            params += f" = {100 * nz / dense_params:.1f}%"
            if method not in ("dense", "lumos") and not v.get("reached_target", True):
                params += " (target not reached)"
            lines.append(
                f"{head} ok | {_f(v['metric'])} | {params} | {100 * v['flops_ratio']:.1f}% | "
                f"{v['speedup_b1']:.2f}x | {v['speedup_b256']:.2f}x | {v['wall_s']:.0f} s |"
            )
    return lines


def feature_table(records: list[dict]) -> list[str]:
    methods = list(SELF_SELECTING) + list(RANKINGS)
    lines = [
        "| set | size | true / all | downstream metric | all features | true features | "
        + " | ".join(FEATURE_LABELS[m] for m in methods) + " |",
        "|---|---|---|---|---|---|" + "---|" * len(methods),
    ]
    for r in records:
        cells = []
        for m in methods:
            v = r["methods"].get(m)
            if v is None:
                cells.append("–")
            elif v["status"] != "ok":
                cells.append(f"failed: `{v['error'][:80]}`")
            else:
                cells.append(f"F1 {v['f1']:.2f} (P {v['precision']:.2f}, R {v['recall']:.2f}, "
                             f"{v['n_kept']} kept); {_f(v.get('downstream'), 3)}")
        lines.append(
            f"| {r['set']} | {r['size']} | {r['true']} / {r['features']} | {r['metric']} | "
            f"{_f(r['downstream_all'], 3)} | {_f(r['downstream_true'], 3)} | "
            + " | ".join(cells) + " |"
        )
    return lines


def summary_rows(structured: list[dict], features: list[dict]) -> list[str]:
    """The win/tie/loss table (README and peers.md)."""
    lines = [
        "| comparison | LUMOS wins | ties | LUMOS loses | peer cannot run |",
        "|---|---|---|---|---|",
    ]
    if structured:
        t = tally([structured_verdict(r)["verdict"] for r in structured])
        counted = _counted({"budget_on": structured[0].get("budget_on")})
        lines.append(
            f"| structured pruning: task metric vs. best Torch-Pruning variant at LUMOS's "
            f"{counted} (tie: within {100 * TIE_METRIC:.0f}%) | {t.get('win', 0)} | "
            f"{t.get('tie', 0)} | {t.get('loss', 0)} | {t.get('peer failed', 0)} |"
        )
        speed = [_speed_verdict(r) for r in structured]
        speed = [v for v in speed if v is not None]
        if speed:
            lines.append(
                "| structured pruning: batch-256 speed-up vs. the faster Torch-Pruning variant "
                f"(tie: within 5%) | {speed.count('win')} | {speed.count('tie')} | "
                f"{speed.count('loss')} | – |")
        faster = [structured_verdict(r)["cost_ratio"] for r in structured]
        faster = [c for c in faster if c is not None]
        if faster:
            cheaper = sum(c < 1 for c in faster)
            lines.append(f"| structured pruning: wall time of the whole procedure (LUMOS cheaper /"
                         f" costlier) | {cheaper} | – | {len(faster) - cheaper} | – |")
        masks = [r["methods"].get("unstructured_magnitude", {}) for r in structured]
        masks = [v for v in masks if v.get("status") == "ok"]
        if masks:
            lumos_faster = sum(
                r["methods"]["lumos"]["speedup_b256"] > v["speedup_b256"]
                for r, v in zip(structured, [r["methods"].get("unstructured_magnitude", {})
                                             for r in structured])
                if v.get("status") == "ok")
            lines.append(f"| structured pruning: batch-256 CPU speed-up vs. global magnitude "
                         f"masks (same non-zero count) | {lumos_faster} | – | "
                         f"{len(masks) - lumos_faster} | – |")
    if features:
        for key, text in (("self", "feature selection F1 vs. best self-selecting peer "
                                   "(STG, LassoNet)"),
                          ("ranked", "feature selection F1 vs. best ranking cut at the true "
                                     "count (RF, MI, LassoNet)")):
            t = tally([feature_verdict(r)[key]["verdict"] for r in features])
            lines.append(f"| {text} (tie: within {TIE_F1}) | {t.get('win', 0)} | "
                         f"{t.get('tie', 0)} | {t.get('loss', 0)} | {t.get('n/a', 0)} |")
    return lines


def _speed_verdict(record: dict) -> str | None:
    """LUMOS's batch-256 speed-up against the fastest Torch-Pruning model that reached the
    target (None when none did)."""
    m = record["methods"]
    peers = [v["speedup_b256"] for k, v in m.items() if k.startswith("tp_")
             and v["status"] == "ok" and v.get("reached_target", True)]
    if not peers or m["lumos"]["status"] != "ok":
        return None
    ratio = m["lumos"]["speedup_b256"] / max(peers)
    return "tie" if abs(ratio - 1.0) <= 0.05 else ("win" if ratio > 1 else "loss")


def _counted(meta: dict) -> str:
    return "FLOPs per sample" if meta.get("budget_on") == "flops" else "parameter count"


def _budget_on_note(meta: dict) -> str:
    return ' with `budget_on="flops"`' if meta.get("budget_on") == "flops" else ""


def write_markdown(structured: list[dict], features: list[dict], meta: dict, path: Path,
                   plots: list[str]) -> None:
    m = meta["machine"]
    lines = [
        "# LUMOS vs. the peers",
        "",
        f"Command: `{meta['command']}`  ",
        "Each workload and set ran once with these settings (dense, LUMOS and every peer of a "
        "workload in one process, timed against each other there); per-record files are in "
        f"`{meta.get('records', 'docs/results/peers/')}`, from which `--resume` assembles this "
        "page.  ",
        f"Machine: {m['cpu_model']}, {m['cpu_count']} cores (shared), {m['torch_threads']} "
        f"torch thread(s), torch {m['torch']}, Python {m['python']}  ",
        f"Peers: {meta['peer_versions']}  ",
        f"Date: {meta['date']}; budget {meta['budget']}; seed {meta['seed']}; "
        f"sizes: {meta['sizes_note']}",
        "",
        "## Summary: where LUMOS wins, ties and loses",
        "",
        *summary_rows(structured, features),
        "",
    ]
    if structured:
        lines += [
            f"## 1. Structured pruning at equal {_counted(meta)}",
            "",
            f"LUMOS trains once with `budget=`{_budget_on_note(meta)} and compacts. Each "
            "Torch-Pruning variant gets the "
            "same number of epochs: dense pre-training for half of them, then rounds of "
            f"(prune towards LUMOS's compacted {_counted(meta)} on a geometric schedule, "
            "fine-tune) for the other half; pruning goes in 1% channel steps with TP's default "
            "uniform per-layer ratios and stops at the first step at or below the target. "
            + ("Global magnitude masks (`torch.nn.utils.prune.global_unstructured`, L1) follow "
               "the same schedule to the same non-zero count. " if meta.get("budget_on") !=
               "flops" else "Unstructured masks are left out: they remove no FLOPs. ")
            + "Latency: each model against the dense "
            "one in alternating rounds in the same process (`benchmarks.suite.paired_latency`)."
            " Wall time is the whole procedure (for LUMOS: sparsify + train + compact).",
            "",
        ]
        verdict_lines = ["| workload | verdict | best TP variant | metric gap (LUMOS vs. it) | "
                         "LUMOS wall / its wall |", "|---|---|---|---|---|"]
        for r in structured:
            v = structured_verdict(r)
            note = f" ({v['note']})" if v.get("note") else ""
            verdict_lines.append(
                f"| {r['workload']} ({r['size']}, {r['epochs']} epochs) | **{v['verdict']}**"
                f"{note} | "
                f"{STRUCT_LABELS.get(v['peer'], '–') if v['peer'] else '–'} | "
                + (f"{100 * v['gap']:+.2f}%" if v["gap"] is not None else "–") + " | "
                + (f"{v['cost_ratio']:.2f}" if v["cost_ratio"] is not None else "–") + " |")
        lines += verdict_lines + ["", *structured_table(structured), ""]
        notes = failure_notes(structured)
        if notes:
            lines += ["Where a peer could not do the job:", "", *notes, ""]
    if features:
        lines += [
            "## 2. Feature selection against the ground truth",
            "",
            "Self-selecting methods decide how many features to keep (LUMOS, STG, LassoNet at "
            "its best held-out point on the path); the rankings are *given the true count* k "
            "(an oracle advantage). Each cell: F1 (precision, recall, number kept); then the "
            "downstream metric of the set's own model retrained on the kept features only "
            "(all features and the true features give the reference points). Tables for the "
            "table-only peers:",
            "",
        ]
        lines += [f"- **{r['set']}** ({r['size']}): {r['info'].get('table', '')}, table "
                  f"{r['info'].get('table_shape')}" for r in features]
        lines += ["", *feature_table(features), ""]
        verdict_lines = ["| set | LUMOS F1 | vs. best self-selecting peer | vs. best ranking @ "
                         "true k |", "|---|---|---|---|"]
        for r in features:
            v = feature_verdict(r)
            cell = []
            for key in ("self", "ranked"):
                p = v[key]
                cell.append(f"**{p['verdict']}** ({FEATURE_LABELS.get(p['peer'], '–')}: "
                            f"{_f(p['peer_f1'], 2)})" if p["peer"] else p["verdict"])
            verdict_lines.append(f"| {r['set']} | {_f(v['lumos_f1'], 2)} | {cell[0]} | "
                                 f"{cell[1]} |")
        lines += verdict_lines + [""]
    lines += [
        "## Settings and limits",
        "",
        "- Torch-Pruning: `MetaPruner`, `GroupMagnitudeImportance(p=2)` or "
        "`GroupTaylorImportance()` (gradients of 2 training batches before each step), "
        "`pruning_ratio=0.99` in 100 iterative steps, default uniform per-layer ratios, "
        "`num_heads` given for every `nn.MultiheadAttention`, the last Linear/Conv layer "
        "ignored (it defines the output); building its dependency graph may take at most "
        "60 CPU seconds (a dense model's takes well under one).",
        "- STG: `stg.models.STGRegressionModel` (hidden 128-64, tanh, sigma 0.5, its default "
        "lam 0.1), Adam 1e-3, 3000 steps of batch 128 on the standardised table.",
        "- LassoNet: `LassoNetRegressor(hidden_dims=(64,), path_multiplier=1.05, batch_size=256,"
        " n_iters=(200, 50), patience=(20, 5))`, 20% of the training table held out to pick "
        "the path point.",
        "- RF: 200 trees, `min_samples_leaf=2`, `max_features=0.5` (regression); MI: "
        "`mutual_info_regression`/`_classif`, averaged over at most 8 target columns.",
        "- Tables are capped at 20,000 rows and 8 target columns (evenly spaced).",
        "- Classification sets are treated as regression of the 0/1 label by STG and LassoNet.",
    ]
    lines += meta.get("notes", [])
    lines += ["", *[f"![{p}]({p})" for p in plots]]
    path.write_text("\n".join(lines) + "\n")


# ---- plots -------------------------------------------------------------------------------------
def plot(structured: list[dict], features: list[dict], out: Path, stem: str = "peers"
         ) -> list[str]:
    """The structured and feature figures, ``OUT/{stem}_structured.png`` and
    ``{stem}_features.png`` (one stem per results page, so no run overwrites another's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    written = []
    if structured:
        methods = ["lumos", "tp_magnitude", "tp_taylor", "unstructured_magnitude"]
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
        x = np.arange(len(structured))
        w = 0.2
        for i, method in enumerate(methods):
            gaps, speed = [], []
            for r in structured:
                v = r["methods"].get(method, {})
                d = r["methods"]["dense"]
                if v.get("status") == "ok":
                    gaps.append(100 * relative_gap(v["metric"], d["metric"],
                                                   r["higher_is_better"]))
                    speed.append(v["speedup_b256"])
                else:
                    gaps.append(np.nan)
                    speed.append(np.nan)
            axes[0].bar(x + (i - 1.5) * w, gaps, w, label=STRUCT_LABELS[method])
            axes[1].bar(x + (i - 1.5) * w, speed, w, label=STRUCT_LABELS[method])
        names = [r["workload"] for r in structured]
        axes[0].axhline(0, color="0.4", lw=0.8)
        axes[0].set_ylabel("metric vs. dense (%; >0 better)")
        counted = _counted({"budget_on": structured[0].get("budget_on")})
        axes[0].set_title(f"Task metric at LUMOS's {counted}")
        axes[1].axhline(1, color="0.4", lw=0.8)
        axes[1].set_ylabel("CPU speed-up vs. dense, batch 256")
        axes[1].set_title("Inference speed (x marks: peer failed)")
        for ax in axes:
            ax.set_xticks(x, names, rotation=30, ha="right")
        for i, method in enumerate(methods):
            for j, r in enumerate(structured):
                if r["methods"].get(method, {}).get("status") == "error":
                    axes[1].plot(j + (i - 1.5) * w, 0.1, "kx")
        axes[1].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"{stem}_structured.png", dpi=110)
        plt.close(fig)
        written.append(f"{stem}_structured.png")
    if features:
        methods = ["lumos", "stg", "lassonet", "rf_at_k", "mi_at_k"]
        fig, ax = plt.subplots(figsize=(13, 4.2))
        x = np.arange(len(features))
        w = 0.16
        for i, method in enumerate(methods):
            f1 = [r["methods"].get(method, {}).get("f1", np.nan) for r in features]
            ax.bar(x + (i - 2) * w, f1, w, label=FEATURE_LABELS[method])
        ax.set_xticks(x, [r["set"] for r in features], rotation=30, ha="right")
        ax.set_ylabel("F1 of the kept features")
        ax.set_ylim(0, 1.05)
        ax.set_title("Feature selection against the ground truth")
        ax.legend(fontsize=8, ncol=5, loc="lower left")
        fig.tight_layout()
        fig.savefig(out / f"{stem}_features.png", dpi=110)
        plt.close(fig)
        written.append(f"{stem}_features.png")
    return written
