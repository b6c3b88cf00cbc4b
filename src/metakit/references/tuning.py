"""Tuning a reference's constant on training tasks: a grid search, as Duan et al. 2016 did ("For
each method with hyperparameters, we maximize the score with a separate grid search for each of
the experimental settings").

:func:`tune` scores every value of a grid on the same training tasks (tasks ``0 .. tasks-1`` of the
run's training stream, ``task_rng(seed, "train", i)``: never the validation or test tasks) and
keeps the value of largest mean return.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Sequence

import numpy as np

from ..tasks.rl import EnvBatch, EnvFamily

__all__ = ["tune"]


def tune(
    play: Callable[[Any, EnvBatch], np.ndarray],
    make: Callable[[Any], Any],
    grid: Sequence[Any],
    family: EnvFamily,
    *,
    shots: int,
    tasks: int = 200,
    seed: int = 0,
    batch_size: int = 100,
) -> dict[str, Any]:
    """Grid search of one constant on training tasks.

    Args:
        play: ``play(policy, batch) -> returns [B]`` (e.g. :func:`~metakit.references.play_bandit_trials`).
        make: ``make(value) -> policy``.
        grid: the values tried.
        family: the task family.
        shots: episodes per trial.
        tasks: training tasks each value is scored on (the same tasks for every value).
        seed: the run seed of the training stream.
        batch_size: tasks played together.

    Returns:
        ``{"grid": [...], "mean_return": [...], "chosen": value, "tasks": tasks, "seed": seed}``.
    """
    values = list(grid)
    if not values:
        raise ValueError("grid is empty; give at least one value to try")
    if isinstance(tasks, bool) or not isinstance(tasks, numbers.Integral) or tasks < 1:
        raise ValueError(f"tasks={tasks!r} must be a positive int (training tasks per grid value)")
    stream = [family.task(seed, "train", i) for i in range(int(tasks))]
    batches = [EnvBatch(tuple(stream[i:i + batch_size]), shots, 1) for i in range(0, len(stream), batch_size)]
    means = []
    for v in values:
        means.append(float(np.mean(np.concatenate([play(make(v), b) for b in batches]))))
    best = int(np.argmax(means))
    return {"grid": values, "mean_return": means, "chosen": values[best], "tasks": int(tasks), "seed": int(seed)}
