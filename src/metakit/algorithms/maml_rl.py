"""MAML for reinforcement learning (Finn, Abbeel & Levine, ICML 2017, section 5.3), with TRPO as the outer update.

A task is an environment (:mod:`metakit.tasks.rl`); the policy ``pi_theta`` is a Gaussian MLP
(:class:`~metakit.models.GaussianMLP`). For each task ``T_i`` of a meta-batch::

    D_i^0  = shots roll-outs of pi_theta in T_i
    theta_i^{k+1} = theta_i^k - alpha * grad L_in(theta_i^k; D_i^k)       (k = 0 .. inner_steps-1, theta_i^0 = theta)
    D_i^{k+1} = shots roll-outs of pi_{theta_i^{k+1}} (for the next step), and finally
    D_i'   = queries roll-outs of the adapted policy pi_{theta_i'}         (theta_i' = theta_i^K)

The inner loss is REINFORCE with a baseline (Williams 1992), as in the paper::

    L_in(theta; D) = - 1/N sum_{t in D} log pi_theta(a_t | s_t) * A_t         (N: the steps of D)
    A_t = R_t - b(s_t, t),   R_t = sum_{t' >= t} gamma^{t'-t} r_t'

where ``b`` is the linear feature baseline of Duan et al. 2016 ("Benchmarking Deep RL for
Continuous Control", the paper's reference): a least-squares fit, per task and per set of
roll-outs, of the returns on the features ``[s, s^2, t/100, (t/100)^2, (t/100)^3, 1]``
(observations clipped to [-10, 10]; ridge ``1e-5``, multiplied by 10 while the solve is not
finite) (:func:`linear_baseline`); the advantages are then normalised per task to mean 0 and
standard deviation 1 (``normalize_advantages``, rllab's ``center_adv``). The inner step is the
engine's (:func:`metakit.algorithms._inner.inner_loop` with the ``SGD`` rule): a pure function
of the parameter dict, so the outer gradient flows through it (second order; the roll-outs
themselves are data, as in the paper's code: the dependence of the inner roll-outs' distribution
on ``theta`` is not differentiated). ``inner_loss=lvc`` takes the inner step on ProMP's
low-variance-curvature surrogate instead (Rothfuss et al. 2019, :func:`_lvc_loss`): the same step,
whose second derivatives add ``-1/N sum_t A_t grad log pi_t grad log pi_t^T``, so the outer gradient
also credits the inner roll-outs' distribution with the adaptation it leads to (a biased but
low-variance estimate of that term of the exact meta-gradient).

The outer objective is the loss of the adapted policies on their own roll-outs ``D_i'``. The
paper optimises it with TRPO (Schulman et al. 2015), and so does ``outer=trpo`` (default)::

    L(theta)  = 1/B sum_i - 1/N_i sum_{t in D_i'} pi_{theta_i'(theta)}(a_t|s_t) / pi_old(a_t|s_t) * A_t
    KL(theta) = 1/B sum_i 1/N_i sum_{t in D_i'} KL(pi_old(.|s_t) || pi_{theta_i'(theta)}(.|s_t))
    step      = argmin  g^T d  s.t.  1/2 d^T F d <= max_kl       (g = grad L, F = Hessian of KL, both at theta_old)
              ~ sqrt(2 max_kl / s^T F s) * s,   s = -F^{-1} g  by cg_iters steps of conjugate gradient
              (F v: Hessian-vector products of KL through the inner loop, damping cg_damping; exact
              double backward, or the Gauss-Newton form J^T H J v, equal to it at theta_old (below), with
              J v through a once-built backward graph (kl_hessian=gauss_newton) or by central differences
              (kl_hessian=finite_differences))
    then a backtracking line search: the first fraction ls_backtrack^j (j < ls_steps) of the step
    with L lower than L(theta_old) and KL <= max_kl; no step if none.

Why the Gauss-Newton form is the KL Hessian at ``theta_old``: the KL is a function of the adapted
policy's outputs ``o(theta)`` (``[mean, log_std]`` per step, through the inner steps), so
``d^2 KL / d theta^2 = J^T H J + sum_k (d KL / d o_k) d^2 o_k / d theta^2`` with ``J = d o / d theta``
and ``H`` the Hessian of the Gaussian KL in ``o`` (diagonal: ``1 / sigma^2`` for a mean, 2 for a
log standard deviation, weighted as the mean KL). TRPO takes it at ``theta_old``, where the adapted
policy is the sampling policy: ``o = o_old`` and ``d KL / d o = 0``, so the second sum, which
holds every third derivative through the inner step, vanishes. ``kl_hessian=gauss_newton``
computes ``J^T (H (J v))`` with two backward passes per product instead of the exact product's
backward through the double-backward graph (``J v`` as the derivative of ``J^T u`` in ``u``,
whose graph is built once per meta-iteration); in float64 the two products agree to rounding
(tested).

TRPO was chosen over a PPO-style clipped objective because it is the paper's outer update (its
numbers and Figure 4 are TRPO's) and because its trust region fits the generic trainer with no
change to it: ``meta_backward`` computes the accepted step ``delta`` and leaves ``-delta`` in
``.grad``, so that the trainer's optimizer applies exactly ``theta + delta``. That requires
``optim.name=sgd``, ``optim.lr=1``, no momentum, weight decay, schedule or gradient clipping,
which :meth:`MAMLRL.check_config` enforces when the config is read. ``outer=vpg`` uses the plain
gradient of ``L`` instead (any optimizer; the "loss" the trainer's optimizer minimises).

Baselines of the paper's Figure 4: ``meta=false`` trains one policy on all tasks with the same
outer update and no adaptation during training (the "pretrained" policy; evaluation fine-tunes
it with the same inner steps), and a policy at its random initialisation is the run's initial
state (``benchmarks/rl/navigation_figure.py`` evaluates all three).

Sizes: ``shots`` roll-outs per inner step and task, ``queries`` post-update roll-outs per task
(the paper: 20 and 20 on 2D navigation). :meth:`MAMLRL.task_returns` (the family's score) is the
mean undiscounted return per episode of ``queries`` roll-outs after ``eval_steps`` inner steps;
:meth:`MAMLRL.returns_after_steps` gives it after 0, 1, ..., k steps (the paper's Figure 4;
``metakit eval RUN --steps k``). Evaluation draws its action noise from generators seeded by the
tasks' seeds, so the same checkpoint gives the same numbers; training draws it from torch's
global generator, which checkpoints save (exact resume).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..tasks.rl import EnvBatch, NonFiniteRewardError, check_rewards
from ._inner import FunctionalModel, Params, inner_loop, zero_missing_grads
from .base import Algorithm, BuildContext, register
from .inner_updates import SGD

__all__ = [
    "MAMLRL",
    "Rollouts",
    "NonFiniteRewardError",
    "linear_baseline",
    "baseline_features",
    "discounted_returns",
    "gaussian_log_prob",
    "gaussian_kl",
    "conjugate_gradient",
]

OuterName = Literal["trpo", "vpg"]
_LOG_2PI = math.log(2 * math.pi)


# -- the pieces, as functions ---------------------------------------------------------------------
def gaussian_log_prob(out: Tensor, actions: Tensor) -> Tensor:
    """``log N(actions; mean, diag(exp(log_std))^2)`` with ``out = [mean, log_std]`` on the last dim."""
    a = actions.shape[-1]
    mean, log_std = out[..., :a], out[..., a:]
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - 0.5 * _LOG_2PI).sum(-1)


def gaussian_kl(old: Tensor, new: Tensor) -> Tensor:
    """``KL(N_old || N_new)`` of diagonal Gaussians given as ``[mean, log_std]`` on the last dim."""
    a = old.shape[-1] // 2
    mu0, ls0, mu1, ls1 = old[..., :a], old[..., a:], new[..., :a], new[..., a:]
    return (ls1 - ls0 + (torch.exp(2 * ls0) + (mu0 - mu1).pow(2)) / (2 * torch.exp(2 * ls1)) - 0.5).sum(-1)


def discounted_returns(rewards: Tensor, mask: Tensor, discount: float) -> Tensor:
    """``R_t = sum_{t' >= t} gamma^{t'-t} r_t'`` over the last (time) dimension, masked steps excluded."""
    t = rewards.shape[-1]
    idx = torch.arange(t, dtype=rewards.dtype)
    power = idx[None, :] - idx[:, None]  # [t, t'] = t' - t
    weights = torch.where(power >= 0, torch.as_tensor(discount, dtype=rewards.dtype) ** power.clamp(min=0), 0.0)
    return (rewards * mask) @ weights.T


def baseline_features(obs: Tensor, mask: Tensor) -> Tensor:
    """Duan et al. 2016's features ``[s, s^2, t/100, (t/100)^2, (t/100)^3, 1]`` per step (zero on masked steps).

    Args:
        obs: ``[..., T, D]`` observations.
        mask: ``[..., T]``, 1 on the steps of the episodes.
    """
    o = obs.clamp(-10, 10)
    t = (torch.arange(obs.shape[-2], dtype=obs.dtype) / 100.0).expand(mask.shape).unsqueeze(-1)
    feats = torch.cat([o, o.pow(2), t, t.pow(2), t.pow(3), torch.ones_like(t)], dim=-1)
    return feats * mask.unsqueeze(-1)


def linear_baseline(obs: Tensor, returns: Tensor, mask: Tensor, reg: float = 1e-5) -> Tensor:
    """The linear feature baseline's values, fitted per task by regularised least squares.

    ``w_i = argmin_w |X_i w - R_i|^2 + reg |w|^2`` over the steps of task ``i``'s episodes
    (``X_i`` :func:`baseline_features`), solved as ``(X^T X + reg I) w = X^T R``; ``reg`` is
    multiplied by 10 (up to 5 times) while the solution is not finite.

    Args:
        obs: ``[B, C, T, D]`` observations of ``C`` episodes of each of ``B`` tasks.
        returns: ``[B, C, T]`` the targets (discounted returns).
        mask: ``[B, C, T]``.

    Returns:
        ``[B, C, T]`` the fitted values (0 on masked steps), in float64.
    """
    x = baseline_features(obs.double(), mask.double())
    b = x.shape[0]
    flat = x.reshape(b, -1, x.shape[-1])
    y = (returns.double() * mask.double()).reshape(b, -1, 1)
    xtx, xty = flat.transpose(1, 2) @ flat, flat.transpose(1, 2) @ y
    eye = torch.eye(x.shape[-1], dtype=torch.float64)
    for _ in range(5):
        w = torch.linalg.solve(xtx + reg * eye, xty)
        if bool(torch.isfinite(w).all()):
            break
        reg *= 10
    else:  # pragma: no cover - only with non-finite observations, refused before
        raise ValueError(f"the linear baseline's normal equations have no finite solution (ridge up to {reg:g}); "
                         "the observations are probably not finite")
    return (x @ w.unsqueeze(1)).squeeze(-1) * mask.double()


def conjugate_gradient(matvec: Callable[[Tensor], Tensor], b: Tensor, iters: int, tol: float = 1e-10) -> Tensor:
    """Approximately solve ``A x = b`` for a symmetric positive definite ``A`` given as ``matvec``
    (``iters`` steps of conjugate gradient from ``x = 0``; stops early when ``|r|^2 < tol``)."""
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = r @ r
    for _ in range(iters):
        if rr < tol:
            break
        ap = matvec(p)
        alpha = rr / (p @ ap)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


@dataclass
class Rollouts:
    """Episodes of the tasks of a batch, padded to the horizon.

    Attributes:
        obs: ``[B, C, T, D]`` the observation before each action.
        actions: ``[B, C, T, A]`` the sampled actions (before clipping to the action space).
        rewards: ``[B, C, T]`` float64.
        mask: ``[B, C, T]`` 1 for the steps of each episode (the terminating step included), 0 after.
        policy: ``[B, C, T, 2A]`` the sampling policy's ``[mean, log_std]`` at each step.
    """

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor
    policy: Tensor

    def episode_returns(self) -> Tensor:
        """``[B, C]`` undiscounted return of every episode (float64)."""
        return (self.rewards * self.mask.double()).sum(-1)


@dataclass
class _Samples:
    """What a loss needs from the roll-outs of one phase, flattened per task (``N = C * T`` steps)."""

    obs: Tensor  # [B, N, D]
    target: Tensor  # [B, N, A + 2]: actions, advantage, mask
    old: Tensor  # [B, N, 2A]: the sampling policy


def _reinforce_loss(out: Tensor, target: Tensor) -> Tensor:
    """``-sum mask * log pi(a|s) * A / sum mask`` (the inner loss; ``target = [actions, A, mask]``)."""
    a = target.shape[-1] - 2
    adv, mask = target[..., a], target[..., a + 1]
    return -(gaussian_log_prob(out, target[..., :a]) * adv * mask).sum() / mask.sum().clamp(min=1)


def _lvc_loss(out: Tensor, target: Tensor) -> Tensor:
    """ProMP's low-variance-curvature surrogate (Rothfuss et al. 2019): ``-sum mask * pi / stop(pi) * A / sum mask``.

    At the policy that drew the samples its value and gradient are :func:`_reinforce_loss`'s; its
    Hessian adds ``-sum mask * A * grad log pi grad log pi^T / sum mask``, the curvature the
    REINFORCE surrogate leaves out, so the outer gradient through an inner step on it credits
    the inner roll-outs' distribution with its effect on the adapted policy."""
    a = target.shape[-1] - 2
    adv, mask = target[..., a], target[..., a + 1]
    logp = gaussian_log_prob(out, target[..., :a])
    return -(torch.exp(logp - logp.detach()) * adv * mask).sum() / mask.sum().clamp(min=1)


_INNER_LOSSES = {"reinforce": _reinforce_loss, "lvc": _lvc_loss}


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name}={value!r} must be an int >= {low}")
    return int(value)


def _check_float(name: str, value: object, low: float, high: float = math.inf, *, open_low: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if open_low else value >= low) and value <= high  # type: ignore[operator]
    if not ok:
        if math.isinf(high):
            raise ValueError(f"{name}={value!r} must be a finite number {'>' if open_low else '>='} {low:g}")
        rng = f"{'(' if open_low else '['}{low:g}, {high:g}]"
        raise ValueError(f"{name}={value!r} must be a number in {rng}")
    return float(value)  # type: ignore[arg-type]


def _box_size(space: Any, what: str, key: str) -> int:
    """The size of a 1-D ``gymnasium.spaces.Box``; a ValueError naming ``key`` otherwise."""
    import gymnasium

    if not isinstance(space, gymnasium.spaces.Box) or space.shape is None or len(space.shape) != 1:
        raise ValueError(
            f"maml_rl needs a 1-D Box {what} space (a vector of reals), but {key} has {space}; "
            "its Gaussian policy acts on continuous vectors (use a family with Box observations and actions)"
        )
    return int(space.shape[0])


#: stream tags of :func:`_seed`: the environments' reset seeds (one per copy) and the action noise
_ENV_STREAM, _NOISE_STREAM = 0, 1


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) % (2**63) for p in parts]).generate_state(1, np.uint64)[0] % (2**31 - 1))


@register("maml_rl")
class MAMLRL(Algorithm):
    """MAML for reinforcement learning (Finn et al. 2017) with a TRPO outer update; see the module docstring.

    Args:
        model: the Gaussian policy (``GaussianMLP``: its output per observation is
            ``[mean, log_std]`` of the action distribution).
        inner_lr: step size alpha of the inner policy-gradient steps (the paper: 0.1 on 2D
            navigation and half-cheetah).
        inner_steps: inner policy-gradient steps during meta-training (the paper: 1).
        eval_steps: inner steps when evaluating (default: inner_steps); metakit eval --steps overrides it.
        first_order: ignore the second-order terms of the inner step (first-order MAML).
        inner_loss: the surrogate of the inner policy-gradient step: reinforce (-log pi * A, the
            paper's) or lvc (ProMP's low-variance-curvature surrogate, -pi / stop(pi) * A: the same
            step, but its second derivatives add the sum of A * grad log pi grad log pi^T, which the
            paper's meta-gradient leaves out; Rothfuss et al. 2019). Changes meta-training only;
            needs first_order false.
        meta: true: meta-train through the inner steps (MAML); false: train one policy on all
            tasks with no adaptation during training (the pretrained baseline; evaluation still
            adapts with eval_steps).
        outer: trpo (the paper's; needs optim.name=sgd and optim.lr=1, see the module docstring)
            or vpg (the plain gradient of the outer surrogate, for any optimizer).
        max_kl: trpo: the trust region, the largest mean KL between the old and new adapted policies.
        cg_iters: trpo: conjugate-gradient iterations for the natural-gradient direction.
        cg_damping: trpo: damping added to the KL Hessian (F + damping * I).
        kl_hessian: trpo: how the KL Hessian multiplies a vector: exact (double backward of the KL
            through the inner steps), gauss_newton (J^T H J v, equal to the exact product at the
            sampling policy, see the module docstring; fewer operations per product) or
            finite_differences (J^T H J v with J v by central differences
            of the adapted policy's outputs: second-order derivatives only, as in the paper, which
            avoids third ones; approximate in float32).
        ls_steps: trpo: backtracking line-search steps.
        ls_backtrack: trpo: factor of each line-search step.
        discount: gamma of the returns the advantages are computed from.
        normalize_advantages: normalise each task's advantages to mean 0 and std 1.
        baseline_reg: ridge of the linear feature baseline's least-squares fit.
        max_steps: steps per episode (default: the family's horizon, its task.horizon option or its
            environment's spec.max_episode_steps).
    """

    task_kinds = ("rl",)

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.1,
        inner_steps: int = 1,
        eval_steps: int | None = None,
        first_order: bool = False,
        inner_loss: Literal["reinforce", "lvc"] = "reinforce",
        meta: bool = True,
        outer: OuterName = "trpo",
        max_kl: float = 0.01,
        cg_iters: int = 10,
        cg_damping: float = 1e-5,
        kl_hessian: Literal["exact", "gauss_newton", "finite_differences"] = "exact",
        ls_steps: int = 15,
        ls_backtrack: float = 0.8,
        discount: float = 0.99,
        normalize_advantages: bool = True,
        baseline_reg: float = 1e-5,
        max_steps: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.inner_lr = inner_lr  # validated, and the inner rule built, by the property's setter
        self.inner_steps = _check_int("inner_steps", inner_steps, 0)
        self.eval_steps = self.inner_steps if eval_steps is None else _check_int("eval_steps", eval_steps, 0)
        for name, flag in (("first_order", first_order), ("meta", meta), ("normalize_advantages", normalize_advantages)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name}={flag!r} must be true or false")
        if inner_loss not in _INNER_LOSSES:
            raise ValueError(f"inner_loss={inner_loss!r} is not valid; use reinforce (the paper's) or lvc (ProMP's)")
        if inner_loss == "lvc" and first_order:
            raise ValueError("inner_loss='lvc' changes only the second-order terms of the inner step, which "
                             "first_order=true drops; use it with first_order=false, or inner_loss='reinforce'")
        self.inner_loss = inner_loss
        if outer not in ("trpo", "vpg"):
            raise ValueError(f"outer={outer!r} is not valid; use trpo (the paper's) or vpg")
        self.first_order, self.meta, self.outer = first_order, meta, outer
        self.normalize_advantages = normalize_advantages
        self.max_kl = _check_float("max_kl", max_kl, 0.0, open_low=True)
        self.cg_iters = _check_int("cg_iters", cg_iters, 1)
        self.cg_damping = _check_float("cg_damping", cg_damping, 0.0)
        if kl_hessian not in ("finite_differences", "gauss_newton", "exact"):
            raise ValueError(f"kl_hessian={kl_hessian!r} is not valid; use exact, gauss_newton or finite_differences")
        self.kl_hessian = kl_hessian
        self.ls_steps = _check_int("ls_steps", ls_steps, 1)
        self.ls_backtrack = _check_float("ls_backtrack", ls_backtrack, 0.0, 1.0, open_low=True)
        self.discount = _check_float("discount", discount, 0.0, 1.0)
        self.baseline_reg = _check_float("baseline_reg", baseline_reg, 0.0, open_low=True)
        self.max_steps = None if max_steps is None else _check_int("max_steps", max_steps, 1)
        self._fmodel = FunctionalModel(model)
        self._names = [n for n, p in model.named_parameters() if p.requires_grad]
        if not self._names:
            raise ValueError("maml_rl: the policy has no trainable parameters")

    @property
    def inner_lr(self) -> float:
        """Step size of the inner policy-gradient steps; settable (e.g. to evaluate a trained policy's
        adaptation with another step size), validated like the constructor's argument."""
        return self._rule.lr

    @inner_lr.setter
    def inner_lr(self, value: float) -> None:
        self._rule = SGD(_check_float("inner_lr", value, 0.0))

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def model_defaults(cls, context: BuildContext) -> dict[str, Any]:
        """``in_features`` and ``action_dim`` of the policy from the family's spaces."""
        from ..options import ConfigError

        try:
            obs = _box_size(context.observation_space, "observation", "the task family's observation_space")
            act = _box_size(context.action_space, "action", "the task family's action_space")
        except ValueError as e:
            raise ConfigError(str(e)) from None
        return {"in_features": obs, "action_dim": act}

    @classmethod
    def check_config(cls, config: Any) -> None:
        """The policy's output must be ``[mean, log_std]`` per action coordinate; TRPO's step is applied
        by plain SGD with rate 1 (see the module docstring)."""
        from ..options import ConfigError
        from .. import models

        context = config.family.config_context(None)
        act = _box_size(context.action_space, "action", "the task family's action_space")
        options = {**cls.model_defaults(context), **config.model.options}
        with torch.device("meta"):
            out = models.build_model(config.model.name, **options)(torch.empty(2, *context.example_shape))
        if not isinstance(out, Tensor) or tuple(out.shape) != (2, 2 * act):
            shape = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ConfigError(
                f"model {config.model.name!r} gives outputs of shape {shape} for 2 observations, but maml_rl reads "
                f"[mean, log_std] of a Gaussian over the {act} action coordinates of task.family={config.family.name}: "
                f"{2 * act} outputs per observation; use model.name=gaussian_mlp (or a model with that output)"
            )
        outer = config.algorithm.options.get("outer", "trpo")
        if outer != "trpo":
            return
        o = config.optim
        wrong = [(key, value, want) for key, value, want in (
            ("optim.name", o.name, "sgd"), ("optim.lr", o.lr, 1.0), ("optim.momentum", o.momentum, 0.0),
            ("optim.weight_decay", o.weight_decay, 0.0), ("optim.schedule", o.schedule, "none"),
            ("optim.grad_clip", o.grad_clip, None),
        ) if value != want]
        if wrong:
            key, value, want = wrong[0]
            raise ConfigError(
                f"{key}={value} but algorithm.outer=trpo writes its line-searched step into the gradient for plain "
                "SGD with rate 1 to apply (optim.name=sgd, optim.lr=1, no momentum, weight decay, schedule or "
                f"grad_clip); set {key}={'null' if want is None else want}, or use algorithm.outer=vpg for another optimizer"
            )

    @classmethod
    def from_config(cls, model: nn.Module, context: BuildContext, **options: Any) -> "MAMLRL":
        algorithm = cls(model, **options)
        algorithm.check_spaces(context.observation_space, context.action_space)
        return algorithm

    def check_spaces(self, observation_space: Any, action_space: Any) -> None:
        """Refuse spaces the policy cannot act in (ValueError naming the space and the sizes)."""
        obs = _box_size(observation_space, "observation", "the environment's observation_space")
        act = _box_size(action_space, "action", "the environment's action_space")
        p = next(self.model.parameters())
        with torch.no_grad():
            try:
                out = self.model(torch.zeros(1, obs, dtype=p.dtype, device=p.device))
            except RuntimeError as e:
                raise ValueError(
                    f"the policy cannot take the environment's observations ({obs} values, {observation_space}): {e}; "
                    f"build it with in_features={obs}"
                ) from None
        if tuple(out.shape) != (1, 2 * act):
            raise ValueError(
                f"the policy gives {out.shape[-1]} outputs per observation, but the environment's action space "
                f"{action_space} needs {2 * act} ([mean, log_std] of {act} coordinates); build it with action_dim={act}"
            )

    # -- roll-outs -----------------------------------------------------------------------------
    def _horizon(self, batch: EnvBatch) -> int:
        if self.max_steps is not None:
            return self.max_steps
        family = batch.family
        horizon = getattr(family.options, "horizon", None)
        if isinstance(horizon, int) and horizon >= 1:
            return horizon
        env = family.probe_env()
        limit = getattr(getattr(env, "spec", None), "max_episode_steps", None)
        env.close()
        if isinstance(limit, int) and limit >= 1:
            return limit
        raise ValueError(
            f"task.family={family.name} states no episode length (no task.horizon option, no env.spec.max_episode_steps); "
            "set algorithm.max_steps to the steps per episode"
        )

    def _policy(self, params: Params | list[Params], obs: Tensor) -> Tensor:
        """``[B, C, 2A]`` outputs for ``obs`` ``[B, C, D]``: one shared parameter dict, or one per task."""
        b, c, d = obs.shape
        if isinstance(params, dict):
            return self._fmodel(params, obs.reshape(b * c, d)).reshape(b, c, -1)
        stacked = {n: torch.stack([p[n] for p in params]) for n in params[0]}
        return torch.func.vmap(lambda p, o: self._fmodel(p, o))(stacked, obs)

    def rollout(self, batch: EnvBatch, params: Params | list[Params], episodes: int, phase: int, noise: Tensor) -> Rollouts:
        """``episodes`` episodes of each task of ``batch`` with the policy of ``params`` (no graph).

        Args:
            params: one parameter dict for every task, or a list of one per task.
            phase: which roll-outs of the trial these are (seeds the environments' resets).
            noise: ``[B, episodes, T, A]`` standard normal noise of the actions (``a = mean + std * noise``).
        """
        b, c = len(batch), episodes
        p0 = next(self.model.parameters())
        dtype = p0.dtype
        obs_space, act_space = batch.family.spaces()
        t_max, a_dim = noise.shape[2], noise.shape[3]
        low = np.broadcast_to(np.asarray(act_space.low, dtype=np.float64), (a_dim,))
        high = np.broadcast_to(np.asarray(act_space.high, dtype=np.float64), (a_dim,))
        envs = batch.vector_env(copies=c)
        try:
            o, _ = envs.reset(seed=[_seed(task.seed, phase, _ENV_STREAM, j) for task in batch for j in range(c)])
            obs = torch.zeros(b, c, t_max, *np.shape(o)[1:], dtype=dtype)
            actions = torch.zeros(b, c, t_max, a_dim, dtype=dtype)
            rewards = torch.zeros(b, c, t_max, dtype=torch.float64)
            mask = torch.zeros(b, c, t_max, dtype=dtype)
            policy = torch.zeros(b, c, t_max, 2 * a_dim, dtype=dtype)
            alive = np.ones(b * c, dtype=bool)
            with torch.no_grad():
                for t in range(t_max):
                    current = torch.as_tensor(np.asarray(o), dtype=dtype).reshape(b, c, -1)
                    out = self._policy(params, current)
                    a = out[..., :a_dim] + torch.exp(out[..., a_dim:]) * noise[:, :, t]
                    o, r, terminated, truncated, _ = envs.step(np.clip(a.reshape(b * c, a_dim).double().numpy(), low, high))
                    r = np.asarray(r, dtype=np.float64)
                    check_rewards(r, batch, step=t, copies=c, mask=alive)
                    m = torch.as_tensor(alive.reshape(b, c), dtype=dtype)
                    obs[:, :, t], actions[:, :, t], policy[:, :, t] = current, a, out
                    rewards[:, :, t] = torch.as_tensor(np.where(alive, r, 0.0).reshape(b, c))
                    mask[:, :, t] = m
                    alive = alive & ~(np.asarray(terminated) | np.asarray(truncated))
                    if not alive.any():
                        break
        finally:
            envs.close()
        return Rollouts(obs, actions, rewards, mask, policy)

    def _samples(self, ro: Rollouts) -> _Samples:
        """Advantages (discounted returns minus the linear baseline, normalised per task) and the flat layout."""
        returns = discounted_returns(ro.rewards, ro.mask.double(), self.discount)
        adv = (returns - linear_baseline(ro.obs, returns, ro.mask, self.baseline_reg)) * ro.mask.double()
        if self.normalize_advantages:
            m = ro.mask.double()
            n = m.sum((1, 2), keepdim=True).clamp(min=1)
            mean = adv.sum((1, 2), keepdim=True) / n
            std = (((adv - mean) * m).pow(2).sum((1, 2), keepdim=True) / n).sqrt()
            adv = (adv - mean) / (std + 1e-8) * m
        b = ro.obs.shape[0]
        dtype = ro.obs.dtype
        target = torch.cat([ro.actions, adv.to(dtype).unsqueeze(-1), ro.mask.unsqueeze(-1)], dim=-1)
        return _Samples(ro.obs.reshape(b, -1, ro.obs.shape[-1]), target.reshape(b, -1, target.shape[-1]),
                        ro.policy.reshape(b, -1, ro.policy.shape[-1]))

    def _noise(self, batch: EnvBatch, episodes: int, horizon: int, phase: int, seeded: bool) -> Tensor:
        p0 = next(self.model.parameters())
        a = p0.new_empty(0)
        act = batch.family.spaces()[1].shape[0]
        if not seeded:
            return torch.randn(len(batch), episodes, horizon, act, dtype=a.dtype)
        return torch.stack([
            torch.randn(episodes, horizon, act, generator=torch.Generator().manual_seed(_seed(task.seed, phase, _NOISE_STREAM)), dtype=a.dtype)
            for task in batch
        ])

    # -- adaptation ----------------------------------------------------------------------------
    def _inner_step(self, params: Params, samples: _Samples, i: int, *, train: bool) -> Params:
        """One policy-gradient step on task ``i``'s samples with the ``inner_loss`` surrogate (the engine's
        inner loop with the SGD rule)."""
        traj = inner_loop(
            self._fmodel, params, samples.obs[i], samples.target[i], _INNER_LOSSES[self.inner_loss], steps=1, update=self._rule,
            adapt=self._names, first_order=self.first_order, create_graph=train,
        )
        return traj[-1]

    def adapt_params(self, params: Params, inner: Sequence[_Samples], b: int, *, train: bool) -> list[Params]:
        """The adapted parameters of each of ``b`` tasks after the inner steps on ``inner`` (one set of samples per step)."""
        out = []
        for i in range(b):
            p = params
            for samples in inner:
                p = self._inner_step(p, samples, i, train=train)
            out.append(p)
        return out

    def _sample_trial(self, batch: EnvBatch, steps: int, *, seeded: bool, every_step: bool) -> tuple[list[_Samples], list[Rollouts], list[Params]]:
        """Roll out and adapt without a graph: the inner samples of every step, the query roll-outs
        (after every step with ``every_step``, else after the last) and the adapted parameters."""
        horizon = self._horizon(batch)
        theta = {n: p.detach() for n, p in self._fmodel.params().items()}
        params: Params | list[Params] = theta
        inner: list[_Samples] = []
        queries: list[Rollouts] = []
        for k in range(steps + 1):
            if every_step or k == steps:
                noise = self._noise(batch, batch.queries, horizon, 2 * k + 1, seeded)
                queries.append(self.rollout(batch, params, batch.queries, 2 * k + 1, noise))
            if k == steps:
                break
            noise = self._noise(batch, batch.shots, horizon, 2 * k, seeded)
            inner.append(self._samples(self.rollout(batch, params, batch.shots, 2 * k, noise)))
            start = [params] * len(batch) if isinstance(params, dict) else params
            params = [{n: v.detach() for n, v in self._inner_step(start[i], inner[-1], i, train=False).items()}
                      for i in range(len(batch))]
        final = [params] * len(batch) if isinstance(params, dict) else params
        return inner, queries, final

    # -- the outer objective ---------------------------------------------------------------------
    def adapted_outputs(self, params: Params, inner: Sequence[_Samples], outer: _Samples, *, train: bool) -> Tensor:
        """``[B, N, 2A]`` the adapted policies' ``[mean, log_std]`` on the outer observations, adapting
        from ``params`` through ``inner`` again (with the graph when ``train``)."""
        adapted = self.adapt_params(params, inner, outer.obs.shape[0], train=train)
        return torch.stack([self._fmodel(p, outer.obs[i]) for i, p in enumerate(adapted)])

    def outer_objective(self, params: Params, inner: Sequence[_Samples], outer: _Samples, *, train: bool,
                        outputs: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(L, KL)`` of the module docstring at ``params`` (or of the given :meth:`adapted_outputs`):
        the mean over tasks of the importance-weighted surrogate and of the KL from the sampling
        policy, on the outer samples."""
        out = self.adapted_outputs(params, inner, outer, train=train) if outputs is None else outputs
        a = outer.old.shape[-1] // 2
        actions, adv, mask = outer.target[..., :a], outer.target[..., a], outer.target[..., a + 1]
        n = mask.sum(-1).clamp(min=1)
        ratio = torch.exp(gaussian_log_prob(out, actions) - gaussian_log_prob(outer.old, actions))
        losses = -(ratio * adv * mask).sum(-1) / n
        kls = (gaussian_kl(outer.old, out) * mask).sum(-1) / n
        return losses.mean(), kls.mean()

    def kl_fisher_product(self, outputs: Tensor, params: Params, inner: Sequence[_Samples], outer: _Samples,
                          jacobian: Literal["finite_differences", "autograd"] = "finite_differences",
                          ) -> Callable[[Tensor], Tensor]:
        """``v -> (F + cg_damping * I) v`` with ``F = J^T H J`` the Hessian of the mean KL at the sampling
        policy (where the KL's gradient in the outputs is 0): ``J`` the Jacobian of the adapted
        outputs in the flattened parameters (through the inner steps), ``H`` the Hessian of the
        Gaussian KL in ``[mean, log_std]`` (``1 / sigma^2`` and 2, weighted as the mean KL). ``J v`` by
        central differences of the outputs (no graph; ``jacobian="finite_differences"``) or exactly
        (``jacobian="autograd"``: the derivative in ``u`` of ``J^T u``, whose graph is built once), ``J^T u``
        by one backward pass through the retained graph of ``outputs`` (second-order only, as the paper's
        finite-difference products avoid third derivatives). ``outputs``: :meth:`adapted_outputs` at
        ``params`` with ``train=True``."""
        a = outputs.shape[-1] // 2
        plist = [params[n] for n in self._names]
        mask = outer.target[..., a + 1]
        weight = (mask / mask.sum(-1, keepdim=True).clamp(min=1) / mask.shape[0]).unsqueeze(-1).detach()
        curvature = torch.cat([torch.exp(-2 * outputs[..., a:]), torch.full_like(outputs[..., a:], 2.0)], -1).detach() * weight
        flat = torch.cat([p.detach().reshape(-1) for p in plist])
        scale = 1e-6 if flat.dtype == torch.float64 else 1e-3
        if jacobian not in ("finite_differences", "autograd"):
            raise ValueError(f"jacobian={jacobian!r} is not valid; use finite_differences or autograd")
        if jacobian == "autograd":
            # J^T u as a function of u (linear): its derivative in u, applied to v, is J v
            probe = torch.zeros_like(outputs, requires_grad=True)
            transposed = torch.autograd.grad(outputs, plist, grad_outputs=probe, create_graph=True, allow_unused=True,
                                             materialize_grads=True)
            linked = [(t, p) for t, p in zip(transposed, plist) if t.requires_grad]

        def product(v: Tensor) -> Tensor:
            norm = float(v.norm())
            if norm == 0:
                return torch.zeros_like(v)
            if jacobian == "autograd":
                pieces = dict(zip(map(id, plist), torch.split(v, [p.numel() for p in plist])))
                jv = torch.autograd.grad([t for t, _ in linked], probe, [pieces[id(p)].view_as(p) for _, p in linked],
                                         retain_graph=True, allow_unused=True, materialize_grads=True)[0]
            else:
                eps = scale / norm
                with torch.no_grad():
                    plus = self.adapted_outputs(self._unflatten(flat + eps * v, params), inner, outer, train=False)
                    minus = self.adapted_outputs(self._unflatten(flat - eps * v, params), inner, outer, train=False)
                jv = (plus - minus) / (2 * eps)
            jtu = torch.autograd.grad(outputs, plist, grad_outputs=curvature * jv, retain_graph=True, allow_unused=True,
                                      materialize_grads=True)
            return torch.cat([x.reshape(-1) for x in jtu]).detach() + self.cg_damping * v

        return product

    def _check_batch(self, batch: object) -> EnvBatch:
        if not isinstance(batch, EnvBatch):
            raise TypeError(f"maml_rl: batch must be an EnvBatch of environment tasks, got {type(batch).__name__}")
        if len(batch) == 0:
            raise ValueError("maml_rl: the batch has no tasks")
        for name in ("shots", "queries"):
            value = getattr(batch, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"maml_rl: batch.{name}={value!r}; {name} must be an int >= 1 (shots: roll-outs per inner step, "
                    "queries: roll-outs of the adapted policy)"
                )
        return batch

    def meta_backward(self, batch: EnvBatch) -> dict[str, float]:  # type: ignore[override]
        """Sample, adapt, and leave the outer update in ``.grad`` (TRPO: minus the line-searched step)."""
        batch = self._check_batch(batch)
        steps = self.inner_steps if self.meta else 0
        inner, queries, _ = self._sample_trial(batch, steps, seeded=False, every_step=False)
        outer = self._samples(queries[-1])
        params = self._fmodel.params()
        plist = [params[n] for n in self._names]
        outputs = self.adapted_outputs(params, inner, outer, train=True)
        loss, kl = self.outer_objective(params, inner, outer, train=True, outputs=outputs)
        metrics = {"loss": float(loss.detach()), "return": float(queries[-1].episode_returns().mean())}
        if self.outer == "vpg":
            loss.backward()
            zero_missing_grads(self.parameters())
            return metrics
        grads = torch.autograd.grad(loss, plist, retain_graph=True, allow_unused=True, materialize_grads=True)
        g = torch.cat([x.reshape(-1) for x in grads]).detach()
        if self.kl_hessian == "exact":
            fisher = self.kl_hessian_product(kl, plist)
        else:
            jacobian = "autograd" if self.kl_hessian == "gauss_newton" else "finite_differences"
            fisher = self.kl_fisher_product(outputs, params, inner, outer, jacobian=jacobian)
        step, accepted_kl, fraction = self._trust_region_step(g, fisher, params, inner, outer, float(loss.detach()))
        offset = 0
        for n, p in zip(self._names, plist):
            k = p.numel()
            p.grad = -step[offset:offset + k].view_as(p).clone()
            offset += k
        zero_missing_grads(self.parameters())
        metrics.update({"kl": accepted_kl, "step_fraction": fraction})
        return metrics

    def kl_hessian_product(self, kl: Tensor, params: Sequence[Tensor]) -> Callable[[Tensor], Tensor]:
        """``v -> (H + cg_damping * I) v`` with ``H`` the Hessian of ``kl`` in the flattened ``params``
        (double backward through the inner loop; ``kl`` must carry the graph of a ``train=True`` objective)."""
        grads = torch.autograd.grad(kl, list(params), create_graph=True, allow_unused=True, materialize_grads=True)
        flat = torch.cat([x.reshape(-1) for x in grads])

        def product(v: Tensor) -> Tensor:
            hv = torch.autograd.grad(flat @ v, list(params), retain_graph=True, allow_unused=True, materialize_grads=True)
            return torch.cat([x.reshape(-1) for x in hv]).detach() + self.cg_damping * v

        return product

    def _trust_region_step(self, g: Tensor, fisher: Callable[[Tensor], Tensor], params: Params, inner: Sequence[_Samples],
                           outer: _Samples, loss_old: float) -> tuple[Tensor, float, float]:
        """TRPO's step: the natural-gradient direction scaled to the trust region, then a backtracking
        line search; returns ``(step, KL after it, accepted fraction)`` (a zero step if none is accepted)."""
        direction = conjugate_gradient(fisher, -g, self.cg_iters)
        shs = float(direction @ fisher(direction))
        if not (math.isfinite(shs) and shs > 0):
            return torch.zeros_like(g), 0.0, 0.0
        full = direction * math.sqrt(2 * self.max_kl / shs)
        flat_old = torch.cat([params[n].detach().reshape(-1) for n in self._names])
        fraction = 1.0
        for _ in range(self.ls_steps):
            new = self._unflatten(flat_old + fraction * full, params)
            with torch.no_grad():
                loss_new, kl_new = self.outer_objective(new, inner, outer, train=False)
            if float(loss_new) < loss_old and float(kl_new) <= self.max_kl:
                return fraction * full, float(kl_new), fraction
            fraction *= self.ls_backtrack
        return torch.zeros_like(g), 0.0, 0.0

    def _unflatten(self, flat: Tensor, like: Params) -> Params:
        out = {n: v.detach() for n, v in like.items()}
        offset = 0
        for n in self._names:
            k = like[n].numel()
            out[n] = flat[offset:offset + k].view_as(like[n])
            offset += k
        return out

    # -- evaluation ------------------------------------------------------------------------------
    def returns_after_steps(self, batch: EnvBatch, steps: int | None = None) -> Tensor:
        """``[steps + 1, B]`` mean return per episode of ``queries`` roll-outs after ``0..steps`` inner
        steps (default ``eval_steps``), each step adapting on ``shots`` roll-outs (the paper's Figure 4)."""
        batch = self._check_batch(batch)
        k = self.eval_steps if steps is None else _check_int("steps", steps, 0)
        _, queries, _ = self._sample_trial(batch, k, seeded=True, every_step=True)
        return torch.stack([q.episode_returns().mean(1) for q in queries])

    def task_returns(self, batch: EnvBatch) -> Tensor:
        """``[B]`` mean return per episode of ``queries`` roll-outs after ``eval_steps`` inner steps."""
        batch = self._check_batch(batch)
        _, queries, _ = self._sample_trial(batch, self.eval_steps, seeded=True, every_step=False)
        return queries[-1].episode_returns().mean(1)

    def scored_episodes(self, batch: EnvBatch) -> int:
        """One: :meth:`task_returns` is the mean return of one episode (the regret against a family's
        optimum is taken over one episode; :func:`metakit.runtime.evaluation.scored_episodes`)."""
        return 1

    def trajectories(self, batch: EnvBatch, steps: int | None = None) -> list[dict[str, list[np.ndarray]]]:
        """Per task of ``batch``: ``{label: [observations of each query episode, [T_e, D]]}`` before
        adaptation (``"pre-update"``) and after each of ``1..steps`` inner steps (default ``eval_steps``)."""
        batch = self._check_batch(batch)
        k = self.eval_steps if steps is None else _check_int("steps", steps, 0)
        _, queries, _ = self._sample_trial(batch, k, seeded=True, every_step=True)
        out: list[dict[str, list[np.ndarray]]] = [{} for _ in range(len(batch))]
        for step, q in enumerate(queries):
            label = "pre-update" if step == 0 else f"{step} step{'s' if step > 1 else ''}"
            for i in range(len(batch)):
                out[i][label] = [q.obs[i, e][q.mask[i, e] > 0].double().numpy() for e in range(q.obs.shape[1])]
        return out
