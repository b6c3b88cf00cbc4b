"""Bernoulli multi-armed bandits: the first task distribution of RL² (Duan et al. 2016, section 3.1).

A task is a bandit with ``k`` arms (``task.arms``) whose success probabilities ``p_1 .. p_k`` are
drawn independently and uniformly on ``[0, 1]``. Pulling arm ``i`` pays 1 with probability
``p_i`` and 0 otherwise.

As in the paper, which counts "n episodes of interaction" (Table 1), **one episode is one pull**:
the env's episode ends with its one step (``terminated=True``), its observation is the constant
``[0.0]`` (a ``Box`` of shape ``(1,)``; a bandit has no state), and a trial of ``n`` pulls is a
trial of ``n`` episodes, ``train.shots: n``. The agent's memory of the earlier pulls of a trial is
its own (RL²'s hidden state, the counts of UCB1 or Thompson sampling).

The expected return of the best policy that knows the task over ``n`` pulls is ``n * max_i p_i``
(:meth:`BanditFamily.optimal_return`); the regret of a method is that minus its return.

Randomness: the reward of a pull is ``u < p_i`` for ``u = env.np_random.random()``, one draw per
pull, so that :class:`BanditVectorEnv` (all tasks of a batch stepped by array operations, each env
with its own generator seeded as ``reset(seed=...)`` seeds a single env) gives exactly the rewards
of the single envs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium
import numpy as np

from ..options import Options, option
from ._batched import BatchedEnv, check_discrete_actions, refuse_env_options, repeat_tasks
from .family import register_family
from .rl import EnvFamily, EnvTask

__all__ = ["BanditEnv", "BanditVectorEnv", "BanditFamily", "BanditOptions"]

_OBS_SPACE = gymnasium.spaces.Box(0.0, 1.0, (1,), np.float32)


def _means(params: Mapping[str, Any], owner: str) -> np.ndarray:
    means = np.asarray(params.get("means") if isinstance(params, Mapping) else None, dtype=np.float64)
    if means.ndim != 1 or means.size < 2 or not np.all((means >= 0) & (means <= 1)):
        raise ValueError(
            f"{owner}: params['means'] must be a list of at least 2 arm success probabilities in [0, 1], "
            f"got {params.get('means') if isinstance(params, Mapping) else params!r}"
        )
    return means


class BanditEnv(gymnasium.Env):
    """One Bernoulli bandit; an episode is one pull (see the module docstring).

    Args:
        means: the arms' success probabilities ``[k]``.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, means: Sequence[float], render_mode: str | None = None) -> None:
        self.means = _means({"means": means}, "BanditEnv")
        self.observation_space = _OBS_SPACE
        self.action_space = gymnasium.spaces.Discrete(self.means.size)
        self.render_mode = render_mode

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        a = int(check_discrete_actions(np.asarray([action]), self.means.size, 1)[0])
        reward = float(self.np_random.random() < self.means[a])
        return np.zeros(1, np.float32), reward, True, False, {}


class BanditVectorEnv(BatchedEnv):
    """The bandits of many tasks, one pull of each per step, as array operations.

    Args:
        means: ``[num_envs, k]`` success probabilities, one row per env.
    """

    def __init__(self, means: np.ndarray) -> None:
        self.means = np.asarray(means, np.float64)
        self._setup(_OBS_SPACE, gymnasium.spaces.Discrete(self.means.shape[1]), self.means.shape[0])

    def _reset_rows(self, rows: np.ndarray) -> None:
        pass

    def _observe(self) -> np.ndarray:
        return np.zeros((self.num_envs, 1), np.float32)

    def _step_rows(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        u = np.fromiter((g.random() for g in self.rngs), np.float64, self.num_envs)
        rewards = (u < self.means[np.arange(self.num_envs), actions]).astype(np.float64)
        self.t += 1
        return rewards, np.ones(self.num_envs, bool), np.zeros(self.num_envs, bool)


@dataclass(frozen=True)
class BanditOptions(Options):
    """Bernoulli bandits with uniform arm means (Duan et al. 2016)."""

    section: ClassVar[str] = "task"

    arms: int = option(5, "bandits: number of arms k (the paper: 5, 10, 50)", ge=2)


@register_family("bandits")
class BanditFamily(EnvFamily):
    """Bernoulli multi-armed bandits with means uniform on [0, 1]; see the module docstring."""

    Options = BanditOptions
    regret_references = ("gittins", "ucb1", "thompson")

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"means": rng.uniform(0.0, 1.0, size=int(self.options.arms))}  # type: ignore[attr-defined]

    def make_env(self, params: Mapping[str, Any], **kwargs: Any) -> BanditEnv:
        return BanditEnv(_means(params, "task.family=bandits"), **kwargs)

    def make_vector_env(self, tasks: Sequence[EnvTask], copies: int = 1, **kwargs: Any) -> BanditVectorEnv:
        refuse_env_options(kwargs, "bandits")
        means = [_means(t.params, "task.family=bandits") for t in repeat_tasks(tasks, copies)]
        return BanditVectorEnv(np.stack(means))

    def optimal_return(self, task: EnvTask, episodes: int) -> float:
        """``episodes * max_i p_i``: the expected return of always pulling the best arm."""
        return float(episodes) * float(np.max(_means(task.params, "task.family=bandits")))

    def describe(self) -> str:
        return f"bandits ({self.options.arms} arms)"  # type: ignore[attr-defined]
