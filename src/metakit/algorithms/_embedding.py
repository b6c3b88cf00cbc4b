"""Machinery shared by the algorithms that classify through an embedding network: the
metric-based methods (Prototypical, Siamese, Matching, Relation networks, nearest neighbour /
centroid) and the transfer baseline (Baseline, Baseline++), which fine-tunes a head on
embedded support examples.

Such an algorithm is an :class:`EmbeddingAlgorithm`: an ``embed(x)`` network and a batched rule
``task_scores(support_z, support_y, query_z, ways) -> [B, Q, ways]`` that scores the query
embeddings of ``B`` tasks given their support embeddings. From these two pieces the class
provides the rest of the protocol:

* :meth:`EmbeddingAlgorithm.predict` encodes the support and query images of every task of a
  batch in **one** encoder call and scores all tasks at once;
* :meth:`EmbeddingAlgorithm.adapt` embeds one task's support set and returns a
  :class:`SupportLearner` that embeds queries and applies the same rule (so training,
  batched evaluation and single-task use share one code path).

The default :meth:`EmbeddingAlgorithm.embed` runs ``self.encoder`` through :func:`run_encoder`
(chunked when the result does not depend on the batch) and flattens its output.

The validation helpers raise errors that name the argument, show the value and say how to fix
it; every algorithm of this family calls them at its boundary.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tasks.episode import EpisodeBatch
from .base import Algorithm, BuildContext, image_model_defaults

__all__ = [
    "EmbeddingAlgorithm",
    "SupportLearner",
    "check_batch",
    "check_encoder",
    "check_query",
    "check_support",
    "check_every_class_present",
    "class_reduce",
    "encode_batch",
    "feature_shape_of",
    "check_choice",
    "check_positive",
    "batch_dependent",
    "run_encoder",
    "eval_mode",
    "EMBED_CHUNK_VALUES",
]

#: inputs are encoded in chunks of at most this many input values when the encoder is not
#: batch-dependent (a 50-episode batch of 20-way 5-shot Omniglot is 20,000 images; one call would
#: hold a 4 GB first activation). 2**17 values are 167 Omniglot images, ~34 MB per Conv4
#: activation. Measured on Conv4, 28x28, in CPU time on a loaded 2-core machine, 167 against
#: 1,337 images per call: one thread 1,789 against 1,075 images per CPU-second; two threads with
#: OMP_WAIT_POLICY=passive 1,659 against 1,119. The difference is kernel time of page faults on
#: large allocations.
EMBED_CHUNK_VALUES = 1 << 17

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def describe(v: object) -> str:
    """``tensor of shape (..) and dtype ..`` or the type name, for error messages."""
    if isinstance(v, Tensor):
        return f"tensor of shape {tuple(v.shape)} and dtype {v.dtype}"
    return type(v).__name__


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``; otherwise a ValueError with the closest choice."""
    if value not in choices:
        import difflib

        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{name}={value!r} is not known{hint} Use one of: {', '.join(choices)}")
    return value  # type: ignore[return-value]


def check_positive(name: str, value: object, kind: type = float, allow_zero: bool = False) -> None:
    """Raise ValueError unless ``value`` is a (finite) positive number of ``kind`` (int or float)."""
    ok_types = (int,) if kind is int else (int, float)
    bad = isinstance(value, bool) or not isinstance(value, ok_types)
    if not bad:
        v = float(value)  # type: ignore[arg-type]
        bad = not (v == v and abs(v) != float("inf")) or (v < 0 if allow_zero else v <= 0)
    if bad:
        what = "int" if kind is int else "number"
        sign = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}={value!r} must be a finite {what} {sign}")


def check_encoder(encoder: object) -> nn.Module:
    """``encoder`` if it is a ``torch.nn.Module``; otherwise a TypeError naming its type."""
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"encoder must be a torch.nn.Module, got {type(encoder).__name__}")
    return encoder


def check_query(query_x: object) -> Tensor:
    """``query_x`` if it is a tensor ``[Q, *x_shape]``; otherwise a TypeError showing what it is."""
    if not isinstance(query_x, Tensor) or query_x.dim() < 1:
        raise TypeError(f"query_x must be a tensor [Q, *x_shape], got {describe(query_x)}")
    return query_x


def batch_dependent(encoder: nn.Module) -> bool:
    """Whether ``encoder``'s output for one input depends on the other inputs of the call: a
    BatchNorm layer normalising with batch statistics (training mode, or always when built with
    ``track_running_stats=False``)."""
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or m.running_mean is None)
        for m in encoder.modules()
    )


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in ``eval()`` mode inside the block; afterwards every submodule gets back its
    *own* previous mode (``module.train(was_training)`` would instead set them all to
    ``module``'s mode, e.g. switch a borrowed or frozen encoder to training mode)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


def run_encoder(encoder: nn.Module, x: Tensor, chunk_values: int = EMBED_CHUNK_VALUES) -> Tensor:
    """``encoder(x)``, computed in chunks of at most ``chunk_values`` input values when the
    encoder is not :func:`batch_dependent` (same result, bounded memory); one call otherwise, so
    that batch statistics cover the whole input."""
    per_example = max(1, x[0].numel()) if x.shape[0] else 1
    chunk = max(1, chunk_values // per_example)
    if x.shape[0] <= chunk or batch_dependent(encoder):
        return encoder(x)
    return torch.cat([encoder(x[i : i + chunk]) for i in range(0, x.shape[0], chunk)])


def check_batch(batch: object, algorithm: str) -> EpisodeBatch:
    """Check that ``batch`` is a classification :class:`EpisodeBatch` (labels ``[B, S]``)."""
    if not isinstance(batch, EpisodeBatch):
        raise TypeError(f"batch must be an EpisodeBatch, got {type(batch).__name__}")
    if batch.ways is None:
        raise ValueError(
            f"batch.ways is None (a regression batch); {algorithm} classifies: give integer labels and ways"
        )
    if batch.support_y.dim() != 2 or batch.query_y.dim() != 2:
        raise ValueError(
            f"support_y has shape {tuple(batch.support_y.shape)} and query_y {tuple(batch.query_y.shape)}; "
            f"{algorithm} needs one integer label per example ([tasks, examples])"
        )
    return batch


def check_support(support_x: object, support_y: object, ways: object, algorithm: str) -> int:
    """Validate one task's support set for ``adapt``; return ``ways`` (default ``max(y) + 1``)."""
    if not isinstance(support_x, Tensor) or not isinstance(support_y, Tensor):
        raise TypeError(
            f"support_x and support_y must be tensors, got {describe(support_x)} and {describe(support_y)}"
        )
    if support_y.dtype not in _INT_DTYPES or support_y.dim() != 1:
        raise TypeError(
            f"support_y must be a 1-D integer label tensor [S], got {describe(support_y)}; "
            f"{algorithm} classifies (labels 0..ways-1)"
        )
    if support_x.dim() < 1 or support_x.shape[0] != support_y.shape[0]:
        raise ValueError(
            f"support_x has shape {tuple(support_x.shape)} but support_y has shape {tuple(support_y.shape)}; "
            "give one label per support example"
        )
    if support_y.numel() == 0:
        raise ValueError("the support set is empty; give at least one labelled example per class")
    lo, hi = int(support_y.min()), int(support_y.max())
    if ways is None:
        ways = hi + 1
    if isinstance(ways, bool) or not isinstance(ways, int) or ways < 1:
        raise ValueError(f"ways={ways!r} must be a positive int")
    if lo < 0 or hi >= ways:
        raise ValueError(f"support_y holds labels {lo}..{hi} but ways={ways}: labels must be in 0..{ways - 1}")
    return ways


def check_every_class_present(labels: Tensor, ways: int) -> None:
    """Raise ValueError if some task of ``labels [B, S]`` has no support example of a class."""
    counts = F.one_hot(labels.long(), ways).sum(1)  # [B, W]
    if bool((counts == 0).any()):
        task, label = (int(v) for v in torch.nonzero(counts == 0)[0])
        present = sorted(int(v) for v in torch.unique(labels[task]))
        raise ValueError(
            f"support_y of task {task} has no example of label {label} (labels present: {present}, "
            f"ways={ways}); every label 0..{ways - 1} needs at least one support example"
        )


def class_reduce(scores: Tensor, labels: Tensor, ways: int, reduce: Literal["max", "logsumexp"]) -> Tensor:
    """Pool per-support-example scores into per-class scores, batched over tasks.

    Args:
        scores: ``[B, Q, S]``, a score of every query against every support example.
        labels: ``[B, S]`` support labels in ``0..ways-1``.
        ways: number of classes.
        reduce: ``"max"`` (the best-matching example of the class: nearest-neighbour rule) or
            ``"logsumexp"`` (``log sum_{i in class} exp(score_i)``: the log of the attention mass
            a softmax over the support puts on the class, before normalisation).

    Returns:
        ``[B, Q, ways]``. Every class needs at least one support example (see
        :func:`check_every_class_present`).
    """
    member = F.one_hot(labels.long(), ways).bool()  # [B, S, W]
    masked = scores.unsqueeze(-1).masked_fill(~member.unsqueeze(1), float("-inf"))  # [B, Q, S, W]
    if reduce == "max":
        return masked.amax(2)
    return masked.logsumexp(2)


def encode_batch(embed, batch: EpisodeBatch) -> tuple[Tensor, Tensor]:
    """Embed the support and query inputs of every task of ``batch`` in one call of ``embed``.

    Returns ``support_z [B, S, *z_shape]`` and ``query_z [B, Q, *z_shape]``. In training mode a
    BatchNorm layer of the encoder therefore normalises with the statistics of the whole
    meta-batch; in ``eval()`` mode (running statistics) every image is embedded independently
    (the algorithms' ``embed`` then runs the encoder in chunks, see :func:`run_encoder`).
    """
    b, s = batch.support_y.shape[:2]
    q = batch.query_y.shape[1]
    z = embed(torch.cat([batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)]))
    return z[: b * s].reshape(b, s, *z.shape[1:]), z[b * s :].reshape(b, q, *z.shape[1:])


def feature_shape_of(encoder: nn.Module, example_shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """Shape of one embedding produced by ``encoder``.

    Read from the encoder's ``feature_shape`` or ``feature_dim`` attribute (the backbones of
    :mod:`metakit.models` set them) or, given ``example_shape``, measured by embedding two zero
    inputs in ``eval()`` mode (the encoder's mode and running statistics are left unchanged).
    """
    shape = getattr(encoder, "feature_shape", None)
    if shape is not None:
        return tuple(int(s) for s in shape)
    dim = getattr(encoder, "feature_dim", None)
    if dim is not None and getattr(encoder, "head", None) is None:
        return (int(dim),)
    if example_shape is None:
        raise ValueError(
            f"cannot tell the embedding size of encoder {type(encoder).__name__}: it has no feature_shape or "
            "feature_dim attribute (or it ends in a classification head); give example_shape or use a bare "
            "encoder of metakit.models"
        )
    with eval_mode(encoder), torch.no_grad():
        p = next(encoder.parameters(), None)
        x = torch.zeros(2, *example_shape, device=p.device if p is not None else None)
        out = encoder(x)
    return tuple(out.shape[1:])


@dataclass(frozen=True)
class SupportLearner:
    """A metric algorithm adapted to one task: the embedded support set and the rule to apply.

    Attributes:
        algorithm: the :class:`EmbeddingAlgorithm` (its networks are used as they are when
            :meth:`predict` is called).
        support_z: ``[S, *z_shape]`` support embeddings.
        support_y: ``[S]`` support labels.
        ways: number of classes.
    """

    algorithm: "EmbeddingAlgorithm"
    support_z: Tensor
    support_y: Tensor
    ways: int

    def predict(self, query_x: Tensor) -> Tensor:
        """Scores ``[Q, ways]`` (higher is more likely) of the query inputs ``[Q, *x_shape]``."""
        zq = self.algorithm.embed(check_query(query_x))
        return self.algorithm.task_scores(
            self.support_z.unsqueeze(0), self.support_y.unsqueeze(0), zq.unsqueeze(0), self.ways
        )[0]


class EmbeddingAlgorithm(Algorithm):
    """Base of the embedding methods: ``embed`` + a batched ``task_scores`` rule (module docstring).

    Subclasses set ``self.encoder`` (an ``nn.Module``) and implement :meth:`task_scores`.
    """

    #: display name used in error messages
    display_name: str = "this algorithm"

    #: eval-mode encoder calls of :meth:`embed` take at most this many input values
    #: (:data:`EMBED_CHUNK_VALUES`; see :func:`run_encoder`)
    embed_chunk_values: int = EMBED_CHUNK_VALUES

    @classmethod
    def model_defaults(cls, context: BuildContext) -> dict[str, Any]:
        """``in_channels`` and ``image_size`` of the data's images (see :func:`image_model_defaults`)."""
        return image_model_defaults(context)

    def embed(self, x: Tensor) -> Tensor:
        """Embeddings ``[N, D]`` of inputs ``[N, *x_shape]``: the output of ``self.encoder``,
        flattened, computed in chunks of at most :attr:`embed_chunk_values` input values when
        the encoder is not :func:`batch_dependent` (same result, bounded memory)."""
        return run_encoder(self.encoder, x, self.embed_chunk_values).flatten(1)

    def task_scores(self, support_z: Tensor, support_y: Tensor, query_z: Tensor, ways: int) -> Tensor:
        """Scores ``[B, Q, ways]`` of query embeddings given support embeddings and labels."""
        raise NotImplementedError  # pragma: no cover - abstract

    def encode(self, batch: EpisodeBatch) -> tuple[Tensor, Tensor]:
        """Validated support and query embeddings of every task (one encoder call)."""
        check_batch(batch, self.display_name)
        check_every_class_present(batch.support_y, batch.ways)  # type: ignore[arg-type]
        return encode_batch(self.embed, batch)

    def predict(self, batch: EpisodeBatch) -> Tensor:
        """Scores ``[B, Q, ways]`` of the queries of every task (batched, one encoder call)."""
        zs, zq = self.encode(batch)
        return self.task_scores(zs, batch.support_y, zq, batch.ways)  # type: ignore[arg-type]

    def check_adapt_input(self, support_x: Tensor, support_y: Tensor, ways: int | None) -> int:
        """Validate one task's support set for :meth:`adapt` (every label ``0..ways-1`` needs an
        example); return ``ways`` (default ``max(support_y) + 1``)."""
        ways = check_support(support_x, support_y, ways, self.display_name)
        check_every_class_present(support_y.unsqueeze(0), ways)
        return ways

    def adapt(self, support_x: Tensor, support_y: Tensor, ways: int | None = None) -> SupportLearner:
        """Embed one task's support set ``[S, *x_shape]`` with labels ``[S]``; every label
        ``0..ways-1`` (``ways`` defaults to ``max(support_y) + 1``) needs an example."""
        ways = self.check_adapt_input(support_x, support_y, ways)
        return SupportLearner(self, self.embed(support_x), support_y, ways)
