"""Pieces several workloads share: packaging generated tensors into train-scaled splits, the data
files the neuraloperator wheel ships, small model builders and regression metric sets.

Each helper performs the very operations, in the same order, that the workloads used to write
out inline, so the generated data and freshly seeded models stay bit-identical.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from .. import metrics as M
from .base import GraphSplit, TensorSplit, WorkloadData, WorkloadUnavailableError, standardize

NEURALOP_INSTALL_HINT = "pip install neuraloperator==0.3.0"


# ---- data --------------------------------------------------------------------------------------
def standardized_splits(
    x: Tensor, y: Tensor, train: Tensor, val: Tensor, dim: int = -1, target: str = "standardize"
) -> tuple[TensorSplit, TensorSplit, dict]:
    """Train and val splits of one model input ``x`` and target ``y``, scaled with train
    statistics only, and the scalers as ``info`` entries.

    ``x`` (and a standardised ``y``) are standardised along the feature ``dim`` of the batched
    tensor. ``target``: ``"standardize"``; ``"scale"`` (one global scale and no shift, so relative
    errors on the scaled field are the physical ones); ``"none"`` (labels: left as they are, no
    ``y_*`` entries). A scaler of a single-column target is stored as a float, else as a list.
    """
    x_tr, x_va, x_mean, x_std = standardize(x[train], x[val], dim=dim)
    scalers = {"x_mean": x_mean.flatten().tolist(), "x_std": x_std.flatten().tolist()}
    y_tr, y_va = y[train], y[val]
    if target == "standardize":
        y_tr, y_va, y_mean, y_std = standardize(y_tr, y_va, dim=dim)
        scalers.update(y_mean=_scaler_value(y_mean), y_std=_scaler_value(y_std))
    elif target == "scale":
        y_scale = float(y_tr.std())
        y_tr, y_va = y_tr / y_scale, y_va / y_scale
        scalers.update(y_mean=0.0, y_std=y_scale)
    elif target != "none":
        raise ValueError(f"target must be 'standardize', 'scale' or 'none', got {target!r}")
    return TensorSplit([x_tr], y_tr), TensorSplit([x_va], y_va), scalers


def _scaler_value(t: Tensor) -> float | list[float]:
    return float(t) if t.numel() == 1 else t.flatten().tolist()


def node_rows(starts: Sequence[int], graphs: Sequence[int]) -> Tensor:
    """Rows of a stacked node table that belong to ``graphs`` (graph ``g`` owns the rows
    ``starts[g]:starts[g + 1]``)."""
    return torch.cat([torch.arange(starts[g], starts[g + 1]) for g in graphs])


def standardize_rows(x: Tensor, rows: Tensor, min_std: float) -> tuple[Tensor, Tensor, Tensor]:
    """``x`` scaled column-wise with the mean and std of ``x[rows]`` (the train nodes); a column
    whose train std is at most ``min_std`` (constant in train) keeps scale 1.
    Returns the scaled table, the mean and the std."""
    mean = x[rows].mean(0)
    std = x[rows].std(0)
    std = torch.where(std > min_std, std, torch.ones_like(std))
    return (x - mean) / std, mean, std


def graph_split(
    x: Tensor,
    y: Tensor,
    starts: Sequence[int],
    edges: Sequence[Tensor],
    graphs: Sequence[int],
    node_level: bool = False,
) -> GraphSplit:
    """The graphs ``graphs`` cut out of a stacked node table ``x`` (graph ``g``: rows
    ``starts[g]:starts[g + 1]``, edges ``edges[g]``) with their targets: ``y[g]`` per graph or,
    ``node_level``, the graph's rows of ``y``."""
    out = []
    for g in graphs:
        nodes = slice(starts[g], starts[g + 1])
        target = y[nodes] if node_level else y[g : g + 1]
        out.append({"x": x[nodes].clone(), "edge_index": edges[g], "y": target.clone()})
    return GraphSplit(out, node_level)


def bond_edges(mol) -> Tensor:
    """``edge_index`` (2 x edges, both directions) of the bonds of an RDKit molecule."""
    pairs = [(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()]
    if not pairs:
        return torch.zeros(2, 0, dtype=torch.long)
    e = torch.tensor(pairs, dtype=torch.long).t()
    return torch.cat([e, e.flip(0)], dim=1)


def neuralop_file(name: str, what: str) -> Path:
    """Where the neuraloperator wheel put the data file ``name`` (a path inside the wheel, e.g.
    ``neuralop/datasets/data/darcy_train_16.pt``), found without importing ``neuralop``.

    Raises :class:`WorkloadUnavailableError` whose message starts with ``what`` (who needs it).
    """
    candidates: list[Path] = []
    try:
        dist = importlib.metadata.distribution("neuraloperator")
        candidates.append(Path(str(dist.locate_file(name))))
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        spec = importlib.util.find_spec("neuralop")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            candidates.append(Path(root).parent / name)
    for path in candidates:
        if path.is_file():
            return path
    raise WorkloadUnavailableError(
        f"{what} shipped in the neuraloperator wheel ({name}), which was not found; install it "
        f"with: {NEURALOP_INSTALL_HINT}"
    )


# ---- models ------------------------------------------------------------------------------------
def mlp(
    n_in: int, n_out: int, hidden: Sequence[int], activation: Callable[[], nn.Module] = nn.SiLU
) -> nn.Sequential:
    """A flat ``Sequential`` of Linear layers ``n_in -> *hidden -> n_out`` with ``activation``
    between them (flat, so every Linear is a gate site for LUMOS)."""
    widths = [n_in, *hidden, n_out]
    layers: list[nn.Module] = []
    for k in range(len(widths) - 1):
        if k:
            layers.append(activation())
        layers.append(nn.Linear(widths[k], widths[k + 1]))
    return nn.Sequential(*layers)


def table_mlp(data: WorkloadData) -> nn.Sequential:
    """The tabular workloads' model: three SiLU hidden layers of 256 from every feature column to
    every target column."""
    return mlp(len(data.feature_names), data.train.target.shape[1], [256, 256, 256])


def encoder_layers(d_model: int, n_heads: int, d_ff: int, n_layers: int) -> nn.ModuleList:
    """``n_layers`` pre-norm Transformer encoder layers (GELU, no dropout, batch first)."""
    return nn.ModuleList(
        nn.TransformerEncoderLayer(
            d_model,
            n_heads,
            d_ff,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        for _ in range(n_layers)
    )


# ---- metrics -----------------------------------------------------------------------------------
REGRESSION_METRICS: dict[str, Callable[[Tensor, Tensor], float]] = {
    "r2": M.r2,
    "mae": M.mae,
    "rmse": M.rmse,
    "rel_l2": M.rel_l2,
}


def regression_metrics(
    pred: Tensor,
    target: Tensor,
    names: Sequence[str] = ("r2", "mae", "rmse"),
    primary: str | None = None,
) -> dict[str, float]:
    """The metrics ``names`` (keys of :data:`REGRESSION_METRICS`) in that order; with
    ``primary``, that metric's value also comes first under the key ``"primary"``."""
    out = {name: REGRESSION_METRICS[name](pred, target) for name in names}
    return {"primary": out[primary], **out} if primary else out
