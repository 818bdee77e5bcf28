"""torch-geometric's DimeNet++ on a graph built in plain torch.

PyG's ``DimeNet.forward`` builds its graph with ``radius_graph`` (torch-cluster) and
``triplets`` (torch-sparse), which have no wheels for this torch. :func:`dense_triplets` builds
the same edges and triplets densely; the rest of the forward is the package's, with its own
embedding, interaction and output blocks and its Bessel and spherical bases.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.nn.models import DimeNetPlusPlus
from torch_geometric.utils import scatter


def dense_triplets(pos: Tensor, batch: Tensor, cutoff: float):
    """Edges j->i within ``cutoff`` in one molecule and the triplets k->j->i (k != i), in the
    order ``torch_geometric.nn.models.dimenet.triplets`` returns them."""
    dist = torch.cdist(pos, pos)
    same = batch[:, None] == batch[None, :]
    eye = torch.eye(pos.shape[0], dtype=torch.bool, device=pos.device)
    row, col = (same & (dist < cutoff) & ~eye).nonzero().t()  # edge e: row[e] (j) -> col[e] (i)
    pairs = (col[None, :] == row[:, None]) & (row[None, :] != col[:, None])
    idx_ji, idx_kj = pairs.nonzero().t()  # edge ji reads every edge kj that ends in its j
    return col, row, col[idx_ji], row[idx_ji], row[idx_kj], idx_kj, idx_ji


class DenseDimeNetPlusPlus(DimeNetPlusPlus):
    """``DimeNetPlusPlus`` whose forward takes ``batch`` and builds its graph densely."""

    def forward(self, z: Tensor, pos: Tensor, batch: Tensor) -> Tensor:  # type: ignore[override]
        i, j, idx_i, idx_j, idx_k, idx_kj, idx_ji = dense_triplets(pos, batch, self.cutoff)
        dist = (pos[i] - pos[j]).pow(2).sum(dim=-1).sqrt()
        pos_jk, pos_ij = pos[idx_j] - pos[idx_k], pos[idx_i] - pos[idx_j]
        a = (pos_ij * pos_jk).sum(dim=-1)
        b = torch.cross(pos_ij, pos_jk, dim=1).norm(dim=-1)
        angle = torch.atan2(b, a)
        rbf = self.rbf(dist)
        sbf = self.sbf(dist, angle, idx_kj)
        x = self.emb(z, rbf, i, j)
        p = self.output_blocks[0](x, rbf, i, num_nodes=pos.size(0))
        for interaction_block, output_block in zip(self.interaction_blocks,
                                                   self.output_blocks[1:]):
            x = interaction_block(x, rbf, sbf, idx_kj, idx_ji)
            p = p + output_block(x, rbf, i, num_nodes=pos.size(0))
        return scatter(p, batch, dim=0, reduce="sum")
