"""A recurrent policy for meta-RL: a GRU over (observation, previous action, reward, done).

Duan et al. 2016 (RL²) feed a GRU at every step with the observation, the previous action, the
previous reward and the flag "the previous step ended an episode", and read a policy (softmax)
from its state. :class:`RecurrentPolicy` is that network with a value head beside the policy
head (both linear on the GRU's state; the value is PPO's baseline)::

    x_t = [obs_t, onehot(a_{t-1}) or a_{t-1}, r_{t-1}, d_{t-1}]
    h_t = GRU(x_t, h_{t-1})
    policy_t = Categorical(logits = W_pi h_t)            (Discrete actions)
             = Normal(W_pi h_t, exp(log_std))            (Box actions, diagonal, state-independent std)
    V_t = w_v . h_t

The hidden state is explicit: :meth:`RecurrentPolicy.forward` takes and returns it, so the
caller decides how long it persists (RL²: across the episodes of a trial, reset between
trials, :meth:`initial_state`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["RecurrentPolicy"]


class RecurrentPolicy(nn.Module):
    """GRU policy and value function over ``(observation, previous action, reward, done)``.

    Args:
        observation_dim: size of an (encoded, flat) observation.
        action_dim: number of actions (``discrete``) or size of an action vector (Box).
        discrete: categorical policy over ``action_dim`` actions; otherwise a diagonal Gaussian.
        hidden: units of the GRU.
        init_log_std: initial log standard deviation of the Gaussian policy (Box actions).
    """

    def __init__(self, observation_dim: int = 1, action_dim: int = 2, discrete: bool = True, hidden: int = 256,
                 init_log_std: float = 0.0) -> None:
        super().__init__()
        for name, v in (("observation_dim", observation_dim), ("action_dim", action_dim), ("hidden", hidden)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r} must be a positive int")
        self.observation_dim, self.action_dim, self.discrete, self.hidden = observation_dim, action_dim, bool(discrete), hidden
        self.gru = nn.GRU(observation_dim + action_dim + 2, hidden, batch_first=True)
        self.policy = nn.Linear(hidden, action_dim)
        self.value = nn.Linear(hidden, 1)
        if not self.discrete:
            self.log_std = nn.Parameter(torch.full((action_dim,), float(init_log_std)))

    def initial_state(self, n: int) -> Tensor:
        """The hidden state at the start of a trial, ``[1, n, hidden]`` zeros."""
        return self.gru.weight_hh_l0.new_zeros(1, n, self.hidden)

    def inputs(self, obs: Tensor, prev_action: Tensor, prev_reward: Tensor, prev_done: Tensor) -> Tensor:
        """The GRU's input ``[..., observation_dim + action_dim + 2]``; ``prev_action`` is ``-1`` (no
        action yet) or an index for discrete actions, a vector for Box actions."""
        if self.discrete:
            a = prev_action.long()
            act = (a.unsqueeze(-1) == torch.arange(self.action_dim, device=a.device)).to(obs.dtype)  # -1: all zeros
        else:
            act = prev_action.to(obs.dtype)
        return torch.cat([obs, act, prev_reward.unsqueeze(-1).to(obs.dtype), prev_done.unsqueeze(-1).to(obs.dtype)], -1)

    def forward(self, obs: Tensor, prev_action: Tensor | None = None, prev_reward: Tensor | None = None,
                prev_done: Tensor | None = None, state: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Run over sequences: inputs ``[N, T, ...]`` (or one step ``[N, ...]``; observations of one step
        may also come unflattened, ``[N, *observation_shape]``) from ``state``
        (default :meth:`initial_state`). Returns ``(head, value, state)``: the policy's logits or
        means ``[N, T, action_dim]``, the values ``[N, T]`` and the final hidden state
        (``[N, ...]`` outputs without ``T`` for one-step inputs). Missing previous action, reward
        and done mean the start of a trial."""
        if obs.shape[-1] != self.observation_dim and obs.dim() > 2 and obs[0].numel() == self.observation_dim:
            obs = obs.flatten(1)  # one step of multi-dimensional Box observations [N, *shape]
        if obs.shape[-1] != self.observation_dim:
            raise ValueError(
                f"observations of size {obs.shape[-1]} given to a RecurrentPolicy of observation_dim="
                f"{self.observation_dim}; build the policy for the environment's observation space"
            )
        one_step = obs.dim() == 2
        if one_step:
            obs = obs.unsqueeze(1)
        lead = obs.shape[:-1]
        if prev_action is None:
            prev_action = torch.full(lead, -1, dtype=torch.long) if self.discrete else obs.new_zeros(*lead, self.action_dim)
        elif one_step:
            prev_action = prev_action.unsqueeze(1)
        prev_reward = obs.new_zeros(lead) if prev_reward is None else (prev_reward.unsqueeze(1) if one_step else prev_reward)
        prev_done = obs.new_zeros(lead) if prev_done is None else (prev_done.unsqueeze(1) if one_step else prev_done)
        if state is None:
            state = self.initial_state(obs.shape[0])
        out, state = self.gru(self.inputs(obs, prev_action, prev_reward, prev_done), state)
        head, value = self.policy(out), self.value(out).squeeze(-1)
        if one_step:
            head, value = head.squeeze(1), value.squeeze(1)
        return head, value, state

    def distribution(self, head: Tensor) -> torch.distributions.Distribution:
        """The policy at each step of ``head`` (:meth:`forward`'s first output)."""
        if self.discrete:
            return torch.distributions.Categorical(logits=head)
        std = self.log_std.exp().expand_as(head)
        return torch.distributions.Independent(torch.distributions.Normal(head, std), 1)
