"""The building blocks of SNAIL (Mishra, Rohaninejad, Chen & Abbeel, "A Simple Neural Attentive
Meta-Learner", ICLR 2018) as ordinary ``nn.Module`` s.

Every module here maps a batch of sequences ``x [N, T, C]`` (batch, time, channels) to
``[N, T, C']`` and is **causal**: the output at step ``t`` depends on the inputs at steps
``0..t`` only.

* :class:`CausalConv1d`: a 1-D convolution padded on the left by ``(kernel_size - 1) *
  dilation`` zeros, ``y[t] = b + sum_k W_k x[t - (K - 1 - k) d]`` (inputs before step 0 are 0).
* :class:`DenseBlock`: a causal convolution of kernel 2 and dilation ``d`` with ``2 * filters``
  outputs split into ``a, g``; the gated activation ``tanh(a) * sigmoid(g)`` is concatenated to
  the input (``C -> C + filters``).
* :class:`TCBlock` (temporal convolution): ``n = ceil(log2 T)`` dense blocks for sequences of
  length ``T`` (the paper's count) with dilations ``1, 2, 4, ..., 2^(n-1)``, so that the last step
  sees every earlier one: the offsets a stack of kernel-2 blocks reaches are the sums of subsets
  of its dilations, here every offset ``0 .. 2^n - 1 >= T - 1``. (Dilations ``2, 4, ..., 2^n``
  would reach only even offsets.) ``C -> C + n * filters``.
* :class:`AttentionBlock`: single-head soft attention with a causal mask,
  ``read[t] = sum_{s <= t} softmax_s(q_t . k_s / sqrt(key_size)) v_s`` with learned linear keys,
  queries and values; ``read`` is concatenated to the input (``C -> C + value_size``).
* :class:`SNAILNet`: the paper's few-shot classification network, attention and TC blocks
  interleaved -- Attention(64, 32), TC(T, 128), Attention(256, 128), TC(T, 128),
  Attention(512, 256) -- and a final 1x1 convolution (a linear layer per step) to the classes.

**Branches.** Every module also computes, in the same call, the outputs of ``M`` independent
one-step continuations of its input: ``module(x, branches)`` with ``branches [N, M, C]`` returns
``(y, y_branches)``, where ``y_branches[n, m]`` is the output at step ``T`` of the sequence
``x[n]`` followed by ``branches[n, m]``. Because the modules are causal, the prefix ``x`` is
computed once for all ``M`` continuations, and a continuation never sees another one. SNAIL's
few-shot learner uses this to classify all queries of a task against one shared support
sequence: ``T + M`` steps of work instead of ``M * (T + 1)``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CausalConv1d", "DenseBlock", "TCBlock", "AttentionBlock", "SNAILNet", "tc_dilations"]


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive int")
    return value


def _check_sequences(module: nn.Module, x: object, branches: object) -> None:
    """``x [N, T, C]`` and ``branches [N, M, C]`` (or None) with the module's ``in_channels``."""
    name = type(module).__name__
    c = module.in_channels  # type: ignore[attr-defined]
    if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != c:
        got = f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} takes sequences x of shape [batch, steps, {c}], got {got}")
    if branches is None:
        return
    if not isinstance(branches, Tensor) or branches.dim() != 3 or branches.shape[-1] != c or branches.shape[0] != x.shape[0]:
        got = f"shape {tuple(branches.shape)}" if isinstance(branches, Tensor) else type(branches).__name__
        raise ValueError(
            f"{name} takes branches of shape [batch, continuations, {c}] with the batch of x ({x.shape[0]}), got {got}"
        )


class CausalConv1d(nn.Module):
    """A causal, dilated 1-D convolution over sequences ``[N, T, C]`` (module docstring).

    Args:
        in_channels: channels of each step of the input.
        out_channels: channels of each step of the output.
        kernel_size: taps of the filter (2 in SNAIL).
        dilation: distance in steps between taps.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 2, dilation: int = 1) -> None:
        super().__init__()
        self.in_channels = _positive_int("in_channels", in_channels)
        self.out_channels = _positive_int("out_channels", out_channels)
        self.kernel_size = _positive_int("kernel_size", kernel_size)
        self.dilation = _positive_int("dilation", dilation)
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation)

    @property
    def padding(self) -> int:
        """Zeros added before step 0: ``(kernel_size - 1) * dilation``."""
        return (self.kernel_size - 1) * self.dilation

    def forward(self, x: Tensor, branches: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """``y [N, T, out_channels]``; with ``branches [N, M, in_channels]`` also the outputs of the
        ``M`` one-step continuations, ``[N, M, out_channels]``."""
        _check_sequences(self, x, branches)
        y = F.conv1d(F.pad(x.transpose(1, 2), (self.padding, 0)), self.conv.weight, self.conv.bias,
                     dilation=self.dilation).transpose(1, 2)
        if branches is None:
            return y
        w = self.conv.weight  # [out, in, K]; tap K-1 reads the current step
        out = F.linear(branches, w[:, :, -1], self.conv.bias)
        steps = x.shape[1]
        for k in range(self.kernel_size - 1):
            t = steps - (self.kernel_size - 1 - k) * self.dilation  # the step tap k reads, before the branch
            if t >= 0:
                out = out + F.linear(x[:, t], w[:, :, k]).unsqueeze(1)
        return y, out

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, dilation={self.dilation}"


class DenseBlock(nn.Module):
    """A causal convolution with a gated activation, concatenated to its input.

    ``a, g = CausalConv1d(x)`` (``filters`` channels each); output ``[x, tanh(a) * sigmoid(g)]``.

    Args:
        in_channels: channels of each input step.
        dilation: dilation of the causal convolution.
        filters: channels the block adds.
        kernel_size: taps of the convolution (2 in the paper).
    """

    def __init__(self, in_channels: int, dilation: int, filters: int, kernel_size: int = 2) -> None:
        super().__init__()
        self.in_channels = _positive_int("in_channels", in_channels)
        self.filters = _positive_int("filters", filters)
        self.out_channels = in_channels + filters
        self.conv = CausalConv1d(in_channels, 2 * filters, kernel_size, dilation)

    def _gate(self, h: Tensor) -> Tensor:
        a, g = h.split(self.filters, dim=-1)
        return torch.tanh(a) * torch.sigmoid(g)

    def forward(self, x: Tensor, branches: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """``[N, T, in + filters]`` (and the branches' outputs ``[N, M, in + filters]``)."""
        if branches is None:
            return torch.cat([x, self._gate(self.conv(x))], -1)
        h, hb = self.conv(x, branches)
        return torch.cat([x, self._gate(h)], -1), torch.cat([branches, self._gate(hb)], -1)


def tc_dilations(seq_len: int) -> list[int]:
    """The dilations of a TC block for sequences of ``seq_len`` steps: ``1, 2, ..., 2^(n-1)`` with
    ``n = ceil(log2 seq_len)`` (one block of dilation 1 for ``seq_len <= 2``)."""
    _positive_int("seq_len", seq_len)
    n = max(1, math.ceil(math.log2(seq_len)))
    return [2**i for i in range(n)]


class TCBlock(nn.Module):
    """Temporal-convolution block: dense blocks of growing dilation (:func:`tc_dilations`).

    Args:
        in_channels: channels of each input step.
        seq_len: the longest sequence the block is built for; its dilations cover it.
        filters: channels each dense block adds (128 in the paper).
    """

    def __init__(self, in_channels: int, seq_len: int, filters: int) -> None:
        super().__init__()
        self.in_channels = _positive_int("in_channels", in_channels)
        self.seq_len = _positive_int("seq_len", seq_len)
        _positive_int("filters", filters)
        blocks = []
        c = in_channels
        for d in tc_dilations(seq_len):
            blocks.append(DenseBlock(c, d, filters))
            c += filters
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = c

    def forward(self, x: Tensor, branches: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """``[N, T, in + len(blocks) * filters]`` (and the branches' outputs)."""
        for block in self.blocks:
            if branches is None:
                x = block(x)
            else:
                x, branches = block(x, branches)
        return x if branches is None else (x, branches)


class AttentionBlock(nn.Module):
    """Causal single-head soft attention whose read is concatenated to the input.

    Args:
        in_channels: channels of each input step.
        key_size: size of keys and queries.
        value_size: size of the values (the channels the block adds).
    """

    def __init__(self, in_channels: int, key_size: int, value_size: int) -> None:
        super().__init__()
        self.in_channels = _positive_int("in_channels", in_channels)
        self.key_size = _positive_int("key_size", key_size)
        self.value_size = _positive_int("value_size", value_size)
        self.out_channels = in_channels + value_size
        self.query = nn.Linear(in_channels, key_size)
        self.key = nn.Linear(in_channels, key_size)
        self.value = nn.Linear(in_channels, value_size)

    def forward(self, x: Tensor, branches: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """``[N, T, in + value_size]`` (and the branches' outputs ``[N, M, in + value_size]``)."""
        _check_sequences(self, x, branches)
        scale = 1.0 / math.sqrt(self.key_size)
        q, k, v = self.query(x), self.key(x), self.value(x)
        steps = x.shape[1]
        logits = (q @ k.transpose(1, 2)) * scale  # [N, T(query), T(key)]
        future = torch.ones(steps, steps, dtype=torch.bool, device=x.device).triu(1)
        read = logits.masked_fill(future, float("-inf")).softmax(-1) @ v
        y = torch.cat([x, read], -1)
        if branches is None:
            return y
        qb, kb, vb = self.query(branches), self.key(branches), self.value(branches)
        # a continuation attends to the whole prefix and to itself, never to another continuation
        both = torch.cat([(qb @ k.transpose(1, 2)) * scale, (qb * kb).sum(-1, keepdim=True) * scale], -1)
        p = both.softmax(-1)  # [N, M, T + 1]
        read_b = p[..., :steps] @ v + p[..., steps:] * vb
        return y, torch.cat([branches, read_b], -1)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, key_size={self.key_size}, value_size={self.value_size}"


class SNAILNet(nn.Module):
    """SNAIL's sequence network for few-shot classification (the paper's Omniglot architecture).

    Attention(key_sizes[0], value_sizes[0]), then for each further pair a TC block of
    ``filters`` and an attention block, then a linear map of every step to ``out_features``
    scores (the paper's final 1x1 convolution). With the defaults: Attention(64, 32),
    TC(T, 128), Attention(256, 128), TC(T, 128), Attention(512, 256).

    Args:
        in_features: channels of each input step (for SNAIL's few-shot learner: the embedding
            size plus ``ways`` for the one-hot label).
        out_features: scores per step (``ways``).
        seq_len: the context: the longest sequence the network takes (``ways * shots + 1``
            for N-way K-shot episodes with the query last); longer input is refused.
        filters: channels each dense block of a TC block adds (128 in the paper).
        key_sizes: key size of each attention block (64, 256, 512 in the paper).
        value_sizes: value size of each attention block (32, 128, 256 in the paper).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        seq_len: int,
        filters: int = 128,
        key_sizes: Sequence[int] = (64, 256, 512),
        value_sizes: Sequence[int] = (32, 128, 256),
    ) -> None:
        super().__init__()
        self.in_features = self.in_channels = _positive_int("in_features", in_features)
        self.out_features = _positive_int("out_features", out_features)
        self.seq_len = _positive_int("seq_len", seq_len)
        _positive_int("filters", filters)
        key_sizes, value_sizes = list(key_sizes), list(value_sizes)
        if not key_sizes or len(key_sizes) != len(value_sizes):
            raise ValueError(
                f"key_sizes={key_sizes} and value_sizes={value_sizes} must be non-empty and of equal length "
                "(one key and one value size per attention block)"
            )
        blocks: list[nn.Module] = []
        c = in_features
        for i, (ks, vs) in enumerate(zip(key_sizes, value_sizes)):
            if i > 0:
                blocks.append(TCBlock(c, seq_len, filters))
                c = blocks[-1].out_channels
            blocks.append(AttentionBlock(c, _positive_int(f"key_sizes[{i}]", ks), _positive_int(f"value_sizes[{i}]", vs)))
            c = blocks[-1].out_channels
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(c, out_features)

    def forward(self, x: Tensor, branches: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """Scores ``[N, T, out_features]`` of every step of ``x [N, T, in_features]``; with
        ``branches [N, M, in_features]`` also the scores ``[N, M, out_features]`` of each
        one-step continuation (module docstring). ``T`` (plus one with branches) must not
        exceed ``seq_len``."""
        _check_sequences(self, x, branches)
        steps = x.shape[1] + (branches is not None)
        if steps > self.seq_len:
            what = f"{x.shape[1]} steps and a continuation" if branches is not None else f"{steps} steps"
            raise ValueError(
                f"the sequence has {what}, longer than the network's context seq_len={self.seq_len}; "
                f"give at most {self.seq_len} steps or build the network with a longer seq_len"
            )
        for block in self.blocks:
            if branches is None:
                x = block(x)
            else:
                x, branches = block(x, branches)
        return self.head(x) if branches is None else (self.head(x), self.head(branches))
