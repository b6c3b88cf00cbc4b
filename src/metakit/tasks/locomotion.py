"""Half-cheetah locomotion tasks (Finn, Abbeel & Levine 2017, "Model-Agnostic Meta-Learning", section 5.3).

Both families run gymnasium's MuJoCo ``HalfCheetah-v5`` (its dynamics, observation and
reset noise) with the reward of the task; ``v`` is the forward velocity of the torso
(``info["x_velocity"]``, the change of its x position over one control step) and ``a`` the
action::

    half_cheetah_direction   r = d * v - c * |a|^2          d drawn from {-1, +1} (backward / forward)
    half_cheetah_velocity    r = -|v - v*| - c * |a|^2      v* drawn uniformly from [0, 2]

with ``c = 0.05`` and episodes of 200 steps: the control cost ``0.5 * 1e-1 * sum(a^2)`` and the
horizon of the paper's published code (``half_cheetah_env_rand_direc.py`` and
``half_cheetah_env_rand.py`` of ``cbfinn/maml_rl``; the paper gives the goals and the
horizon). gymnasium's observation leaves out the torso's x position, as the paper's code did
through its ``com`` features; the policy sees neither the direction nor the target velocity.

An environment is a subclass of gymnasium's ``HalfCheetahEnv`` that replaces its reward and
truncates after ``horizon`` steps itself (no wrapper), so ``check_env`` checks it directly.
The vector env of a batch is the default ``SyncVectorEnv`` of the base class (MuJoCo steps one
environment at a time).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..options import ConfigError, Options, option
from .family import register_family
from .rl import EnvFamily

__all__ = ["HalfCheetahTaskEnv", "HalfCheetahDirectionFamily", "HalfCheetahVelocityFamily", "LocomotionOptions"]

_CLASS: type | None = None


def _env_class() -> type:
    """:class:`HalfCheetahTaskEnv`, defined on first use (importing metakit.tasks does not import MuJoCo)."""
    global _CLASS
    if _CLASS is None:
        _CLASS = _define_env_class()
    return _CLASS


def __getattr__(name: str) -> Any:
    if name == "HalfCheetahTaskEnv":
        return _env_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _define_env_class() -> type:
    try:
        from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
    except ImportError as e:  # pragma: no cover - mujoco is installed with the test extra
        raise ImportError(
            f"the half-cheetah task families need MuJoCo ({e}); install it with pip install 'gymnasium[mujoco]' "
            "(or metakit's mujoco extra: pip install -e '.[mujoco]')"
        ) from None

    class HalfCheetahTaskEnv(HalfCheetahEnv):  # type: ignore[misc,valid-type]
        """``HalfCheetah-v5`` with a task's reward: ``direction * v - c |a|^2`` when ``direction``
        is given, ``-|v - velocity| - c |a|^2`` when ``velocity`` is (see the module docstring).

        Args:
            direction: +1 (run forward) or -1 (run backward).
            velocity: the target forward velocity.
            ctrl_cost: ``c``, the weight of the squared action.
            horizon: steps before the episode is truncated.
            kwargs: gymnasium's ``HalfCheetahEnv`` options (``render_mode``...).
        """

        def __init__(self, *, direction: float | None = None, velocity: float | None = None, ctrl_cost: float = 0.05,
                     horizon: int = 200, **kwargs: Any) -> None:
            if (direction is None) == (velocity is None):
                raise ValueError("give exactly one of direction= (half_cheetah_direction) or velocity= (half_cheetah_velocity)")
            super().__init__(ctrl_cost_weight=ctrl_cost, **kwargs)
            self.direction = None if direction is None else float(direction)
            self.velocity = None if velocity is None else float(velocity)
            self.horizon = int(horizon)
            self._t = 0

        def _get_rew(self, x_velocity: float, action: Any) -> tuple[float, dict[str, float]]:
            ctrl = float(self.control_cost(action))
            if self.direction is not None:
                task = self.direction * float(x_velocity)
            else:
                task = -abs(float(x_velocity) - float(self.velocity))  # type: ignore[arg-type]
            return task - ctrl, {"reward_task": task, "reward_ctrl": -ctrl}

        def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
            self._t = 0
            return super().reset(seed=seed, options=options)

        def step(self, action: Any) -> Any:
            obs, reward, terminated, _, info = super().step(action)
            self._t += 1
            return obs, reward, terminated, self._t >= self.horizon, info

    return HalfCheetahTaskEnv


@dataclass(frozen=True)
class LocomotionOptions(Options):
    """The half-cheetah tasks (the MAML paper's settings by default)."""

    section: ClassVar[str] = "task"

    horizon: int = option(200, "steps per episode (truncated after them)", ge=1)
    ctrl_cost: float = option(0.05, "half_cheetah_*: weight c of the control cost c * sum(a^2)", ge=0)
    velocity_range: tuple[float, float] = option(
        (0.0, 2.0), "half_cheetah_velocity: (low, high) of the uniform target velocity (unused by half_cheetah_direction)"
    )

    def _resolve(self) -> None:
        low, high = self.velocity_range
        if not low <= high:
            raise ConfigError(f"task.velocity_range={list(self.velocity_range)} must be (low, high) with low <= high, e.g. [0, 2]")


class _HalfCheetahFamily(EnvFamily):
    Options = LocomotionOptions

    def make_env(self, params: Mapping[str, Any], **kwargs: Any) -> Any:
        o: Any = self.options
        return _env_class()(**params, ctrl_cost=o.ctrl_cost, horizon=o.horizon, **kwargs)


@register_family("half_cheetah_direction")
class HalfCheetahDirectionFamily(_HalfCheetahFamily):
    """Half-cheetah running forward or backward, each with probability 1/2 (Finn et al. 2017)."""

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"direction": float(rng.choice((-1.0, 1.0)))}

    def describe(self) -> str:
        return f"half_cheetah_direction (HalfCheetah-v5, horizon {self.options.horizon})"  # type: ignore[attr-defined]


@register_family("half_cheetah_velocity")
class HalfCheetahVelocityFamily(_HalfCheetahFamily):
    """Half-cheetah running at a target velocity drawn uniformly from ``velocity_range`` (Finn et al. 2017)."""

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        low, high = self.options.velocity_range  # type: ignore[attr-defined]
        return {"velocity": float(rng.uniform(low, high))}

    def describe(self) -> str:
        o: Any = self.options
        return f"half_cheetah_velocity (HalfCheetah-v5, targets in {list(o.velocity_range)}, horizon {o.horizon})"
