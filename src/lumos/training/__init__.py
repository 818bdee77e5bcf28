"""A plain training loop that works for dense models and SparseModels alike.

It is what the demo, the benchmarks and the CLI use, and what a user can copy: the only LUMOS
specifics are ``parameter_groups`` (gates get their own learning rate), ``penalty()`` added to
the loss, and ``set_progress`` so the budget schedule knows where training is.

The same loop runs under ``torchrun`` (the model is wrapped in ``DistributedDataParallel``,
batches are sharded as a ``DistributedSampler`` shards them) and resumes exactly from a
checkpoint: a checkpoint holds the model, gates, optimiser, budget controller, RNG states, the
generator states that decide the epoch's batch order and the position inside the epoch.

Modules: ``loop`` (:func:`train`), ``batches`` (loaders, the batch pair check,
:class:`EpochBatches`), ``evaluation`` (:func:`predict`, :func:`evaluate`), ``history``
(:class:`History`), ``state`` (checkpoint and resume), ``batchnorm``
(:func:`recalibrate_batchnorm`), ``optimizer`` (:func:`make_optimizer`).
"""

from .batches import EpochBatches, as_loader
from .batchnorm import RECALIBRATION_BATCHES, recalibrate_batchnorm
from .evaluation import Metrics, evaluate, predict
from .history import History
from .loop import train
from .optimizer import make_optimizer
from .state import latest_checkpoint

__all__ = [
    "RECALIBRATION_BATCHES",
    "EpochBatches",
    "History",
    "Metrics",
    "as_loader",
    "evaluate",
    "latest_checkpoint",
    "make_optimizer",
    "predict",
    "recalibrate_batchnorm",
    "train",
]
