"""SNAIL's blocks: causality, branches equal to running the extended sequence, gradients, errors."""

import pytest
import torch

from metakit.models import AttentionBlock, CausalConv1d, DenseBlock, SNAILNet, TCBlock
from metakit.models.snail import tc_dilations


def small_blocks():
    """(name, module) of every block type, small, float64."""
    torch.manual_seed(0)
    return [
        ("conv", CausalConv1d(3, 4, kernel_size=2, dilation=2)),
        ("conv-k3", CausalConv1d(3, 4, kernel_size=3, dilation=1)),
        ("dense", DenseBlock(3, dilation=1, filters=2)),
        ("tc", TCBlock(3, seq_len=7, filters=2)),
        ("attention", AttentionBlock(3, key_size=4, value_size=2)),
        ("snail", SNAILNet(3, 5, seq_len=9, filters=2, key_sizes=(4, 3, 2), value_sizes=(2, 3, 2))),
    ]


BLOCKS = small_blocks()


@pytest.mark.parametrize("name,block", BLOCKS, ids=[n for n, _ in BLOCKS])
@pytest.mark.parametrize("t", [0, 3, 6])
def test_a_change_at_step_t_leaves_earlier_outputs_bitwise_unchanged(name, block, t):
    block = block.double()
    x = torch.randn(2, 7, 3, dtype=torch.float64)
    y = block(x)
    x2 = x.clone()
    x2[:, t] += torch.randn(2, 3, dtype=torch.float64) * 3
    y2 = block(x2)
    assert torch.equal(y[:, :t], y2[:, :t])
    # and the step itself does change (the test could not pass with a constant block)
    assert not torch.equal(y[:, t], y2[:, t])


@pytest.mark.parametrize("name,block", BLOCKS, ids=[n for n, _ in BLOCKS])
@pytest.mark.parametrize("steps", [1, 2, 5, 8])
def test_branches_equal_running_each_extended_sequence(name, block, steps):
    block = block.double()
    x = torch.randn(2, steps, 3, dtype=torch.float64)
    br = torch.randn(2, 4, 3, dtype=torch.float64)
    y, yb = block(x, br)
    assert torch.equal(y, block(x))
    for m in range(4):
        full = block(torch.cat([x, br[:, m : m + 1]], 1))
        torch.testing.assert_close(yb[:, m], full[:, -1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name,block", BLOCKS, ids=[n for n, _ in BLOCKS])
def test_a_branch_never_sees_another_branch(name, block):
    block = block.double()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    br = torch.randn(2, 3, 3, dtype=torch.float64)
    _, yb = block(x, br)
    br2 = br.clone()
    br2[:, 1] += 5.0
    _, yb2 = block(x, br2)
    assert torch.equal(yb[:, 0], yb2[:, 0]) and torch.equal(yb[:, 2], yb2[:, 2])
    assert not torch.equal(yb[:, 1], yb2[:, 1])


@pytest.mark.parametrize("name,block", BLOCKS, ids=[n for n, _ in BLOCKS])
def test_gradients_match_finite_differences_in_float64(name, block):
    block = block.double()
    x = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    br = torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True)
    names = [k for k, _ in block.named_parameters()]
    ps = [p.detach().clone().requires_grad_(True) for _, p in block.named_parameters()]
    assert ps

    def f(x, br, *ps):
        return torch.func.functional_call(block, dict(zip(names, ps)), (x, br))

    assert torch.autograd.gradcheck(f, (x, br, *ps), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_tc_dilations_have_the_papers_block_count_and_reach_every_earlier_step():
    assert tc_dilations(6) == [1, 2, 4]  # 5-way 1-shot: T = 6, ceil(log2 6) = 3 blocks
    assert tc_dilations(26) == [1, 2, 4, 8, 16]  # 5-way 5-shot
    assert tc_dilations(101) == [1, 2, 4, 8, 16, 32, 64]  # 20-way 5-shot
    assert tc_dilations(1) == [1] and tc_dilations(2) == [1]
    for t in range(1, 130):
        reach = {0}
        for d in tc_dilations(t):
            reach |= {r + d for r in reach}
        assert set(range(t)) <= reach, t


@pytest.mark.parametrize("steps", [2, 5, 6, 11, 26])
def test_the_last_step_of_a_tc_block_depends_on_every_step(steps):
    torch.manual_seed(0)
    block = TCBlock(3, seq_len=steps, filters=2).double()
    x = torch.randn(1, steps, 3, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(block(x)[0, -1].sum(), x)
    assert bool((grad[0].abs().sum(-1) > 0).all()), grad[0].abs().sum(-1)


def test_the_paper_architecture_has_its_channel_counts():
    net = SNAILNet(64 + 5, 5, seq_len=6)
    kinds = [type(b).__name__ for b in net.blocks]
    assert kinds == ["AttentionBlock", "TCBlock", "AttentionBlock", "TCBlock", "AttentionBlock"]
    sizes = [(b.key_size, b.value_size) for b in net.blocks if isinstance(b, AttentionBlock)]
    assert sizes == [(64, 32), (256, 128), (512, 256)]
    # 69 -> +32 -> +3*128 -> +128 -> +3*128 -> +256
    assert net.head.in_features == 69 + 32 + 384 + 128 + 384 + 256
    assert net(torch.randn(2, 6, 69)).shape == (2, 6, 5)


def test_bad_input_is_refused_with_the_argument_named():
    net = SNAILNet(4, 2, seq_len=3, filters=2, key_sizes=(2,), value_sizes=(2,))
    with pytest.raises(ValueError, match=r"context seq_len=3; give at most 3 steps"):
        net(torch.randn(1, 4, 4))
    with pytest.raises(ValueError, match=r"3 steps and a continuation, longer than the network's context seq_len=3"):
        net(torch.randn(1, 3, 4), torch.randn(1, 2, 4))
    with pytest.raises(ValueError, match=r"takes sequences x of shape \[batch, steps, 4\], got shape \(1, 3, 5\)"):
        net(torch.randn(1, 3, 5))
    with pytest.raises(ValueError, match=r"branches of shape \[batch, continuations, 4\] with the batch of x \(2\)"):
        net(torch.randn(2, 1, 4), torch.randn(1, 1, 4))
    with pytest.raises(ValueError, match=r"key_sizes=\[2, 3\] and value_sizes=\[2\] must be non-empty and of equal length"):
        SNAILNet(4, 2, seq_len=3, key_sizes=(2, 3), value_sizes=(2,))
    with pytest.raises(ValueError, match=r"value_sizes\[0\]=0 must be a positive int"):
        SNAILNet(4, 2, seq_len=3, key_sizes=(2,), value_sizes=(0,))
    with pytest.raises(ValueError, match=r"seq_len=0 must be a positive int"):
        TCBlock(3, 0, 2)
    with pytest.raises(ValueError, match=r"dilation=0 must be a positive int"):
        CausalConv1d(3, 3, dilation=0)
