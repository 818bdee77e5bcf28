"""A workload's model, dense or sparsified on its features, trained with its recipe.

The one implementation that ``lumos fit``, the benchmarks and the workload tests share::

    model = build_dense(workload, data, seed=0)                     # seeded initialisation
    sm = build_sparse(workload, data, budget=0.25, seed=0)          # the same, sparsified
    history = train_recipe(sm, workload, data, workload.recipes["smoke"], seed=0)

The features gated and scored are those of the model argument ``data.feature_arg`` names
(:func:`feature_argument` finds it when the model calls it otherwise, as ``nn.Sequential``
calls its single input ``input``).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from .. import SparseModel, sparsify
from ..errors import ConfigurationError
from ..training import History, train
from .base import TrainRecipe, Workload, WorkloadData

#: training samples that ``sparsify`` traces the model with
EXAMPLE_SAMPLES = 8


def example_inputs(data: WorkloadData) -> tuple:
    """The inputs a workload's model is traced with: its first training samples."""
    inputs, _ = data.example_batch("train", EXAMPLE_SAMPLES)
    return tuple(inputs)


def build_dense(workload: Workload, data: WorkloadData, *, seed: int) -> nn.Module:
    """The workload's model, initialised under ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    return workload.build_model(data)


def feature_argument(model: nn.Module, name: str) -> str:
    """The argument of ``model.forward`` that carries the features: ``name`` itself, else the
    only argument a call must give (``nn.Sequential`` calls its single input ``input`` where a
    workload says ``x``).

    Raises:
        ConfigurationError: ``name`` is not an argument and several could be meant; the message
            names them.
    """
    parameters = inspect.signature(model.forward).parameters
    names = list(parameters)
    if name in names:
        return name
    if len(names) == 1:
        return names[0]
    required = [p.name for p in parameters.values() if p.default is inspect.Parameter.empty
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if len(required) == 1:
        return required[0]
    raise ConfigurationError(
        f"the feature argument '{name}' is not an argument of {type(model).__name__}.forward, "
        f"which takes {names}; name the one that carries the features in "
        "WorkloadData.feature_arg."
    )


def feature_options(model: nn.Module, data: WorkloadData) -> dict:
    """``sparsify`` keywords that gate (and name) the features of the data's feature argument
    only: ``{"features": [arg], "feature_names": {arg: data.feature_names}}``."""
    arg = feature_argument(model, data.feature_arg)
    return {"features": [arg], "feature_names": {arg: data.feature_names}}


def sparsify_features(model: nn.Module, data: WorkloadData, *, budget: float | None,
                      **options) -> SparseModel:
    """``sparsify(model)`` traced on the data's example inputs, its feature argument gated;
    ``options`` are further ``sparsify`` keywords (``feature_penalty``, ``warmup``,
    ``gates``, ...)."""
    return sparsify(model, example_inputs(data), budget=budget,
                    **feature_options(model, data), **options)


def build_sparse(workload: Workload, data: WorkloadData, *, budget: float | None, seed: int,
                 **options) -> SparseModel:
    """:func:`build_dense` then :func:`sparsify_features`: the workload's seeded model,
    sparsified on its features with ``budget`` (and further ``sparsify`` ``options``)."""
    return sparsify_features(build_dense(workload, data, seed=seed), data, budget=budget,
                             **options)


def train_recipe(model: nn.Module, workload: Workload, data: WorkloadData,
                 recipe: TrainRecipe, *, seed: int = 0, epochs: int | None = None,
                 train_seed: int | None = None, progress: bool | None = False,
                 **train_options) -> History:
    """Train ``model`` (dense or sparse) on the workload's training split with ``recipe``:
    its batch size (batches shuffled with ``seed``), epochs (unless ``epochs`` is given),
    learning rate (and its schedule) and weight decay, and the workload's loss.

    ``train_seed`` seeds the loop (default ``seed``); ``train_options`` are further keywords
    of :func:`lumos.training.train` (``val_data``, ``device``, ``checkpoint_dir``, ...).
    """
    loader = data.loader("train", recipe.batch_size, shuffle=True, seed=seed)
    return train(
        model, loader, epochs=recipe.epochs if epochs is None else epochs,
        loss_fn=workload.loss, lr=recipe.lr, weight_decay=recipe.weight_decay,
        batch_size=recipe.batch_size, seed=seed if train_seed is None else train_seed,
        progress=progress, lr_schedule=recipe.lr_schedule, **train_options,
    )
