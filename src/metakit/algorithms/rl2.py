"""RL²: a recurrent policy whose hidden state is the learning algorithm (Duan et al. 2016).

Duan, Schulman, Chen, Bartlett, Sutskever and Abbeel, "RL²: Fast Reinforcement Learning via Slow
Reinforcement Learning", arXiv:1611.02779. A **trial** is ``n`` episodes on one task drawn from
the family (``train.shots`` = ``n``). A recurrent policy (:class:`~metakit.models.RecurrentPolicy`:
a GRU fed the observation, the previous action, the previous reward and the done flag) plays the
whole trial with one hidden state: it is carried across the episodes of the trial and reset to
zeros between trials, so what the policy learns about the task in early episodes shapes how it
acts in later ones. The objective is the total reward of the trial: the "fast" RL algorithm is
the GRU's dynamics, the "slow" one the outer policy optimisation over many tasks.

The slow learner here is PPO (Schulman et al. 2017), not the paper's TRPO: PPO's clipped
surrogate is a first-order loss, so its update is an ordinary ``torch.optim`` step that the
generic trainer applies, clips, checkpoints and resumes like every other algorithm's, with no
conjugate-gradient solve or line search owned by the algorithm; Schulman et al. report it at
least as sample-efficient as TRPO on their benchmarks. One PPO **iteration**:

1. play a trial on each of the ``train.meta_batch`` tasks of the batch (vectorised,
   :func:`~metakit.algorithms._rl.rollout`, actions sampled);
2. advantages by GAE(gamma, lambda) over the whole trial (the discount runs across the
   episode boundaries inside a trial and stops at its end: the trial is RL²'s episode),
   normalised over the batch; value targets ``A + V``. With ``normalize_returns`` the value head
   predicts standardised targets: its outputs are mapped back with the running mean and std of
   all targets so far before GAE, and the new targets are standardised with the statistics
   updated by them -- without it, trials of 100 steps with rewards around 1 give value targets
   in the tens whose loss gradient outweighs the policy's under PPO's gradient clipping;
3. ``epochs`` passes over the trials in ``minibatches`` random minibatches of whole trials; each
   minibatch re-runs the GRU over its trials from the zero state and minimises
   ``L = mean(-min(rho A, clip(rho, 1-eps, 1+eps) A)) + c_v mean(0.5 (V - R)^2) - c_e mean(H)``
   over the valid steps, ``rho = pi(a|h) / pi_old(a|h)``.

**Fit to the trainer.** One trainer step is one minibatch update: a step that starts an
iteration plays the trials on the batch the trainer passes; the other steps of the iteration
ignore their batch and update on the stored trials (the sampler's tasks of those steps are
unused). ``train.steps`` is therefore ``iterations * epochs * minibatches``. The trials, their
advantages, the minibatch order and the position in the iteration are buffers of the module
(``rollout_*``), so every checkpoint holds them: a run killed in the middle of an iteration
resumes at the next minibatch of the same trials, bitwise as if it had not stopped (the
trainer restores the optimizer and the RNG; the trials' randomness is counter-based,
:func:`~metakit.algorithms._rl.step_noise`). Between iterations the buffers are empty.

**Sizes.** ``shots`` is the episodes of a trial; ``queries`` the number of final episodes of the
trial that are scored: ``queries == shots`` scores the total reward of the trial (Duan et al.'s
measure, what the shipped configs use), fewer scores only the last ``queries`` episodes (the
return after ``shots - queries`` episodes of exploration); more than ``shots`` is refused.
Training always maximises the total reward of the trial. :meth:`RL2.task_returns` plays one
trial per task with actions sampled from the policy (the stochastic policy as trained and as
the paper evaluates it; ``eval_actions: greedy`` takes the most likely action instead) from a
noise stream of its own, so an evaluation is a fixed function of the checkpoint and the tasks.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..options import ConfigError
from ._rl import (
    Step,
    Trials,
    action_from_noise,
    clipped_surrogate,
    gae,
    masked_mean,
    normalize,
    observation_dim,
    rollout,
)
from .base import Algorithm, BuildContext, register

__all__ = ["RL2", "policy_size"]

#: the trials' fields kept in buffers between the steps of an iteration (besides advantages, returns, order)
_TRIAL_FIELDS = ("obs", "actions", "rewards", "dones", "terminated", "valid", "episode", "log_probs", "values", "task")
_BUFFERS = tuple(f"rollout_{k}" for k in (*_TRIAL_FIELDS, "advantages", "returns", "order"))
#: the value targets' running statistics (normalize_returns) and their values before any target
_RETURN_STATS = {"return_count": 0.0, "return_mean": 0.0, "return_m2": 0.0}
#: noise streams of the roll-outs (see metakit.algorithms._rl.step_noise)
TRAIN_STREAM, EVAL_STREAM = 0, 1


def policy_size(space: Any, argument: str) -> tuple[int, bool]:
    """``(action_dim, discrete)`` of a policy acting in ``space``; a ``ConfigError`` naming
    ``argument`` for spaces a policy of metakit cannot act in."""
    import gymnasium

    if isinstance(space, gymnasium.spaces.Discrete):
        if int(space.start) != 0:
            raise ConfigError(f"{argument}={space} starts at {space.start}; policies act in Discrete(n) spaces starting at 0")
        return int(space.n), True
    if isinstance(space, gymnasium.spaces.Box) and len(space.shape) == 1:
        return int(space.shape[0]), False
    raise ConfigError(
        f"{argument}={space} is not supported: the recurrent policy acts in Discrete(n) (categorical) or 1-D Box "
        "(diagonal Gaussian) action spaces; wrap the env (e.g. gymnasium.wrappers.FlattenObservation for observations, "
        "a discretising ActionWrapper for others)"
    )


@register("rl2")
class RL2(Algorithm):
    """RL² (Duan et al. 2016) trained by PPO; see the module docstring.

    Args:
        gamma: discount factor (across the episodes of a trial).
        gae_lambda: GAE's lambda.
        clip: PPO's clipping range epsilon of the probability ratio.
        epochs: passes over the trials of an iteration.
        minibatches: minibatches (of whole trials) per pass; one trainer step updates on one.
        value_coef: weight of the value loss.
        entropy_coef: weight of the entropy bonus.
        normalize_advantages: normalise the advantages over the valid steps of an iteration.
        normalize_returns: the value head learns the value targets standardised by the running mean
            and std of all value targets so far (its outputs are mapped back before GAE), so the
            value loss and its gradient keep one scale whatever the scale of the rewards.
        eval_actions: sample (the stochastic policy) or greedy (the most likely action) in task_returns.
    """

    task_kinds = ("rl",)

    @classmethod
    def model_defaults(cls, context: BuildContext) -> dict[str, Any]:
        if context.observation_space is None or context.action_space is None:
            return {}
        action_dim, discrete = policy_size(context.action_space, "action_space")
        try:
            obs_dim = observation_dim(context.observation_space)
        except TypeError as e:
            raise ConfigError(str(e)) from None
        return {"observation_dim": obs_dim, "action_dim": action_dim, "discrete": discrete}

    @classmethod
    def from_config(cls, model: nn.Module, context: BuildContext, **options: Any) -> "RL2":
        if not all(hasattr(model, a) for a in ("initial_state", "distribution", "observation_dim", "action_dim", "discrete")):
            raise ConfigError(
                f"algorithm.name=rl2 needs a recurrent policy (model.name=recurrent_policy), got {type(model).__name__}"
            )
        if context.observation_space is not None:
            check_spaces(model, context.observation_space, context.action_space, "the task family's")
        return cls(model, **options)

    @classmethod
    def check_config(cls, config: Any) -> None:
        """The trial sizes of the ``train`` and ``eval`` sections (:meth:`check_sizes`), and a
        meta-batch that splits into ``algorithm.minibatches``."""
        cls.check_sizes("train", config.train.shots, config.train.queries)
        cls.check_sizes("eval", config.eval.shots, config.eval.queries)
        minibatches = config.algorithm.options.get("minibatches", inspect.signature(cls).parameters["minibatches"].default)
        if isinstance(minibatches, int) and not isinstance(minibatches, bool) and config.train.meta_batch < minibatches:
            raise ConfigError(_split_message(config.train.meta_batch, minibatches))

    @classmethod
    def check_sizes(cls, section: str, shots: int, queries: int) -> None:
        """``queries`` (scored final episodes of a trial) must not exceed ``shots`` (its episodes)."""
        if queries > shots:
            raise ConfigError(
                f"{section}.queries={queries} but a trial has {section}.shots={shots} episodes: RL² scores the last "
                f"{section}.queries episodes of the trial; set {section}.queries={shots} to score the total reward of "
                "the trial (Duan et al. 2016) or fewer to score only its last episodes"
            )

    def __init__(
        self,
        model: nn.Module,
        gamma: float = 0.99,
        gae_lambda: float = 0.3,
        clip: float = 0.2,
        epochs: int = 4,
        minibatches: int = 4,
        value_coef: float = 0.5,
        entropy_coef: float = 0.01,
        normalize_advantages: bool = True,
        normalize_returns: bool = False,
        eval_actions: str = "sample",
    ) -> None:
        super().__init__()
        for name, v, lo, hi in (("gamma", gamma, 0.0, 1.0), ("gae_lambda", gae_lambda, 0.0, 1.0)):
            if not (isinstance(v, (int, float)) and lo <= v <= hi):
                raise ConfigError(f"algorithm.{name}={v!r} must be a number in [{lo}, {hi}]")
        if not (isinstance(clip, (int, float)) and clip > 0):
            raise ConfigError(f"algorithm.clip={clip!r} must be a positive number (PPO's clipping range, e.g. 0.2)")
        for name, v in (("epochs", epochs), ("minibatches", minibatches)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"algorithm.{name}={v!r} must be a positive int")
        for name, v in (("value_coef", value_coef), ("entropy_coef", entropy_coef)):
            if not (isinstance(v, (int, float)) and v >= 0):
                raise ConfigError(f"algorithm.{name}={v!r} must be a number >= 0")
        if eval_actions not in ("sample", "greedy"):
            raise ConfigError(f"algorithm.eval_actions={eval_actions!r} must be 'sample' or 'greedy'")
        self.model = model
        self.gamma, self.gae_lambda, self.clip = float(gamma), float(gae_lambda), float(clip)
        self.epochs, self.minibatches = epochs, minibatches
        self.value_coef, self.entropy_coef = float(value_coef), float(entropy_coef)
        for name, v in (("normalize_advantages", normalize_advantages), ("normalize_returns", normalize_returns)):
            if not isinstance(v, bool):
                raise ConfigError(f"algorithm.{name}={v!r} must be true or false")
        self.normalize_advantages, self.normalize_returns = normalize_advantages, normalize_returns
        self.eval_actions = eval_actions
        for name in _BUFFERS:
            self.register_buffer(name, torch.empty(0))
        # running count, mean and sum of squared deviations of the value targets (normalize_returns)
        for name, value in _RETURN_STATS.items():
            self.register_buffer(name, torch.tensor(value, dtype=torch.float64))
        self.register_buffer("rollout_position", torch.zeros((), dtype=torch.long))
        self.register_buffer("rollout_return", torch.zeros((), dtype=torch.float64))

    # -- checkpoints: the trials of an unfinished iteration have the shapes they were collected with
    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        for name in _BUFFERS:
            incoming = state_dict.get(prefix + name)
            if isinstance(incoming, Tensor):
                self._buffers[name] = torch.empty_like(incoming, device=self.rollout_position.device)
        for name, value in _RETURN_STATS.items():  # a checkpoint without the statistics: none seen
            state_dict.setdefault(prefix + name, torch.tensor(value, dtype=torch.float64))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- acting ------------------------------------------------------------------------------------
    def _act(self, step: Step, state: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        head, value, state = self.model(step.obs, step.prev_action, step.prev_reward, step.prev_done, state)
        dist = self.model.distribution(head)
        action = action_from_noise(dist, step.noise)
        return action, dist.log_prob(action), value, state

    def play(self, batch: Any, *, stream: int, greedy: bool = False, copies: int = 1) -> Trials:
        """One trial of ``batch.shots`` episodes per task (``copies`` per task), without gradients."""
        envs = batch.vector_env(copies=copies)
        try:
            check_spaces(self.model, envs.single_observation_space, envs.single_action_space,
                         f"task.family={batch.family.name}'s environments'")
            with torch.no_grad():
                return rollout(batch, self._act, episodes=batch.shots, copies=copies, stream=stream, greedy=greedy,
                               state=self.model.initial_state(len(batch) * copies), envs=envs)
        finally:
            envs.close()

    def task_returns(self, batch: Any) -> Tensor:
        """The return of each task's trial: the total reward of its last ``batch.queries`` episodes
        (all ``batch.shots`` of them when ``queries == shots``), ``[B]`` float64."""
        self._check_batch(batch, "eval")
        trials = self.play(batch, stream=EVAL_STREAM, greedy=self.eval_actions == "greedy")
        if batch.queries == batch.shots:
            return trials.trial_returns()
        return trials.episode_returns(batch.shots)[:, batch.shots - batch.queries :].sum(1)

    def episode_returns(self, batch: Any) -> Tensor:
        """The return of each episode of each task's trial, ``[B, batch.shots]`` float64 (the trials
        :meth:`task_returns` scores)."""
        trials = self.play(batch, stream=EVAL_STREAM, greedy=self.eval_actions == "greedy")
        return trials.episode_returns(batch.shots)

    def _check_batch(self, batch: Any, section: str) -> None:
        try:
            self.check_sizes(section, batch.shots, batch.queries)
        except ConfigError as e:
            raise ValueError(str(e)) from None

    # -- training ----------------------------------------------------------------------------------
    @property
    def updates_per_iteration(self) -> int:
        return self.epochs * self.minibatches

    def _trials(self) -> Trials:
        return Trials(**{k: getattr(self, f"rollout_{k}") for k in _TRIAL_FIELDS})

    def collect(self, batch: Any) -> Trials:
        """Start an iteration: play the batch's trials, compute advantages, draw the minibatch order."""
        self._check_batch(batch, "train")
        if len(batch) < self.minibatches:
            raise ValueError(_split_message(len(batch), self.minibatches))
        trials = self.play(batch, stream=TRAIN_STREAM)
        values = trials.values
        if self.normalize_returns:  # the value head's outputs are standardised targets: map them back
            mean, std = self.return_scale()
            values = (values.double() * std + mean).to(values.dtype)
        adv, ret = gae(trials.rewards, values, trials.trial_ends(), self.gamma, self.gae_lambda)
        if self.normalize_returns:
            self._update_return_stats(ret[trials.valid])
            mean, std = self.return_scale()
            ret = ((ret.double() - mean) / std).to(ret.dtype)
        if self.normalize_advantages:
            adv = normalize(adv, trials.valid)
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([int(s) for s in batch.seeds]).generate_state(1)[0]))
        order = torch.stack([torch.randperm(trials.num_envs, generator=g) for _ in range(self.epochs)])
        device = self.rollout_position.device
        for k in _TRIAL_FIELDS:
            self._buffers[f"rollout_{k}"] = getattr(trials, k).to(device)
        self._buffers["rollout_advantages"] = adv.to(device)
        self._buffers["rollout_returns"] = ret.to(device)
        self._buffers["rollout_order"] = order.to(device)
        self.rollout_return.fill_(float(trials.trial_returns().mean()))
        return trials

    def return_scale(self) -> tuple[float, float]:
        """``(mean, std)`` of the value targets seen so far (``(0, 1)`` before the first; the std
        is at least 1e-4 of 1 + |mean|, so a constant target does not divide by zero)."""
        count, mean = float(self.return_count), float(self.return_mean)
        if count == 0:
            return 0.0, 1.0
        std = (float(self.return_m2) / count) ** 0.5
        return mean, max(std, 1e-4 * (1.0 + abs(mean)))

    def _update_return_stats(self, targets: Tensor) -> None:
        """Merge a batch of value targets into the running statistics (Chan et al.'s pairwise
        update of count, mean and sum of squared deviations, in float64)."""
        x = targets.detach().double().flatten().cpu()
        n_b = float(x.numel())
        if n_b == 0:
            return
        n_a, mean_a, m2_a = float(self.return_count), float(self.return_mean), float(self.return_m2)
        mean_b = float(x.mean())
        m2_b = float(((x - mean_b) ** 2).sum())
        n = n_a + n_b
        delta = mean_b - mean_a
        self.return_count.fill_(n)
        self.return_mean.fill_(mean_a + delta * n_b / n)
        self.return_m2.fill_(m2_a + m2_b + delta * delta * n_a * n_b / n)

    def _clear(self) -> None:
        for name in _BUFFERS:
            self._buffers[name] = torch.empty(0, device=self.rollout_position.device)
        self.rollout_position.zero_()

    def ppo_loss(self, trials: Trials, advantages: Tensor, returns: Tensor) -> tuple[Tensor, dict[str, float]]:
        """PPO's loss on ``trials`` (re-run from the zero state) and its parts (see the module docstring)."""
        prev_action, prev_reward, prev_done = trials.prev_inputs()
        head, value, _ = self.model(trials.obs, prev_action, prev_reward, prev_done)
        dist = self.model.distribution(head)
        log_probs = dist.log_prob(trials.actions)
        surrogate, clipped = clipped_surrogate(log_probs, trials.log_probs, advantages, self.clip)
        valid = trials.valid
        policy_loss = masked_mean(surrogate, valid)
        value_loss = masked_mean(0.5 * (value - returns) ** 2, valid)
        entropy = masked_mean(dist.entropy(), valid)
        loss = policy_loss + self.value_coef * value_loss - self.entropy_coef * entropy
        with torch.no_grad():
            approx_kl = masked_mean(trials.log_probs - log_probs, valid)
        return loss, {
            "loss": float(loss.detach()),
            "policy_loss": float(policy_loss.detach()),
            "value_loss": float(value_loss.detach()),
            "entropy": float(entropy.detach()),
            "clip_fraction": float(masked_mean(clipped.float(), valid)),
            "approx_kl": float(approx_kl),
        }

    def meta_backward(self, batch: Any) -> dict[str, float]:
        """One PPO minibatch update's gradient (a new iteration's trials are played on ``batch``
        when the previous iteration is done; see the module docstring)."""
        position = int(self.rollout_position)
        if position == 0:
            self.collect(batch)
        epoch, part = divmod(position, self.minibatches)
        index = self.rollout_order[epoch].tensor_split(self.minibatches)[part]
        loss, metrics = self.ppo_loss(self._trials().select(index), self.rollout_advantages[index], self.rollout_returns[index])
        loss.backward()
        metrics["return"] = float(self.rollout_return)
        if position + 1 == self.updates_per_iteration:
            self._clear()
        else:
            self.rollout_position.fill_(position + 1)
        return metrics


def _split_message(meta_batch: int, minibatches: int) -> str:
    return (f"train.meta_batch={meta_batch} trials cannot be split into algorithm.minibatches={minibatches} "
            f"minibatches; raise train.meta_batch to at least {minibatches} or lower algorithm.minibatches")


def check_spaces(model: nn.Module, obs_space: Any, act_space: Any, whose: str) -> None:
    """Refuse spaces the policy was not built for, naming the sizes and the fix."""
    try:
        obs_dim = observation_dim(obs_space)
    except TypeError as e:
        raise ConfigError(str(e)) from None
    action_dim, discrete = policy_size(act_space, "action_space")
    mine = (model.observation_dim, model.action_dim, model.discrete)
    if (obs_dim, action_dim, discrete) != mine:
        kind = lambda d: "discrete" if d else "continuous"  # noqa: E731
        raise ConfigError(
            f"{whose} spaces (observation {obs_space}, action {act_space}) do not fit the policy (model.observation_dim="
            f"{mine[0]}, model.action_dim={mine[1]}, {kind(mine[2])} actions): it needs observation_dim={obs_dim}, "
            f"action_dim={action_dim}, {kind(discrete)} actions; remove these model options to have them sized from "
            "the task family"
        )

