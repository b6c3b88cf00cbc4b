"""Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, "Matching Networks
for One Shot Learning", NeurIPS 2016).

A query ``x`` is classified by attention over the labelled support set ``S = {(x_i, y_i)}``:

    P(y = k | x, S) = sum_{i : y_i = k} a(x, x_i),
    a(x, x_i) = softmax_i( scale * cos(f(x), g(x_i)) ),

i.e. the attention mass that a softmax over cosine similarities puts on the support examples
of class ``k``. The paper uses ``scale = 1`` (plain cosine). Scores returned by this module are
``log P(y = k | x, S)``, computed exactly as ``logsumexp_{i in k} s_i - logsumexp_i s_i`` with
``s_i = scale * cos(f(x), g(x_i))``; the meta-training loss is their negative mean over the
queries of every task (the paper's ``log P`` objective).

Without full-context embeddings ``f = g = encoder`` (the paper's Omniglot setting).

**Query norm** (``normalize_query=False``): ``s_i = scale * f(x) . g(x_i) / |g(x_i)|``, the
support embeddings normalised and the query's left as it is, as a public re-implementation
computes the "cosine" (the ``DistanceNetwork`` of ``gitabcworld/MatchingNetworks``). The query's
norm then acts as a learned inverse temperature of the softmax; with both normalised (the
default, the paper's text) cosines of the non-negative features of a ReLU encoder lie in
``[0, 1]`` and the softmax stays flat.

**Full-context embeddings** (``fce=True``, the paper's appendix): with ``f'``, ``g'`` the
encoder output,

* the support embedding reads the whole support set with a bidirectional LSTM,
  ``g(x_i) = g'(x_i) + h_i(forward) + h_i(backward)`` (hidden size = embedding size ``D``; the
  support is read in the order it is given);
* the query embedding is the output after ``K = fce_steps`` steps of an attention LSTM,
  ``h_k = LSTM([f'(x), r_{k-1}], h_{k-1}, c_{k-1}) + f'(x)``, where the read-out
  ``r_{k-1} = sum_i softmax_i(h_{k-1} . g(x_i)) g(x_i)`` attends over the support with the
  previous state (``h_0 = c_0 = 0``, so the first read is the mean of ``g(S)``), and
  ``f(x, S) = h_K``.

The paper concatenates ``r_{k-1}`` to the LSTM's hidden state; here it is concatenated to the
LSTM's input. An LSTM's gates are affine in the concatenation of input and hidden state, so
the two parametrisations describe the same family of functions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tasks.episode import EpisodeBatch
from ._embedding import EmbeddingAlgorithm, check_encoder, check_positive, class_reduce, feature_shape_of
from .base import accuracy, register

__all__ = ["MatchingNet", "attention_log_probs"]


def attention_log_probs(query_z: Tensor, support_z: Tensor, support_y: Tensor, ways: int, scale: float = 1.0,
                        normalize_query: bool = True) -> Tensor:
    """``log P(y = k | x, S)`` of Matching Networks' cosine attention, batched over tasks.

    ``query_z [B, Q, D]``, ``support_z [B, S, D]``, ``support_y [B, S]`` -> ``[B, Q, ways]``;
    ``normalize_query=False`` leaves the query's norm in the similarities (module docstring).
    """
    query = F.normalize(query_z, dim=-1) if normalize_query else query_z
    sims = scale * (query @ F.normalize(support_z, dim=-1).transpose(1, 2))  # [B, Q, S]
    return class_reduce(sims, support_y, ways, "logsumexp") - sims.logsumexp(-1, keepdim=True)


@register("matching")
class MatchingNet(EmbeddingAlgorithm):
    """Matching Networks (Vinyals et al. 2016); see the module docstring for the rule.

    Args:
        encoder: the embedding network f' = g' (e.g. Conv4(), 64 features on
            Omniglot); its output is flattened to [N, D].
        fce: add the full-context embeddings (bidirectional LSTM over the support, attention
            LSTM for the queries). The paper did not use them on Omniglot.
        fce_steps: number K of read steps of the attention LSTM.
        scale: multiplier of the cosine similarities inside the softmax (1 = the paper).
        normalize_query: divide the query embedding by its norm (true: the cosine of the paper's
            text); false: only the support embeddings are normalised, as a public
            re-implementation does (the query's norm acts as a learned softmax temperature).
        feature_dim: embedding size D (needed for the LSTMs when fce); None reads
            it from the encoder's feature_dim attribute.
    """

    display_name = "MatchingNet"

    def __init__(
        self,
        encoder: nn.Module,
        fce: bool = False,
        fce_steps: int = 5,
        scale: float = 1.0,
        normalize_query: bool = True,
        feature_dim: int | None = None,
    ) -> None:
        super().__init__()
        check_encoder(encoder)
        if not isinstance(fce, bool):
            raise TypeError(f"fce={fce!r} must be True or False")
        check_positive("fce_steps", fce_steps, int)
        check_positive("scale", scale)
        if not isinstance(normalize_query, bool):
            raise TypeError(f"normalize_query={normalize_query!r} must be True or False")
        self.normalize_query = normalize_query
        self.encoder = encoder
        self.fce = fce
        self.fce_steps = fce_steps
        self.scale = float(scale)
        if fce:
            if feature_dim is None:
                feature_dim = math.prod(feature_shape_of(encoder))
            check_positive("feature_dim", feature_dim, int)
            self.support_lstm: nn.LSTM | None = nn.LSTM(feature_dim, feature_dim, batch_first=True, bidirectional=True)
            self.query_cell: nn.LSTMCell | None = nn.LSTMCell(2 * feature_dim, feature_dim)
        else:
            self.support_lstm = None
            self.query_cell = None

    def full_context_support(self, support_z: Tensor) -> Tensor:
        """``g(x_i) = g'(x_i) + h_i(forward) + h_i(backward)``: ``[B, S, D] -> [B, S, D]``."""
        assert self.support_lstm is not None
        d = support_z.shape[-1]
        out, _ = self.support_lstm(support_z)  # [B, S, 2D]
        return support_z + out[..., :d] + out[..., d:]

    def full_context_query(self, query_z: Tensor, support_g: Tensor) -> Tensor:
        """``f(x, S) = h_K`` of the attention LSTM: ``[B, Q, D], [B, S, D] -> [B, Q, D]``."""
        assert self.query_cell is not None
        b, q, d = query_z.shape
        x = query_z.reshape(b * q, d)
        h = torch.zeros_like(x)
        c = torch.zeros_like(x)
        for _ in range(self.fce_steps):
            attn = torch.softmax(h.reshape(b, q, d) @ support_g.transpose(1, 2), dim=-1)  # [B, Q, S]
            read = (attn @ support_g).reshape(b * q, d)
            h_hat, c = self.query_cell(torch.cat([x, read], dim=-1), (h, c))
            h = h_hat + x
        return h.reshape(b, q, d)

    def task_scores(self, support_z: Tensor, support_y: Tensor, query_z: Tensor, ways: int) -> Tensor:
        """``log P(y = k | x, S)``: ``[B, Q, ways]``."""
        if self.fce:
            support_z = self.full_context_support(support_z)
            query_z = self.full_context_query(query_z, support_z)
        return attention_log_probs(query_z, support_z, support_y, ways, self.scale, self.normalize_query)

    def meta_loss(self, batch: EpisodeBatch) -> tuple[Tensor, dict[str, float]]:
        """Negative log-likelihood of the query labels over all tasks; metrics ``loss``, ``accuracy``."""
        zs, zq = self.encode(batch)
        logp = self.task_scores(zs, batch.support_y, zq, batch.ways)  # type: ignore[arg-type]
        loss = F.nll_loss(logp.flatten(0, 1), batch.query_y.flatten().long())
        acc = accuracy(logp.detach(), batch.query_y).mean()
        return loss, {"loss": float(loss.detach()), "accuracy": float(acc)}

    def extra_repr(self) -> str:
        return f"fce={self.fce}, fce_steps={self.fce_steps}, scale={self.scale}, normalize_query={self.normalize_query}"
