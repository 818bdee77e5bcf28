"""Task metrics used by workloads, the demo, the tolerance mode and the benchmarks.

All take ``(pred, target)`` tensors of the same shape (batch first) and return a Python float.

Example:
    >>> import torch
    >>> from lumos import metrics
    >>> target = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    >>> metrics.r2(target, target), metrics.mae(target + 0.5, target)
    (1.0, 0.5)
    >>> fn, higher_is_better = metrics.METRICS["rmse"]
    >>> fn(target + 1.0, target), higher_is_better
    (1.0, False)
"""

from __future__ import annotations

import torch
from torch import Tensor


def _pair(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    pred = pred.detach().double().reshape(pred.shape[0], -1)
    target = target.detach().double().reshape(target.shape[0], -1)
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    return pred, target


def r2(pred: Tensor, target: Tensor) -> float:
    """Coefficient of determination, variance-weighted over outputs (sklearn's convention).

    Example:
        >>> import torch
        >>> target = torch.tensor([1.0, 2.0, 3.0, 4.0])
        >>> r2(target, target)
        1.0
        >>> r2(torch.full((4,), 2.5), target)  # predicting the mean
        0.0
        >>> round(r2(target + 1.0, target), 6)
        0.2
    """
    p, t = _pair(pred, target)
    ss_res = ((p - t) ** 2).sum()
    ss_tot = ((t - t.mean(dim=0)) ** 2).sum()
    return float(1.0 - ss_res / ss_tot.clamp_min(1e-300))


def mae(pred: Tensor, target: Tensor) -> float:
    """Mean absolute error.

    Example:
        >>> import torch
        >>> mae(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0]))
        1.5
    """
    p, t = _pair(pred, target)
    return float((p - t).abs().mean())


def rmse(pred: Tensor, target: Tensor) -> float:
    """Root mean squared error.

    Example:
        >>> import torch
        >>> rmse(torch.zeros(4), torch.tensor([2.0, -2.0, 2.0, -2.0]))
        2.0
    """
    p, t = _pair(pred, target)
    return float(((p - t) ** 2).mean().sqrt())


def rel_l2(pred: Tensor, target: Tensor) -> float:
    """Mean over samples of ||pred - target|| / ||target|| (the neural-operator convention).

    Example:
        >>> import torch
        >>> target = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
        >>> round(rel_l2(1.1 * target, target), 6)
        0.1
    """
    p, t = _pair(pred, target)
    return float(((p - t).norm(dim=1) / t.norm(dim=1).clamp_min(1e-300)).mean())


def accuracy(logits: Tensor, target: Tensor) -> float:
    """Binary accuracy of logits (threshold 0) against 0/1 targets.

    Example:
        >>> import torch
        >>> accuracy(torch.tensor([2.0, -1.0, 0.5, -3.0]), torch.tensor([1.0, 0.0, 0.0, 0.0]))
        0.75
    """
    p, t = _pair(logits, target)
    return float(((p > 0).double() == (t > 0.5).double()).double().mean())


def roc_auc(scores: Tensor, target: Tensor) -> float:
    """Area under the ROC curve (Mann-Whitney U with tie correction); 0.5 if one class only.

    Example:
        >>> import torch
        >>> target = torch.tensor([0.0, 0.0, 1.0, 1.0])
        >>> roc_auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), target)
        0.75
        >>> roc_auc(torch.tensor([0.5, 0.5, 0.5, 0.5]), target)  # ties: chance
        0.5
    """
    s, t = _pair(scores, target)
    s, t = s.flatten(), t.flatten() > 0.5
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    if n_pos == 0 or n_neg == 0:
        return 0.5
    ranks = _average_ranks(s)
    return float((ranks[t].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(x: Tensor) -> Tensor:
    order = torch.argsort(x)
    sorted_x = x[order]
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(1, len(x) + 1, dtype=x.dtype)
    # ties share the mean of their ranks
    _, inverse, counts = torch.unique_consecutive(sorted_x, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(counts), dtype=x.dtype).index_add_(
        0, inverse, torch.arange(1, len(x) + 1, dtype=x.dtype)
    )
    mean_rank = sums / counts.to(x.dtype)
    ranks[order] = mean_rank[inverse]
    return ranks


METRICS = {
    "r2": (r2, True),
    "mae": (mae, False),
    "rmse": (rmse, False),
    "rel_l2": (rel_l2, False),
    "accuracy": (accuracy, True),
    "auc": (roc_auc, True),
}
