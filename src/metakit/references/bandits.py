"""Classical strategies for Bernoulli bandits, as compared with RL² by Duan et al. 2016 (Table 1).

Every strategy keeps, per task and arm ``i``, the successes ``s_i`` and failures ``f_i`` seen so far
in the trial; with the uniform prior of the ``bandits`` family the posterior of ``p_i`` is
``Beta(1 + s_i, 1 + f_i)``. Pull ``t = 1 .. n`` of a trial chooses

* :class:`RandomArms`: an arm uniformly at random;
* :class:`UCB1` (Auer et al. 2002, with the paper's tunable constant ``c``): the arm maximising
  ``mu_i + c * sqrt(2 log t / T_i)`` with ``mu_i = (1 + s_i) / (2 + s_i + f_i)`` and
  ``T_i = 2 + s_i + f_i``: the statistics start from one success and one failure (the paper's
  ``Beta(1, 1)`` initialisation), so every term is defined from the first pull;
* :class:`Thompson` (Thompson 1933): the arm with the largest draw from its ``Beta`` posterior;
* :class:`EpsilonGreedy`: with probability ``epsilon`` a uniformly random arm, otherwise the arm of
  largest ``mu_i`` (same initialisation as UCB1; ``epsilon=0`` is the paper's Greedy);
* :class:`Gittins` (Gittins 1979): the arm of largest Gittins index of its posterior
  ``Beta(1 + s_i, 1 + f_i)`` for a discount ``gamma`` (:func:`gittins_index_table`).

Ties are broken uniformly at random. Each task's choices come from its own generator
(``numpy.random.default_rng([task.seed, 1])``), so a task's trial does not depend on which other
tasks share its batch.

**The Gittins index computed.** The index of the *discounted* infinite-horizon problem: for the
state ``Beta(a, b)``, the retirement reward ``lambda`` per step at which an agent is indifferent
between retiring now (``lambda / (1 - gamma)``) and pulling once more and then continuing
optimally, with the option to retire at every later step (the calibration, or retirement,
formulation of Whittle 1980). For one ``lambda`` the value ``V_lambda`` of that stopping problem
over all states ``a + b <= N`` comes from backward dynamic programming over the diagonals
``a + b = const``::

    Q_lambda(a, b) = p (1 + gamma V_lambda(a + 1, b)) + (1 - p) gamma V_lambda(a, b + 1),   p = a / (a + b)
    V_lambda(a, b) = max(lambda / (1 - gamma), Q_lambda(a, b))

with, on the truncation diagonal ``a + b = N``, the value of a known mean,
``V_lambda = max(lambda, p) / (1 - gamma)``. The index is the root in ``lambda`` of
``Q_lambda(a, b) - lambda / (1 - gamma)`` (strictly decreasing in ``lambda``): the DP runs once for
a grid of ``lambda`` values on ``[0, 1]`` (vectorised), and the root is found by linear
interpolation in the bracketing grid interval (exact where no other state's index lies inside
the interval, within one grid step in any case). The bandit problems of the paper are
undiscounted with a finite horizon ``n``, for which the discounted index is the classical
approximation; like Duan et al., who "choose the best-performing approximation for each setup",
the discount is tuned on training tasks (:func:`metakit.references.tune`).
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Sequence

import numpy as np

from ..tasks.rl import EnvBatch, check_rewards

__all__ = [
    "BanditPolicy",
    "RandomArms",
    "UCB1",
    "Thompson",
    "EpsilonGreedy",
    "Gittins",
    "gittins_index_table",
    "play_bandit_trials",
    "policy_generators",
]


def policy_generators(batch: EnvBatch, stream: int = 1) -> list[np.random.Generator]:
    """One generator per task of ``batch`` for a reference's own random choices (``[task.seed, stream]``)."""
    return [np.random.default_rng([int(t.seed), int(stream)]) for t in batch]


def _check_number(name: str, value: Any, *, low: float, high: float | None = None, low_open: bool = False,
                  high_open: bool = False) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if ok:
        v = float(value)
        ok = (v > low if low_open else v >= low) and (high is None or (v < high if high_open else v <= high))
    if not ok:
        lo = f"{'(' if low_open else '['}{low}"
        hi = f"{high}{')' if high_open else ']'}" if high is not None else "inf)"
        raise ValueError(f"{name}={value!r} must be a number in {lo}, {hi}")
    return float(value)


def _argmax_random_ties(values: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Row-wise argmax of ``values [B, k]``, ties broken by the uniform ``noise [B, k]``."""
    best = values >= values.max(-1, keepdims=True)
    return np.where(best, noise, -1.0).argmax(-1)


class BanditPolicy:
    """A strategy for one trial of pulls on a batch of Bernoulli bandits (see the module docstring)."""

    #: short name used in records and tables
    label = "policy"

    def start(self, num_tasks: int, arms: int, pulls: int) -> None:
        """Called once before a trial of ``pulls`` pulls (precomputations such as index tables)."""

    def choose(self, successes: np.ndarray, failures: np.ndarray, t: int, rngs: Sequence[np.random.Generator]) -> np.ndarray:
        """The arms ``[B]`` to pull at pull ``t`` (1-based) given the counts ``[B, k]`` so far."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """The strategy and its constants, for records."""
        return {"method": self.label}


class RandomArms(BanditPolicy):
    """Pull an arm uniformly at random."""

    label = "random"

    def choose(self, successes, failures, t, rngs):
        k = successes.shape[1]
        return np.array([g.integers(k) for g in rngs])


class UCB1(BanditPolicy):
    """UCB1 with exploration constant ``c`` (``c=1`` is Auer et al.'s; the paper tunes it)."""

    label = "ucb1"

    def __init__(self, c: float = 1.0) -> None:
        self.c = _check_number("c", c, low=0.0)

    def choose(self, successes, failures, t, rngs):
        pulls = successes + failures + 2.0
        ucb = (successes + 1.0) / pulls + self.c * np.sqrt(2.0 * math.log(t) / pulls)
        return _argmax_random_ties(ucb, np.stack([g.random(ucb.shape[1]) for g in rngs]))

    def describe(self):
        return {"method": self.label, "c": self.c}


class Thompson(BanditPolicy):
    """Thompson sampling from the ``Beta(1 + s_i, 1 + f_i)`` posteriors."""

    label = "thompson"

    def choose(self, successes, failures, t, rngs):
        draws = np.stack([g.beta(1.0 + s, 1.0 + f) for g, s, f in zip(rngs, successes, failures)])
        return draws.argmax(-1)


class EpsilonGreedy(BanditPolicy):
    """Epsilon-greedy on the posterior means (``epsilon=0``: greedy)."""

    label = "epsilon_greedy"

    def __init__(self, epsilon: float = 0.1) -> None:
        self.epsilon = _check_number("epsilon", epsilon, low=0.0, high=1.0)

    def choose(self, successes, failures, t, rngs):
        b, k = successes.shape
        mean = (successes + 1.0) / (successes + failures + 2.0)
        explore = np.empty(b, bool)
        noise = np.empty((b, k))
        random_arm = np.empty(b, np.int64)
        for i, g in enumerate(rngs):
            explore[i] = g.random() < self.epsilon
            random_arm[i] = g.integers(k)
            noise[i] = g.random(k)
        return np.where(explore, random_arm, _argmax_random_ties(mean, noise))

    def describe(self):
        return {"method": self.label, "epsilon": self.epsilon}


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name}={value!r} must be an int >= {low}")
    return int(value)


def gittins_index_table(discount: float, pulls: int, *, depth: int | None = None, grid: int = 2001) -> np.ndarray:
    """Gittins indices of Bernoulli arms with a ``Beta(1, 1)`` prior (see the module docstring).

    Args:
        discount: ``gamma`` in ``(0, 1)``.
        pulls: the table covers the arm states reached after up to ``pulls`` observations.
        depth: extra levels of the DP below the last state of the table (default
            ``max(50, 1 / (1 - gamma))``); the deeper, the smaller the truncation error.
        grid: number of ``lambda`` values on ``[0, 1]`` (the resolution of the root bracketing).

    Returns:
        ``table [pulls + 1, pulls + 1]``: ``table[s, f]`` is the index of ``Beta(1 + s, 1 + f)``
        (an arm with ``s`` successes and ``f`` failures) for ``s + f <= pulls``; ``nan`` elsewhere.
    """
    gamma = _check_number("discount", discount, low=0.0, high=1.0, low_open=True, high_open=True)
    pulls = _check_int("pulls", pulls, 0)
    grid = _check_int("grid", grid, 3)
    if depth is None:
        depth = max(50, int(math.ceil(1.0 / (1.0 - gamma))))
    depth = _check_int("depth", depth, 1)
    return _gittins_table(gamma, pulls, depth, grid).copy()


@functools.lru_cache(maxsize=16)
def _gittins_table(gamma: float, pulls: int, depth: int, grid: int) -> np.ndarray:
    lam = np.linspace(0.0, 1.0, grid)[:, None]  # [L, 1]
    retire = lam / (1.0 - gamma)
    table = np.full((pulls + 1, pulls + 1), np.nan)
    n = pulls + depth  # observations on the truncation diagonal: states Beta(1 + s, 1 + n - s)
    s = np.arange(n + 1)
    value = np.maximum(lam, (1.0 + s) / (2.0 + n)) / (1.0 - gamma)  # [L, n + 1]
    for d in range(n - 1, -1, -1):
        s = np.arange(d + 1)
        p = (1.0 + s) / (2.0 + d)
        q = p * (1.0 + gamma * value[:, 1:]) + (1.0 - p) * gamma * value[:, :-1]  # [L, d + 1]
        if d <= pulls:
            g = q - retire
            above = (g > 0).sum(0)  # g decreases in lambda: lam[above - 1] > root >= lam[above]
            hi = np.clip(above, 1, grid - 1)
            cols = np.arange(d + 1)
            g0, g1 = g[hi - 1, cols], g[hi, cols]
            l0, l1 = lam[hi - 1, 0], lam[hi, 0]
            root = l0 + (l1 - l0) * g0 / np.where(g0 - g1 > 0, g0 - g1, 1.0)
            table[s, d - s] = np.clip(root, 0.0, 1.0)
        value = np.maximum(retire, q)
    table.setflags(write=False)
    return table


class Gittins(BanditPolicy):
    """The arm of largest discounted Gittins index (``discount``; the table is built once per trial length)."""

    label = "gittins"

    def __init__(self, discount: float = 0.9, grid: int = 1001) -> None:
        self.discount = _check_number("discount", discount, low=0.0, high=1.0, low_open=True, high_open=True)
        self.grid = _check_int("grid", grid, 3)
        self.table: np.ndarray | None = None

    def start(self, num_tasks: int, arms: int, pulls: int) -> None:
        if self.table is None or self.table.shape[0] < pulls:
            self.table = gittins_index_table(self.discount, max(pulls - 1, 0), grid=self.grid)

    def choose(self, successes, failures, t, rngs):
        assert self.table is not None
        index = self.table[successes.astype(np.int64), failures.astype(np.int64)]
        return _argmax_random_ties(index, np.stack([g.random(index.shape[1]) for g in rngs]))

    def describe(self):
        return {"method": self.label, "discount": self.discount, "grid": self.grid}


def play_bandit_trials(policy: BanditPolicy, batch: EnvBatch, pulls: int | None = None,
                       *, per_pull: bool = False) -> np.ndarray:
    """Play one trial of ``pulls`` pulls (default ``batch.shots``) on every task of ``batch``.

    The tasks' batched vector env is reset with the tasks' seeds before the first pull and reset
    (without a seed) before every later one (one pull is one episode). Returns the total reward of
    each task ``[B]``, or with ``per_pull=True`` the rewards ``[B, pulls]``.
    """
    pulls = _check_int("pulls", batch.shots if pulls is None else pulls, 1)
    env = batch.vector_env()
    k = int(env.single_action_space.n)
    b = env.num_envs
    successes = np.zeros((b, k))
    failures = np.zeros((b, k))
    rewards = np.zeros((b, pulls))
    rngs = policy_generators(batch)
    rows = np.arange(b)
    policy.start(b, k, pulls)
    for t in range(pulls):
        env.reset(seed=batch.seeds if t == 0 else None)
        arms = policy.choose(successes, failures, t + 1, rngs)
        _, r, _, _, _ = env.step(arms)
        check_rewards(r, batch, step=t)
        successes[rows, arms] += r
        failures[rows, arms] += 1.0 - r
        rewards[:, t] = r
    env.close()
    return rewards if per_pull else rewards.sum(1)
