"""The harness: grid, per-record cache, metrics, the command line (see the package doc)."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.suite import CODE_REVISION, RESULTS, results_record, write_results

from . import methods as methods_mod
from .data import HOLDOUT, RHO, SelectionSet, make_selection_data
from .report import markdown
from .unseen import UNSEEN_LAWS

#: conditions of each named grid: (rows, noise columns, proxies)
GRIDS: dict[str, list[tuple[int, int, int]]] = {
    "full": [(r, n, p) for r in (500, 4000) for n in (12, 48, 200) for p in (0, 4)],
    "small": [(500, n, p) for n in (12, 48, 200) for p in (0, 4)],
    "hard": [(r, n, 4) for r in (500, 4000) for n in (48, 200)],
    "smoke": [(500, 12, 4), (500, 48, 0), (500, 200, 4)],
}
#: laws of the default full run (``--laws all``: all 13 in ``LAWS``): every law but three that
#: repeat another's form (ideal gas: van der Waals with a = b = 0; gravity: Coulomb without
#: eps_r; Stefan-Boltzmann: a monomial like gravity), so that the default run fits in an hour
#: on one core (about 55 minutes, estimated from per-set times measured on a 2-core Xeon: ~12 s
#: a 500-row set, ~45 s a 4000-row one; ``--laws all``: about 75; ``--jobs 2`` halves both)
FULL_LAWS = ("van_der_waals", "coulomb", "pendulum", "projectile", "drag", "relativistic_ke",
             "bernoulli", "damped_oscillator", "planck", "kepler")
SMOKE_LAWS = ("drag", "van_der_waals", "damped_oscillator")
#: the downstream model: scikit-learn's MLPRegressor on standardised kept columns and target
DOWNSTREAM = {"hidden_layer_sizes": (64, 64), "max_iter": 500, "early_stopping": True,
              "n_iter_no_change": 20}
LABEL_NOISE = 0.05
DEFAULT_METHODS = ("lumos", "stg", "lassonet", "rf_at_k", "mi_at_k", "stability", "knockoffs")
PACKAGES = ("lumos-sciml", "torch", "scikit-learn", "stg", "lassonet", "knockpy")


@dataclass(frozen=True)
class Condition:
    rows: int
    noise: int
    proxies: int

    @property
    def tag(self) -> str:
        return f"r{self.rows}_n{self.noise}_p{self.proxies}"


def parse_grid(spec: str) -> list[Condition]:
    """A named grid (``full``, ``small``, ``hard``, ``smoke``) or
    ``rows=500,4000:noise=12,200:proxies=0,4`` (any key left out: the full grid's values)."""
    if spec in GRIDS:
        return [Condition(*c) for c in GRIDS[spec]]
    values = {"rows": [500, 4000], "noise": [12, 48, 200], "proxies": [0, 4]}
    for part in spec.split(":"):
        key, _, vals = part.partition("=")
        if key not in values or not vals:
            raise ValueError(f"bad grid part {part!r}: use a name ({', '.join(GRIDS)}) or "
                             "rows=...:noise=...:proxies=... with comma-separated integers")
        values[key] = [int(v) for v in vals.split(",")]
    return [Condition(r, n, p) for r in values["rows"] for n in values["noise"]
            for p in values["proxies"]]


# ---- metrics -------------------------------------------------------------------------------------
def selection_metrics(s: SelectionSet, kept: list[int], scores: np.ndarray) -> dict:
    kept_s, true_s = set(kept), set(s.true)
    hit = len(kept_s & true_s)
    precision = hit / len(kept_s) if kept_s else 0.0
    recall = hit / len(true_s)
    f1 = 2 * precision * recall / (precision + recall) if hit else 0.0
    k = len(true_s)
    order = np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable")
    rank = {int(j): r for r, j in enumerate(order)}
    return {
        "kept": sorted(kept_s), "n_kept": len(kept_s), "precision": precision, "recall": recall,
        "f1": f1, "exact": kept_s == true_s, "true_kept": hit,
        "proxies_kept": len(kept_s & set(s.proxies)), "noise_kept": len(kept_s & set(s.noise)),
        "kept_names": [s.feature_names[j] for j in sorted(kept_s)],
        # the scores as a ranking, whatever the method's own cut
        "topk_exact": {int(j) for j in order[:k]} == true_s,
        "true_ranks": sorted(rank[j] for j in true_s),
    }


def downstream_r2(s: SelectionSet, kept: list[int], seed: int) -> float:
    """Held-out R² of an ``MLPRegressor`` (:data:`DOWNSTREAM`) trained on the kept columns of
    the training rows (columns and target standardised with training statistics)."""
    from sklearn.metrics import r2_score
    from sklearn.neural_network import MLPRegressor

    y_mean, y_std = s.y_train.mean(), s.y_train.std()
    if not kept:
        return float(r2_score(s.y_test, np.full_like(s.y_test, y_mean)))
    x = s.X_train[:, kept]
    mu, sd = x.mean(0), x.std(0) + 1e-12
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = MLPRegressor(random_state=seed, **DOWNSTREAM)
        model.fit((x - mu) / sd, (s.y_train - y_mean) / y_std)
    pred = model.predict((s.X_test[:, kept] - mu) / sd) * y_std + y_mean
    return float(r2_score(s.y_test, pred))


# ---- one record ----------------------------------------------------------------------------------
def settings_of(name: str) -> dict:
    """What a method's result depends on besides the data (part of the resume key)."""
    return {
        "lumos": {"params": methods_mod.LUMOS_PARAMS},
        "stg": {"steps": methods_mod.STG_STEPS},
        "stability": dict(methods_mod.STABILITY),
        "knockoffs": {"fdr": methods_mod.KNOCKOFF_FDR},
    }.get(name, {})


def _key(law: str, c: Condition, seed: int, method: str) -> dict:
    return {"law": law, "rows": c.rows, "noise": c.noise, "proxies": c.proxies, "seed": seed,
            "rho": RHO, "label_noise": LABEL_NOISE, "holdout": HOLDOUT, "method": method,
            "settings": json.loads(json.dumps(settings_of(method))),
            "downstream": json.loads(json.dumps(DOWNSTREAM))}


def run_method(name: str, s: SelectionSet, seed: int, memo: dict) -> dict:
    m = methods_mod.METHODS[name]
    why = methods_mod.available(name)
    if why is not None:
        return {"status": "unavailable", "error": why}
    try:
        kwargs = {"k": len(s.true)} if m.given_k else {}
        sel = m.fn(s.X_train, s.y_train, seed, **kwargs)
    except Exception as exc:  # a method failing on a set is a result
        return {"status": "error", "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    out = {"status": "ok", "seconds": sel.seconds, **selection_metrics(s, sel.kept, sel.scores),
           "scores": [float(f"{v:.5g}") for v in sel.scores], "extra": methods_mod._jsonable(
               sel.extra)}
    key = tuple(out["kept"])
    if key not in memo:
        memo[key] = downstream_r2(s, list(key), seed)
    out["r2"] = memo[key]
    return out


def run(laws: list[str], grid: list[Condition], seeds: int, names: list[str], cache: Path,
        resume: bool, redo: set[str], jobs: int = 1) -> list[dict]:
    """Every (seed, condition, law, method) record, from the cache where ``resume`` allows;
    ``jobs`` sets at a time in worker processes (one thread each)."""
    cache.mkdir(parents=True, exist_ok=True)
    sets = [(law, c, seed) for seed in range(seeds) for c in grid for law in laws]
    args = [(law, c, seed, names, cache, resume, redo) for law, c, seed in sets]
    if jobs <= 1:
        _one_thread()
        return [r for a in args for r in run_set(*a)]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=jobs, initializer=_one_thread) as pool:
        return [r for recs in pool.map(_run_set_args, args) for r in recs]


def _one_thread() -> None:
    """A process's settings: one thread for torch and BLAS."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)
    warnings.filterwarnings("ignore", category=UserWarning)


def _run_set_args(args: tuple) -> list[dict]:
    return run_set(*args)


def run_set(law: str, c: Condition, seed: int, names: list[str], cache: Path, resume: bool,
            redo: set[str]) -> list[dict]:
    """One set's records: the baseline (R² on the true / all columns) and each method's."""
    stem = f"{law}__{c.tag}__s{seed}"
    made: list[SelectionSet] = []
    memo: dict[tuple, float] = {}  # downstream R² by kept set (trained once per set)

    def data() -> SelectionSet:
        if not made:
            made.append(make_selection_data(law, c.rows, c.noise, c.proxies, seed=seed,
                                            noise_std=LABEL_NOISE))
        return made[0]

    base_key = _key(law, c, seed, "baseline")
    base = _load(cache / f"{stem}__baseline.json", base_key, resume)
    if base is None:
        d = data()
        start = time.perf_counter()
        base = _baseline(d, base_key, downstream_r2(d, d.true, seed),
                         downstream_r2(d, list(range(d.n_features)), seed), CODE_REVISION)
        base["seconds"] = time.perf_counter() - start
        _save(cache / f"{stem}__baseline.json", base)
    records = []
    for name in names:
        key = _key(law, c, seed, name)
        path = cache / f"{stem}__{name}.json"
        rec = _load(path, key, resume and name not in redo)
        reused = rec is not None
        if rec is None:
            rec = {"key": key, **run_method(name, data(), seed, memo), "code": CODE_REVISION}
            _save(path, rec)
        rec = {**rec, "law": law, "rows": c.rows, "noise": c.noise, "proxies_planted": c.proxies,
               "seed": seed, "method": name, "features": base["features"],
               "k": len(base["true"]), "r2_true": base["r2_true"], "r2_all": base["r2_all"],
               "y_scale": base["info"]["y_scale"]}
        records.append(rec)
        print(_line(rec, reused), flush=True)
    return records


def _baseline(d: SelectionSet, key: dict, r2_true: float, r2_all: float, code: str) -> dict:
    """A set's baseline record: its ground truth and the downstream R² on the true / all
    columns."""
    return {"key": key, "features": d.n_features, "feature_names": d.feature_names,
            "true": d.true, "proxies": d.proxies,
            "proxy_of": {str(p): v for p, v in d.proxy_of.items()}, "info": d.info,
            "r2_true": r2_true, "r2_all": r2_all, "code": code}


def _line(r: dict, reused: bool) -> str:
    head = f"[selection] {r['law']} {r['rows']}r/{r['noise']}n/{r['proxies_planted']}p " \
           f"s{r['seed']} {r['method']}:"
    if r["status"] != "ok":
        return f"{head} {r['status']} {r.get('error', '')}"
    return (f"{head} kept {r['n_kept']} (true {r['true_kept']}/{r['k']}, proxies "
            f"{r['proxies_kept']}, noise {r['noise_kept']}) {'EXACT' if r['exact'] else ''} "
            f"R2 {r['r2']:.3f} (true {r['r2_true']:.3f}), {r['seconds']:.2f}s"
            + (" [reused]" if reused else ""))


def _load(path: Path, key: dict, resume: bool) -> dict | None:
    if not (resume and path.exists()):
        return None
    rec = json.loads(path.read_text())
    return rec if rec.get("key") == key else None


#: fields run_set adds to a cached record (they come from the set, not from the method)
_SET_FIELDS = ("law", "rows", "noise", "proxies_planted", "seed", "method", "features", "k",
               "r2_true", "r2_all", "y_scale")


def seed_cache(results: Path, cache: Path, skip: set[str]) -> int:
    """Write the records of a committed ``selection.json`` into ``cache`` as if they had been
    run here (``--reuse-from``): each set's baseline (its downstream R² on the true and on all
    columns) and each method's record, except the methods in ``skip``; nothing already cached
    is replaced. After a change to one method, the peers' committed records are reused instead
    of re-run. Records keep the code revision that made them. Returns how many were written."""
    cache.mkdir(parents=True, exist_ok=True)
    written = 0
    for row in json.loads(results.read_text())["rows"]:
        c = Condition(row["rows"], row["noise"], row["proxies_planted"])
        stem = f"{row['law']}__{c.tag}__s{row['seed']}"
        if not (cache / f"{stem}__baseline.json").exists():  # the set's downstream R²s
            d = make_selection_data(row["law"], c.rows, c.noise, c.proxies, seed=row["seed"],
                                    noise_std=LABEL_NOISE)
            _save(cache / f"{stem}__baseline.json",
                  _baseline(d, _key(row["law"], c, row["seed"], "baseline"), row["r2_true"],
                            row["r2_all"], row["code"]))
            written += 1
        if row["method"] in skip:
            continue
        path = cache / f"{stem}__{row['method']}.json"
        if path.exists():
            continue
        key = _key(row["law"], c, row["seed"], row["method"])
        _save(path, {"key": key, **{k: v for k, v in row.items() if k not in _SET_FIELDS}})
        written += 1
    return written


def _save(path: Path, rec: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, indent=1, default=methods_mod._jsonable))
    tmp.replace(path)


def _versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _slim(r: dict) -> dict:
    """A record for the summary JSON: no per-column scores (they stay in the cache), and the
    kept columns' names only when few are kept."""
    drop = {"scores", "key"} | ({"kept_names"} if r.get("n_kept", 0) > 20 else set())
    return {k: v for k, v in r.items() if k not in drop}


def main(argv: list[str] | None = None) -> int:
    from . import __doc__ as doc

    parser = argparse.ArgumentParser(prog="python -m benchmarks.selection", description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true",
                        help=f"quick check: laws {','.join(SMOKE_LAWS)}, grid 'smoke' (about 2 "
                             "minutes)")
    parser.add_argument("--laws", default=None,
                        help="comma-separated law names, 'all', or 'unseen' (laws and noise "
                             "the rule was not developed on, written to selection_unseen.*; "
                             "default: "
                             f"{','.join(FULL_LAWS)}; smoke: {','.join(SMOKE_LAWS)})")
    parser.add_argument("--grid", default=None,
                        help=f"a named grid ({', '.join(GRIDS)}) or rows=500,4000:noise=12,48,"
                             "200:proxies=0,4 (default: full; smoke: smoke)")
    parser.add_argument("--only", default=None, metavar="METHOD,...",
                        help=f"methods to run (default: {','.join(DEFAULT_METHODS)})")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per set (default 1)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="sets run at once in worker processes of one thread each "
                             "(default 1; timings are cleanest with one job per free core)")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="where selection.{json,md} go (default docs/results)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="per-record cache (default OUT/selection or OUT/selection_smoke)")
    parser.add_argument("--resume", action="store_true",
                        help="reuse cached records of the same settings")
    parser.add_argument("--redo", default="", metavar="METHOD,...",
                        help="with --resume: run these methods again all the same (e.g. lumos "
                             "after changing its algorithm)")
    parser.add_argument("--reuse-from", type=Path, default=None, metavar="JSON",
                        help="with --resume: seed the cache with the records of a committed "
                             "selection.json (all methods but --redo's), e.g. to re-run LUMOS "
                             "alone on a fresh machine")
    args = parser.parse_args(argv)

    from lumos.workloads.laws import LAWS

    laws_arg = args.laws or ",".join(SMOKE_LAWS if args.smoke else FULL_LAWS)
    unseen = laws_arg == "unseen"
    laws = list(LAWS) if laws_arg == "all" else list(UNSEEN_LAWS) if unseen else \
        laws_arg.split(",")
    unknown = [law for law in laws if law not in LAWS and law not in UNSEEN_LAWS]
    names = args.only.split(",") if args.only else list(DEFAULT_METHODS)
    bad = [n for n in names if n not in methods_mod.METHODS]
    if unknown or bad:
        parser.error(f"unknown law(s) {unknown} / method(s) {bad}; laws: {', '.join(LAWS)} "
                     f"(unseen: {', '.join(UNSEEN_LAWS)}); "
                     f"methods: {', '.join(methods_mod.METHODS)}")
    try:
        grid = parse_grid(args.grid or ("smoke" if args.smoke else "full"))
    except ValueError as exc:
        parser.error(str(exc))
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")

    stem = "selection_smoke" if args.smoke else "selection_unseen" if unseen else "selection"
    cache = args.cache_dir or args.out / stem
    redo = set(filter(None, args.redo.split(",")))
    if args.reuse_from is not None:
        if not args.resume:
            parser.error("--reuse-from needs --resume (it fills the cache --resume reads)")
        seed_cache(args.reuse_from, cache, redo)
    start = time.perf_counter()
    records = run(laws, grid, args.seeds, names, cache, args.resume, redo, args.jobs)
    result = results_record("benchmarks.selection", [_slim(r) for r in records])
    result["settings"] = {
        "laws": laws, "grid": [vars(c) for c in grid], "seeds": args.seeds, "methods": names,
        "rho": RHO, "label_noise": LABEL_NOISE, "holdout": HOLDOUT,
        "downstream": f"sklearn MLPRegressor({DOWNSTREAM})", "stg_steps": methods_mod.STG_STEPS,
        "lumos_params": methods_mod.LUMOS_PARAMS, "smoke": args.smoke, "jobs": args.jobs,
        "wall_s": time.perf_counter() - start, "cache": str(cache)}
    result["methods"] = {n: {"label": m.label, "given_k": m.given_k, "note": m.note}
                         for n, m in methods_mod.METHODS.items() if n in names}
    result["packages"] = _versions()
    lines = markdown(result)
    write_results(stem, result, lines, args.out)
    print(f"[selection] {len(records)} records in {time.perf_counter() - start:.0f}s -> "
          f"{args.out / stem}.{{json,md}}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
