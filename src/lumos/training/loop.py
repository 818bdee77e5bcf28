"""The training loop: :func:`train` and the steps it is made of.

One call checks its options, builds the optimiser and the epoch batches, resumes from a
checkpoint if asked, then runs epochs of optimiser steps; each epoch ends with the reduced loss,
the SparseModel's record, an optional validation, the user's ``on_epoch`` and a checkpoint.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import distributed
from ..checkpoint import CheckpointManager, load_file, state_bytes
from ..errors import ConfigurationError, InputError, NonFiniteError
from ..schedules import Schedule
from ..sparse_model import SparseModel
from .batches import (
    EpochBatches,
    all_finite,
    batch_pair,
    call_model,
    check_loss,
    check_prediction_shape,
    is_one_row_batchnorm_error,
    one_row_batch_error,
    to_device,
)
from .batchnorm import recalibrate_batchnorm
from .evaluation import Metrics, evaluate
from .history import History, record_sparse_epoch
from .optimizer import make_optimizer
from .state import Position, checkpoint_state, restore_checkpoint


def train(
    model: nn.Module,
    data,
    *,
    epochs: int,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.mse_loss,
    lr: float = 1e-3,
    gate_lr: float | None = None,
    weight_decay: float = 0.0,
    batch_size: int = 128,
    seed: int = 0,
    val_data=None,
    metrics: Metrics | None = None,
    on_epoch: Callable[[int, History], bool | None] | None = None,
    record_gates: bool = False,
    grad_clip: float | None = None,
    device: torch.device | str | None = None,
    progress: bool | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    keep_checkpoints: int = 2,
    resume: bool | str | os.PathLike = False,
    progress_range: tuple[float, float] = (0.0, 1.0),
    lr_schedule: Schedule | None = None,
) -> History:
    """Train ``model`` (dense or :class:`SparseModel`) with Adam for ``epochs`` epochs.

    ``val_data`` with ``metrics`` are evaluated after every epoch (``History.val``).
    ``progress_range``: the part of a longer schedule this call covers (a SparseModel's
    progress runs from its first to its second number), for loops that call ``train`` in
    pieces.
    ``on_epoch(epoch, history)`` may return True to stop early. Progress bars show on a TTY.
    ``lr_schedule``: a :class:`~lumos.Schedule` over the same progress that multiplies every
    parameter group's learning rate at each step (``Schedule("cosine", 1.0, 0.02)`` anneals
    it, so the last epochs settle instead of hopping around at full step size); a function of
    progress only, so a resumed run steps with the same rates.

    Checkpoints: with ``checkpoint_dir`` a checkpoint is written after every epoch and, with
    ``checkpoint_every=k``, every ``k`` steps inside an epoch (newest ``keep_checkpoints``
    kept). ``resume=True`` continues from the latest checkpoint there (or starts afresh if
    there is none yet); ``resume=PATH`` from that file. A resumed run ends exactly where the
    uninterrupted one would have (same batches, gate noise, RNG draws and optimiser state).

    Several processes: launched by ``torchrun`` with an initialised process group (see
    :func:`lumos.distributed.init_from_env`) the model is wrapped in
    ``DistributedDataParallel`` and every process trains on its shard of each batch; only
    rank 0 writes checkpoints and shows progress. LUMOS shards the data itself, so every
    process passes the same whole data set: data sets of different lengths are refused on every
    rank (an ``InputError``, where training would otherwise hang), and different samples on
    the ranks are warned about.

    Misuse is refused with a LUMOS error before it can spoil the model: a ``batch_size`` that
    is not a positive integer (``ConfigurationError``); a model whose output is not one tensor
    (a dict, a tuple) with an elementwise default loss, or a ``loss_fn`` that does not return
    one number (``InputError``: pass ``loss_fn=``); NaN/Inf in a batch's inputs or targets
    (``InputError`` naming the batch and epoch, raised before the step, so weights and gates
    stay finite); a loss that becomes NaN/Inf on finite data (``NonFiniteError``, before the
    step). BatchNorm cannot normalise a batch of one row in training: when the data would
    leave one row in the last batch of each epoch and the model has a BatchNorm, that batch is
    skipped with a ``LumosWarning`` (pass a DataLoader with ``drop_last=True``, or a batch size
    leaving at least two rows, to avoid it); a custom loader (own sampler) that yields such a
    batch gets an ``InputError`` naming that fix.
    """
    _check_options(epochs=epochs, lr=lr, batch_size=batch_size, val_data=val_data,
                   metrics=metrics,
                   progress_range=progress_range, checkpoint_every=checkpoint_every,
                   checkpoint_dir=checkpoint_dir, resume=resume)
    _check_lr_schedule(lr_schedule)
    ctx = distributed.current()
    # torch.compile(sm): train the SparseModel inside (its penalty, progress, budget and
    # checkpoints), run its forward through the compiled wrapper
    compiled = None
    if type(model).__name__ == "OptimizedModule" and isinstance(
            getattr(model, "_orig_mod", None), nn.Module):
        compiled, model = model, model._orig_mod
    if device is not None:
        device = torch.device(device)
        model.to(device)
    if optimizer is None:
        optimizer = make_optimizer(model, lr, gate_lr, weight_decay)
    batches = EpochBatches(data, batch_size, seed, ctx)
    batches.check_same_data_on_every_rank(device)  # before any collective that could hang
    batches.avoid_one_row_batches(model)
    run = _Run(model, optimizer, batches, ctx,
               epochs=epochs, seed=seed, loss_fn=loss_fn, grad_clip=grad_clip, device=device,
               progress_range=progress_range, record_gates=record_gates,
               checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
               keep_checkpoints=keep_checkpoints, lr_schedule=lr_schedule)
    torch.manual_seed(seed)
    if resume:
        run.resume(resume)
    run.begin(progress)
    if compiled is not None and ctx.world_size == 1:
        run.net = compiled
    try:
        while not run.pos.finished and run.pos.epoch < epochs:
            epoch = run.pos.epoch
            start = time.perf_counter() - run.pos.seconds
            for batch in run.batches.epoch(epoch, run.pos.batch):
                run.step(batch, start)
            run.end_epoch(epoch, start)
            if val_data is not None:
                run.validate(val_data, metrics, data, batch_size)
            run.show_loss()
            stop = on_epoch is not None and bool(on_epoch(epoch, run.history))
            run.next_epoch(epoch, stop)
    finally:
        run.close_progress_bar()
    run.finish(data, batch_size)
    model.eval()
    return run.history


def _check_lr_schedule(schedule) -> None:
    if schedule is None:
        return
    if not isinstance(schedule, Schedule):
        raise ConfigurationError(
            f"lr_schedule must be a lumos.Schedule of the learning-rate multiplier (e.g. "
            f"Schedule('cosine', 1.0, 0.02)) or None, got {schedule!r}.")
    values = [schedule(p) for p in (0.0, 0.25, 0.5, 0.75, 1.0)]
    if not all(math.isfinite(v) and v >= 0 for v in values) or max(values) <= 0:
        raise ConfigurationError(
            f"lr_schedule multiplies the learning rate, so it must stay >= 0 and not be 0 "
            f"throughout; {schedule!r} gives {values} at progress 0, .25, .5, .75, 1.")


def _check_options(*, epochs, lr, batch_size, val_data, metrics, progress_range,
                   checkpoint_every, checkpoint_dir, resume) -> None:
    """Refuse option values :func:`train` cannot run with, before any work."""
    if not (isinstance(epochs, int) and epochs >= 1):
        raise ConfigurationError(f"epochs must be a positive integer, got {epochs!r}.")
    if not (isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 1):
        raise ConfigurationError(
            f"batch_size must be a positive integer (samples per step), got {batch_size!r}."
        )
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ConfigurationError(f"lr must be a positive number, got {lr!r}.")
    if val_data is not None and metrics is None:
        raise ConfigurationError("val_data needs metrics=fn(pred, target) -> dict to score it.")
    lo, hi = progress_range
    if not 0.0 <= lo <= hi <= 1.0:
        raise ConfigurationError(
            f"progress_range must satisfy 0 <= start <= end <= 1, got {progress_range!r}."
        )
    if checkpoint_every is not None and not (
        isinstance(checkpoint_every, int) and checkpoint_every >= 0
    ):
        raise ConfigurationError(
            f"checkpoint_every must be a number of steps >= 0, got {checkpoint_every!r}."
        )
    if (checkpoint_every or resume is True) and checkpoint_dir is None:
        raise ConfigurationError(
            "checkpoint_every and resume=True need checkpoint_dir= (where checkpoints live)."
        )


def _checkpoints(checkpoint_dir, keep: int, model: nn.Module, ctx) -> CheckpointManager | None:
    """The checkpoint folder of the run (checked for room on rank 0), or None."""
    if checkpoint_dir is None:
        return None
    manager = CheckpointManager(checkpoint_dir, keep)
    if ctx.is_main:
        manager.prepare(state_bytes(model))
    return manager


def _progress_bar(total: int, enabled: bool | None, desc: str):
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=total, desc=desc, leave=False)


def _wrap(model: nn.Module, ctx: distributed.ProcessContext, device) -> nn.Module:
    """``DistributedDataParallel`` around the model when several processes train it."""
    if not ctx.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    on_gpu = device is not None and torch.device(device).type == "cuda"
    return DistributedDataParallel(model, device_ids=[torch.device(device).index] if on_gpu
                                   else None)


class _Run:
    """One call of :func:`train`: the model and what trains it, where the loop is (``pos``)
    and what it recorded (``history``)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 batches: EpochBatches, ctx: distributed.ProcessContext, *, epochs: int,
                 seed: int, loss_fn, grad_clip: float | None, device,
                 progress_range: tuple[float, float], record_gates: bool,
                 checkpoint_dir, checkpoint_every: int | None, keep_checkpoints: int,
                 lr_schedule: Schedule | None = None) -> None:
        self.model = model
        self.optimizer = optimizer
        self.lr_schedule = lr_schedule
        if lr_schedule is not None:  # the rates the schedule multiplies, kept across calls
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        self.batches = batches
        self.ctx = ctx
        self.epochs = epochs
        self.loss_fn = loss_fn
        self.grad_clip = grad_clip
        self.updates = 0  # optimiser steps taken by this call
        self.device = device
        self.progress_range = progress_range
        self.record_gates = record_gates
        self.checkpoint_every = checkpoint_every
        self.sparse = isinstance(model, SparseModel)
        self.steps_per_epoch = len(batches)
        if self.steps_per_epoch == 0:
            raise ConfigurationError(
                "the training data give no batch (empty data, or drop_last with fewer samples "
                "than one batch per process)."
            )
        self.total_steps = epochs * self.steps_per_epoch
        self.run_shape = {"epochs": epochs, "steps_per_epoch": self.steps_per_epoch,
                          "world_size": ctx.world_size, "seed": int(seed)}
        self.checkpoints = _checkpoints(checkpoint_dir, keep_checkpoints, model, ctx)
        self.history = History()
        self.pos = Position()
        self.net: nn.Module = model
        self.bar = None

    def span(self, fraction: float) -> float:
        """Where ``fraction`` of this call lies in the SparseModel's whole schedule."""
        lo, hi = self.progress_range
        return lo + (hi - lo) * fraction

    # -- resuming and checkpoints --
    def resume(self, source) -> None:
        """Continue from the latest checkpoint (``source`` True) or from the file ``source``;
        with no checkpoint yet the run starts afresh."""
        state = self.checkpoints.load() if source is True else load_file(source)
        if state is not None:
            self.history, self.pos = restore_checkpoint(
                state, self.model, self.optimizer, self.run_shape, source, self.ctx.rank,
                self.batches)

    def save(self) -> None:
        """A checkpoint of the run as it is now (every rank takes part; rank 0 writes)."""
        if self.checkpoints is None:
            return
        position = self.pos.to_state(self.device)  # a collective: every rank takes part
        if not self.ctx.is_main:
            return
        self.checkpoints.save(
            checkpoint_state(self.model, self.optimizer, position, self.history,
                             self.batches.order_state(self.pos.batch), self.run_shape),
            self.pos.step,
        )

    # -- the loop's start, and its progress bar --
    def begin(self, progress: bool | None) -> None:
        """Ready to step: the model wrapped for several processes, the progress bar at the
        current step, the model in training mode."""
        self.net = _wrap(self.model, self.ctx, self.device)
        self.bar = _progress_bar(self.total_steps, progress if self.ctx.is_main else False,
                                 type(self.model).__name__)
        if self.bar is not None:
            self.bar.update(self.pos.step)
        self.model.train()

    def show_loss(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{self.history.loss[-1]:.4g}")

    def close_progress_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()

    # -- one optimiser step --
    def step(self, batch, epoch_start: float) -> None:
        """Forward, loss (+ the SparseModel's penalty), backward and optimiser step on one
        batch; a mid-epoch checkpoint every ``checkpoint_every`` steps."""
        model, pos = self.model, self.pos
        inputs, targets = batch_pair(batch)
        inputs, targets = to_device(inputs, self.device), to_device(targets, self.device)
        if self.sparse:
            model.set_progress(self.span(pos.step / self.total_steps))
        if self.lr_schedule is not None:
            factor = self.lr_schedule(self.span(pos.step / self.total_steps))
            for group in self.optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
        try:
            pred = call_model(self.net, inputs)
        except ValueError as exc:
            if is_one_row_batchnorm_error(exc):
                raise one_row_batch_error(pos.epoch, pos.batch) from exc
            raise
        check_prediction_shape(self.loss_fn, pred, targets)
        loss = self.loss_fn(pred, targets)
        check_loss(loss)
        total = loss
        pen = None
        if self.sparse:
            # every rank adds the same penalty and DDP averages the gradients, so the
            # penalty counts once per step, as in a single process
            pen = model.penalty(loss)  # measured in the task loss's units
            total = loss + pen
        self._refuse_non_finite(inputs, targets, pred, total)
        if pen is not None:
            pos.penalty_sum += pen.detach().cpu()
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
        self.optimizer.step()
        if self.sparse:
            model.step()  # the budget controller moves once per optimiser step
        self.updates += 1
        pos.loss_sum += loss.detach().cpu()
        pos.batches += 1
        pos.batch += 1
        pos.step += 1
        if self.bar is not None:
            self.bar.update(1)
        every = self.checkpoint_every
        if every and pos.step % every == 0 and pos.batch < self.steps_per_epoch:
            pos.seconds = time.perf_counter() - epoch_start
            self.save()

    def _half_precision(self, pred) -> str | None:
        """``"float16"`` when the model's weights or predictions are float16, else None."""
        dtypes = {p.dtype for p in self.net.parameters()}
        dtypes |= {t.dtype for t in _tensors(pred)}
        return "float16" if torch.float16 in dtypes else None

    def _refuse_non_finite(self, inputs, targets, pred, total: Tensor) -> None:
        """NaN/Inf in the batch (InputError) or the loss (NonFiniteError) stop the run before
        the step spreads it into weights and gates. One synchronisation per step (one small
        all-reduce under several processes, so every rank stops together)."""
        flags = torch.stack([all_finite(inputs), all_finite(targets),
                             torch.isfinite(total.detach()).all()]).to(torch.int64)
        if self.ctx.distributed:  # sum of finite ranks; every rank must agree to go on
            flags = distributed.all_reduce_sum(flags, self.device)
        ok = [int(f) == self.ctx.world_size for f in flags.tolist()]
        if all(ok):
            return
        where = f"batch {self.pos.batch} in epoch {self.pos.epoch}"
        if self.ctx.distributed:
            where += " (on at least one rank)"
        for part, good in zip(("inputs", "targets"), ok):
            if not good:
                raise InputError(
                    f"the {part} of {where} hold NaN/Inf. Clean or drop those rows before "
                    f"training (find them with ~torch.isfinite({part[0]}).all(dim=1) or "
                    "torch.nan_to_num), or impute missing values."
                )
        value = float(total.detach())
        half = self._half_precision(pred)
        if half:  # lower lr or clipping cannot help a value past the dtype's range
            raise NonFiniteError(
                f"the loss is {value} at {where} (step {self.pos.step}) and the model computes "
                f"in {half} (largest finite value {torch.finfo(getattr(torch, half)).max:g}): "
                "an activation, a logit or a squared error overflowed. Train in float32 or "
                "bfloat16 (model.float() / model.bfloat16()), or under "
                "torch.autocast(device_type, dtype=torch.float16) with a "
                "torch.amp.GradScaler, which keeps the weights in float32."
            )
        if self.updates == 0 and self.pos.step == 0:
            predicted = bool(all_finite(pred))
            raise NonFiniteError(
                f"the loss is {value} at {where}, before any update by this training run, on "
                "finite inputs and targets, so the learning rate and gradient clipping cannot "
                "be the cause. "
                + ("loss_fn returns NaN/Inf on finite predictions: check it (e.g. a log of a "
                   "non-positive value, a division by zero)." if predicted else
                   "The model's predictions are already NaN/Inf: check its weights and forward "
                   "(exp/log/division) or standardise the inputs.")
            )
        clip = ("pass grad_clip=1.0" if self.grad_clip is None
                else f"clip gradients harder than grad_clip={self.grad_clip}")
        lrs = sorted({float(g["lr"]) for g in self.optimizer.param_groups})
        raise NonFiniteError(
            f"the loss became {value} at {where} (step {self.pos.step}) on finite inputs and "
            f"targets: training diverged. Try, in this order: lower lr (now "
            f"{', '.join(f'{lr:g}' for lr in lrs)}), {clip}, and standardise inputs and "
            "targets (large targets overflow a squared error)."
        )

    # -- the end of an epoch --
    def end_epoch(self, epoch: int, epoch_start: float) -> None:
        """Record the epoch's time and mean loss over every process (refusing a non-finite
        one) and, for a SparseModel, its penalty, kept fractions and gates."""
        sums = distributed.all_reduce_sum(self.pos.sums(), self.device)
        n = max(float(sums[2]), 1.0)
        history = self.history
        history.epoch_seconds.append(time.perf_counter() - epoch_start)
        history.loss.append(float(sums[0]) / n)
        if not math.isfinite(history.loss[-1]):
            raise InputError(
                f"training loss became {history.loss[-1]} in epoch {epoch}: lower lr, check "
                "the targets for NaN/Inf, or standardise inputs and targets."
            )
        if self.sparse:
            if epoch == self.epochs - 1:
                self.model.set_progress(self.span(1.0))
            record_sparse_epoch(self.model, history, sums[1] / n, self.record_gates)

    def validate(self, val_data, metrics: Metrics, data, batch_size: int) -> None:
        """Score ``val_data`` with the gates evaluation will use (BatchNorm recalibrated)."""
        model = self.model
        if self.sparse and not model.gates.frozen:  # evaluate the gates eval will use
            recalibrate_batchnorm(model, data, batch_size=batch_size, device=self.device)
        self.history.val.append(evaluate(model, val_data, metrics, self.device))
        model.train()

    def next_epoch(self, epoch: int, stop: bool) -> None:
        """Move to the start of the next epoch (finished after the last or on ``stop``) and
        checkpoint there."""
        self.pos = Position(epoch=epoch + 1, step=self.pos.step,
                            finished=stop or epoch + 1 >= self.epochs)
        self.save()

    def finish(self, data, batch_size: int) -> None:
        """A SparseModel ends at the end of its schedule, its BatchNorm statistics taken with
        the gates evaluation will use."""
        if not self.sparse:
            return
        self.model.set_progress(self.span(1.0))
        if not self.model.gates.frozen:
            recalibrate_batchnorm(self.model, data, batch_size=batch_size, device=self.device)


def _tensors(value) -> list[Tensor]:
    """The tensors in a (nested) prediction: a tensor, tuple/list or dict of them."""
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []
