"""Classical reference methods for the meta-RL task families, against which learned agents are read.

* :mod:`.bandits` (Bernoulli bandits, ``task.family: bandits``): the Gittins index, UCB1,
  Thompson sampling, epsilon-greedy (greedy at ``epsilon=0``) and random pulls;
* :mod:`.mdp` (random tabular MDPs, ``task.family: tabular_mdp``): random actions, posterior
  sampling (PSRL) and the optimal policy of the true MDP;
* :mod:`.tuning`: the grid search of a constant on training tasks (UCB1's ``c``, epsilon-greedy's
  ``epsilon``, the Gittins discount), as Duan et al. 2016 tuned theirs.

Every method plays trials on the batched vector env of an :class:`~metakit.tasks.EnvBatch`
(the env a learned agent plays) and returns the total reward of each task's trial; the registered
algorithms of :mod:`metakit.algorithms.references` wrap them so that ``metakit eval --reference``
scores them on the fixed test tasks of any config or run.
"""

from .bandits import (
    BanditPolicy,
    EpsilonGreedy,
    Gittins,
    RandomArms,
    Thompson,
    UCB1,
    gittins_index_table,
    play_bandit_trials,
)
from .mdp import MDPPolicy, OptimalMDP, PSRL, RandomMDP, play_mdp_trials
from .tuning import tune

__all__ = [
    "BanditPolicy",
    "EpsilonGreedy",
    "Gittins",
    "RandomArms",
    "Thompson",
    "UCB1",
    "gittins_index_table",
    "play_bandit_trials",
    "MDPPolicy",
    "OptimalMDP",
    "PSRL",
    "RandomMDP",
    "play_mdp_trials",
    "tune",
]
