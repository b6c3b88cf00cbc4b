"""Shared machinery of the meta-RL algorithms: trials over a vector env, returns, GAE, PPO's loss.

A **trial** is what one task gives a learner: ``episodes`` consecutive episodes of the task's
environment (Duan et al. 2016, RL²: the hidden state of a recurrent policy persists across the
episodes of a trial; Finn et al. 2017, MAML-RL: the roll-outs of one policy-gradient step).
:func:`rollout` plays the trials of an :class:`~metakit.tasks.EnvBatch` together on the batch's
``gymnasium.vector.VectorEnv`` (``batch.vector_env(copies=...)``, autoreset disabled):

* every environment is reset explicitly at the start of each of its episodes, with the seed
  :func:`episode_seeds` derives from the task's seed, the copy and the episode index;
* actions are drawn from the policy's distribution with noise that is a pure function of the
  task's seed, the copy, a ``stream`` number and the environment's own step counter
  (:func:`step_noise`, a counter-based generator). A task's trial is therefore the same whether
  it is played alone or beside any other tasks, in any chunking of an evaluation set, and a
  resumed run re-plays exactly what an uninterrupted one plays;
* environments whose episodes end at different times are reset one by one (``reset_mask``);
  one that has finished its trial keeps being stepped as padding until all have, its steps
  marked invalid (``Trials.valid``), so the valid steps of every environment are a prefix.

Returns: :func:`discounted_returns` (reward-to-go, REINFORCE), :func:`gae` (generalised
advantage estimation, Schulman et al. 2016) with segment ends given explicitly (the end of each
episode for episodic methods, the end of the trial for RL²), :func:`normalize` (advantages over
the valid steps) and :func:`clipped_surrogate` (PPO's clipped objective, Schulman et al. 2017).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from ..tasks.rl import NonFiniteRewardError, check_rewards

__all__ = [
    "Step",
    "Trials",
    "NonFiniteRewardError",
    "EpisodeTooLongError",
    "rollout",
    "episode_seeds",
    "step_noise",
    "noise_dim",
    "encode_observations",
    "observation_dim",
    "action_from_noise",
    "discounted_returns",
    "gae",
    "normalize",
    "clipped_surrogate",
    "masked_mean",
]


class EpisodeTooLongError(ValueError):
    """An episode ran ``max_episode_steps`` steps without terminating or being truncated."""


# -- counter-based randomness ----------------------------------------------------------------------
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijective mixing of ``uint64`` values (vectorised)."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _keys(task_seeds: np.ndarray, copies: np.ndarray, stream: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        k = _mix(np.asarray(task_seeds, dtype=np.uint64))
        k = _mix(k ^ np.asarray(copies, dtype=np.uint64))
        return _mix(k ^ np.uint64(stream))


def episode_seeds(task_seeds: Any, copies: Any, episodes: Any) -> list[int]:
    """The seed environment ``i`` is reset with at the start of its episode ``episodes[i]``
    (a function of the task's seed, the copy index and the episode index; in ``[0, 2**31)``)."""
    with np.errstate(over="ignore"):
        k = _keys(np.asarray(task_seeds), np.asarray(copies), 0xE)
        z = _mix(k ^ _mix(np.asarray(episodes, dtype=np.uint64)))
    return [int(v) for v in (z >> np.uint64(33))]


def step_noise(task_seeds: Any, copies: Any, stream: int, steps: Any, dim: int, kind: str) -> Tensor:
    """``[N, dim]`` noise of the ``steps[i]``-th step of environment ``i``: uniforms in (0, 1)
    (``kind="uniform"``) or standard normals (``kind="normal"``), a pure function of
    ``(task_seeds[i], copies[i], stream, steps[i])``."""
    with np.errstate(over="ignore"):
        k = _keys(np.asarray(task_seeds), np.asarray(copies), int(stream) + 0x100)
        idx = np.asarray(steps, dtype=np.uint64)[:, None] * np.uint64(dim) + np.arange(dim, dtype=np.uint64)[None, :]
        z = _mix(k[:, None] ^ _mix(idx))
    u = ((z >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
    out = torch.from_numpy(u)
    if kind == "normal":
        out = torch.special.ndtri(out)
    elif kind != "uniform":
        raise ValueError(f"kind={kind!r} must be 'uniform' or 'normal'")
    return out.float()


# -- spaces ----------------------------------------------------------------------------------------
def observation_dim(space: Any) -> int:
    """Size of the flat float vector :func:`encode_observations` makes of an observation of ``space``
    (a ``Box``: its elements; a ``Discrete``: one-hot)."""
    import gymnasium

    if isinstance(space, gymnasium.spaces.Discrete):
        return int(space.n)
    if isinstance(space, gymnasium.spaces.Box):
        return int(math.prod(space.shape))
    raise TypeError(
        f"observation_space={space} is not supported: the policies of metakit take Box observations (flattened) "
        "or Discrete ones (one-hot); wrap the env with gymnasium.wrappers.FlattenObservation"
    )


def encode_observations(space: Any, obs: Any, num_envs: int) -> Tensor:
    """A batch of observations of ``space`` as ``[num_envs, observation_dim(space)]`` float32."""
    import gymnasium

    if isinstance(space, gymnasium.spaces.Discrete):
        idx = torch.as_tensor(np.asarray(obs, dtype=np.int64).reshape(num_envs)) - int(space.start)
        return torch.nn.functional.one_hot(idx, int(space.n)).float()
    return torch.as_tensor(np.asarray(obs, dtype=np.float32).reshape(num_envs, -1))


def noise_dim(space: Any) -> tuple[int, str]:
    """``(dim, kind)`` of the noise one action of ``space`` is drawn with."""
    import gymnasium

    if isinstance(space, gymnasium.spaces.Discrete):
        return 1, "uniform"
    if isinstance(space, gymnasium.spaces.Box):
        return int(math.prod(space.shape)), "normal"
    raise TypeError(
        f"action_space={space} is not supported: the policies of metakit act in Discrete (categorical) or Box "
        "(diagonal Gaussian) spaces"
    )


def action_from_noise(dist: torch.distributions.Distribution, noise: Tensor | None) -> Tensor:
    """An action of ``dist`` (a batch of ``Categorical`` or of ``Independent(Normal)``) drawn with
    the given noise: inverse CDF of a uniform for a categorical, ``mean + std * z`` for a Gaussian;
    ``noise=None`` gives the most likely action (argmax / mean)."""
    if isinstance(dist, torch.distributions.Categorical):
        if noise is None:
            return dist.probs.argmax(-1)
        cdf = dist.probs.cumsum(-1)
        action = (cdf < noise[..., :1].to(cdf.dtype)).sum(-1)
        return action.clamp(max=dist.probs.shape[-1] - 1)
    base = dist.base_dist if isinstance(dist, torch.distributions.Independent) else dist
    if not isinstance(base, torch.distributions.Normal):
        raise TypeError(f"action_from_noise takes Categorical or (Independent) Normal distributions, got {type(dist).__name__}")
    if noise is None:
        return base.loc
    return base.loc + base.scale * noise.to(base.loc.dtype)


# -- trials ----------------------------------------------------------------------------------------
@dataclass
class Step:
    """What a policy sees at one step of the trials: ``[N, ...]`` tensors.

    Attributes:
        obs: encoded observations ``[N, obs_dim]``.
        prev_action: the previous action (``[N]`` long, ``-1`` at the start of a trial, for
            ``Discrete``; ``[N, act_dim]`` float, zeros at the start, for ``Box``).
        prev_reward: the previous reward ``[N]`` (0 at the start of a trial).
        prev_done: whether the previous step ended an episode ``[N]`` float (0 at the start).
        noise: the noise to draw the action with (:func:`step_noise`), ``None`` to act greedily.
    """

    obs: Tensor
    prev_action: Tensor
    prev_reward: Tensor
    prev_done: Tensor
    noise: Tensor | None


#: ``act(step, state) -> (action, log_prob, value, state)``: the policy of a roll-out
Act = Callable[[Step, Any], "tuple[Tensor, Tensor, Tensor | None, Any]"]


@dataclass
class Trials:
    """The trials of one roll-out, ``[N, T]`` per step (``N`` environments, ``T`` lockstep steps).

    Attributes:
        obs: encoded observations ``[N, T, obs_dim]`` (what the policy saw).
        actions: actions ``[N, T]`` long (Discrete) or ``[N, T, act_dim]`` float (Box).
        rewards: ``[N, T]`` float32.
        dones: the step ended an episode (terminated or truncated) ``[N, T]`` bool.
        terminated: the step ended an episode by termination ``[N, T]`` bool.
        valid: the step belongs to the environment's trial ``[N, T]`` bool (a prefix of each row).
        episode: the episode index within the trial ``[N, T]`` long.
        log_probs: log-probability of the action when it was taken ``[N, T]``.
        values: the policy's value estimate ``[N, T]`` (zeros if it gives none).
        task: the task (batch position) of each environment ``[N]`` long.
    """

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    dones: Tensor
    terminated: Tensor
    valid: Tensor
    episode: Tensor
    log_probs: Tensor
    values: Tensor
    task: Tensor

    @property
    def num_envs(self) -> int:
        return int(self.rewards.shape[0])

    def select(self, index: Tensor) -> "Trials":
        """The trials of environments ``index`` (rows)."""
        return Trials(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def prev_inputs(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(prev_action, prev_reward, prev_done)`` of every step, as :class:`Step` gives them."""
        a = self.actions
        start = torch.full_like(a[:, :1], -1) if not a.is_floating_point() else torch.zeros_like(a[:, :1])
        prev_action = torch.cat([start, a[:, :-1]], 1)
        zero = torch.zeros_like(self.rewards[:, :1])
        prev_reward = torch.cat([zero, self.rewards[:, :-1]], 1)
        prev_done = torch.cat([zero, self.dones[:, :-1].float()], 1)
        return prev_action, prev_reward, prev_done

    def trial_returns(self) -> Tensor:
        """Total reward of each environment's trial ``[N]`` float64."""
        return (self.rewards.double() * self.valid).sum(1)

    def episode_returns(self, episodes: int) -> Tensor:
        """Total reward of each episode ``[N, episodes]`` float64."""
        out = torch.zeros(self.num_envs, episodes, dtype=torch.float64)
        ep = self.episode.clamp(max=episodes - 1)
        return out.scatter_add_(1, ep, self.rewards.double() * self.valid)

    def trial_ends(self) -> Tensor:
        """``[N, T]`` bool: the last valid step of each row (where a trial's return stops)."""
        last = self.valid.long().sum(1) - 1
        ends = torch.zeros_like(self.valid)
        rows = torch.arange(self.num_envs)
        ends[rows[last >= 0], last[last >= 0]] = True
        return ends


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive int")
    return int(value)


def rollout(
    batch: Any,
    act: Act,
    *,
    episodes: int,
    copies: int = 1,
    stream: int = 0,
    greedy: bool = False,
    state: Any = None,
    max_episode_steps: int = 100_000,
    envs: Any = None,
) -> Trials:
    """Play a trial of ``episodes`` episodes on every task of ``batch`` (``copies`` environments per task).

    Args:
        batch: an :class:`~metakit.tasks.EnvBatch`.
        act: the policy, ``act(step, state) -> (action, log_prob, value, state)`` on a :class:`Step`
            (``value`` may be ``None``); ``state`` is what the previous call returned (``state``
            below the first time): a recurrent policy's hidden state, which this function carries
            across the episodes of the trial without ever resetting it.
        episodes: episodes per trial.
        copies: environments (independent trials) per task.
        stream: which noise stream the actions are drawn from (e.g. one per purpose: training
            trials, evaluation trials), see :func:`step_noise`.
        greedy: act with the most likely action (``noise=None``) instead of sampling.
        state: the policy's initial state (``None`` for a memoryless policy).
        max_episode_steps: an episode longer than this is an error (an env without a time limit).
        envs: the vector env to use (default ``batch.vector_env(copies=copies)``, closed at the end).
    """
    episodes, copies = _positive("episodes", episodes), _positive("copies", copies)
    own = envs is None
    if own:
        envs = batch.vector_env(copies=copies)
    try:
        return _rollout(batch, envs, act, episodes, copies, stream, greedy, state, max_episode_steps)
    finally:
        if own:
            envs.close()


def _rollout(batch: Any, envs: Any, act: Act, episodes: int, copies: int, stream: int, greedy: bool, state: Any,
             max_episode_steps: int) -> Trials:
    import gymnasium

    n = len(batch) * copies
    if getattr(envs, "num_envs", None) != n:
        raise ValueError(f"the vector env has {getattr(envs, 'num_envs', None)} envs but the batch needs {n} ({len(batch)} tasks x {copies} copies)")
    obs_space, act_space = envs.single_observation_space, envs.single_action_space
    dim, kind = noise_dim(act_space)
    discrete = isinstance(act_space, gymnasium.spaces.Discrete)
    seeds = np.repeat(np.asarray(batch.seeds, dtype=np.int64), copies)
    copy = np.tile(np.arange(copies), len(batch))
    task = torch.arange(len(batch)).repeat_interleave(copies)

    episode = np.zeros(n, dtype=np.int64)
    steps = np.zeros(n, dtype=np.int64)  # valid steps taken by each environment in its trial
    ep_steps = np.zeros(n, dtype=np.int64)
    active = np.ones(n, dtype=bool)
    raw, _ = envs.reset(seed=episode_seeds(seeds, copy, episode))
    obs = _checked_obs(obs_space, raw, n, batch, copies, episode, ep_steps)
    prev_action = torch.full((n,), -1, dtype=torch.long) if discrete else torch.zeros(n, dim)
    prev_reward, prev_done = torch.zeros(n), torch.zeros(n)
    rec: dict[str, list[Tensor]] = {k: [] for k in ("obs", "actions", "rewards", "dones", "terminated", "valid", "episode", "log_probs", "values")}
    while active.any():
        noise = None if greedy else step_noise(seeds, copy, stream, steps, dim, kind)
        action, logp, value, state = act(Step(obs, prev_action, prev_reward, prev_done, noise), state)
        action, logp = action.detach(), logp.detach()
        to_env = action.numpy() if discrete else np.clip(action.numpy(), act_space.low.reshape(-1), act_space.high.reshape(-1)).reshape((n, *act_space.shape))
        raw_next, r, term, trunc, _ = envs.step(to_env)
        r = np.asarray(r, dtype=np.float64).reshape(n)
        check_rewards(r, batch, step=ep_steps, episode=episode, copies=copies)
        term, trunc = np.asarray(term, dtype=bool).reshape(n), np.asarray(trunc, dtype=bool).reshape(n)
        done = term | trunc
        for key, v in (("obs", obs), ("actions", action), ("rewards", torch.from_numpy(r).float()), ("dones", torch.from_numpy(done)),
                       ("terminated", torch.from_numpy(term)), ("valid", torch.from_numpy(active.copy())),
                       ("episode", torch.from_numpy(episode.copy())), ("log_probs", logp),
                       ("values", value.detach() if value is not None else torch.zeros(n))):
            rec[key].append(v)
        steps += active
        ep_steps += 1
        long = ~done & (ep_steps >= max_episode_steps)
        if long.any():
            i = int(np.flatnonzero(long)[0])
            raise EpisodeTooLongError(
                f"episode {episode[i]} of task {batch[i // copies].index} (task.family={batch.family.name}) ran "
                f"{max_episode_steps} steps without terminating or being truncated; give the environment a time limit "
                "(gymnasium.wrappers.TimeLimit, or max_episode_steps when registering it)"
            )
        episode += done
        ep_steps[done] = 0
        active &= ~(done & (episode >= episodes))
        prev_action, prev_reward, prev_done = action, torch.from_numpy(r).float(), torch.from_numpy(done).float()
        if done.all():
            raw_next, _ = envs.reset(seed=episode_seeds(seeds, copy, episode))
        elif done.any() and active.any():
            raw_next, _ = envs.reset(seed=episode_seeds(seeds, copy, episode), options={"reset_mask": done.copy()})
        obs = _checked_obs(obs_space, raw_next, n, batch, copies, episode, ep_steps)
    out = {k: torch.stack(v, 1) for k, v in rec.items()}
    return Trials(**out, task=task)


def _checked_obs(space: Any, raw: Any, n: int, batch: Any, copies: int, episode: np.ndarray, ep_steps: np.ndarray) -> Tensor:
    obs = encode_observations(space, raw, n)
    bad = ~torch.isfinite(obs).all(1)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise NonFiniteRewardError(
            f"the environment of task {batch[i // copies].index} (task.family={batch.family.name}) returned a non-finite "
            f"observation at step {ep_steps[i]} of episode {episode[i]}; observations must be finite: fix the environment"
        )
    return obs


# -- returns and advantages ------------------------------------------------------------------------
def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over the entries where ``mask`` is true."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1)


def discounted_returns(rewards: Tensor, ends: Tensor, gamma: float) -> Tensor:
    """Reward-to-go ``G_t = r_t + gamma * G_{t+1}``, restarting after every step where ``ends`` is true
    (``[N, T]``; the end of an episode, or of a trial)."""
    out = torch.zeros_like(rewards)
    g = torch.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        g = rewards[:, t] + gamma * g * (~ends[:, t]).to(rewards.dtype)
        out[:, t] = g
    return out


def gae(rewards: Tensor, values: Tensor, ends: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016): ``(advantages, returns)``, ``[N, T]``.

    ``delta_t = r_t + gamma * V_{t+1} * (1 - end_t) - V_t`` and
    ``A_t = delta_t + gamma * lam * (1 - end_t) * A_{t+1}``; the value targets are ``A_t + V_t``.
    ``ends[:, t]`` marks the last step of a segment whose return stops there (no bootstrap from
    the step after it): every episode's end for an episodic learner, the trial's end for RL².
    Steps after the last end of a row (padding) get whatever the recursion gives; mask them.
    """
    adv = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        keep = (~ends[:, t]).to(rewards.dtype)
        delta = rewards[:, t] + gamma * next_value * keep - values[:, t]
        next_adv = delta + gamma * lam * keep * next_adv
        adv[:, t] = next_adv
        next_value = values[:, t]
    return adv, adv + values


def normalize(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """``(x - mean) / (std + eps)`` with the mean and (population) std over the entries where ``mask``
    is true; masked-out entries become 0."""
    m = mask.to(x.dtype)
    count = m.sum().clamp(min=1)
    mean = (x * m).sum() / count
    std = (((x - mean) ** 2) * m).sum().div(count).sqrt()
    return (x - mean) / (std + eps) * m


def clipped_surrogate(log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, clip: float) -> tuple[Tensor, Tensor]:
    """PPO's clipped objective per step, as a loss (Schulman et al. 2017):
    ``-min(rho * A, clip(rho, 1 - clip, 1 + clip) * A)`` with ``rho = exp(log_probs - old_log_probs)``;
    returns ``(loss, clipped)`` where ``clipped`` marks the steps whose ratio was clipped."""
    ratio = torch.exp(log_probs - old_log_probs)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip, 1.0 + clip) * advantages
    return -torch.minimum(unclipped, clipped), (ratio - 1.0).abs() > clip
