"""Batched NumPy vector envs for families whose dynamics are a few array operations.

:class:`BatchedEnv` is a ``gymnasium.vector.VectorEnv`` over ``num_envs`` tasks of one family
(autoreset disabled, like the families' default ``SyncVectorEnv``): the state of every env is
an array row, one step is a few array operations for the whole batch, and each env draws its
random numbers from its own generator, seeded exactly as ``env.reset(seed=...)`` seeds a single
env. A batched env therefore gives, draw for draw, the transitions and rewards of stepping the
single envs one by one (the families' tests check it), without their per-step Python overhead.

A subclass implements :meth:`_reset_rows` and :meth:`_step_rows`, and builds its single env so
that it consumes its generator in the same order.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

__all__ = ["BatchedEnv", "env_generators", "check_discrete_actions", "repeat_tasks", "refuse_env_options"]


def env_generators(seed: Any, num_envs: int) -> list[np.random.Generator | None]:
    """Per-env generators for ``VectorEnv.reset(seed=...)``: ``None`` keeps an env's generator,
    an int ``s`` seeds env ``i`` with ``s + i`` (gymnasium's convention), a list gives each env
    its own seed. Each generator is the one ``gymnasium.Env.reset(seed=s)`` makes."""
    if seed is None:
        return [None] * num_envs
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        seeds: list[Any] = [int(seed) + i for i in range(num_envs)]
    else:
        seeds = list(seed)
        if len(seeds) != num_envs:
            raise ValueError(f"seed has {len(seeds)} entries but the vector env has {num_envs} envs; give one seed per env")
    return [None if s is None else seeding.np_random(int(s))[0] for s in seeds]


def repeat_tasks(tasks: Any, copies: Any) -> list[Any]:
    """``copies`` consecutive copies of each of ``tasks`` (the env order of ``make_vector_env``)."""
    if isinstance(copies, bool) or not isinstance(copies, numbers.Integral) or copies < 1:
        raise ValueError(f"copies={copies!r} must be a positive int (environments per task)")
    out = [t for t in tasks for _ in range(int(copies))]
    if not out:
        raise ValueError("tasks is empty; a vector env needs at least one task")
    return out


def refuse_env_options(kwargs: dict[str, Any], family: str) -> None:
    """A ``ValueError`` naming ``kwargs`` (e.g. ``render_mode``) if any are given: a batched vector
    env (and an env without options) takes none, and must not drop them silently."""
    if kwargs:
        given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise ValueError(f"task.family={family}'s environments take no options, got {given}; leave them out")


def check_discrete_actions(actions: Any, n: int, num_envs: int) -> np.ndarray:
    """``actions`` as an int array ``[num_envs]`` in ``0 .. n-1``; a ``ValueError`` naming the bad one otherwise."""
    a = np.asarray(actions)
    if a.shape != (num_envs,):
        raise ValueError(f"actions has shape {a.shape}; give one action per env, shape ({num_envs},)")
    if not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise ValueError(f"actions must be integers 0..{n - 1}, got {a.tolist()}")
        a = a.astype(np.int64)
    bad = (a < 0) | (a >= n)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"actions[{i}]={int(a[i])} is not an action of this env; actions are 0..{n - 1}")
    return a.astype(np.int64)


class BatchedEnv(VectorEnv):
    """Base of the batched vector envs; see the module docstring."""

    def _setup(self, single_observation_space: Any, single_action_space: Any, num_envs: int) -> None:
        self.num_envs = int(num_envs)
        self.single_observation_space = single_observation_space
        self.single_action_space = single_action_space
        self.observation_space = batch_space(single_observation_space, self.num_envs)
        self.action_space = batch_space(single_action_space, self.num_envs)
        self.metadata = {"autoreset_mode": AutoresetMode.DISABLED}
        self.rngs: list[np.random.Generator] = [np.random.default_rng() for _ in range(self.num_envs)]
        self.t = np.zeros(self.num_envs, np.int64)

    # -- what subclasses write ---------------------------------------------------------------
    def _reset_rows(self, rows: np.ndarray) -> None:
        raise NotImplementedError

    def _observe(self) -> np.ndarray:
        raise NotImplementedError

    def _step_rows(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Advance every env by one step: ``(rewards [N] float64, terminated [N] bool, truncated [N] bool)``."""
        raise NotImplementedError

    # -- the VectorEnv API ---------------------------------------------------------------------
    def reset(self, *, seed: Any = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        mask = np.ones(self.num_envs, bool)
        if options and "reset_mask" in options:
            mask = np.asarray(options["reset_mask"], bool)
            if mask.shape != (self.num_envs,):
                raise ValueError(f"options['reset_mask'] has shape {mask.shape}; give one bool per env ({self.num_envs},)")
        for i, g in enumerate(env_generators(seed, self.num_envs)):
            if g is not None and mask[i]:
                self.rngs[i] = g
        rows = np.flatnonzero(mask)
        self.t[rows] = 0
        self._reset_rows(rows)
        return self._observe(), {}

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        a = check_discrete_actions(actions, int(self.single_action_space.n), self.num_envs)
        rewards, terminated, truncated = self._step_rows(a)
        return self._observe(), rewards, terminated, truncated, {}

    def close_extras(self, **kwargs: Any) -> None:
        pass

