"""Third-party zoo: models built from their own packages' constructors (random weights).

Each :class:`Entry` names a model, the package it comes from and its family, and builds a
:class:`Case`: the model, its example inputs (a tuple of positional arguments), ``make_batch(n)``
for the same kind of input at another batch size, and ``make_target(output)`` for a regression
target (by default the dense model's own output plus 10% noise, :func:`near`). Nothing is
downloaded: every model is built from its constructor with random weights, on small sizes so
that a whole check (sparsify, ~50 training steps, compact, checks) takes seconds on one core.

Packages are imported inside the builders; :meth:`Entry.missing` says when one cannot be
imported, so a missing package skips its rows. torchvision 0.28 (the release for torch 2.13)
is a CUDA build on PyPI: ``torchvision_cpu.ensure_torchvision_importable`` lets it import on
the CPU torch (its models are plain torch; only its detection operators need the extension),
and timm imports it.

This module does not import LUMOS (the reload check imports it without LUMOS).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from torchvision_cpu import ensure_torchvision_importable

BATCH = 4  # batch size of the example inputs (graphs: number of graphs)


# ---- the table's record types --------------------------------------------------------------
@dataclass
class Case:
    """A built model and how to feed it."""

    model: nn.Module
    inputs: tuple
    make_batch: Callable[[int], tuple]  # inputs of batch size n (fresh random values)
    make_target: Callable[[object], object] = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.make_target is None:
            self.make_target = near


@dataclass(frozen=True)
class Entry:
    name: str
    package: str  # the PyPI distribution
    family: str
    builder: Callable[[], Case]
    requires: tuple[str, ...]  # modules to import (the first one is the package itself)
    options: Callable[[], dict] | None = None  # more sparsify() keywords (e.g. keep=...)

    def sparsify_kwargs(self) -> dict:
        return {} if self.options is None else self.options()

    def missing(self) -> str | None:
        """Why this entry cannot be built here (a module that does not import), or None."""
        for module in self.requires:
            try:
                _import(module)
            except Exception as error:  # ImportError, or a broken optional dependency
                return f"{module} not importable ({type(error).__name__}: {error})"
        return None

    def build(self) -> Case:
        torch.manual_seed(0)
        case = self.builder()
        case.model.eval()  # the harness switches to train mode for training
        return case


def _import(module: str):
    if module.startswith("neuralop"):
        _stub_wandb()
    if module.split(".")[0] in ("torchvision", "timm"):
        ensure_torchvision_importable()
    return importlib.import_module(module)


def _stub_wandb() -> None:
    """neuraloperator 0.3.0 imports wandb at the top of ``neuralop.utils`` (undeclared, unused
    by the models): an empty module stands in when wandb is not installed."""
    if "wandb" not in sys.modules and importlib.util.find_spec("wandb") is None:
        sys.modules["wandb"] = types.ModuleType("wandb")


# ---- data ----------------------------------------------------------------------------------
def randn(*shape: int, seed: int = 0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def random_like(output, seed: int = 1):
    """A random target with the structure of ``output`` (floating tensors only; the rest None)."""
    gen = torch.Generator().manual_seed(seed)
    if isinstance(output, Tensor):
        if output.is_floating_point():
            return torch.randn(output.shape, generator=gen, dtype=output.dtype)
        return None
    if isinstance(output, dict):
        return {k: random_like(v, seed + i) for i, (k, v) in enumerate(output.items())}
    if isinstance(output, (tuple, list)):
        return type(output)(random_like(v, seed + i) for i, v in enumerate(output))
    return None


def near(output, seed: int = 1, noise: float = 0.1):
    """The default target: the dense model's own output plus 10% noise, so the inputs carry
    signal and training trades accuracy against the budget (a pure-noise target would let
    every input close)."""
    gen = torch.Generator().manual_seed(seed)
    if isinstance(output, Tensor):
        if not output.is_floating_point():
            return None
        out = output.detach()
        scale = float(out.std()) if out.numel() > 1 else 1.0
        return out + noise * (scale + 1e-3) * torch.randn(out.shape, generator=gen,
                                                         dtype=out.dtype)
    if isinstance(output, dict):
        return {k: near(v, seed + i, noise) for i, (k, v) in enumerate(output.items())}
    if isinstance(output, (tuple, list)):
        return type(output)(near(v, seed + i, noise) for i, v in enumerate(output))
    return None


def tensor_case(model: nn.Module, *tail: int, batch: int = BATCH) -> Case:
    """One float input of shape ``(batch, *tail)``."""
    return Case(model, (randn(batch, *tail),), lambda n: (randn(n, *tail, seed=100 + n),))


def graphs(n_graphs: int, nodes: int = 8, d_in: int = 6, edge_dim: int | None = None,
           seed: int = 0) -> dict:
    """A disjoint union of random undirected graphs: x, edge_index, batch (and edge_attr)."""
    g = torch.Generator().manual_seed(seed)
    xs, edges, batch = [], [], []
    for k in range(n_graphs):
        src = torch.randint(0, nodes, (2 * nodes,), generator=g)
        dst = (src + 1 + torch.randint(0, nodes - 1, (2 * nodes,), generator=g)) % nodes
        edges.append(torch.stack([torch.cat([src, dst]), torch.cat([dst, src])]) + k * nodes)
        xs.append(torch.randn(nodes, d_in, generator=g))
        batch.append(torch.full((nodes,), k))
    out = {"x": torch.cat(xs), "edge_index": torch.cat(edges, dim=1), "batch": torch.cat(batch)}
    if edge_dim is not None:
        out["edge_attr"] = torch.randn(out["edge_index"].shape[1], edge_dim, generator=g)
    return out


def graph_case(model: nn.Module, keys: tuple[str, ...] = ("x", "edge_index"), **kw) -> Case:
    """Graph inputs, positional in the order of ``keys``; batch size = number of graphs."""
    def make(n: int, seed: int) -> tuple:
        data = graphs(n, seed=seed, **kw)
        return tuple(data[k] for k in keys)

    return Case(model, make(BATCH, 0), lambda n: make(n, 100 + n))


# ---- small wrappers (a head on a package's model, as a user writes it) ---------------------
class GraphHead(nn.Module):
    """A node-level PyG model followed by mean pooling per graph (a graph regressor)."""

    def __init__(self, gnn: nn.Module) -> None:
        super().__init__()
        self.gnn = gnn

    def forward(self, x, edge_index, batch):
        from torch_geometric.nn import global_mean_pool

        return global_mean_pool(self.gnn(x, edge_index), batch)


class RMSNormBlocks(nn.Module):
    """Pre-norm residual MLP blocks with ``nn.RMSNorm`` (the LLaMA-style block), as a user
    writes it: ``x + fc2(silu(fc1(norm(x))))``, then a final norm and a head."""

    def __init__(self, d_in: int = 6, d: int = 16, hidden: int = 32, blocks: int = 2) -> None:
        super().__init__()
        self.inp = nn.Linear(d_in, d)
        self.norms = nn.ModuleList([nn.RMSNorm(d) for _ in range(blocks + 1)])
        self.fc1 = nn.ModuleList([nn.Linear(d, hidden) for _ in range(blocks)])
        self.fc2 = nn.ModuleList([nn.Linear(hidden, d) for _ in range(blocks)])
        self.head = nn.Linear(d, 1)

    def forward(self, x):
        h = self.inp(x)
        for norm, a, b in zip(self.norms, self.fc1, self.fc2):
            h = h + b(nn.functional.silu(a(norm(h))))
        return self.head(self.norms[-1](h))


class DenseRadiusGraph(nn.Module):
    """Radius graph in plain torch for SchNet's ``interaction_graph`` (PyG's default needs the
    compiled pyg-lib / torch-cluster, which have no wheels for this torch)."""

    def __init__(self, cutoff: float) -> None:
        super().__init__()
        self.cutoff = cutoff

    def forward(self, pos: Tensor, batch: Tensor):
        dist = torch.cdist(pos, pos)
        same = batch[:, None] == batch[None, :]
        eye = torch.eye(pos.shape[0], dtype=torch.bool, device=pos.device)
        edge_index = (same & (dist < self.cutoff) & ~eye).nonzero().t()
        row, col = edge_index[0], edge_index[1]
        return edge_index, (pos[row] - pos[col]).norm(dim=-1)


def dimenet_pp(hidden: int = 16, blocks: int = 2) -> nn.Module:
    """torch-geometric's DimeNet++ with its graph built in plain torch (see
    :mod:`thirdparty.dimenet_dense`)."""
    from thirdparty.dimenet_dense import DenseDimeNetPlusPlus

    return DenseDimeNetPlusPlus(
        hidden_channels=hidden, out_channels=1, num_blocks=blocks, int_emb_size=8,
        basis_emb_size=4, out_emb_channels=16, num_spherical=3, num_radial=4, cutoff=5.0,
        output_initializer="glorot_orthogonal")


def molecule_case(model: nn.Module, atoms: int = 6) -> Case:
    """(z, pos, batch): atomic numbers, positions, molecule index."""
    def make(n: int, seed: int) -> tuple:
        g = torch.Generator().manual_seed(seed)
        z = torch.randint(1, 10, (n * atoms,), generator=g)
        pos = 1.5 * torch.randn(n * atoms, 3, generator=g)
        return z, pos, torch.arange(n).repeat_interleave(atoms)

    return Case(model, make(BATCH, 0), lambda n: make(n, 100 + n))


class SequenceRegressor(nn.Module):
    """A recurrent layer over (batch, time, features), its last step read by a Linear."""

    def __init__(self, rnn: nn.Module, width: int, d_out: int = 2) -> None:
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(width, d_out)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class TokenModel(nn.Module):
    """nn.Embedding of token ids, mean over the sequence, an MLP head."""

    def __init__(self, vocab: int = 40, dim: int = 24) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 48), nn.GELU(), nn.Linear(48, 2))

    def forward(self, tokens):
        return self.mlp(self.embed(tokens).mean(dim=1))


class EncoderRegressor(nn.Module):
    def __init__(self, d_in: int = 6, d_model: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(d_in, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, 2 * d_model, dropout=0.1,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(d_model),
                                             enable_nested_tensor=False)
        self.head = nn.Linear(d_model, 1)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(dim=1))


class DecoderRegressor(nn.Module):
    def __init__(self, d_in: int = 6, d_model: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(d_in, d_model)
        self.memory = nn.Linear(d_in, d_model)
        layer = nn.TransformerDecoderLayer(d_model, heads, 2 * d_model, dropout=0.0,
                                           batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, 2)
        self.head = nn.Linear(d_model, 1)

    def forward(self, tgt, src):
        return self.head(self.decoder(self.embed(tgt), self.memory(src)))


class Seq2Seq(nn.Module):
    def __init__(self, d_in: int = 6, d_model: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.src_embed = nn.Linear(d_in, d_model)
        self.tgt_embed = nn.Linear(d_in, d_model)
        self.transformer = nn.Transformer(d_model, heads, num_encoder_layers=1,
                                          num_decoder_layers=1, dim_feedforward=32,
                                          dropout=0.0, batch_first=True)
        self.head = nn.Linear(d_model, 1)

    def forward(self, src, tgt):
        return self.head(self.transformer(self.src_embed(src), self.tgt_embed(tgt)))


class AttentionBlock(nn.Module):
    """Pre-norm self-attention + MLP block around nn.MultiheadAttention."""

    def __init__(self, d_in: int = 6, dim: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.ReLU(), nn.Linear(4 * dim, dim))
        self.head = nn.Linear(dim, 1)

    def forward(self, x):
        h = self.embed(x)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        h = h + self.mlp(h)
        return self.head(h.mean(dim=1))


def _two_sequences(model: nn.Module, len_a: int = 7, len_b: int = 5, d: int = 6) -> Case:
    return Case(model, (randn(BATCH, len_a, d), randn(BATCH, len_b, d, seed=1)),
                lambda n: (randn(n, len_a, d, seed=100 + n), randn(n, len_b, d, seed=200 + n)))


def _tokens(model: nn.Module, vocab: int = 40, length: int = 9) -> Case:
    def make(n: int, seed: int) -> tuple:
        return (torch.randint(0, vocab, (n, length),
                              generator=torch.Generator().manual_seed(seed)),)

    return Case(model, make(BATCH, 0), lambda n: make(n, 100 + n))


class EquivariantMLP(nn.Module):
    """e3nn: o3.Linear -> Gate (scalars act, vectors gated) -> o3.Linear to scalars."""

    def __init__(self) -> None:
        super().__init__()
        from e3nn import nn as enn
        from e3nn import o3

        self.lin1 = o3.Linear("8x0e + 4x1o", "32x0e + 16x0e + 16x1o")
        self.gate = enn.Gate("32x0e", [torch.tanh], "16x0e", [torch.sigmoid], "16x1o")
        self.lin2 = o3.Linear("32x0e + 16x1o", "2x0e")

    def forward(self, x):
        return self.lin2(self.gate(self.lin1(x)))


class TensorProductNet(nn.Module):
    """e3nn: a fully connected tensor product of node features with spherical harmonics."""

    def __init__(self) -> None:
        super().__init__()
        from e3nn import o3

        self.sh = o3.SphericalHarmonics("1x0e + 1x1o", normalize=True, normalization="component")
        self.tp = o3.FullyConnectedTensorProduct("4x0e", "1x0e + 1x1o", "8x0e + 2x1o")
        self.out = o3.Linear("8x0e + 2x1o", "1x0e")

    def forward(self, x, vec):
        return self.out(self.tp(x, self.sh(vec)))


# ---- builders ------------------------------------------------------------------------------
def _pyg():
    import torch_geometric.nn.models as models

    return models


def _monai():
    import monai.networks.nets as nets

    return nets


def _neuralop():
    _stub_wandb()
    import neuralop.models as models

    return models


def _pna() -> Case:
    from torch_geometric.utils import degree

    data = graphs(BATCH)
    deg = degree(data["edge_index"][1], data["x"].shape[0], dtype=torch.long)
    hist = torch.bincount(deg, minlength=1)
    model = _pyg().PNA(6, 16, 2, 2, aggregators=["mean", "max", "std"],
                       scalers=["identity", "amplification"], deg=hist)
    return graph_case(model)


def _keep_spectral() -> dict:
    from neuralop.layers.spectral_convolution import SpectralConv

    return {"keep": [SpectralConv]}


def _keep_rearrange() -> dict:
    from einops.layers.torch import Rearrange

    return {"keep": [Rearrange]}


def _keep_gate() -> dict:
    from e3nn.nn import Gate

    return {"keep": [Gate]}


def _monai_2d(model: nn.Module, side: int = 16, channels: int = 1) -> Case:
    return tensor_case(model, channels, side, side)


def _tv():
    ensure_torchvision_importable()
    import torchvision.models as models

    return models


def _timm(name: str, **kwargs) -> nn.Module:
    """A timm model by registry name, or by ``module.Class`` under ``timm.models`` (then
    string arguments ``"module.Name"`` name timm classes, ``"torch.nn.X"`` torch's) where a
    registry entry fixes the sizes that must shrink here; ``:tag`` only names the row."""
    ensure_torchvision_importable()
    import timm

    if "." not in name:
        return timm.create_model(name, pretrained=False, num_classes=4, **kwargs)
    resolved = {k: _timm_object(v) if isinstance(v, str) else v for k, v in kwargs.items()}
    return _timm_object(name.split(":")[0])(num_classes=4, **resolved)


def _timm_object(path: str):
    module, attribute = path.rsplit(".", 1)
    package = module if module.startswith("torch") else f"timm.models.{module}"
    return getattr(importlib.import_module(package), attribute)


def _image(model: nn.Module, side: int = 32) -> Case:
    """An RGB image classifier (or segmenter) fed ``(batch, 3, side, side)``."""
    return tensor_case(model, 3, side, side)


#: timm models by their registry names, shrunk through their constructors' own arguments
_TIMM_MODELS: list[tuple[str, str, dict, int]] = [
    ("resnet10t", "ResNet-10-T (deep stem, avg-pool shortcut)", {"drop_path_rate": 0.1}, 32),
    ("efficientnet_b0", "EfficientNet-B0 (SE, drop path)", {"drop_path_rate": 0.1}, 32),
    ("mobilenetv3_small_050", "MobileNetV3-small 0.5", {}, 32),
    ("ghostnet_050", "GhostNet (ghost modules: concat then slice)", {}, 32),
    ("rexnet_100", "ReXNet (residual into a channel slice)", {}, 32),
    ("regnetx_002", "RegNetX-200MF", {}, 32),
    ("convnext_atto", "ConvNeXt-atto (timm LayerNorm2d, layer scale)", {"drop_path_rate": 0.1},
     32),
    ("nf_resnet26", "NF-ResNet (scaled weight-standardised convs)", {}, 32),
    ("repvgg_a0", "RepVGG-A0 (parallel 3x3, 1x1, identity branches)", {}, 32),
    ("cspresnet50", "CSPResNet (cross-stage partial split)", {}, 32),
    ("dla34", "DLA-34 (deep layer aggregation)", {}, 32),
    ("vit_tiny_patch16_224", "ViT (timm, fused qkv)",
     {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}, 32),
    ("deit_tiny_distilled_patch16_224", "DeiT distilled (class + distillation tokens)",
     {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}, 32),
    ("mlp_mixer.MlpMixer", "MLP-Mixer (token and channel MLPs)",
     {"img_size": 32, "patch_size": 8, "num_blocks": 2, "embed_dim": 32}, 32),
    ("mlp_mixer.MlpMixer:resmlp", "ResMLP (affine norms, layer scale)",
     {"img_size": 32, "patch_size": 8, "num_blocks": 2, "embed_dim": 32,
      "mlp_ratio": 4, "block_layer": "mlp_mixer.ResBlock", "norm_layer": "mlp_mixer.Affine"},
     32),
    ("swin_tiny_patch4_window7_224", "Swin (timm)",
     {"img_size": 32, "patch_size": 4, "window_size": 4, "embed_dim": 16, "depths": (1, 1),
      "num_heads": (1, 2)}, 32),
    ("convmixer.ConvMixer", "ConvMixer (depthwise mixing, residual)",
     {"dim": 32, "depth": 2, "kernel_size": 3, "patch_size": 4}, 32),
    ("metaformer.MetaFormer:poolformer", "PoolFormer (pooling token mixer, GroupNorm)",
     {"depths": (1, 1, 1, 1), "dims": (8, 16, 24, 32), "downsample_norm": None,
      "mlp_act": "torch.nn.GELU", "mlp_bias": True, "norm_layers": "metaformer.GroupNorm1",
      "layer_scale_init_values": 1e-5, "res_scale_init_values": None,
      "use_mlp_head": False}, 32),
    ("levit_128s", "LeViT (BatchNorm linears, attention bias)", {"img_size": 32}, 32),
    ("mobilevit_xxs", "MobileViT-XXS (unfold, transformer, fold)", {}, 64),
    ("xcit_nano_12_p16_224", "XCiT (cross-covariance attention over channels)",
     {"img_size": 32, "patch_size": 8, "depth": 2}, 32),
    ("davit_tiny", "DaViT (spatial and channel attention)",
     {"depths": (1, 1, 1, 1), "embed_dims": (8, 16, 32, 64), "num_heads": (1, 2, 4, 8)}, 64),
    ("fastvit_t8", "FastViT (reparameterisable mixers)", {}, 64),
    ("sequencer2d_s", "Sequencer2D (bidirectional LSTMs over rows and columns)",
     {"layers": (1, 1, 1, 1)}, 64),
    ("efficientvit_b0", "EfficientViT-MIT (ReLU linear attention in torch.autocast)", {}, 64),
    ("mobilenetv4_conv_small", "MobileNetV4 (universal inverted bottlenecks)", {}, 64),
    ("edgenext_xx_small", "EdgeNeXt (split depthwise transpose attention)", {}, 64),
]


def _build_table() -> list[Entry]:
    rows: list[Entry] = []

    def add(name: str, package: str, family: str, requires: tuple[str, ...],
            options: Callable[[], dict] | None = None):
        def register(builder: Callable[[], Case]) -> Callable[[], Case]:
            rows.append(Entry(name, package, family, builder, requires, options))
            return builder

        return register

    torch_ = ("torch",)
    pyg = ("torch_geometric",)
    monai = ("monai", "einops")
    nop = ("neuralop", "torch_harmonics")
    e3nn = ("e3nn",)

    # -- torch.nn ----------------------------------------------------------------------------
    add("nn_transformer_encoder", "torch", "transformer encoder (pre-norm, GELU)", torch_)(
        lambda: tensor_case(EncoderRegressor(), 7, 6))
    add("nn_transformer_decoder", "torch", "transformer decoder (cross-attention)", torch_)(
        lambda: _two_sequences(DecoderRegressor(), 5, 7))
    add("nn_transformer", "torch", "encoder-decoder transformer", torch_)(
        lambda: _two_sequences(Seq2Seq()))
    add("nn_multihead_attention", "torch", "self-attention block", torch_)(
        lambda: tensor_case(AttentionBlock(), 7, 6))
    add("nn_lstm", "torch", "recurrent (LSTM, 2 layers)", torch_)(
        lambda: tensor_case(SequenceRegressor(nn.LSTM(6, 16, 2, batch_first=True), 16), 7, 6))
    add("nn_gru_bidirectional", "torch", "recurrent (bidirectional GRU)", torch_)(
        lambda: tensor_case(SequenceRegressor(
            nn.GRU(6, 12, batch_first=True, bidirectional=True), 24), 7, 6))
    add("nn_embedding", "torch", "token embedding + MLP", torch_)(
        lambda: _tokens(TokenModel()))
    add("nn_rmsnorm_blocks", "torch", "pre-norm residual blocks (RMSNorm, SiLU)", torch_)(
        lambda: tensor_case(RMSNormBlocks(), 7, 6))

    # -- torch_geometric ---------------------------------------------------------------------
    add("pyg_gcn", "torch-geometric", "GNN (GCN)", pyg)(
        lambda: graph_case(_pyg().GCN(6, 16, 3, 2)))
    add("pyg_gcn_jk_pool", "torch-geometric", "GNN (GCN, jumping knowledge cat, pooled)", pyg)(
        lambda: graph_case(GraphHead(_pyg().GCN(6, 16, 3, 2, jk="cat")),
                           ("x", "edge_index", "batch")))
    add("pyg_graphsage", "torch-geometric", "GNN (GraphSAGE)", pyg)(
        lambda: graph_case(_pyg().GraphSAGE(6, 16, 2, 2)))
    add("pyg_graphsage_layernorm_jkmax", "torch-geometric",
        "GNN (GraphSAGE, PyG graph LayerNorm, jumping knowledge max)", pyg)(
        lambda: graph_case(_pyg().GraphSAGE(6, 16, 3, 2, norm="layer_norm", jk="max")))
    add("pyg_gcn_batchnorm_dropout", "torch-geometric", "GNN (GCN, BatchNorm, dropout)", pyg)(
        lambda: graph_case(_pyg().GCN(6, 16, 3, 2, norm="batch_norm", dropout=0.2)))
    add("pyg_gcn_graphnorm", "torch-geometric", "GNN (GCN, GraphNorm)", pyg)(
        lambda: graph_case(_pyg().GCN(6, 16, 2, 2, norm="graph_norm")))
    add("pyg_gin", "torch-geometric", "GNN (GIN)", pyg)(
        lambda: graph_case(_pyg().GIN(6, 16, 2, 2)))
    add("pyg_gin_jk_cat", "torch-geometric", "GNN (GIN, jumping knowledge cat)", pyg)(
        lambda: graph_case(_pyg().GIN(6, 16, 3, 2, jk="cat")))
    add("pyg_graphsage_jk_lstm", "torch-geometric", "GNN (GraphSAGE, jumping knowledge LSTM)",
        pyg)(lambda: graph_case(_pyg().GraphSAGE(6, 16, 2, 2, jk="lstm")))
    add("pyg_gat", "torch-geometric", "GNN (GAT, 2 heads)", pyg)(
        lambda: graph_case(_pyg().GAT(6, 16, 2, 2, heads=2)))
    add("pyg_gatv2", "torch-geometric", "GNN (GATv2)", pyg)(
        lambda: graph_case(_pyg().GAT(6, 16, 2, 2, heads=2, v2=True)))
    add("pyg_pna", "torch-geometric", "GNN (PNA)", pyg)(_pna)
    add("pyg_edgecnn", "torch-geometric", "GNN (EdgeCNN)", pyg)(
        lambda: graph_case(_pyg().EdgeCNN(6, 16, 2, 2)))
    add("pyg_attentivefp", "torch-geometric", "GNN (AttentiveFP, edge features)", pyg)(
        lambda: graph_case(_pyg().AttentiveFP(6, 16, 1, edge_dim=3, num_layers=2,
                                              num_timesteps=2),
                           ("x", "edge_index", "edge_attr", "batch"), edge_dim=3))
    add("pyg_schnet", "torch-geometric", "molecular GNN (SchNet)", pyg)(
        lambda: molecule_case(_pyg().SchNet(
            hidden_channels=16, num_filters=16, num_interactions=2, num_gaussians=10,
            cutoff=5.0, interaction_graph=DenseRadiusGraph(5.0))))
    add("pyg_dimenet_pp", "torch-geometric",
        "molecular GNN (DimeNet++: triplets, spherical basis; graph built in plain torch)", pyg)(
        lambda: molecule_case(dimenet_pp()))
    add("pyg_graph_unet", "torch-geometric", "GNN (Graph U-Net, top-k pooling)", pyg)(
        lambda: graph_case(_pyg().GraphUNet(6, 16, 2, depth=2)))
    add("pyg_mlp", "torch-geometric", "MLP (batch norm, dropout)", pyg)(
        lambda: tensor_case(_pyg().MLP([8, 32, 32, 2], norm="batch_norm", dropout=0.1), 8))
    add("pyg_mlp_layernorm", "torch-geometric", "MLP (LayerNorm)", pyg)(
        lambda: tensor_case(_pyg().MLP([8, 32, 32, 2], norm="layer_norm"), 8))

    # -- neuraloperator ----------------------------------------------------------------------
    add("neuralop_fno2d", "neuraloperator", "neural operator (FNO 2D)", nop)(
        lambda: tensor_case(_neuralop().FNO((6, 6), 8, in_channels=3, out_channels=1,
                                            lifting_channels=16, projection_channels=16,
                                            n_layers=2), 3, 16, 16))
    add("neuralop_fno2d_keep_spectral", "neuraloperator",
        "neural operator (FNO 2D), keep=[SpectralConv]", nop, _keep_spectral)(
        lambda: tensor_case(_neuralop().FNO((6, 6), 8, in_channels=3, out_channels=1,
                                            lifting_channels=16, projection_channels=16,
                                            n_layers=2), 3, 16, 16))
    add("neuralop_tfno2d", "neuraloperator", "neural operator (Tucker-factorised FNO)", nop)(
        lambda: tensor_case(_neuralop().TFNO((6, 6), 8, in_channels=3, out_channels=1,
                                             lifting_channels=16, projection_channels=16,
                                             n_layers=2, factorization="tucker", rank=0.5),
                            3, 16, 16))
    add("neuralop_tfno2d_cp", "neuraloperator", "neural operator (CP-factorised FNO)", nop)(
        lambda: tensor_case(_neuralop().TFNO((6, 6), 8, in_channels=3, out_channels=1,
                                             lifting_channels=16, projection_channels=16,
                                             n_layers=2, factorization="cp", rank=0.5),
                            3, 16, 16))
    add("neuralop_fno1d", "neuraloperator", "neural operator (FNO 1D, MLP skip)", nop)(
        lambda: tensor_case(_neuralop().FNO1d(8, 8, in_channels=2, out_channels=1,
                                              lifting_channels=16, projection_channels=16,
                                              n_layers=2, use_mlp=True), 2, 32))
    add("neuralop_uno", "neuraloperator", "neural operator (U-shaped UNO)", nop)(
        lambda: tensor_case(_neuralop().UNO(
            3, 1, 8, lifting_channels=16, projection_channels=16, n_layers=3,
            uno_out_channels=[8, 16, 8], uno_n_modes=[[4, 4], [4, 4], [4, 4]],
            uno_scalings=[[1.0, 1.0], [0.5, 0.5], [2.0, 2.0]],
            horizontal_skips_map={2: 0}), 3, 16, 16))

    # -- MONAI -------------------------------------------------------------------------------
    add("monai_unet", "monai", "U-Net (residual units, instance norm)", monai)(
        lambda: _monai_2d(_monai().UNet(2, 1, 1, channels=(4, 8, 16), strides=(2, 2),
                                        num_res_units=1)))
    add("monai_basic_unet", "monai", "U-Net (BasicUNet)", monai)(
        lambda: _monai_2d(_monai().BasicUNet(2, 1, 1, features=(4, 4, 8, 8, 16, 4)), side=32))
    add("monai_basic_unetpp", "monai", "U-Net++ (nested skips)", monai)(
        lambda: _monai_2d(_monai().BasicUNetPlusPlus(2, 1, 1, features=(4, 4, 8, 8, 16, 4)),
                          side=32))
    add("monai_attention_unet", "monai", "U-Net (attention gates)", monai)(
        lambda: _monai_2d(_monai().AttentionUnet(2, 1, 1, channels=(4, 8, 16),
                                                 strides=(2, 2))))
    add("monai_dynunet", "monai", "U-Net (DynUNet / nnU-Net, residual)", monai)(
        lambda: _monai_2d(_monai().DynUNet(2, 1, 1, kernel_size=[3, 3, 3], strides=[1, 2, 2],
                                           upsample_kernel_size=[2, 2], filters=[4, 8, 16],
                                           res_block=True)))
    add("monai_segresnet", "monai", "SegResNet (group norm)", monai)(
        lambda: _monai_2d(_monai().SegResNet(2, init_filters=4, in_channels=1, out_channels=1,
                                             blocks_down=(1, 1, 1), blocks_up=(1, 1),
                                             norm=("GROUP", {"num_groups": 2}))))
    add("monai_resnet10", "monai", "ResNet (resnet10 layout, basic blocks, BN)", monai)(
        lambda: _monai_2d(_monai().ResNet("basic", [1, 1, 1, 1], [8, 16, 32, 64],
                                          spatial_dims=2, n_input_channels=1,
                                          num_classes=2), side=32))
    add("monai_densenet121", "monai", "DenseNet-121 (narrow: 8 init features, growth 4)",
        monai)(lambda: _monai_2d(_monai().DenseNet121(spatial_dims=2, in_channels=1,
                                                      out_channels=2, init_features=8,
                                                      growth_rate=4), side=32))
    add("monai_efficientnet_b0", "monai", "EfficientNet-B0 (SE, drop-connect, swish)", monai)(
        lambda: _monai_2d(_monai().EfficientNetBN("efficientnet-b0", pretrained=False,
                                                  spatial_dims=2, in_channels=1,
                                                  num_classes=2), side=32))
    add("monai_seresnet", "monai", "SE-ResNet (bottlenecks, layers 1-1-1-1)", monai)(
        lambda: _monai_2d(_monai().SENet(2, 1, "se_resnet_bottleneck", [1, 1, 1, 1], groups=1,
                                         reduction=16, inplanes=16, downsample_kernel_size=1,
                                         input_3x3=False, num_classes=2, dropout_prob=None),
                          side=32))
    add("monai_vit", "monai", "ViT (classification token)", monai)(
        lambda: _monai_2d(_monai().ViT(1, (16, 16), (4, 4), hidden_size=32, mlp_dim=64,
                                       num_layers=2, num_heads=4, spatial_dims=2,
                                       classification=True, num_classes=2)))
    add("monai_vit_keep_rearrange", "monai", "ViT, keep=[einops Rearrange]", monai,
        _keep_rearrange)(
        lambda: _monai_2d(_monai().ViT(1, (16, 16), (4, 4), hidden_size=32, mlp_dim=64,
                                       num_layers=2, num_heads=4, spatial_dims=2,
                                       classification=True, num_classes=2)))
    add("monai_unetr", "monai", "UNETR (ViT encoder + conv decoder)", monai)(
        lambda: _monai_2d(_monai().UNETR(1, 1, (32, 32), feature_size=4, hidden_size=32,
                                         mlp_dim=64, num_heads=4, spatial_dims=2), side=32))
    add("monai_flexible_unet", "monai", "FlexibleUNet (EfficientNet-B0 encoder, drop-connect)",
        monai)(lambda: _monai_2d(_monai().FlexibleUNet(
            1, 1, "efficientnet-b0", pretrained=False, spatial_dims=2,
            decoder_channels=(8, 8, 8, 8, 8)), side=32))
    add("monai_vnet", "monai", "VNet (residual down/up blocks, PReLU)", monai)(
        lambda: _monai_2d(_monai().VNet(spatial_dims=2, in_channels=1, out_channels=1,
                                        dropout_prob_down=0.0, dropout_prob_up=(0.0, 0.0)),
                          side=32))
    add("monai_segresnet_ds", "monai", "SegResNetDS (group norm, deep supervision off)", monai)(
        lambda: _monai_2d(_monai().SegResNetDS(spatial_dims=2, init_filters=4, in_channels=1,
                                               out_channels=1, blocks_down=(1, 1, 1))))
    add("monai_swin_unetr", "monai", "Swin-UNETR (shifted windows)", monai)(
        lambda: _monai_2d(_monai().SwinUNETR(1, 1, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4),
                                             feature_size=12, window_size=4, spatial_dims=2),
                          side=64))
    add("monai_highresnet", "monai", "HighResNet (dilated residual, channel padding)", monai)(
        lambda: _monai_2d(_monai().HighResNet(
            spatial_dims=2, in_channels=1, out_channels=1,
            layer_params=({"name": "conv_0", "n_features": 4, "kernel_size": 3},
                          {"name": "res_1", "n_features": 4, "kernels": (3, 3), "repeat": 1},
                          {"name": "res_2", "n_features": 8, "kernels": (3, 3), "repeat": 1},
                          {"name": "conv_1", "n_features": 16, "kernel_size": 1},
                          {"name": "conv_2", "kernel_size": 1}))))
    add("monai_regressor", "monai", "conv regressor (residual units)", monai)(
        lambda: _monai_2d(_monai().Regressor((1, 16, 16), (2,), channels=(4, 8),
                                             strides=(2, 2))))
    add("monai_autoencoder", "monai", "conv autoencoder", monai)(
        lambda: _monai_2d(_monai().AutoEncoder(2, 1, 1, channels=(4, 8), strides=(2, 2))))
    add("monai_var_autoencoder", "monai", "variational autoencoder (mean at inference)",
        monai)(lambda: _monai_2d(_monai().VarAutoEncoder(
            2, (1, 16, 16), 1, latent_size=8, channels=(4, 8), strides=(2, 2),
            use_mean_at_inference=True)))
    add("monai_generator", "monai", "generator (Linear -> reshape -> transposed convs)",
        monai)(lambda: tensor_case(_monai().Generator((8,), (8, 4, 4), channels=(8, 4, 1),
                                                       strides=(2, 2, 1)), 8))
    add("monai_fully_connected", "monai", "MLP (FullyConnectedNet, PReLU, dropout)", monai)(
        lambda: tensor_case(_monai().FullyConnectedNet(8, 2, [32, 32], dropout=0.1), 8))
    add("monai_mednext", "monai", "MedNeXt (depthwise 3x3, GroupNorm, expansion)", monai)(
        lambda: _monai_2d(_monai().MedNeXt(spatial_dims=2, init_filters=4, in_channels=1,
                                           out_channels=1, kernel_size=3,
                                           blocks_down=(1, 1, 1, 1), blocks_bottleneck=1,
                                           blocks_up=(1, 1, 1, 1)), side=32))

    # -- torchvision -------------------------------------------------------------------------
    tv = ("torchvision",)
    add("tv_resnet18", "torchvision", "ResNet-18 (basic blocks, BatchNorm)", tv)(
        lambda: _image(_tv().resnet18(num_classes=4)))
    add("tv_resnext_bottleneck", "torchvision", "ResNeXt (bottleneck, grouped 3x3)", tv)(
        lambda: _image(_tv().resnet.ResNet(_tv().resnet.Bottleneck, [1, 1, 1, 1], num_classes=4,
                                           groups=4, width_per_group=4)))
    add("tv_mobilenet_v2", "torchvision", "MobileNetV2 (inverted residuals, ReLU6)", tv)(
        lambda: _image(_tv().mobilenet_v2(num_classes=4, width_mult=0.25)))
    add("tv_mobilenet_v3_small", "torchvision",
        "MobileNetV3 (squeeze-excitation, hardswish)", tv)(
        lambda: _image(_tv().mobilenet_v3_small(num_classes=4, width_mult=0.25)))
    add("tv_efficientnet_b0", "torchvision",
        "EfficientNet-B0 (SE, stochastic depth)", tv)(
        lambda: _image(_tv().efficientnet_b0(num_classes=4)))
    add("tv_convnext", "torchvision", "ConvNeXt (LayerNorm2d, layer scale, stochastic depth)",
        tv)(lambda: _image(_tv().convnext.ConvNeXt(
            [_tv().convnext.CNBlockConfig(16, 32, 1), _tv().convnext.CNBlockConfig(32, None, 1)],
            stochastic_depth_prob=0.1, num_classes=4)))
    add("tv_regnet_y", "torchvision", "RegNetY (grouped, squeeze-excitation)", tv)(
        lambda: _image(_tv().regnet.RegNet(_tv().regnet.BlockParams.from_init_params(
            depth=4, w_0=8, w_a=8.0, w_m=2.0, group_width=4, se_ratio=0.25), num_classes=4)))
    add("tv_shufflenet_v2", "torchvision", "ShuffleNetV2 (channel split + shuffle)", tv)(
        lambda: _image(_tv().shufflenet_v2_x0_5(num_classes=4)))
    add("tv_densenet", "torchvision", "DenseNet (dense concatenation)", tv)(
        lambda: _image(_tv().densenet.DenseNet(growth_rate=8, block_config=(2, 2),
                                               num_init_features=8, bn_size=2,
                                               num_classes=4)))
    add("tv_squeezenet", "torchvision", "SqueezeNet 1.1 (fire modules: parallel concat)", tv)(
        lambda: _image(_tv().squeezenet1_1(num_classes=4)))
    add("tv_mnasnet", "torchvision", "MnasNet 0.5", tv)(
        lambda: _image(_tv().mnasnet0_5(num_classes=4)))
    add("tv_googlenet", "torchvision", "GoogLeNet (inception branches, no aux heads)", tv)(
        lambda: _image(_tv().GoogLeNet(num_classes=4, aux_logits=False, init_weights=True)))
    add("tv_vit", "torchvision", "ViT (class token, nn.MultiheadAttention)", tv)(
        lambda: _image(_tv().VisionTransformer(image_size=32, patch_size=8, num_layers=2,
                                               num_heads=2, hidden_dim=16, mlp_dim=32,
                                               num_classes=4)))
    add("tv_swin", "torchvision", "Swin (shifted windows, relative position bias)", tv)(
        lambda: _image(_tv().SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1],
                                             num_heads=[1, 2], window_size=[4, 4],
                                             num_classes=4)))
    add("tv_maxvit", "torchvision", "MaxViT (MBConv, block and grid attention)", tv)(
        lambda: _image(_tv().maxvit.MaxVit(input_size=(32, 32), stem_channels=8,
                                           partition_size=2, block_channels=[8, 16],
                                           block_layers=[1, 1], head_dim=4,
                                           stochastic_depth_prob=0.1, num_classes=4)))
    add("tv_efficientnet_v2_fused", "torchvision", "EfficientNetV2 (fused MBConv, MBConv)", tv)(
        lambda: _image(_tv().efficientnet.EfficientNet(
            [_tv().efficientnet.FusedMBConvConfig(1, 3, 1, 8, 8, 1),
             _tv().efficientnet.MBConvConfig(4, 3, 2, 8, 16, 1)], dropout=0.1, last_channel=32,
            num_classes=4)))
    add("tv_lraspp", "torchvision", "LR-ASPP segmentation (MobileNetV3 encoder, dict output)",
        tv)(lambda: _image(_tv().segmentation.lraspp_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=2), side=64))

    # -- timm --------------------------------------------------------------------------------
    tm = ("timm", "torchvision")
    for name, family, kwargs, side in _TIMM_MODELS:
        add(f"timm_{name.split(':')[-1].split('.')[-1].lower()}", "timm", family, tm)(
            lambda name=name, kwargs=kwargs, side=side: _image(_timm(name, **kwargs), side))

    # -- e3nn --------------------------------------------------------------------------------
    add("e3nn_gated_mlp", "e3nn", "equivariant MLP (o3.Linear + Gate)", e3nn)(
        lambda: tensor_case(EquivariantMLP(), 20))
    add("e3nn_gated_mlp_keep_gate", "e3nn", "equivariant MLP, keep=[e3nn Gate]", e3nn,
        _keep_gate)(lambda: tensor_case(EquivariantMLP(), 20))
    add("e3nn_tensor_product", "e3nn", "equivariant tensor product + spherical harmonics",
        e3nn)(lambda: Case(TensorProductNet(), (randn(BATCH, 4), randn(BATCH, 3, seed=1)),
                           lambda n: (randn(n, 4, seed=100 + n), randn(n, 3, seed=200 + n))))
    return rows


#: models on which LUMOS is wrong today: name -> what happens (the tests mark them
#: xfail(strict=True); the benchmark prints the diagnosis)
KNOWN_DEFECTS: dict[str, str] = {}

TABLE: list[Entry] = _build_table()
BY_NAME: dict[str, Entry] = {e.name: e for e in TABLE}
assert len(BY_NAME) == len(TABLE), "duplicate names in the third-party table"

__all__ = ["BATCH", "BY_NAME", "KNOWN_DEFECTS", "TABLE", "Case", "Entry", "graphs", "near", "randn",
           "random_like"]
