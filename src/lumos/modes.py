"""Run a module in a given train/eval mode and put its mode back afterwards.

Measuring, shape propagation, prediction and BatchNorm recalibration all need a module in a
mode other than the one the user left it in; they must hand it back as it was, even when the
work inside raises. One helper, so that no caller forgets the ``finally``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def mode(module: nn.Module, training: bool) -> Iterator[nn.Module]:
    """Put ``module`` (and its children) in train (True) or eval (False) mode for a block.

    Args:
        module: any ``nn.Module``.
        training: the mode inside the block.

    Returns:
        A context manager yielding ``module``; on exit every submodule's own ``training``
        flag is restored (a model whose parts were in different modes gets them back).

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Dropout(0.5)).train()
        >>> with mode(net, training=False):
        ...     net.training
        False
        >>> net.training
        True
    """
    before = [(m, m.training) for m in module.modules()]
    module.train(training)
    try:
        yield module
    finally:
        for m, flag in before:
            m.training = flag


def evaluating(module: nn.Module):
    """``mode(module, training=False)``: the common case."""
    return mode(module, training=False)
