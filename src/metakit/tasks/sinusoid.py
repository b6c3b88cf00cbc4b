"""Sinusoid regression tasks (the few-shot regression benchmark of MAML).

Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks",
ICML 2017, section 5.1: each task regresses a sine wave whose amplitude is drawn uniformly
from [0.1, 5.0] and phase uniformly from [0, pi]; inputs are drawn uniformly from
[-5.0, 5.0]; K points are given for adaptation. As in the authors' reference code the target is

    y = amplitude * sin(x - phase)

and the K support points and the query points of a task are independent draws of x. Inputs
and targets are ``[B, K, 1]`` float32 tensors in an :class:`~metakit.tasks.EpisodeBatch` with
``ways=None``.

:class:`SinusoidTasks` draws new tasks from its own seeded ``torch.Generator`` (with
``state_dict`` / ``load_state_dict`` for resuming), :class:`FixedSinusoidTasks` is a fixed,
seeded evaluation set, and :class:`SinusoidParams` holds the amplitude and phase of each task
so that the true curves can be drawn (MAML's Figure 2).

:class:`SinusoidFamily` (``task.family: sinusoid``) is the task family: its options are the three
uniform ranges above; it scores a learner by the mean squared error over the query points of a
task (lower is better). Sinusoid tasks have no splits of data, so the fixed evaluation tasks of
``val`` and ``test`` are drawn with seeds offset from ``eval.seed`` (``+2**21`` and ``+2**20``),
which keeps them apart from each other and from the training tasks (drawn from ``run.seed``).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Iterator

import torch
from torch import Tensor

from ..options import ConfigError, Options, option
from .episode import Episode, EpisodeBatch
from .family import TaskFamily, checked_predictions, register_family
from .sampler import _checked_state, _make_generator, _positive_int, _seed

__all__ = ["SinusoidTasks", "SinusoidParams", "FixedSinusoidTasks", "SinusoidFamily", "SinusoidOptions", "mse_scores", "sinusoid"]

# Fixed tasks are drawn in chunks of this many, so they do not depend on the iteration batch
# size. Never change it: it would change every fixed evaluation set.
_FIXED_CHUNK = 64


def sinusoid(x: Tensor, amplitude: Tensor | float, phase: Tensor | float) -> Tensor:
    """``amplitude * sin(x - phase)`` (broadcasting)."""
    return amplitude * torch.sin(x - phase)


@dataclass(frozen=True)
class SinusoidParams:
    """Amplitude and phase of ``B`` sinusoid tasks (``[B]`` float32 each)."""

    amplitude: Tensor
    phase: Tensor

    def __len__(self) -> int:
        return self.amplitude.shape[0]

    def __call__(self, x: Tensor) -> Tensor:
        """The true targets at ``x``: ``x`` is ``[B, N, 1]`` (per task) or ``[N]`` / ``[N, 1]``
        (the same points for every task, e.g. a plotting grid); returns ``[B, N, 1]``."""
        if x.dim() == 1:
            x = x.unsqueeze(-1)
        if x.dim() == 2:
            x = x.unsqueeze(0)
        return sinusoid(x, self.amplitude.view(-1, 1, 1), self.phase.view(-1, 1, 1))

    def slice(self, start: int, stop: int) -> "SinusoidParams":
        return SinusoidParams(self.amplitude[start:stop], self.phase[start:stop])


def _interval(name: str, value: Any, strict: bool) -> tuple[float, float]:
    rel = "<" if strict else "<="
    ok = isinstance(value, (tuple, list)) and len(value) == 2
    ok = ok and all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    if not ok or not (value[0] < value[1] if strict else value[0] <= value[1]):
        raise ValueError(f"{name}={value!r} must be a (low, high) pair of finite numbers with low {rel} high")
    return float(value[0]), float(value[1])


def _uniform(lo: float, hi: float, shape: tuple[int, ...], g: torch.Generator) -> Tensor:
    return torch.rand(shape, generator=g).mul_(hi - lo).add_(lo)


class SinusoidTasks:
    """Batches of sinusoid regression tasks, MAML protocol by default.

    Args:
        shots: support points per task (K).
        queries: query points per task (default: ``shots``, as in MAML).
        amplitude: ``(low, high)`` of the uniform amplitude distribution.
        phase: ``(low, high)`` of the uniform phase distribution.
        x_range: ``(low, high)`` of the uniform input distribution.
        seed: seed of the task family's own ``torch.Generator``.

    ``sample(B)`` returns an :class:`EpisodeBatch` with ``support_x``/``support_y``
    ``[B, shots, 1]`` and ``query_x``/``query_y`` ``[B, queries, 1]`` (float32, ``ways=None``);
    ``sample_with_params(B)`` also returns the tasks' :class:`SinusoidParams`.
    """

    def __init__(
        self,
        shots: int,
        queries: int | None = None,
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
        seed: int = 0,
    ) -> None:
        self.shots = _positive_int("shots", shots, "support points per task")
        self.queries = self.shots if queries is None else _positive_int("queries", queries, "query points per task")
        self.amplitude = _interval("amplitude", amplitude, strict=False)
        self.phase = _interval("phase", phase, strict=False)
        self.x_range = _interval("x_range", x_range, strict=True)
        self.seed = _seed(seed)
        self._generator = _make_generator(self.seed)

    def sample(self, batch_size: int) -> EpisodeBatch:
        """``batch_size`` new tasks (advances the generator)."""
        return self.sample_with_params(batch_size)[0]

    def sample_with_params(self, batch_size: int) -> tuple[EpisodeBatch, SinusoidParams]:
        """New tasks and their amplitudes and phases (consumes the generator like :meth:`sample`)."""
        b = _positive_int("batch_size", batch_size, "tasks per batch")
        g = self._generator
        params = SinusoidParams(_uniform(*self.amplitude, (b,), g), _uniform(*self.phase, (b,), g))
        x = _uniform(*self.x_range, (b, self.shots + self.queries, 1), g)
        return self._batch(params, x), params

    def _batch(self, params: SinusoidParams, x: Tensor) -> EpisodeBatch:
        y = params(x)
        k = self.shots
        return EpisodeBatch(
            x[:, :k].contiguous(), y[:, :k].contiguous(), x[:, k:].contiguous(), y[:, k:].contiguous(), None
        )

    def fixed(self, tasks: int, seed: int, batch_size: int = 100) -> "FixedSinusoidTasks":
        """A fixed evaluation set with these settings (own generator; this one is not touched)."""
        return FixedSinusoidTasks(
            self.shots,
            tasks=tasks,
            queries=self.queries,
            seed=seed,
            batch_size=batch_size,
            amplitude=self.amplitude,
            phase=self.phase,
            x_range=self.x_range,
        )

    # -- checkpointing ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self._generator.get_state(),
            "seed": self.seed,
            "shots": self.shots,
            "queries": self.queries,
            "amplitude": self.amplitude,
            "phase": self.phase,
            "x_range": self.x_range,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the next tasks are the ones the saved family would draw."""
        generator = _checked_state(
            state, self.state_dict(), "SinusoidTasks", ("shots", "queries", "amplitude", "phase", "x_range"),
            "these tasks have", "load it into SinusoidTasks built with the same settings",
        )
        self._generator.set_state(generator)
        self.seed = int(state["seed"])

    def __repr__(self) -> str:
        return (
            f"SinusoidTasks(shots={self.shots}, queries={self.queries}, amplitude={self.amplitude}, "
            f"phase={self.phase}, x_range={self.x_range}, seed={self.seed})"
        )


class FixedSinusoidTasks:
    """A fixed, seeded set of sinusoid evaluation tasks, built once and iterated any number of times.

    Args:
        shots, queries, amplitude, phase, x_range: as for :class:`SinusoidTasks`.
        tasks: number of tasks (keyword-only, like everything after ``shots``).
        seed: the tasks are a function of the settings and ``seed`` only.
        batch_size: tasks per :class:`EpisodeBatch` when iterating (the last may be smaller);
            it does not change which tasks are in the set.

    ``len()`` is the number of batches, :attr:`num_tasks` the number of tasks, :attr:`params`
    the amplitude and phase of every task, ``fixed[i]`` task ``i``.
    """

    def __init__(
        self,
        shots: int,
        *,
        tasks: int,
        queries: int | None = None,
        seed: int = 0,
        batch_size: int = 100,
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
    ) -> None:
        self.num_tasks = _positive_int("tasks", tasks, "number of evaluation tasks")
        self.batch_size = _positive_int("batch_size", batch_size, "tasks per batch")
        family = SinusoidTasks(shots, queries, amplitude, phase, x_range, seed)
        amps, phases, xs = [], [], []
        for start in range(0, self.num_tasks, _FIXED_CHUNK):
            batch, params = family.sample_with_params(min(_FIXED_CHUNK, self.num_tasks - start))
            amps.append(params.amplitude)
            phases.append(params.phase)
            xs.append(torch.cat([batch.support_x, batch.query_x], dim=1))
        self.params = SinusoidParams(torch.cat(amps), torch.cat(phases))
        self._x = torch.cat(xs)
        self._family = family
        self.shots, self.queries, self.seed = family.shots, family.queries, family.seed

    def batches(self, batch_size: int | None = None, with_params: bool = False) -> Iterator[Any]:
        """Iterate the tasks in order (``EpisodeBatch``, or ``(EpisodeBatch, SinusoidParams)``)."""
        size = self.batch_size if batch_size is None else _positive_int("batch_size", batch_size, "tasks per batch")
        for start in range(0, self.num_tasks, size):
            params = self.params.slice(start, start + size)
            batch = self._family._batch(params, self._x[start : start + size])
            yield (batch, params) if with_params else batch

    def __iter__(self) -> Iterator[EpisodeBatch]:
        return self.batches()

    def __len__(self) -> int:
        return -(-self.num_tasks // self.batch_size)

    def __getitem__(self, i: int) -> Episode:
        if not -self.num_tasks <= i < self.num_tasks:
            raise IndexError(f"task {i} out of range for {self.num_tasks} fixed tasks")
        i %= self.num_tasks
        return self._family._batch(self.params.slice(i, i + 1), self._x[i : i + 1])[0]

    def __repr__(self) -> str:
        return (
            f"FixedSinusoidTasks(shots={self.shots}, queries={self.queries}, tasks={self.num_tasks}, "
            f"seed={self.seed}, batch_size={self.batch_size})"
        )


# -- the task family -----------------------------------------------------------------------------
#: offset added to the evaluation seed per split (training tasks come from run.seed). Never
#: change them: they fix every sinusoid validation and test set.
_SEED_OFFSETS = {"val": 1 << 21, "test": 1 << 20}


@dataclass(frozen=True)
class SinusoidOptions(Options):
    """The task distribution (MAML's section 5.1 by default)."""

    section: ClassVar[str] = "task"

    amplitude: tuple[float, float] = option((0.1, 5.0), "sinusoid: (low, high) of the uniform amplitude")
    phase: tuple[float, float] = option((0.0, math.pi), "sinusoid: (low, high) of the uniform phase")
    x_range: tuple[float, float] = option((-5.0, 5.0), "sinusoid: (low, high) of the uniform inputs x")

    def _resolve(self) -> None:
        for name, strict in (("amplitude", False), ("phase", False), ("x_range", True)):
            try:
                self._set(name, _interval(f"task.{name}", getattr(self, name), strict))
            except ValueError as e:
                raise ConfigError(str(e)) from None


@register_family("sinusoid")
class SinusoidFamily(TaskFamily):
    """Sinusoid regression (Finn et al. 2017, section 5.1); see the module docstring."""

    kind = "regression"
    metric = "mse"
    higher_is_better = False
    Options = SinusoidOptions

    def _ranges(self) -> dict[str, tuple[float, float]]:
        o: Any = self.options
        return {"amplitude": o.amplitude, "phase": o.phase, "x_range": o.x_range}

    def example_shape(self) -> tuple[int, ...]:
        return (1,)

    def check_model_output(self, shape: tuple[int, ...]) -> str | None:
        if shape[-1:] != (1,):
            return f"a sinusoid task has one target per input, so the model must give 1 output per example, not {shape[-1]}"
        return None

    def train_sampler(self, data: Any, *, ways: int | None, shots: int, queries: int, seed: int) -> SinusoidTasks:
        return SinusoidTasks(shots, queries, seed=seed, **self._ranges())

    def eval_set(self, split: str, data: Any, *, ways: int | None, shots: int, queries: int, episodes: int,
                 seed: int, batch_size: int = 50) -> Iterable[EpisodeBatch]:
        self.split_name(split)
        if ways is not None:
            raise ValueError(f"ways={ways} but sinusoid tasks are regression tasks (no classes); leave ways unset")
        s = seed + _SEED_OFFSETS.get(split, 0)
        return FixedSinusoidTasks(shots, tasks=episodes, queries=queries, seed=s, batch_size=batch_size, **self._ranges())

    def score(self, algorithm: Any, batch: EpisodeBatch) -> Tensor:
        return mse_scores(algorithm, batch)


def mse_scores(algorithm: Any, batch: EpisodeBatch) -> Tensor:
    """Per-task mean squared error ``[B]`` (float64) of ``algorithm.predict(batch)`` on a regression batch."""
    out = checked_predictions(algorithm, batch)
    if out.shape != batch.query_y.shape:
        raise ValueError(
            f"{type(algorithm).__name__}.predict returned shape {tuple(out.shape)}; expected the shape of "
            f"query_y {tuple(batch.query_y.shape)} for a regression batch"
        )
    err = (out.to(torch.float64) - batch.query_y.to(torch.float64)).pow(2)
    return err.reshape(batch.num_tasks, -1).mean(-1)
