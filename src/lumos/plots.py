"""Pictures of what LUMOS found (matplotlib, imported lazily; files are PNG).

``plot_groups`` draws the layer graph the coordinator read, each op coloured by the gate group
of the channels it produces, so coupled channels (a residual stream, a concatenation, attention
heads) are visible at a glance.
"""

from __future__ import annotations

from pathlib import Path

from torch import fx

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
            "plots need matplotlib: pip install 'lumos-sciml[plots]'."
        ) from exc
    return plt


def _label(node: fx.Node, gm: fx.GraphModule) -> str:
    if node.op == "call_module":
        return f"{node.target}\n{type(gm.get_submodule(node.target)).__name__}"
    if node.op == "placeholder":
        return f"input {node.target}"
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "?")
    return str(name)


def _shown(node: fx.Node) -> bool:
    if node.op == "placeholder":
        return node.target != "lumos_gates"
    if node.op in ("call_module", "output"):
        return True
    if node.op in ("call_function", "call_method"):
        name = node.target if isinstance(node.target, str) else node.target.__name__
        return name not in _SKIP_FUNCTIONS and not name.startswith("apply_gates")
    return False


def plot_groups(sm, path: str | Path, title: str | None = None) -> Path:
    """Draw the traced layer graph of ``sm`` with every op coloured by its output's gate group.

    Grey: channels kept whole (pinned, e.g. the model output or a LayerNorm stream).
    """
    plt = _matplotlib()
    graph = sm.graph_info
    infos = graph.ctx.infos
    nodes = [n for n in graph.gm.graph.nodes if _shown(n)]
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
        info = infos.get(n)
        if isinstance(info, TupleInfo):
            info = next((i for i in info.items if isinstance(i, TensorInfo)), None)
        if isinstance(info, TensorInfo):
            for seg in info.layout.segments:
                group = graph.group_of(seg.space)
                if group is not None:
                    return colour[id(group.root)]
        return (0.8, 0.8, 0.8, 1.0)

    height = max(4.0, 0.9 * len(rows))
    fig, ax = plt.subplots(figsize=(11, height))
    for n in nodes:
        for m in visible_inputs(n):
            (x0, y0), (x1, y1) = pos[m], pos[n]
            ax.annotate("", xy=(x1, y1 + 0.18), xytext=(x0, y0 - 0.18),
                        arrowprops={"arrowstyle": "->", "color": "0.55", "lw": 0.8})
    for n in nodes:
        x, y = pos[n]
        ax.text(x, y, _label(n, graph.gm), ha="center", va="center", fontsize=7,
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
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
