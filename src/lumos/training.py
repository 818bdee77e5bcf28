"""A plain training loop that works for dense models and SparseModels alike.

It is what the demo, the benchmarks and the CLI use, and what a user can copy: the only LUMOS
specifics are ``parameter_groups`` (gates get their own learning rate), ``penalty()`` added to
the loss, and ``set_progress`` so the budget schedule knows where training is.

The same loop runs under ``torchrun`` (the model is wrapped in ``DistributedDataParallel``,
batches are sharded as a ``DistributedSampler`` shards them) and resumes exactly from a
checkpoint: a checkpoint holds the model, gates, optimiser, budget controller, RNG states, the
generator states that decide the epoch's batch order and the position inside the epoch.
"""

from __future__ import annotations

import itertools
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import (
    DataLoader,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
)

from . import distributed
from .checkpoint import CheckpointManager, load_file, rng_state, set_rng_state, state_bytes
from .errors import CheckpointError, ConfigurationError, InputError
from .sparse_model import SparseModel

Metrics = Callable[[Tensor, Tensor], dict[str, float]]


@dataclass
class History:
    """Per-epoch record of a training run (plain lists, JSON-friendly via ``to_dict``)."""

    loss: list[float] = field(default_factory=list)
    penalty: list[float] = field(default_factory=list)
    kept_fraction: list[float] = field(default_factory=list)  # expected, from gate probabilities
    realized_fraction: list[float] = field(default_factory=list)  # what compaction would keep
    target: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    val: list[dict[str, float]] = field(default_factory=list)
    gate_probabilities: list[list[float]] = field(default_factory=list)  # if record_gates

    def to_dict(self) -> dict:
        return asdict(self)


def as_loader(data, batch_size: int = 128, shuffle: bool = True, seed: int = 0) -> DataLoader:
    """A DataLoader from a DataLoader (returned as is) or an ``(inputs, targets)`` tensor pair."""
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(
        isinstance(t, Tensor) for t in data
    ):
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise InputError(
                f"inputs have {x.shape[0]} rows but targets have {y.shape[0]}; they must match."
            )
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(
            TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle, generator=generator
        )
    raise ConfigurationError(
        "data must be a DataLoader yielding (inputs, targets) or a tuple (X, y) of tensors."
    )


def _pair(batch) -> tuple:
    """A batch as ``(inputs, targets)``, or an InputError saying what the loader gave."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    got = (f"a {type(batch).__name__} of {len(batch)}" if isinstance(batch, (tuple, list))
           else f"a {type(batch).__name__}")
    raise InputError(
        f"each batch must be a pair (inputs, targets), got {got}. Wrap the loader so it yields "
        "pairs (inputs may be a tuple of the model's positional arguments), or write your own "
        "loop with sm.penalty() added to the loss."
    )


#: elementwise losses that silently broadcast predictions against targets of another shape
_ELEMENTWISE_LOSSES = (F.mse_loss, F.l1_loss, F.smooth_l1_loss, F.huber_loss)


def _check_shapes(loss_fn, pred, targets) -> None:
    if loss_fn in _ELEMENTWISE_LOSSES and isinstance(pred, Tensor) and \
            isinstance(targets, Tensor) and pred.shape != targets.shape:
        raise InputError(
            f"the model predicts shape {tuple(pred.shape)} but the targets have shape "
            f"{tuple(targets.shape)}; {loss_fn.__name__} would broadcast them into a wrong "
            "loss. Give targets the prediction's shape (e.g. y.view(-1, 1) for one output)."
        )


def _call(model: nn.Module, inputs):
    return model(*inputs) if isinstance(inputs, (tuple, list)) else model(inputs)


def _to(inputs, device):
    if device is None:
        return inputs
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(t.to(device) if isinstance(t, Tensor) else t for t in inputs)
    return inputs.to(device)


@torch.no_grad()
def predict(model: nn.Module, data, batch_size: int = 512, device=None) -> tuple[Tensor, Tensor]:
    """Concatenated predictions and targets over a loader (eval mode, no autograd)."""
    was_training = model.training
    model.eval()
    preds, targets = [], []
    try:
        for batch in as_loader(data, batch_size, shuffle=False):
            inputs, target = _pair(batch)
            preds.append(_call(model, _to(inputs, device)).cpu())
            targets.append(target)
    finally:
        model.train(was_training)
    return torch.cat(preds), torch.cat(targets)


def evaluate(model: nn.Module, data, metrics: Metrics, device=None) -> dict[str, float]:
    """``metrics(predictions, targets)`` over a whole validation set."""
    pred, target = predict(model, data, device=device)
    return {k: float(v) for k, v in metrics(pred, target).items()}


def _progress(total: int, enabled: bool | None, desc: str):
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=total, desc=desc, leave=False)


class EpochBatches:
    """The batches one process sees in each epoch, drawn exactly as PyTorch's DataLoader would.

    The order of an epoch comes from the same draws a ``DataLoader`` with a ``RandomSampler``
    makes (its generator, or the global RNG when it has none), so one process sees the batches
    a plain loop over the loader would. Two things are added. Resuming: the generator states at
    the start of the epoch travel in the checkpoint (:meth:`order_state`), so a run resumed
    mid-epoch replays that epoch's order and skips the batches already done. Several
    processes: every rank draws the same permutation and takes every ``world_size``-th index
    (``DistributedSampler``'s layout, padded the same way), so ``N`` processes with batch
    ``B`` see together what one process with batch ``N * B`` sees.

    A user's DataLoader keeps its dataset, batch size, collate function and workers. A loader
    with a custom sampler (or an iterable dataset) is used as it is: resuming then skips the
    batches already done, which is exact only if that sampler repeats its order.
    """

    def __init__(
        self,
        data,
        batch_size: int,
        seed: int,
        ctx: distributed.ProcessContext,
        shuffle: bool = True,
    ) -> None:
        self.ctx = ctx
        self.custom: DataLoader | None = None
        self.options: dict = {}
        self._pending: tuple[int, list[int]] | None = None  # (epoch, order) replayed on resume
        self._epoch_state: dict | None = None
        loader = data if isinstance(data, DataLoader) else as_loader(data, batch_size, shuffle,
                                                                     seed)
        sampler = loader.sampler
        standard = not isinstance(loader.dataset, IterableDataset) and loader.batch_size
        plain_random = isinstance(sampler, RandomSampler) and not sampler.replacement and (
            sampler._num_samples is None
        )
        if not (standard and (plain_random or isinstance(sampler, SequentialSampler))):
            if ctx.distributed:
                raise ConfigurationError(
                    "with several processes LUMOS shards the data itself: pass a DataLoader "
                    "over a map-style dataset with shuffle=True/False (no custom sampler), or "
                    "the (inputs, targets) tensors."
                )
            self.custom = loader
            return
        self.dataset = loader.dataset
        self.batch_size = int(loader.batch_size)
        self.drop_last = bool(loader.drop_last)
        self.loader_generator = loader.generator
        self.sampler_generator = sampler.generator if plain_random else None
        self.shuffle = plain_random
        self.options = {
            "collate_fn": loader.collate_fn,
            "num_workers": loader.num_workers,
            "pin_memory": loader.pin_memory,
            "worker_init_fn": loader.worker_init_fn,
            "timeout": loader.timeout,
        }
        if loader.num_workers > 0:
            self.options["prefetch_factor"] = loader.prefetch_factor
            self.options["multiprocessing_context"] = loader.multiprocessing_context

    def __len__(self) -> int:
        if self.custom is not None:
            return len(self.custom)
        per_rank = math.ceil(len(self.dataset) / self.ctx.world_size)
        if self.drop_last:
            return per_rank // self.batch_size
        return math.ceil(per_rank / self.batch_size)

    # -- the RNG states that decide an epoch's order --
    def _snapshot(self) -> dict:
        state = {"torch": torch.get_rng_state()}
        for name in ("loader_generator", "sampler_generator"):
            gen = getattr(self, name, None)
            if gen is not None:
                state[name] = gen.get_state()
        return state

    def order_state(self, batch: int) -> dict | None:
        """What a checkpoint needs to replay the order: the states at the start of the epoch
        in progress (``batch > 0``) or of the next one (``batch == 0``)."""
        if self.custom is not None:
            return None
        return self._epoch_state if batch > 0 and self._epoch_state else self._snapshot()

    def restore(self, state: dict | None, epoch: int, batch: int) -> None:
        """Put the generators back as they were and, mid-epoch, replay that epoch's order.

        Call before restoring the global RNG of the checkpoint (this may draw from it).
        """
        if self.custom is not None or state is None:
            return
        torch.set_rng_state(state["torch"])
        for name in ("loader_generator", "sampler_generator"):
            gen = getattr(self, name, None)
            if gen is not None and name in state:
                gen.set_state(state[name])
        if batch > 0:
            self._pending = (epoch, self._draw_order())

    def _draw_order(self) -> list[int]:
        """The draws of ``iter(DataLoader)``: a base seed, then the sampler's permutation."""
        self._epoch_state = self._snapshot()
        torch.empty((), dtype=torch.int64).random_(generator=self.loader_generator)
        n = len(self.dataset)
        if not self.shuffle:
            return list(range(n))
        generator = self.sampler_generator
        if generator is None:
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
            generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(n, generator=generator).tolist()
        # RandomSampler draws one more permutation when it is run to the end (its trailing
        # `num_samples % n` slice): draw it too, so the generator moves on as it would
        torch.randperm(n, generator=generator)
        return order

    def epoch(self, epoch: int, start: int = 0) -> Iterator:
        """The batches of ``epoch`` from batch number ``start`` on."""
        if self.custom is not None:
            return itertools.islice(iter(self.custom), start, None)
        if self._pending is not None and self._pending[0] == epoch:
            order = self._pending[1]
        else:
            order = self._draw_order()
        self._pending = None
        world, rank = self.ctx.world_size, self.ctx.rank
        if world > 1:  # DistributedSampler's layout: pad by wrapping, then every world-th
            total = math.ceil(len(order) / world) * world
            order = (order * math.ceil(total / len(order)))[:total][rank:total:world]
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=order[start * self.batch_size :],
            drop_last=self.drop_last,
            # its own generator: building the iterator must not draw from the global RNG
            generator=torch.Generator(),
            **self.options,
        )
        return iter(loader)


@dataclass
class _Position:
    """Where the loop is, and the running sums of the epoch in progress (checkpointed)."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    finished: bool = False
    loss_sum: Tensor = field(default_factory=lambda: torch.zeros(()))
    penalty_sum: Tensor = field(default_factory=lambda: torch.zeros(()))
    batches: int = 0
    seconds: float = 0.0

    def to_state(self, device=None) -> dict:
        """Plain data; the running sums of every rank (each rank resumes its own)."""
        state = asdict(self)
        sums = torch.stack([self.loss_sum, self.penalty_sum, torch.tensor(float(self.batches))])
        state["rank_sums"] = distributed.all_gather_rows(sums, device)
        return state

    @classmethod
    def from_state(cls, state: dict, rank: int) -> _Position:
        state = dict(state)
        loss, penalty, batches = state.pop("rank_sums")[rank]
        state.update(loss_sum=loss.clone(), penalty_sum=penalty.clone(), batches=int(batches))
        return cls(**state)


def _history_state(history: History) -> dict:
    state = history.to_dict()
    # one tensor instead of a list of lists: smaller and faster to save
    state["gate_probabilities"] = torch.tensor(history.gate_probabilities, dtype=torch.float32)
    return state


def _history_from(state: dict) -> History:
    state = dict(state)
    state["gate_probabilities"] = state["gate_probabilities"].tolist()
    return History(**{f.name: state[f.name] for f in fields(History) if f.name in state})


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
) -> History:
    """Train ``model`` (dense or :class:`SparseModel`) with Adam for ``epochs`` epochs.

    ``val_data`` with ``metrics`` are evaluated after every epoch (``History.val``).
    ``progress_range``: the part of a longer schedule this call covers (a SparseModel's
    progress runs from its first to its second number), for loops that call ``train`` in
    pieces.
    ``on_epoch(epoch, history)`` may return True to stop early. Progress bars show on a TTY.

    Checkpoints: with ``checkpoint_dir`` a checkpoint is written after every epoch and, with
    ``checkpoint_every=k``, every ``k`` steps inside an epoch (newest ``keep_checkpoints``
    kept). ``resume=True`` continues from the latest checkpoint there (or starts afresh if
    there is none yet); ``resume=PATH`` from that file. A resumed run ends exactly where the
    uninterrupted one would have (same batches, gate noise, RNG draws and optimiser state).

    Several processes: launched by ``torchrun`` with an initialised process group (see
    :func:`lumos.distributed.init_from_env`) the model is wrapped in
    ``DistributedDataParallel`` and every process trains on its shard of each batch; only
    rank 0 writes checkpoints and shows progress.
    """
    if not (isinstance(epochs, int) and epochs >= 1):
        raise ConfigurationError(f"epochs must be a positive integer, got {epochs!r}.")
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ConfigurationError(f"lr must be a positive number, got {lr!r}.")
    if val_data is not None and metrics is None:
        raise ConfigurationError("val_data needs metrics=fn(pred, target) -> dict to score it.")
    lo, hi = progress_range
    if not 0.0 <= lo <= hi <= 1.0:
        raise ConfigurationError(
            f"progress_range must satisfy 0 <= start <= end <= 1, got {progress_range!r}."
        )

    def span(fraction: float) -> float:
        return lo + (hi - lo) * fraction

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
    ctx = distributed.current()
    sparse = isinstance(model, SparseModel)
    if device is not None:
        device = torch.device(device)
        model.to(device)
    if optimizer is None:
        optimizer = make_optimizer(model, lr, gate_lr, weight_decay)
    batches = EpochBatches(data, batch_size, seed, ctx)
    steps_per_epoch = len(batches)
    if steps_per_epoch == 0:
        raise ConfigurationError(
            "the training data give no batch (empty data, or drop_last with fewer samples "
            "than one batch per process)."
        )
    total_steps = epochs * steps_per_epoch
    run_shape = {"epochs": epochs, "steps_per_epoch": steps_per_epoch,
                 "world_size": ctx.world_size, "seed": int(seed)}
    manager = None
    if checkpoint_dir is not None:
        manager = CheckpointManager(checkpoint_dir, keep_checkpoints)
        if ctx.is_main:
            manager.prepare(state_bytes(model))
    history = History()
    pos = _Position()
    torch.manual_seed(seed)
    if resume:
        state = manager.load() if resume is True else load_file(resume)
        if state is not None:
            history, pos = _restore(state, model, optimizer, run_shape, resume, ctx.rank,
                                    batches)

    def save() -> None:
        if manager is None:
            return
        position = pos.to_state(device)  # a collective: every rank takes part
        if not ctx.is_main:
            return
        manager.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "position": position,
                "history": _history_state(history),
                "rng": rng_state(),
                "order": batches.order_state(pos.batch),
                "run": run_shape,
            },
            pos.step,
        )

    net = _wrap(model, ctx, device)
    bar = _progress(total_steps, progress if ctx.is_main else False, type(model).__name__)
    if bar is not None:
        bar.update(pos.step)
    model.train()
    try:
        while not pos.finished and pos.epoch < epochs:
            epoch = pos.epoch
            start = time.perf_counter() - pos.seconds
            for batch in batches.epoch(epoch, pos.batch):
                inputs, targets = _pair(batch)
                inputs, targets = _to(inputs, device), _to(targets, device)
                if sparse:
                    model.set_progress(span(pos.step / total_steps))
                pred = _call(net, inputs)
                _check_shapes(loss_fn, pred, targets)
                loss = loss_fn(pred, targets)
                total = loss
                if sparse:
                    # every rank adds the same penalty and DDP averages the gradients, so the
                    # penalty counts once per step, as in a single process
                    pen = model.penalty()
                    total = loss + pen
                    pos.penalty_sum += pen.detach().cpu()
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                if grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                optimizer.step()
                pos.loss_sum += loss.detach().cpu()
                pos.batches += 1
                pos.batch += 1
                pos.step += 1
                if bar is not None:
                    bar.update(1)
                if checkpoint_every and pos.step % checkpoint_every == 0 and (
                    pos.batch < steps_per_epoch
                ):
                    pos.seconds = time.perf_counter() - start
                    save()
            sums = distributed.all_reduce_sum(
                torch.stack([pos.loss_sum, pos.penalty_sum, torch.tensor(float(pos.batches))]),
                device,
            )
            n = max(float(sums[2]), 1.0)
            history.epoch_seconds.append(time.perf_counter() - start)
            history.loss.append(float(sums[0]) / n)
            if not math.isfinite(history.loss[-1]):
                raise InputError(
                    f"training loss became {history.loss[-1]} in epoch {epoch}: lower lr, check "
                    "the targets for NaN/Inf, or standardise inputs and targets."
                )
            if sparse:
                if epoch == epochs - 1:
                    model.set_progress(span(1.0))
                _record_sparse(model, history, sums[1] / n, record_gates)
            if val_data is not None:
                if sparse and not model.gates.frozen:  # evaluate the gates eval will use
                    recalibrate_batchnorm(model, data, batch_size=batch_size, device=device)
                history.val.append(evaluate(model, val_data, metrics, device))
                model.train()
            if bar is not None:
                bar.set_postfix(loss=f"{history.loss[-1]:.4g}")
            stop = on_epoch is not None and bool(on_epoch(epoch, history))
            pos = _Position(epoch=epoch + 1, step=pos.step, finished=stop or epoch + 1 >= epochs)
            save()
    finally:
        if bar is not None:
            bar.close()
    if sparse:
        model.set_progress(span(1.0))
        if not model.gates.frozen:  # BatchNorm statistics for the gates eval will use
            recalibrate_batchnorm(model, data, batch_size=batch_size, device=device)
    model.eval()
    return history


#: training batches :func:`recalibrate_batchnorm` runs by default
RECALIBRATION_BATCHES = 16


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, data, batches: int = RECALIBRATION_BATCHES,
                          batch_size: int = 128, device=None) -> bool:
    """Recompute every BatchNorm's running statistics from the first ``batches`` training
    batches (in order, no shuffling), with a SparseModel's gates at their evaluation values.

    Why: gates sampled during training scale the channels that later BatchNorms normalise,
    so their running statistics describe randomly gated activations, while evaluation uses the
    deterministic gates: the eval-mode model sees a shifted input (the variance shift of
    dropout before BatchNorm). On the CosmoFlow-like 3D CNN the validation R^2 of the gated
    model jumped between -12 and 0.5 from one epoch to the next for that reason alone.
    Training is unaffected (in training mode BatchNorm uses batch statistics). Returns False,
    changing nothing, when the model has no BatchNorm or the data cannot be re-read in order
    (an iterable dataset).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats]
    if not norms:
        return False
    loader = data if isinstance(data, DataLoader) else as_loader(data, batch_size, False)
    if isinstance(loader.dataset, IterableDataset) or not loader.batch_size:
        return False
    ordered = DataLoader(loader.dataset, batch_size=loader.batch_size, shuffle=False,
                         collate_fn=loader.collate_fn)
    was_training = model.training
    momenta = [m.momentum for m in norms]
    model.train()
    if isinstance(model, SparseModel):
        model.gates.eval()  # the gates evaluation will use
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a plain average over the batches below
        for k, batch in enumerate(ordered):
            if k == batches:
                break
            _call(model, _to(_pair(batch)[0], device))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    return True


def _wrap(model: nn.Module, ctx: distributed.ProcessContext, device) -> nn.Module:
    """``DistributedDataParallel`` around the model when several processes train it."""
    if not ctx.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    on_gpu = device is not None and torch.device(device).type == "cuda"
    return DistributedDataParallel(model, device_ids=[torch.device(device).index] if on_gpu
                                   else None)


def _restore(state: dict, model: nn.Module, optimizer, run_shape: dict, source, rank: int,
             batches: EpochBatches) -> tuple:
    """Put a checkpoint back into the model, optimiser and RNGs; returns (history, position)."""
    where = "the latest checkpoint" if source is True else str(source)
    saved = state.get("run", {})
    for key in ("steps_per_epoch", "epochs", "world_size", "seed"):
        if saved.get(key) != run_shape[key]:
            raise CheckpointError(
                f"{where} was written by a run with {key}={saved.get(key)}, this run has "
                f"{key}={run_shape[key]}; resume with the same epochs, batch size, seed and "
                "number of processes, or start a new run in another folder."
            )
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, KeyError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:300]
        raise CheckpointError(
            f"{where} does not fit this model or optimiser ({first}); it belongs to another "
            "model or configuration: resume with the same configuration, or start afresh."
        ) from None
    pos = _Position.from_state(state["position"], rank)
    batches.restore(state.get("order"), pos.epoch, pos.batch)  # may draw: before the RNGs
    set_rng_state(state["rng"])
    return _history_from(state["history"]), pos


def latest_checkpoint(checkpoint_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint recorded in ``checkpoint_dir`` (None if there is none)."""
    if not (Path(checkpoint_dir) / "index.json").exists():
        return None
    return CheckpointManager(checkpoint_dir).latest()


def make_optimizer(
    model: nn.Module, lr: float, gate_lr: float | None = None, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """Adam; for a SparseModel with the gates in their own group (see ``parameter_groups``)."""
    if isinstance(model, SparseModel):
        groups = model.parameter_groups(lr, gate_lr, weight_decay)
    else:
        groups = [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    return torch.optim.Adam(groups, lr=lr)


@torch.no_grad()
def _record_sparse(sm: SparseModel, history: History, penalty: Tensor, gates: bool) -> None:
    history.penalty.append(float(penalty))
    history.kept_fraction.append(float(sm.expected_fraction()))
    history.realized_fraction.append(sm.compacted_counts()["params"] / max(sm.dense_params, 1))
    if sm.controller is not None:
        history.target.append(sm.controller.target())
    if gates:
        history.gate_probabilities.append(sm.gates.prob_nonzero().detach().cpu().tolist())
