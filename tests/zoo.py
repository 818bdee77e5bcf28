"""A zoo of the architectures SciML users write, each with a small synthetic batch.

Used by the coordinator tests: every model here must sparsify, train under a budget, and compact
exactly. ``ZOO[name]()`` returns ``(model, inputs tuple, target)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# torch-geometric is optional (the workloads extra): without it the graph models are left out.
try:
    from torch_geometric.nn import (
        GATConv,
        GCNConv,
        GINConv,
        SAGEConv,
        global_add_pool,
        global_mean_pool,
    )
except ImportError:
    HAS_TORCH_GEOMETRIC = False
else:
    HAS_TORCH_GEOMETRIC = True

from lumos.layers import SpectralConv2d


class ResidualMLP(nn.Module):
    def __init__(self, d_in: int = 10, width: int = 48, blocks: int = 3) -> None:
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(width, 2 * width), nn.SiLU(), nn.Linear(2 * width, width))
            for _ in range(blocks)
        )
        self.out = nn.Linear(width, 2)

    def forward(self, x):
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(F.silu(h))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
            if stride != 1 or c_in != c_out
            else nn.Identity()
        )

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.skip(x))


class ResNet(nn.Module):
    def __init__(self, c_in: int = 4, width: int = 16, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(c_in, width, 3, padding=1), nn.BatchNorm2d(width),
                                  nn.ReLU())
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        h = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(h), 1))


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(c_out, c_out), nn.ReLU(),
    )


class UNet(nn.Module):
    def __init__(self, c_in: int = 3, width: int = 8) -> None:
        super().__init__()
        self.enc1 = _double_conv(c_in, width)
        self.enc2 = _double_conv(width, 2 * width)
        self.bottom = _double_conv(2 * width, 4 * width)
        self.up2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2)
        self.dec2 = _double_conv(4 * width, 2 * width)
        self.up1 = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.dec1 = _double_conv(2 * width + width, width)
        self.out = nn.Conv2d(width, 1, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        b = self.bottom(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.out(d1)


class CNN3D(nn.Module):
    def __init__(self, c_in: int = 3, width: int = 8, side: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(c_in, width, 3, padding=1), nn.BatchNorm3d(width), nn.LeakyReLU(0.1),
            nn.AvgPool3d(2),
            nn.Conv3d(width, 2 * width, 3, padding=1), nn.BatchNorm3d(2 * width),
            nn.LeakyReLU(0.1), nn.MaxPool3d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * (side // 4) ** 3, 32), nn.ReLU(), nn.Linear(32, 4)
        )

    def forward(self, x):
        return self.head(self.features(x))


class DepthwiseSeparableCNN(nn.Module):
    """MobileNet-style blocks: a depthwise conv (groups = channels, multiplier 2) between
    pointwise convs, with BatchNorm; the depthwise channels live and die with their source."""

    def __init__(self, c_in: int = 3, width: int = 12) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(c_in, width, 3, padding=1), nn.BatchNorm2d(width),
                                  nn.ReLU())
        self.depthwise = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, padding=1, groups=width), nn.BatchNorm2d(2 * width),
            nn.ReLU())
        self.pointwise = nn.Sequential(nn.Conv2d(2 * width, width, 1), nn.ReLU())
        self.head = nn.Linear(width, 2)

    def forward(self, x):
        h = self.pointwise(self.depthwise(self.stem(x)))
        return self.head(h.mean(dim=(2, 3)))


class Transformer(nn.Module):
    def __init__(self, d_in: int = 6, d_model: int = 32, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(d_in, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout=0.0,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, 1)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(dim=1))


class GCN(nn.Module):
    def __init__(self, d_in: int = 7, hidden: int = 32) -> None:
        super().__init__()
        self.convs = nn.ModuleList([GCNConv(d_in, hidden), GCNConv(hidden, hidden),
                                    GCNConv(hidden, hidden)])
        self.head = nn.Linear(hidden, 1)

    def forward(self, x, edge_index, batch):
        h = F.relu(self.convs[0](x, edge_index))
        for conv in self.convs[1:]:
            h = h + F.relu(conv(h, edge_index))
        return self.head(global_mean_pool(h, batch))


class GraphSAGE(nn.Module):
    """SAGEConv (mean, root weight) with a skip connection across the second layer."""

    def __init__(self, d_in: int = 7, hidden: int = 32) -> None:
        super().__init__()
        self.conv1 = SAGEConv(d_in, hidden)
        self.conv2 = SAGEConv(hidden, hidden, aggr="max")
        self.head = nn.Linear(hidden, 1)

    def forward(self, x, edge_index, batch):
        h = F.relu(self.conv1(x, edge_index))
        h = h + F.relu(self.conv2(h, edge_index))
        return self.head(global_mean_pool(h, batch))


class GIN(nn.Module):
    def __init__(self, d_in: int = 7, hidden: int = 32) -> None:
        super().__init__()

        def mlp(i: int) -> nn.Sequential:
            return nn.Sequential(nn.Linear(i, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden))

        self.conv1 = GINConv(mlp(d_in), train_eps=True)
        self.conv2 = GINConv(mlp(hidden))
        self.head = nn.Linear(2 * hidden, 1)

    def forward(self, x, edge_index, batch):
        h1 = F.relu(self.conv1(x, edge_index))
        h2 = F.relu(self.conv2(h1, edge_index))
        return self.head(global_add_pool(torch.cat([h1, h2], dim=-1), batch))


class GAT(nn.Module):
    def __init__(self, d_in: int = 7, hidden: int = 8, heads: int = 4) -> None:
        super().__init__()
        self.conv1 = GATConv(d_in, hidden, heads=heads)
        self.conv2 = GATConv(hidden * heads, hidden, heads=heads, residual=True)
        self.conv3 = GATConv(hidden * heads, 16, heads=1, concat=False)
        self.head = nn.Linear(16, 1)

    def forward(self, x, edge_index, batch):
        h = F.elu(self.conv1(x, edge_index))
        h = F.elu(self.conv2(h, edge_index))
        return self.head(global_mean_pool(self.conv3(h, edge_index), batch))


class FNO(nn.Module):
    def __init__(self, c_in: int = 3, width: int = 16, modes: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.lift = nn.Conv2d(c_in, width, 1)
        self.spectral = nn.ModuleList(SpectralConv2d(width, width, modes, modes)
                                      for _ in range(layers))
        self.pointwise = nn.ModuleList(nn.Conv2d(width, width, 1) for _ in range(layers))
        self.project = nn.Sequential(nn.Conv2d(width, 32, 1), nn.GELU(), nn.Conv2d(32, 1, 1))

    def forward(self, a):
        h = self.lift(a)
        for spectral, pointwise in zip(self.spectral, self.pointwise):
            h = F.gelu(spectral(h) + pointwise(h))
        return self.project(h)


def random_graphs(n_graphs: int = 6, nodes: int = 12, d_in: int = 7, seed: int = 0):
    """A disjoint union of random undirected graphs, PyG style: (x, edge_index, batch)."""
    g = torch.Generator().manual_seed(seed)
    xs, edges, batch = [], [], []
    for k in range(n_graphs):
        src = torch.randint(0, nodes, (2 * nodes,), generator=g)
        dst = torch.randint(0, nodes, (2 * nodes,), generator=g)
        e = torch.stack([torch.cat([src, dst]), torch.cat([dst, src])]) + k * nodes
        xs.append(torch.randn(nodes, d_in, generator=g))
        edges.append(e)
        batch.append(torch.full((nodes,), k))
    return torch.cat(xs), torch.cat(edges, dim=1), torch.cat(batch)


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _case(model: nn.Module, inputs: tuple, out_shape: tuple):
    return model, inputs, _randn(*out_shape, seed=1)


ZOO = {
    "residual_mlp": lambda: _case(ResidualMLP(), (_randn(64, 10),), (64, 2)),
    "resnet_bn_skip": lambda: _case(ResNet(), (_randn(16, 4, 12, 12),), (16, 3)),
    "unet_concat_skips": lambda: _case(UNet(), (_randn(8, 3, 16, 16),), (8, 1, 16, 16)),
    "cnn3d_regressor": lambda: _case(CNN3D(), (_randn(8, 3, 8, 8, 8),), (8, 4)),
    "transformer_encoder": lambda: _case(Transformer(), (_randn(16, 9, 6),), (16, 1)),
    "gcn": lambda: _case(GCN(), random_graphs(), (6, 1)),
    "graphsage": lambda: _case(GraphSAGE(), random_graphs(), (6, 1)),
    "depthwise_separable_cnn": lambda: _case(DepthwiseSeparableCNN(), (_randn(16, 3, 10, 10),),
                                             (16, 2)),
    "gin": lambda: _case(GIN(), random_graphs(), (6, 1)),
    "gat": lambda: _case(GAT(), random_graphs(), (6, 1)),
    "fno": lambda: _case(FNO(), (_randn(8, 3, 16, 16),), (8, 1, 16, 16)),
}

GRAPH_MODELS = ("gcn", "graphsage", "gin", "gat")  # need torch-geometric
if not HAS_TORCH_GEOMETRIC:
    for _name in GRAPH_MODELS:
        del ZOO[_name]
