"""Channel rules for recurrent layers (``nn.LSTM``, ``nn.GRU``, ``nn.RNN`` and their cells) and
``nn.Embedding``.

A recurrent layer's unit is a hidden unit: one gate per unit across its gate blocks (the 4 rows
``i, f, g, o`` of an LSTM, the 3 rows ``r, z, n`` of a GRU) and across time. Unit ``j`` reaches
the other units only through column ``j`` of ``weight_hh`` (and of the next layer's
``weight_ih``), so its gate scales those columns inside the layer (a ``ParamSite``) and the
readers of the layer's output read it through the same gate: when it closes, removing the
unit's rows and columns leaves every other unit exactly as it was. Its cell state never leaves
the unit. torch's recurrent layers have one ``hidden_size`` for all layers and directions, so
unit ``j`` is one gate for all of them. ``proj_size`` (LSTM projections) keeps the layer whole.

An embedding's unit is one embedding dimension (a column of its table), read by whatever
consumes the embedding. ``max_norm`` renormalises rows over all dims: kept whole.
"""

from __future__ import annotations

from torch import fx, nn

from .context import RuleContext, describe
from .infos import TensorInfo, TupleInfo
from .registry import register_rule
from .rule_helpers import target_path
from .spaces import Layout, unify

#: gate blocks stacked in the rows of weight_ih / weight_hh / biases
_BLOCKS = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def _recurrent(ctx: RuleContext, node: fx.Node, module: nn.RNNBase) -> object:
    owner = target_path(node)
    x = node.args[0] if node.args else node.kwargs.get("input")
    info = ctx.tensor_info(x)
    H, L = module.hidden_size, module.num_layers
    D = 2 if module.bidirectional else 1
    blocks = _BLOCKS.get(module.mode)
    problems = []
    if getattr(module, "proj_size", 0):
        problems.append("proj_size (projected LSTM)")
    if blocks is None:
        problems.append(f"mode {module.mode!r}")
    if len(node.args) > 1 or node.kwargs.get("hx") is not None:
        problems.append("an initial state passed in")
    shape = ctx.shape(x)
    if shape is None or len(shape) != 3:
        problems.append("unbatched input")
    if problems:
        reason = f"{describe(node)} uses {', '.join(problems)}: kept whole"
        ctx.pin(info, reason)
        ctx.ungated(describe(node), reason)
        ctx.measure_flops(node)
        return None
    if info is not None and info.dim != -1:
        ctx.pin(info, f"{describe(node)} reads the last dim, not the tracked one")
        info = None
    if info is not None:
        ctx.site(node, 0, -1, info.layout)
        below = info.layout
    else:
        below = ctx.opaque(module.input_size, "input is not tracked", f"{owner}.in")
    assert shape is not None and blocks is not None  # checked above
    steps = shape[0] * shape[1]  # batch x time, whichever is first
    # one unit space for every layer and direction: torch's recurrent layers have a single
    # hidden_size, so unit j lives or dies in all of them together
    hidden = Layout.of(ctx.new_space(H, "hidden", owner))
    hidden.require_nonempty()  # torch cannot build a recurrent layer of width 0
    rows = Layout.concat([hidden] * blocks)
    out = Layout.concat([hidden] * D)
    for layer in range(L):
        for direction in range(D):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            ctx.role(owner, f"weight_ih{suffix}", 0, rows)
            if layer == 0:
                ctx.role(owner, f"weight_ih{suffix}", 1, below, fold=True)
            else:  # reads the layer below inside the module: gated there
                ctx.param_site(owner, f"weight_ih{suffix}", 1, out)
            ctx.param_cost(owner, f"weight_ih{suffix}", (rows, below))
            ctx.role(owner, f"weight_hh{suffix}", 0, rows)
            ctx.param_site(owner, f"weight_hh{suffix}", 1, hidden)  # the recurrent read
            ctx.param_cost(owner, f"weight_hh{suffix}", (rows, hidden))
            if module.bias:
                for bias in (f"bias_ih{suffix}", f"bias_hh{suffix}"):
                    ctx.role(owner, bias, 0, rows)
                    ctx.param_cost(owner, bias, (rows,))
            ctx.cost("flops", 2 * steps, (rows, below), f"{owner}.ih")
            ctx.cost("flops", 2 * steps, (rows, hidden), f"{owner}.hh")
        below = out
    # h_n (and c_n): (layers * directions, N, hidden), the same units on the last dim
    state = TensorInfo(-1, hidden)
    states = TupleInfo([state, state]) if module.mode == "LSTM" else state
    return TupleInfo([TensorInfo(-1, below), states])


def _resize_recurrent(module: nn.RNNBase) -> None:
    blocks = _BLOCKS.get(module.mode, 1)
    weight_hh = module.get_parameter("weight_hh_l0")
    weight_ih = module.get_parameter("weight_ih_l0")
    module.hidden_size = int(weight_hh.shape[1])
    module.input_size = int(weight_ih.shape[1])
    assert weight_hh.shape[0] == blocks * module.hidden_size
    module._flat_weights = [getattr(module, n) if hasattr(module, n) else None
                            for n in module._flat_weights_names]
    module.flatten_parameters()


_CELL_BLOCKS = {nn.LSTMCell: 4, nn.GRUCell: 3, nn.RNNCell: 1}


def _cell(ctx: RuleContext, node: fx.Node, module: nn.RNNCellBase) -> object:
    """One step of ``nn.LSTMCell``/``GRUCell``/``RNNCell``, usually called in a Python loop.

    Like a recurrent layer, a unit is a hidden unit across its gate blocks: its gate scales
    column ``j`` of ``weight_hh`` (the only way it reaches the other units). The state passed
    in (``hx``, or ``(h, c)``) holds the same units as the state returned; a state that does
    not come from LUMOS-tracked channels (one the caller made) keeps the cell whole, since the
    compacted cell would need it cut to the kept units.
    """
    owner = target_path(node)
    x = node.args[0] if node.args else node.kwargs.get("input")
    hx = node.args[1] if len(node.args) > 1 else node.kwargs.get("hx")
    H, blocks = module.hidden_size, _CELL_BLOCKS[type(module)]
    lstm = isinstance(module, nn.LSTMCell)
    info = ctx.tensor_info(x)
    if info is not None and info.dim != -1:
        ctx.pin(info, f"{describe(node)} reads the last dim, not the tracked one")
        info = None
    states = list(hx) if isinstance(hx, (tuple, list)) else [] if hx is None else [hx]
    state_infos: list[TensorInfo | None] = []
    for s in states:  # an LSTM cell's (h, c) from its previous step is one tuple value
        s_info = ctx.info(s)
        items = s_info.items if isinstance(s_info, TupleInfo) else [s_info]
        state_infos += [i if isinstance(i, TensorInfo) else None for i in items]
    hidden = Layout.of(ctx.new_space(H, "hidden", owner))
    hidden.require_nonempty()
    for s_info in state_infos:
        if s_info is None or s_info.dim != -1:
            reason = f"{describe(node)} is given a state LUMOS does not track: kept whole"
            hidden.pin(reason)
            ctx.ungated(describe(node), reason)
            if s_info is not None:
                ctx.pin(s_info, f"{describe(node)} reads its state on the last dim")
        else:  # h' = ... + z * h (GRU), c' = f * c + ... (LSTM): the same units
            unify(hidden, s_info.layout, f"state of {describe(node)}")
    if info is not None:
        ctx.site(node, 0 if node.args else "input", -1, info.layout)
        below = info.layout
    else:
        below = ctx.opaque(module.input_size, "input is not tracked", f"{owner}.in")
    rows = Layout.concat([hidden] * blocks)
    shape = ctx.shape(x)
    batch = shape[0] if shape is not None and len(shape) == 2 else 1
    ctx.role(owner, "weight_ih", 0, rows)
    ctx.role(owner, "weight_ih", 1, below, fold=True)
    ctx.param_cost(owner, "weight_ih", (rows, below))
    ctx.role(owner, "weight_hh", 0, rows)
    ctx.param_site(owner, "weight_hh", 1, hidden)
    ctx.param_cost(owner, "weight_hh", (rows, hidden))
    if module.bias:
        for bias in ("bias_ih", "bias_hh"):
            ctx.role(owner, bias, 0, rows)
            ctx.param_cost(owner, bias, (rows,))
    ctx.cost("flops", 2 * batch, (rows, below), f"{owner}.ih")
    ctx.cost("flops", 2 * batch, (rows, hidden), f"{owner}.hh")
    out = TensorInfo(-1, hidden)
    return TupleInfo([out, TensorInfo(-1, hidden)]) if lstm else out


def _resize_cell(module: nn.RNNCellBase) -> None:
    module.hidden_size = int(module.weight_hh.shape[1])
    module.input_size = int(module.weight_ih.shape[1])


def _embedding(ctx: RuleContext, node: fx.Node, module: nn.Embedding) -> object:
    owner = target_path(node)
    if module.max_norm is not None:
        reason = f"{describe(node)} renormalises rows over every dimension (max_norm)"
        ctx.ungated(describe(node), reason + ": kept whole")
        return TensorInfo(-1, ctx.opaque(module.embedding_dim, reason, f"{owner}"))
    dims = Layout.of(ctx.new_space(module.embedding_dim, "embedding", owner))
    ctx.role(owner, "weight", 1, dims)
    ctx.param_cost(owner, "weight", (dims,))
    return TensorInfo(-1, dims)


def _resize_embedding(module: nn.Embedding) -> None:
    module.num_embeddings, module.embedding_dim = module.weight.shape


for _cls in (nn.LSTM, nn.GRU, nn.RNN):
    register_rule(_cls, _recurrent, resize=_resize_recurrent, input_dim=-1)
for _cell_cls in _CELL_BLOCKS:
    register_rule(_cell_cls, _cell, resize=_resize_cell, input_dim=-1)
register_rule(nn.Embedding, _embedding, resize=_resize_embedding)
