"""Recurrent layers (LSTM, GRU, RNN) gate their hidden units, embeddings their dimensions:
exact after compaction in every layer/direction configuration."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lumos
from lumos.testing import assert_compacts_exactly


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
    # nearly every parameter depends on a gate (one unit of the stream and one hidden unit
    # stay open: each is the only path from the inputs to the output)
    assert sm.smallest_fraction() < 0.1
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


class CellLoop(nn.Module):
    """A cell unrolled in Python over a fixed number of steps (the state starts as None)."""

    def __init__(self, kind: str, given_state: str | None = None, steps: int = 4) -> None:
        super().__init__()
        self.kind, self.given_state, self.steps = kind, given_state, steps
        self.inp = nn.Linear(3, 5)
        self.cell = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn": nn.RNNCell}[kind](5, 7)
        self.head = nn.Linear(7, 2)

    def forward(self, x, h0):
        if self.given_state == "input":  # a model input: its features are the hidden units
            state = (h0, h0) if self.kind == "lstm" else h0
        elif self.given_state == "made":  # made here, with a literal width
            state = torch.full((x.shape[1], 7), 0.5)
        else:
            state = None
        for t in range(self.steps):
            state = self.cell(torch.relu(self.inp(x[t])), state)
        return self.head(state[0] if self.kind == "lstm" else state)


@pytest.mark.parametrize("state", [None, "input"])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_a_cell_in_a_loop_is_gated_per_hidden_unit_and_compacts_exactly(kind, state):
    torch.manual_seed(0)
    x, h0 = torch.randn(4, 6, 3), torch.randn(6, 7)
    check = assert_compacts_exactly(CellLoop(kind, state), (x, h0), batch_sizes=None)
    sm = check.sparse_model
    names = {g.name for g in sm.graph_info.groups}
    assert "inp" in names and ("cell" in names or state == "input"), sm.report()
    if state == "input":  # the state's features are the cell's hidden units
        assert "h0" in names and "cell" not in names
    # the cell's weight_hh is gated once per forward, not once per time step
    assert len(sm.graph_info.records.param_sites) == 1


def test_a_cell_given_a_state_of_its_own_is_kept_whole_and_says_so():
    torch.manual_seed(0)
    x, h0 = torch.randn(4, 6, 3), torch.randn(6, 7)
    sm = lumos.sparsify(CellLoop("gru", given_state="made"), (x, h0), budget=0.5)
    assert "cell" not in {g.name for g in sm.graph_info.groups}
    assert "state LUMOS does not track" in sm.report()
    assert_compacts_exactly(sm, (x, h0), batch_sizes=None)


class PackedGRU(nn.Module):
    """Variable-length sequences the usual way: pack, run the GRU, read the last hidden state."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.rnn = nn.Linear(6, 16), nn.GRU(16, 32, batch_first=True)
        self.head = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x, lengths):
        packed = nn.utils.rnn.pack_padded_sequence(self.inp(x), lengths, batch_first=True,
                                                   enforce_sorted=False)
        _, h = self.rnn(packed)
        return self.head(h[-1])


def test_a_packed_sequence_into_a_recurrent_layer_traces_and_compacts_exactly():
    """fx's shape pass could not record a PackedSequence and blamed the example inputs; the
    recurrent layer reading one is kept whole, the head after it is still gated."""
    torch.manual_seed(0)
    model = PackedGRU()
    x, lengths = torch.randn(4, 10, 6), torch.tensor([10, 7, 5, 3])
    sm = lumos.sparsify(model, (x, lengths), budget=0.9)
    sm.enforce_budget(0.9)
    sm.eval()
    small = sm.compact()
    assert small.get_submodule("head.0").out_features < 32  # the head's neurons are gated
    other = torch.randn(3, 8, 6), torch.tensor([8, 2, 6])
    for args in ((x, lengths), other):
        torch.testing.assert_close(small(*args), sm(*args))
