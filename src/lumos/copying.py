"""Deep copies of the user's models that survive attributes made by hooks."""

from __future__ import annotations

import copy
from typing import TypeVar

from torch import Tensor, nn

M = TypeVar("M", bound=nn.Module)


def copy_model(model: M) -> M:
    """``copy.deepcopy(model)``, also after a forward with autograd through hook-made weights.

    The hook-based ``torch.nn.utils.weight_norm`` and ``spectral_norm`` set ``weight`` from
    other parameters in a forward pre-hook; after a forward with autograd that attribute has a
    ``grad_fn``, and torch refuses to deep-copy a tensor that is not a graph leaf. In the
    copy, such plain attributes are their detached values (the hook recomputes them on the
    next call, so the copy computes what the model does); the model itself is not touched
    (an activation it keeps for an auxiliary loss keeps its graph).

    Args:
        model: any module.

    Returns:
        An independent copy of ``model``.

    Example:
        >>> import torch
        >>> layer = torch.nn.utils.weight_norm(torch.nn.Linear(3, 2))
        >>> _ = layer(torch.randn(4, 3)).sum().backward()
        >>> twin = copy_model(layer)
        >>> torch.equal(twin(torch.ones(1, 3)), layer(torch.ones(1, 3)))
        True
    """
    memo: dict[int, object] = {}
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, Tensor) and not value.is_leaf:
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(model, memo)
