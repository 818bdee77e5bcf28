"""LUMOS inside a Lightning ``Trainer``: one callback.

Wrap the network with :func:`lumos.sparsify` in the ``LightningModule`` and optimise
``sm.parameter_groups(lr)``; :class:`LumosCallback` does the rest of what the README loop
does by hand:

- **progress**: ``sm.set_progress(global_step / estimated_stepping_batches)`` before every
  batch, so the budget warms up, is enforced at 90% and exactly at the end;
- **penalty**: after each backward it adds the penalty's gradient (in the task loss's units,
  :meth:`~lumos.SparseModel.penalty_terms`) to the gates' ``log_alpha.grad``, scaled for
  gradient accumulation; ``training_step`` returns the task loss only. Under Lightning's
  DDP strategies the gradient is averaged over the processes, so every rank keeps the same
  gates; the budget controller moves once per optimiser step (the optimiser's step hook);
- **logging**: kept fractions every ``log_every_n_steps`` through ``pl_module.log`` (any
  logger), and gate trajectories, widths and features through :class:`GateLogger` when the
  Trainer logs to TensorBoard;
- **compaction**: at the end of ``fit``, ``callback.compacted`` holds the plain compacted
  model (also written to ``save_compacted`` if given, atomically).

Example::

    class Module(lightning.LightningModule):
        def __init__(self, net, example):
            super().__init__()
            self.sm = lumos.sparsify(net, example, budget=0.25)

        def training_step(self, batch, _):
            x, y = batch
            return F.mse_loss(self.sm(x), y)        # the task loss only

        def configure_optimizers(self):
            return torch.optim.Adam(self.sm.parameter_groups(lr=1e-3))

    callback = LumosCallback()
    lightning.Trainer(max_epochs=20, callbacks=[callback]).fit(Module(net, x[:8]), loader)
    small = callback.compacted
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..atomic import replace_atomically
from ..errors import ConfigurationError
from ..sparse_model import SparseModel

try:
    from lightning.pytorch import Callback
    from lightning.pytorch.loggers import TensorBoardLogger
except ImportError:  # the older package name
    try:
        from pytorch_lightning import Callback  # type: ignore[no-redef,assignment]
        from pytorch_lightning.loggers import (  # type: ignore[no-redef,assignment]
            TensorBoardLogger,
        )
    except ImportError as exc:
        raise ImportError(
            "lumos.integrations.lightning needs Lightning: pip install lightning (or pip "
            "install 'lumos-sciml[integrations]')."
        ) from exc


class LumosCallback(Callback):
    """Penalty, progress, budget, logging and compaction of a SparseModel in a Lightning fit.

    Args:
        sparse_model: the SparseModel to drive; None finds the one inside the
            ``LightningModule`` (there must be exactly one).
        log_every_n_steps: how often the gates are logged (None: the Trainer's own).
        save_compacted: a path to ``torch.save`` the compacted model to at the end of fit.

    Attributes:
        compacted: the compacted model once ``fit`` ended (None before).

    Raises:
        ConfigurationError: (at the start of fit) no or several SparseModels in the module,
            or an optimiser that does not hold the gates.
    """

    def __init__(self, sparse_model: SparseModel | None = None, *,
                 log_every_n_steps: int | None = None,
                 save_compacted: str | os.PathLike | None = None) -> None:
        super().__init__()
        self.sparse_model = sparse_model
        self.log_every_n_steps = log_every_n_steps
        self.save_compacted = None if save_compacted is None else Path(save_compacted)
        self.compacted: torch.nn.Module | None = None
        self._loss: torch.Tensor | None = None
        self._gate_logger: Any = None

    # ---- set-up ------------------------------------------------------------------------
    def _find(self, pl_module: torch.nn.Module) -> SparseModel:
        if self.sparse_model is not None:
            return self.sparse_model
        found = [m for m in pl_module.modules() if isinstance(m, SparseModel)]
        if len(found) != 1:
            raise ConfigurationError(
                f"LumosCallback found {len(found)} lumos.SparseModel(s) in "
                f"{type(pl_module).__name__}: wrap the network with lumos.sparsify in the "
                "LightningModule's __init__ (self.sm = lumos.sparsify(net, example, "
                "budget=...)), or pass LumosCallback(sparse_model=...) when there are several.")
        return found[0]

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.sparse_model = self._find(pl_module)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        sm = self._find(pl_module)
        gates = sm.gates.log_alpha
        held = any(p is gates for opt in trainer.optimizers for group in opt.param_groups
                   for p in group["params"])
        if not held:
            raise ConfigurationError(
                "no optimiser of this Trainer holds the LUMOS gates, so they would never "
                "learn: in configure_optimizers, optimise sm.parameter_groups(lr=...) (the "
                "weights and the gates, each with its learning rate).")
        if isinstance(trainer.logger, TensorBoardLogger) and trainer.is_global_zero:
            from .tensorboard import GateLogger

            self._gate_logger = GateLogger(sm, writer=trainer.logger.experiment)

    # ---- every step ----------------------------------------------------------------------
    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any,
                             batch_idx: int) -> None:
        total = trainer.estimated_stepping_batches
        if total and total != float("inf"):
            self.sparse_model.set_progress(  # type: ignore[union-attr]
                min(1.0, trainer.global_step / float(total)))

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: torch.Tensor) -> None:
        self._loss = loss.detach()

    def on_after_backward(self, trainer: Any, pl_module: Any) -> None:
        sm, loss = self.sparse_model, self._loss
        if sm is None or loss is None or not sm.training:
            return
        self._loss = None
        # Lightning hands over the loss divided by the accumulation count: the penalty is
        # measured on the batch's own loss and, like it, split over the micro-batches
        accumulate = max(int(getattr(trainer, "accumulate_grad_batches", 1) or 1), 1)
        value, grad = sm.penalty_terms(loss * accumulate)
        if grad is None:
            return
        grad = grad / accumulate
        if torch.distributed.is_available() and torch.distributed.is_initialized() and \
                torch.distributed.get_world_size() > 1:
            # every rank must take the same step on the gates (each measured the penalty on
            # its own loss): average it as DDP averaged the task gradient
            torch.distributed.all_reduce(grad)
            grad = grad / torch.distributed.get_world_size()
        log_alpha = sm.gates.log_alpha
        if log_alpha.grad is None:
            log_alpha.grad = grad.to(log_alpha.dtype).clone()
        else:
            log_alpha.grad.add_(grad.to(log_alpha.grad.dtype))
        pl_module.log("lumos/penalty", value.detach().float(), on_step=True, on_epoch=False,
                      batch_size=1)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        every = self.log_every_n_steps or trainer.log_every_n_steps or 50
        if trainer.global_step % every:
            return
        sm = self.sparse_model
        pl_module.log("lumos/kept_params", sm.kept_fraction("params"),  # type: ignore[union-attr]
                      on_step=True, on_epoch=False, batch_size=1)
        if self._gate_logger is not None:
            self._gate_logger.log(trainer.global_step)

    # ---- the end -----------------------------------------------------------------------
    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        sm = self.sparse_model
        sm.set_progress(1.0)  # type: ignore[union-attr]  # the budget, exactly
        if self._gate_logger is not None:
            self._gate_logger.log(trainer.global_step)
        self.compacted = sm.compact()  # type: ignore[union-attr]
        if self.save_compacted is not None and trainer.is_global_zero:
            self.save_compacted.parent.mkdir(parents=True, exist_ok=True)
            replace_atomically(self.save_compacted,
                               lambda fh: torch.save(self.compacted, fh))


__all__ = ["LumosCallback"]
