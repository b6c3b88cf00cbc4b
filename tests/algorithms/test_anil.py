"""ANIL: only the head adapts; the body still gets its (second-order) meta-gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metakit.algorithms import ANIL, MAML, get_algorithm
from metakit.models import Conv4
from metakit.tasks import EpisodeBatch

D64 = torch.float64


class TinyConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2, track_running_stats=False)
        self.head = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))).flatten(1))


def _batch(dtype=torch.float32) -> EpisodeBatch:
    g = torch.Generator().manual_seed(0)
    return EpisodeBatch(
        torch.randn(2, 6, 1, 4, 4, generator=g, dtype=dtype), torch.arange(3).repeat(2).expand(2, -1).contiguous(),
        torch.randn(2, 9, 1, 4, 4, generator=g, dtype=dtype), torch.arange(3).repeat(3).expand(2, -1).contiguous(), 3,
    )


def test_registered_and_adapts_only_the_head():
    assert get_algorithm("anil") is ANIL
    assert ANIL(Conv4(out_features=5, track_running_stats=False)).adapt_names == ["head.weight", "head.bias"]
    algo = ANIL(TinyConvBN(), inner_steps=2)
    ep = _batch()[0]
    learner = algo.adapt(ep.support_x, ep.support_y, 3)
    params = dict(algo.model.named_parameters())
    for n in ("conv.weight", "conv.bias", "bn.weight", "bn.bias"):
        assert torch.equal(learner.params[n], params[n])
    assert not torch.equal(learner.params["head.weight"], params["head.weight"])


def test_second_order_meta_gradient_matches_finite_differences(finite_differences):
    torch.manual_seed(1)
    algo = ANIL(TinyConvBN().to(D64), inner_lr=0.5, inner_steps=2)
    batch = _batch(D64)
    algo.meta_backward(batch)
    grads = torch.cat([p.grad.reshape(-1) for p in algo.parameters()])
    assert torch.count_nonzero(algo.model.conv.weight.grad) > 0
    fd_t = finite_differences(lambda: algo.meta_loss(batch)[0], list(algo.parameters()))
    assert float((grads - fd_t).abs().max() / fd_t.abs().max()) < 1e-7


def test_differs_from_maml_and_from_first_order():
    torch.manual_seed(2)
    model = TinyConvBN()
    batch = _batch()

    def body_grad(algo) -> Tensor:
        algo.zero_grad(set_to_none=True)
        algo.meta_backward(batch)
        return algo.model.conv.weight.grad.clone()

    anil, anil_fo, maml = ANIL(model, inner_steps=2), ANIL(model, inner_steps=2, first_order=True), MAML(model, inner_steps=2)
    a, b, c = body_grad(anil), body_grad(anil_fo), body_grad(maml)
    assert not torch.allclose(a, b, rtol=1e-3) and not torch.allclose(a, c, rtol=1e-3)


def test_a_model_without_a_linear_head_is_an_error():
    with pytest.raises(ValueError, match=r"adapt='head': the last module with parameters is 'features.13' \(BatchNorm2d\), "
                                         r"not an nn.Linear head; give the model a linear head, e.g. Conv4\(out_features=ways\)"):
        ANIL(Conv4(track_running_stats=False))


def _tiny_forward(p: dict[str, Tensor], x: Tensor) -> Tensor:
    """TinyConvBN written with F.* ops (independent of the engine and of functional_call)."""
    h = F.conv2d(x, p["conv.weight"], p["conv.bias"], padding=1)
    h = F.batch_norm(h, None, None, p["bn.weight"], p["bn.bias"], training=True)
    return F.linear(torch.relu(h).flatten(1), p["head.weight"], p["head.bias"])


def test_first_order_meta_gradient_matches_a_hand_computation():
    """First-order ANIL: the head takes SGD steps with its support gradient as a constant; the
    meta-gradient is the query gradient at (body, adapted head) -- for the body its direct
    partial derivative only, for the head the gradient at the adapted head."""
    torch.manual_seed(3)
    algo = ANIL(TinyConvBN().to(D64), inner_lr=0.5, inner_steps=2, first_order=True)
    batch = _batch(D64)
    params = {n: v.detach() for n, v in algo.model.named_parameters()}
    head = ["head.weight", "head.bias"]
    expected = {n: torch.zeros_like(v) for n, v in params.items()}
    for ep in batch:
        p = dict(params)
        for _ in range(2):
            leaves = {n: (v.clone().requires_grad_() if n in head else v) for n, v in p.items()}
            g = torch.autograd.grad(F.cross_entropy(_tiny_forward(leaves, ep.support_x), ep.support_y),
                                    [leaves[n] for n in head])
            p.update({n: p[n] - 0.5 * gn for n, gn in zip(head, g)})
        leaves = {n: v.clone().requires_grad_() for n, v in p.items()}
        g = torch.autograd.grad(F.cross_entropy(_tiny_forward(leaves, ep.query_x), ep.query_y), list(leaves.values()))
        for n, gn in zip(leaves, g):
            expected[n] = expected[n] + gn / batch.num_tasks
    algo.meta_backward(batch)
    for n, p in algo.model.named_parameters():
        assert torch.allclose(p.grad, expected[n], rtol=1e-10, atol=1e-13), n
    algo.zero_grad(set_to_none=True)
    algo.meta_loss(batch)[0].backward()
    for n, p in algo.model.named_parameters():
        assert torch.allclose(p.grad, expected[n], rtol=1e-10, atol=1e-13), n
    assert torch.count_nonzero(expected["conv.weight"]) > 0
