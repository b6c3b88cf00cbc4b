"""The few-shot evaluation protocol.

The field reports a method as the mean over many test tasks with a 95% confidence interval
(Snell et al. 2017; Finn et al. 2017; Chen et al. 2019):

* every task gives one number, the score its task family defines
  (:meth:`~metakit.tasks.TaskFamily.score`): the fraction of its queries classified correctly
  (``accuracy``, 0..1) for classification, the mean squared error over its queries (``mse``)
  for sinusoid regression;
* the result is the mean ``m`` of these ``n`` numbers and the half-width of the normal-theory
  95% interval ``ci95 = 1.96 * s / sqrt(n)``, where ``s`` is the *sample* standard deviation
  (``ddof=1``, Bessel's correction) of the per-task numbers. With a single task ``s`` is
  undefined and ``ci95`` is ``nan``.

:func:`evaluate` runs an algorithm on an iterable of task batches (the fixed, seeded evaluation
set of a family, so two evaluations of two models see the same tasks) under
``torch.no_grad()`` with the algorithm in ``eval()`` mode (the train/eval mode of every
sub-module is restored afterwards), and returns an :class:`EvalResult` carrying the family's
metric name and direction.

BatchNorm at test time is part of the protocol. By default (``batch_norm="running"``) a model's
BatchNorm layers normalise with the running statistics of training, so every query is scored
independently of the others. ``batch_norm="episode"`` normalises each episode with the statistics
of its own images instead (support and queries, in whichever calls the algorithm makes), as some
published test code does by never leaving training mode; the queries of an episode then inform
one another (a transductive setting). The running statistics are left as they were.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterable

import torch
from torch import Tensor

from ..algorithms.base import Algorithm
from ..tasks.classification import accuracy_scores
from ..tasks.episode import EpisodeBatch
from ..tasks.family import NonFiniteOutputError
from ..tasks.sinusoid import mse_scores

__all__ = ["EvalResult", "NonFiniteOutputError", "batch_norm_statistics", "evaluate", "mean_ci95", "episode_scores", "reference_values", "scored_episodes"]

#: z-value of the two-sided 95% normal interval used by the field
Z95 = 1.96


def mean_ci95(values: Tensor | Iterable[float]) -> tuple[float, float]:
    """Mean and 95% half-width ``1.96 * std / sqrt(n)`` (sample std, ``ddof=1``) of ``values``.

    Returns ``(mean, nan)`` for a single value. Raises ``ValueError`` for no values or
    non-finite ones.
    """
    v = torch.as_tensor(values if isinstance(values, Tensor) else list(values), dtype=torch.float64).flatten()
    if v.numel() == 0:
        raise ValueError("values is empty; the confidence interval needs at least one episode")
    if not bool(torch.isfinite(v).all()):
        bad = int(torch.nonzero(~torch.isfinite(v))[0])
        raise NonFiniteOutputError(f"values[{bad}]={float(v[bad])} is not finite; the evaluated model produced NaN or inf")
    mean = float(v.mean())
    if v.numel() == 1:
        return mean, math.nan
    std = float(v.std(correction=1))
    return mean, Z95 * std / math.sqrt(v.numel())


#: direction and display of the metrics of the shipped families, for results built without a family
_KNOWN_METRICS = {"accuracy": (True, True), "mse": (False, False)}


@dataclass(frozen=True)
class EvalResult:
    """Mean of a per-task metric with its 95% confidence interval.

    Attributes:
        metric: the task family's metric, e.g. ``"accuracy"`` (fraction 0..1 of correct
            queries) or ``"mse"``.
        mean: mean of ``per_episode``.
        ci95: ``1.96 * std / sqrt(episodes)`` with the sample std (``ddof=1``); ``nan`` for 1 task.
        episodes: number of tasks.
        per_episode: ``[episodes]`` float64 tensor, in the order the tasks were given.
        higher_is_better: the direction of ``metric``.
        percent: ``metric`` is a fraction shown as a percentage.
        reference: ``[episodes]`` float64, the value of ``metric`` the family's optimal reference
            reaches on each task (e.g. the expected return of the optimal policy knowing the task,
            :meth:`~metakit.tasks.EnvFamily.optimal_return`), or ``None`` where the family has none.
    """

    metric: str
    mean: float
    ci95: float
    episodes: int
    per_episode: Tensor
    higher_is_better: bool
    percent: bool = False
    #: breakdowns of the metric a family reports (:meth:`~metakit.tasks.TaskFamily.score_details`):
    #: ``{name: (mean, ci95, tasks)}`` over the tasks that have a value
    details: dict[str, tuple[float, float, int]] = field(default_factory=dict)
    reference: Tensor | None = None

    @classmethod
    def from_values(
        cls,
        metric: str,
        values: Tensor | Iterable[float],
        *,
        higher_is_better: bool | None = None,
        percent: bool | None = None,
    ) -> "EvalResult":
        """Build from per-task values of ``metric``; ``higher_is_better`` (and ``percent``) must be
        given for metrics other than ``"accuracy"`` and ``"mse"``."""
        if not isinstance(metric, str) or not metric:
            raise ValueError(f"metric={metric!r} must be a non-empty name")
        known = _KNOWN_METRICS.get(metric)
        if higher_is_better is None:
            if known is None:
                raise ValueError(
                    f"metric={metric!r} is not accuracy or mse; give higher_is_better (its direction)"
                )
            higher_is_better = known[0]
        if percent is None:
            percent = known[1] if known is not None else False
        per = torch.as_tensor(values if isinstance(values, Tensor) else list(values), dtype=torch.float64).flatten()
        mean, ci = mean_ci95(per)
        return cls(metric, mean, ci, per.numel(), per, bool(higher_is_better), bool(percent))

    @property
    def regret(self) -> tuple[float, float] | None:
        """Mean and 95% half-width of ``reference - per_episode`` (``None`` without a reference)."""
        if self.reference is None:
            return None
        return mean_ci95(self.reference - self.per_episode)

    def format(self) -> str:
        """``"98.80 ± 0.12 %"`` for a percentage (accuracy), ``"0.0123 ± 0.0004"`` otherwise (mse)."""
        if self.percent:
            ci = "n/a" if math.isnan(self.ci95) else f"{100 * self.ci95:.2f}"
            return f"{100 * self.mean:.2f} ± {ci} %"
        ci = "n/a" if math.isnan(self.ci95) else f"{self.ci95:.4g}"
        return f"{self.mean:.4g} ± {ci}"

    def __str__(self) -> str:
        regret = self.regret
        extra = "" if regret is None else f", regret {regret[0]:.4g} ± {regret[1]:.4g}"
        return f"{self.metric} {self.format()}{extra} ({self.episodes} episodes, 95% CI)"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready summary (``ci95`` is ``None`` when undefined; no per-task values)."""
        return {
            "metric": self.metric,
            self.metric: self.mean,
            "ci95": None if math.isnan(self.ci95) else self.ci95,
            "episodes": self.episodes,
            "higher_is_better": self.higher_is_better,
            **{k: v for name, (m, ci, _) in self.details.items() for k, v in ((name, m), (f"{name}_ci95", _or_none(ci)))},
            **self.regret_dict(),
        }

    def regret_dict(self) -> dict[str, Any]:
        """``optimal_return``-style keys of the reference and the regret (empty without a reference)."""
        regret = self.regret
        if regret is None or self.reference is None:
            return {}
        return {
            f"optimal_{self.metric}": float(self.reference.mean()),
            "regret": regret[0],
            "regret_ci95": None if math.isnan(regret[1]) else regret[1],
        }

    def with_details(self, values: dict[str, Tensor]) -> "EvalResult":
        """This result with the breakdowns ``{name: per-task values}`` (``nan`` values are left out)."""
        out = {}
        for name, v in values.items():
            v = v[~torch.isnan(v)]
            if v.numel():
                out[name] = (*mean_ci95(v), int(v.numel()))
        return replace(self, details=out)


def _or_none(x: float) -> float | None:
    return None if math.isnan(x) else x


def episode_scores(algorithm: Algorithm, batch: EpisodeBatch) -> tuple[str, Tensor]:
    """Per-task metric of one batch scored without a family: ``("accuracy", [B])`` for a batch with
    ``ways``, ``("mse", [B])`` for a regression batch (no grad handling)."""
    if batch.ways is not None:
        return "accuracy", accuracy_scores(algorithm, batch)
    return "mse", mse_scores(algorithm, batch)


def scored_episodes(algorithm: Any, batch: Any) -> int:
    """How many episodes of each task one value of ``algorithm.task_returns(batch)`` covers: the
    algorithm's ``scored_episodes(batch)`` if it has one (MAML-RL scores the mean return of one
    episode), else ``batch.queries`` (the scored episodes of environment tasks)."""
    count = getattr(algorithm, "scored_episodes", None)
    return int(count(batch)) if count is not None else int(batch.queries)


def reference_values(family: Any, batch: Any, algorithm: Any = None) -> Tensor | None:
    """``[B]`` float64: the family's optimal reference on each task of ``batch`` over the episodes one
    score of ``algorithm`` covers (:func:`scored_episodes`; ``batch.queries`` without an algorithm),
    or ``None`` if the family gives none (no ``optimal_return``, or ``None`` for a task)."""
    fn = getattr(family, "optimal_return", None)
    if fn is None or not hasattr(batch, "tasks"):
        return None
    episodes = scored_episodes(algorithm, batch) if algorithm is not None else int(batch.queries)
    out = []
    for task in batch.tasks:
        value = fn(task, episodes)
        if value is None:
            return None
        value = float(value)
        if not math.isfinite(value):
            raise NonFiniteOutputError(
                f"{type(family).__name__}.optimal_return gave {value} for task {task.index}; it must be a finite expected return"
            )
        out.append(value)
    return torch.tensor(out, dtype=torch.float64)


def _score(algorithm: Algorithm, batch: Any, family: Any, details: dict[str, list[Tensor]]) -> tuple[str, Tensor]:
    """``(metric, [B] values)`` of one batch; the family's breakdowns are appended to ``details``."""
    if family is None:
        return episode_scores(algorithm, batch)
    scorer = getattr(family, "score_details", None)
    vals, parts = scorer(algorithm, batch) if scorer is not None else (family.score(algorithm, batch), {})
    for name, part in parts.items():
        details.setdefault(name, []).append(part.detach().to("cpu", torch.float64).flatten())
    return family.metric, vals


def _score_each_task(algorithm: Algorithm, tasks: list[Any], family: Any, details: dict[str, list[Tensor]]) -> tuple[str, Tensor]:
    """``_score`` of each batch of ``tasks`` (one batch, or single tasks for ``batch_norm="episode"``), joined."""
    scored = [_score(algorithm, t, family, details) for t in tasks]
    if len(scored) == 1:
        return scored[0]
    return scored[0][0], torch.cat([v.flatten() for _, v in scored])


def _device_of(algorithm: Algorithm) -> torch.device | None:
    for t in list(algorithm.parameters()) + list(algorithm.buffers()):
        return t.device
    return None


BATCH_NORM_MODES = ("running", "episode")


def _running_stat_norms(algorithm: Algorithm) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    return [m for m in algorithm.modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.running_mean is not None]


def batch_norm_statistics(algorithm: Algorithm) -> str:
    """What the BatchNorm layers of ``algorithm`` normalise with at test time under the default
    ``batch_norm="running"``: ``"running"`` (all keep running statistics), ``"batch"`` (none does: each
    call normalises with the statistics of its own images, as MAML's setting does), ``"mixed"``, or
    ``"none"`` (no BatchNorm layer)."""
    norms = [m for m in algorithm.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return "none"
    running = len(_running_stat_norms(algorithm))
    return "running" if running == len(norms) else "batch" if running == 0 else "mixed"


def _one_task_batches(batch: Any, i: int) -> list[Any]:
    """``batch`` as batches of one task each (``batch_norm="episode"``: no statistics shared between tasks)."""
    split = getattr(batch, "split", None)
    if not callable(split) or not hasattr(batch, "num_tasks"):
        raise ValueError(f"episodes[{i}] is a {type(batch).__name__}, which cannot be split into single tasks; "
                         "batch_norm='episode' (metakit eval --batch-norm episode) evaluates batches of episodes "
                         "(EpisodeBatch); drop it for these tasks")
    return list(split(1))


def evaluate(
    algorithm: Algorithm,
    episodes: Iterable[Any],
    *,
    family: Any = None,
    progress: bool = False,
    desc: str = "",
    batch_norm: str = "running",
) -> EvalResult:
    """Mean per-task score with its 95% interval over ``episodes``.

    Args:
        algorithm: any :class:`~metakit.algorithms.Algorithm`; it is scored on every batch under
            ``torch.no_grad()`` and in ``eval()`` mode (sub-module modes are restored afterwards,
            also on error).
        episodes: batches of tasks (e.g. a family's fixed, seeded evaluation set); each task of
            each batch counts once. Batches are moved to the algorithm's device.
        family: the :class:`~metakit.tasks.TaskFamily` whose ``score``, ``metric`` and
            ``higher_is_better`` are used. Without one, batches must be
            :class:`~metakit.tasks.EpisodeBatch` and are scored by accuracy (with ``ways``) or
            mean squared error (without).
        progress: show a progress bar (tqdm, on stderr).
        desc: label of the progress bar.
        batch_norm: ``"running"`` (BatchNorm layers use their running statistics) or ``"episode"``
            (each task is scored on its own with its BatchNorm layers in training mode: the statistics
            of its own images; the running statistics are restored afterwards). See the module docstring.
    """
    if not isinstance(algorithm, Algorithm):
        raise TypeError(f"algorithm must be a metakit Algorithm, got {type(algorithm).__name__}")
    if batch_norm not in BATCH_NORM_MODES:
        raise ValueError(f"batch_norm={batch_norm!r}; give one of {', '.join(map(repr, BATCH_NORM_MODES))}")
    norms = _running_stat_norms(algorithm) if batch_norm == "episode" else []
    if batch_norm == "episode" and not norms:
        raise ValueError("batch_norm='episode' (metakit eval --batch-norm episode) was given but the model has no "
                         "BatchNorm layer with running statistics (any BatchNorm it has already normalises with batch "
                         "statistics); drop it")
    saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in norms]
    device = _device_of(algorithm)
    modes = [(m, m.training) for m in algorithm.modules()]
    metric: str | None = None
    values: list[Tensor] = []
    details: dict[str, list[Tensor]] = {}
    references: list[Tensor | None] = []
    total = len(episodes) if hasattr(episodes, "__len__") else None  # type: ignore[arg-type]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc or "eval", unit="batch", leave=False, dynamic_ncols=True)
    try:
        algorithm.eval()
        for m in norms:
            m.train()
        with torch.no_grad():
            for i, batch in enumerate(episodes):
                if family is None and not isinstance(batch, EpisodeBatch):
                    raise TypeError(
                        f"episodes[{i}] is a {type(batch).__name__}; without a family, evaluate takes an iterable of "
                        "EpisodeBatch (wrap a single Episode with episode.unsqueeze(), or pass family=)"
                    )
                if device is not None and hasattr(batch, "to"):
                    batch = batch.to(device)
                tasks = _one_task_batches(batch, i) if norms else [batch]
                kind, vals = _score_each_task(algorithm, tasks, family, details)
                if metric is not None and kind != metric:
                    raise ValueError(
                        f"episodes[{i}] is scored by {kind} but earlier batches by {metric}; evaluate one kind of "
                        "task at a time"
                    )
                metric = kind
                values.append(vals.detach().to("cpu", torch.float64).flatten())
                references.append(reference_values(family, batch, algorithm) if family is not None else None)
                if bar is not None:
                    bar.update(1)
                    done = float(torch.cat(values).mean())
                    percent = family.percent if family is not None else _KNOWN_METRICS.get(kind, (True, False))[1]
                    bar.set_postfix({kind: f"{100 * done:.2f}%" if percent else f"{done:.4g}", "episodes": sum(map(len, values))})
    finally:
        if bar is not None:
            bar.close()
        for m, mode in modes:
            m.training = mode
        for m, state in zip(norms, saved):
            m.load_state_dict(state)
    if metric is None:
        raise ValueError("episodes is empty; give at least one batch of tasks to evaluate")
    if family is not None:
        result = EvalResult.from_values(
            metric, torch.cat(values), higher_is_better=family.higher_is_better, percent=family.percent
        ).with_details({name: torch.cat(parts) for name, parts in details.items()})
        if references and all(r is not None for r in references):
            result = dataclasses.replace(result, reference=torch.cat(references))  # type: ignore[arg-type]
        return result
    return EvalResult.from_values(metric, torch.cat(values))
