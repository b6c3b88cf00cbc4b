"""The memories of the model-based learners: addressing gradients against finite differences
(float64), a tiny read/write checked by hand, batching, and the errors of bad sizes."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

from metakit.models.memory import (
    LRUAMemory,
    LRUAState,
    MemoryAugmentedLSTM,
    NTMMemory,
    NTMState,
    circular_shift,
    content_weights,
    cosine_similarity,
    interpolate,
    least_used,
    ntm_address,
    sharpen,
)

D = torch.float64


def _rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=D).requires_grad_()


def test_content_weights_gradient_matches_finite_differences():
    keys, memory, strength = _rand(2, 3, 4, seed=1), _rand(2, 5, 4, seed=2), (torch.rand(2, 3, dtype=D) + 0.5).requires_grad_()
    assert gradcheck(content_weights, (keys, memory, strength), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_content_weights_are_a_softmax_of_scaled_cosines():
    keys = torch.tensor([[[1.0, 0.0]]], dtype=D)
    memory = torch.tensor([[[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]]], dtype=D)
    w = content_weights(keys, memory, torch.tensor([[2.0]], dtype=D))
    cos = torch.tensor([1.0, 0.0, -1.0], dtype=D)
    assert torch.allclose(w[0, 0], torch.softmax(2 * cos, 0), atol=1e-12)


def test_ntm_shift_and_sharpen_gradients_match_finite_differences():
    w = torch.softmax(_rand(2, 3, 6, seed=3), -1).detach().requires_grad_()
    shift = torch.softmax(_rand(2, 3, 3, seed=4), -1).detach().requires_grad_()
    gamma = (1 + torch.rand(2, 3, dtype=D)).requires_grad_()
    assert gradcheck(lambda a, b, c: sharpen(circular_shift(a, b), c), (w, shift, gamma), eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("offsets", [1, 3, 5])
def test_ntm_addressing_gradient_matches_finite_differences(offsets):
    """ntm_address (one pass, backward written out) against finite differences and against the
    composition of the four public steps through autograd."""
    memory, key = _rand(2, 6, 4, seed=5), _rand(2, 3, 4, seed=6)
    prev = torch.softmax(_rand(2, 3, 6, seed=7), -1).detach().requires_grad_()
    strength = (torch.rand(2, 3, dtype=D) + 0.5).requires_grad_()
    gate = torch.rand(2, 3, dtype=D).requires_grad_()
    shift = torch.softmax(_rand(2, 3, offsets, seed=8), -1).detach().requires_grad_()
    gamma = (1 + torch.rand(2, 3, dtype=D)).requires_grad_()
    args = (memory, prev, key, strength, gate, shift, gamma)
    assert gradcheck(ntm_address, args, eps=1e-6, atol=1e-8, rtol=1e-6)
    composed = sharpen(circular_shift(interpolate(_plain_content_weights(key, memory, strength), prev, gate), shift), gamma)
    out = ntm_address(*args)
    assert torch.allclose(out, composed, rtol=1e-12, atol=0)
    probe = torch.randn(out.shape, dtype=D, generator=torch.Generator().manual_seed(1))
    for a, b in zip(torch.autograd.grad((out * probe).sum(), args), torch.autograd.grad((composed * probe).sum(), args)):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-14)


def test_circular_shift_moves_weight_by_the_offset_with_wraparound():
    w = torch.tensor([[[0.0, 0.0, 0.0, 1.0]]])
    plus_one = torch.tensor([[[0.0, 0.0, 1.0]]])  # offsets -1, 0, +1
    assert torch.equal(circular_shift(w, plus_one), torch.tensor([[[1.0, 0.0, 0.0, 0.0]]]))
    minus_one = torch.tensor([[[1.0, 0.0, 0.0]]])
    assert torch.equal(circular_shift(w, minus_one), torch.tensor([[[0.0, 0.0, 1.0, 0.0]]]))


def test_sharpen_by_hand():
    w = torch.tensor([[[0.25, 0.75]]], dtype=D)
    assert torch.allclose(sharpen(w, torch.tensor([[2.0]], dtype=D)), torch.tensor([[[0.1, 0.9]]], dtype=D))


def test_least_used_marks_the_n_smallest_and_breaks_ties_by_index():
    usage = torch.tensor([[0.5, 0.1, 0.3, 0.1], [0.0, 0.0, 0.0, 0.0]])
    assert torch.equal(least_used(usage, 2), torch.tensor([[0.0, 1.0, 0.0, 1.0], [1.0, 1.0, 0.0, 0.0]]))


def _lrua(n=4, w=3, heads=2, gamma=0.9):
    return LRUAMemory(input_size=1, slots=n, width=w, heads=heads, gamma=gamma).double()


def test_lrua_step_gradient_matches_finite_differences():
    mem = _lrua()
    usage = torch.tensor([[0.9, 0.2, 0.5, 0.05], [0.3, 0.7, 0.1, 0.6]], dtype=D).requires_grad_()  # no ties
    prev = torch.softmax(_rand(2, 2, 4, seed=9), -1).detach().requires_grad_()
    memory, keys, alpha = _rand(2, 4, 3, seed=10), _rand(2, 2, 3, seed=11), _rand(2, 2, seed=12)

    def f(memory, usage, prev, keys, alpha):
        reads, state, w_r, w_w = mem.step(keys, alpha, LRUAState(memory, usage, prev))
        return reads, state.memory, state.usage, w_w

    assert gradcheck(f, (memory, usage, prev, keys, alpha), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_lrua_tiny_read_and_write_by_hand():
    """3 locations of width 2, one head, gamma 0.5; every number below is worked out by hand."""
    mem = _lrua(n=3, w=2, heads=1, gamma=0.5)
    memory = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]], dtype=D)
    usage = torch.tensor([[0.4, 0.1, 0.3]], dtype=D)  # location 1 is least used
    prev_read = torch.tensor([[[0.0, 0.0, 1.0]]], dtype=D)
    key = torch.tensor([[[2.0, 0.0]]], dtype=D)
    alpha = torch.tensor([[3.0]], dtype=D).log()  # sigmoid(log 3) = 3/4
    reads, state, w_r, w_w = mem.step(key, alpha, LRUAState(memory, usage, prev_read))
    # read: cosines (1, 0, 1/sqrt 2) -> softmax; reads = w_r @ M_{t-1}
    c = torch.tensor([1.0, 0.0, 2**-0.5], dtype=D)
    expect_r = torch.exp(c) / torch.exp(c).sum()
    assert torch.allclose(w_r[0, 0], expect_r, atol=1e-12)
    assert torch.allclose(reads[0, 0], torch.stack([expect_r[0] + expect_r[2], expect_r[1] + expect_r[2]]), atol=1e-12)
    # write: 3/4 * previous read (location 2) + 1/4 * least used (location 1)
    assert torch.allclose(w_w[0, 0], torch.tensor([0.0, 0.25, 0.75], dtype=D))
    # location 1 is zeroed, then key * w_w is added
    assert torch.allclose(state.memory[0], torch.tensor([[1.0, 0.0], [0.5, 0.0], [2.5, 1.0]], dtype=D))
    # usage: 0.5 * old + read + write
    assert torch.allclose(state.usage[0], 0.5 * usage[0] + expect_r + torch.tensor([0.0, 0.25, 0.75], dtype=D))
    assert torch.equal(state.read_weights, w_r)


def test_ntm_step_gradient_matches_finite_differences():
    """The whole NTM step (addressing of the write and read heads, erase/add write, read) from the
    head outputs and the state."""
    mem = NTMMemory(input_size=1, slots=5, width=3, heads=2, shift_range=1).double()
    raw = _rand(2, 2 * mem._per_head + mem._per_head + 2 * 3, seed=13)
    memory = _rand(2, 5, 3, seed=14)
    prev_read = torch.softmax(_rand(2, 2, 5, seed=15), -1).detach().requires_grad_()
    prev_write = torch.softmax(_rand(2, 1, 5, seed=16), -1).detach().requires_grad_()

    def f(raw, memory, prev_read, prev_write):
        reads, state, _, _ = mem.advance(raw, NTMState(memory, prev_read, prev_write))
        return reads, state.memory, state.read_weights, state.write_weights

    assert gradcheck(f, (raw, memory, prev_read, prev_write), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_cosine_gradient_equals_autograds_at_a_zero_location_and_below_eps():
    """A location emptied to zero (norm 0) and a key so short that ``|k| |M(i)|`` falls below eps
    (the bound holds): where the cosine has a kink, the written-out backward takes the same
    one-sided choice as autograd through ``norm`` and ``clamp_min``."""
    keys = _rand(2, 3, 4, seed=17)
    memory = _rand(2, 5, 4, seed=18)
    with torch.no_grad():
        memory[:, 2] = 0.0
        keys[0, 1] *= 1e-9
    new_k, new_m = torch.autograd.grad((cosine_similarity(keys, memory) * memory.new_ones(2, 3, 5).cumsum(-1)).sum(), (keys, memory))
    dots = torch.einsum("bhw,bnw->bhn", keys, memory)
    plain = dots / (keys.norm(dim=-1).unsqueeze(-1) * memory.norm(dim=-1).unsqueeze(-2)).clamp_min(1e-8)
    ref_k, ref_m = torch.autograd.grad((plain * memory.new_ones(2, 3, 5).cumsum(-1)).sum(), (keys, memory))
    assert torch.allclose(new_k, ref_k, rtol=1e-12, atol=0) and torch.allclose(new_m, ref_m, rtol=1e-12, atol=0)


def test_ntm_write_erases_then_adds():
    mem = NTMMemory(input_size=1, slots=3, width=2, heads=1, shift_range=1).double()
    with torch.no_grad():
        mem.write_head.weight.zero_()
        mem.read_heads.weight.zero_()
        bias = torch.zeros_like(mem.write_head.bias)
        w = 2
        bias[w] = -30.0       # strength ~ 0: content weights uniform
        bias[w + 1] = -30.0   # gate ~ 0: keep the previous weights (focused on location 0)
        bias[w + 2] = 30.0    # gamma large: sharp
        bias[w + 3 : w + 6] = torch.tensor([-30.0, 30.0, -30.0])  # shift 0
        bias[mem._per_head : mem._per_head + w] = 30.0  # erase everything
        bias[mem._per_head + w :] = torch.tensor([3.0, -1.0])  # add
        mem.write_head.bias.copy_(bias)
    state = mem.initial_state(1, dtype=D)
    memory = torch.tensor([[[5.0, 5.0], [1.0, 2.0], [3.0, 4.0]]], dtype=D)
    _, new, _, w_w = mem(torch.zeros(1, 1, dtype=D), state._replace(memory=memory))
    assert torch.allclose(w_w[0, 0], torch.tensor([1.0, 0.0, 0.0], dtype=D), atol=1e-9)
    assert torch.allclose(new.memory[0], torch.tensor([[3.0, -1.0], [1.0, 2.0], [3.0, 4.0]], dtype=D), atol=1e-9)


@pytest.mark.parametrize("memory", ["lrua", "ntm", None])
def test_batched_time_loop_equals_one_episode_at_a_time(memory):
    torch.manual_seed(0)
    net = MemoryAugmentedLSTM(5, 3, hidden_size=8, memory=memory, slots=6, width=4, heads=2).double()
    x = torch.randn(3, 7, 5, dtype=D)
    out = net(x, trace=True)
    for b in range(3):
        one = net(x[b : b + 1], trace=True)
        assert torch.allclose(out.outputs[b], one.outputs[0], atol=1e-12)
        if memory is not None:
            assert torch.allclose(out.read_weights[b], one.read_weights[0], atol=1e-12)
            assert torch.allclose(out.write_weights[b], one.write_weights[0], atol=1e-12)


def test_continuing_from_a_state_equals_one_long_sequence():
    torch.manual_seed(0)
    net = MemoryAugmentedLSTM(5, 3, hidden_size=8, memory="lrua", slots=6, width=4, heads=2).double()
    x = torch.randn(2, 6, 5, dtype=D)
    whole = net(x).outputs
    first = net(x[:, :4])
    rest = net(x[:, 4:], first.state).outputs
    assert torch.allclose(torch.cat([first.outputs, rest], 1), whole, atol=1e-12)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: MemoryAugmentedLSTM(4, 2, memory="lru"), r"memory='lru' is not known; use one of lrua, ntm"),
        (lambda: LRUAMemory(4, slots=2, heads=4), r"heads=4 but the memory has slots=2"),
        (lambda: LRUAMemory(4, gamma=1.5), r"gamma=1.5 must lie in \(0, 1\)"),
        (lambda: NTMMemory(4, slots=2, shift_range=1), r"shift_range=1 must be an int in 0..0"),
        (lambda: LRUAMemory(4, width=0), r"width=0 must be a positive int"),
    ],
)
def test_bad_sizes_are_refused_with_the_argument_named(build, message):
    with pytest.raises(ValueError, match=message):
        build()


# -- the fast time loop against a step-by-step reference --------------------------------------------
def _plain_content_weights(keys, memory, strength=1.0):
    """Cosine similarity and softmax through autograd's own operations (the module writes the
    cosine's backward out)."""
    dots = torch.einsum("bhw,bnw->bhn", keys, memory)
    norms = keys.norm(dim=-1).unsqueeze(-1) * memory.norm(dim=-1).unsqueeze(-2)
    strength = strength.unsqueeze(-1) if isinstance(strength, torch.Tensor) else strength
    return torch.softmax(strength * dots / norms.clamp_min(1e-8), dim=-1)


def _reference_lrua_step(mem, keys, alpha, state):
    """The LRUA update of the module docstring, written out one rule at a time."""
    memory, usage, prev_read = state
    w_read = _plain_content_weights(keys, memory)
    reads = torch.einsum("bhn,bnw->bhw", w_read, memory)
    gate = torch.sigmoid(alpha).unsqueeze(-1)
    w_write = gate * prev_read + (1 - gate) * least_used(usage, mem.heads).unsqueeze(1)
    memory = memory * (1 - least_used(usage, 1)).unsqueeze(-1) + torch.einsum("bhn,bhw->bnw", w_write, keys)
    usage = mem.gamma * usage + w_read.sum(1) + w_write.sum(1)
    return reads, LRUAState(memory, usage, w_read), w_read, w_write


def _reference_ntm_step(mem, h, state):
    """Graves et al.'s addressing and erase/add write, one rule at a time."""
    b, w, p = h.shape[0], mem.width, mem._per_head
    memory, prev_read, prev_write = state

    def address(raw, memory, previous):
        key, strength, gate, gamma, shift = raw[..., :w], raw[..., w], raw[..., w + 1], raw[..., w + 2], raw[..., w + 3 :]
        content = _plain_content_weights(key, memory, torch.nn.functional.softplus(strength))
        g = torch.sigmoid(gate).unsqueeze(-1)
        gated = g * content + (1 - g) * previous
        return sharpen(circular_shift(gated, torch.softmax(shift, -1)), 1 + torch.nn.functional.softplus(gamma))

    raw_w = mem.write_head(h).unsqueeze(1)
    w_write = address(raw_w[..., :p], memory, prev_write)
    erase, add = torch.sigmoid(raw_w[..., p : p + w]), raw_w[..., p + w :]
    ww = w_write.transpose(1, 2)
    memory = memory * (1 - ww * erase) + ww * add
    w_read = address(mem.read_heads(h).view(b, mem.heads, p), memory, prev_read)
    reads = torch.einsum("bhn,bnw->bhw", w_read, memory)
    return reads.reshape(b, -1), NTMState(memory, w_read, w_write), w_read, w_write


def _reference_forward(net, inputs, state=None):
    """``MemoryAugmentedLSTM`` one step at a time: the ``nn.LSTMCell`` on ``[x_t, r_{t-1}]``, the
    memory's heads on ``h_t``, the output layer on ``[h_t, r_t]``."""
    b, steps, _ = inputs.shape
    h, c, reads, mem = net.initial_state(b, dtype=inputs.dtype) if state is None else state
    outs, w_reads, w_writes = [], [], []
    for t in range(steps):
        if net.memory is None:
            h, c = net.controller(inputs[:, t], (h, c))
            outs.append(net.output(h))
            continue
        h, c = net.controller(torch.cat([inputs[:, t], reads], -1), (h, c))
        if isinstance(net.memory, LRUAMemory):
            keys = net.memory.keys(h).view(b, net.memory.heads, net.memory.width)
            reads, mem, w_r, w_w = _reference_lrua_step(net.memory, keys, net.memory.alpha(h), mem)
            reads = reads.reshape(b, -1)
        else:
            reads, mem, w_r, w_w = _reference_ntm_step(net.memory, h, mem)
        outs.append(net.output(torch.cat([h, reads], -1)))
        w_reads.append(w_r)
        w_writes.append(w_w)
    trace = (torch.stack(w_reads, 1), torch.stack(w_writes, 1)) if w_reads else (None, None)
    return torch.stack(outs, 1), (h, c, reads, mem), trace


def _flat(state):
    if state is None:
        return []
    if isinstance(state, torch.Tensor):
        return [state]
    return [t for s in state for t in _flat(s)]


def _assert_close(new, ref, rtol):
    for a, b in zip(new, ref, strict=True):
        assert a.shape == b.shape
        scale = b.abs().max().clamp_min(1e-300)
        assert ((a - b).abs().max() / scale) <= rtol, f"relative difference {float((a - b).abs().max() / scale):.3g}"


@pytest.mark.parametrize("memory", ["lrua", "ntm", None])
@pytest.mark.parametrize("start", ["fresh", "continued"])
def test_time_loop_equals_the_step_by_step_reference_in_outputs_state_and_gradients(memory, start):
    """float64, relative tolerance 1e-10 (of each tensor's largest entry): the outputs, the final
    state, the traced read/write weights and the gradient of every parameter and of the input."""
    torch.manual_seed(0)
    net = MemoryAugmentedLSTM(6, 3, hidden_size=9, memory=memory, slots=7, width=4, heads=3).double()
    x = torch.randn(2, 11, 6, dtype=D)
    with torch.no_grad():
        state = None if start == "fresh" else net(torch.randn(2, 5, 6, dtype=D)).state
    weights = torch.randn(2, 11, 3, dtype=D)
    results = []
    for run in ("new", "reference"):
        net.zero_grad()
        xi = x.clone().requires_grad_()
        if run == "new":
            out = net(xi, state, trace=memory is not None)
            outputs, final, trace = out.outputs, out.state, (out.read_weights, out.write_weights)
        else:
            outputs, final, trace = _reference_forward(net, xi, state)
        (outputs * weights).sum().backward()
        grads = [p.grad.clone() for p in net.parameters()] + [xi.grad]
        results.append([outputs, *_flat(final), *_flat(trace if memory is not None else None), *grads])
    _assert_close(results[0], results[1], rtol=1e-10)


@pytest.mark.parametrize("memory", ["lrua", "ntm", None])
@pytest.mark.parametrize("batch, steps, heads, slots, shift_range", [(1, 1, 1, 1, 0), (1, 2, 2, 5, 2), (3, 1, 1, 3, 1)])
def test_time_loop_equals_the_reference_at_the_smallest_sizes(memory, batch, steps, heads, slots, shift_range):
    """One episode, one step, one head, one location (no shift), and the widest shift a memory
    allows: the same float64 comparison as above (a parameter without a gradient in the
    reference, e.g. the LRUA gate after a single step, counts as zero)."""
    torch.manual_seed(1)
    options = {"shift_range": shift_range} if memory == "ntm" else {}
    net = MemoryAugmentedLSTM(3, 2, hidden_size=4, memory=memory, slots=slots, width=2, heads=heads, **options).double()
    x, weights = torch.randn(batch, steps, 3, dtype=D), torch.randn(batch, steps, 2, dtype=D)
    results = []
    for run in ("new", "reference"):
        net.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_()
        if run == "new":
            out = net(xi, trace=memory is not None)
            outputs, final, trace = out.outputs, out.state, (out.read_weights, out.write_weights)
        else:
            outputs, final, trace = _reference_forward(net, xi)
        (outputs * weights).sum().backward()
        grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in net.parameters()] + [xi.grad]
        results.append([outputs, *_flat(final), *_flat(trace if memory is not None else None), *grads])
    _assert_close(results[0], results[1], rtol=1e-10)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_fused_lstm_in_float32_equals_the_reference_up_to_float32_rounding(mode):
    """float32 takes PyTorch's oneDNN LSTM kernels (training and inference ones); relative 1e-5."""
    torch.manual_seed(0)
    net = MemoryAugmentedLSTM(30, 5, hidden_size=20, memory=None).train(mode == "train")
    x = torch.randn(4, 25, 30)
    outs = []
    for fn in (lambda: net(x).outputs, lambda: _reference_forward(net, x)[0]):
        net.zero_grad()
        fn().square().sum().backward()
        outs.append([fn().detach()] + [p.grad.clone() for p in net.parameters()])
    _assert_close(outs[0], outs[1], rtol=1e-5)


def test_zero_steps_return_the_state_unchanged():
    net = MemoryAugmentedLSTM(3, 2, hidden_size=4, memory="lrua", slots=5, width=2, heads=1).double()
    state = net(torch.randn(1, 3, 3, dtype=D)).state
    out = net(torch.zeros(1, 0, 3, dtype=D), state, trace=True)
    assert out.outputs.shape == (1, 0, 2)
    assert all(a is b for a, b in zip(_flat(out.state), _flat(state), strict=True))


def test_inputs_of_the_wrong_width_are_refused_with_the_sizes():
    net = MemoryAugmentedLSTM(6, 3, hidden_size=4, memory="ntm", slots=5, width=2, heads=1)
    with pytest.raises(ValueError, match=r"inputs has 7 features per step but the network was built for input_size=6"):
        net(torch.zeros(1, 2, 7))


#: parameter names and shapes of MemoryAugmentedLSTM(405, 5) as checkpoints store them (the
#: configs' sizes: 200 units, 128 x 40 memory, 4 heads); a faster implementation must keep them
CHECKPOINT_LAYOUT = {
    "lrua": {
        "memory.keys.weight": (160, 200), "memory.keys.bias": (160,), "memory.alpha.weight": (4, 200),
        "memory.alpha.bias": (4,), "controller.weight_ih": (800, 565), "controller.weight_hh": (800, 200),
        "controller.bias_ih": (800,), "controller.bias_hh": (800,), "output.weight": (5, 360), "output.bias": (5,),
    },
    "ntm": {
        "memory.read_heads.weight": (184, 200), "memory.read_heads.bias": (184,), "memory.write_head.weight": (126, 200),
        "memory.write_head.bias": (126,), "controller.weight_ih": (800, 565), "controller.weight_hh": (800, 200),
        "controller.bias_ih": (800,), "controller.bias_hh": (800,), "output.weight": (5, 360), "output.bias": (5,),
    },
    None: {
        "controller.weight_ih": (800, 405), "controller.weight_hh": (800, 200), "controller.bias_ih": (800,),
        "controller.bias_hh": (800,), "output.weight": (5, 200), "output.bias": (5,),
    },
}


@pytest.mark.parametrize("memory", ["lrua", "ntm", None])
def test_checkpoints_of_the_stored_parameter_layout_load(memory):
    net = MemoryAugmentedLSTM(405, 5, hidden_size=200, memory=memory)
    layout = CHECKPOINT_LAYOUT[memory]
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == layout
    g = torch.Generator().manual_seed(0)
    saved = {k: torch.randn(*shape, generator=g) for k, shape in layout.items()}
    net.load_state_dict(saved)  # strict: every stored name is taken, none is missing
    assert all(torch.equal(net.state_dict()[k], v) for k, v in saved.items())


@pytest.mark.parametrize("memory", ["lrua", "ntm"])
def test_differentiating_the_memory_twice_is_refused(memory):
    """The memories' backward is written out once; a second derivative raises instead of being
    silently wrong."""
    net = MemoryAugmentedLSTM(3, 2, hidden_size=4, memory=memory, slots=5, width=2, heads=1).double()
    x = torch.randn(1, 3, 3, dtype=D, requires_grad=True)
    (g,) = torch.autograd.grad(net(x).outputs.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        g.sum().backward()


@pytest.mark.parametrize("memory", ["lrua", "ntm"])
def test_function_transforms_over_the_memory_are_refused(memory):
    """``torch.func`` would bypass the once-only backward (a second derivative through it would come
    out silently wrong), so the memories refuse its transforms rather than run under them."""
    net = MemoryAugmentedLSTM(3, 2, hidden_size=4, memory=memory, slots=5, width=2, heads=1).double()
    params = {k: v.detach() for k, v in net.named_parameters()}
    x = torch.randn(2, 3, 3, dtype=D)
    with pytest.raises(RuntimeError, match="setup_context"):
        torch.func.grad(lambda p: torch.func.functional_call(net, p, (x,)).outputs.sum())(params)
    with pytest.raises(RuntimeError, match="setup_context"):
        torch.func.vmap(lambda xi: net(xi.unsqueeze(0)).outputs)(x)


@pytest.mark.parametrize("offsets, slots, message", [
    (2, 6, r"^shift has 2 offsets; it must have an odd number \(offsets -R..R\)$"),
    (7, 6, r"^shift offsets -3..3 need at least 7 memory locations, got 6$"),
])
def test_shifts_that_do_not_fit_are_refused_by_the_shift_and_the_whole_addressing(offsets, slots, message):
    memory, previous = torch.rand(1, slots, 2, dtype=D), torch.softmax(torch.rand(1, 1, slots, dtype=D), -1)
    shift = torch.softmax(torch.rand(1, 1, offsets, dtype=D), -1)
    with pytest.raises(ValueError, match=message):
        circular_shift(previous, shift)
    with pytest.raises(ValueError, match=message):
        ntm_address(memory, previous, torch.rand(1, 1, 2, dtype=D), torch.ones(1, 1, dtype=D), torch.full((1, 1), 0.5, dtype=D),
                    shift, torch.ones(1, 1, dtype=D))
