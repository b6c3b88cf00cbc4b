"""Classical references for random tabular MDPs (Duan et al. 2016, Table 2).

A trial is ``n`` episodes of ``horizon`` steps on one MDP, each starting in state 0. Per episode:

* :class:`RandomMDP`: actions uniformly at random;
* :class:`OptimalMDP`: the optimal policy of the *true* MDP, by finite-horizon value iteration
  (:func:`metakit.tasks.tabular_mdp.value_iteration`): the ceiling no learner can beat in
  expectation;
* :class:`PSRL`, posterior sampling for reinforcement learning (Strens 2000; Osband, Russo & Van
  Roy 2013): at the start of every episode, draw one MDP from the posterior given the trial so
  far, and follow that MDP's optimal finite-horizon policy for the whole episode. The posterior
  is the exact one of the family's prior (the Bayesian methods of the paper are given the true
  prior):

  - reward means ``R[s, a] ~ Normal(m0, v0)`` (``m0 = v0 = 1``) with rewards ``R[s, a] + z``,
    ``z ~ Normal(0, sigma^2)`` (``sigma^2 = 1``, known): after ``n`` rewards with sum ``S`` the
    posterior is ``Normal(m_n, v_n)`` with ``1 / v_n = 1 / v0 + n / sigma^2`` and
    ``m_n = v_n (m0 / v0 + S / sigma^2)``;
  - transitions ``P[s, a, :] ~ Dirichlet(1, ..., 1)``: after counts ``C[s, a, s']`` the posterior
    is ``Dirichlet(1 + C[s, a, :])``.

Each task's draws come from its own generator (``[task.seed, 1]``), so a task's trial does not
depend on its batch.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from ..tasks.rl import EnvBatch, check_rewards
from ..tasks.tabular_mdp import value_iteration
from .bandits import _check_number, policy_generators

__all__ = ["MDPPolicy", "RandomMDP", "OptimalMDP", "PSRL", "play_mdp_trials", "normal_posterior"]


def normal_posterior(count: np.ndarray, total: np.ndarray, prior_mean: float, prior_var: float,
                     noise_var: float) -> tuple[np.ndarray, np.ndarray]:
    """Posterior ``(mean, variance)`` of a Gaussian mean with prior ``Normal(prior_mean, prior_var)``
    after ``count`` observations with sum ``total`` and known noise variance ``noise_var``."""
    precision = 1.0 / prior_var + count / noise_var
    var = 1.0 / precision
    return var * (prior_mean / prior_var + total / noise_var), var


class MDPPolicy:
    """A strategy for one trial of episodes on a batch of tabular MDPs."""

    label = "policy"

    def start(self, batch: EnvBatch, states: int, actions: int, horizon: int, rngs: list[np.random.Generator]) -> None:
        """Before the trial."""
        self.rngs = rngs

    def begin_episode(self, episode: int) -> None:
        """Before every episode (PSRL draws its MDP here)."""

    def act(self, states: np.ndarray, t: int) -> np.ndarray:
        """The actions ``[B]`` at step ``t`` of the episode in ``states [B]``."""
        raise NotImplementedError

    def observe(self, states: np.ndarray, actions: np.ndarray, rewards: np.ndarray, next_states: np.ndarray) -> None:
        """After every step."""

    def describe(self) -> dict[str, Any]:
        return {"method": self.label}


class RandomMDP(MDPPolicy):
    """Uniformly random actions."""

    label = "random"

    def start(self, batch, states, actions, horizon, rngs):
        super().start(batch, states, actions, horizon, rngs)
        self.actions = actions

    def act(self, states, t):
        return np.array([g.integers(self.actions) for g in self.rngs])


class OptimalMDP(MDPPolicy):
    """The optimal policy of the true MDP of each task (value iteration)."""

    label = "optimal"

    def start(self, batch, states, actions, horizon, rngs):
        super().start(batch, states, actions, horizon, rngs)
        rewards = np.stack([np.asarray(t.params["rewards"], np.float64) for t in batch])
        transitions = np.stack([np.asarray(t.params["transitions"], np.float64) for t in batch])
        _, self.policy = value_iteration(rewards, transitions, horizon)  # [B, T, S]

    def act(self, states, t):
        return self.policy[np.arange(states.shape[0]), t, states]


class PSRL(MDPPolicy):
    """Posterior sampling for RL with the family's prior (see the module docstring).

    Args:
        prior_mean: ``m0``, prior mean of the reward means (the family: 1).
        prior_var: ``v0``, prior variance of the reward means (the family: 1).
        noise_var: ``sigma^2``, the known variance of a reward around its mean (the family: 1).
        dirichlet: the concentration of the flat Dirichlet prior of the transitions (the family: 1).
    """

    label = "psrl"

    def __init__(self, prior_mean: float = 1.0, prior_var: float = 1.0, noise_var: float = 1.0, dirichlet: float = 1.0) -> None:
        self.prior_mean = _check_number("prior_mean", prior_mean, low=-math.inf)
        self.prior_var = _check_number("prior_var", prior_var, low=0.0, low_open=True)
        self.noise_var = _check_number("noise_var", noise_var, low=0.0, low_open=True)
        self.dirichlet = _check_number("dirichlet", dirichlet, low=0.0, low_open=True)

    def start(self, batch, states, actions, horizon, rngs):
        super().start(batch, states, actions, horizon, rngs)
        b = len(batch)
        self.horizon = horizon
        self.count = np.zeros((b, states, actions))
        self.total = np.zeros((b, states, actions))
        self.transitions = np.zeros((b, states, actions, states))

    def posterior(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(mean [B,S,A], variance [B,S,A], dirichlet [B,S,A,S])`` of the current posterior."""
        mean, var = normal_posterior(self.count, self.total, self.prior_mean, self.prior_var, self.noise_var)
        return mean, var, self.dirichlet + self.transitions

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """One MDP per task from the posterior: ``(reward means [B,S,A], transitions [B,S,A,S])``."""
        mean, var, alpha = self.posterior()
        rewards = np.empty_like(mean)
        transitions = np.empty_like(alpha)
        for i, g in enumerate(self.rngs):
            rewards[i] = mean[i] + np.sqrt(var[i]) * g.standard_normal(mean[i].shape)
            gam = g.standard_gamma(alpha[i])
            transitions[i] = gam / gam.sum(-1, keepdims=True)
        return rewards, transitions

    def begin_episode(self, episode):
        _, self.policy = value_iteration(*self.sample(), self.horizon)

    def act(self, states, t):
        return self.policy[np.arange(states.shape[0]), t, states]

    def observe(self, states, actions, rewards, next_states):
        rows = np.arange(states.shape[0])
        self.count[rows, states, actions] += 1.0
        self.total[rows, states, actions] += rewards
        self.transitions[rows, states, actions, next_states] += 1.0

    def describe(self):
        return {"method": self.label, "prior_mean": self.prior_mean, "prior_var": self.prior_var,
                "noise_var": self.noise_var, "dirichlet": self.dirichlet}


def play_mdp_trials(policy: MDPPolicy, batch: EnvBatch, episodes: int | None = None, *,
                    per_episode: bool = False) -> np.ndarray:
    """Play one trial of ``episodes`` episodes (default ``batch.shots``) on every task of ``batch``.

    The batched vector env is reset with the tasks' seeds before the first episode and without a
    seed before each later one. Returns the total reward of each task's trial ``[B]``, or with
    ``per_episode=True`` the return of every episode ``[B, episodes]``.
    """
    if episodes is None:
        episodes = batch.shots
    if isinstance(episodes, bool) or not isinstance(episodes, numbers.Integral) or episodes < 1:
        raise ValueError(f"episodes={episodes!r} must be a positive int (episodes per trial)")
    env = batch.vector_env()
    states, actions, horizon = env.num_states, env.num_actions, env.horizon
    b = env.num_envs
    total = np.zeros((b, int(episodes)))
    policy.start(batch, states, actions, horizon, policy_generators(batch))
    for e in range(int(episodes)):
        obs, _ = env.reset(seed=batch.seeds if e == 0 else None)
        s = obs.argmax(-1)
        policy.begin_episode(e)
        for t in range(horizon):
            a = policy.act(s, t)
            obs, r, _, _, _ = env.step(a)
            check_rewards(r, batch, step=t, episode=e)
            nxt = obs.argmax(-1)
            policy.observe(s, a, r, nxt)
            total[:, e] += r
            s = nxt
    env.close()
    return total if per_episode else total.sum(1)
