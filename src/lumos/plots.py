"""Pictures of what LUMOS found (matplotlib, imported lazily; files are PNG).

``plot_groups`` draws the layer graph the coordinator read, each op coloured by the gate group
of the channels it produces, so coupled channels (a residual stream, a concatenation, attention
heads) are visible at a glance.
"""

from __future__ import annotations

import io
from pathlib import Path

from torch import fx

from .atomic import replace_atomically
from .gating import apply_gates, is_gate_plumbing, is_gates_placeholder
from .topology.infos import TensorInfo, TupleInfo

_SKIP_FUNCTIONS = {"getattr", "getitem", "size", "dim"}


def _matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - optional dependency
        from .errors import ConfigurationError

        raise ConfigurationError(
            "plots need matplotlib: pip install 'lumos-sciml[runs]'."
        ) from exc
    return plt


def _label(node: fx.Node, gm: fx.GraphModule) -> str:
    if node.op == "call_module":
        return f"{node.target}\n{type(gm.get_submodule(str(node.target))).__name__}"
    if node.op == "placeholder":
        return f"input {node.target}"
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "?")
    return str(name)


def _shown(node: fx.Node) -> bool:
    if node.op == "placeholder":
        return not is_gates_placeholder(node)
    if node.op in ("call_module", "output"):
        return True
    if node.op in ("call_function", "call_method"):
        if node.target is apply_gates or is_gate_plumbing(node):
            return False
        name = node.target if isinstance(node.target, str) else node.target.__name__
        return name not in _SKIP_FUNCTIONS
    return False


def plot_groups(sm, path: str | Path, title: str | None = None) -> Path:
    """Draw the traced layer graph of ``sm`` with every op coloured by its output's gate group.

    Grey: channels kept whole (pinned, e.g. the model output or a grouped conv's channels).
    """
    plt = _matplotlib()
    graph = sm.graph_info
    by_name = graph.info_by_name()
    gm = sm.model
    nodes = [n for n in gm.graph.nodes if _shown(n)]
    shown = set(nodes)

    def visible_inputs(n: fx.Node) -> list[fx.Node]:
        out, stack, seen = [], list(n.all_input_nodes), set()
        while stack:
            m = stack.pop()
            if m in seen:
                continue
            seen.add(m)
            if m in shown:
                out.append(m)
            else:
                stack.extend(m.all_input_nodes)
        return out

    depth: dict[fx.Node, int] = {}
    for n in nodes:
        depth[n] = 1 + max((depth[m] for m in visible_inputs(n)), default=-1)
    rows: dict[int, list[fx.Node]] = {}
    for n in nodes:
        rows.setdefault(depth[n], []).append(n)
    pos = {}
    for d, row in rows.items():
        for i, n in enumerate(row):
            pos[n] = ((i + 0.5) / len(row), -d)

    groups = graph.groups
    cmap = plt.get_cmap("tab20")
    colour = {id(g.root): cmap(i % 20) for i, g in enumerate(groups)}

    def node_colour(n: fx.Node):
        info = by_name.get(n.name)
        if isinstance(info, TupleInfo):
            info = next((i for i in info.items if isinstance(i, TensorInfo)), None)
        if isinstance(info, TensorInfo):
            for seg in info.layout.segments:
                group = graph.group_of(seg.space)
                if group is not None:
                    return colour[id(group.root)]
        return (0.8, 0.8, 0.8, 1.0)

    def group_names(n: fx.Node) -> list[str]:
        info = by_name.get(n.name)
        if not isinstance(info, TensorInfo):
            return []
        names = []
        for seg in info.layout.segments:
            group = graph.group_of(seg.space)
            name = group.name if group is not None else "whole"
            if name not in names:
                names.append(name)
        return names

    height = max(4.0, 0.9 * len(rows))
    fig, ax = plt.subplots(figsize=(8, height))
    for n in nodes:
        for m in visible_inputs(n):
            (x0, y0), (x1, y1) = pos[m], pos[n]
            skip = y0 - y1 > 1  # an edge jumping rows (residual, skip) bends around the chain
            style = f"arc3,rad={-0.35 - 0.05 * (y0 - y1)}" if skip else "arc3"
            ax.annotate("", xy=(x1, y1 + 0.18), xytext=(x0, y0 - 0.18),
                        arrowprops={"arrowstyle": "->", "color": "0.55", "lw": 0.8,
                                    "connectionstyle": style})
    for n in nodes:
        x, y = pos[n]
        label = _label(n, gm)
        names = group_names(n)
        if len(names) > 1:  # a concatenation: its pieces keep their own groups
            label += "\n[" + " | ".join(names) + "]"
        ax.text(x, y, label, ha="center", va="center", fontsize=7,
                bbox={"boxstyle": "round,pad=0.3", "fc": node_colour(n), "ec": "0.3"})
    handles = [
        plt.Line2D([], [], marker="s", ls="", color=colour[id(g.root)],
                   label=f"{g.name} ({g.kind}, {g.size})")
        for g in groups
    ]
    handles.append(plt.Line2D([], [], marker="s", ls="", color=(0.8, 0.8, 0.8),
                              label="kept whole"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7,
              title="gate groups", title_fontsize=8, frameon=False)
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-max(rows) - 0.6, 0.6)
    ax.axis("off")
    ax.set_title(title or "LUMOS channel groups (colour = gate group of an op's output)",
                 fontsize=9)
    fig.tight_layout()
    path = Path(path)
    _savefig_atomic(fig, path, dpi=130)
    plt.close(fig)
    return path


def _savefig_atomic(fig, path: Path, dpi: int) -> None:
    """Draw into memory, then write a temporary file beside ``path`` and rename it: a crash
    or a full disk leaves the previous plot or none, never a truncated image."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".") or "png", dpi=dpi)
    replace_atomically(path, lambda fh: fh.write(buffer.getvalue()))


# ---- run plots (drawn from metrics.json, so `lumos report` can redraw them) -------------------
_KEPT, _DROPPED, _DENSE = "#1f77b4", "#c7c7c7", "#ff7f0e"


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    _savefig_atomic(fig, path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def plot_gate_trajectories(trajectories: dict, kept: list[str], path: str | Path) -> Path:
    """Keep probability of every input feature (kept ones coloured) and, per gate group, the
    share of its gates still open (P > 0.5), epoch by epoch."""
    plt = _matplotlib()
    epochs = trajectories.get("epochs", [])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    kept_set = set(kept)
    palette = plt.get_cmap("tab20" if len(kept_set) > 10 else "tab10")
    shade = {name: palette(i % palette.N) for i, name in enumerate(
        n for n in trajectories.get("features", {}) if n in kept_set)}  # one per kept feature
    for name, values in trajectories.get("features", {}).items():
        on = name in kept_set
        left.plot(epochs, values, color=shade[name] if on else _DROPPED, lw=1.4 if on else 0.9,
                  zorder=2 if on else 1, label=name if on else None)
    left.set_title("input features: P(kept)  (coloured: kept at the end; grey: dropped)",
                   fontsize=9)
    left.set_xlabel("epoch")
    left.set_ylim(-0.02, 1.02)
    if kept_set and len(kept_set) <= 12:
        left.legend(fontsize=7, frameon=False)
    cmap = plt.get_cmap("tab10")
    for i, (name, g) in enumerate(trajectories.get("groups", {}).items()):
        share = [o / max(g["size"], 1) for o in g["open"]]
        right.plot(epochs, share, color=cmap(i % 10), label=f"{name} ({g['kind']}, {g['size']})")
    right.set_title("gate groups: share of gates open (P > 0.5)", fontsize=9)
    right.set_xlabel("epoch")
    right.set_ylim(-0.02, 1.02)
    if trajectories.get("groups"):
        right.legend(fontsize=6, frameon=False, loc="lower left")
    return _save(fig, path)


def plot_widths(groups: list[dict], path: str | Path) -> Path:
    """Width of every gate group (layer) before and after compaction."""
    plt = _matplotlib()
    shown = [g for g in groups if g["kind"] != "feature"] or groups
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(shown) + 2), 4))
    xs = range(len(shown))
    ax.bar([x - 0.2 for x in xs], [g["dense"] for g in shown], 0.4, color=_DENSE, label="dense")
    ax.bar([x + 0.2 for x in xs], [g["kept"] for g in shown], 0.4, color=_KEPT,
           label="compacted")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([f"{g['name']}\n{g['kind']}" for g in shown], fontsize=7, rotation=30,
                       ha="right")
    ax.set_ylabel("width (channels / neurons / heads)")
    ax.set_title("width per layer: dense vs. compacted", fontsize=9)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def plot_feature_ranking(names: list[str], scores: list[float], kept: list[str],
                         path: str | Path, irrelevant: list[str] | None = None) -> Path:
    """Input features ranked by keep probability; the kept set in colour. Features known to
    be irrelevant (planted noise/nuisance of a workload) are marked with ``*``."""
    plt = _matplotlib()
    order = sorted(range(len(names)), key=lambda i: -scores[i])
    kept_set, planted = set(kept), set(irrelevant or [])
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.22 * len(names) + 1)))
    ys = range(len(order))
    ax.barh(list(ys), [scores[i] for i in order],
            color=[_KEPT if names[i] in kept_set else _DROPPED for i in order])
    ax.set_yticks(list(ys))
    ax.set_yticklabels([names[i] + (" *" if names[i] in planted else "") for i in order],
                       fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("P(feature kept)")
    note = "; * = planted noise/nuisance" if planted else ""
    ax.set_title(f"feature ranking: {len(kept_set)} of {len(names)} kept (blue){note}",
                 fontsize=9)
    return _save(fig, path)


def plot_metric_vs_params(metrics: dict, path: str | Path) -> Path:
    """Validation metric against parameters kept: the path training walked, the compacted
    model and (if trained) the dense baseline."""
    plt = _matplotlib()
    primary = metrics["primary"]
    curve = metrics.get("curve", [])
    fig, ax = plt.subplots(figsize=(6, 4))
    if curve:
        ax.plot([c["params"] for c in curve], [c["metric"] for c in curve], "-o", ms=3,
                color=_DROPPED, label="during training (epochs)", zorder=1)
    final = metrics["final"]
    ax.scatter([metrics["params"]["compacted"]], [final["compacted"][primary]], s=60,
               color=_KEPT, label="compacted", zorder=3)
    if final.get("dense"):
        dense_params = metrics["params"].get("dense_trained") or metrics["params"]["dense"]
        ax.scatter([dense_params], [final["dense"][primary]], s=60, marker="s", color=_DENSE,
                   label="dense baseline", zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    better = "higher is better" if metrics.get("higher_is_better") else "lower is better"
    ax.set_ylabel(f"validation {primary} ({better})")
    ax.set_title("metric vs. parameters", fontsize=9)
    ax.legend(fontsize=8, frameon=False)
    return _save(fig, path)


def plot_tolerance_walk(result: dict, path: str | Path, primary: str = "metric",
                        higher_is_better: bool = True) -> Path:
    """A tolerance walk (``ToleranceResult.to_dict()``): the validation metric per epoch with
    its bootstrap interval, the points the walk judged (inside or outside the tolerance), the
    dense reference and the tolerance limit, the dense model's pace per epoch for a
    ``paced`` or ``matched`` walk, and the kept fraction on a second axis."""
    plt = _matplotlib()
    walk = result["walk"]
    fig, ax = plt.subplots(figsize=(9, 4))
    reference, tolerance = result["reference"], result["tolerance"]
    slack = tolerance * abs(reference)
    limit = reference - slack if higher_is_better else reference + slack
    sign = -1.0 if higher_is_better else 1.0
    rule = result.get("compare_to", "final")
    key = {"matched": "reference", "paced": "pace"}.get(rule)
    paced = [p for p in walk if key and p.get(key) is not None]
    if paced:  # the dense model's pace: a bar that moves with the epochs
        epochs = [p["epoch"] for p in paced]
        bars = [p[key] + sign * tolerance * abs(p[key]) for p in paced]
        ax.step(epochs, bars, where="mid", color=_DENSE, lw=1, ls=":",
                label="dense at the same epoch, with tolerance"
                + (" (behind it: a miss)" if rule == "paced" else ""))
    if rule != "matched" or not paced:
        ax.axhline(reference, color=_DENSE, lw=1, label="dense reference")
        ax.axhline(limit, color=_DENSE, lw=1, ls="--", label=f"tolerance {100 * tolerance:g}%")
    styles = {"warm": ("o", _DROPPED), "cut": ("x", _DROPPED), "walk": ("o", _KEPT),
              "finetune": ("s", "#2ca02c"), "dense": ("*", _DENSE)}
    for phase, (marker, colour) in styles.items():
        points = [p for p in walk if p["phase"] == phase]
        if not points:
            continue
        epochs = [p["epoch"] for p in points]
        values = [p["metric"] for p in points]
        have = [p for p in points if p.get("low") is not None]
        if have:
            ax.errorbar([p["epoch"] for p in have], [p["metric"] for p in have],
                        yerr=[[p["metric"] - p["low"] for p in have],
                              [p["high"] - p["metric"] for p in have]],
                        fmt="none", ecolor=colour, elinewidth=0.8, alpha=0.7)
        label = {"warm": "warm (all gates open)", "cut": "cut (gates training)",
                 "walk": "judged", "finetune": "fine-tune",
                 "dense": "returned: the dense model (nothing smaller within)"}[phase]
        ax.scatter(epochs, values, marker=marker, color=colour, s=18, label=label, zorder=3)
        if phase == "walk":
            outside = [p for p in points if not p["within"]]
            ax.scatter([p["epoch"] for p in outside], [p["metric"] for p in outside],
                       facecolors="none", edgecolors="#d62728", s=60, zorder=4,
                       label="judged outside")
    ax.set_xlabel("epoch")
    better = "higher is better" if higher_is_better else "lower is better"
    ax.set_ylabel(f"validation {primary} ({better}); bars: 90% bootstrap")
    finite = sorted(p["metric"] for p in walk)
    if finite:  # the first epochs of a fresh model would squash the walk into a line
        lo, hi = finite[len(finite) // 10], finite[-1 - len(finite) // 10]
        pad = 0.5 * (hi - lo) + 2 * slack
        ax.set_ylim(min(lo, limit) - pad, max(hi, reference) + pad)
    twin = ax.twinx()
    twin.step([p["epoch"] for p in walk], [p["kept_fraction"] for p in walk], where="post",
              color="#7f7f7f", lw=1)
    twin.set_ylabel("kept fraction", color="#7f7f7f")
    twin.set_ylim(0, 1.05)
    state = "met" if result["within"] else "missed"
    ax.set_title(f"tolerance walk: {state} at {100 * result['kept_fraction']:.1f}% kept "
                 f"({result.get('decide_on', 'last')} decisions)", fontsize=9)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.1, 1.0))
    fig.tight_layout()
    return _save(fig, path)


def plot_run(metrics: dict, folder: str | Path) -> list[Path]:
    """All run plots from a run's ``metrics.json`` content; returns the PNG paths."""
    folder = Path(folder)
    features = metrics["features"]
    paths = [plot_widths(metrics["groups"], folder / "widths.png"),
             plot_metric_vs_params(metrics, folder / "metric_vs_params.png")]
    if features["names"] and features["scores"]:
        paths.append(plot_feature_ranking(features["names"], features["scores"],
                                          features["kept"], folder / "features.png",
                                          features.get("irrelevant")))
    if metrics.get("tolerance_result", {}).get("walk"):
        paths.append(plot_tolerance_walk(metrics["tolerance_result"], folder / "tolerance.png",
                                         metrics["primary"],
                                         bool(metrics.get("higher_is_better", True))))
    if metrics.get("gate_trajectories"):
        paths.append(plot_gate_trajectories(metrics["gate_trajectories"], features["kept"],
                                            folder / "gates.png"))
    return paths
