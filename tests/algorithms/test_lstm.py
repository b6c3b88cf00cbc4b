"""The LSTM meta-learner is an LSTM over [image, previous label] with a linear read-out: checked
against a hand-unrolled LSTM cell."""

from __future__ import annotations

import torch

from metakit.algorithms import LSTMMetaLearner
from metakit.algorithms.base import BuildContext
from metakit.models import Flatten
from metakit.tasks.sequence import SequenceBatch


def test_lstm_outputs_equal_a_hand_unrolled_cell():
    torch.manual_seed(0)
    alg = LSTMMetaLearner.from_config(Flatten(), BuildContext(ways=2, example_shape=(1, 2, 2), label_code=(1, 2)),
                                      hidden_size=3).double()
    assert alg.network.memory is None
    x = torch.rand(1, 4, 1, 2, 2, dtype=torch.float64)
    labels = torch.tensor([[1, 0, 0, 1]])
    logits = alg.predict(SequenceBatch(x, labels, torch.arange(2).view(1, 2, 1), 2, 2))[0, :, 0]
    cell, out = alg.network.controller, alg.network.output
    h = c = torch.zeros(3, dtype=torch.float64)
    previous = torch.zeros(2, dtype=torch.float64)
    for t in range(4):
        z = torch.cat([x[0, t].flatten(), previous])
        gates = cell.weight_ih @ z + cell.bias_ih + cell.weight_hh @ h + cell.bias_hh
        i, f, g, o = gates.chunk(4)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        assert torch.allclose(logits[t], out.weight @ h + out.bias, atol=1e-12)
        previous = torch.nn.functional.one_hot(labels[0, t], 2).double()
