"""Parameters and FLOPs as a function of which channels live.

Every parameter tensor and every matmul/conv is a *cost term* ``coeff * prod(live(layout))``:
a Linear's weight is ``live(in) * live(out)``, its bias ``live(out)``. With gate keep
probabilities in place of 0/1 the same formula is the expected cost used by the penalty; with
the final 0/1 decisions it is exactly what compaction leaves (tested against the real model).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .topology.analysis import ChannelGraph
from .topology.spaces import Layout

KINDS = ("params", "flops")


class CostModel(nn.Module):
    """Vectorised cost terms: one ``index_add`` and one gather per evaluation, no Python loop."""

    # buffers (registered in __init__), typed for readers; the per-kind ``{kind}_coeff`` and
    # ``{kind}_factors`` are read with getattr
    entry_rows: Tensor
    entry_gates: Tensor
    entry_weights: Tensor
    constants: Tensor

    def __init__(self, graph: ChannelGraph) -> None:
        super().__init__()
        self.num_gates = graph.num_gates
        rows: dict[int, int] = {}
        layouts: list[Layout] = []

        def row_of(layout: Layout) -> int:
            key = id(layout)
            if key not in rows:
                rows[key] = len(layouts) + 1  # row 0 is the constant 1
                layouts.append(layout)
            return rows[key]

        per_kind: dict[str, list] = {k: [] for k in KINDS}
        for term in graph.records.costs:
            per_kind[term.kind].append((term.coeff, [row_of(f) for f in term.factors], term.label))

        entry_rows, entry_gates, entry_weights = [], [], []
        constants = [1.0]
        for r, layout in enumerate(layouts, start=1):
            const = 0.0
            for seg in layout.segments:
                group = graph.group_of(seg.space)
                if group is None:
                    const += seg.length
                    continue
                for c in range(seg.start, seg.stop):
                    entry_rows.append(r)
                    entry_gates.append(group.offset + c)
                    entry_weights.append(float(seg.block))
            constants.append(const)
        self.register_buffer("entry_rows", torch.tensor(entry_rows, dtype=torch.long), False)
        self.register_buffer("entry_gates", torch.tensor(entry_gates, dtype=torch.long), False)
        self.register_buffer(
            "entry_weights", torch.tensor(entry_weights, dtype=torch.float64), False
        )
        self.register_buffer("constants", torch.tensor(constants, dtype=torch.float64), False)
        self.labels: dict[str, list[str]] = {}
        self._converted: dict = {}
        for kind, terms in per_kind.items():
            width = max([len(f) for _, f, _ in terms], default=0)
            idx = [f + [0] * (width - len(f)) for _, f, _ in terms]
            self.register_buffer(
                f"{kind}_coeff",
                torch.tensor([c for c, _, _ in terms], dtype=torch.float64),
                False,
            )
            self.register_buffer(
                f"{kind}_factors",
                torch.tensor(idx, dtype=torch.long).reshape(len(terms), width),
                False,
            )
            self.labels[kind] = [label for _, _, label in terms]

    def add_weighted_kind(self, kind: str, base: str, weights: dict[str, float]) -> None:
        """A cost kind made of ``base``'s terms, each coefficient multiplied by its label's
        weight (``budget_on="latency"``: FLOP terms times each layer's measured seconds per
        FLOP, see :mod:`lumos.latency`). Calling it again replaces the kind.

        Raises:
            KeyError: a ``base`` term's label has no weight.
        """
        coeff = getattr(self, f"{base}_coeff")
        scale = torch.tensor([weights[label] for label in self.labels[base]],
                             dtype=coeff.dtype, device=coeff.device)
        self.register_buffer(f"{kind}_coeff", coeff * scale, False)
        self.register_buffer(f"{kind}_factors", getattr(self, f"{base}_factors").clone(), False)
        self.labels[kind] = list(self.labels[base])
        self._converted = {k: v for k, v in self._converted.items()
                           if k[0] not in (f"{kind}_coeff", f"{kind}_quadratic")}

    def _as(self, name: str, like: Tensor) -> Tensor:
        """Buffer ``name`` in ``like``'s dtype, converted once (this runs every training step)."""
        buffer = getattr(self, name)
        if buffer.dtype == like.dtype:
            return buffer
        key = (name, like.dtype, buffer.device)
        cached = self._converted.get(key)
        if cached is None or cached.device != buffer.device:
            with torch.inference_mode(False):  # (an inference tensor breaks later autograd)
                cached = self._converted[key] = buffer.to(like.dtype)
        return cached

    def live(self, keep: Tensor) -> Tensor:
        """Live positions of every layout given per-gate keep values (0/1 or probabilities)."""
        out = self._as("constants", keep)
        if self.entry_rows.numel():
            contrib = keep[self.entry_gates] * self._as("entry_weights", keep)
            out = out.index_add(0, self.entry_rows, contrib)
        return out

    def per_term(self, keep: Tensor, kind: str = "params") -> Tensor:
        live = self.live(keep)
        factors = getattr(self, f"{kind}_factors")
        coeff = self._as(f"{kind}_coeff", keep)
        if factors.shape[1] == 0:
            return coeff
        return coeff * live[factors].prod(dim=1)

    def marginal(self, keep: Tensor, kind: str = "params", *, alpha: float = 1.0,
                 add: Tensor | None = None, beta: float = 1.0) -> Tensor:
        """``alpha * d total(keep) / d keep (+ beta * add)`` for every gate, computed directly
        (no autograd graph).

        Each term ``coeff * prod(live_f)`` gives each of its factors ``coeff * prod(other
        live)``; a factor's share reaches its gates through the layout weights. The penalty
        uses this on every training step, where a backward pass through the cost model would
        cost more than the rest of the gate machinery together; ``alpha``, ``add`` and
        ``beta`` let it fold its scale and its feature term into the last product (a small
        model's step pays several microseconds per operator call).
        """
        matrices = self._quadratic_form(kind, keep)
        if matrices is not None:
            layout, layout_t, constants, pairs = matrices
            inner = pairs.mv(torch.addmv(constants, layout, keep))
            if add is None:
                return layout_t.mv(inner).mul_(alpha) if alpha != 1.0 else layout_t.mv(inner)
            return torch.addmv(add, layout_t, inner, beta=beta, alpha=alpha)
        out = self._marginal_by_terms(keep, kind)
        if alpha != 1.0:
            out.mul_(alpha)
        return out if add is None else out.add_(add, alpha=beta)

    def _marginal_by_terms(self, keep: Tensor, kind: str) -> Tensor:
        """:meth:`marginal` term by term: any number of factors, any size."""
        live = self.live(keep)
        factors = getattr(self, f"{kind}_factors")
        coeff = self._as(f"{kind}_coeff", keep)
        per_row = torch.zeros_like(live)
        width = factors.shape[1]
        values = live[factors]  # terms x factors (padding points at the constant row 0)
        if width == 1:
            per_row.index_add_(0, factors[:, 0], coeff)
        elif width == 2:  # the common case (in x out), in one pass
            others = values.flip(1) * coeff[:, None]
            per_row.index_add_(0, factors.flatten(), others.flatten())
        else:
            for f in range(width):
                others = torch.cat([values[:, :f], values[:, f + 1:]], dim=1).prod(dim=1)
                per_row.index_add_(0, factors[:, f], coeff * others)
        out = torch.zeros_like(keep)
        if self.entry_rows.numel():
            share = per_row[self.entry_rows] * self._as("entry_weights", keep)
            out.index_add_(0, self.entry_gates, share)
        return out

    #: the most entries the dense matrices of :meth:`_quadratic_form` may hold (4 MB in float32)
    QUADRATIC_FORM_ENTRIES = 1 << 20

    def _quadratic_form(self, kind: str, like: Tensor) -> tuple[Tensor, ...] | None:
        """The cost as a quadratic form in the live counts, where every term has at most two
        factors (Linear, conv, norm, head terms do) and the matrices are small.

        ``live = constants + layout @ keep`` and ``total = live @ P @ live`` with ``P[a, b]``
        the summed coefficients of the terms ``live_a * live_b`` (a missing factor is the
        constant row 0, whose live count is 1), so ``d total / d keep = layout.T @ (P + P.T)
        @ live``: three matrix-vector products instead of the dozen gathers and scatters of
        the general path (a small MLP's training step spent ~130 us in them, measured). Built
        once per kind, dtype and device; None where the general path must run.
        """
        factors = getattr(self, f"{kind}_factors")
        rows = self.constants.numel()
        if factors.shape[1] == 0 or factors.shape[1] > 2 or rows * max(
                rows, self.num_gates) > self.QUADRATIC_FORM_ENTRIES:
            return None
        key = (f"{kind}_quadratic", like.dtype, factors.device)
        cached = self._converted.get(key)
        if cached is None:
            layout = torch.zeros(rows, self.num_gates, dtype=torch.float64,
                                 device=factors.device)
            layout.index_put_((self.entry_rows, self.entry_gates), self.entry_weights,
                              accumulate=True)
            pairs = torch.zeros(rows, rows, dtype=torch.float64, device=factors.device)
            second = factors[:, 1] if factors.shape[1] == 2 else torch.zeros_like(factors[:, 0])
            pairs.index_put_((factors[:, 0], second), getattr(self, f"{kind}_coeff"),
                             accumulate=True)
            cached = self._converted[key] = tuple(
                t.to(like.dtype).contiguous() for t in
                (layout, layout.t(), self.constants, pairs + pairs.t()))
        return cached

    def total(self, keep: Tensor, kind: str = "params") -> Tensor:
        """Expected (or exact, for 0/1 keep) parameter or FLOP count."""
        return self.per_term(keep, kind).sum()

    def dense(self, kind: str = "params") -> float:
        ones = torch.ones(self.num_gates, dtype=torch.float64, device=self.constants.device)
        return float(self.total(ones, kind))

    def by_label(self, keep: Tensor, kind: str = "params") -> dict[str, float]:
        """Cost per module/parameter label, for the report."""
        values = self.per_term(keep.double(), kind).tolist()
        out: dict[str, float] = {}
        for label, v in zip(self.labels[kind], values):
            owner = label.rsplit(".", 1)[0] if kind == "params" and "." in label else label
            out[owner] = out.get(owner, 0.0) + v
        return out
