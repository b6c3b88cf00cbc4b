"""Meta-SGD: one learned rate per weight, trained with the initialisation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metakit.algorithms import MetaSGD, get_algorithm
from metakit.algorithms.inner_updates import ElementSGD
from metakit.models import MLP
from metakit.tasks import SinusoidTasks

D64 = torch.float64


def _flat(ts) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in ts])


def test_registered_and_rates_have_the_shape_of_the_weights():
    assert get_algorithm("metasgd") is MetaSGD
    algo = MetaSGD(MLP(), inner_lr=0.01)
    params = dict(algo.model.named_parameters())
    assert [tuple(r.shape) for r in algo.inner_lrs] == [tuple(params[n].shape) for n in algo.adapt_names]
    assert all(torch.all(r == 0.01) for r in algo.inner_lrs)
    # the rates are the rule's, after the model's weights (the order optimizer states follow)
    assert isinstance(algo.inner_update, ElementSGD) and algo.inner_lrs is algo.inner_update.lrs
    names = [n for n, _ in algo.named_parameters()]
    model_names = [f"model.{n}" for n, _ in algo.model.named_parameters()]
    assert names == model_names + [f"inner_update.lrs.{i}" for i in range(len(algo.adapt_names))]
    assert list(algo.state_dict()) == names


def test_checkpoints_with_the_former_rate_names_load():
    """State dicts that name the rates ``inner_lrs.<i>`` (the name older checkpoints use) load."""
    torch.manual_seed(4)
    trained = MetaSGD(MLP(1, [4], 1), inner_lr_range=[0.0, 0.2])
    old = {k.replace("inner_update.lrs.", "inner_lrs."): v for k, v in trained.state_dict().items()}
    assert "inner_lrs.0" in old and not any(k.startswith("inner_update") for k in old)
    fresh = MetaSGD(MLP(1, [4], 1))
    fresh.load_state_dict(old)  # strict
    for a, b in zip(fresh.parameters(), trained.parameters()):
        assert torch.equal(a, b)
    fresh.load_state_dict(trained.state_dict())  # and the current names, of course


def test_uniform_initial_rates():
    torch.manual_seed(0)
    algo = MetaSGD(MLP(), inner_lr_range=[0.005, 0.1])
    flat = _flat([r.detach() for r in algo.inner_lrs])
    assert float(flat.min()) >= 0.005 and float(flat.max()) <= 0.1 and float(flat.std()) > 0.01
    with pytest.raises(ValueError, match=r"inner_lr_range=\[0.1, 0.01\] must be \[low, high\] with low <= high"):
        MetaSGD(MLP(), inner_lr_range=[0.1, 0.01])


def test_update_is_elementwise_rate_times_gradient():
    torch.manual_seed(1)
    algo = MetaSGD(MLP(1, [4], 1), inner_lr_range=[0.0, 0.2], inner_steps=1)
    ep = SinusoidTasks(5, seed=0).sample(1)[0]
    learner = algo.adapt(ep.support_x, ep.support_y)
    params = dict(algo.model.named_parameters())
    grads = torch.autograd.grad(F.mse_loss(algo.model(ep.support_x), ep.support_y), list(params.values()))
    for (n, p), g, r in zip(params.items(), grads, algo.inner_lrs):
        assert torch.allclose(learner.params[n], p - r * g, atol=1e-7)


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradients_of_weights_and_rates_match_finite_differences(first_order, finite_differences):
    torch.manual_seed(2)
    algo = MetaSGD(MLP(1, [5, 5], 1).to(D64), inner_lr_range=[0.01, 0.1], inner_steps=2, first_order=first_order)
    for r in algo.inner_lrs:
        r.data = r.data.to(D64)
    batch = SinusoidTasks(4, 6, seed=1).sample(2).to(dtype=D64)
    algo.meta_backward(batch)
    grads = _flat([p.grad for p in algo.parameters()])

    if first_order:
        # the first-order meta-gradient is not the gradient of the meta-loss: check the rates'
        # gradient by hand instead: d/d alpha of theta - alpha * g (g constant) chained with v
        return _check_first_order_rates(algo, batch, grads)
    fd_t = finite_differences(lambda: algo.meta_loss(batch)[0], list(algo.parameters()))
    assert float((grads - fd_t).abs().max() / fd_t.abs().max()) < 1e-7


def _check_first_order_rates(algo: MetaSGD, batch, grads) -> None:
    n_model = sum(p.numel() for p in algo.model.parameters())
    rate_grads = grads[n_model:]
    assert torch.count_nonzero(rate_grads) > 0
    # two steps by hand, g_k = grad L_support(theta_k) held constant: theta_2 = theta - a*(g_0 + g_1), so
    # the first-order meta-gradient is v = dL_query/d theta_2 for theta and -(g_0 + g_1) * v for a
    assert algo.inner_steps == 2
    rates = dict(zip(algo.adapt_names, (r.detach() for r in algo.inner_lrs)))
    exp_theta = {n: 0 for n in algo.adapt_names}
    exp_rate = {n: 0 for n in algo.adapt_names}
    for ep in batch:
        p = {n: v.detach() for n, v in algo.model.named_parameters()}
        g_sum = {n: 0 for n in p}
        for _ in range(2):
            leaf = {n: v.clone().requires_grad_() for n, v in p.items()}
            out = torch.func.functional_call(algo.model, leaf, (ep.support_x,))
            g = dict(zip(leaf, torch.autograd.grad(F.mse_loss(out, ep.support_y), list(leaf.values()))))
            p = {n: p[n] - rates[n] * g[n] for n in p}
            g_sum = {n: g_sum[n] + g[n] for n in p}
        leaf = {n: v.clone().requires_grad_() for n, v in p.items()}
        out = torch.func.functional_call(algo.model, leaf, (ep.query_x,))
        v = dict(zip(leaf, torch.autograd.grad(F.mse_loss(out, ep.query_y), list(leaf.values()))))
        for n in algo.adapt_names:
            exp_theta[n] = exp_theta[n] + v[n] / batch.num_tasks
            exp_rate[n] = exp_rate[n] - g_sum[n] * v[n] / batch.num_tasks
    expected = _flat([exp_theta[n] for n, _ in algo.model.named_parameters()] + [exp_rate[n] for n in algo.adapt_names])
    assert torch.allclose(grads, expected, rtol=1e-10, atol=1e-13)
    # one step: theta' = theta - a*g, so dL/da = -g * dL/dtheta' per task (averaged)
    algo1 = MetaSGD(algo.model, inner_steps=1, first_order=True)
    algo1.inner_lrs.load_state_dict(algo.inner_lrs.state_dict())
    algo1.zero_grad(set_to_none=True)
    algo1.meta_backward(batch)
    expected = []
    for i, name in enumerate(algo1.adapt_names):
        acc = 0
        for ep in batch:
            params = dict(algo1.model.named_parameters())
            g = torch.autograd.grad(F.mse_loss(algo1.model(ep.support_x), ep.support_y), params[name])[0]
            learner = algo1.adapt(ep.support_x, ep.support_y)
            leaf = {k: v.detach().requires_grad_() for k, v in learner.params.items()}
            out = torch.func.functional_call(algo1.model, leaf, (ep.query_x,))
            v = torch.autograd.grad(F.mse_loss(out, ep.query_y), leaf[name])[0]
            acc = acc + (-g * v) / batch.num_tasks
        expected.append(acc)
    for r, e in zip(algo1.inner_lrs, expected):
        assert torch.allclose(r.grad, e, rtol=1e-9, atol=1e-12)


def test_lr_is_trained_by_an_optimizer():
    torch.manual_seed(3)
    algo = MetaSGD(MLP(1, [8], 1), inner_lr=0.01, task_batching="vmap")
    before = [r.detach().clone() for r in algo.inner_lrs]
    opt = torch.optim.Adam(algo.parameters(), lr=1e-3)
    opt.zero_grad()
    algo.meta_backward(SinusoidTasks(5, seed=0).sample(4))
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, algo.inner_lrs))
