"""What a LUMOS workload is: a data generator, a model, a metric, and a training recipe.

Workloads live at the edge of the library and use it exactly as a user would. Each one knows
which of its model's input features are *true* (the target depends on them), which are *noise*
(planted i.i.d. columns/channels) and which are *nuisance* (physically plausible but irrelevant),
so feature selection can be scored against a ground truth.

Data are deterministic per ``(size, seed)`` and cached on disk (``cache_dir`` argument, else
``$LUMOS_CACHE``, else ``~/.cache/lumos``); tensors only, so the cache is read back with
``torch.load(weights_only=True)`` and never executes code.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigurationError, LumosError
from ..schedules import Schedule

SIZES = ("smoke", "full")
ARCHITECTURES = ("mlp", "cnn2d", "cnn3d", "gnn", "attention", "fno")
TASKS = ("regression", "classification")


class WorkloadUnavailableError(LumosError):
    """A workload needs an optional package that is not installed."""


# ---- splits -----------------------------------------------------------------------------------
class TensorSplit(Dataset):
    """Samples stacked along dim 0: ``inputs`` (one tensor per model argument) and ``target``."""

    def __init__(self, inputs: Sequence[Tensor], target: Tensor) -> None:
        self.inputs = tuple(inputs)
        self.target = target
        n = target.shape[0]
        if any(t.shape[0] != n for t in self.inputs):
            raise ValueError("every input must have as many rows as the target")

    def __len__(self) -> int:
        return self.target.shape[0]

    def __getitem__(self, i: int):
        return tuple(t[i] for t in self.inputs), self.target[i]

    def batch(self, index: Tensor | slice) -> tuple[tuple[Tensor, ...], Tensor]:
        return tuple(t[index] for t in self.inputs), self.target[index]

    def collate(self, items: list) -> tuple[tuple[Tensor, ...], Tensor]:
        inputs = tuple(torch.stack([it[0][k] for it in items]) for k in range(len(self.inputs)))
        return inputs, torch.stack([it[1] for it in items])

    def subset(self, index: Tensor) -> TensorSplit:
        return TensorSplit([t[index] for t in self.inputs], self.target[index])


class GraphSplit(Dataset):
    """A list of graphs, each a dict of tensors: ``x`` (nodes x features, float),
    ``edge_index`` (2 x edges, long), ``y`` (graph target: shape (t,), or node target:
    shape (nodes, t) when ``node_level``). Batches are disjoint unions, PyG style.

    A batch is ``((x, edge_index, batch), y)`` for graph-level targets (``batch`` maps each node
    to its graph, as in ``torch_geometric``) and ``((x, edge_index), y)`` for node-level ones.
    """

    def __init__(self, graphs: list[dict[str, Tensor]], node_level: bool = False) -> None:
        self.graphs = graphs
        self.node_level = node_level

    def __len__(self) -> int:
        return len(self.graphs)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return self.graphs[i]

    def collate(self, items: list[dict[str, Tensor]]):
        xs, edges, batch, ys = [], [], [], []
        offset = 0
        for k, g in enumerate(items):
            n = g["x"].shape[0]
            xs.append(g["x"])
            edges.append(g["edge_index"] + offset)
            batch.append(torch.full((n,), k, dtype=torch.long))
            ys.append(g["y"])
            offset += n
        x = torch.cat(xs)
        edge_index = torch.cat(edges, dim=1)
        if self.node_level:
            return (x, edge_index), torch.cat(ys)
        return (x, edge_index, torch.cat(batch)), torch.stack(ys)

    def batch(self, index: Tensor | slice):
        idx = range(len(self))[index] if isinstance(index, slice) else index.tolist()
        return self.collate([self.graphs[i] for i in idx])

    def subset(self, index: Tensor) -> GraphSplit:
        return GraphSplit([self.graphs[i] for i in index.tolist()], self.node_level)


Split = TensorSplit | GraphSplit


# ---- data --------------------------------------------------------------------------------------
@dataclass
class WorkloadData:
    """One generated data set with its feature ground truth.

    ``feature_arg`` is the model argument whose features are gated and scored, ``feature_dim``
    the dimension of that argument (per sample, i.e. of one item without the batch dim; e.g. 0
    for the channels of an image ``(C, H, W)``, -1 for table columns) that holds them.
    ``true_features``, ``noise_features`` and ``nuisance_features`` are disjoint index lists
    into ``feature_names`` that together cover every feature.
    """

    train: Split
    val: Split
    feature_arg: str
    feature_dim: int
    feature_names: list[str]
    true_features: list[int]
    noise_features: list[int]
    nuisance_features: list[int] = field(default_factory=list)
    info: dict = field(default_factory=dict)  # free-form provenance: sizes, units, sources

    def __post_init__(self) -> None:
        parts = self.true_features + self.noise_features + self.nuisance_features
        if sorted(parts) != list(range(len(self.feature_names))):
            raise ValueError(
                "true, noise and nuisance features must partition the feature indices "
                f"0..{len(self.feature_names) - 1}"
            )

    @property
    def irrelevant_features(self) -> list[int]:
        """Noise and nuisance: what a good selector drops."""
        return sorted(self.noise_features + self.nuisance_features)

    def loader(
        self, split: str = "train", batch_size: int = 64, shuffle: bool = True, seed: int = 0
    ) -> DataLoader:
        data = self._split(split)
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(
            data, batch_size=batch_size, shuffle=shuffle, generator=generator,
            collate_fn=data.collate,
        )

    def halve_val(self, seed: int = 0) -> tuple[Split, Split]:
        """The validation set cut in two random halves: one to select a model on (tolerance
        mode), one to report it on, so the reported metric is not the selected one."""
        g = torch.Generator().manual_seed(seed_everything(seed, "halve-val"))
        perm = torch.randperm(len(self.val), generator=g)
        half = len(perm) // 2
        return self.val.subset(perm[:half]), self.val.subset(perm[half:])

    def example_batch(self, split: str = "val", size: int = 8):
        """The first ``size`` samples of a split as ``(inputs tuple, target)``."""
        data = self._split(split)
        size = min(size, len(data))
        return data.batch(slice(0, size))

    def _split(self, split: str) -> Split:
        if split not in ("train", "val"):
            raise ConfigurationError(f"split must be 'train' or 'val', got {split!r}.")
        return self.train if split == "train" else self.val


# ---- recipe ------------------------------------------------------------------------------------
#: the learning rate annealed to 2% of its start (half cosine): recipes whose constant-rate
#: validation curve kept hopping at the end use it (Darcy: rel. L2 0.016-0.025 over epochs
#: 30-45 at a constant 2e-3; annealed over 30 epochs it settles at 0.0181)
ANNEALED_LR = Schedule("cosine", 1.0, 0.02)


@dataclass(frozen=True)
class TrainRecipe:
    """How both the dense and the LUMOS model are trained (same for both, by design).

    A recipe must bring the dense model to convergence (its validation curve flat at the end,
    which the suite records), or a comparison with it says little.
    """

    epochs: int
    batch_size: int
    lr: float = 1e-3
    weight_decay: float = 0.0
    #: multiplies ``lr`` over training (None: constant); see :func:`lumos.training.train`
    lr_schedule: Schedule | None = None


@dataclass(frozen=True)
class Workload:
    """A named science problem: data generator + model + metric + training recipe.

    ``generate(size, seed, progress)`` builds the data (``size`` in :data:`SIZES`);
    ``build_model(data)`` returns a fresh dense model whose forward takes the split's inputs;
    ``metrics(pred, target)`` returns a dict that contains ``primary``.
    """

    name: str
    title: str
    description: str
    architecture: str
    task: str
    primary: str
    higher_is_better: bool
    generate: Callable[[str, int, bool], WorkloadData]
    build_model: Callable[[WorkloadData], nn.Module]
    metrics: Callable[[Tensor, Tensor], dict[str, float]]
    recipes: dict[str, TrainRecipe]
    requires: tuple[str, ...] = ()
    version: int = 1  # bump when the generator changes so stale caches are not reused

    def __post_init__(self) -> None:
        assert self.architecture in ARCHITECTURES, self.architecture
        assert self.task in TASKS, self.task
        assert set(self.recipes) == set(SIZES), self.recipes

    @property
    def loss(self) -> Callable[[Tensor, Tensor], Tensor]:
        if self.task == "classification":
            return torch.nn.functional.binary_cross_entropy_with_logits
        return torch.nn.functional.mse_loss

    def check_available(self) -> None:
        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if missing:
            raise WorkloadUnavailableError(
                f"workload '{self.name}' needs the Python package(s) {missing}; install them "
                "with: pip install 'lumos-sciml[workloads]'."
            )

    def data(
        self,
        size: str = "smoke",
        seed: int = 0,
        cache_dir: str | os.PathLike | None = None,
        progress: bool | None = None,
    ) -> WorkloadData:
        """Generate (or read from the cache) the data of this workload."""
        if size not in SIZES:
            raise ConfigurationError(f"size must be one of {SIZES}, got {size!r}.")
        self.check_available()
        if progress is None:
            progress = sys.stderr.isatty()
        key = f"{self.name}-v{self.version}-{size}-seed{seed}"
        return cached(key, cache_dir, lambda: self.generate(size, seed, progress))


# ---- cache -------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    env = os.environ.get("LUMOS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "lumos"


def cached(key: str, cache_dir, make: Callable[[], WorkloadData]) -> WorkloadData:
    """Load ``key`` from the cache or build it and write it atomically (tmp file + rename)."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = root / f"{key}.pt"
    if path.exists():
        try:
            return _from_state(torch.load(path, weights_only=True))
        except Exception:  # a stale or damaged cache entry is rebuilt, never trusted
            pass
    data = make()
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{key}.", suffix=".tmp")
        os.close(fd)
        torch.save(_to_state(data), tmp)
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache only costs time, never the run
    return data


def _split_state(split: Split) -> dict:
    if isinstance(split, GraphSplit):
        return {"kind": "graph", "graphs": split.graphs, "node_level": split.node_level}
    return {"kind": "tensor", "inputs": list(split.inputs), "target": split.target}


def _split_from(state: dict) -> Split:
    if state["kind"] == "graph":
        return GraphSplit(state["graphs"], state["node_level"])
    return TensorSplit(state["inputs"], state["target"])


def _to_state(d: WorkloadData) -> dict:
    return {
        "train": _split_state(d.train),
        "val": _split_state(d.val),
        "feature_arg": d.feature_arg,
        "feature_dim": d.feature_dim,
        "feature_names": d.feature_names,
        "true_features": d.true_features,
        "noise_features": d.noise_features,
        "nuisance_features": d.nuisance_features,
        "info": d.info,
    }


def _from_state(s: dict) -> WorkloadData:
    return WorkloadData(
        train=_split_from(s["train"]),
        val=_split_from(s["val"]),
        feature_arg=s["feature_arg"],
        feature_dim=s["feature_dim"],
        feature_names=list(s["feature_names"]),
        true_features=list(s["true_features"]),
        noise_features=list(s["noise_features"]),
        nuisance_features=list(s["nuisance_features"]),
        info=dict(s["info"]),
    )


# ---- helpers for generators --------------------------------------------------------------------
def progress_bar(iterable: Iterable, total: int | None = None, desc: str = "", enabled=True):
    """tqdm when enabled and available (quiet otherwise): generation shows progress on a TTY."""
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False)


def seed_everything(seed: int, *parts: object) -> int:
    """A stable 32-bit seed for one stage of a generator (``hash()`` is salted per process)."""
    text = ":".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Deterministic shuffled train/val index split."""
    g = torch.Generator().manual_seed(seed_everything(seed, "split"))
    perm = torch.randperm(n, generator=g)
    n_val = max(1, int(round(n * val_fraction)))
    return perm[n_val:], perm[:n_val]


def standardize(train: Tensor, *others: Tensor, dim: int, eps: float = 1e-8):
    """Scale every tensor with the mean/std of ``train`` over all dims but the feature one.

    ``dim`` is the feature dim of the *batched* tensor (e.g. 1 for images, -1 for tables).
    Returns the standardised tensors followed by ``(mean, std)``.
    """
    d = dim % train.dim()
    reduce = [k for k in range(train.dim()) if k != d]
    mean = train.mean(dim=reduce, keepdim=True)
    std = train.std(dim=reduce, keepdim=True).clamp_min(eps)
    return (train - mean) / std, *[(o - mean) / std for o in others], mean, std


def append_noise_columns(
    x: Tensor, n_noise: int, seed: int, dim: int = -1
) -> tuple[Tensor, list[int]]:
    """Append ``n_noise`` i.i.d. standard-normal features along ``dim`` (batched tensor).

    Returns the new tensor and the indices of the noise features.
    """
    g = torch.Generator().manual_seed(seed_everything(seed, "noise"))
    d = dim % x.dim()
    shape = list(x.shape)
    shape[d] = n_noise
    noise = torch.randn(shape, generator=g, dtype=x.dtype)
    start = x.shape[d]
    return torch.cat([x, noise], dim=d), list(range(start, start + n_noise))
