"""MAML / FOMAML as an algorithm: protocol, meta_backward == meta_loss().backward(), options,
errors, config building, and a short sinusoid training run that must learn."""

from __future__ import annotations

import copy


import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metakit.algorithms import MAML, BuildContext, get_algorithm
from metakit.algorithms.inner_updates import SGD, ElementSGD, LayerStepSGD, Momentum
from metakit.models import MLP, Conv4
from metakit.tasks import EpisodeBatch, SinusoidTasks

D64 = torch.float64


class TinyConvBN(nn.Module):
    def __init__(self, ways: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2, track_running_stats=False)
        self.head = nn.Linear(2 * 4 * 4, ways)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))).flatten(1))


def _cls_batch(tasks: int = 3, seed: int = 0, dtype=torch.float32, ways: int = 3) -> EpisodeBatch:
    g = torch.Generator().manual_seed(seed)
    return EpisodeBatch(
        torch.randn(tasks, 6, 1, 4, 4, generator=g, dtype=dtype),
        torch.arange(ways).repeat(6 // ways).expand(tasks, -1).contiguous(),
        torch.randn(tasks, 9, 1, 4, 4, generator=g, dtype=dtype),
        torch.arange(ways).repeat(9 // ways).expand(tasks, -1).contiguous(),
        ways,
    )


def _grads(module: nn.Module) -> list[Tensor]:
    return [p.grad.clone() for p in module.parameters()]


def _flat(ts) -> Tensor:
    return torch.cat([t.reshape(-1) for t in ts])


def test_registered_and_model_defaults():
    assert get_algorithm("maml") is MAML
    assert MAML.model_defaults(BuildContext(ways=5, example_shape=(1, 28, 28))) == {
        "in_channels": 1,
        "image_size": 28,
        "out_features": 5,
        "track_running_stats": False,
    }
    assert MAML.model_defaults(BuildContext(ways=None, example_shape=(1,))) == {}


def test_the_model_follows_the_data_s_image_shape():
    """RGB 32x32 images (a folder dataset with channels 3): the defaults build a Conv4 that takes them."""
    defaults = MAML.model_defaults(BuildContext(ways=3, example_shape=(3, 32, 32)))
    assert defaults["in_channels"] == 3 and defaults["image_size"] == 32
    maml = MAML(Conv4(**defaults), inner_lr=0.1)
    x, y = torch.rand(6, 3, 32, 32), torch.arange(3).repeat(2)
    assert maml.adapt(x, y, ways=3).predict(torch.rand(4, 3, 32, 32)).shape == (4, 3)


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_backward_equals_meta_loss_backward(first_order):
    torch.manual_seed(0)
    algo = MAML(TinyConvBN(), inner_lr=0.4, inner_steps=2, first_order=first_order)
    batch = _cls_batch()
    loss, metrics = algo.meta_loss(batch)
    loss.backward()
    expected = _grads(algo)
    algo.zero_grad(set_to_none=True)
    metrics2 = algo.meta_backward(batch)
    for a, b in zip(_grads(algo), expected):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    assert metrics2["loss"] == pytest.approx(float(loss.detach()), rel=1e-6)
    assert metrics2["accuracy"] == pytest.approx(metrics["accuracy"])
    assert 0.0 <= metrics2["accuracy"] <= 1.0


def test_first_and_second_order_differ():
    torch.manual_seed(1)
    model = TinyConvBN()
    so, fo = MAML(model, inner_steps=2), MAML(model, inner_steps=2, first_order=True)
    batch = _cls_batch(seed=1)
    so.meta_backward(batch)
    g_so = _grads(so)
    so.zero_grad(set_to_none=True)
    fo.meta_backward(batch)
    assert all(p.grad is not None for p in fo.parameters())  # before _grads clones them
    g_fo = _grads(fo)
    diff = (_flat(g_so) - _flat(g_fo)).abs().max() / _flat(g_so).abs().max()
    assert diff > 1e-3


def test_lslr_and_multi_step_loss_gradients_match_finite_differences(finite_differences):
    torch.manual_seed(2)
    algo = MAML(TinyConvBN().to(D64), inner_lr=0.3, inner_steps=2, learn_inner_lr="per_layer_step",
                multi_step_loss=True)
    batch = _cls_batch(tasks=2, seed=2, dtype=D64)
    assert [tuple(r.shape) for r in algo.inner_lrs] == [(2,)] * len(algo.adapt_names)
    algo.meta_backward(batch)
    grads = _flat(_grads(algo))
    fd = finite_differences(lambda: float(algo.meta_loss(batch)[0]), list(algo.parameters()))
    assert float((grads - fd).abs().max() / fd.abs().max()) < 1e-7


def test_the_published_20_way_setting_gets_its_exact_meta_gradient():
    """Five second-order steps of 2.0 on the stride-2 network, 20-way 1-shot (the shipped
    maml_omniglot_20w1s setting, narrower): directional derivatives along random directions match
    central differences in float64. The meta-loss is smooth only on a very small scale here
    (differences with a step of 1e-6 are far off), so the step is 1e-8."""
    from metakit.models import StridedConv4

    ways, g = 20, torch.Generator().manual_seed(0)
    images = lambda: (torch.rand(2, ways, 1, 28, 28, generator=g) < 0.15).to(D64)  # noqa: E731
    labels = torch.arange(ways).repeat(2, 1)
    batch = EpisodeBatch(images(), labels, images(), labels, ways)
    torch.manual_seed(0)
    net = StridedConv4(out_features=ways, hidden=16, track_running_stats=False)
    algo = MAML(net, inner_lr=2.0, inner_steps=5, adapt=".*(weight|bias)").to(D64)
    algo.meta_backward(batch)
    params = [p for p in algo.parameters() if p.requires_grad]
    for seed in range(3):
        gen = torch.Generator().manual_seed(10 + seed)
        direction = [torch.randn(p.shape, generator=gen, dtype=D64) for p in params]
        analytic = sum(float((p.grad * d).sum()) for p, d in zip(params, direction))

        def loss_at(step: float) -> float:
            with torch.no_grad():
                for p, d in zip(params, direction):
                    p.add_(step * d)
                value = float(algo.meta_loss(batch)[0])
                for p, d in zip(params, direction):
                    p.sub_(step * d)
            return value

        numeric = (loss_at(1e-8) - loss_at(-1e-8)) / 2e-8
        assert abs(numeric - analytic) < 1e-5 * max(1.0, abs(analytic)), (seed, numeric, analytic)


def test_multi_step_loss_is_the_mean_over_steps():
    torch.manual_seed(3)
    algo = MAML(TinyConvBN(), inner_steps=3, multi_step_loss=True)
    plain = MAML(algo.model, inner_steps=3)
    batch = _cls_batch(tasks=1, seed=3)
    ep = batch[0]
    learner = plain.adapt(ep.support_x, ep.support_y, 3)
    by_step = [float(F.cross_entropy(learner.predict(ep.query_x, step=k), ep.query_y)) for k in (1, 2, 3)]
    assert float(algo.meta_loss(batch)[0].detach()) == pytest.approx(sum(by_step) / 3, rel=1e-5)


def test_unused_parameters_get_zero_gradient_and_frozen_ones_none():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(2, 4)
            self.spare = nn.Linear(2, 2)  # never used
            self.head = nn.Linear(4, 3)
            self.head.bias.requires_grad_(False)  # frozen

        def forward(self, x: Tensor) -> Tensor:
            return self.head(torch.tanh(self.body(x)))

    torch.manual_seed(4)
    algo = MAML(Net(), inner_lr=0.5, inner_steps=2)
    batch = EpisodeBatch(torch.randn(2, 6, 2), torch.randint(0, 3, (2, 6)), torch.randn(2, 6, 2),
                         torch.randint(0, 3, (2, 6)), 3)
    algo.meta_backward(batch)
    m = algo.model
    assert m.spare.weight.grad is not None and torch.count_nonzero(m.spare.weight.grad) == 0
    assert m.head.bias.grad is None
    assert torch.count_nonzero(m.body.weight.grad) > 0
    assert "head.bias" not in algo.adapt_names


def test_vmap_and_loop_meta_backward_agree():
    torch.manual_seed(5)
    loop = MAML(MLP(1, [16, 16], 1), inner_lr=0.05, inner_steps=2)
    vm = MAML(MLP(1, [16, 16], 1), inner_lr=0.05, inner_steps=2, task_batching="vmap")
    vm.load_state_dict(loop.state_dict())
    batch = SinusoidTasks(5, 10, seed=0).sample(6)
    ma, mb = loop.meta_backward(batch), vm.meta_backward(batch)
    assert ma["loss"] == pytest.approx(mb["loss"], rel=1e-5)
    for a, b in zip(_grads(loop), _grads(vm)):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_adapt_works_under_no_grad_and_keeps_every_step():
    torch.manual_seed(6)
    algo = MAML(TinyConvBN(), inner_lr=0.4, inner_steps=1, eval_steps=3)
    ep = _cls_batch(tasks=1)[0]
    with torch.no_grad():
        learner = algo.adapt(ep.support_x, ep.support_y, 3)
        assert learner.steps == 3
        before = F.cross_entropy(learner.predict(ep.support_x, step=0), ep.support_y)
        after = F.cross_entropy(learner.predict(ep.support_x), ep.support_y)
    assert float(after) < float(before)
    assert torch.allclose(learner.predict(ep.query_x, step=0), algo.model(ep.query_x).detach(), atol=1e-6)
    assert algo.adapt(ep.support_x, ep.support_y, 3, steps=0).steps == 0
    with pytest.raises(ValueError, match=r"step=4 is out of range: this learner took 3 inner steps"):
        learner.predict(ep.query_x, step=4)
    with pytest.raises(ValueError, match=r"steps=-2 must be an int >= 0"):
        algo.adapt(ep.support_x, ep.support_y, 3, steps=-2)


def test_predict_shapes():
    algo = MAML(TinyConvBN(), inner_steps=1)
    batch = _cls_batch(tasks=2)
    with torch.no_grad():
        assert algo.predict(batch).shape == (2, 9, 3)
    reg = MAML(MLP(), inner_lr=0.01)
    sb = SinusoidTasks(5, 7, seed=1).sample(3)
    with torch.no_grad():
        assert reg.predict(sb).shape == (3, 7, 1)


def test_option_errors():
    with pytest.raises(ValueError, match=r"MAML: layer 'features.1' \(BatchNorm2d\) tracks running statistics"):
        MAML(Conv4(out_features=5))
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module, got str"):
        MAML("conv4")  # type: ignore[arg-type]
    m = MLP()
    with pytest.raises(ValueError, match=r"inner_steps=-1 must be an int >= 0"):
        MAML(m, inner_steps=-1)
    with pytest.raises(ValueError, match=r"eval_steps=-1 must be an int >= 0"):
        MAML(m, eval_steps=-1)
    with pytest.raises(ValueError, match=r"inner_lr=-0.1 must be a number >= 0"):
        MAML(m, inner_lr=-0.1)
    with pytest.raises(ValueError, match=r"learn_inner_lr='yes' is not valid; use none, per_layer_step or per_element"):
        MAML(m, learn_inner_lr="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"learn_inner_lr='per_layer_step' needs inner_steps >= 1"):
        MAML(m, inner_steps=0, learn_inner_lr="per_layer_step")
    with pytest.raises(ValueError, match=r"task_batching='batch' is not valid; use loop or vmap"):
        MAML(m, task_batching="batch")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"task_batching='vmap' is refused for models with BatchNorm"):
        MAML(TinyConvBN(), task_batching="vmap")
    with pytest.raises(ValueError, match=r"task_batching='vmap' is refused for models with LayerNorm \(layer '1'\): "
                                         r"torch.func.vmap gives a wrong second-order meta-gradient.*; use task_batching='loop'"):
        MAML(nn.Sequential(nn.Linear(1, 4), nn.LayerNorm(4), nn.Linear(4, 1)), task_batching="vmap")
    with pytest.raises(ValueError, match=r"checkpoint=True needs task_batching='loop'"):
        MAML(m, task_batching="vmap", checkpoint=True)
    with pytest.raises(ValueError, match=r"checkpoint=True has no effect with first_order=True: .*; set checkpoint=False"):
        MAML(m, first_order=True, checkpoint=True)
    with pytest.raises(ValueError, match=r"loss='l1' is not valid; use auto, cross_entropy or mse"):
        MAML(m, loss="l1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"loss='cross_entropy' needs classification episodes"):
        MAML(m, loss="cross_entropy").meta_backward(SinusoidTasks(5, seed=0).sample(2))
    with pytest.raises(TypeError, match=r"batch must be an EpisodeBatch, got list"):
        MAML(m).meta_backward([])  # type: ignore[arg-type]


def test_checkpoint_option_gives_the_same_gradients(saved_bytes):
    torch.manual_seed(7)
    a = MAML(TinyConvBN(), inner_steps=3)
    b = MAML(TinyConvBN(), inner_steps=3, checkpoint=True)
    b.load_state_dict(a.state_dict())
    batch = _cls_batch(seed=7)
    a.meta_backward(batch)
    b.meta_backward(batch)
    for x, y in zip(_grads(a), _grads(b)):
        assert torch.allclose(x, y, rtol=1e-5, atol=1e-7)
    # and it does save memory: bytes kept for the backward pass of the meta-loss's graph
    kept = []
    for algo in (a, b):
        with saved_bytes() as saved:
            loss, _ = algo.meta_loss(batch)
        kept.append(saved.live())
        del loss
    assert kept[1] < 0.5 * kept[0], kept


def test_short_sinusoid_meta_training_learns():
    """250 Adam steps of MAML on sinusoids: the post-adaptation MSE on held-out tasks must fall
    to well below half of what the same network reaches before meta-training (~4.1)."""
    torch.manual_seed(0)
    algo = MAML(MLP(), inner_lr=0.02, inner_steps=1, task_batching="vmap")
    test = SinusoidTasks(10, 20, seed=123).sample(50)

    def test_mse() -> float:
        with torch.no_grad():
            return float(F.mse_loss(algo.predict(test), test.query_y))

    before = test_mse()
    opt = torch.optim.Adam(algo.parameters(), lr=1e-2)
    tasks = SinusoidTasks(10, 10, seed=0)
    for _ in range(250):
        opt.zero_grad()
        algo.meta_backward(tasks.sample(10))
        opt.step()
    after = test_mse()
    assert after < 0.5 * before, (before, after)


def test_builds_and_trains_from_a_config(tmp_path):
    from metakit.runtime.config import Config
    from metakit.runtime.trainer import train

    cfg = Config.from_dict({
        "data": {"dataset": "sinusoid"},
        "train": {"shots": 5, "queries": 5, "meta_batch": 4, "steps": 3},
        "eval": {"val_episodes": 4, "val_every": 3, "test_episodes": 4},
        "model": {"name": "mlp"},
        "algorithm": {"name": "maml", "inner_lr": 0.01, "task_batching": "vmap"},
        "run": {"progress": False, "checkpoint_every": 3},
    })
    result = train(cfg, tmp_path / "run")
    assert result.status == "finished" and result.step == 3


def test_per_layer_step_rates_after_the_trained_steps_reuse_the_last_one():
    torch.manual_seed(10)
    algo = MAML(MLP(1, [4], 1).to(D64), inner_steps=2, eval_steps=4, learn_inner_lr="per_layer_step")
    assert isinstance(algo.inner_update, LayerStepSGD)
    with torch.no_grad():
        for r in algo.inner_lrs:
            r.copy_(torch.tensor([0.1, 0.2], dtype=D64))
    ep = SinusoidTasks(5, seed=0).sample(1).to(dtype=D64)[0]
    learner = algo.adapt(ep.support_x, ep.support_y)
    p = {n: v.detach() for n, v in algo.model.named_parameters()}
    for k, rate in enumerate([0.1, 0.2, 0.2, 0.2]):  # by hand: SGD with the step's rate
        leaves = {n: v.clone().requires_grad_() for n, v in p.items()}
        loss = F.mse_loss(torch.func.functional_call(algo.model, leaves, (ep.support_x,)), ep.support_y)
        grads = torch.autograd.grad(loss, list(leaves.values()))
        p = {n: v - rate * g for (n, v), g in zip(p.items(), grads)}
        for n in p:
            assert torch.allclose(learner.trajectory[k + 1][n], p[n], rtol=1e-12, atol=1e-14), (k, n)


def test_evaluation_trajectory_is_detached_at_every_step():
    torch.manual_seed(9)
    algo = MAML(TinyConvBN(), inner_lr=0.4, inner_steps=1, eval_steps=2)
    ep = _cls_batch(tasks=1)[0]
    for steps in (0, 2):  # outside no_grad: theta_0 too must not be the live meta-parameters
        learner = algo.adapt(ep.support_x, ep.support_y, 3, steps=steps)
        assert all(not v.requires_grad for p in learner.trajectory for v in p.values()), steps
        assert not learner.predict(ep.query_x, step=0).requires_grad
        assert not learner.predict(ep.query_x).requires_grad


@pytest.mark.parametrize("task_batching", ["loop", "vmap"])
def test_predict_steps_matches_per_task_adaptation(task_batching):
    torch.manual_seed(8)
    algo = MAML(MLP(1, [8, 8], 1), inner_lr=0.05, eval_steps=4, task_batching=task_batching,
                learn_inner_lr="per_layer_step", inner_steps=2)
    batch = SinusoidTasks(5, 6, seed=3).sample(3)
    with torch.no_grad():
        out = algo.predict_steps(batch)
        assert out.shape == (5, 3, 6, 1)
        for b, ep in enumerate(batch):
            learner = algo.adapt(ep.support_x, ep.support_y)
            for k in range(5):
                assert torch.allclose(out[k, b], learner.predict(ep.query_x, step=k), atol=1e-6)
        assert torch.equal(algo.predict(batch), out[-1])
    with pytest.raises(ValueError, match=r"steps=-1 must be an int >= 0"):
        algo.predict_steps(batch, -1)


def test_predict_runs_the_queries_through_the_adapted_model_only():
    """predict() needs the last step's outputs only: one query forward pass per task (Reptile
    evaluates with 50 steps), where predict_steps() runs one per step."""
    torch.manual_seed(0)
    model = MLP(1, [8], 1)
    algo = MAML(model, inner_lr=0.05, eval_steps=4)
    batch = SinusoidTasks(5, 7, seed=1).sample(3)  # 5 support, 7 query points: told apart by size
    sizes: list[int] = []
    model.register_forward_hook(lambda m, args, out: sizes.append(args[0].shape[0]))
    with torch.no_grad():
        last = algo.predict(batch)
        assert sizes.count(7) == 3 and sizes.count(5) == 3 * 4
        sizes.clear()
        every = algo.predict_steps(batch)
        assert sizes.count(7) == 3 * 5
    assert torch.equal(last, every[-1])


# -- first order at the class level ----------------------------------------------------------------
def _tiny_forward(p: dict[str, Tensor], x: Tensor) -> Tensor:
    """TinyConvBN written with F.* ops (independent of the engine and of functional_call)."""
    h = F.conv2d(x, p["conv.weight"], p["conv.bias"], padding=1)
    h = F.batch_norm(h, None, None, p["bn.weight"], p["bn.bias"], training=True)
    return F.linear(torch.relu(h).flatten(1), p["head.weight"], p["head.bias"])


def _first_order_by_hand(params: dict[str, Tensor], batch: EpisodeBatch, steps: int, lr: float) -> list[Tensor]:
    """FOMAML: SGD steps with the support gradient taken at detached copies; the meta-gradient is
    1/B * sum_i of the query gradient at the adapted weights."""
    total = {n: torch.zeros_like(v) for n, v in params.items()}
    for ep in batch:
        p = {n: v.detach() for n, v in params.items()}
        for _ in range(steps):
            leaves = {n: v.clone().requires_grad_() for n, v in p.items()}
            grads = torch.autograd.grad(F.cross_entropy(_tiny_forward(leaves, ep.support_x), ep.support_y),
                                        list(leaves.values()))
            p = {n: v - lr * g for (n, v), g in zip(p.items(), grads)}
        leaves = {n: v.clone().requires_grad_() for n, v in p.items()}
        grads = torch.autograd.grad(F.cross_entropy(_tiny_forward(leaves, ep.query_x), ep.query_y), list(leaves.values()))
        for n, g in zip(leaves, grads):
            total[n] = total[n] + g / batch.num_tasks
    return list(total.values())


def test_first_order_maml_meta_gradient_matches_a_hand_computation():
    torch.manual_seed(11)
    algo = MAML(TinyConvBN().to(D64), inner_lr=0.4, inner_steps=2, first_order=True)
    batch = _cls_batch(tasks=3, seed=11, dtype=D64)
    expected = _first_order_by_hand(dict(algo.model.named_parameters()), batch, steps=2, lr=0.4)
    algo.meta_backward(batch)
    for (n, p), e in zip(algo.model.named_parameters(), expected):
        assert torch.allclose(p.grad, e, rtol=1e-10, atol=1e-13), n
    algo.zero_grad(set_to_none=True)
    algo.meta_loss(batch)[0].backward()
    for (n, p), e in zip(algo.model.named_parameters(), expected):
        assert torch.allclose(p.grad, e, rtol=1e-10, atol=1e-13), n


# -- the inner update rule the options choose --------------------------------------------------
@pytest.mark.parametrize(
    "options, kind, base, nesterov",
    [
        ({}, SGD, None, None),
        ({"learn_inner_lr": "per_layer_step"}, LayerStepSGD, None, None),
        ({"learn_inner_lr": "per_element"}, ElementSGD, None, None),
        ({"inner_update": "momentum"}, Momentum, SGD, False),
        ({"inner_update": "nesterov", "learn_inner_lr": "per_element"}, Momentum, ElementSGD, True),
    ],
)
def test_options_map_onto_inner_update_rules(options, kind, base, nesterov):
    algo = MAML(MLP(1, [4], 1), inner_lr=0.2, inner_steps=2, **options)
    rule = algo.inner_update
    assert type(rule) is kind
    if base is not None:
        assert type(rule.base) is base and rule.nesterov is nesterov and rule.momentum == 0.9 and not rule.learn
        rule = rule.base
    assert (algo.inner_lrs is None) == (kind is SGD or base is SGD)
    assert rule.lr == 0.2 if isinstance(rule, SGD) else all(torch.all(r == 0.2) for r in rule.lrs)


def test_learned_momentum_and_rates_get_finite_difference_meta_gradients(finite_differences):
    torch.manual_seed(12)
    algo = MAML(TinyConvBN().to(D64), inner_lr=0.3, inner_steps=2, learn_inner_lr="per_layer_step",
                inner_update="nesterov", inner_momentum=0.5, learn_inner_momentum=True)
    names = [n for n, _ in algo.named_parameters()]
    model_names = [f"model.{n}" for n, _ in algo.model.named_parameters()]
    assert names == model_names + ["inner_update.momentum"] + [f"inner_update.base.lrs.{i}" for i in range(6)]
    assert algo.inner_lrs is algo.inner_update.base.lrs
    batch = _cls_batch(tasks=2, seed=12, dtype=D64)
    algo.meta_backward(batch)
    grads = _flat(_grads(algo))
    assert float(algo.inner_update.momentum.grad) != 0.0
    fd = finite_differences(lambda: float(algo.meta_loss(batch)[0]), list(algo.parameters()))
    assert float((grads - fd).abs().max() / fd.abs().max()) < 1e-7
    before = float(algo.inner_update.momentum.detach())
    torch.optim.SGD(algo.parameters(), lr=0.1).step()  # the outer optimizer trains it
    assert float(algo.inner_update.momentum.detach()) != before


def test_momentum_option_errors():
    m = MLP()
    with pytest.raises(ValueError, match=r"inner_update='adam' is not valid; use sgd, momentum or nesterov"):
        MAML(m, inner_update="adam")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"inner_momentum=0.5 has no effect with inner_update='sgd'; set "
                                         r"inner_update=momentum \(or nesterov\) to use it, or leave inner_momentum unset"):
        MAML(m, inner_momentum=0.5)
    with pytest.raises(ValueError, match=r"learn_inner_momentum=True has no effect with inner_update='sgd'"):
        MAML(m, learn_inner_momentum=True)
    with pytest.raises(ValueError, match=r"inner_momentum=1.0 must be a number in \[0, 1\) \(the momentum "
                                         r"coefficient, e.g. 0.9\)"):
        MAML(m, inner_update="momentum", inner_momentum=1.0)
    with pytest.raises(ValueError, match=r"learn_inner_momentum='yes' must be true or false"):
        MAML(m, inner_update="momentum", learn_inner_momentum="yes")  # type: ignore[arg-type]


def test_momentum_from_a_config(tmp_path):
    from metakit.runtime.config import Config, ConfigError
    from metakit.runtime.trainer import train

    def config(**algorithm):
        return Config.from_dict({
            "data": {"dataset": "sinusoid"},
            "train": {"shots": 5, "queries": 5, "meta_batch": 2, "steps": 2},
            "eval": {"val_episodes": 2, "val_every": 2, "test_episodes": 2},
            "model": {"name": "mlp"},
            "algorithm": {"name": "maml", "inner_lr": 0.01, **algorithm},
            "run": {"progress": False, "checkpoint_every": 2},
        })

    cfg = config(inner_update="momentum", inner_momentum=0.5, learn_inner_momentum=True)
    assert train(cfg, tmp_path / "run").status == "finished"
    with pytest.raises(ConfigError, match=r"algorithm.inner_update='adam' is not a valid choice.*; use one of: sgd, "
                                          r"momentum, nesterov"):
        config(inner_update="adam")


def test_checkpoints_with_the_former_rate_names_load():
    """State dicts that name the learned rates ``inner_lrs.<i>`` (the name older checkpoints use)
    load into the same configuration, with the rates in place."""
    torch.manual_seed(13)
    trained = MAML(MLP(1, [4], 1), inner_steps=2, learn_inner_lr="per_layer_step")
    with torch.no_grad():
        for r in trained.inner_lrs:
            r.uniform_(0.0, 0.5)
    old = {k.replace("inner_update.lrs.", "inner_lrs."): v for k, v in trained.state_dict().items()}
    assert "inner_lrs.0" in old and not any(k.startswith("inner_update") for k in old)
    fresh = MAML(MLP(1, [4], 1), inner_steps=2, learn_inner_lr="per_layer_step")
    fresh.load_state_dict(old)  # strict
    for a, b in zip(fresh.parameters(), trained.parameters()):
        assert torch.equal(a, b)
    outer = nn.ModuleDict({"algo": MAML(MLP(1, [4], 1), inner_steps=2, learn_inner_lr="per_layer_step")})
    outer.load_state_dict({f"algo.{k}": v for k, v in old.items()})  # also under a prefix
    assert torch.equal(outer["algo"].inner_lrs[0], trained.inner_lrs[0])


# -- float32 fidelity of the default memory format --------------------------------------------------
def _stroke_batch(tasks: int, ways: int, shots: int, queries: int) -> EpisodeBatch:
    """Near-binary 28x28 images (ink on ~15% of the pixels), Omniglot's statistics in shape only."""
    g = torch.Generator().manual_seed(0)

    def images(k: int) -> Tensor:
        return (torch.rand(tasks, k, 1, 28, 28, generator=g) < 0.15).float()

    def labels(k: int) -> Tensor:
        return torch.arange(ways).repeat_interleave(k).repeat(tasks, 1)

    return EpisodeBatch(images(ways * shots), labels(shots), images(ways * queries), labels(queries), ways=ways)


def _full_size_error(first_order: bool, channels_last: bool | None) -> float:
    """Relative error of the float32 meta-gradient against float64 on one 5-way 5-shot task of the
    full Conv4 (64 filters, 25 support images of 28x28); ``channels_last=None`` is the default."""
    batch = _stroke_batch(tasks=1, ways=5, shots=5, queries=5)
    torch.manual_seed(0)
    model = Conv4(out_features=5, track_running_stats=False)
    options = {} if channels_last is None else {"channels_last": channels_last}

    def meta_gradient(dtype: torch.dtype) -> Tensor:
        maml = MAML(copy.deepcopy(model).to(dtype), inner_lr=0.4, first_order=first_order, **options)
        maml.meta_backward(batch.to(dtype=dtype))
        return _flat(_grads(maml.model)).double()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the error of channels_last depends on the thread count: pin it
    try:
        ref, got = meta_gradient(torch.float64), meta_gradient(torch.float32)
    finally:
        torch.set_num_threads(threads)
    return ((got - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("first_order", [True, False])
def test_default_float32_meta_gradient_on_a_full_size_conv4_stays_at_rounding_level(first_order):
    assert _full_size_error(first_order, None) < 1e-4


@pytest.mark.parametrize("first_order", [True, False])
def test_channels_last_is_measurably_less_accurate_on_the_same_task(first_order):
    """What the default avoids (PyTorch's channels_last BatchNorm on CPU): on this task, at one
    thread, 1.9e-3 first order and 5.2e-4 second order against about 6e-6 in NCHW (at two threads
    2.7e-2 and 5.9e-6: the error depends on how the kernel splits its sums). When a PyTorch release
    fixes those kernels this test fails, and the default can be revisited."""
    assert _full_size_error(first_order, True) > 1e-4


@pytest.mark.parametrize("ways", [3, 7])
def test_adapt_refuses_a_support_set_of_other_ways_than_the_head(ways):
    maml = MAML(Conv4(out_features=5, hidden=8, track_running_stats=False), inner_lr=0.1)
    x, y = torch.rand(ways, 1, 28, 28), torch.arange(ways)
    with pytest.raises(ValueError, match=rf"MAML was built for 5-way tasks \(its head has 5 outputs\) but the support set has {ways} classes"):
        maml.adapt(x, y, ways=ways)
    if ways > 5:  # from the labels alone only "more classes than outputs" is certain
        with pytest.raises(ValueError, match=rf"support set has {ways} classes"):
            maml.adapt(x, y)
