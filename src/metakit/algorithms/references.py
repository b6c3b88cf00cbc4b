"""The classical references of the meta-RL task families as registered algorithms.

Each class wraps one strategy of :mod:`metakit.references` behind the algorithm protocol's
``task_returns(batch)`` (the total reward of one trial of ``batch.shots`` episodes on each task;
``queries`` is not used: a reference's trial is all it plays), so that ``metakit eval --reference
NAME CONFIG_OR_RUN`` scores it on exactly the fixed test tasks a trained run is scored on:

========================  ======================  ==========================================
name                      task.family             strategy (options)
========================  ======================  ==========================================
``random``                bandits, tabular_mdp    uniformly random actions
``gittins``               bandits                 Gittins index (``discount``, ``grid``)
``ucb1``                  bandits                 UCB1 (``c``)
``thompson``              bandits                 Thompson sampling
``epsilon_greedy``        bandits                 epsilon-greedy (``epsilon``; 0 is greedy)
``psrl``                  tabular_mdp             posterior sampling (the family's prior)
``optimal``               tabular_mdp             optimal policy of the true MDP
========================  ======================  ==========================================

They have no parameters and nothing to train (``metakit train`` refuses them: no trainable
parameters); their constants are tuned on training tasks with :func:`metakit.references.tune`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..references import bandits as _bandits
from ..references import mdp as _mdp
from ..tasks.bandits import BanditFamily
from ..tasks.rl import EnvBatch
from ..tasks.tabular_mdp import TabularMDPFamily
from .base import Algorithm, register

__all__ = ["Reference", "RandomReference", "GittinsReference", "UCB1Reference", "ThompsonReference",
           "EpsilonGreedyReference", "PSRLReference", "OptimalMDPReference"]


class Reference(Algorithm):
    """Base of the registered references: ``task_returns`` plays the strategy :meth:`make_policy` gives."""

    task_kinds = ("rl",)
    #: the family classes the strategy plays
    families: tuple[type, ...] = ()

    def __init__(self, model: nn.Module | None = None) -> None:
        super().__init__()
        self.policy: Any = None

    def make_policy(self, batch: EnvBatch) -> Any:
        """The strategy for ``batch`` (a :class:`~metakit.references.BanditPolicy` or ``MDPPolicy``)."""
        return self.policy

    def describe(self) -> dict[str, Any]:
        """The strategy and its constants."""
        return self.policy.describe() if self.policy is not None else {"method": self.name}

    @classmethod
    def reference(cls, context: Any, **constants: Any) -> "Reference":
        """The strategy with its default constants, or the given ones, to play beside a trained run
        (``metakit plot RUN --regret NAME`` or ``NAME:KEY=VALUE,...``)."""
        return cls(None, **constants)

    def episode_returns(self, batch: EnvBatch) -> Tensor:
        """The return of every episode of one trial of ``batch.shots`` episodes on each task, ``[B, shots]`` float64."""
        family = batch.family
        if not isinstance(family, self.families):
            fits = ", ".join(sorted(f.name for f in self.families))
            raise ValueError(
                f"algorithm.name={self.name} plays task.family={fits}, not task.family={family.name}; choose a "
                f"reference of that family (metakit eval --reference NAME)"
            )
        policy = self.make_policy(batch)
        if isinstance(policy, _bandits.BanditPolicy):
            returns = _bandits.play_bandit_trials(policy, batch, per_pull=True)
        else:
            returns = _mdp.play_mdp_trials(policy, batch, per_episode=True)
        return torch.as_tensor(returns, dtype=torch.float64)

    def scored_episodes(self, batch: EnvBatch) -> int:
        """``batch.shots``: :meth:`task_returns` is the total reward of the whole trial (the regret
        against the family's optimum is taken over as many episodes)."""
        return batch.shots

    def task_returns(self, batch: EnvBatch) -> Tensor:
        """The total reward of one trial of ``batch.shots`` episodes on each task, ``[B]`` float64."""
        return self.episode_returns(batch).sum(1)

    def meta_loss(self, batch: Any) -> tuple[Tensor, dict[str, float]]:
        raise TypeError(
            f"algorithm.name={self.name} is a classical reference with nothing to train; evaluate it with "
            f"`metakit eval --reference {self.name} CONFIG_OR_RUN`"
        )


@register("random")
class RandomReference(Reference):
    """Uniformly random actions (bandits: a random arm per pull; tabular MDPs: a random action per step)."""

    families = (BanditFamily, TabularMDPFamily)

    def make_policy(self, batch):
        return _bandits.RandomArms() if isinstance(batch.family, BanditFamily) else _mdp.RandomMDP()

    def describe(self):
        return {"method": "random"}


@register("gittins")
class GittinsReference(Reference):
    """The Gittins index of each arm's Beta posterior (Bernoulli bandits).

    Args:
        discount: the discount gamma of the index, in (0, 1) (tuned on training tasks).
        grid: lambda values of the index computation (its resolution).
    """

    families = (BanditFamily,)

    def __init__(self, model: nn.Module | None = None, discount: float = 0.9, grid: int = 1001) -> None:
        super().__init__()
        self.policy = _bandits.Gittins(discount, grid)


@register("ucb1")
class UCB1Reference(Reference):
    """UCB1 with the exploration constant c (Bernoulli bandits).

    Args:
        c: the exploration constant (tuned on training tasks; 1 is Auer et al.'s).
    """

    families = (BanditFamily,)

    def __init__(self, model: nn.Module | None = None, c: float = 1.0) -> None:
        super().__init__()
        self.policy = _bandits.UCB1(c)


@register("thompson")
class ThompsonReference(Reference):
    """Thompson sampling from Beta posteriors (Bernoulli bandits)."""

    families = (BanditFamily,)

    def __init__(self, model: nn.Module | None = None) -> None:
        super().__init__()
        self.policy = _bandits.Thompson()


@register("epsilon_greedy")
class EpsilonGreedyReference(Reference):
    """Epsilon-greedy on posterior means (Bernoulli bandits).

    Args:
        epsilon: probability of a random arm, in [0, 1] (tuned on training tasks; 0 is greedy).
    """

    families = (BanditFamily,)

    def __init__(self, model: nn.Module | None = None, epsilon: float = 0.1) -> None:
        super().__init__()
        self.policy = _bandits.EpsilonGreedy(epsilon)


@register("psrl")
class PSRLReference(Reference):
    """Posterior sampling for RL with the family's prior (tabular MDPs)."""

    families = (TabularMDPFamily,)

    def __init__(self, model: nn.Module | None = None) -> None:
        super().__init__()
        self.policy = _mdp.PSRL()


@register("optimal")
class OptimalMDPReference(Reference):
    """The optimal policy of each task's true MDP, by value iteration (tabular MDPs)."""

    families = (TabularMDPFamily,)

    def __init__(self, model: nn.Module | None = None) -> None:
        super().__init__()
        self.policy = _mdp.OptimalMDP()
