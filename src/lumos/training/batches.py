"""The batches a training run sees: loaders from tensors, the ``(inputs, targets)`` pair check,
moving inputs to a device, and :class:`EpochBatches`, which draws every epoch's order exactly as
a DataLoader would while letting a run resume mid-epoch or shard it over several processes."""

from __future__ import annotations

import hashlib
import itertools
import math
import warnings
from collections.abc import Iterator

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

from .. import distributed
from ..errors import ConfigurationError, InputError, LumosWarning, conversion_hint


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
    parts = data if isinstance(data, (tuple, list)) else (data,)
    raise ConfigurationError(
        "data must be a DataLoader yielding (inputs, targets) or a tuple (X, y) of tensors, "
        f"got {type(data).__name__}" + (f" of {', '.join(type(p).__name__ for p in parts)}"
                                         if isinstance(data, (tuple, list)) else "")
        + "." + conversion_hint(*parts)
    )


def batch_pair(batch) -> tuple:
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


def check_prediction_shape(loss_fn, pred, targets) -> None:
    """Refuse predictions and targets of different shapes for a loss that would broadcast them,
    and predictions that are not one tensor (a dict, a tuple) for such a loss."""
    if loss_fn in _ELEMENTWISE_LOSSES and not isinstance(pred, Tensor):
        what = (f"a dict with keys {sorted(map(str, pred))}" if isinstance(pred, dict)
                else f"a {type(pred).__name__}")
        raise InputError(
            f"the model returns {what}, but the loss {loss_fn.__name__} needs one prediction "
            "tensor. Pass loss_fn=fn(prediction, targets) -> scalar tensor to train() that "
            "picks the outputs to score, e.g. loss_fn=lambda p, y: F.mse_loss(p['out'], y)."
        )
    if loss_fn in _ELEMENTWISE_LOSSES and isinstance(pred, Tensor) and \
            isinstance(targets, Tensor) and pred.shape != targets.shape:
        raise InputError(
            f"the model predicts shape {tuple(pred.shape)} but the targets have shape "
            f"{tuple(targets.shape)}; {loss_fn.__name__} would broadcast them into a wrong "
            "loss. Give targets the prediction's shape (e.g. y.view(-1, 1) for one output)."
        )


def check_loss(loss) -> None:
    """Refuse a ``loss_fn`` result that ``backward()`` cannot start from."""
    if not (isinstance(loss, Tensor) and loss.numel() == 1 and loss.is_floating_point()):
        got = (f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, Tensor)
               else f"a {type(loss).__name__}")
        raise InputError(
            f"loss_fn returned {got}; it must return a single number as a floating-point "
            "tensor (reduce it, e.g. with .mean())."
        )


def _tensors(obj) -> list[Tensor]:
    """The tensors in a batch part (a tensor, or a tuple/list/dict of them)."""
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for part in obj for t in _tensors(part)]
    if isinstance(obj, dict):
        return [t for part in obj.values() for t in _tensors(part)]
    return []


def all_finite(obj) -> Tensor:
    """A 0-dim bool tensor: every floating-point tensor in ``obj`` is free of NaN/Inf (one
    reduction per tensor, read by the caller with one synchronisation)."""
    flags = [torch.isfinite(t).all() for t in _tensors(obj) if t.is_floating_point()
             or t.is_complex()]
    if not flags:
        return torch.tensor(True)
    return torch.stack([f.to(flags[0].device) for f in flags]).all()


def has_batchnorm(model: nn.Module) -> bool:
    """True when a BatchNorm in training mode would refuse a batch of one row."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def is_one_row_batchnorm_error(exc: BaseException) -> bool:
    """True for torch's refusal of a one-row batch in a training-mode BatchNorm."""
    return isinstance(exc, ValueError) and "Expected more than 1 value per channel" in str(exc)


def one_row_batch_error(epoch: int, batch: int) -> InputError:
    return InputError(
        f"batch {batch} of epoch {epoch} holds one row, and BatchNorm cannot normalise a single "
        "row in training. Use a DataLoader with drop_last=True, or a batch size that leaves at "
        "least two rows in the last batch."
    )


def call_model(model: nn.Module, inputs):
    """``model(*inputs)`` for a tuple of positional inputs, ``model(inputs)`` for one tensor."""
    return model(*inputs) if isinstance(inputs, (tuple, list)) else model(inputs)


def to_device(inputs, device):
    """``inputs`` (a tensor or a tuple of them) on ``device``; unchanged when it is None."""
    if device is None:
        return inputs
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(t.to(device) if isinstance(t, Tensor) else t for t in inputs)
    return inputs.to(device)


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
        if self.drop_last:
            return self._per_rank() // self.batch_size
        return math.ceil(self._per_rank() / self.batch_size)

    def _per_rank(self) -> int:
        return math.ceil(len(self.dataset) / self.ctx.world_size)

    def avoid_one_row_batches(self, model: nn.Module) -> None:
        """Drop the last batch of each epoch (with a warning) when it would hold one row and
        the model has a BatchNorm, which refuses a single row in training."""
        if self.custom is not None or self.drop_last or self.batch_size < 2 or \
                self._per_rank() % self.batch_size != 1 or not has_batchnorm(model):
            return
        self.drop_last = True
        warnings.warn(
            f"{len(self.dataset)} samples in batches of {self.batch_size}"
            + (f" on {self.ctx.world_size} processes" if self.ctx.distributed else "")
            + " leave one row in the last batch of each epoch, which BatchNorm cannot normalise "
            "in training: that batch is skipped (a different sample each epoch when shuffled). "
            "Pass a DataLoader with drop_last=True, or a batch size that leaves at least two "
            "rows, to silence this.",
            LumosWarning,
            stacklevel=3,
        )

    def fingerprint(self) -> list[int]:
        """``[samples, checksum]`` of the data set: its length and a hash of its first and last
        samples (two fetches), so processes can check that they hold the same data."""
        if self.custom is not None:
            return [-1, 0]
        n = len(self.dataset)
        digest = hashlib.blake2b(digest_size=7)
        for i in sorted({0, n - 1}) if n else ():
            for t in _tensors(self.dataset[i]):
                digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return [n, int.from_bytes(digest.digest(), "little")]

    def check_same_data_on_every_rank(self, device=None) -> None:
        """Under several processes, refuse (on every rank) data sets of different lengths, which
        would hang the first collective of a shorter rank, and warn when the ranks hold
        different samples: LUMOS shards one data set itself, so every rank must hold all of it.

        One small all-gather, before any other collective of the run.
        """
        if not self.ctx.distributed:
            return
        rows = distributed.all_gather_rows(torch.tensor(self.fingerprint(), dtype=torch.int64),
                                           device)
        lengths, sums = rows[:, 0].tolist(), rows[:, 1].tolist()
        if len(set(lengths)) > 1:
            raise InputError(
                f"the processes hold data sets of different lengths ({', '.join(map(str, lengths))}"
                " samples by rank); training would hang. LUMOS shards the data itself: pass the "
                "same whole data set on every rank, not a per-rank slice."
            )
        if len(set(sums)) > 1 and self.ctx.is_main:
            warnings.warn(
                "the processes hold different data (their first and last samples differ). LUMOS "
                "shards the data itself, so every rank should be given the same whole data set "
                "in the same order; per-rank slices train on a fraction of each. (Ignore this if "
                "the dataset draws random augmentations.)",
                LumosWarning,
                stacklevel=3,
            )

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
