"""Human-readable summary of what a SparseModel kept: widths, features, params and FLOPs."""

from __future__ import annotations

import torch


def _fmt_count(n: float) -> str:
    n = float(n)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def summary(sm) -> dict:
    """Everything report() prints, as plain data (for JSON, tests and plots)."""
    kept = sm.kept_mask()
    probs = sm.gates.prob_nonzero().detach()
    groups = []
    for g in sm.graph_info.groups:
        sl = slice(g.offset, g.offset + g.size)
        groups.append(
            {
                "name": g.name,
                "kind": g.kind,
                "dense": g.size,
                "kept": int(kept[sl].sum()),
                "expected": float(probs[sl].sum()),
            }
        )
    counts = sm.compacted_counts()
    return {
        "groups": groups,
        "features": {
            name: {"total": space.size, "kept": sm.selected_features()[name]}
            for name, space in sm.graph_info.feature_spaces.items()
        },
        "params": {"dense": sm.dense_params, "compacted": counts["params"]},
        "flops": {"dense": sm.dense_flops, "compacted": counts["flops"]},
        **({"latency_ns": {"dense": sm.dense_latency, "compacted": counts["latency"]}}
           if "latency" in counts else {}),
        "budget": sm.budget,
        "budget_on": sm.budget_on,
        "ungated": [
            {"where": s.origin, "reason": s.pinned}
            for s in sm.graph_info.pinned_spaces()
            if not s.pinned.startswith("model output")
        ]
        + [{"where": u.where, "reason": u.reason} for u in sm.graph_info.records.ungated],
    }


def report(sm) -> str:
    s = summary(sm)
    lines = ["LUMOS report", ""]
    lines.append(f"{'group':<28} {'kind':<8} {'dense':>7} {'kept':>7} {'E[kept]':>8}")
    for g in s["groups"]:
        lines.append(
            f"{g['name']:<28} {g['kind']:<8} {g['dense']:>7} {g['kept']:>7} {g['expected']:>8.1f}"
        )
    lines.append("")
    for name, f in s["features"].items():
        kept = f["kept"]
        shown = ", ".join(map(str, kept[:20])) + (" ..." if len(kept) > 20 else "")
        lines.append(f"features of '{name}': {len(kept)}/{f['total']} kept: [{shown}]")
    p, fl = s["params"], s["flops"]

    def budget_note(kind: str) -> str:
        on = s["budget"] is not None and s["budget_on"] == kind
        return f", budget {100 * s['budget']:.0f}%" if on else ""

    lines.append(
        f"params: {_fmt_count(p['dense'])} -> {_fmt_count(p['compacted'])} "
        f"({100 * p['compacted'] / max(p['dense'], 1):.1f}%{budget_note('params')})"
    )
    rows = next((int(t.shape[0]) for t in sm.example_args
                 if isinstance(t, torch.Tensor) and t.dim()), None)
    lines.append(
        f"FLOPs:  {_fmt_count(fl['dense'])} -> {_fmt_count(fl['compacted'])} "
        f"({100 * fl['compacted'] / max(fl['dense'], 1):.1f}%{budget_note('flops')}; one call "
        f"on the example inputs{f', {rows} rows' if rows is not None else ''}, not per sample)"
    )
    if "latency_ns" in s:
        lat = s["latency_ns"]
        lines.append(
            f"latency (estimated, layers with FLOPs): {lat['dense'] / 1e3:.1f} us -> "
            f"{lat['compacted'] / 1e3:.1f} us "
            f"({100 * lat['compacted'] / max(lat['dense'], 1):.1f}%{budget_note('latency')}; "
            "measured once on this device, see lumos.latency)")
    multiple = sm.gate_options.width_multiple
    if multiple != 1:
        measured = sm.measured_width_multiple
        lines.append(
            "widths: cut to multiples of "
            + (f"{multiple}" if multiple != "auto" else "(measured at the first projection)"
               if measured is None else f"{measured} (measured on this device, lumos.widths)"))
    if s["ungated"]:
        lines.append("")
        lines.append("kept whole (not gated):")
        for u in s["ungated"]:
            lines.append(f"  {u['where']}: {u['reason']}")
    return "\n".join(lines)
