"""Build the pieces of a run from a :class:`~metakit.runtime.config.Config`.

``task`` -> the task family (``config.family``), which loads a split's data
(:func:`build_dataset`), makes the training sampler (:func:`build_sampler`) and the fixed
evaluation tasks (:func:`build_episodes`); ``model`` + ``algorithm`` -> the algorithm
(:func:`build_algorithm`); ``optim`` -> the outer optimizer and schedule
(:func:`build_optimizer`, :func:`build_scheduler`). Nothing here depends on which family it is.

Resolution (:func:`resolve_config`): before a run starts, the model and algorithm options are
made explicit -- the keyword defaults of the backbone, then what the algorithm asks for the task
at hand (:meth:`~metakit.algorithms.Algorithm.model_defaults`, e.g. a head of ``ways``
outputs), then the user's options, which always win -- so that the ``config.yaml`` written into
the run folder rebuilds exactly the same model.

Seeds: the training tasks come from ``run.seed``; the fixed validation and test tasks from
``eval.seed`` (a family may derive a seed per split from it, see its ``eval_set``).
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from ..algorithms import Algorithm, BuildContext, get_algorithm
from .config import Config, OptimConfig, model_option_specs

__all__ = [
    "build_dataset",
    "build_sampler",
    "build_episodes",
    "build_context",
    "resolve_config",
    "build_model",
    "build_algorithm",
    "build_optimizer",
    "build_scheduler",
    "trainable_parameters",
]

_PLAIN = (type(None), bool, int, float, str)


def _split_name(config: Config, split: str) -> str:
    """The family's name of ``split`` (``"train"|"val"|"test"`` or a split name given directly)."""
    return config.family.split_name(split)


def build_dataset(config: Config, split: str, *, progress: bool = False) -> Any:
    """The data of ``split`` the family draws tasks from (a ``ClassIndexedDataset``; ``None`` for
    families that generate their tasks, such as sinusoids)."""
    return config.family.load(split, progress=progress)


def build_sampler(config: Config, data: Any) -> Any:
    """The training task source: ``.sample(meta_batch) -> EpisodeBatch`` plus ``state_dict()``."""
    t = config.train
    return config.family.train_sampler(data, ways=t.ways, shots=t.shots, queries=t.queries, seed=config.run.seed)


def build_episodes(
    config: Config,
    split: str,
    *,
    ways: int | None = None,
    shots: int | None = None,
    queries: int | None = None,
    episodes: int | None = None,
    seed: int | None = None,
    batch_size: int = 50,
    dataset: Any = None,
) -> Iterable[Any]:
    """Fixed, seeded evaluation tasks of ``split`` (an iterable of ``EpisodeBatch``).

    Sizes default to the ``eval`` section; ``episodes`` defaults to ``eval.val_episodes`` for
    ``split="val"`` and ``eval.test_episodes`` otherwise; ``seed`` to ``eval.seed``. Pass
    ``dataset`` to reuse loaded data.
    """
    e = config.eval
    family = config.family
    if episodes is None:
        episodes = e.val_episodes if split == "val" else e.test_episodes
    return family.eval_set(
        split,
        dataset,
        ways=e.ways if ways is None else ways,
        shots=e.shots if shots is None else shots,  # type: ignore[arg-type]
        queries=e.queries if queries is None else queries,  # type: ignore[arg-type]
        episodes=episodes,
        seed=e.seed if seed is None else seed,
        batch_size=batch_size,
    )


def build_context(config: Config, train_data: Any, sampler: Any = None) -> BuildContext:
    """What the algorithm's builder knows about the tasks (ways, example shape, training classes)."""
    return config.family.context(config.train.ways, train_data)


def _plain_default(v: Any) -> bool:
    if isinstance(v, (list, tuple)):
        return all(_plain_default(x) for x in v)
    return isinstance(v, _PLAIN)


def _model_options(config: Config, context: BuildContext) -> dict[str, Any]:
    cls = get_algorithm(config.algorithm.name)
    defaults = cls.model_defaults(context)
    if not isinstance(defaults, dict):
        raise TypeError(f"{cls.__name__}.model_defaults must return a dict, got {type(defaults).__name__}")
    return {**defaults, **config.model.options}


def resolve_config(config: Config, context: BuildContext) -> Config:
    """``config`` with every model and algorithm option explicit (see the module docstring)."""
    from .config import AlgorithmConfig, ModelConfig, algorithm_option_specs

    model_opts: dict[str, Any] = {
        s.name: s.default
        for s in model_option_specs(config.model.name).values()
        if not s.required and _plain_default(s.default)
    }
    model_opts.update(_model_options(config, context))
    algo_opts: dict[str, Any] = {
        s.name: s.default
        for s in algorithm_option_specs(config.algorithm.name).values()
        if not s.required and _plain_default(s.default)
    }
    algo_opts.update(config.algorithm.options)
    from dataclasses import replace

    return replace(
        config,
        model=ModelConfig(config.model.name, model_opts),
        algorithm=AlgorithmConfig(config.algorithm.name, algo_opts),
    )


def build_model(config: Config, context: BuildContext) -> nn.Module:
    """The backbone (``model.name`` with its options and the algorithm's defaults for the task)."""
    from .. import models

    return models.build_model(config.model.name, **_model_options(config, context))


def build_algorithm(config: Config, context: BuildContext) -> Algorithm:
    """The algorithm around a freshly initialised backbone (uses the global torch RNG)."""
    cls = get_algorithm(config.algorithm.name)
    algorithm = cls.from_config(build_model(config, context), context, **dict(config.algorithm.options))
    if not isinstance(algorithm, Algorithm):
        raise TypeError(f"{cls.__name__}.from_config returned {type(algorithm).__name__}, not an Algorithm")
    return algorithm


def trainable_parameters(algorithm: nn.Module) -> list[nn.Parameter]:
    """The meta-parameters the outer optimizer updates (``requires_grad``), in a fixed order."""
    return [p for p in algorithm.parameters() if p.requires_grad]


def build_optimizer(optim: OptimConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """``torch.optim.Adam`` or ``SGD`` over ``params`` with the ``optim`` settings."""
    if not params:
        raise ValueError(
            "the algorithm has no trainable parameters (none with requires_grad); there is nothing to meta-train"
        )
    if optim.name == "adam":
        return torch.optim.Adam(params, lr=optim.lr, weight_decay=optim.weight_decay)
    return torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)


def build_scheduler(optim: OptimConfig, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
    """The learning-rate schedule, stepped once per outer step (``None`` for ``schedule=none``)."""
    if optim.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=optim.step_size, gamma=optim.gamma)
    if optim.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
    if optim.schedule == "linear":  # lr * (1 - step / total_steps): Reptile's published meta step size
        return torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=0.0, total_iters=max(1, total_steps))
    return None


def lr_of(optimizer: torch.optim.Optimizer) -> float:
    """Current learning rate of the first parameter group."""
    lr = optimizer.param_groups[0]["lr"]
    return float(lr) if not isinstance(lr, torch.Tensor) else float(lr.item())
