"""The few-shot evaluation protocol.

The field reports a method as the mean over many test episodes with a 95% confidence interval
(Snell et al. 2017; Finn et al. 2017; Chen et al. 2019):

* every episode gives one number: the fraction of its queries classified correctly (accuracy,
  0..1), or for regression episodes (``ways=None``) the mean squared error over its queries;
* the result is the mean ``m`` of these ``n`` numbers and the half-width of the normal-theory
  95% interval ``ci95 = 1.96 * s / sqrt(n)``, where ``s`` is the *sample* standard deviation
  (``ddof=1``, Bessel's correction) of the per-episode numbers. With a single episode ``s`` is
  undefined and ``ci95`` is ``nan``.

:func:`evaluate` runs an algorithm on an iterable of :class:`~metakit.tasks.EpisodeBatch` under
``torch.no_grad()`` with the algorithm in ``eval()`` mode (the train/eval mode of every
sub-module is restored afterwards), and returns an :class:`EvalResult`. Fixed, seeded episodes
come from :mod:`metakit.tasks`, so two evaluations of two models see the same episodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import Tensor

from ..algorithms.base import Algorithm
from ..tasks.episode import EpisodeBatch

__all__ = ["EvalResult", "NonFiniteOutputError", "evaluate", "mean_ci95", "episode_scores"]

#: z-value of the two-sided 95% normal interval used by the field
Z95 = 1.96


class NonFiniteOutputError(ValueError):
    """The evaluated model produced NaN or inf (predictions or per-episode values)."""


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


@dataclass(frozen=True)
class EvalResult:
    """Mean of a per-episode metric with its 95% confidence interval.

    Attributes:
        metric: ``"accuracy"`` (fraction 0..1 of correct queries) or ``"mse"``.
        mean: mean of ``per_episode``.
        ci95: ``1.96 * std / sqrt(episodes)`` with the sample std (``ddof=1``); ``nan`` for 1 episode.
        episodes: number of episodes.
        per_episode: ``[episodes]`` float64 tensor, in the order the episodes were given.
        higher_is_better: ``True`` for accuracy, ``False`` for mse.
    """

    metric: str
    mean: float
    ci95: float
    episodes: int
    per_episode: Tensor
    higher_is_better: bool

    @classmethod
    def from_values(cls, metric: str, values: Tensor | Iterable[float]) -> "EvalResult":
        """Build from per-episode values of ``metric`` (``"accuracy"`` or ``"mse"``)."""
        if metric not in ("accuracy", "mse"):
            raise ValueError(f"metric={metric!r} must be 'accuracy' or 'mse'")
        per = torch.as_tensor(values if isinstance(values, Tensor) else list(values), dtype=torch.float64).flatten()
        mean, ci = mean_ci95(per)
        return cls(metric, mean, ci, per.numel(), per, metric == "accuracy")

    def format(self) -> str:
        """``"98.80 ± 0.12 %"`` for accuracy (percent), ``"0.0123 ± 0.0004"`` for mse."""
        if self.metric == "accuracy":
            ci = "n/a" if math.isnan(self.ci95) else f"{100 * self.ci95:.2f}"
            return f"{100 * self.mean:.2f} ± {ci} %"
        ci = "n/a" if math.isnan(self.ci95) else f"{self.ci95:.4g}"
        return f"{self.mean:.4g} ± {ci}"

    def __str__(self) -> str:
        return f"{self.metric} {self.format()} ({self.episodes} episodes, 95% CI)"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready summary (``ci95`` is ``None`` when undefined; no per-episode values)."""
        return {
            "metric": self.metric,
            self.metric: self.mean,
            "ci95": None if math.isnan(self.ci95) else self.ci95,
            "episodes": self.episodes,
            "higher_is_better": self.higher_is_better,
        }


def episode_scores(algorithm: Algorithm, batch: EpisodeBatch) -> tuple[str, Tensor]:
    """Per-task metric of one batch: ``("accuracy", [B])`` or ``("mse", [B])`` (no grad handling)."""
    out = algorithm.predict(batch)
    b = batch.num_tasks
    bad = ~torch.isfinite(out)
    if bool(bad.any()):
        # argmax of NaN scores would silently pick a class: a NaN model must not score "at chance"
        n = int(bad.sum())
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise NonFiniteOutputError(
            f"{type(algorithm).__name__}.predict returned {n} non-finite value{'s' if n > 1 else ''} "
            f"(of {out.numel()}), first in task {first[0]}: {float(out[first])}; the model's weights are "
            "probably NaN or inf. Evaluate an earlier checkpoint (--checkpoint), or retrain with a lower optim.lr"
        )
    if batch.ways is not None:
        expected = (b, batch.query_y.shape[1], batch.ways)
        if tuple(out.shape) != expected:
            raise ValueError(
                f"{type(algorithm).__name__}.predict returned shape {tuple(out.shape)}; expected scores "
                f"[tasks, queries, ways] = {list(expected)}"
            )
        return "accuracy", (out.argmax(-1) == batch.query_y).to(torch.float64).mean(-1)
    if out.shape != batch.query_y.shape:
        raise ValueError(
            f"{type(algorithm).__name__}.predict returned shape {tuple(out.shape)}; expected the shape of "
            f"query_y {tuple(batch.query_y.shape)} for a regression batch"
        )
    err = (out.to(torch.float64) - batch.query_y.to(torch.float64)).pow(2)
    return "mse", err.reshape(b, -1).mean(-1)


def _device_of(algorithm: Algorithm) -> torch.device | None:
    for t in list(algorithm.parameters()) + list(algorithm.buffers()):
        return t.device
    return None


def evaluate(
    algorithm: Algorithm,
    episodes: Iterable[EpisodeBatch],
    *,
    progress: bool = False,
    desc: str = "",
) -> EvalResult:
    """Mean per-episode accuracy (or MSE) with its 95% interval over ``episodes``.

    Args:
        algorithm: any :class:`~metakit.algorithms.Algorithm`; its ``predict(batch)`` is called
            on every batch, under ``torch.no_grad()`` and in ``eval()`` mode (sub-module modes
            are restored afterwards, also on error).
        episodes: batches of episodes (e.g. fixed seeded evaluation episodes); each task of each
            batch counts as one episode. Batches are moved to the algorithm's device.
        progress: show a progress bar (tqdm, on stderr).
        desc: label of the progress bar.
    """
    if not isinstance(algorithm, Algorithm):
        raise TypeError(f"algorithm must be a metakit Algorithm, got {type(algorithm).__name__}")
    device = _device_of(algorithm)
    modes = [(m, m.training) for m in algorithm.modules()]
    metric: str | None = None
    values: list[Tensor] = []
    total = len(episodes) if hasattr(episodes, "__len__") else None  # type: ignore[arg-type]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc or "eval", unit="batch", leave=False, dynamic_ncols=True)
    try:
        algorithm.eval()
        with torch.no_grad():
            for i, batch in enumerate(episodes):
                if not isinstance(batch, EpisodeBatch):
                    raise TypeError(
                        f"episodes[{i}] is a {type(batch).__name__}; evaluate takes an iterable of EpisodeBatch "
                        "(wrap a single Episode with episode.unsqueeze())"
                    )
                if device is not None:
                    batch = batch.to(device)
                kind, vals = episode_scores(algorithm, batch)
                if metric is not None and kind != metric:
                    raise ValueError(
                        f"episodes[{i}] is a {'classification' if kind == 'accuracy' else 'regression'} batch "
                        f"but earlier batches were not; evaluate one kind of episode at a time"
                    )
                metric = kind
                values.append(vals.cpu())
                if bar is not None:
                    bar.update(1)
                    done = torch.cat(values)
                    shown = f"{100 * float(done.mean()):.2f}%" if kind == "accuracy" else f"{float(done.mean()):.4g}"
                    bar.set_postfix({kind: shown, "episodes": done.numel()})
    finally:
        if bar is not None:
            bar.close()
        for m, mode in modes:
            m.training = mode
    if metric is None:
        raise ValueError("episodes is empty; give at least one EpisodeBatch to evaluate")
    return EvalResult.from_values(metric, torch.cat(values))
