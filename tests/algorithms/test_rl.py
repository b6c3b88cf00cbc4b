"""The shared meta-RL machinery (metakit.algorithms._rl): GAE and returns against hand-computed
values, PPO's clipped loss against hand values, counter-based noise, and trials played on a vector
env equal to trials played one environment at a time."""

import math
from typing import ClassVar

import gymnasium
import numpy as np
import pytest
import torch

from metakit.algorithms import RL2
from metakit.algorithms._rl import (
    EpisodeTooLongError,
    NonFiniteRewardError,
    action_from_noise,
    clipped_surrogate,
    discounted_returns,
    episode_seeds,
    gae,
    normalize,
    rollout,
    step_noise,
)
from metakit.models import RecurrentPolicy
from metakit.tasks import EnvBatch, env_family


class Steps(gymnasium.Env):
    """Episodes of ``horizon`` steps (task-dependent: the envs of a batch end at different times);
    reward ``action + noise`` with the env's own generator, observation the time step."""

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self, horizon: int, reward: float = 0.0) -> None:
        self.horizon, self.reward = horizon, reward
        self.observation_space = gymnasium.spaces.Box(0.0, 10.0, (2,), np.float32)
        self.action_space = gymnasium.spaces.Discrete(3)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0, self.np_random.random()], np.float32), {}

    def step(self, action):
        self.t += 1
        r = float(action) + self.np_random.random() + self.reward
        return np.array([self.t, self.np_random.random()], np.float32), r, self.t >= self.horizon, False, {}


StepsFamily = env_family("_steps", lambda p, **kw: Steps(p["horizon"], p.get("reward", 0.0)),
                         lambda rng: {"horizon": int(rng.integers(1, 4))})


def _tasks(n, **params):
    fam = StepsFamily(StepsFamily.Options())
    tasks = [fam.task(0, "test", j) for j in range(n)]
    if params:
        tasks = [type(t)({**t.params, **params}, t.seed, t.index, t.family) for t in tasks]
    return tasks


def test_gae_and_discounted_returns_match_hand_computed_values():
    r = torch.tensor([[1.0, 0.0, 2.0], [1.0, 0.0, 2.0]], dtype=torch.float64)
    v = torch.tensor([[0.5, 1.0, 0.5], [0.0, 0.0, 0.0]], dtype=torch.float64)
    ends = torch.tensor([[False, True, False], [False, False, False]])
    adv, ret = gae(r, v, ends, gamma=0.9, lam=0.5)
    # row 0: d2 = 2 - .5 = 1.5; d1 = 0 - 1 = -1 (segment ends: no bootstrap); d0 = 1 + .9 * 1 - .5 = 1.4
    #        A2 = 1.5, A1 = -1, A0 = 1.4 + .9 * .5 * (-1) = 0.95
    # row 1 (V = 0): d = r; A2 = 2, A1 = 0 + .45 * 2 = 0.9, A0 = 1 + .45 * .9 = 1.405
    expected = torch.tensor([[0.95, -1.0, 1.5], [1.405, 0.9, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(ret, expected + v, rtol=0, atol=1e-12)
    g = discounted_returns(r, ends, 0.9)
    torch.testing.assert_close(g, torch.tensor([[1.0, 0.0, 2.0], [2.62, 1.8, 2.0]], dtype=torch.float64), rtol=0, atol=1e-12)
    # lambda = 1: GAE's advantages are the discounted returns minus the values
    adv1, _ = gae(r, v, ends, gamma=0.9, lam=1.0)
    torch.testing.assert_close(adv1, g - v, rtol=0, atol=1e-12)


def test_clipped_surrogate_matches_hand_values():
    ratio = torch.tensor([1.5, 0.5, 1.1, 0.5], dtype=torch.float64)
    adv = torch.tensor([1.0, 1.0, -2.0, -1.0], dtype=torch.float64)
    loss, clipped = clipped_surrogate(ratio.log(), torch.zeros(4, dtype=torch.float64), adv, 0.2)
    # -min(rho A, clip(rho) A): min(1.5, 1.2) = 1.2; min(.5, .8) = .5; min(-2.2, -2.2); min(-.5, -.8) = -.8
    torch.testing.assert_close(loss, torch.tensor([-1.2, -0.5, 2.2, 0.8], dtype=torch.float64), rtol=0, atol=1e-12)
    assert clipped.tolist() == [True, True, False, True]


def test_normalize_uses_only_the_valid_entries():
    x = torch.tensor([[1.0, 3.0, 100.0], [5.0, 7.0, -100.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [True, True, False]])
    y = normalize(x, mask, eps=0.0)
    torch.testing.assert_close(y, torch.tensor([[-3.0, -1.0, 0.0], [1.0, 3.0, 0.0]], dtype=torch.float64) / math.sqrt(5))


def test_noise_is_a_function_of_seed_copy_stream_and_step_only():
    a = step_noise([11, 12, 13], [0, 0, 1], 0, [0, 5, 2], 2, "uniform")
    b = step_noise([13], [1], 0, [2], 2, "uniform")
    assert torch.equal(a[2], b[0]) and a.shape == (3, 2)
    assert not torch.equal(step_noise([13], [1], 1, [2], 2, "uniform"), b)  # another stream
    assert not torch.equal(step_noise([13], [0], 0, [2], 2, "uniform"), b)  # another copy
    u = step_noise(np.arange(4000), np.zeros(4000), 0, np.zeros(4000), 1, "uniform")
    assert 0 < float(u.min()) and float(u.max()) < 1 and abs(float(u.mean()) - 0.5) < 0.02
    z = step_noise(np.arange(4000), np.zeros(4000), 0, np.zeros(4000), 1, "normal")
    assert abs(float(z.mean())) < 0.06 and abs(float(z.std()) - 1) < 0.05
    assert len(set(episode_seeds([1] * 50, [0] * 50, range(50)))) == 50


def test_actions_from_noise_invert_the_cdf_and_greedy_takes_the_mode():
    dist = torch.distributions.Categorical(probs=torch.tensor([[0.2, 0.5, 0.3]] * 4))
    u = torch.tensor([[0.1], [0.25], [0.69], [0.95]])
    assert action_from_noise(dist, u).tolist() == [0, 1, 1, 2]
    assert action_from_noise(dist, None).tolist() == [1, 1, 1, 1]
    normal = torch.distributions.Independent(torch.distributions.Normal(torch.tensor([[1.0, -1.0]]), torch.tensor([[2.0, 0.5]])), 1)
    assert action_from_noise(normal, torch.tensor([[1.0, 2.0]])).tolist() == [[3.0, 0.0]]
    assert action_from_noise(normal, None).tolist() == [[1.0, -1.0]]


def _policy():
    torch.manual_seed(0)
    return RL2(RecurrentPolicy(observation_dim=2, action_dim=3, hidden=8))


def test_vectorised_trials_equal_trials_played_one_environment_at_a_time():
    algo = _policy()
    tasks = _tasks(4)
    assert len({t.params["horizon"] for t in tasks}) > 1  # episodes end at different times: masked resets
    together = algo.play(EnvBatch(tuple(tasks), 3, 3), stream=0, copies=2)
    assert together.num_envs == 8
    for i, task in enumerate(tasks):
        alone = algo.play(EnvBatch((task,), 3, 3), stream=0, copies=2)
        for c in range(2):
            row, n = 2 * i + c, int(alone.valid[c].sum())
            assert int(together.valid[row].sum()) == n == 3 * task.params["horizon"]
            for name in ("obs", "actions", "rewards", "dones", "episode"):
                assert torch.equal(getattr(together, name)[row, :n], getattr(alone, name)[c, :n]), name
            torch.testing.assert_close(together.log_probs[row, :n], alone.log_probs[c, :n])
    assert not torch.equal(together.rewards[0], together.rewards[1])  # the copies are independent trials
    again = algo.play(EnvBatch(tuple(tasks), 3, 3), stream=0, copies=2)
    assert torch.equal(again.rewards, together.rewards) and torch.equal(again.actions, together.actions)


def test_non_finite_rewards_and_endless_episodes_are_refused_naming_the_task():
    algo = _policy()
    batch = EnvBatch(tuple(_tasks(2, reward=float("nan"))), 2, 2)
    with pytest.raises(NonFiniteRewardError, match=r"the environment of task 0 \(task.family=_steps\) returned the reward nan at step 0 of episode 0"):
        algo.play(batch, stream=0)
    endless = EnvBatch(tuple(_tasks(2, horizon=10**9)), 1, 1)
    with pytest.raises(EpisodeTooLongError, match=r"episode 0 of task 0 \(task.family=_steps\) ran 5 steps without terminating"):
        rollout(endless, algo._act, episodes=1, state=algo.model.initial_state(2), max_episode_steps=5)


class Reach(gymnasium.Env):
    """A 1-D Box action: reward -|action - goal|, episodes of 2 steps."""

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self, goal: float) -> None:
        self.goal = goal
        self.observation_space = gymnasium.spaces.Box(-1.0, 1.0, (2, 1), np.float32)
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros((2, 1), np.float32), {}

    def step(self, action):
        self.t += 1
        assert action.shape == (2,) and np.all(np.abs(action) <= 1.0)
        return np.full((2, 1), self.t / 2, np.float32), -float(np.abs(action - self.goal).sum()), False, self.t >= 2, {}


ReachFamily = env_family("_reach", lambda p, **kw: Reach(p["goal"]), lambda rng: {"goal": float(rng.uniform(-1, 1))})


def test_box_actions_are_gaussian_clipped_to_the_space_and_vectorised_like_single_envs():
    torch.manual_seed(0)
    algo = RL2(RecurrentPolicy(observation_dim=2, action_dim=2, discrete=False, hidden=4, init_log_std=0.5))
    fam = ReachFamily(ReachFamily.Options())
    tasks = tuple(fam.task(0, "test", j) for j in range(3))
    together = algo.play(EnvBatch(tasks, 2, 2), stream=0)
    assert together.actions.shape == (3, 4, 2) and together.actions.is_floating_point()
    assert float(together.actions.abs().max()) > 1.0  # sampled beyond the bounds; the env got them clipped
    for i, task in enumerate(tasks):
        alone = algo.play(EnvBatch((task,), 2, 2), stream=0)
        # equal up to the rounding of the GRU's batched matrix products (a batch of 1 against 3)
        torch.testing.assert_close(alone.actions[0], together.actions[i], rtol=0, atol=1e-5)
        torch.testing.assert_close(alone.rewards[0], together.rewards[i], rtol=0, atol=1e-5)
        clipped = together.actions[i].clamp(-1, 1)
        torch.testing.assert_close(together.rewards[i], -(clipped - task.params["goal"]).abs().sum(-1))
