"""Environment distributions: the task families of meta-reinforcement learning.

In meta-RL a *task* is an environment drawn from a distribution — a bandit with its own arm
means, an MDP with its own transitions, a navigation goal, a running direction — and a learner
is scored by the return it collects on a new one (Duan et al. 2016, RL²; Finn et al. 2017,
MAML-RL). An :class:`EnvFamily` is such a distribution, written against gymnasium's ``Env``
API:

* :meth:`EnvFamily.sample_params` draws one task's parameters from a ``numpy`` generator
  (plain values and arrays: what makes this task differ from the others);
* :meth:`EnvFamily.make_env` builds the ``gymnasium.Env`` of given parameters; every env a
  family makes passes ``gymnasium.utils.env_checker.check_env``;
* :meth:`EnvFamily.make_vector_env` steps the envs of many tasks together (a
  ``gymnasium.vector.VectorEnv``). The default wraps :meth:`make_env` in a
  ``SyncVectorEnv`` with autoreset disabled; families whose dynamics are a few array
  operations override it with a batched NumPy implementation that gives the same transitions.

Tasks are reproducible by construction: training task ``i`` of a run with seed ``s`` is drawn
from ``numpy.random.default_rng([s, 0, i])``, and evaluation task ``j`` of split ``split`` with
``eval.seed`` ``s`` from ``default_rng([s, code(split), j])``, so a sampler's state is one
counter, an evaluation set is fixed by its seed, and the training, validation and test tasks
never share a stream. Each :class:`EnvTask` also carries the seed its environment is reset with.

The sizes of a config mean, for environment tasks (``ways`` is refused):

* ``shots``: episodes the learner may adapt with in one trial (RL²: the episodes of the trial
  the hidden state persists across; MAML-RL: roll-outs per policy-gradient step);
* ``queries``: episodes scored after adaptation (MAML-RL: roll-outs of the adapted policy).

An algorithm that plays no separate scored episodes says how it reads them and refuses values
it cannot honour. :meth:`EnvFamily.score` asks the algorithm for one value per task
(``algorithm.task_returns(batch)``: ``[B]`` returns, the algorithm's evaluation protocol) and
refuses non-finite ones. Families with a known optimum give :meth:`EnvFamily.optimal_return`,
so that reports can state the regret.

A user's own distribution is a subclass with ``sample_params`` and ``make_env``, registered with
:func:`~metakit.tasks.register_family` (see ``docs/task_families.md``); :func:`env_family`
builds one from a function ``params -> Env`` and a function ``rng -> params``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from ..options import ConfigError
from .family import BuildContext, NonFiniteOutputError, TaskFamily

__all__ = [
    "EnvTask",
    "EnvBatch",
    "EnvTaskSampler",
    "FixedEnvTasks",
    "EnvFamily",
    "NotAnEnvError",
    "NonFiniteRewardError",
    "check_rewards",
    "check_env_instance",
    "task_rng",
    "env_family",
]

#: stream codes of :func:`task_rng`: training tasks, then the fixed evaluation splits
_STREAMS = {"train": 0, "val": 1, "test": 2}


def task_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    """The generator task ``index`` of ``stream`` (``train``/``val``/``test``) is drawn from."""
    if stream not in _STREAMS:
        raise ValueError(f"stream={stream!r} must be one of {sorted(_STREAMS)}")
    return np.random.default_rng([int(seed), _STREAMS[stream], int(index)])


class NotAnEnvError(TypeError, ValueError):
    """A family's ``make_env`` returned something that is not a ``gymnasium.Env`` (a ``TypeError``, and a
    ``ValueError`` so that the command line reports it in one line like other bad input)."""


class NonFiniteRewardError(ValueError):
    """An environment returned a NaN or infinite reward."""


def check_rewards(rewards: Any, batch: "EnvBatch", *, step: Any, episode: Any = None, copies: int = 1,
                  mask: Any = None) -> None:
    """Refuse non-finite rewards of one vector-env step over ``batch`` (``copies`` envs per task).

    ``step`` (and ``episode``) is a number or one per env; ``mask`` selects the envs whose rewards
    count (e.g. those still playing). Raises :class:`NonFiniteRewardError` naming the task, its
    family, the step and the episode of the first non-finite reward.
    """
    r = np.asarray(rewards, dtype=np.float64).reshape(-1)
    bad = ~np.isfinite(r)
    if mask is not None:
        bad &= np.asarray(mask, dtype=bool).reshape(-1)
    if not bad.any():
        return
    i = int(np.flatnonzero(bad)[0])
    at = f"step {int(np.asarray(step).reshape(-1)[i] if np.ndim(step) else step)}"
    if episode is not None:
        at += f" of episode {int(np.asarray(episode).reshape(-1)[i] if np.ndim(episode) else episode)}"
    raise NonFiniteRewardError(
        f"the environment of task {batch[i // copies].index} (task.family={batch.family.name}) returned the reward "
        f"{r[i]} at {at}; rewards must be finite numbers: fix the environment's step() (a division by zero, a log of 0...)"
    )


def check_env_instance(env: Any, owner: str) -> Any:
    """``env`` if it is a ``gymnasium.Env`` with spaces; a :class:`NotAnEnvError` naming ``owner`` otherwise."""
    import gymnasium

    if not isinstance(env, gymnasium.Env):
        raise NotAnEnvError(
            f"{owner} returned a {type(env).__module__}.{type(env).__name__}, not a gymnasium.Env; environment "
            "families build gymnasium environments (subclass gymnasium.Env, or wrap an old gym env with "
            "gymnasium's compatibility wrappers)"
        )
    for name in ("observation_space", "action_space"):
        if not isinstance(getattr(env, name, None), gymnasium.spaces.Space):
            raise NotAnEnvError(f"{owner} returned an env without a gymnasium {name}; set env.{name} to a gymnasium.spaces.Space")
    return env


@dataclass(frozen=True)
class EnvTask:
    """One environment task: the parameters that make it differ from the others.

    Attributes:
        params: the task's parameters (what :meth:`EnvFamily.sample_params` drew).
        seed: the seed the environment is reset with (first ``env.reset(seed=seed)``).
        index: the task's position in its stream (training step order or evaluation set).
        family: the family that drew it (builds its environment).
    """

    params: Mapping[str, Any]
    seed: int
    index: int
    family: "EnvFamily" = field(repr=False, compare=False)

    def make(self, **kwargs: Any) -> Any:
        """A new ``gymnasium.Env`` of this task (``kwargs`` go to ``make_env``, e.g. ``render_mode``)."""
        return self.family.make_checked_env(self.params, **kwargs)


@dataclass(frozen=True)
class EnvBatch(Sequence[EnvTask]):
    """The tasks of one meta-batch or evaluation chunk, with the episode budget of a trial.

    Attributes:
        tasks: the tasks.
        shots: episodes the learner may adapt with (see the module docstring).
        queries: episodes scored after adaptation.
    """

    tasks: tuple[EnvTask, ...]
    shots: int
    queries: int

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, i: Any) -> Any:
        return self.tasks[i]

    def __iter__(self) -> Iterator[EnvTask]:
        return iter(self.tasks)

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def family(self) -> "EnvFamily":
        return self.tasks[0].family

    @property
    def seeds(self) -> list[int]:
        return [t.seed for t in self.tasks]

    def to(self, *args: Any, **kwargs: Any) -> "EnvBatch":
        """Tasks live on no device: ``self`` (evaluation moves batches to the model's device)."""
        return self

    def vector_env(self, copies: int = 1, **kwargs: Any) -> Any:
        """The batch's tasks as one vector env: ``copies`` consecutive copies of each task
        (``num_envs = len(self) * copies``), from :meth:`EnvFamily.make_vector_env`."""
        return self.family.make_vector_env(list(self.tasks), copies=copies, **kwargs)


def _counter(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name}={value!r} must be a non-negative int")
    return int(value)


class EnvTaskSampler:
    """The training tasks of a run: task ``i`` drawn from ``task_rng(seed, "train", i)``.

    ``sample(B)`` returns the next ``B`` tasks as an :class:`EnvBatch`; the state is the count of
    tasks drawn so far, so a resumed run draws the tasks an uninterrupted one would.
    """

    def __init__(self, family: "EnvFamily", *, shots: int, queries: int, seed: int) -> None:
        self.family = family
        self.shots, self.queries = int(shots), int(queries)
        self.seed = _counter("seed", seed)
        self.drawn = 0

    def sample(self, meta_batch: int) -> EnvBatch:
        if isinstance(meta_batch, bool) or not isinstance(meta_batch, numbers.Integral) or meta_batch < 1:
            raise ValueError(f"meta_batch={meta_batch!r} must be a positive int (tasks per outer step)")
        tasks = tuple(self.family.task(self.seed, "train", self.drawn + i) for i in range(int(meta_batch)))
        self.drawn += int(meta_batch)
        return EnvBatch(tasks, self.shots, self.queries)

    def state_dict(self) -> dict[str, Any]:
        return {"drawn": self.drawn, "seed": self.seed, "shots": self.shots, "queries": self.queries,
                "family": self.family.name}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping) or "drawn" not in state:
            raise ValueError(f"state must be a dict from EnvTaskSampler.state_dict(), got {state!r}")
        for key in ("seed", "shots", "queries", "family"):
            mine = getattr(self, key) if key != "family" else self.family.name
            if key in state and state[key] != mine:
                raise ValueError(
                    f"state was saved with {key}={state[key]!r} but this sampler has {key}={mine!r}; load it into a "
                    "sampler of the same run settings"
                )
        self.drawn = _counter("state['drawn']", state["drawn"])


class FixedEnvTasks:
    """A fixed evaluation set: tasks ``0 .. episodes-1`` of ``task_rng(seed, split, j)`` in chunks
    of ``batch_size`` (the chunking does not change the tasks)."""

    def __init__(self, family: "EnvFamily", split: str, *, shots: int, queries: int, tasks: int, seed: int,
                 batch_size: int = 50) -> None:
        if isinstance(tasks, bool) or not isinstance(tasks, numbers.Integral) or tasks < 1:
            raise ValueError(f"episodes={tasks!r} must be a positive int (test tasks to evaluate)")
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be a positive int")
        self.family, self.split = family, split
        self.shots, self.queries = int(shots), int(queries)
        self.num_tasks, self.seed, self.batch_size = int(tasks), _counter("seed", seed), int(batch_size)

    def __len__(self) -> int:
        return math.ceil(self.num_tasks / self.batch_size)

    def __iter__(self) -> Iterator[EnvBatch]:
        for start in range(0, self.num_tasks, self.batch_size):
            stop = min(start + self.batch_size, self.num_tasks)
            tasks = tuple(self.family.task(self.seed, self.split, j) for j in range(start, stop))
            yield EnvBatch(tasks, self.shots, self.queries)


class EnvFamily(TaskFamily):
    """Base class of environment distributions; see the module docstring.

    A subclass sets ``name`` (by :func:`~metakit.tasks.register_family`), ``Options`` and
    implements :meth:`sample_params` and :meth:`make_env`; optionally
    :meth:`make_vector_env` (batched dynamics) and :meth:`optimal_return`.
    """

    kind: ClassVar[str] = "rl"
    metric: ClassVar[str] = "return"
    higher_is_better: ClassVar[bool] = True
    percent: ClassVar[bool] = False
    #: the references ``metakit plot RUN`` draws regret curves of beside a run by default (registered
    #: algorithms that play without training; needs :meth:`optimal_return`)
    regret_references: ClassVar[tuple[str, ...]] = ()

    # -- what subclasses write ----------------------------------------------------------------
    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        """One task's parameters drawn from ``rng``."""
        raise NotImplementedError

    def make_env(self, params: Mapping[str, Any], **kwargs: Any) -> Any:
        """The ``gymnasium.Env`` of a task with ``params``."""
        raise NotImplementedError

    def optimal_return(self, task: EnvTask, episodes: int) -> float | None:
        """The expected return of the best policy that knows the task over ``episodes`` episodes
        (``None`` where the family does not know it)."""
        return None

    # -- machinery ----------------------------------------------------------------------------
    def task(self, seed: int, stream: str, index: int) -> EnvTask:
        """Task ``index`` of ``stream`` for ``seed`` (see :func:`task_rng`)."""
        rng = task_rng(seed, stream, index)
        params = self.sample_params(rng)
        if not isinstance(params, Mapping):
            raise TypeError(f"{type(self).__name__}.sample_params returned a {type(params).__name__}; return a dict of parameters")
        env_seed = int(rng.integers(0, 2**31 - 1))
        return EnvTask(dict(params), env_seed, int(index), self)

    def make_checked_env(self, params: Mapping[str, Any], **kwargs: Any) -> Any:
        """:meth:`make_env`, refusing anything that is not a ``gymnasium.Env``."""
        return check_env_instance(self.make_env(params, **kwargs), f"make_env of task.family={self.name}")

    def make_vector_env(self, tasks: Sequence[EnvTask], copies: int = 1, **kwargs: Any) -> Any:
        """A ``gymnasium.vector.VectorEnv`` over ``copies`` consecutive copies of each task.

        Autoreset is disabled: an algorithm resets (``reset(seed=...)``) at the start of every
        episode. The default steps the envs one by one (``SyncVectorEnv``); override it with
        batched dynamics where the family's step is a few array operations.
        """
        from gymnasium.vector import AutoresetMode, SyncVectorEnv

        if isinstance(copies, bool) or not isinstance(copies, numbers.Integral) or copies < 1:
            raise ValueError(f"copies={copies!r} must be a positive int (environments per task)")
        fns = [(lambda t=t: t.make(**kwargs)) for t in tasks for _ in range(int(copies))]
        return SyncVectorEnv(fns, autoreset_mode=AutoresetMode.DISABLED)

    def probe_env(self) -> Any:
        """An env of the task drawn from seed 0 (for the spaces)."""
        return self.make_checked_env(self.sample_params(np.random.default_rng(0)))

    def spaces(self) -> tuple[Any, Any]:
        """``(observation_space, action_space)``, the same for every task of the family."""
        if not hasattr(self, "_spaces"):
            env = self.probe_env()
            self._spaces = (env.observation_space, env.action_space)
            env.close()
        return self._spaces

    def example_shape(self) -> tuple[int, ...]:
        shape = self.spaces()[0].shape
        return tuple(shape) if shape is not None else ()

    def context(self, ways: int | None, data: Any) -> BuildContext:
        return self.config_context(ways)

    def config_context(self, ways: int | None) -> BuildContext:
        obs, act = self.spaces()
        return BuildContext(ways=None, example_shape=self.example_shape(), observation_space=obs, action_space=act)

    def restore_context(self, context: BuildContext) -> BuildContext:
        obs, act = self.spaces()
        return dataclasses.replace(context, observation_space=obs, action_space=act)

    def check_sizes(self, section: str, ways: int | None, shots: int, queries: int) -> None:
        if ways is not None:
            raise ConfigError(
                f"{section}.ways={ways} but task.family={self.name} gives environment tasks, which have no classes; "
                f"set {section}.ways=null ({section}.shots is the episodes a learner adapts with, {section}.queries "
                "the episodes scored after adaptation)"
            )

    def describe(self) -> str:
        return self.name

    def episode_text(self, ways: int | None, shots: int, queries: int) -> str:
        # shots / queries as the algorithm reads them (module docstring); not images, not query points
        return f"shots {shots}, queries {queries} (episodes)"

    def record(self) -> dict[str, Any]:
        return {"dataset": self.name, "protocol": None, "options": self.to_dict()}

    def train_sampler(self, data: Any, *, ways: int | None, shots: int, queries: int, seed: int) -> EnvTaskSampler:
        return EnvTaskSampler(self, shots=shots, queries=queries, seed=seed)

    def eval_set(self, split: str, data: Any, *, ways: int | None, shots: int, queries: int, episodes: int,
                 seed: int, batch_size: int = 50) -> FixedEnvTasks:
        self.split_name(split)
        if ways is not None:
            raise ValueError(f"ways={ways} but task.family={self.name} gives environment tasks (no classes); leave ways unset")
        return FixedEnvTasks(self, split, shots=shots, queries=queries, tasks=episodes, seed=seed, batch_size=batch_size)

    def score(self, algorithm: Any, batch: EnvBatch) -> Tensor:
        """``algorithm.task_returns(batch)`` as ``[B]`` float64; non-finite returns are refused."""
        fn: Callable[[EnvBatch], Any] | None = getattr(algorithm, "task_returns", None)
        if fn is None:
            raise TypeError(
                f"{type(algorithm).__name__} cannot be scored on environment tasks: it has no task_returns(batch); "
                f"use an algorithm whose task_kinds include 'rl'"
            )
        out = torch.as_tensor(fn(batch), dtype=torch.float64).flatten()
        if out.numel() != len(batch):
            raise ValueError(
                f"{type(algorithm).__name__}.task_returns gave {out.numel()} values for {len(batch)} tasks; give one per task"
            )
        bad = ~torch.isfinite(out)
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise NonFiniteOutputError(
                f"{type(algorithm).__name__}.task_returns gave {float(out[i])} for task {batch[i].index}; the policy's "
                "weights or the environment's rewards are not finite (check the env's rewards, or evaluate an earlier checkpoint)"
            )
        return out


def env_family(
    name: str,
    make_env: Callable[..., Any],
    sample_params: Callable[[np.random.Generator], Mapping[str, Any]],
    *,
    optimal_return: Callable[[Mapping[str, Any], int], float] | None = None,
    doc: str = "",
) -> type[EnvFamily]:
    """Register an environment distribution from two functions and return its family class.

    Args:
        name: the ``task.family`` name of configs.
        make_env: ``make_env(params, **kwargs) -> gymnasium.Env`` (``kwargs``: e.g. ``render_mode``).
        sample_params: ``sample_params(rng) -> dict``: one task's parameters from a
            ``numpy.random.Generator``.
        optimal_return: optional ``optimal_return(params, episodes) -> float``, the expected return of
            the best policy knowing the task (reports then state the regret).
        doc: the family's description (its docstring).

    Example::

        def make(params, **kwargs):
            return MyEnv(goal=params["goal"], **kwargs)

        env_family("my_goals", make, lambda rng: {"goal": rng.uniform(-1, 1, size=2)})
        # configs now take task: {family: my_goals}
    """
    from .family import register_family

    for arg, fn in (("make_env", make_env), ("sample_params", sample_params)):
        if not callable(fn):
            raise TypeError(f"{arg} must be a function, got {type(fn).__name__}")

    def _make(self: EnvFamily, params: Mapping[str, Any], **kwargs: Any) -> Any:
        return make_env(params, **kwargs)

    def _sample(self: EnvFamily, rng: np.random.Generator) -> dict[str, Any]:
        return dict(sample_params(rng))

    attrs: dict[str, Any] = {"make_env": _make, "sample_params": _sample, "__doc__": doc or f"Environment family {name!r}."}
    if optimal_return is not None:
        attrs["optimal_return"] = lambda self, task, episodes: optimal_return(task.params, episodes)
    cls = type(f"{name.strip('_').title().replace('_', '')}Family", (EnvFamily,), attrs)
    return register_family(name)(cls)
