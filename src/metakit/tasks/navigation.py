"""2D point navigation (Finn, Abbeel & Levine 2017, "Model-Agnostic Meta-Learning", section 5.3).

A point agent starts at the origin of the plane and must move to a goal it does not see; a
task is a goal drawn uniformly from ``[-0.5, 0.5]^2``. At step ``t`` the action ``a_t`` is the
agent's velocity, clipped to ``[-0.1, 0.1]`` per coordinate, and::

    x_{t+1} = x_t + clip(a_t, -0.1, 0.1)
    r_t     = -|| x_{t+1} - goal ||_2
    terminated when |x_{t+1} - goal| < 0.01 in both coordinates; truncated after 100 steps

The observation is the position ``x_t`` (float32; its space is the square the agent can reach,
``max_action * horizon`` on each side). These are the choices of the paper's
published code (``point_env_randgoal.py`` of ``cbfinn/maml_rl``: velocity clipped to 0.1,
reward the negative distance after the move, an episode ends within 0.01 of the goal in both
coordinates) and of its reference PyTorch port; the horizon of 100 steps is the paper's.
Every size is an option of the ``task:`` section.

:class:`Navigation2DVectorEnv` steps many agents at once with NumPy array operations (one call
for all tasks and all roll-outs of a meta-batch); it gives the same observations, rewards and
flags as the single environments (tested). As with the other families, autoreset is disabled:
an algorithm resets at the start of every episode; stepping on after an episode ended keeps
moving the agent, exactly like the single environment does.

The family draws the trajectories of a task for ``metakit plot`` (:meth:`Navigation2DFamily.draw_trajectories`:
the MAML paper's Figure 4, paths before and after adaptation with the goal).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..options import ConfigError, Options, option
from .family import register_family
from .rl import EnvFamily, EnvTask

__all__ = ["Navigation2DEnv", "Navigation2DVectorEnv", "Navigation2DFamily", "NavigationOptions"]


def _env_classes() -> tuple[type, type]:
    """``(Navigation2DEnv, Navigation2DVectorEnv)``, defined on first use so that importing
    metakit does not import gymnasium."""
    global _CLASSES
    if _CLASSES is None:
        _CLASSES = _define_env_classes()
    return _CLASSES


_CLASSES: tuple[type, type] | None = None


def __getattr__(name: str) -> Any:
    if name in ("Navigation2DEnv", "Navigation2DVectorEnv"):
        return _env_classes()[name == "Navigation2DVectorEnv"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _define_env_classes() -> tuple[type, type]:
    import gymnasium as gym
    from gymnasium.vector import AutoresetMode
    from gymnasium.vector.utils import batch_space

    class Navigation2DEnv(gym.Env):  # type: ignore[misc]
        """One navigation task: a point agent moving towards ``goal`` (see the module docstring).

        Args:
            goal: the goal position ``(x, y)``.
            max_action: the velocity bound per coordinate (0.1).
            horizon: steps before the episode is truncated (100).
            tolerance: the episode terminates within this distance of the goal in both coordinates (0.01).
        """

        metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

        def __init__(self, goal: Sequence[float], max_action: float = 0.1, horizon: int = 100, tolerance: float = 0.01) -> None:
            self.goal = np.asarray(goal, dtype=np.float64).reshape(2)
            self.max_action, self.horizon, self.tolerance = float(max_action), int(horizon), float(tolerance)
            self.observation_space = gym.spaces.Box(-self.max_action * self.horizon, self.max_action * self.horizon, (2,), np.float32)
            self.action_space = gym.spaces.Box(-self.max_action, self.max_action, (2,), np.float32)
            self._position = np.zeros(2)
            self._t = 0

        def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
            super().reset(seed=seed)
            self._position = np.zeros(2)
            self._t = 0
            return self._position.astype(np.float32), {}

        def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
            move = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -self.max_action, self.max_action)
            self._position = self._position + move
            self._t += 1
            offset = self._position - self.goal
            reward = -float(np.sqrt(np.sum(offset**2)))
            terminated = bool(np.all(np.abs(offset) < self.tolerance))
            return self._position.astype(np.float32), reward, terminated, self._t >= self.horizon, {}


    class Navigation2DVectorEnv(gym.vector.VectorEnv):  # type: ignore[misc]
        """Many navigation agents stepped together (batched NumPy; the same transitions as
        :class:`Navigation2DEnv`), autoreset disabled.

        Args:
            goals: ``[num_envs, 2]`` goal of each environment.
            max_action, horizon, tolerance: as :class:`Navigation2DEnv`.
        """

        def __init__(self, goals: np.ndarray, max_action: float = 0.1, horizon: int = 100, tolerance: float = 0.01) -> None:
            self.goals = np.asarray(goals, dtype=np.float64).reshape(-1, 2)
            self.num_envs = len(self.goals)
            self.max_action, self.horizon, self.tolerance = float(max_action), int(horizon), float(tolerance)
            self.single_observation_space = gym.spaces.Box(-self.max_action * self.horizon, self.max_action * self.horizon, (2,), np.float32)
            self.single_action_space = gym.spaces.Box(-self.max_action, self.max_action, (2,), np.float32)
            self.observation_space = batch_space(self.single_observation_space, self.num_envs)
            self.action_space = batch_space(self.single_action_space, self.num_envs)
            self.metadata = {"autoreset_mode": AutoresetMode.DISABLED}
            self._positions = np.zeros((self.num_envs, 2))
            self._t = 0

        def reset(self, *, seed: int | Sequence[int] | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
            if seed is not None:
                first = seed[0] if isinstance(seed, Sequence) and not isinstance(seed, (str, bytes)) else seed
                self._np_random, self._np_random_seed = gym.utils.seeding.np_random(first)
            self._positions = np.zeros((self.num_envs, 2))
            self._t = 0
            return self._positions.astype(np.float32), {}

        def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
            moves = np.clip(np.asarray(actions, dtype=np.float64).reshape(self.num_envs, 2), -self.max_action, self.max_action)
            self._positions = self._positions + moves
            self._t += 1
            offset = self._positions - self.goals
            rewards = -np.sqrt(np.sum(offset**2, axis=1))
            terminated = np.all(np.abs(offset) < self.tolerance, axis=1)
            truncated = np.full(self.num_envs, self._t >= self.horizon)
            return self._positions.astype(np.float32), rewards, terminated, truncated, {}

    return Navigation2DEnv, Navigation2DVectorEnv


@dataclass(frozen=True)
class NavigationOptions(Options):
    """The goal distribution and the dynamics (the MAML paper's section 5.3 by default)."""

    section: ClassVar[str] = "task"

    goal_range: tuple[float, float] = option((-0.5, 0.5), "navigation_2d: (low, high) of the uniform goal coordinates")
    max_action: float = option(0.1, "navigation_2d: bound of the velocity per coordinate (actions are clipped to it)", gt=0)
    horizon: int = option(100, "steps per episode (truncated after them)", ge=1)
    tolerance: float = option(0.01, "navigation_2d: an episode ends within this distance of the goal in both coordinates", ge=0)

    def _resolve(self) -> None:
        low, high = self.goal_range
        if not low < high:
            raise ConfigError(f"task.goal_range={list(self.goal_range)} must be (low, high) with low < high, e.g. [-0.5, 0.5]")


@register_family("navigation_2d")
class Navigation2DFamily(EnvFamily):
    """2D point navigation to goals drawn uniformly from a square (Finn et al. 2017, section 5.3)."""

    Options = NavigationOptions

    def _dynamics(self) -> dict[str, Any]:
        o: Any = self.options
        return {"max_action": o.max_action, "horizon": o.horizon, "tolerance": o.tolerance}

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        low, high = self.options.goal_range  # type: ignore[attr-defined]
        return {"goal": tuple(float(v) for v in rng.uniform(low, high, size=2))}

    def make_env(self, params: Mapping[str, Any], **kwargs: Any) -> Any:
        from ._batched import refuse_env_options

        refuse_env_options(kwargs, "navigation_2d")
        return _env_classes()[0](params["goal"], **self._dynamics())

    def make_vector_env(self, tasks: Sequence[EnvTask], copies: int = 1, **kwargs: Any) -> Any:
        if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
            raise ValueError(f"copies={copies!r} must be a positive int (environments per task)")
        from ._batched import refuse_env_options

        refuse_env_options(kwargs, "navigation_2d")
        goals = np.repeat(np.array([t.params["goal"] for t in tasks], dtype=np.float64).reshape(-1, 2), copies, axis=0)
        return _env_classes()[1](goals, **self._dynamics())

    def optimal_return(self, task: EnvTask, episodes: int) -> float:
        """The return of the best policy knowing the goal ``g`` over ``episodes`` episodes: moving each
        coordinate towards the goal at full speed (action ``clip(g - x, -m, m)``, ``m = max_action``;
        a diagonal leg, then one along an axis), which puts the agent at ``clip(g, -m t, m t)`` after
        step ``t``.

        It is optimal step by step: any policy's position after ``t`` steps lies in the box
        ``|x_i| <= m t``, whose nearest point to ``g`` is that clip, so no reward can be larger;
        and the episode ends (within ``tolerance`` in both coordinates) at the first step any
        policy could end it, after which the reward is 0.
        """
        o: Any = self.options
        goal = np.asarray(task.params["goal"], dtype=np.float64).reshape(2)
        total = 0.0
        for t in range(1, o.horizon + 1):
            reach = o.max_action * t
            offset = goal - np.clip(goal, -reach, reach)
            total -= float(np.sqrt(np.sum(offset**2)))
            if np.all(np.abs(offset) < o.tolerance):
                break
        return episodes * total

    def describe(self) -> str:
        o: Any = self.options
        return f"navigation_2d (goals in {list(o.goal_range)}^2, horizon {o.horizon})"

    def draw_trajectories(self, ax: Any, task: EnvTask, paths: Mapping[str, Sequence[np.ndarray]]) -> None:
        """Draw the agent's paths of one task into the matplotlib axes ``ax``.

        Args:
            task: the task (its goal is drawn as a star).
            paths: ``{label: [positions of one episode, [T, 2]], ...}``, e.g. ``{"pre-update": [...],
                "1 step": [...]}``; each label gets one colour.
        """
        for i, (label, episodes) in enumerate(paths.items()):
            for j, positions in enumerate(episodes):
                xy = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
                ax.plot(xy[:, 0], xy[:, 1], color=f"C{i}", alpha=0.8, lw=1.2, label=label if j == 0 else None)
        goal = task.params["goal"]
        ax.plot([goal[0]], [goal[1]], marker="*", ms=14, color="k", ls="none", label="goal")
        ax.plot([0], [0], marker="o", ms=5, color="k", ls="none")
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        ax.legend(loc="best", fontsize=8)
