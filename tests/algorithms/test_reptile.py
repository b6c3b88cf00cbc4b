"""Reptile: the update the outer SGD step applies is epsilon * mean(adapted - initial)."""

from __future__ import annotations

import copy

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
    """``bias=False`` for Adam: BatchNorm cancels a conv bias, whose gradient is then rounding
    noise that Adam divides by its own size (the tests compare weights, not noise)."""

    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1, bias=bias)
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
        "inner_optimizer", "inner_betas", "inner_eps", "inner_state", "inner_reduction",
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


# -- the published inner optimizer: Adam (beta1 = 0) whose state runs through all tasks ----------
def _adam_reference(model: nn.Module, tasks, steps: int, lr: float, betas, reduction: str = "mean",
                    batches=None) -> tuple[list[dict[str, Tensor]], torch.optim.Adam]:
    """torch.optim.Adam kept across the tasks, the weights set back to the initialisation before
    each: the adapted weights of every task, and the optimizer (its state after them)."""
    m = copy.deepcopy(model)
    initial = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = torch.optim.Adam(m.parameters(), lr=lr, betas=betas)
    adapted = []
    for x, y in tasks:
        with torch.no_grad():
            for n, p in m.named_parameters():
                p.copy_(initial[n])
        for k in range(steps):
            xb, yb = (x, y) if batches is None else (x[batches[k]], y[batches[k]])
            opt.zero_grad()
            F.cross_entropy(m(xb), yb, reduction=reduction).backward()
            opt.step()
        adapted.append({n: p.detach().clone() for n, p in m.named_parameters()})
    return adapted, opt


def _batch(seed: int, tasks: int = 3) -> EpisodeBatch:
    g = torch.Generator().manual_seed(seed)
    return EpisodeBatch(torch.randn(tasks, 6, 1, 4, 4, generator=g, dtype=torch.float64),
                        torch.arange(3).repeat(2).expand(tasks, -1).contiguous(),
                        torch.randn(tasks, 3, 1, 4, 4, generator=g, dtype=torch.float64),
                        torch.arange(3).expand(tasks, -1).contiguous(), 3)


def test_a_carried_adam_state_runs_through_the_tasks_of_training_as_in_the_published_code():
    torch.manual_seed(3)
    algo = Reptile(TinyConvBN(bias=False).to(torch.float64), inner_lr=0.01, inner_steps=2, inner_optimizer="adam",
                   inner_state="carry")
    assert type(algo.inner_update).__name__ == "Adam" and algo.inner_update.betas == (0.0, 0.999)
    phi = {n: p.detach().clone() for n, p in algo.model.named_parameters()}
    first, second = _batch(0), _batch(1)
    tasks = [(ep.support_x, ep.support_y) for b in (first, second) for ep in b]
    adapted, opt = _adam_reference(algo.model, tasks, 2, 0.01, (0.0, 0.999))
    algo.meta_backward(first)  # phi is not stepped: the second batch starts from the same phi
    algo.zero_grad()
    algo.meta_backward(second)
    for n, p in algo.model.named_parameters():  # the second batch's direction: its tasks continued the state
        expected = torch.stack([phi[n] - a[n] for a in adapted[3:]]).mean(0)
        assert torch.allclose(p.grad, expected, rtol=1e-10, atol=1e-13), n
    carried = dict(algo.carried_state.named_buffers())
    assert float(carried["adam/step"]) == 12  # 2 batches x 3 tasks x 2 steps
    for (n, _), p in zip(algo.model.named_parameters(), opt.param_groups[0]["params"]):  # the copy's, in order
        ref = opt.state[p]
        ours_m, ours_v = carried[f"adam/m/{n}".replace(".", ":")], carried[f"adam/v/{n}".replace(".", ":")]
        assert torch.allclose(ours_m, ref["exp_avg"], rtol=1e-10, atol=1e-14), n
        assert torch.allclose(ours_v, ref["exp_avg_sq"], rtol=1e-10, atol=1e-16), n


def test_evaluation_starts_from_the_carried_state_and_leaves_it_alone():
    torch.manual_seed(4)
    carry = Reptile(TinyConvBN(bias=False).to(torch.float64), inner_lr=0.01, inner_steps=2, inner_optimizer="adam",
                    inner_state="carry")
    reset = Reptile(copy.deepcopy(carry.model), inner_lr=0.01, inner_steps=2, inner_optimizer="adam")
    carry.meta_backward(_batch(0))
    before = {k: t.clone() for k, t in carry.carried_state.named_buffers()}
    ep = _batch(5)[0]
    with torch.no_grad():
        ours = carry.adapt(ep.support_x, ep.support_y, ways=3).params
        fresh = reset.adapt(ep.support_x, ep.support_y, ways=3).params
    assert all(torch.equal(t, before[k]) for k, t in carry.carried_state.named_buffers())
    # the reference: Adam kept through the three training tasks, then two steps on the test task
    tasks = [(t.support_x, t.support_y) for t in _batch(0)] + [(ep.support_x, ep.support_y)]
    adapted = _adam_reference(carry.model, tasks, 2, 0.01, (0.0, 0.999))[0][-1]
    for n in ours:
        assert torch.allclose(ours[n], adapted[n], rtol=1e-10, atol=1e-13), n
    assert not torch.allclose(ours["head.weight"], fresh["head.weight"])  # reset: a fresh state per task


def test_the_carried_state_is_in_the_checkpoint_and_a_restored_copy_continues_the_same_run():
    def build() -> Reptile:
        torch.manual_seed(6)
        return Reptile(TinyConvBN(bias=False).to(torch.float64), inner_lr=0.01, inner_steps=2,
                       inner_optimizer="adam", inner_state="carry")

    algo = build()
    algo.meta_backward(_batch(0))
    state = {k: v.clone() for k, v in algo.state_dict().items()}
    assert {k for k in state if k.startswith("carried_state.")} == {
        "carried_state.adam/step", *(f"carried_state.adam/{w}/{n.replace('.', ':')}" for w in "mv"
                                     for n, _ in algo.model.named_parameters())}
    again = build()
    again.meta_backward(_batch(7))  # a different history, replaced by the load
    again.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(again.carried_state.buffers(), algo.carried_state.buffers()))
    algo.zero_grad()
    again.zero_grad()
    algo.meta_backward(_batch(1))
    again.meta_backward(_batch(1))
    for (n, p), q in zip(algo.model.named_parameters(), again.model.parameters()):
        assert torch.equal(p.grad, q.grad), n
    assert int(again.carried_state.get_buffer("adam/step")) == 12
    assert "carried_state.adam/step" not in Reptile(TinyConvBN(bias=False), inner_optimizer="adam").state_dict()


def test_a_summed_inner_loss_is_the_published_codes():
    """SGD: the step is lr times the minibatch size; carried Adam: the reference with summed losses,
    minibatches of 2 of the 6 support examples (Adam's scale matters once batch sizes differ)."""
    torch.manual_seed(8)
    model = TinyConvBN(bias=False).to(torch.float64)
    ep = _batch(0)[0]
    with torch.no_grad():
        summed = Reptile(copy.deepcopy(model), inner_lr=0.05, inner_steps=2, inner_reduction="sum").adapt(
            ep.support_x, ep.support_y, ways=3).params
    plain = _sgd(model, ep.support_x, ep.support_y, 2, 0.05 * 6, F.cross_entropy)
    for n, v in plain.items():
        assert torch.allclose(summed[n], v, rtol=1e-10, atol=1e-13), n
    one = Reptile(copy.deepcopy(model), inner_lr=0.01, inner_steps=2, inner_batch=2, inner_optimizer="adam",
                  inner_state="carry", inner_reduction="sum")
    torch.manual_seed(9)
    one.meta_backward(EpisodeBatch(ep.support_x[None], ep.support_y[None], ep.query_x[None], ep.query_y[None], 3))
    torch.manual_seed(9)
    perm = torch.randperm(6)  # the minibatches Reptile draws: one permutation, two batches of 2
    adapted, _ = _adam_reference(model, [(ep.support_x, ep.support_y)], 2, 0.01, (0.0, 0.999), "sum",
                                 [perm[0:2], perm[2:4]])
    phi = dict(model.named_parameters())
    for n, p in one.model.named_parameters():
        assert torch.allclose(phi[n].detach() - p.grad, adapted[0][n], rtol=1e-10, atol=1e-13), n


def _float32(b: EpisodeBatch) -> EpisodeBatch:
    return EpisodeBatch(b.support_x.float(), b.support_y, b.query_x.float(), b.query_y, b.ways)


def test_inner_optimizer_options_are_checked():
    with pytest.raises(ValueError, match=r"inner_optimizer='rmsprop' is not valid; use sgd or adam"):
        Reptile(MLP(), inner_optimizer="rmsprop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"inner_betas, inner_state apply to inner_optimizer=adam only; set "
                                         r"inner_optimizer: adam, or remove inner_betas, inner_state"):
        Reptile(MLP(), inner_betas=[0.0, 0.9], inner_state="carry")
    with pytest.raises(ValueError, match=r"inner_state='keep' is not valid; use reset .* or carry"):
        Reptile(MLP(), inner_optimizer="adam", inner_state="keep")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"inner_reduction='none' is not valid; use mean or sum"):
        Reptile(MLP(), inner_reduction="none")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"betas=\(0.5, 1.5\) must each be in \[0, 1\)"):
        Reptile(MLP(), inner_optimizer="adam", inner_betas=[0.5, 1.5])
