"""External memories and the memory-augmented LSTM of the model-based meta-learners.

Every function and module here works on a leading batch dimension ``B`` (the episodes of a
meta-batch run through one time loop together) and is an ordinary ``nn.Module`` or a pure tensor
function a user can reuse.

Content addressing (both memories): the cosine similarity ``K(k, M(i)) = k . M(i) / (|k| |M(i)|)``
of a key ``k`` with every row ``M(i)`` of the memory, turned into weights by a softmax with key
strength ``beta``: ``w(i) = exp(beta K(k, M(i))) / sum_j exp(beta K(k, M(j)))``
(:func:`content_weights`).

**LRUA** (Least Recently Used Access; Santoro et al. 2016, "Meta-learning with memory-augmented
neural networks", section 3.1), :class:`LRUAMemory`. Per step ``t`` with read keys ``k_t`` (one
per head) and a write gate ``alpha_t`` per head:

* read weights ``w^r_t = softmax(K(k_t, M_{t-1}))`` (key strength 1, as in the paper), reads
  ``r_t = sum_i w^r_t(i) M_{t-1}(i)``: the step reads what earlier steps wrote;
* least-used weights ``w^lu_{t-1}(i) = 1`` for the ``n`` locations of smallest usage
  ``w^u_{t-1}`` (``n`` = number of read heads), ``0`` elsewhere;
* write weights ``w^w_t = sigmoid(alpha_t) w^r_{t-1} + (1 - sigmoid(alpha_t)) w^lu_{t-1}``:
  a learned interpolation between the locations read last and the least used ones;
* before writing, the one least-used location (smallest ``w^u_{t-1}``) is set to zero; then
  ``M_t(i) = M_{t-1}(i) + sum_heads w^w_t(i) k_t``;
* usage ``w^u_t = gamma w^u_{t-1} + sum_heads (w^r_t + w^w_t)``.

Ties in usage (at the start of an episode every location is unused) go to the lowest index.

**NTM** addressing (Graves et al. 2014, "Neural Turing Machines", section 3.3),
:class:`NTMMemory`: each head emits a key ``k``, strength ``beta = softplus(.)``, interpolation
gate ``g = sigmoid(.)``, a shift distribution ``s = softmax(.)`` over the offsets
``-shift_range .. shift_range`` and a sharpening exponent ``gamma = 1 + softplus(.)``:

* ``w^c = content_weights(k, M, beta)``; ``w^g = g w^c + (1 - g) w_{t-1}`` (:func:`interpolate`);
* ``w~(i) = sum_j w^g(j) s(i - j)`` with indices modulo the number of locations (:func:`circular_shift`);
* ``w(i) = w~(i)^gamma / sum_j w~(j)^gamma`` (:func:`sharpen`).

The write head (one) then erases and adds, ``M~(i) = M_{t-1}(i) (1 - w(i) e)``,
``M_t(i) = M~(i) + w(i) a`` with ``e = sigmoid(.)``, and the read heads read ``M_t``.

:class:`MemoryAugmentedLSTM` is the controller: an LSTM cell whose input at step ``t`` is the
step's input and the reads of step ``t-1``; its output is a linear map of ``[h_t, r_t]``. With
``memory=None`` it is a plain LSTM (the LSTM meta-learner, Hochreiter et al. 2001's setting).
``forward(..., trace=True)`` also returns every step's read and write weights.

Implementation: the cosine (:func:`cosine_similarity`), the LRUA step, the NTM addressing
(:func:`ntm_address`) and the NTM erase/add write are ``torch.autograd.Function`` s whose
backward is written out (the rules are in their docstrings): the same gradients as autograd
through the step-by-step operations, up to float rounding, in fewer operations over the
``[B, N, W]`` memory; they cannot be differentiated twice (``create_graph=True`` through them
raises) and do not run under ``torch.func`` transforms (``vmap``, ``grad``, ``jacrev`` raise; a
function transform would not see the once-only backward and could return a wrong second
derivative without an error). :meth:`MemoryAugmentedLSTM.forward` computes whatever does not depend on the
recurrence for all steps at once. The tests hold all of it to step-by-step autograd references.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "cosine_similarity",
    "content_weights",
    "interpolate",
    "circular_shift",
    "sharpen",
    "least_used",
    "LRUAState",
    "LRUAMemory",
    "NTMState",
    "NTMMemory",
    "SequenceOutput",
    "MemoryAugmentedLSTM",
    "MEMORIES",
    "select_state",
    "ntm_address",
]

#: value of every memory cell at the start of an episode (non-zero so that cosines are defined)
MEMORY_INIT = 1e-6
#: lower bound of ``|k| |M(i)|`` in a cosine (a zeroed location has similarity 0)
COSINE_EPS = 1e-8
#: lower bound of the weights an NTM head sharpens (``w^gamma`` stays defined)
SHARPEN_EPS = 1e-12


# -- addressing: pure functions over [B, heads, N] ---------------------------------------------------
def _cosine_forward(keys: Tensor, memory: Tensor, eps: float) -> tuple[Tensor, tuple[Tensor, ...]]:
    """``K(k_h, M(i)) = k_h . M(i) / max(|k_h| |M(i)|, eps)`` ``[B, H, N]`` and what its backward needs."""
    knorm, mnorm = keys.norm(dim=-1), memory.norm(dim=-1)  # [B, H], [B, N]
    den = knorm.unsqueeze(-1) * mnorm.unsqueeze(-2)
    passes = den >= eps
    den = den.clamp_min(eps)
    sim = torch.bmm(keys, memory.transpose(1, 2)) / den
    return sim, (keys, memory, knorm, mnorm, den, passes, sim)


def _cosine_backward(g_sim: Tensor, saved: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
    """``(g_keys, g_memory)`` from ``g_sim``: with ``D = k M^T``, ``gD = gS / den``; ``gden = -gS S / den``
    where ``|k| |M| >= eps`` (else 0); ``gk = gD M + (sum_i gden |M(i)|) k / |k|``,
    ``gM = gD^T k + (sum_h gden |k_h|) M / |M|`` (``x / |x|`` taken as 0 at ``|x| = 0``)."""
    keys, memory, knorm, mnorm, den, passes, sim = saved
    g_dots = g_sim / den
    g_den = torch.where(passes, -g_dots * sim, 0.0)
    k_scale = torch.where(knorm > 0, (g_den * mnorm.unsqueeze(-2)).sum(-1) / knorm, 0.0)  # [B, H]
    m_scale = torch.where(mnorm > 0, (g_den * knorm.unsqueeze(-1)).sum(-2) / mnorm, 0.0)  # [B, N]
    g_keys = torch.baddbmm(k_scale.unsqueeze(-1) * keys, g_dots, memory)
    g_memory = torch.baddbmm(m_scale.unsqueeze(-1) * memory, g_dots.transpose(1, 2), keys)
    return g_keys, g_memory


class _Cosine(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, keys: Tensor, memory: Tensor, eps: float) -> Tensor:
        sim, saved = _cosine_forward(keys, memory, eps)
        ctx.save_for_backward(*saved)
        return sim

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g_sim: Tensor) -> tuple[Tensor, Tensor, None]:
        return (*_cosine_backward(g_sim, ctx.saved_tensors), None)


def cosine_similarity(keys: Tensor, memory: Tensor, eps: float = COSINE_EPS) -> Tensor:
    """``K(k_h, M(i))`` for keys ``[B, H, W]`` and memory ``[B, N, W]``: ``[B, H, N]`` (the product of
    the norms bounded below by ``eps``). Its backward is written out (:func:`_cosine_backward`):
    the gradients autograd would give, in fewer operations; it cannot be differentiated twice."""
    return _Cosine.apply(keys, memory, eps)


def content_weights(keys: Tensor, memory: Tensor, strength: Tensor | float = 1.0) -> Tensor:
    """``softmax_i(beta_h K(k_h, M(i)))``: ``[B, H, N]``; ``strength`` is ``[B, H]`` or a number."""
    sim = cosine_similarity(keys, memory)
    if isinstance(strength, Tensor):
        strength = strength.unsqueeze(-1)
    return torch.softmax(strength * sim, dim=-1)


def interpolate(content: Tensor, previous: Tensor, gate: Tensor) -> Tensor:
    """``g w^c + (1 - g) w_{t-1}`` with gates ``[B, H]`` in (0, 1)."""
    g = gate.unsqueeze(-1)
    return g * content + (1 - g) * previous


def _check_shift(shift: Tensor, slots: int) -> None:
    r = shift.shape[-1] // 2
    if shift.shape[-1] != 2 * r + 1:
        raise ValueError(f"shift has {shift.shape[-1]} offsets; it must have an odd number (offsets -R..R)")
    if 2 * r + 1 > slots:
        raise ValueError(f"shift offsets -{r}..{r} need at least {2 * r + 1} memory locations, got {slots}")


def circular_shift(weights: Tensor, shift: Tensor) -> Tensor:
    """``w~(i) = sum_j w(j) s(i - j)`` (indices modulo ``N``): ``weights`` ``[B, H, N]``, ``shift``
    ``[B, H, 2R+1]``, a distribution over the offsets ``-R .. R``."""
    _check_shift(shift, weights.shape[-1])
    r = shift.shape[-1] // 2
    rolled = torch.stack([torch.roll(weights, k, dims=-1) for k in range(-r, r + 1)], dim=-1)
    return (rolled * shift.unsqueeze(-2)).sum(-1)


def sharpen(weights: Tensor, gamma: Tensor, eps: float = SHARPEN_EPS) -> Tensor:
    """``w^gamma / sum w^gamma`` with exponents ``[B, H]`` >= 1."""
    powered = weights.clamp_min(eps).pow(gamma.unsqueeze(-1))
    return powered / powered.sum(-1, keepdim=True)


def least_used(usage: Tensor, n: int) -> Tensor:
    """``[B, N]`` weights: 1 at the ``n`` locations of smallest ``usage`` ``[B, N]`` (ties: lowest index), 0 elsewhere."""
    order = torch.sort(usage, dim=-1, stable=True).indices[..., :n]
    return torch.zeros_like(usage).scatter(-1, order, 1.0)


class _LRUAStep(torch.autograd.Function):
    """One LRUA step (see the module docstring) with its backward written out: the same numbers as
    autograd through :func:`content_weights`, :func:`least_used` and the update, in about half the
    operations and without recording a graph node per operation.

    Forward, per episode, keys ``k [H, W]``, gate logits ``a [H]``, memory ``M [N, W]``, usage
    ``u [N]``, previous read weights ``p [H, N]``: ``D = k M^T``, ``den = max(|k| |M|^T, eps)``,
    ``S = D / den``, ``R = softmax(S)``, ``r = R M``, ``s = sigmoid(a)``,
    ``Ww = s p + (1 - s) lu``, ``M' = M (1 - e) + Ww^T k``, ``u' = gamma u + sum_h R + sum_h Ww``
    (``lu``, ``e``: the least-used and the emptied locations, constants of ``u``).

    Backward from ``gr, gM', gu', gR, gWw``: ``gWw += gu' + k gM'^T``; ``gR += gu' + gr M^T``;
    ``gk = Ww gM'``; ``gM = gM' (1 - e) + R^T gr``; ``gu = gamma gu'``; ``gp = s gWw``;
    ``ga = s (1 - s) sum_n gWw (p - lu)``; ``gS = R (gR - sum_n R gR)``, and the cosine's
    gradients from ``gS`` (:func:`_cosine_backward`) added to ``gk`` and ``gM``.
    """

    @staticmethod
    def forward(ctx: Any, keys: Tensor, alpha: Tensor, memory: Tensor, usage: Tensor, prev_read: Tensor, heads: int,
                gamma: float, eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        sim, cosine = _cosine_forward(keys, memory, eps)
        w_read = torch.softmax(sim, dim=-1)
        reads = torch.bmm(w_read, memory)
        order = torch.sort(usage, dim=-1, stable=True).indices
        lu = torch.zeros_like(usage).scatter(-1, order[..., :heads], 1.0)
        keep = torch.ones_like(usage).scatter(-1, order[..., :1], 0.0)  # 1 - emptied
        gate = torch.sigmoid(alpha)
        g = gate.unsqueeze(-1)
        w_write = g * prev_read + (1 - g) * lu.unsqueeze(1)
        new_memory = torch.baddbmm(memory * keep.unsqueeze(-1), w_write.transpose(1, 2), keys)
        new_usage = gamma * usage + w_read.sum(1) + w_write.sum(1)
        ctx.save_for_backward(prev_read, w_read, lu, keep, gate, w_write, *cosine)
        ctx.gamma = gamma
        return reads, new_memory, new_usage, w_read, w_write

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g_reads: Tensor, g_memory: Tensor, g_usage: Tensor, g_read: Tensor, g_write: Tensor) -> tuple:
        prev_read, w_read, lu, keep, gate, w_write, *cosine = ctx.saved_tensors
        keys, memory = cosine[0], cosine[1]
        g_write = g_write + g_usage.unsqueeze(1) + torch.bmm(keys, g_memory.transpose(1, 2))
        g_read = g_read + g_usage.unsqueeze(1) + torch.bmm(g_reads, memory.transpose(1, 2))
        g_prev = gate.unsqueeze(-1) * g_write
        g_alpha = (g_write * (prev_read - lu.unsqueeze(1))).sum(-1) * gate * (1 - gate)
        g_sim = w_read * (g_read - (w_read * g_read).sum(-1, keepdim=True))
        g_keys, g_mem = _cosine_backward(g_sim, tuple(cosine))
        g_keys = g_keys.baddbmm_(w_write, g_memory)
        g_mem = g_mem.add_(g_memory * keep.unsqueeze(-1)).baddbmm_(w_read.transpose(1, 2), g_reads)
        return g_keys, g_alpha, g_mem, ctx.gamma * g_usage, g_prev, None, None, None


# -- memories ---------------------------------------------------------------------------------------
class LRUAState(NamedTuple):
    memory: Tensor  # [B, N, W]
    usage: Tensor  # [B, N]
    read_weights: Tensor  # [B, H, N]


class LRUAMemory(nn.Module):
    """Santoro et al.'s LRUA memory (see the module docstring), with ``heads`` read/write heads.

    Args:
        input_size: size of the controller output the heads read their keys and gates from.
        slots: memory locations ``N``.
        width: size ``W`` of one location.
        heads: read heads (each writes its key through its own write weights).
        gamma: usage decay in (0, 1).
    """

    kind = "lrua"

    def __init__(self, input_size: int, slots: int = 128, width: int = 40, heads: int = 4, gamma: float = 0.95) -> None:
        super().__init__()
        _check_sizes(slots=slots, width=width, heads=heads)
        if not 0.0 < gamma < 1.0:
            raise ValueError(f"gamma={gamma!r} must lie in (0, 1) (the usage decay; the paper's setting is near 1)")
        if heads > slots:
            raise ValueError(f"heads={heads} but the memory has slots={slots}: each head needs a least-used location; use slots >= heads")
        self.slots, self.width, self.heads, self.gamma = slots, width, heads, float(gamma)
        self.keys = nn.Linear(input_size, heads * width)
        self.alpha = nn.Linear(input_size, heads)

    @property
    def read_size(self) -> int:
        return self.heads * self.width

    def initial_state(self, batch: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> LRUAState:
        m = torch.full((batch, self.slots, self.width), MEMORY_INIT, device=device, dtype=dtype)
        return LRUAState(m, m.new_zeros(batch, self.slots), m.new_zeros(batch, self.heads, self.slots))

    def step(self, keys: Tensor, alpha: Tensor, state: LRUAState) -> tuple[Tensor, LRUAState, Tensor, Tensor]:
        """One step from keys ``[B, H, W]`` and gate logits ``[B, H]``: ``(reads [B, H, W], state,
        read weights [B, H, N], write weights [B, H, N])``."""
        memory, usage, prev_read = state
        reads, memory, usage, w_read, w_write = _LRUAStep.apply(keys, alpha, memory, usage, prev_read, self.heads, self.gamma,
                                                                COSINE_EPS)
        return reads, LRUAState(memory, usage, w_read), w_read, w_write

    def projections(self) -> tuple[nn.Linear, ...]:
        """The layers that read the controller output, in the order :meth:`advance` takes their outputs."""
        return (self.keys, self.alpha)

    def advance(self, raw: Tensor, state: LRUAState) -> tuple[Tensor, LRUAState, Tensor, Tensor]:
        """One step from the concatenated outputs ``[B, H W + H]`` of :meth:`projections`:
        ``(reads [B, H W], state, read weights, write weights)``."""
        b = raw.shape[0]
        keys, alpha = raw.split([self.heads * self.width, self.heads], -1)
        reads, state, w_read, w_write = self.step(keys.view(b, self.heads, self.width), alpha, state)
        return reads.reshape(b, -1), state, w_read, w_write

    def forward(self, h: Tensor, state: LRUAState) -> tuple[Tensor, LRUAState, Tensor, Tensor]:
        return self.advance(torch.cat([self.keys(h), self.alpha(h)], -1), state)


class NTMState(NamedTuple):
    memory: Tensor  # [B, N, W]
    read_weights: Tensor  # [B, R, N]
    write_weights: Tensor  # [B, 1, N]


def _circular_windows(weights: Tensor, r: int) -> Tensor:
    """``[..., N, 2r+1]`` with ``[..., i, m] = weights[..., (i + m - r) mod N]`` (a view of one padded copy)."""
    n = weights.shape[-1]
    return torch.cat([weights[..., n - r :], weights, weights[..., :r]], -1).unfold(-1, 2 * r + 1, 1)


class _NTMAddress(torch.autograd.Function):
    """:func:`ntm_address` with its backward written out (the gradients autograd gives through
    :func:`content_weights`, :func:`interpolate`, :func:`circular_shift` and :func:`sharpen`).

    Forward: ``wc = softmax(beta K)``, ``wg = g wc + (1 - g) w_prev``,
    ``ws(i) = sum_k s(k) wg(i - k)``, ``w = max(ws, eps)^gamma / sum max(ws, eps)^gamma``.
    Backward from ``gw``, with ``P = max(ws, eps)^gamma``: ``gP = (gw - sum w gw) / sum P``;
    ``ggamma = sum gP P log max(ws, eps)``; ``gws = gP gamma P / max(ws, eps)`` where
    ``ws >= eps`` (else 0); ``gwg(j) = sum_k s(k) gws(j + k)``, ``gs(k) = sum_i gws(i) wg(i - k)``;
    ``gg = sum gwg (wc - w_prev)``, ``gw_prev = (1 - g) gwg``; ``gZ = wc (g gwg - sum wc g gwg)``,
    ``gbeta = sum gZ K``, and the cosine's gradients from ``gK = beta gZ``.
    """

    @staticmethod
    def forward(ctx: Any, memory: Tensor, previous: Tensor, key: Tensor, strength: Tensor, gate: Tensor, shift: Tensor,
                gamma: Tensor, eps: float, sharpen_eps: float) -> Tensor:
        r = shift.shape[-1] // 2
        sim, cosine = _cosine_forward(key, memory, eps)
        beta, g, gam = strength.unsqueeze(-1), gate.unsqueeze(-1), gamma.unsqueeze(-1)
        content = torch.softmax(beta * sim, dim=-1)
        gated = g * content + (1 - g) * previous
        shifted = (_circular_windows(gated, r) @ shift.flip(-1).unsqueeze(-1)).squeeze(-1)
        positive = shifted >= sharpen_eps
        log_w = shifted.clamp_min(sharpen_eps).log()
        powered = torch.exp(gam * log_w)
        total = powered.sum(-1, keepdim=True)
        out = powered / total
        ctx.save_for_backward(previous, strength, gate, shift, gamma, content, gated, positive, log_w, powered, total, out,
                              *cosine)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g_out: Tensor) -> tuple:
        previous, strength, gate, shift, gamma, content, gated, positive, log_w, powered, total, out, *cosine = ctx.saved_tensors
        r = shift.shape[-1] // 2
        sim = cosine[-1]
        g_pow = (g_out - (g_out * out).sum(-1, keepdim=True)) / total
        gp = g_pow * powered
        g_gamma = (gp * log_w).sum(-1)
        g_shifted = torch.where(positive, gp * gamma.unsqueeze(-1) * torch.exp(-log_w), 0.0)
        g_gated = (_circular_windows(g_shifted, r) @ shift.unsqueeze(-1)).squeeze(-1)
        g_shift = (g_shifted.unsqueeze(-2) @ _circular_windows(gated, r)).squeeze(-2).flip(-1)
        g_gate = (g_gated * (content - previous)).sum(-1)
        g_content = gate.unsqueeze(-1) * g_gated
        g_z = content * (g_content - (content * g_content).sum(-1, keepdim=True))
        g_strength = (g_z * sim).sum(-1)
        g_key, g_memory = _cosine_backward(strength.unsqueeze(-1) * g_z, tuple(cosine))
        g_previous = (1 - gate).unsqueeze(-1) * g_gated
        return g_memory, g_previous, g_key, g_strength, g_gate, g_shift, g_gamma, None, None


def ntm_address(memory: Tensor, previous: Tensor, key: Tensor, strength: Tensor, gate: Tensor, shift: Tensor,
                gamma: Tensor) -> Tensor:
    """Graves et al.'s addressing from already squashed head outputs (``strength > 0``, ``gate`` in
    (0, 1), ``shift`` a distribution, ``gamma >= 1``): ``[B, H, N]``, the composition
    ``sharpen(circular_shift(interpolate(content_weights(key, memory, strength), previous, gate), shift), gamma)``
    computed in one pass with its backward written out (:class:`_NTMAddress`)."""
    _check_shift(shift, memory.shape[-2])
    return _NTMAddress.apply(memory, previous, key, strength, gate, shift, gamma, COSINE_EPS, SHARPEN_EPS)


class _EraseAdd(torch.autograd.Function):
    """The NTM write ``M' = M (1 - w e^T) + w a^T`` (weights ``w [B, N, 1]``, erase ``e`` and add
    ``a`` ``[B, 1, W]``) with its backward written out: ``gM = gM' (1 - w e^T)``,
    ``gw = gM' a^T - (gM' M) e^T``, ``ge = -w^T (gM' M)``, ``ga = w^T gM'`` (sums over the
    broadcast dimensions), the gradients autograd gives in fewer full-size operations."""

    @staticmethod
    def forward(ctx: Any, memory: Tensor, weights: Tensor, erase: Tensor, add: Tensor) -> Tensor:
        keep = 1 - weights * erase
        ctx.save_for_backward(memory, weights, erase, add, keep)
        return memory * keep + weights * add

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        memory, weights, erase, add, keep = ctx.saved_tensors
        gm = g * memory
        g_weights = torch.bmm(g, add.transpose(1, 2)) - torch.bmm(gm, erase.transpose(1, 2))
        w_t = weights.transpose(1, 2)
        return g * keep, g_weights, -torch.bmm(w_t, gm), torch.bmm(w_t, g)


class NTMMemory(nn.Module):
    """Graves et al.'s NTM memory (see the module docstring): ``heads`` read heads and one write head.

    Args:
        input_size: size of the controller output the heads read from.
        slots: memory locations ``N``.
        width: size ``W`` of one location.
        heads: read heads.
        shift_range: the largest location shift ``R`` (shifts ``-R .. R``).
    """

    kind = "ntm"

    def __init__(self, input_size: int, slots: int = 128, width: int = 40, heads: int = 4, shift_range: int = 1) -> None:
        super().__init__()
        _check_sizes(slots=slots, width=width, heads=heads)
        if not isinstance(shift_range, int) or shift_range < 0 or 2 * shift_range + 1 > slots:
            raise ValueError(f"shift_range={shift_range!r} must be an int in 0..{(slots - 1) // 2} (shifts -R..R over {slots} slots)")
        self.slots, self.width, self.heads, self.shift_range = slots, width, heads, shift_range
        self._per_head = width + 3 + (2 * shift_range + 1)  # key, strength, gate, gamma, shift
        self.read_heads = nn.Linear(input_size, heads * self._per_head)
        self.write_head = nn.Linear(input_size, self._per_head + 2 * width)  # + erase, add

    @property
    def read_size(self) -> int:
        return self.heads * self.width

    def initial_state(self, batch: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> NTMState:
        m = torch.full((batch, self.slots, self.width), MEMORY_INIT, device=device, dtype=dtype)
        focus = m.new_zeros(batch, 1, self.slots)
        focus[..., 0] = 1.0
        return NTMState(m, focus.expand(batch, self.heads, self.slots).clone(), focus)

    def _address(self, raw: Tensor, memory: Tensor, previous: Tensor) -> Tensor:
        # one split (its backward is one concatenation, where slices would each fill a zero tensor)
        key, strength, gate, gamma, shift = raw.split([self.width, 1, 1, 1, 2 * self.shift_range + 1], -1)
        return ntm_address(memory, previous, key, F.softplus(strength.squeeze(-1)), torch.sigmoid(gate.squeeze(-1)),
                           torch.softmax(shift, -1), 1 + F.softplus(gamma.squeeze(-1)))

    def projections(self) -> tuple[nn.Linear, ...]:
        """The layers that read the controller output, in the order :meth:`advance` takes their outputs."""
        return (self.read_heads, self.write_head)

    def advance(self, raw: Tensor, state: NTMState) -> tuple[Tensor, NTMState, Tensor, Tensor]:
        """One step from the concatenated outputs ``[B, heads * per_head + per_head + 2 W]`` of
        :meth:`projections`: ``(reads [B, heads W], state, read weights, write weights)``."""
        b, p, w = raw.shape[0], self._per_head, self.width
        memory, prev_read, prev_write = state
        raw_r, raw_w, erase, add = raw.unsqueeze(1).split([self.heads * p, p, w, w], -1)  # [B, 1, .]
        w_write = self._address(raw_w, memory, prev_write)
        erase = torch.sigmoid(erase)  # [B, 1, W]
        memory = _EraseAdd.apply(memory, w_write.transpose(1, 2), erase, add)  # M (1 - w e^T) + w a^T
        w_read = self._address(raw_r.view(b, self.heads, p), memory, prev_read)
        reads = torch.bmm(w_read, memory)
        return reads.reshape(b, -1), NTMState(memory, w_read, w_write), w_read, w_write

    def forward(self, h: Tensor, state: NTMState) -> tuple[Tensor, NTMState, Tensor, Tensor]:
        return self.advance(torch.cat([self.read_heads(h), self.write_head(h)], -1), state)


def _check_sizes(**sizes: Any) -> None:
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive int")


#: the memories :class:`MemoryAugmentedLSTM` builds by name
MEMORIES: dict[str, type[nn.Module]] = {"lrua": LRUAMemory, "ntm": NTMMemory}


# -- the controller ---------------------------------------------------------------------------------
class SequenceOutput(NamedTuple):
    outputs: Tensor  # [B, T, output_size]
    state: Any  # (h, c, reads, memory state): continue a sequence from here
    read_weights: Tensor | None  # [B, T, H, N] with trace=True and a memory
    write_weights: Tensor | None  # [B, T, heads that write, N]


class MemoryAugmentedLSTM(nn.Module):
    """An LSTM controller with an optional external memory (see the module docstring).

    Args:
        input_size: size of one step's input.
        output_size: size of one step's output.
        hidden_size: LSTM units of the controller.
        memory: ``"lrua"`` (Santoro et al.), ``"ntm"`` (Graves et al.) or ``None`` (a plain LSTM).
        slots: memory locations.
        width: size of one location.
        heads: read heads.
        gamma: LRUA usage decay.
        shift_range: NTM largest shift.
    """

    def __init__(self, input_size: int, output_size: int, hidden_size: int = 200, memory: str | None = "lrua",
                 slots: int = 128, width: int = 40, heads: int = 4, gamma: float = 0.95, shift_range: int = 1) -> None:
        super().__init__()
        _check_sizes(input_size=input_size, output_size=output_size, hidden_size=hidden_size)
        if memory is not None and memory not in MEMORIES:
            raise ValueError(f"memory={memory!r} is not known; use one of {', '.join(MEMORIES)} or None (a plain LSTM)")
        self.hidden_size = hidden_size
        self.memory: nn.Module | None
        if memory == "lrua":
            self.memory = LRUAMemory(hidden_size, slots, width, heads, gamma)
        elif memory == "ntm":
            self.memory = NTMMemory(hidden_size, slots, width, heads, shift_range)
        else:
            self.memory = None
        reads = self.memory.read_size if self.memory is not None else 0  # type: ignore[union-attr]
        self.controller = nn.LSTMCell(input_size + reads, hidden_size)
        self.output = nn.Linear(hidden_size + reads, output_size)

    def initial_state(self, batch: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> tuple:
        h = torch.zeros(batch, self.hidden_size, device=device, dtype=dtype)
        if self.memory is None:
            return (h, h.clone(), None, None)
        reads = torch.zeros(batch, self.memory.read_size, device=device, dtype=dtype)  # type: ignore[union-attr]
        return (h, h.clone(), reads, self.memory.initial_state(batch, device, dtype))  # type: ignore[operator]

    def forward(self, inputs: Tensor, state: tuple | None = None, trace: bool = False) -> SequenceOutput:
        """Run ``inputs`` ``[B, T, input_size]`` from ``state`` (default: the start of an episode).

        The result is the step-by-step recurrence of the module docstring, computed in fewer and
        larger operations: the input part of the LSTM's input projection and the output layer
        are one matrix product over all ``T`` steps; without a memory the whole LSTM runs as
        PyTorch's fused LSTM (the operation behind ``nn.LSTM``) on the cell's own parameters;
        with one, a step makes one product of ``h_{t-1}`` with the recurrent weights stacked on
        the memory heads' weights and one of the reads with their input weights.
        """
        if inputs.dim() != 3:
            raise ValueError(f"inputs has shape {tuple(inputs.shape)}; expected [batch, time, features]")
        b, steps, features = inputs.shape
        expected = self.controller.input_size - (0 if self.memory is None else self.memory.read_size)  # type: ignore[union-attr]
        if features != expected:
            raise ValueError(f"inputs has {features} features per step but the network was built for input_size={expected}")
        if state is None:
            state = self.initial_state(b, inputs.device, inputs.dtype)
        h, c, reads, mem = state
        if steps == 0:
            return SequenceOutput(inputs.new_zeros(b, 0, self.output.out_features), (h, c, reads, mem), None, None)
        cell = self.controller
        if self.memory is None:
            hs, h_n, c_n = torch.lstm(
                inputs, (h.unsqueeze(0), c.unsqueeze(0)), [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh],
                True, 1, 0.0, self.training, False, True,
            )  # has_biases, num_layers, dropout, train, bidirectional, batch_first
            return SequenceOutput(self.output(hs), (h_n[0], c_n[0], None, None), None, None)
        memory: Any = self.memory
        # gates_t = W_x x_t + W_r r_{t-1} + W_h h_{t-1} + b: the W_x x_t of every step in one product
        gates_x = F.linear(inputs, cell.weight_ih[:, :features], cell.bias_ih + cell.bias_hh).unbind(1)
        w_reads = cell.weight_ih[:, features:].t()
        # h_t's products: the memory heads of step t and the recurrent part of step t+1's gates
        heads = memory.projections()
        n_heads = sum(layer.out_features for layer in heads)
        w_h = torch.cat([layer.weight for layer in heads] + [cell.weight_hh]).t()
        b_h = torch.cat([layer.bias for layer in heads] + [cell.bias_hh.new_zeros(cell.weight_hh.shape[0])])
        gates_h = h @ cell.weight_hh.t()
        hs, rs, trace_r, trace_w = [], [], [], []
        for t in range(steps):
            gates = torch.addmm(gates_x[t] + gates_h, reads, w_reads)
            i, f, g, o = gates.chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            heads_out, gates_h = torch.addmm(b_h, h, w_h).split([n_heads, w_h.shape[1] - n_heads], -1)
            reads, mem, w_r, w_w = memory.advance(heads_out, mem)
            hs.append(h)
            rs.append(reads)
            if trace:
                trace_r.append(w_r)
                trace_w.append(w_w)
        out = self.output(torch.cat([torch.stack(hs, 1), torch.stack(rs, 1)], -1))
        rw = torch.stack(trace_r, 1) if trace else None
        ww = torch.stack(trace_w, 1) if trace else None
        return SequenceOutput(out, (h, c, reads, mem), rw, ww)


def select_state(state: Any, index: Tensor) -> Any:
    """The batch rows ``index`` of a :class:`MemoryAugmentedLSTM` state (e.g. one episode's state
    repeated once per query)."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        return state.index_select(0, index)
    if isinstance(state, tuple):
        return type(state)(*(select_state(s, index) for s in state)) if hasattr(state, "_fields") else tuple(
            select_state(s, index) for s in state
        )
    raise TypeError(f"cannot select batch rows of a {type(state).__name__}")
