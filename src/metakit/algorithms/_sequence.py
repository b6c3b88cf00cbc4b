"""What the model-based sequence learners share: feeding a labelled sequence to a recurrent network.

A sequence learner (:class:`~metakit.algorithms.mann.MANN`, :class:`~metakit.algorithms.lstm.LSTMMetaLearner`)
is an image encoder (the config's ``model``, e.g. ``flatten`` for raw pixels as in Santoro et
al. 2016) followed by a :class:`~metakit.models.memory.MemoryAugmentedLSTM`. At step ``t`` its input
is ``[encoder(x_t), code(y_{t-1})]`` (:func:`metakit.tasks.sequence.label_inputs`) and its output
the logits of every position of the label code, ``[positions, alphabet]``. Learning a new task
happens in the forward pass: the weights never change within an episode.

* ``meta_loss(batch)``: the cross-entropy of every step's label code, summed over the code's
  positions and averaged over steps and episodes; ``accuracy`` counts a step right when every
  position is. All the episodes of a meta-batch run through one time loop on ``[B, ...]`` tensors.
* ``adapt(support_x, support_y, ways)``: the support set is fed as a labelled sequence (in a fixed
  pseudo-random order: training sequences are shuffled, so a sorted support set would look
  unlike them); ``learner.predict(query_x)`` continues from the state after the support, every
  query independently, with the last support label as its label input, and returns the class
  scores ``sum_p log softmax(logits_p)[code_c(p)]`` ``[Q, ways]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.memory import MemoryAugmentedLSTM, select_state
from ..tasks.sequence import SequenceBatch, code_correct, label_inputs, one_hot_code
from .base import Algorithm, BuildContext

__all__ = ["SequenceLearner", "SequenceMetaLearner"]

#: seed of the order in which ``adapt`` feeds a support set
ADAPT_ORDER_SEED = 0


@dataclass(frozen=True)
class SequenceLearner:
    """A sequence model after reading a support set: ``predict(query_x)`` -> ``[Q, ways]`` class scores."""

    algorithm: "SequenceMetaLearner"
    state: Any
    last_label: Tensor  # [positions * alphabet] label input of every query
    codes: Tensor  # [ways, positions]

    def predict(self, query_x: Tensor) -> Tensor:
        q = query_x.shape[0]
        feats = self.algorithm.encode(query_x.unsqueeze(0))[0]  # [Q, F]
        inputs = torch.cat([feats, self.last_label.expand(q, -1).to(feats.dtype)], -1).unsqueeze(1)
        state = select_state(self.state, torch.zeros(q, dtype=torch.long, device=query_x.device))
        logits = self.algorithm.logits(self.algorithm.network(inputs, state).outputs)[:, 0]  # [Q, P, A]
        logp = logits.log_softmax(-1)  # [Q, P, A]
        picked = logp.unsqueeze(1).expand(-1, self.codes.shape[0], -1, -1).gather(
            -1, self.codes.unsqueeze(0).unsqueeze(-1).expand(q, -1, -1, 1)
        )
        return picked.squeeze(-1).sum(-1)


class SequenceMetaLearner(Algorithm):
    """Base of the sequence learners (see the module docstring); subclasses choose the memory."""

    task_kinds = ("sequence",)

    def _build(self, model: nn.Module, memory: str | None, hidden_size: int, label_code: tuple[int, int] | None,
               example_shape: tuple[int, ...] | None, **memory_options: Any) -> None:
        if label_code is None or example_shape is None:
            raise ValueError(
                f"{type(self).__name__} needs label_code (positions, alphabet) and example_shape; build it with "
                "from_config on a sequence task (task.family=sequence) or pass both"
            )
        self.model = model
        self.positions, self.alphabet = (int(v) for v in label_code)
        self.example_shape = tuple(int(v) for v in example_shape)
        with torch.no_grad():
            features = model(torch.zeros(1, *self.example_shape)).reshape(1, -1).shape[1]
        self.features = int(features)
        self.network = MemoryAugmentedLSTM(
            self.features + self.positions * self.alphabet, self.positions * self.alphabet, hidden_size, memory, **memory_options
        )

    @classmethod
    def from_config(cls, model: nn.Module, context: BuildContext, **options: Any) -> "SequenceMetaLearner":
        """Build with ``label_code`` and ``example_shape`` from the sequence task (``context``)."""
        if options.get("label_code") is None:
            if context.label_code is None:
                raise ValueError(
                    f"{cls.name} reads labelled sequences but this task has no label code; use task.family=sequence"
                )
            options["label_code"] = tuple(context.label_code)
        if options.get("example_shape") is None:
            options["example_shape"] = tuple(context.example_shape)
        algorithm = cls(model, **options)
        slots = algorithm.slots
        if slots is not None and context.ways is not None and slots < context.ways:
            raise ValueError(
                f"algorithm.slots={slots} but the episodes hold {context.ways} classes (task.classes_per_episode): the "
                f"memory needs at least one location per class; raise algorithm.slots (the paper: 128)"
            )
        return algorithm

    @property
    def slots(self) -> int | None:
        memory = self.network.memory
        return None if memory is None else int(memory.slots)  # type: ignore[union-attr]

    # -- the forward pass ---------------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """``[B, T, *example_shape]`` images -> ``[B, T, features]``."""
        if tuple(x.shape[2:]) != self.example_shape:
            raise ValueError(
                f"images have shape {list(x.shape[2:])} but the model was built for {list(self.example_shape)}; "
                "give images of the training size (metakit predict resizes them as in training)"
            )
        b, t = x.shape[:2]
        return self.model(x.reshape(b * t, *self.example_shape)).reshape(b, t, -1)

    def logits(self, outputs: Tensor) -> Tensor:
        return outputs.unflatten(-1, (self.positions, self.alphabet))

    def _check_batch(self, batch: Any) -> SequenceBatch:
        if not isinstance(batch, SequenceBatch):
            raise TypeError(
                f"{type(self).__name__} takes a SequenceBatch (task.family=sequence), got {type(batch).__name__}"
            )
        if (batch.positions, batch.alphabet) != (self.positions, self.alphabet):
            raise ValueError(
                f"the batch's labels are coded as {batch.positions} x {batch.alphabet} (positions x alphabet) but the model "
                f"reads and writes {self.positions} x {self.alphabet}; evaluate it with the label encoding it was trained on"
            )
        return batch

    def run(self, batch: SequenceBatch, trace: bool = False) -> Any:
        batch = self._check_batch(batch)
        inputs = torch.cat([self.encode(batch.x), label_inputs(batch).to(batch.x.dtype)], -1)
        return self.network(inputs, trace=trace)

    def meta_loss(self, batch: SequenceBatch) -> tuple[Tensor, dict[str, float]]:
        logits = self.logits(self.run(batch).outputs)  # [B, T, P, A]
        targets = batch.targets()
        loss = F.cross_entropy(logits.flatten(0, 2), targets.flatten(), reduction="none").view(targets.shape).sum(-1).mean()
        accuracy = code_correct(logits.detach(), batch).float().mean()
        return loss, {"loss": float(loss.detach()), "accuracy": float(accuracy)}

    def predict(self, batch: SequenceBatch) -> Tensor:  # type: ignore[override]
        """``[B, T, positions, alphabet]`` logits of every step's label."""
        return self.logits(self.run(batch).outputs)

    def memory_trace(self, batch: SequenceBatch) -> dict[str, Tensor]:
        """Every step's read and write weights ``[B, T, heads, slots]`` (``read``, ``write``) and the logits."""
        if self.network.memory is None:
            raise ValueError(f"{type(self).__name__} has no external memory to trace")
        out = self.run(batch, trace=True)
        return {"read": out.read_weights, "write": out.write_weights, "logits": self.logits(out.outputs)}

    # -- few-shot use ------------------------------------------------------------------------------
    def codes_for(self, ways: int, device: torch.device | None = None) -> Tensor:
        """``[ways, positions]`` label codes of classes ``0 .. ways-1`` (the first ``ways`` codes in order)."""
        capacity = self.alphabet**self.positions
        if ways > capacity:
            what = f"one-hot labels of width {self.alphabet}" if self.positions == 1 else (
                f"{capacity} distinct {self.positions}-character labels")
            raise ValueError(
                f"ways={ways} classes but the model was trained with {what}; give at most {capacity} classes"
            )
        powers = self.alphabet ** torch.arange(self.positions - 1, -1, -1, device=device)
        return (torch.arange(ways, device=device).unsqueeze(1) // powers) % self.alphabet

    def adapt(self, support_x: Tensor, support_y: Tensor, ways: int | None = None) -> SequenceLearner:
        if support_x.dim() < 2 or support_y.shape != support_x.shape[:1] or support_x.shape[0] == 0:
            raise ValueError(
                f"support_x has shape {tuple(support_x.shape)} and support_y {tuple(support_y.shape)}; expected "
                "[S, *example_shape] and [S] with S >= 1"
            )
        ways = int(support_y.max()) + 1 if ways is None else ways
        if int(support_y.min()) < 0 or int(support_y.max()) >= ways:
            raise ValueError(f"support_y holds labels {int(support_y.min())}..{int(support_y.max())}; they must be 0..{ways - 1}")
        slots = self.slots
        if slots is not None and ways > slots:
            raise ValueError(f"ways={ways} classes but the memory has {slots} locations; give at most {slots} classes")
        codes = self.codes_for(ways, support_x.device)
        g = torch.Generator().manual_seed(ADAPT_ORDER_SEED)
        order = torch.randperm(support_x.shape[0], generator=g).to(support_x.device)
        x, y = support_x[order].unsqueeze(0), support_y[order].unsqueeze(0).long()
        batch = SequenceBatch(x, y, codes.unsqueeze(0), self.alphabet, ways)
        state = self.run(batch).state
        last = one_hot_code(codes[y[0, -1]], self.alphabet)
        return SequenceLearner(self, state, last, codes)
