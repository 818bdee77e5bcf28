"""Gate trajectories in TensorBoard.

:class:`GateLogger` writes, at each call, what a SparseModel's gates look like now:

- ``lumos/kept/params`` and ``lumos/kept/flops``: the fraction compaction would keep;
- ``lumos/budget_target``: the kept fraction the budget schedule aims at (with ``budget=``);
- ``lumos/width/<group>``: channels kept per gate group (neurons, channels, heads, ...);
- ``lumos/features_kept/<input>`` and ``lumos/feature/<input>/<name>``: features kept, and
  each feature's probability of being open (the first ``max_features`` of each input);
- ``lumos/keep_probability``: a histogram of every gate's probability of being open.

Use it as ``train(..., on_epoch=GateLogger(sm, "runs/tb"))``, call ``log(step)`` from your own
loop, or let :class:`lumos.integrations.lightning.LumosCallback` call it with the Trainer's
TensorBoard logger. Needs the ``tensorboard`` package (``torch.utils.tensorboard`` writes the
files).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..errors import ConfigurationError
from ..sparse_model import SparseModel


def _summary_writer() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ConfigurationError(
            "lumos.integrations.tensorboard needs the tensorboard package: pip install "
            "tensorboard (or pip install 'lumos-sciml[integrations]')."
        ) from exc
    return SummaryWriter


class GateLogger:
    """Write a SparseModel's gates to TensorBoard (see the module docstring for the tags).

    Args:
        sparse_model: the model from :func:`lumos.sparsify`.
        log_dir: where a new ``SummaryWriter`` writes (ignored when ``writer`` is given).
        writer: an existing ``torch.utils.tensorboard.SummaryWriter`` (a Lightning
            ``TensorBoardLogger``'s ``experiment``).
        prefix: the first part of every tag.
        max_features: per input, how many features get a scalar of their own.

    Raises:
        ConfigurationError: ``sparse_model`` is not a SparseModel, neither ``log_dir`` nor
            ``writer`` is given, or tensorboard is not installed.

    Example::

        logger = GateLogger(sm, "runs/tb")
        train(sm, (x, y), epochs=20, on_epoch=logger)   # one point per epoch
        logger.close()
    """

    def __init__(self, sparse_model: SparseModel, log_dir: str | os.PathLike | None = None, *,
                 writer: Any = None, prefix: str = "lumos", max_features: int = 64) -> None:
        if not isinstance(sparse_model, SparseModel):
            raise ConfigurationError(
                f"GateLogger logs a lumos.SparseModel, got {type(sparse_model).__name__}: pass "
                "the model lumos.sparsify returned.")
        if writer is None:
            if log_dir is None:
                raise ConfigurationError("GateLogger needs log_dir= (a folder for TensorBoard) "
                                         "or writer= (a SummaryWriter).")
            writer = _summary_writer()(log_dir=os.fspath(log_dir))
            self._owns_writer = True
        else:
            self._owns_writer = False
        self.sparse_model, self.writer = sparse_model, writer
        self.prefix, self.max_features = prefix, int(max_features)

    def __call__(self, epoch: int, history: Any = None) -> None:
        """``train(on_epoch=...)``: one point per epoch (returns None: never stops training)."""
        self.log(epoch + 1)

    @torch.no_grad()
    def log(self, step: int) -> None:
        """Write every tag at ``step``."""
        sm, w, p = self.sparse_model, self.writer, self.prefix
        counts = sm.compacted_counts()
        w.add_scalar(f"{p}/kept/params", counts["params"] / max(sm.dense_params, 1.0), step)
        w.add_scalar(f"{p}/kept/flops", counts["flops"] / max(sm.dense_flops, 1.0), step)
        if sm.controller is not None:
            w.add_scalar(f"{p}/budget_target", sm.controller.target(), step)
        keep = sm.gates.prob_nonzero().detach().float().cpu()
        kept = sm.kept_mask().cpu()
        if keep.numel():
            w.add_histogram(f"{p}/keep_probability", keep, step)
        for group in sm.graph_info.groups:
            if group.kind != "feature":
                width = int(kept[group.offset:group.offset + group.size].sum())
                w.add_scalar(f"{p}/width/{group.name}", width, step)
        selected = sm.selected_features()
        for name, scores in sm.feature_scores().items():
            w.add_scalar(f"{p}/features_kept/{name}", len(selected.get(name, [])), step)
            names = sm.feature_names.get(name) or [str(i) for i in range(len(scores))]
            for label, score in list(zip(names, scores.tolist()))[: self.max_features]:
                w.add_scalar(f"{p}/feature/{name}/{label}", score, step)
        w.flush()

    def close(self) -> None:
        """Close the writer if this logger made it."""
        if self._owns_writer:
            self.writer.close()


__all__ = ["GateLogger"]
