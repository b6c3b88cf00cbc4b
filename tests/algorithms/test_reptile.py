"""Reptile: the update the outer SGD step applies is epsilon * mean(adapted - initial)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metakit.algorithms import MAML, Reptile, get_algorithm
from metakit.algorithms._inner import InnerLoopAlgorithm
from metakit.algorithms.inner_updates import SGD
from metakit.models import MLP
from metakit.runtime.config import algorithm_option_specs
from metakit.tasks import EpisodeBatch, SinusoidTasks


class TinyConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2, track_running_stats=False)
        self.head = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))).flatten(1))


def _sgd(model: nn.Module, x: Tensor, y: Tensor, steps: int, lr: float, loss_fn, batches=None) -> dict[str, Tensor]:
    """Reference inner loop: plain SGD on a detached copy of the parameters, by hand."""
    p = {n: v.detach().clone().requires_grad_() for n, v in model.named_parameters()}
    for k in range(steps):
        xb, yb = (x, y) if batches is None else (x[batches[k]], y[batches[k]])
        loss = loss_fn(torch.func.functional_call(model, p, (xb,)), yb)
        g = torch.autograd.grad(loss, list(p.values()))
        p = {n: (v - lr * gg).detach().requires_grad_() for (n, v), gg in zip(p.items(), g)}
    return {n: v.detach() for n, v in p.items()}


def test_registered():
    assert get_algorithm("reptile") is Reptile


def test_outer_sgd_step_is_epsilon_times_mean_of_adapted_minus_initial():
    torch.manual_seed(0)
    algo = Reptile(TinyConvBN(), inner_lr=0.1, inner_steps=3)
    g = torch.Generator().manual_seed(0)
    batch = EpisodeBatch(torch.randn(4, 6, 1, 4, 4, generator=g), torch.arange(3).repeat(2).expand(4, -1).contiguous(),
                         torch.randn(4, 3, 1, 4, 4, generator=g), torch.arange(3).expand(4, -1).contiguous(), 3)
    initial = {n: p.detach().clone() for n, p in algo.model.named_parameters()}
    adapted = [_sgd(algo.model, ep.support_x, ep.support_y, 3, 0.1, F.cross_entropy) for ep in batch]
    eps = 0.7
    opt = torch.optim.SGD(algo.parameters(), lr=eps)
    opt.zero_grad()
    metrics = algo.meta_backward(batch)
    opt.step()
    for n, p in algo.model.named_parameters():
        expected = initial[n] + eps * torch.stack([a[n] - initial[n] for a in adapted]).mean(0)
        assert torch.allclose(p.detach(), expected, rtol=1e-5, atol=1e-6), n
    assert set(metrics) == {"loss", "accuracy"}


def test_inner_minibatches_follow_the_global_rng():
    torch.manual_seed(1)
    algo = Reptile(MLP(1, [8], 1), inner_lr=0.02, inner_steps=4, inner_batch=3)
    ep = SinusoidTasks(5, seed=0).sample(1)[0]
    torch.manual_seed(5)
    learner = algo.adapt(ep.support_x, ep.support_y)
    after = torch.rand(3)
    torch.manual_seed(5)
    perm = torch.cat([torch.randperm(5), torch.randperm(5), torch.randperm(5)])
    assert torch.equal(torch.rand(3), after)  # a permutation is drawn only when the previous one runs out
    batches = [perm[3 * k : 3 * k + 3] for k in range(4)]
    ref = _sgd(algo.model, ep.support_x, ep.support_y, 4, 0.02, F.mse_loss, batches)
    for n, v in ref.items():
        assert torch.allclose(learner.params[n], v, atol=1e-6)


def test_meta_loss_is_for_monitoring_only_and_errors():
    algo = Reptile(MLP())
    loss, metrics = algo.meta_loss(SinusoidTasks(5, seed=0).sample(2))
    assert not loss.requires_grad and metrics["loss"] == pytest.approx(float(loss))
    with pytest.raises(ValueError, match=r"inner_batch=0 must be an int >= 1"):
        Reptile(MLP(), inner_batch=0)
    with pytest.raises(ValueError, match=r"task_batching='vmap' is not supported by Reptile; use loop"):
        Reptile(MLP(), task_batching="vmap")  # type: ignore[arg-type]


@pytest.mark.parametrize("inner_batch", [None, 2])
def test_zero_inner_steps_gives_a_zero_detached_direction(inner_batch):
    torch.manual_seed(2)
    algo = Reptile(MLP(1, [8], 1), inner_lr=0.02, inner_steps=0, inner_batch=inner_batch)
    batch = SinusoidTasks(5, seed=0).sample(2)
    algo.meta_backward(batch)
    for n, p in algo.model.named_parameters():
        assert p.grad is not None and not p.grad.requires_grad, n
        assert torch.count_nonzero(p.grad) == 0, n
    learner = algo.adapt(batch[0].support_x, batch[0].support_y)
    assert all(not v.requires_grad for v in learner.params.values())


def test_its_own_class_sharing_the_engine_with_the_same_options_and_checkpoint_names():
    assert not issubclass(Reptile, MAML) and issubclass(Reptile, InnerLoopAlgorithm)
    assert list(algorithm_option_specs("reptile")) == [
        "inner_lr", "inner_steps", "inner_batch", "eval_steps", "task_batching", "channels_last", "loss",
    ]
    algo = Reptile(TinyConvBN(), inner_lr=0.25)
    assert list(algo.state_dict()) == [f"model.{n}" for n in TinyConvBN().state_dict()]
    assert type(algo.inner_update) is SGD and algo.inner_update.lr == 0.25
    assert algo.adapt_names == [n for n, _ in algo.model.named_parameters()]
    with pytest.raises(ValueError, match=r"inner_lr=-1 must be a number >= 0"):
        Reptile(MLP(), inner_lr=-1)
    with pytest.raises(ValueError, match=r"Reptile: layer 'bn' \(BatchNorm2d\) tracks running statistics"):
        Reptile(_WithRunningStats())


class _WithRunningStats(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(x)
