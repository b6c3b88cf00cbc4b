"""The protocol every meta-learning algorithm in metakit implements.

An algorithm is an ``nn.Module`` that owns its meta-parameters (an encoder, an initialisation,
learned learning rates, a relation module...) and exposes:

``meta_loss(batch) -> (loss, metrics)``
    The differentiable quantity the outer optimizer minimises, averaged over the tasks of an
    :class:`~metakit.tasks.EpisodeBatch`. ``metrics`` maps names to floats (at least
    ``"loss"``; classification methods add ``"accuracy"`` as a fraction 0..1).

``meta_backward(batch) -> metrics``
    What the generic trainer calls: leave the meta-gradient in ``p.grad`` of every
    meta-parameter, ready for any ``torch.optim`` optimizer. The default runs
    ``meta_loss(batch)[0].backward()``. Methods whose outer update is not the gradient of a
    loss (Reptile), or that save memory by back-propagating task by task (MAML), override it;
    the trainer never special-cases an algorithm.

``adapt(support_x, support_y, ways) -> Learner``
    Few-shot use of one task: a learner whose ``predict(query_x)`` returns scores
    ``[Q, ways]`` (logits; higher is more likely) or regression outputs. Training and
    evaluation call the same ``adapt``.

``predict(batch) -> scores``
    Scores ``[B, Q, ways]`` for the queries of every task of a batch. The default calls
    ``adapt`` task by task; metric methods override it with batched code.

Evaluation runs under ``torch.no_grad()``; an ``adapt`` that needs gradients (MAML family)
enables them itself with ``torch.enable_grad()``.

Algorithms register under a short name with :func:`register` so that configs and the command
line can build them. The keyword arguments of ``__init__`` after the model (with type
annotations and defaults) are the algorithm's config; their help text is the ``Args:`` section of
the class docstring, or the class attribute ``option_help`` (``{option: text}``) where an entry
there should not be shown as help. ``task_kinds`` declares the kinds of task families the
algorithm solves. Building from a config goes through two class methods that an algorithm
may override: :meth:`Algorithm.model_defaults` (default backbone options for the task at hand,
e.g. a linear head of ``ways`` outputs for MAML) and :meth:`Algorithm.from_config`;
:meth:`Algorithm.check_config` refuses, when a config is read, settings of its other sections the
algorithm cannot honour (MAML-RL's TRPO step needs plain SGD with rate 1).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, TypeVar, runtime_checkable

import torch
from torch import Tensor, nn

from ..registry import Registry
from ..tasks.episode import EpisodeBatch
from ..tasks.family import BuildContext

__all__ = [
    "Algorithm", "BuildContext", "Learner", "register", "get_algorithm", "available_algorithms", "accuracy",
    "image_model_defaults",
]


@runtime_checkable
class Learner(Protocol):
    """A model adapted to one task."""

    def predict(self, query_x: Tensor) -> Tensor:  # pragma: no cover - protocol
        ...


class Algorithm(nn.Module):
    """Base class; see the module docstring for the protocol."""

    #: registry name, set by :func:`register`
    name: str = ""
    #: the kinds of tasks the algorithm solves (``TaskFamily.kind`` of the families it supports:
    #: "classification" episodes with labels and ways, "regression" with real targets); a config
    #: pairing it with a family of another kind is refused when it is read
    task_kinds: tuple[str, ...] = ("classification",)
    #: options that only say how a new task is learned at test time, never what was trained (e.g.
    #: the Baseline's fine-tuning); ``metakit eval --option KEY=VALUE`` sets them on a trained run
    evaluation_options: tuple[str, ...] = ()

    def set_evaluation_options(self, **options: Any) -> None:
        """Set :attr:`evaluation_options` (checked as the constructor checks them); any other key is an
        error naming the ones there are."""
        unknown = sorted(set(options) - set(self.evaluation_options))
        if unknown:
            have = ", ".join(self.evaluation_options) or "none"
            raise ValueError(
                f"{', '.join(unknown)} is not an evaluation-time option of {type(self).__name__} (those that change "
                f"how a new task is learned, not the trained weights: {have})"
            )
        self._set_evaluation_options(options)

    def _set_evaluation_options(self, options: dict[str, Any]) -> None:
        """Set the options (all among :attr:`evaluation_options`) as attributes; subclasses whose options
        need checking override it."""
        for name, value in options.items():
            setattr(self, name, value)

    @classmethod
    def model_defaults(cls, context: BuildContext) -> dict[str, Any]:
        """Backbone options this algorithm needs for the task at hand (user options win)."""
        return {}

    @classmethod
    def check_config(cls, config: Any) -> None:
        """Refuse a run config whose other sections this algorithm cannot honour (e.g. an outer
        optimizer it needs to be plain SGD): raise ``metakit.options.ConfigError`` naming the key.
        Called when a config is read, after the generic checks; the default accepts every config."""

    @classmethod
    def from_config(cls, model: nn.Module, context: BuildContext, **options: Any) -> "Algorithm":
        """Build from a backbone and the algorithm's config options."""
        return cls(model, **options)

    def meta_loss(self, batch: EpisodeBatch) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError

    def meta_backward(self, batch: EpisodeBatch) -> dict[str, float]:
        loss, metrics = self.meta_loss(batch)
        loss.backward()
        return metrics

    def adapt(self, support_x: Tensor, support_y: Tensor, ways: int | None = None) -> Learner:
        raise NotImplementedError

    def predict(self, batch: EpisodeBatch) -> Tensor:
        outs = []
        for ep in batch:
            learner = self.adapt(ep.support_x, ep.support_y, ep.ways)
            outs.append(learner.predict(ep.query_x))
        return torch.stack(outs)


def accuracy(scores: Tensor, labels: Tensor) -> Tensor:
    """Fraction of correct argmax predictions over the last-but-one dims (``[..., Q]`` -> ``[...]``)."""
    return (scores.argmax(-1) == labels).float().mean(-1)


A = TypeVar("A", bound=type[Algorithm])
_REGISTRY: Registry[type[Algorithm]] = Registry("algorithm", "algorithm.name")


def register(name: str) -> Callable[[A], A]:
    """Class decorator: make an algorithm buildable by ``name`` from configs and the CLI."""
    return _REGISTRY.register(name)  # type: ignore[return-value]


def available_algorithms() -> list[str]:
    """Every registered name (those starting with ``_`` too: tests build them by name)."""
    return _REGISTRY.names(private=True)


def get_algorithm(name: str) -> type[Algorithm]:
    """The algorithm registered as ``name``; a ``ValueError`` (ConfigError) with a suggestion otherwise."""
    return _REGISTRY.get(name)


def image_model_defaults(context: BuildContext) -> dict[str, Any]:
    """Backbone options matching square image examples ``(C, H, H)``: ``in_channels`` and
    ``image_size`` (the backbones of :mod:`metakit.models` size their ``feature_dim`` /
    ``feature_shape`` from them); ``{}`` for other example shapes."""
    shape = tuple(context.example_shape)
    if len(shape) == 3 and shape[1] == shape[2]:
        return {"in_channels": int(shape[0]), "image_size": int(shape[1])}
    return {}
