"""Task families: what a task is, where tasks come from, and how a learner is scored on one.

A **task family** is the unit the runtime talks to instead of a dataset: N-way K-shot image
classification over a class-indexed dataset (:mod:`metakit.tasks.classification`), sinusoid
regression (:mod:`metakit.tasks.sinusoid`); environment distributions for meta-RL or optimizee
distributions for learned optimizers fit the same interface. A family

* declares its options (the keys of the config's ``task:`` section) as an :class:`Options`
  dataclass whose fields carry their own help text;
* knows its context without loading anything (:meth:`TaskFamily.example_shape`, the ``kind`` of
  its tasks) and, once a split is loaded, the :class:`~metakit.algorithms.BuildContext` of the
  algorithm (:meth:`TaskFamily.context`);
* makes a seeded training sampler (:meth:`TaskFamily.train_sampler`: ``sample(meta_batch)``,
  ``state_dict()``, ``load_state_dict()``) and a fixed, seeded evaluation set of a split
  (:meth:`TaskFamily.eval_set`: the same seed gives the same tasks, for every method);
* scores an adapted learner (:meth:`TaskFamily.score`: one value per task of a batch, the
  ``metric`` it names, ``higher_is_better``).

A family registers under a short name with :func:`register_family`; ``task.family`` in a
config names it. Algorithms declare which ``kind`` of tasks they solve
(:attr:`metakit.algorithms.Algorithm.task_kinds`); a config that pairs an algorithm with a
family of another kind is refused when it is read. ``docs/task_families.md`` shows how to add
a family.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, TypeVar

import torch
from torch import Tensor

from ..options import ConfigError, Options
from ..registry import Registry

__all__ = ["BuildContext", "TaskFamily", "NonFiniteOutputError", "checked_predictions", "register_family", "get_family", "available_families", "SPLITS"]

@dataclass(frozen=True)
class BuildContext:
    """What an algorithm is built for: the family's context (:meth:`TaskFamily.context`).

    Attributes:
        ways: classes per training episode (``None`` for regression).
        example_shape: shape of one input example, e.g. ``(1, 28, 28)``.
        num_train_classes: classes in the training split (``None`` for task families such as
            sinusoids); used by non-episodic baselines that pre-train a classifier.
        observation_space, action_space: the ``gymnasium`` spaces of environment tasks
            (:mod:`metakit.tasks.rl`; ``None`` otherwise).
        label_code: ``(positions, alphabet)`` of the labels a sequence model reads and writes
            (:mod:`metakit.tasks.sequence`); ``None`` for other families.
    """

    ways: int | None
    example_shape: tuple[int, ...]
    num_train_classes: int | None = None
    observation_space: Any = None
    action_space: Any = None
    label_code: tuple[int, int] | None = None


#: the role names a family resolves to its own splits (a family may accept other names too)
SPLITS = ("train", "val", "test")


class TaskFamily:
    """Base class of task families; see the module docstring.

    Class attributes a family sets:
        name: registry name (set by :func:`register_family`).
        kind: the protocol of its tasks, which algorithms declare support for:
            ``"classification"`` (episodes with integer labels and ``ways``) or
            ``"regression"`` (real-valued targets, ``ways=None``).
        metric: name of the per-task score (``"accuracy"``, ``"mse"``...).
        higher_is_better: the direction of ``metric``.
        percent: ``metric`` is a fraction shown as a percentage.
        Options: the :class:`~metakit.options.Options` dataclass of its config keys.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    metric: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    percent: ClassVar[bool] = False
    Options: ClassVar[type[Options]] = Options

    def __init__(self, options: Options) -> None:
        self.options = options

    # -- configuration ------------------------------------------------------------------------
    @classmethod
    def from_options(cls, raw: Mapping[str, Any], all_keys: Sequence[str] = ()) -> "TaskFamily":
        """Build from the keys of the ``task:`` section (without ``family``); errors name the key."""
        return cls(cls.Options.from_mapping(raw, all_keys, owner=f"task.family={cls.name}"))

    @classmethod
    def option_classes(cls) -> list[tuple[str, type[Options]]]:
        """``(heading, Options class)`` of every group of keys, for ``metakit train --help``."""
        return [("", cls.Options)]

    def to_dict(self) -> dict[str, Any]:
        """The options as plain values (``config.yaml`` rebuilds the same family from them)."""
        return self.options.to_dict()

    def check_sizes(self, section: str, ways: int | None, shots: int, queries: int) -> None:
        """Raise :class:`ConfigError` if ``section``'s episode sizes do not fit the family."""
        if self.kind == "classification" and ways is None:
            raise ConfigError(
                f"{section}.ways is required for task.family={self.name} (classes per episode, e.g. {section}.ways=5)"
            )
        if self.kind != "classification" and ways is not None:
            raise ConfigError(
                f"{section}.ways={ways} but task.family={self.name} gives {self.kind} tasks, which have no "
                f"classes; set {section}.ways=null"
            )

    def check_validation(self, val_episodes: int) -> None:
        """Raise :class:`ConfigError` if the run validates but the family has no validation split."""

    def describe(self) -> str:
        """A short label of the tasks for titles and reports, e.g. ``omniglot (vinyals)``."""
        return self.name

    def episode_text(self, ways: int | None, shots: int, queries: int) -> str | None:
        """How reports describe one task of these sizes (``None``: the default ``5-way 1-shot...`` text)."""
        return None

    def record(self) -> dict[str, Any]:
        """Keys that identify the tasks in an evaluation record (``dataset``, ``protocol``)."""
        return {"dataset": self.name, "protocol": None}

    # -- what the algorithm is built for ------------------------------------------------------
    def example_shape(self) -> tuple[int, ...]:
        """Shape of one input example, known from the options alone."""
        raise NotImplementedError

    def split_name(self, split: str) -> str:
        """The family's own name of ``split`` (``train``/``val``/``test`` or a name it knows)."""
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is not known for task.family={self.name}; use train, val or test")
        return split

    def load(self, split: str, *, progress: bool = False) -> Any:
        """The data of ``split`` that :meth:`train_sampler` and :meth:`eval_set` draw from
        (``None`` for families that generate their tasks)."""
        self.split_name(split)
        return None

    def context(self, ways: int | None, data: Any) -> BuildContext:
        """The :class:`~metakit.algorithms.BuildContext` of the training split ``data``."""
        return BuildContext(ways=ways, example_shape=self.example_shape(), num_train_classes=None)

    def config_context(self, ways: int | None) -> BuildContext:
        """The context known from the options alone, without loading data (a config is checked with it:
        the algorithm's model defaults and the model's output are tried on it)."""
        return BuildContext(ways=ways, example_shape=self.example_shape())

    def restore_context(self, context: BuildContext) -> BuildContext:
        """The context of a run rebuilt from its checkpoint's plain record (:func:`~metakit.runtime.run.context_record`):
        a family adds what the record cannot hold (the spaces of environment tasks)."""
        return context

    def check_model_output(self, shape: tuple[int, ...]) -> str | None:
        """Why a model whose output for a batch of examples has ``shape`` cannot solve these tasks
        (``None`` if it can). Called when a config is read, on a model built on the meta device."""
        return None

    def data_meta(self, data: Any) -> dict[str, Any]:
        """Plain metadata of the training data stored in checkpoints (e.g. image preprocessing)."""
        return {}

    # -- tasks --------------------------------------------------------------------------------
    def train_sampler(self, data: Any, *, ways: int | None, shots: int, queries: int, seed: int) -> Any:
        """The seeded source of training tasks (``sample(meta_batch)``, ``state_dict()``...)."""
        raise NotImplementedError

    def eval_set(self, split: str, data: Any, *, ways: int | None, shots: int, queries: int, episodes: int,
                 seed: int, batch_size: int = 50) -> Iterable[Any]:
        """A fixed evaluation set of ``split``: the same arguments give the same tasks."""
        raise NotImplementedError

    def score(self, algorithm: Any, batch: Any) -> Tensor:
        """One ``metric`` value per task of ``batch`` for ``algorithm`` (a ``[B]`` float64 tensor)."""
        raise NotImplementedError

    def score_details(self, algorithm: Any, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """:meth:`score` and optional breakdowns of it, ``{name: [B] float64}`` (``nan`` for a task
        without that value), e.g. the accuracy at the k-th instance of a class in a sequence. The
        evaluation reports every breakdown's mean and 95% interval beside the metric. Default: none."""
        return self.score(algorithm, batch), {}


class NonFiniteOutputError(ValueError):
    """The evaluated model produced NaN or inf (predictions or per-episode values)."""


def checked_predictions(algorithm: Any, batch: Any) -> Tensor:
    """``algorithm.predict(batch)``; a :class:`NonFiniteOutputError` naming the first non-finite value otherwise.

    An argmax over NaN scores would silently pick a class: a NaN model must not score "at chance".
    """
    out = algorithm.predict(batch)
    bad = ~torch.isfinite(out)
    if bool(bad.any()):
        n = int(bad.sum())
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise NonFiniteOutputError(
            f"{type(algorithm).__name__}.predict returned {n} non-finite value{'s' if n > 1 else ''} "
            f"(of {out.numel()}), first in task {first[0]}: {float(out[first])}; the model's weights are "
            "probably NaN or inf. Evaluate an earlier checkpoint (--checkpoint), or retrain with a lower optim.lr"
        )
    return out


F = TypeVar("F", bound=type[TaskFamily])
_FAMILIES: Registry[type[TaskFamily]] = Registry("task family", "task.family", required=("kind", "metric"))


def register_family(name: str) -> Callable[[F], F]:
    """Class decorator: make a task family buildable by ``task.family: name`` in configs."""
    return _FAMILIES.register(name)  # type: ignore[return-value]


def available_families(private: bool = False) -> list[str]:
    """Names of the registered families (those starting with ``_`` only with ``private``)."""
    return _FAMILIES.names(private)


def get_family(name: str) -> type[TaskFamily]:
    """The registered family ``name``; an unknown name is a :class:`ConfigError` with a suggestion."""
    return _FAMILIES.get(name)
