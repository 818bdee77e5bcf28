"""Recurrent layers (LSTM, GRU, RNN) gate their hidden units, embeddings their dimensions:
exact after compaction in every layer/direction configuration."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lumos


class Sequence(nn.Module):
    def __init__(self, cell, layers: int, bidirectional: bool):
        super().__init__()
        self.emb, self.inp = nn.Embedding(20, 8), nn.Linear(5, 8)
        self.rnn = cell(8, 12, num_layers=layers, batch_first=True, bidirectional=bidirectional)
        self.head = nn.Linear(12 * (2 if bidirectional else 1), 1)
        self.state_head = nn.Linear(12, 1)
        self.lstm = cell is nn.LSTM

    def forward(self, tokens, x):
        out, states = self.rnn(self.emb(tokens) + self.inp(x))
        h_n = states[0] if self.lstm else states
        return self.head(out[:, -1]) + self.state_head(h_n[-1])


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU, nn.RNN])
@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, False), (2, True)])
def test_recurrent_hidden_units_and_embedding_dims_are_gated_and_exact(cell, layers,
                                                                        bidirectional):
    torch.manual_seed(0)
    tokens, x = torch.randint(0, 20, (4, 7)), torch.randn(4, 7, 5)
    sm = lumos.sparsify(Sequence(cell, layers, bidirectional), (tokens, x), budget=0.3)
    assert {g.name for g in sm.graph_info.groups} == {"x", "emb", "rnn"}
    assert sm.smallest_fraction() < 0.05  # nearly every parameter depends on a gate
    lumos.testing.assert_compacts_exactly(sm, (tokens, x))
    with torch.no_grad():
        sm.gates.log_alpha[:] = 10.0
        rnn = sm.graph_info.groups[[g.name for g in sm.graph_info.groups].index("rnn")]
        sm.gates.log_alpha[rnn.offset:rnn.offset + 5] = -10.0
    small = sm.eval().compact()
    assert small.get_submodule("rnn").hidden_size == 7
    torch.testing.assert_close(small(tokens, x), sm(tokens, x))


def test_recurrent_layer_with_a_projection_is_kept_whole_and_listed():
    lstm = nn.Sequential(nn.Linear(4, 8))
    model = nn.LSTM(8, 8, proj_size=3, batch_first=True)

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.rnn, self.head = lstm, model, nn.Linear(3, 1)

        def forward(self, x):
            return self.head(self.rnn(self.inp(x))[0])

    sm = lumos.sparsify(Wrap(), torch.randn(2, 5, 4), budget=0.5)
    assert "proj_size" in sm.report()
    lumos.testing.assert_compacts_exactly(sm, torch.randn(2, 5, 4))
