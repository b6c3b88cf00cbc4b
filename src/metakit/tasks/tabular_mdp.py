"""Random tabular MDPs: the second task distribution of RL² (Duan et al. 2016, section 3.2).

The paper's construction, which this family follows (defaults ``states=10``, ``actions=5``,
``horizon=10``): "The rewards follow a Gaussian distribution with unit variance, and the mean
parameters are sampled independently from Normal(1,1). The transitions are sampled from a flat
Dirichlet distribution. [...] We set the horizon for each episode to be T = 10, and an episode
always starts on the first state." So a task is

* reward means ``R[s, a] ~ Normal(1, 1)``, independently for every state and action; the reward
  of taking ``a`` in ``s`` is ``R[s, a] + z`` with ``z ~ Normal(0, 1)``;
* transitions ``P[s, a, :] ~ Dirichlet(1, ..., 1)`` over the next states;
* episodes of ``horizon`` steps, each starting in state 0 (``truncated=True`` after the last
  step); the observation is the one-hot vector of the state (a ``Box`` of shape ``(states,)``).

A trial of ``n`` episodes is ``train.shots: n`` (the paper: ``n`` in {10, 25, 50, 75, 100}).

The expected return of the best policy that knows the MDP is computed exactly by finite-horizon
value iteration (:func:`value_iteration`, backward induction from ``V_T = 0``:
``Q_t(s, a) = R[s, a] + sum_s' P[s, a, s'] V_{t+1}(s')``, ``V_t(s) = max_a Q_t(s, a)``); over
``n`` episodes it is ``n * V_0(0)`` (:meth:`TabularMDPFamily.optimal_return`).

Randomness: each step draws ``z = env.np_random.standard_normal()`` then ``u =
env.np_random.random()``, and the next state is the first ``s'`` with ``u < cumsum(P[s, a])[s']``,
so that :class:`TabularMDPVectorEnv` gives exactly the transitions and rewards of the single envs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium
import numpy as np

from ..options import ConfigError, Options, option
from ._batched import BatchedEnv, check_discrete_actions, refuse_env_options, repeat_tasks
from .family import register_family
from .rl import EnvFamily, EnvTask

__all__ = ["TabularMDPEnv", "TabularMDPVectorEnv", "TabularMDPFamily", "TabularMDPOptions", "value_iteration"]


def value_iteration(rewards: Any, transitions: Any, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Finite-horizon value iteration (backward induction) on known MDPs.

    Args:
        rewards: expected rewards ``[..., S, A]``.
        transitions: ``[..., S, A, S]``, rows summing to 1.
        horizon: steps per episode ``T >= 1``.

    Returns:
        ``(values, policy)``: ``values [..., T + 1, S]`` with ``values[..., t, s]`` the optimal
        expected return from state ``s`` with ``T - t`` steps left (``values[..., T, :] = 0``), and
        ``policy [..., T, S]`` the optimal action at step ``t`` (the lowest-numbered one on ties).
    """
    r = np.asarray(rewards, np.float64)
    p = np.asarray(transitions, np.float64)
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ValueError(f"horizon={horizon!r} must be a positive int (steps per episode)")
    if r.ndim < 2 or p.shape != r.shape + (r.shape[-2],):
        raise ValueError(
            f"rewards {r.shape} and transitions {p.shape} do not fit: give rewards [..., S, A] and transitions [..., S, A, S]"
        )
    values = np.zeros(r.shape[:-1][:-1] + (horizon + 1, r.shape[-2]))
    policy = np.zeros(r.shape[:-1][:-1] + (horizon, r.shape[-2]), np.int64)
    for t in range(horizon - 1, -1, -1):
        q = r + np.einsum("...sax,...x->...sa", p, values[..., t + 1, :])
        policy[..., t, :] = q.argmax(-1)
        values[..., t, :] = q.max(-1)
    return values, policy


def _check_params(params: Mapping[str, Any], owner: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        r = np.asarray(params["rewards"], np.float64)
        p = np.asarray(params["transitions"], np.float64)
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{owner}: params must hold 'rewards' [S, A] and 'transitions' [S, A, S] arrays") from None
    if r.ndim != 2 or p.shape != r.shape + (r.shape[0],) or not np.all(np.isfinite(r)):
        raise ValueError(f"{owner}: rewards {r.shape} and transitions {p.shape} must be finite [S, A] and [S, A, S]")
    if np.any(p < 0) or not np.allclose(p.sum(-1), 1.0):
        raise ValueError(f"{owner}: every transitions[s, a, :] must be a probability vector (non-negative, summing to 1)")
    return r, p


def _one_hot(states: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(states.shape + (n,), np.float32)
    np.put_along_axis(out, states[..., None], 1.0, axis=-1)
    return out


class TabularMDPEnv(gymnasium.Env):
    """One tabular MDP (see the module docstring).

    Args:
        rewards: reward means ``[S, A]``.
        transitions: ``[S, A, S]``.
        horizon: steps per episode.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, rewards: Any, transitions: Any, horizon: int = 10, render_mode: str | None = None) -> None:
        self.rewards, self.transitions = _check_params({"rewards": rewards, "transitions": transitions}, "TabularMDPEnv")
        if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
            raise ValueError(f"horizon={horizon!r} must be a positive int (steps per episode)")
        self.horizon = int(horizon)
        self.num_states, self.num_actions = self.rewards.shape
        self.cumulative = np.cumsum(self.transitions, -1)
        self.observation_space = gymnasium.spaces.Box(0.0, 1.0, (self.num_states,), np.float32)
        self.action_space = gymnasium.spaces.Discrete(self.num_actions)
        self.render_mode = render_mode
        self.state, self.t = 0, 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.state, self.t = 0, 0
        return _one_hot(np.asarray(0), self.num_states), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        a = int(check_discrete_actions(np.asarray([action]), self.num_actions, 1)[0])
        reward = float(self.rewards[self.state, a] + self.np_random.standard_normal())
        u = self.np_random.random()
        self.state = min(int((u >= self.cumulative[self.state, a]).sum()), self.num_states - 1)
        self.t += 1
        return _one_hot(np.asarray(self.state), self.num_states), reward, False, self.t >= self.horizon, {}


class TabularMDPVectorEnv(BatchedEnv):
    """The MDPs of many tasks stepped together by array operations.

    Args:
        rewards: ``[N, S, A]`` reward means, one MDP per env.
        transitions: ``[N, S, A, S]``.
        horizon: steps per episode.
    """

    def __init__(self, rewards: np.ndarray, transitions: np.ndarray, horizon: int) -> None:
        self.rewards = np.asarray(rewards, np.float64)
        self.cumulative = np.cumsum(np.asarray(transitions, np.float64), -1)
        self.horizon = int(horizon)
        n, self.num_states, self.num_actions = self.rewards.shape
        self.states = np.zeros(n, np.int64)
        self._setup(gymnasium.spaces.Box(0.0, 1.0, (self.num_states,), np.float32),
                    gymnasium.spaces.Discrete(self.num_actions), n)

    def _reset_rows(self, rows: np.ndarray) -> None:
        self.states[rows] = 0

    def _observe(self) -> np.ndarray:
        return _one_hot(self.states, self.num_states)

    def _step_rows(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = np.arange(self.num_envs)
        z = np.empty(self.num_envs)
        u = np.empty(self.num_envs)
        for i, g in enumerate(self.rngs):  # each env's own stream, in the single env's order
            z[i] = g.standard_normal()
            u[i] = g.random()
        rewards = self.rewards[rows, self.states, actions] + z
        nxt = (u[:, None] >= self.cumulative[rows, self.states, actions]).sum(-1)
        self.states = np.minimum(nxt, self.num_states - 1)
        self.t += 1
        return rewards, np.zeros(self.num_envs, bool), self.t >= self.horizon


@dataclass(frozen=True)
class TabularMDPOptions(Options):
    """Random tabular MDPs (Duan et al. 2016, section 3.2)."""

    section: ClassVar[str] = "task"

    states: int = option(10, "tabular_mdp: number of states (the paper: 10)", ge=1)
    actions: int = option(5, "tabular_mdp: number of actions (the paper: 5)", ge=2)
    horizon: int = option(10, "tabular_mdp: steps per episode T; every episode starts in state 0 (the paper: 10)", ge=1)

    def _resolve(self) -> None:
        if self.states * self.states * self.actions > 10**7:
            raise ConfigError(
                f"task.states={self.states} with task.actions={self.actions} gives a transition table of "
                f"{self.states * self.states * self.actions:,} entries per task; keep it under 10,000,000"
            )


@register_family("tabular_mdp")
class TabularMDPFamily(EnvFamily):
    """Random tabular MDPs; see the module docstring."""

    Options = TabularMDPOptions
    regret_references = ("psrl", "random")

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        o: Any = self.options
        return {
            "rewards": rng.normal(1.0, 1.0, size=(o.states, o.actions)),
            "transitions": rng.dirichlet(np.ones(o.states), size=(o.states, o.actions)),
        }

    def make_env(self, params: Mapping[str, Any], **kwargs: Any) -> TabularMDPEnv:
        r, p = _check_params(params, "task.family=tabular_mdp")
        return TabularMDPEnv(r, p, int(self.options.horizon), **kwargs)  # type: ignore[attr-defined]

    def make_vector_env(self, tasks: Sequence[EnvTask], copies: int = 1, **kwargs: Any) -> TabularMDPVectorEnv:
        refuse_env_options(kwargs, "tabular_mdp")
        params = [_check_params(t.params, "task.family=tabular_mdp") for t in repeat_tasks(tasks, copies)]
        return TabularMDPVectorEnv(np.stack([r for r, _ in params]), np.stack([p for _, p in params]),
                                   int(self.options.horizon))  # type: ignore[attr-defined]

    def optimal_return(self, task: EnvTask, episodes: int) -> float:
        """``episodes * V_0(0)`` of finite-horizon value iteration on the true MDP."""
        r, p = _check_params(task.params, "task.family=tabular_mdp")
        values, _ = value_iteration(r, p, int(self.options.horizon))  # type: ignore[attr-defined]
        return float(episodes) * float(values[0, 0])

    def describe(self) -> str:
        o: Any = self.options
        return f"tabular_mdp ({o.states} states, {o.actions} actions, horizon {o.horizon})"
