"""The exact budget projection: shut the weakest gates until compaction fits the budget.

The Lagrangian controller (:mod:`lumos.controller`) gets close; this makes the budget an exact
upper bound. It also reopens the strongest closed gates when the controller's momentum left the
model under the budget with training still to come. Feature gates are never touched here: they
are judged by the feature pressure, not by the size budget.

Everything is a function of the gate bank, the cost model and the groups torch cannot build
empty, so the sparse model and tests call the same code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .cost import CostModel
from .gates import GateBank, log_alpha_for_keep_probability
from .topology.analysis import Group

#: P(gate != 0) of a gate reopened by the projection: fully open again.
REOPEN_KEEP_PROBABILITY = 0.99


def keep_alive(kept: Tensor, nonempty_groups: Sequence[Group], log_alpha: Tensor) -> Tensor:
    """``kept`` plus the strongest channel of every must-not-be-empty group left empty.

    torch cannot build a conv, norm or attention of width 0: such a group keeps its strongest
    channel even when every gate is closed; its gate value 0 is folded into its readers, so it
    contributes nothing and outputs stay exact.
    """
    kept = kept.clone()
    log_alpha = log_alpha.detach()
    for group in nonempty_groups:
        sl = slice(group.offset, group.offset + group.size)
        if not bool(kept[sl].any()):
            kept[group.offset + int(torch.argmax(log_alpha[sl]))] = True
    return kept


def kept_fraction(cost: CostModel, keep: Tensor, dense: float, kind: str = "params") -> float:
    """What compaction keeps of ``dense`` (parameters or FLOPs) for a 0/1 ``keep`` mask."""
    return float(cost.total(keep.double(), kind)) / max(dense, 1.0)


def shut_to_budget(
    gates: GateBank,
    cost: CostModel,
    dense: float,
    nonempty_groups: Sequence[Group],
    kept: Tensor,
    feature_mask: Tensor,
    budget: float,
    kind: str = "params",
) -> tuple[Tensor, float]:
    """Which gates to shut so the kept fraction is at most ``budget``, and the fraction reached.

    The weakest (lowest log alpha) neuron/channel/head gates go first; a binary search finds
    how many. The last one shut may be a big unit (a head) that overshoots, so every shut gate
    the budget still allows is then spared again, strongest first: cheap neurons fill the gap.
    """

    def fraction(shut: Tensor) -> float:
        return kept_fraction(cost, keep_alive(kept & ~shut, nonempty_groups, gates.log_alpha),
                             dense, kind)

    none = torch.zeros_like(kept)
    candidates = torch.nonzero(kept & ~feature_mask).flatten()
    order = candidates[torch.argsort(gates.log_alpha.detach()[candidates])]
    lo, hi = 0, len(order)  # smallest k whose k weakest gates shut meet the budget
    while lo < hi:
        mid = (lo + hi) // 2
        shut = none.clone()
        shut[order[:mid]] = True
        if fraction(shut) <= budget:
            hi = mid
        else:
            lo = mid + 1
    final = none.clone()
    final[order[:lo]] = True
    spare = order[: max(lo - 1, 0)].flip(0)
    _fill(spare, final, lambda shut: fraction(shut), budget, gates, cost, dense, nonempty_groups,
          kept, opening=False, kind=kind)
    return final, fraction(final)


def _fill(order: Tensor, state: Tensor, fraction, budget: float, gates: GateBank,
          cost: CostModel, dense: float, nonempty_groups: Sequence[Group], kept: Tensor,
          opening: bool, kind: str = "params") -> None:
    """Open gates of ``order`` one by one (in order) while the budget allows, in place.

    ``state`` is the shut mask (``opening=False``: a gate is opened by un-shutting it) or the
    keep mask (``opening=True``). Each candidate would cost a full evaluation; the cost model's
    marginal at the current state is a lower bound of what opening a gate adds (the cost is a
    polynomial with non-negative coefficients, and marginals only grow as gates open), so a
    gate whose marginal already exceeds the room left is skipped without one. With a budget
    nearly met, almost every candidate is skipped: near-linear instead of quadratic.
    """
    if len(order) == 0:
        return
    # gates of a must-not-be-empty group left empty: keep-alive can hide their cost, no screen
    unsafe = torch.zeros_like(kept)
    current_keep = (kept & ~state) if not opening else state
    for group in nonempty_groups:
        sl = slice(group.offset, group.offset + group.size)
        if not bool(current_keep[sl].any()):
            unsafe[sl] = True
    now = fraction(state)
    keep_now = keep_alive(current_keep, nonempty_groups, gates.log_alpha).double()
    lower = cost.marginal(keep_now, kind) / max(dense, 1.0)
    for gate in order.tolist():
        room = budget - now
        if room < 0:
            break
        if not bool(unsafe[gate]) and float(lower[gate]) > room + 1e-12:
            continue
        state[gate] = opening
        tried = fraction(state)
        if tried > budget:
            state[gate] = not opening
        else:
            now = tried


def reopen_within(
    gates: GateBank,
    cost: CostModel,
    dense: float,
    nonempty_groups: Sequence[Group],
    kept: Tensor,
    feature_mask: Tensor,
    budget: float,
    kind: str = "params",
) -> int:
    """Reopen closed, not shut-for-good, non-feature gates, strongest first, each one that
    still fits: compaction stays within ``budget``. Returns how many were reopened.

    The strongest ones are found by a binary search over how many fit in a row; after the
    first that does not fit, the rest are tried one by one, so a cheap unit (a neuron) can
    still fill the gap an expensive one (an attention head) would overshoot.
    """
    closed = ~kept & ~gates.shut & ~feature_mask
    candidates = torch.nonzero(closed).flatten()
    if len(candidates) == 0:
        return 0
    order = candidates[torch.argsort(gates.log_alpha.detach()[candidates], descending=True)]

    def fraction(keep: Tensor) -> float:
        return kept_fraction(cost, keep_alive(keep, nonempty_groups, gates.log_alpha), dense,
                             kind)

    def with_first(k: int) -> Tensor:
        keep = kept.clone()
        keep[order[:k]] = True
        return keep

    lo, hi = 0, len(order)  # largest k whose k strongest gates reopened stay in budget
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fraction(with_first(mid)) <= budget:
            lo = mid
        else:
            hi = mid - 1
    keep = with_first(lo)
    # order[lo] did not fit; the rest one by one (cost only grows), screened by marginals
    _fill(order[lo + 1:], keep, fraction, budget, gates, cost, dense, nonempty_groups, keep,
          opening=True, kind=kind)
    reopened = keep & ~kept
    if reopened.any():
        opened = log_alpha_for_keep_probability(REOPEN_KEEP_PROBABILITY, gates.cfg)
        gates.log_alpha.data[reopened] = opened
    return int(reopened.sum())


#: how a budget's measure reads in messages
MEASURES = {"params": "the parameters", "flops": "the FLOPs",
            "latency": "the estimated latency"}


def unreachable_message(pinned_origins: Sequence[str], budget: float, reached: float,
                        holders: Sequence[str] = (), kind: str = "params") -> str:
    """The warning for a budget below the smallest model LUMOS can build: what is kept whole
    and the layers that hold most of what must stay."""
    whole = sorted(set(pinned_origins))
    shown = ", ".join(whole[:6]) + (" ..." if len(whole) > 6 else "")
    held = f" The layers holding most of it: {', '.join(holders)}." if holders else ""
    return (
        f"budget={budget} cannot be reached: the smallest model LUMOS can build from this one "
        f"keeps {reached:.1%} of {MEASURES[kind]}, because some channels are kept whole "
        f"({shown or 'only the model output is, so the size sits in layers without gates'}; "
        f"see sm.report()).{held} Ask for a budget of at least {reached:.2f}, or make those "
        "layers prunable (e.g. register a rule for them, or keep fewer layers whole)."
    )
