"""A graph neural network (torch-geometric): prune hidden dims across message passing and find
which node features matter.

    python examples/gnn_graphs.py [--smoke]

Your data: graphs as (x, edge_index, batch) in torch-geometric's format — node features, edges
in both directions, and the graph each node belongs to. Here: random molecule-like graphs whose
target is, summed over bonds, the product of one atom's feature 0 and the other's feature 1
(both ways round); 4 node features are noise. A SAGEConv with sum aggregation keeps an atom's
own features apart from its neighbours' sum, so the layers after it can form the product.
"""

import argparse

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import GINConv, SAGEConv, global_add_pool

import lumos
from lumos.training import train


def make_graphs(n_graphs: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    graphs = []
    for _ in range(n_graphs):
        n = int(torch.randint(6, 16, (1,), generator=g))
        src = torch.arange(n - 1)
        extra = torch.randint(0, n, (2, n // 2), generator=g)
        edges = torch.cat([torch.stack([src, src + 1]), extra], dim=1)
        edge_index = torch.cat([edges, edges.flip(0)], dim=1)
        x = torch.randn(n, 6, generator=g)  # features 0-1 matter, 2-5 are noise
        a, b = edges
        y = (x[a, 0] * x[b, 1] + x[b, 0] * x[a, 1]).sum().view(1)
        graphs.append((x, edge_index, y))
    return graphs


def collate(graphs):
    xs, edges, batch, ys, offset = [], [], [], [], 0
    for k, (x, edge_index, y) in enumerate(graphs):
        xs.append(x)
        edges.append(edge_index + offset)
        batch.append(torch.full((x.shape[0],), k))
        ys.append(y)
        offset += x.shape[0]
    return (torch.cat(xs), torch.cat(edges, dim=1), torch.cat(batch)), torch.stack(ys)


class Net(nn.Module):
    def __init__(self, d_in: int = 6, hidden: int = 64) -> None:
        super().__init__()
        self.sage = SAGEConv(d_in, hidden, aggr="add")
        self.gin = GINConv(nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(),
                                         nn.Linear(hidden, hidden)))
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x, edge_index, batch):
        h = F.relu(self.sage(x, edge_index))
        h = F.relu(self.gin(h, edge_index))
        return self.head(global_add_pool(h, batch))


def main(smoke: bool = False) -> dict:
    train_graphs = make_graphs(200 if smoke else 3000, seed=0)
    val_inputs, val_y = collate(make_graphs(100 if smoke else 500, seed=1))
    loader = torch.utils.data.DataLoader(train_graphs, batch_size=32, shuffle=True,
                                         collate_fn=collate,
                                         generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = Net()
    example = collate(train_graphs[:4])[0]
    sm = lumos.sparsify(model, example, budget=0.3)  # edge_index and batch are never gated
    train(sm, loader, epochs=5 if smoke else 60, lr=2e-3)

    small = sm.compact()
    with torch.no_grad():
        r2 = lumos.metrics.r2(small(*val_inputs), val_y)
    print(sm.report())
    print(f"validation R² {r2:.4f}; kept node features: {sm.selected_features()['x']}")
    if smoke:  # seconds of training on a few hundred samples: a check, not a result
        print("(smoke size: this checks that the example runs; far too little data and "
              "training for a meaningful R² or feature set. Run it without --smoke for the "
              "documented result: docs/results/examples.md)")
    return {"r2": r2, "small": small, "features": sm.selected_features()["x"]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="a few seconds on a laptop")
    main(parser.parse_args().smoke)
