"""Checks that every workload's tests share: determinism and the cache, the ground-truth
bookkeeping and train-statistics scaling, smoke training, fx tracing and lazy imports.

The workload-specific science (physics, solvers, invariances, feature relevance) stays in each
``test_workload_*.py``; those files import what they need from here, including the
``one_thread`` fixture (autouse, module scope: importing it pins the module's tests to one
intra-op thread).
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import Tensor, fx, nn

from lumos.workloads import (
    GraphSplit,
    Workload,
    WorkloadData,
    build_dense,
    get_workload,
    train_recipe,
)
from lumos.workloads.base import Split, cached

#: ``info`` entries that are wall-clock provenance, so two generations of the same data differ.
TIMING_KEYS = frozenset({"generation_seconds"})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small models on a shared 2-core machine train faster (and far more predictably) on one
    thread: extra intra-op threads only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- reading splits ----------------------------------------------------------------------------
def all_rows(split: Split) -> tuple[Tensor, Tensor]:
    """The single model input and the target of a tensor split, every sample."""
    (x,), y = split.batch(slice(None))
    return x, y


def feature_rows(split: Split, feature_dim: int) -> Tensor:
    """The gated input as a ``(values, features)`` table: graph nodes, or the samples (and the
    other non-feature positions) of a tensor split."""
    if isinstance(split, GraphSplit):
        return torch.cat([g["x"] for g in split.graphs])
    x = split.inputs[0]
    d = feature_dim % (x.dim() - 1) + 1  # the feature dim of the batched tensor
    return x.movedim(d, -1).reshape(-1, x.shape[d])


def physical_inputs(data: WorkloadData, x: Tensor) -> Tensor:
    """A batched input ``x`` with the standardisation undone: the scalers recorded in ``info``,
    applied along the data's feature dim, in the dtype of ``x``."""
    shape = [1] * x.dim()
    shape[data.feature_dim % (x.dim() - 1) + 1] = -1
    std = torch.tensor(data.info["x_std"], dtype=x.dtype).view(shape)
    mean = torch.tensor(data.info["x_mean"], dtype=x.dtype).view(shape)
    return x * std + mean


# ---- registration and ground truth -------------------------------------------------------------
def check_registered(
    workload: Workload, name: str, architecture: str, task: str, primary: str
) -> None:
    """``get_workload(name)`` is this workload, declared as the test expects (metric improving
    upwards)."""
    assert get_workload(name) is workload and workload.name == name
    assert workload.architecture == architecture and workload.task == task
    assert workload.primary == primary and workload.higher_is_better


def check_partition(
    data: WorkloadData,
    n_true: int,
    nuisance: Sequence[str],
    n_noise: int,
    constant_columns: bool = False,
) -> None:
    """The first ``n_true`` features are the true ones, the nuisance features carry the names
    ``nuisance``, there are ``n_noise`` noise features; inputs and targets are float32 with one
    input column per feature name; every input feature is standardised with train statistics
    (mean 0 and std 1; with ``constant_columns``, columns constant in train may keep std 0)."""
    assert data.feature_arg == "x"
    assert data.true_features == list(range(n_true))
    assert [data.feature_names[i] for i in data.nuisance_features] == list(nuisance)
    assert len(data.noise_features) == n_noise
    for split in (data.train, data.val):
        x = feature_rows(split, data.feature_dim)
        assert x.dtype == torch.float32 and x.shape[1] == len(data.feature_names)
        graphs = isinstance(split, GraphSplit)
        targets = [g["y"] for g in split.graphs] if graphs else [split.target]
        assert all(y.dtype == torch.float32 for y in targets)
    x = feature_rows(data.train, data.feature_dim)
    std = x.std(0)
    scaled = std > 1e-3 if constant_columns else torch.ones_like(std, dtype=torch.bool)
    assert torch.allclose(x.mean(0), torch.zeros(x.shape[1]), atol=1e-4)
    assert torch.allclose(std[scaled], torch.ones(int(scaled.sum())), atol=1e-3)


def check_graphs(data: WorkloadData) -> None:
    """Every graph: float32 node features (one column per feature name), a float32 target per
    graph (shape ``(1,)``) or per node, and an undirected edge list (both directions stored)
    without self-loops."""
    f = len(data.feature_names)
    for split in (data.train, data.val):
        for g in split.graphs:
            n = g["x"].shape[0]
            assert g["x"].dtype == torch.float32 and g["x"].shape == (n, f)
            assert g["y"].dtype == torch.float32
            assert g["y"].shape == ((n, 1) if split.node_level else (1,))
            e = g["edge_index"]
            assert e.dtype == torch.long and e.shape[0] == 2
            assert int(e.max()) < n if e.numel() else n >= 1
            pairs = set(map(tuple, e.t().tolist()))
            assert pairs == {(j, i) for i, j in pairs}  # undirected: both directions stored
            assert all(i != j for i, j in pairs)


# ---- determinism and the cache -----------------------------------------------------------------
def same_split(a: Split, b: Split) -> bool:
    """Both splits hold equal tensors (graph by graph for graph splits)."""
    if isinstance(a, GraphSplit) or isinstance(b, GraphSplit):
        return (
            isinstance(a, GraphSplit)
            and isinstance(b, GraphSplit)
            and a.node_level == b.node_level
            and len(a) == len(b)
            and all(
                torch.equal(g[k], h[k])
                for g, h in zip(a.graphs, b.graphs, strict=True)
                for k in ("x", "edge_index", "y")
            )
        )
    return (
        len(a.inputs) == len(b.inputs)
        and all(torch.equal(s, t) for s, t in zip(a.inputs, b.inputs, strict=True))
        and torch.equal(a.target, b.target)
    )


def assert_same_data(a: WorkloadData, b: WorkloadData, timing: bool = True) -> None:
    """Equal tensors in both splits, the same feature names and the same ``info`` (without its
    wall-clock entries unless ``timing``)."""
    assert same_split(a.train, b.train) and same_split(a.val, b.val)
    assert a.feature_names == b.feature_names

    def info(d: WorkloadData) -> dict:
        return {k: v for k, v in d.info.items() if timing or k not in TIMING_KEYS}

    assert info(a) == info(b)


def check_deterministic_and_cached(
    workload: Workload, data: WorkloadData, cache_dir: Path
) -> WorkloadData:
    """Seed 0 generated again (through an empty ``cache_dir``) is ``data`` exactly; the cache
    then holds one file under the workload's key, and reading it back (never regenerating) gives
    the same data. Returns seed 1's data, for the caller's seed-dependence check."""
    fresh = workload.data("smoke", seed=0, cache_dir=cache_dir, progress=False)
    assert_same_data(fresh, data, timing=False)
    files = list(cache_dir.glob("*.pt"))
    assert len(files) == 1
    assert files[0].name == f"{workload.name}-v{workload.version}-smoke-seed0.pt"
    back = cached(files[0].stem, cache_dir, lambda: pytest.fail("cache not used"))
    assert_same_data(back, fresh)
    return workload.generate("smoke", 1, False)


# ---- models ------------------------------------------------------------------------------------
def seeded_model(workload: Workload, data: WorkloadData) -> nn.Module:
    """The workload's model built under seed 0, in eval mode, after checking that a twin built
    under the same seed has equal parameters (initialisation is deterministic)."""
    model = build_dense(workload, data, seed=0).eval()
    twin = build_dense(workload, data, seed=0)
    pairs = zip(model.parameters(), twin.parameters(), strict=True)
    assert all(torch.equal(p, q) for p, q in pairs)
    return model


def check_fx_traceable(
    model: nn.Module,
    inputs: Sequence[Tensor],
    tracer: fx.Tracer | None = None,
    atol: float | None = None,
) -> tuple[fx.GraphModule, Tensor]:
    """torch.fx traces ``model`` (with ``tracer``, else a plain one) and the traced module
    computes the model's output: bit for bit, or within ``atol`` (allclose's default rtol).
    Returns the traced module and the output."""
    traced = fx.GraphModule(model, (tracer or fx.Tracer()).trace(model))
    with torch.no_grad():
        out = model(*inputs)
        got = traced(*inputs)
    assert torch.equal(got, out) if atol is None else torch.allclose(got, out, atol=atol)
    return traced, out


def pyg_tracer() -> fx.Tracer:
    """A tracer for PyG models as LUMOS traces them: message-passing layers are leaves, PyG's
    global pooling functions are wrapped calls."""
    from torch_geometric import nn as pyg_nn

    pools = (pyg_nn.global_mean_pool, pyg_nn.global_add_pool, pyg_nn.global_max_pool)

    class PygTracer(fx.Tracer):
        def __init__(self) -> None:
            super().__init__(autowrap_functions=pools)

        def is_leaf_module(self, m: nn.Module, name: str) -> bool:
            return isinstance(m, pyg_nn.MessagePassing) or super().is_leaf_module(m, name)

    return PygTracer()


def smoke_predictions(workload: Workload, data: WorkloadData) -> tuple[Tensor, Tensor]:
    """Validation predictions of the workload's model (seed 0) trained with its smoke recipe,
    and the validation target."""
    model = build_dense(workload, data, seed=0)
    train_recipe(model, workload, data, workload.recipes["smoke"], seed=0)
    inputs, y = data.val.batch(slice(None))
    with torch.no_grad():
        return model(*inputs), y


# ---- imports -----------------------------------------------------------------------------------
def check_imports_lazy(module: ModuleType, allowed: set[str]) -> None:
    """The module imports only ``allowed`` packages at its top level (optional ones inside
    functions), so importing it works without them."""
    tree = ast.parse(Path(module.__file__).read_text())
    top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    names = {a.name.split(".")[0] for n in top if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in top if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert names <= allowed, names
