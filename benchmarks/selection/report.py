"""The markdown page of a selection run (``docs/results/selection.md``)."""

from __future__ import annotations

import math
from collections import defaultdict

from benchmarks.suite import results_header

from .unseen import NOISE_KINDS, UNSEEN_LAWS


def _mean(values) -> float:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else float("nan")


def _f(x: float, digits: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _cell(r: dict) -> str:
    """One set's outcome: ✓ (exact) or +extra noise / +extra proxies / −missed true, and R²."""
    if r["status"] != "ok":
        return "n/a" if r["status"] == "unavailable" else "error"
    if r["exact"]:
        outcome = "✓"
    else:
        parts = []
        if r["noise_kept"]:
            parts.append(f"+{r['noise_kept']}n")
        if r["proxies_kept"]:
            parts.append(f"+{r['proxies_kept']}p")
        missed = r["k"] - r["true_kept"]
        if missed:
            parts.append(f"−{missed}t")
        outcome = "".join(parts)
    return f"{outcome} {r['r2']:.3f}"


def _unstable(r: dict) -> bool | None:
    """LUMOS's own verdict on a selection (``selection_['unstable']``), where it gives one."""
    sel = (r.get("extra") or {}).get("confidence", {}).get("selection_")
    return bool(sel["unstable"]) if isinstance(sel, dict) and "unstable" in sel else None


def _confidence(rows: list[dict]) -> list[str]:
    """Does LUMOS's ``unstable`` flag tell its wrong selections from its right ones?"""
    recs = [r for r in rows if r["method"] == "lumos" and r["status"] == "ok"
            and _unstable(r) is not None]
    if not recs:
        return []
    out = ["## LUMOS's own confidence", "",
           "`LumosRegressor.selection_['unstable']` per condition: how many selections it "
           "flagged, and exact recoveries among the flagged and the unflagged ones.", "",
           "| rows | noise | prox. | sets | flagged unstable | exact if flagged | "
           "exact if not flagged |", "|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in recs:
        groups[(r["rows"], r["noise"], r["proxies_planted"])].append(r)
    for (n_rows, noise, proxies), rs in sorted(groups.items()):
        flagged = [r for r in rs if _unstable(r)]
        firm = [r for r in rs if not _unstable(r)]
        out.append(f"| {n_rows} | {noise} | {proxies} | {len(rs)} | {len(flagged)} | "
                   f"{sum(r['exact'] for r in flagged)}/{len(flagged)} | "
                   f"{sum(r['exact'] for r in firm)}/{len(firm)} |")
    return [*out, ""]


def markdown(result: dict) -> list[str]:
    st, rows, meths = result["settings"], result["rows"], result["methods"]
    names = [n for n in st["methods"] if n in meths]
    lines = results_header("Feature selection: exact recovery of a law's variables among "
                           "distractors", result)
    sources = sorted({r.get("code", "?") for r in rows})
    if len(sources) > 1:
        lines += [f"Records from code revisions {', '.join(sources)} (reused with `--resume`).",
                  ""]
    pk = result["packages"]
    unseen = [law for law in st["laws"] if law in UNSEEN_LAWS]
    if unseen:
        lines += ["**Held-out check**: laws and noise the selection rule was not developed on "
                  f"({', '.join(unseen)}; noise columns cycle through "
                  f"{', '.join(NOISE_KINDS)} distributions, standardised; "
                  "`benchmarks/selection/unseen.py`). Nothing was chosen from these results.",
                  ""]
    noise_text = "non-Gaussian (see above)" if unseen else "N(0, 1)"
    lines += [
        f"Laws: {len(st['laws'])} ({', '.join(st['laws'])}); conditions: {len(st['grid'])}; "
        f"seeds: {st['seeds']}. Each set: the law's variables, {noise_text} noise columns, proxy "
        f"columns (corr. {st['rho']} with a true variable, not used by the law), "
        f"{100 * st['label_noise']:.0f}% label noise, columns shuffled, target in arbitrary units "
        f"(`y = a·y_phys + b`, `a = 10^U(-3,3)`); {int(100 * st['holdout'])}% of the rows held "
        f"out. Downstream: {st['downstream']} on the kept columns, R² on the held-out rows. "
        f"Packages: " + ", ".join(f"{k} {v or '(not installed)'}" for k, v in pk.items()) + ".",
        "",
        "Methods (**oracle k**: given the true number of variables and keeps its top k, "
        "which no self-selecting method is told):",
        "",
    ]
    for n in names:
        m = meths[n]
        lines.append(f"- `{n}`: {m['label']}" + (" — **oracle k**" if m["given_k"] else "")
                     + (f". {m['note']}" if m["note"] else ""))
    lines += [
        "",
        "Columns: *exact*: sets whose kept set is exactly the true set; *P*, *R*, *F1*: "
        "precision, recall, F1 vs. the true variables; *top-k exact*: the method's scores, "
        "ranked, put the true variables first (whatever its own cut); *kept / prox. / noise*: "
        "mean columns kept, of them proxies and noise columns; *R²*: downstream on the kept "
        "columns (rows `true` and `all`: on the true / on all columns); *s*: mean seconds of "
        "the selection.",
        "",
    ]

    by_cond: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        by_cond[(r["rows"], r["noise"], r["proxies_planted"])].append(r)

    header = ("| method | exact | mean P | min P | mean R | mean F1 | top-k exact | kept | "
              "prox. | noise | R² | s |")
    rule = "|---|---|---|---|---|---|---|---|---|---|---|---|"

    def summary(recs: list[dict]) -> list[str]:
        out = []
        for n in names:
            rs = [r for r in recs if r["method"] == n]
            ok = [r for r in rs if r["status"] == "ok"]
            if not rs:
                continue
            if not ok:
                out.append(f"| {n} | {rs[0]['status']} |" + " |" * 10)
                continue
            bad = f" ({len(rs) - len(ok)} failed)" if len(ok) < len(rs) else ""
            out.append(
                f"| {n}{' (oracle k)' if meths[n]['given_k'] else ''} | "
                f"{sum(r['exact'] for r in ok)}/{len(rs)}{bad} | "
                f"{_f(_mean(r['precision'] for r in ok))} | "
                f"{_f(min(r['precision'] for r in ok))} | {_f(_mean(r['recall'] for r in ok))} | "
                f"{_f(_mean(r['f1'] for r in ok))} | {sum(r['topk_exact'] for r in ok)}/{len(rs)}"
                f" | {_f(_mean(r['n_kept'] for r in ok), 1)} | "
                f"{_f(_mean(r['proxies_kept'] for r in ok), 1)} | "
                f"{_f(_mean(r['noise_kept'] for r in ok), 1)} | {_f(_mean(r['r2'] for r in ok), 3)}"
                f" | {_f(_mean(r['seconds'] for r in ok), 1)} |")
        sets = {(r["law"], r["rows"], r["noise"], r["proxies_planted"], r["seed"]): r
                for r in recs}.values()
        for label, key in (("true", "r2_true"), ("all", "r2_all")):
            out.append(f"| {label} | | | | | | | | | | {_f(_mean(r[key] for r in sets), 3)} | |")
        return out

    lines += ["## All conditions", "", header, rule, *summary(rows), ""]
    lines += ["## Per condition", ""]
    for (n_rows, noise, proxies), recs in sorted(by_cond.items()):
        n_laws = len({r["law"] for r in recs})
        lines += [f"### {n_rows} rows, {noise} noise columns, {proxies} proxies "
                  f"({n_laws} laws; k + {noise + proxies} columns each)", "", header, rule,
                  *summary(recs), ""]

    lines += _confidence(rows)
    lines += [
        "## Per law",
        "",
        "Each cell: ✓ = exactly the true variables, else `+Nn` noise columns and `+Np` proxies "
        "kept besides, `−Nt` true variables missed; then the downstream R².",
        "",
        "| law | rows | noise | prox. | seed | k/cols | " + " | ".join(names)
        + " | R² true | R² all |",
        "|---|---|---|---|---|---|" + "---|" * (len(names) + 2),
    ]
    by_set: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for r in rows:
        by_set[(r["law"], r["rows"], r["noise"], r["proxies_planted"], r["seed"])][r["method"]] = r
    for (law, n_rows, noise, proxies, seed), rs in sorted(by_set.items()):
        any_r = next(iter(rs.values()))
        cells = [_cell(rs[n]) if n in rs else "" for n in names]
        lines.append(f"| {law} | {n_rows} | {noise} | {proxies} | {seed} | "
                     f"{any_r['k']}/{any_r['features']} | " + " | ".join(cells)
                     + f" | {any_r['r2_true']:.3f} | {any_r['r2_all']:.3f} |")
    lines += ["", f"Wall time of the run: {st['wall_s']:.0f} s (records reused from the cache "
              "count as 0)."]
    return lines
