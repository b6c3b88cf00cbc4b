"""MAML-RL (metakit.algorithms.maml_rl): the linear feature baseline, REINFORCE, the second-order
outer gradient, TRPO's pieces, the roll-outs, exact resume and the errors."""

import math
from typing import Any, ClassVar

import gymnasium
import numpy as np
import pytest
import torch

from metakit.algorithms import get_algorithm
from metakit.algorithms.maml_rl import (
    MAMLRL,
    NonFiniteRewardError,
    _reinforce_loss,
    _Samples,
    conjugate_gradient,
    discounted_returns,
    gaussian_kl,
    gaussian_log_prob,
    linear_baseline,
)
from metakit.models import GaussianMLP
from metakit.options import ConfigError
from metakit.runtime.config import Config
from metakit.runtime.run import load_run
from metakit.runtime.trainer import train
from metakit.tasks import EnvBatch, env_family, get_family


def _policy(hidden=(3,), seed=0, obs=2, act=2) -> GaussianMLP:
    torch.manual_seed(seed)
    model = GaussianMLP(obs, act, hidden, init_std=0.7).double()
    with torch.no_grad():
        model.log_std.copy_(torch.tensor([-0.3, 0.2][:act], dtype=torch.float64))
    return model


def _samples(b=2, n=7, obs=2, act=2, seed=0) -> _Samples:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, obs, generator=g, dtype=torch.float64)
    actions = torch.randn(b, n, act, generator=g, dtype=torch.float64)
    adv = torch.randn(b, n, generator=g, dtype=torch.float64)
    mask = torch.ones(b, n, dtype=torch.float64)
    mask[0, -2:] = 0  # an episode that ended early
    old = torch.cat([0.3 * torch.randn(b, n, act, generator=g, dtype=torch.float64),
                     torch.full((b, n, act), -0.1, dtype=torch.float64)], -1)
    return _Samples(x, torch.cat([actions, adv[..., None], mask[..., None]], -1), old)


def _flat_grad(fn, params: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    leaves = {n: p.detach().clone().requires_grad_(n in names) for n, p in params.items()}
    out = fn(leaves)
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(out, [leaves[n] for n in names])])


# -- the pieces ----------------------------------------------------------------------------------
def test_the_linear_baseline_is_the_ridge_least_squares_fit_of_duan_et_al_features():
    rng = np.random.default_rng(0)
    b, c, t, d = 2, 3, 6, 2
    obs = rng.normal(size=(b, c, t, d)) * 4
    obs[0, 0, 0, 0] = 30.0  # clipped to 10 in the features
    returns = rng.normal(size=(b, c, t))
    mask = np.ones((b, c, t))
    mask[1, 2, 4:] = 0
    reg = 1e-5
    got = linear_baseline(torch.tensor(obs), torch.tensor(returns), torch.tensor(mask), reg).numpy()
    for i in range(b):
        rows, targets, where = [], [], []
        for e in range(c):
            for s in range(t):
                if mask[i, e, s]:
                    o = np.clip(obs[i, e, s], -10, 10)
                    rows.append([*o, *(o**2), s / 100, (s / 100) ** 2, (s / 100) ** 3, 1.0])
                    targets.append(returns[i, e, s])
                    where.append((e, s))
        x, y = np.array(rows), np.array(targets)
        w = np.linalg.solve(x.T @ x + reg * np.eye(x.shape[1]), x.T @ y)
        want = np.zeros((c, t))
        for (e, s), v in zip(where, x @ w):
            want[e, s] = v
        np.testing.assert_allclose(got[i], want, rtol=1e-9, atol=1e-9)


def test_discounted_returns_sum_the_discounted_rewards_to_go_of_each_episode():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    got = discounted_returns(rewards, mask, 0.5)
    assert torch.allclose(got, torch.tensor([[1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0, 0.0]], dtype=torch.float64))


def test_gaussian_log_prob_and_kl_are_torch_distributions():
    g = torch.Generator().manual_seed(1)
    a, b, x = (torch.randn(5, 6, generator=g, dtype=torch.float64) for _ in range(3))
    pa = torch.distributions.Normal(a[:, :3], a[:, 3:].exp())
    pb = torch.distributions.Normal(b[:, :3], b[:, 3:].exp())
    assert torch.allclose(gaussian_log_prob(a, x[:, :3]), pa.log_prob(x[:, :3]).sum(-1))
    assert torch.allclose(gaussian_kl(a, b), torch.distributions.kl_divergence(pa, pb).sum(-1))


def test_the_reinforce_gradient_is_the_likelihood_ratio_formula():
    # a linear-Gaussian policy: grad log pi has a closed form, so the surrogate's gradient is checked exactly
    model = _policy(hidden=(), seed=3)
    s = _samples(b=1, n=9, seed=4)
    x, target = s.obs[0], s.target[0]
    actions, adv, mask = target[:, :2], target[:, 2], target[:, 3]
    loss = _reinforce_loss(model(x), target)
    loss.backward()
    w, bias = model.mean.net[0].weight.detach(), model.mean.net[0].bias.detach()
    mean, std = x @ w.T + bias, model.log_std.detach().exp()
    z = (actions - mean) / std**2  # d log pi / d mean
    coef = -(adv * mask) / mask.sum()
    assert torch.allclose(model.mean.net[0].weight.grad, (coef[:, None] * z).T @ x, rtol=1e-12, atol=1e-12)
    assert torch.allclose(model.mean.net[0].bias.grad, (coef[:, None] * z).sum(0), rtol=1e-12, atol=1e-12)
    assert torch.allclose(model.log_std.grad, (coef[:, None] * ((actions - mean) ** 2 / std**2 - 1)).sum(0), rtol=1e-12)


def test_the_reinforce_gradient_estimates_the_gradient_of_the_expected_return(finite_differences):
    # one step, reward -(a - g)^2 with a ~ N(mu, sigma^2): E[r] = -((mu - g)^2 + sigma^2)
    mu, log_sigma, goal, n = 0.3, math.log(0.5), -0.4, 400_000
    params = torch.tensor([mu, log_sigma], dtype=torch.float64, requires_grad=True)
    a = params[0].detach() + params[1].detach().exp() * torch.randn(n, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    reward = -((a[:, 0] - goal) ** 2)
    out = torch.stack([params[0], params[1]]).expand(n, 2)
    target = torch.cat([a, (reward - reward.mean())[:, None], torch.ones(n, 1, dtype=torch.float64)], -1)
    (grad,) = torch.autograd.grad(-_reinforce_loss(out, target), params)  # ascent direction of the return

    def expected(m, ls):
        return -((m - goal) ** 2 + math.exp(2 * ls))

    at = torch.tensor([mu, log_sigma], dtype=torch.float64)
    fd = finite_differences(lambda: expected(*at.tolist()), [at])
    assert torch.allclose(grad, fd, rtol=0.02), (grad, fd)


def test_conjugate_gradient_solves_a_positive_definite_system():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=g, dtype=torch.float64)
    a = m @ m.T + 0.5 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, b, iters=6)
    assert torch.allclose(x, torch.linalg.solve(a, b), rtol=1e-8, atol=1e-10)
    assert not torch.allclose(conjugate_gradient(lambda v: a @ v, b, iters=2), torch.linalg.solve(a, b), rtol=1e-3)


# -- gradients through the inner loop ------------------------------------------------------------
@pytest.mark.parametrize("inner_steps", [1, 2])
def test_the_outer_gradient_through_the_inner_steps_matches_finite_differences(inner_steps, finite_differences):
    algo = MAMLRL(_policy(), inner_lr=0.3, inner_steps=inner_steps)
    inner = [_samples(seed=10 + k) for k in range(inner_steps)]
    outer = _samples(seed=20)
    names = algo._names
    params = dict(algo.model.named_parameters())

    def objective(p, train=True):
        return algo.outer_objective(p, inner, outer, train=train)[0]

    grad = _flat_grad(objective, params, names)
    fd = finite_differences(lambda p: objective(p, train=False), params, names=names)
    assert torch.allclose(grad, fd, rtol=1e-6, atol=1e-8), (grad - fd).abs().max()
    # the second-order terms matter here: the first-order gradient is another vector
    first = MAMLRL(algo.model, inner_lr=0.3, inner_steps=inner_steps, first_order=True)
    fo = _flat_grad(lambda p: first.outer_objective(p, inner, outer, train=True)[0], params, names)
    assert (fo - fd).abs().max() > 1e-3


def test_the_lvc_inner_loss_adds_the_score_outer_product_to_the_meta_gradient():
    # at the sampling policy the LVC surrogate takes the same inner step as REINFORCE; its Hessian adds
    # -1/N sum_t m_t A_t s_t s_t^T (s_t = grad log pi(a_t|s_t)), so the meta-gradient (I - alpha H)^T u gains
    # alpha/N sum_t m_t A_t s_t (s_t . u), u the outer gradient at the adapted parameters
    alpha = 0.3
    plain = MAMLRL(_policy(), inner_lr=alpha)
    lvc = MAMLRL(plain.model, inner_lr=alpha, inner_loss="lvc")
    inner, outer = [_samples(seed=1)], _samples(seed=2)
    names = plain._names
    params = dict(plain.model.named_parameters())
    leaves = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
    for a, b in zip(plain.adapt_params(leaves, inner, 2, train=False), lvc.adapt_params(leaves, inner, 2, train=False)):
        assert all(torch.equal(a[n], b[n]) for n in names)  # the same inner step
    g_plain = _flat_grad(lambda p: plain.outer_objective(p, inner, outer, train=True)[0], params, names)
    g_lvc = _flat_grad(lambda p: lvc.outer_objective(p, inner, outer, train=True)[0], params, names)
    extra = torch.zeros_like(g_plain)
    adapted = plain.adapt_params(leaves, inner, 2, train=False)
    for i in range(2):  # tasks: the outer objective is the mean over them
        theta_i = {n: v.detach().requires_grad_(True) for n, v in adapted[i].items()}
        out = torch.stack([plain._fmodel(theta_i if k == i else adapted[k], outer.obs[k]) for k in range(2)])
        a = outer.old.shape[-1] // 2
        ratio = torch.exp(gaussian_log_prob(out, outer.target[..., :a]) - gaussian_log_prob(outer.old, outer.target[..., :a]))
        m = outer.target[..., a + 1]
        loss = (-(ratio * outer.target[..., a] * m).sum(-1) / m.sum(-1)).mean()
        u = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, [theta_i[n] for n in names])])
        target, x = inner[0].target[i], inner[0].obs[i]
        adv, mask = target[:, a], target[:, a + 1]
        for t in range(x.shape[0]):
            if mask[t] == 0:
                continue
            s_t = _flat_grad(lambda p: gaussian_log_prob(plain._fmodel(p, x[t:t + 1]), target[t:t + 1, :a]).sum(), params, names)
            extra += alpha / mask.sum() * adv[t] * s_t * (s_t @ u)
    assert torch.allclose(g_lvc, g_plain + extra, rtol=1e-10, atol=1e-12), (g_lvc - g_plain - extra).abs().max()
    assert extra.abs().max() > 1e-3  # the term is not negligible here
    with pytest.raises(ValueError, match=r"inner_loss='dice' is not valid; use reinforce \(the paper's\) or lvc"):
        MAMLRL(_policy(), inner_loss="dice")
    with pytest.raises(ValueError, match=r"inner_loss='lvc' changes only the second-order terms .* first_order=false"):
        MAMLRL(_policy(), inner_loss="lvc", first_order=True)


def test_the_kl_hessian_product_is_the_hessian_through_the_inner_step_times_the_vector():
    algo = MAMLRL(_policy(), inner_lr=0.3, cg_damping=0.0)
    inner, outer = [_samples(seed=1)], _samples(seed=2)
    names = algo._names
    params = dict(algo.model.named_parameters())
    # the sampling policy is the adapted one at theta: KL = 0 with zero gradient there, as in TRPO
    adapted = algo.adapt_params({n: p.detach() for n, p in params.items()}, inner, 2, train=False)
    outer.old = torch.stack([algo._fmodel(adapted[i], outer.obs[i]) for i in range(2)]).detach()
    sizes = [params[n].numel() for n in names]

    def kl_of_flat(flat):
        p = dict(params)
        p.update({n: t.view_as(params[n]) for n, t in zip(names, torch.split(flat, sizes))})
        return algo.outer_objective(p, inner, outer, train=True)[1]

    flat = torch.cat([params[n].detach().reshape(-1) for n in names])
    hessian = torch.autograd.functional.hessian(kl_of_flat, flat)
    _, kl = algo.outer_objective(params, inner, outer, train=True)
    assert abs(float(kl.detach())) < 1e-12
    v = torch.randn(flat.numel(), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    product = algo.kl_hessian_product(kl, [params[n] for n in names])
    assert torch.allclose(product(v), hessian @ v, rtol=1e-8, atol=1e-10)
    # the Gauss-Newton form with a finite-difference Jacobian product (kl_hessian=finite_differences)
    outputs = algo.adapted_outputs(params, inner, outer, train=True)
    fd = MAMLRL(algo.model, inner_lr=0.3, cg_damping=0.0, kl_hessian="finite_differences")
    assert torch.allclose(fd.kl_fisher_product(outputs, params, inner, outer)(v), hessian @ v, rtol=1e-6, atol=1e-9)
    # the Gauss-Newton form with the exact Jacobian product (kl_hessian=gauss_newton): the Hessian to rounding
    gn = fd.kl_fisher_product(outputs, params, inner, outer, jacobian="autograd")
    assert torch.allclose(gn(v), hessian @ v, rtol=1e-11, atol=1e-13)
    assert torch.allclose(gn(2 * v + 1), hessian @ (2 * v + 1), rtol=1e-11, atol=1e-13)  # the graph serves many products
    assert torch.equal(gn(torch.zeros_like(v)), torch.zeros_like(v))
    with pytest.raises(ValueError, match="jacobian='forward'"):
        fd.kl_fisher_product(outputs, params, inner, outer, jacobian="forward")  # type: ignore[arg-type]
    damped = MAMLRL(algo.model, inner_lr=0.3, cg_damping=0.5).kl_hessian_product(
        algo.outer_objective(params, inner, outer, train=True)[1], [params[n] for n in names])
    assert torch.allclose(damped(v), hessian @ v + 0.5 * v, rtol=1e-8, atol=1e-10)


# -- roll-outs and the update on a real family ---------------------------------------------------
def _navigation(horizon=15):
    fam = get_family("navigation_2d")
    return fam(fam.Options(horizon=horizon))


def _batch(fam, n=3, shots=4, queries=3, stream="train"):
    return EnvBatch(tuple(fam.task(0, stream, i) for i in range(n)), shots, queries)


def test_rollouts_follow_the_policy_and_the_environment():
    fam = _navigation(horizon=6)
    algo = MAMLRL(_policy(hidden=(4,)))
    batch = _batch(fam, n=2)
    noise = torch.randn(2, 3, 6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    params = {n: p.detach() for n, p in algo.model.named_parameters()}
    ro = algo.rollout(batch, params, 3, 0, noise)
    assert ro.obs.shape == (2, 3, 6, 2) and ro.mask.sum() == 36
    # replay one episode by hand: a = mean + std * noise, clipped by the env, reward = -distance after the move
    pos = np.zeros(2)
    goal = np.array(batch[1].params["goal"])
    for t in range(6):
        assert np.allclose(ro.obs[1, 2, t].numpy(), pos.astype(np.float32))
        out = algo.model(torch.tensor(pos.astype(np.float32), dtype=torch.float64)[None])[0]
        a = out[:2] + out[2:].exp() * noise[1, 2, t]
        assert torch.allclose(ro.actions[1, 2, t], a)
        pos = pos + np.clip(a.detach().numpy(), -0.1, 0.1)
        assert ro.rewards[1, 2, t].item() == pytest.approx(-np.linalg.norm(pos - goal), rel=1e-6)


def test_an_episode_that_reaches_the_goal_is_masked_after_its_last_step():
    fam = _navigation(horizon=5)
    task = fam.task(0, "test", 0)
    task = type(task)({"goal": (0.05, 0.0)}, task.seed, 0, fam)
    model = _policy(hidden=(2,))
    with torch.no_grad():
        for p in model.mean.parameters():
            p.zero_()
        model.mean.net[-1].bias.copy_(torch.tensor([0.05, 0.0], dtype=torch.float64))
    algo = MAMLRL(model)
    ro = algo.rollout(EnvBatch((task,), 1, 1), {n: p.detach() for n, p in model.named_parameters()}, 1, 0,
                      torch.zeros(1, 1, 5, 2, dtype=torch.float64))
    assert ro.mask[0, 0].tolist() == [1, 0, 0, 0, 0]  # at the goal after one step of 0.05: terminated
    assert ro.episode_returns()[0, 0].item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("kl_hessian", ["exact", "gauss_newton", "finite_differences"])
def test_a_trpo_step_stays_in_the_trust_region_and_sgd_with_rate_one_applies_it(kl_hessian):
    torch.manual_seed(0)
    fam = _navigation()
    algo = MAMLRL(GaussianMLP(2, 2, (8,)), max_kl=0.01, kl_hessian=kl_hessian)
    before = [p.detach().clone() for p in algo.parameters()]
    metrics = algo.meta_backward(_batch(fam))
    assert set(metrics) == {"loss", "return", "kl", "step_fraction"}
    assert 0 < metrics["kl"] <= 0.01 and 0 < metrics["step_fraction"] <= 1
    opt = torch.optim.SGD(algo.parameters(), lr=1.0)
    opt.step()
    assert any(not torch.equal(p, b) for p, b in zip(algo.parameters(), before))
    assert all(torch.equal(p.detach(), b - p.grad) for p, b in zip(algo.parameters(), before))


@pytest.mark.parametrize("inner_steps", [1, 2])
def test_the_gauss_newton_meta_step_is_the_exact_one_in_float64(inner_steps):
    # one whole meta-iteration from the same seed: the same roll-outs, CG direction, line search and step.
    # cg_damping=0.1 keeps the CG solve well conditioned: with the default 1e-5, ten CG iterations on this
    # small policy turn a relative perturbation of 1e-16 in the products (rounding) into 3e-5 in the step
    fam = _navigation()
    steps = {}
    for kl_hessian in ("exact", "gauss_newton"):
        torch.manual_seed(3)
        algo = MAMLRL(GaussianMLP(2, 2, (8, 8)).double(), inner_steps=inner_steps, max_kl=0.01, cg_damping=0.1,
                      kl_hessian=kl_hessian)
        metrics = algo.meta_backward(_batch(fam))
        steps[kl_hessian] = (torch.cat([p.grad.reshape(-1) for p in algo.parameters()]), metrics)
    (exact, m_exact), (gn, m_gn) = steps["exact"], steps["gauss_newton"]
    assert exact.abs().max() > 1e-3 and m_exact["step_fraction"] == m_gn["step_fraction"]
    assert torch.allclose(gn, exact, rtol=1e-9, atol=1e-12), (gn - exact).abs().max()
    assert m_gn["kl"] == pytest.approx(m_exact["kl"], rel=1e-9)


def test_meta_false_trains_on_the_policy_s_own_rollouts_without_adapting():
    torch.manual_seed(0)
    algo = MAMLRL(GaussianMLP(2, 2, (8,)), meta=False, outer="vpg")
    calls = []
    original = algo._inner_step
    algo._inner_step = lambda *a, **k: calls.append(k) or original(*a, **k)  # type: ignore[method-assign]
    algo.meta_backward(_batch(_navigation()))
    assert calls == [] and all(p.grad is not None for p in algo.parameters())
    algo.task_returns(_batch(_navigation(), stream="test"))  # evaluation still adapts (eval_steps = 1)
    assert len(calls) == 3


def test_evaluation_is_fixed_by_the_task_seeds_and_returns_after_each_step():
    fam = _navigation()
    torch.manual_seed(0)
    algo = MAMLRL(GaussianMLP(2, 2, (8,)), eval_steps=2)
    batch = _batch(fam, stream="test")
    a, b = algo.task_returns(batch), algo.task_returns(batch)
    assert torch.equal(a, b) and a.shape == (3,)
    steps = algo.returns_after_steps(batch)
    assert steps.shape == (3, 3) and torch.equal(steps[-1], a)
    one = algo.returns_after_steps(EnvBatch(batch.tasks[1:2], 4, 3), 2)
    # a task's numbers do not depend on the other tasks of its batch (up to float32 rounding of batched products)
    assert torch.allclose(one[:, 0], steps[:, 1], rtol=1e-5)
    paths = algo.trajectories(batch, 1)
    assert list(paths[0]) == ["pre-update", "1 step"] and len(paths[0]["1 step"]) == 3
    assert paths[0]["pre-update"][0].shape == (15, 2) and np.allclose(paths[0]["pre-update"][0][0], 0)


def test_the_inner_step_size_can_be_changed_after_building_and_is_validated():
    fam = _navigation()
    torch.manual_seed(0)
    algo = MAMLRL(GaussianMLP(2, 2, (8,)), inner_lr=0.1, eval_steps=1)
    batch = _batch(fam, stream="test")
    at_default = algo.returns_after_steps(batch)
    algo.inner_lr = 0.0  # no step: the adapted policy is the initial one, so its roll-outs score the same ...
    still = algo.returns_after_steps(batch)
    assert algo.inner_lr == 0.0 and not torch.equal(still[1], at_default[1])
    assert torch.allclose(still[1], MAMLRL(algo.model, inner_lr=0.0, eval_steps=1).returns_after_steps(batch)[1])
    algo.inner_lr = 0.1  # ... and setting it back restores the built step exactly
    assert torch.equal(algo.returns_after_steps(batch), at_default)
    assert list(algo.state_dict()) == list(MAMLRL(GaussianMLP(2, 2, (8,))).state_dict())  # not in checkpoints
    for bad in (-0.1, float("nan"), "0.1", True):
        with pytest.raises(ValueError, match=r"inner_lr=.* must be a finite number >= 0$"):
            algo.inner_lr = bad


# -- training through the runtime ----------------------------------------------------------------
def _config(**sections) -> dict:
    raw = {
        "task": {"family": "navigation_2d", "horizon": 10},
        "train": {"shots": 3, "queries": 2, "meta_batch": 2, "steps": 4},
        "eval": {"val_episodes": 2, "val_every": 2, "test_episodes": 4},
        "model": {"name": "gaussian_mlp", "hidden": [8]},
        "algorithm": {"name": "maml_rl"},
        "optim": {"name": "sgd", "lr": 1.0},
        "run": {"checkpoint_every": 1, "log_every": 1, "progress": False, "seed": 3, "num_threads": 1},
    }
    raw.update(sections)
    return raw


def test_a_run_resumed_from_a_checkpoint_ends_bitwise_equal(tmp_path):
    run, again = tmp_path / "run", tmp_path / "again"
    assert train(Config.from_dict(_config()), run).status == "finished"
    half = _config(train={"shots": 3, "queries": 2, "meta_batch": 2, "steps": 2})
    train(Config.from_dict(half), again)
    train(Config.from_dict(_config()), again, resume=True)
    a, b = load_run(run, checkpoint="last"), load_run(again, checkpoint="last")
    for (name, x), y in zip(a.algorithm.state_dict().items(), b.algorithm.state_dict().values()):
        assert torch.equal(x, y), name


# -- errors --------------------------------------------------------------------------------------
class _Buttons(gymnasium.Env):
    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self, reward: float = 1.0) -> None:
        self.observation_space = gymnasium.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.action_space = gymnasium.spaces.Discrete(2)
        self.reward = reward

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        return np.zeros(1, np.float32), self.reward, False, True, {}


class _NaNPoint(gymnasium.Env):
    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self) -> None:
        self.observation_space = gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(2, np.float32), float("nan") if self.t == 2 else 0.0, False, self.t >= 3, {}


env_family("_buttons", lambda params, **kw: _Buttons(), lambda rng: {})
env_family("_nan_point", lambda params, **kw: _NaNPoint(), lambda rng: {"k": int(rng.integers(10))})


def test_spaces_the_gaussian_policy_cannot_act_in_are_refused():
    with pytest.raises(ConfigError, match=r"maml_rl needs a 1-D Box action space .* Discrete\(2\)"):
        Config.from_dict(_config(task={"family": "_buttons"}))
    with pytest.raises(ConfigError, match=r"gives outputs of shape \[2, 6\] .* 4 outputs per observation; use model.name=gaussian_mlp"):
        Config.from_dict(_config(model={"name": "gaussian_mlp", "action_dim": 3}))
    algo = MAMLRL(GaussianMLP(3, 2, (4,)))
    box = gymnasium.spaces.Box(-1, 1, (2,), np.float32)
    with pytest.raises(ValueError, match=r"cannot take the environment's observations \(2 values.*in_features=2"):
        algo.check_spaces(box, box)
    with pytest.raises(ValueError, match=r"needs 6 \(\[mean, log_std\] of 3 coordinates\); build it with action_dim=3"):
        MAMLRL(GaussianMLP(2, 2, (4,))).check_spaces(box, gymnasium.spaces.Box(-1, 1, (3,), np.float32))


def test_trpo_needs_plain_sgd_with_rate_one_and_vpg_takes_any_optimizer():
    with pytest.raises(ConfigError, match=r"optim.name=adam but algorithm.outer=trpo .* set optim.name=sgd"):
        Config.from_dict(_config(optim={"name": "adam", "lr": 1.0}))
    with pytest.raises(ConfigError, match=r"optim.lr=0.5 but algorithm.outer=trpo .* set optim.lr=1.0"):
        Config.from_dict(_config(optim={"name": "sgd", "lr": 0.5}))
    with pytest.raises(ConfigError, match=r"optim.grad_clip=1.0 but .* set optim.grad_clip=null"):
        Config.from_dict(_config(optim={"name": "sgd", "lr": 1.0, "grad_clip": 1.0}))
    Config.from_dict(_config(optim={"name": "adam", "lr": 0.01}, algorithm={"name": "maml_rl", "outer": "vpg"}))


def test_non_finite_rewards_sizes_and_options_are_refused_by_name():
    fam = get_family("_nan_point")(get_family("_nan_point").Options())
    algo = MAMLRL(GaussianMLP(2, 2, (4,)), max_steps=3)
    batch = EnvBatch((fam.task(0, "test", 0),), 2, 2)
    with pytest.raises(NonFiniteRewardError, match=r"the environment of task 0 \(task.family=_nan_point\) returned the reward nan at step 1;"):
        algo.task_returns(batch)
    with pytest.raises(ValueError, match=r"task.family=_nan_point states no episode length .* set algorithm.max_steps"):
        MAMLRL(GaussianMLP(2, 2, (4,))).task_returns(batch)
    with pytest.raises(ValueError, match=r"batch.shots=0; shots must be an int >= 1"):
        algo.task_returns(EnvBatch(batch.tasks, 0, 2))
    with pytest.raises(TypeError, match=r"batch must be an EnvBatch"):
        algo.meta_backward([1, 2])  # type: ignore[arg-type]
    for kwargs, message in (({"outer": "ppo"}, r"outer='ppo' is not valid; use trpo"), ({"max_kl": 0}, r"max_kl=0 must be"),
                            ({"discount": 1.5}, r"discount=1.5 must be a number in \[0, 1\]"),
                            ({"inner_steps": -1}, r"inner_steps=-1 must be an int >= 0"),
                            ({"kl_hessian": "fisher"}, r"kl_hessian='fisher' is not valid; use exact, gauss_newton or finite_differences")):
        with pytest.raises(ValueError, match=message):
            MAMLRL(GaussianMLP(2, 2, (4,)), **kwargs)


def test_registered_as_maml_rl_for_environment_tasks():
    cls = get_algorithm("maml_rl")
    assert cls is MAMLRL and cls.task_kinds == ("rl",)


@pytest.mark.parametrize("family", ["half_cheetah_direction", "half_cheetah_velocity"])
def test_a_half_cheetah_run_trains_and_is_scored(family, tmp_path):
    pytest.importorskip("mujoco", reason="the half-cheetah families need MuJoCo (pip install 'gymnasium[mujoco]')")
    raw = _config(task={"family": family, "horizon": 5},
                  train={"shots": 2, "queries": 2, "meta_batch": 2, "steps": 1},
                  eval={"val_episodes": 2, "val_every": 1, "test_episodes": 2})
    result = train(Config.from_dict(raw), tmp_path / "run")
    assert result.status == "finished" and math.isfinite(result.best["return"])
    loaded = load_run(tmp_path / "run")
    assert loaded.algorithm.model.mean.net[0].in_features == 17 and loaded.algorithm.model.action_dim == 6
