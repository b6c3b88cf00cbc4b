"""A Gaussian policy for continuous actions: an MLP for the mean and a learned log standard deviation.

The policy of the MAML paper's reinforcement-learning experiments (Finn et al. 2017, section
5.3: two hidden layers of 100 units with ReLU), as in rllab's ``GaussianMLPPolicy``: the action
is drawn from ``N(mu(s), diag(sigma^2))`` with ``mu`` an MLP of the observation and
``log sigma`` one learned vector (independent of the state, initialised to ``log init_std``).

The module's output for a batch of observations ``[N, in_features]`` is ``[N, 2 * action_dim]``:
the mean, then ``log sigma`` repeated per row, so that a policy is one tensor-valued function of
its parameters and runs under ``torch.func.functional_call`` and ``vmap`` like every backbone.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
from torch import Tensor, nn

from .mlp import MLP

__all__ = ["GaussianMLP"]


class GaussianMLP(nn.Module):
    """Diagonal Gaussian policy: ``[mean, log_std]`` per observation.

    Args:
        in_features: size of an observation.
        action_dim: size of an action.
        hidden: sizes of the hidden layers of the mean network.
        init_std: initial standard deviation of every action coordinate.
        activation: relu (the MAML paper's) or tanh.
    """

    def __init__(
        self, in_features: int = 2, action_dim: int = 2, hidden: Sequence[int] = (100, 100), init_std: float = 1.0,
        activation: Literal["relu", "tanh"] = "relu",
    ) -> None:
        super().__init__()
        if not (isinstance(init_std, (int, float)) and not isinstance(init_std, bool) and math.isfinite(init_std) and init_std > 0):
            raise ValueError(f"init_std={init_std!r} must be a positive number (the initial standard deviation)")
        if activation not in ("relu", "tanh"):
            raise ValueError(f"activation={activation!r} is not valid; use relu or tanh")
        self.mean = MLP(in_features, hidden, action_dim)
        if activation == "tanh":
            for i, layer in enumerate(self.mean.net):
                if isinstance(layer, nn.ReLU):
                    self.mean.net[i] = nn.Tanh()
        self.log_std = nn.Parameter(torch.full((action_dim,), math.log(init_std)))
        self.action_dim = action_dim

    def forward(self, obs: Tensor) -> Tensor:
        mean = self.mean(obs)
        return torch.cat([mean, self.log_std.expand_as(mean)], dim=-1)
