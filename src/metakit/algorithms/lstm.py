"""The LSTM meta-learner: the MANN's controller without its external memory.

Hochreiter, Younger & Conwell, "Learning to learn using gradient descent", ICANN 2001: a recurrent
network that receives each input together with the previous target learns, across many tasks,
to learn a new task in its activations; Santoro et al. 2016 report it as the "LSTM" row beside
their memory-augmented network on the same sequence protocol (:mod:`metakit.tasks.sequence`).
Step ``t``: ``h_t, c_t = LSTM([encoder(x_t), code(y_{t-1})], (h_{t-1}, c_{t-1}))``, output
``W h_t`` (:class:`metakit.models.memory.MemoryAugmentedLSTM` with ``memory=None``).
"""

from __future__ import annotations

from torch import nn

from ._sequence import SequenceMetaLearner
from .base import register

__all__ = ["LSTMMetaLearner"]


@register("lstm")
class LSTMMetaLearner(SequenceMetaLearner):
    """An LSTM reading labelled sequences (see the module docstring).

    Args:
        model: the image encoder (``flatten``: raw pixels, as in Santoro et al.).
        hidden_size: LSTM units (Santoro et al.'s LSTM baseline: 200).
        label_code: (positions, alphabet) of the labels (default: the task's).
        example_shape: shape of one image (default: the task's).
    """

    def __init__(
        self,
        model: nn.Module,
        hidden_size: int = 200,
        label_code: tuple[int, int] | None = None,
        example_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        self._build(model, None, hidden_size, label_code, example_shape)
