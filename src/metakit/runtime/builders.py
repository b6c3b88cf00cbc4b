"""Build the pieces of a run from a :class:`~metakit.runtime.config.Config`.

``data`` -> datasets (:func:`build_dataset`), the training sampler (:func:`build_sampler`) and
fixed evaluation episodes (:func:`build_episodes`); ``model`` + ``algorithm`` -> the algorithm
(:func:`build_algorithm`); ``optim`` -> the outer optimizer and schedule
(:func:`build_optimizer`, :func:`build_scheduler`).

Resolution (:func:`resolve_config`): before a run starts, the model and algorithm options are
made explicit -- the keyword defaults of the backbone, then what the algorithm asks for the task
at hand (:meth:`~metakit.algorithms.Algorithm.model_defaults`, e.g. a head of ``ways``
outputs), then the user's options, which always win -- so that the ``config.yaml`` written into
the run folder rebuilds exactly the same model.

Seeds: the training episodes come from ``run.seed``; the fixed validation and test episodes
from ``eval.seed``. Classification splits hold different classes, so the same seed is used for
all of them. Sinusoid tasks have no splits, so each "split" gets its own derived seed
(:func:`episode_seed`), which keeps validation, test and training tasks apart.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from ..algorithms import Algorithm, BuildContext, get_algorithm
from ..datasets.base import ClassIndexedDataset
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
    "episode_seed",
    "trainable_parameters",
]

#: sinusoid tasks: offset added to eval.seed per split (training tasks use run.seed)
_SINUSOID_SEED_OFFSETS = {"val": 1 << 21, "test": 1 << 20}
_PLAIN = (type(None), bool, int, float, str)


def _split_name(config: Config, split: str) -> str:
    """``"train"|"val"|"test"`` (the config's splits) or a dataset split name given directly."""
    d = config.data
    if d.dataset == "sinusoid":
        if split not in ("train", "val", "test"):
            raise ValueError(f"split={split!r} is not known for sinusoid tasks; use train, val or test")
        return split
    mapping = {"train": d.train_split, "val": d.val_split, "test": d.test_split}
    name = mapping.get(split, split)
    if name is None:
        raise ValueError(
            f"split={split!r}: data.{split}_split is null (data.protocol={d.protocol} has no {split} split); "
            "name a split of the dataset instead"
        )
    return name


def build_dataset(config: Config, split: str, *, progress: bool = False) -> ClassIndexedDataset | None:
    """The dataset of ``split`` (``train``/``val``/``test`` or a split name); ``None`` for sinusoid."""
    d = config.data
    if d.dataset == "sinusoid":
        _split_name(config, split)
        return None
    name = _split_name(config, split)
    if d.dataset == "omniglot":
        from ..datasets import Omniglot

        return Omniglot(
            d.root,  # type: ignore[arg-type]
            protocol=d.protocol,  # type: ignore[arg-type]
            split=name,
            image_size=d.image_size,  # type: ignore[arg-type]
            download=d.download,
            cache_dir=d.cache_dir,
            progress=progress,
        )
    if d.dataset == "folder":
        from pathlib import Path

        from ..datasets import ImageFolder

        folder = Path(d.root) / name  # type: ignore[arg-type]
        if not folder.is_dir():
            raise FileNotFoundError(
                f"data.root={d.root!r} has no folder {name!r} for the {split} split; a folder dataset is "
                "ROOT/<split>/<class>/<image> (or set data.{train,val,test}_split to the folder names)"
            )
        return ImageFolder(folder, image_size=d.image_size, channels=d.channels, invert=d.invert)  # type: ignore[arg-type]
    raise ValueError(f"data.dataset={d.dataset!r} is not known")  # pragma: no cover - validated by the config


def _sinusoid(shots: int, queries: int, seed: int) -> Any:
    from ..tasks import SinusoidTasks  # type: ignore[attr-defined]

    return SinusoidTasks(shots=shots, queries=queries, seed=seed)


def build_sampler(config: Config, dataset: ClassIndexedDataset | None) -> Any:
    """The training task source: ``.sample(meta_batch) -> EpisodeBatch`` plus ``state_dict()``."""
    t = config.train
    if config.data.dataset == "sinusoid":
        return _sinusoid(t.shots, t.queries, config.run.seed)
    from ..tasks.sampler import EpisodeSampler

    if dataset is None:
        raise ValueError(f"data.dataset={config.data.dataset} needs a dataset to sample from")
    return EpisodeSampler(dataset, t.ways, t.shots, t.queries, seed=config.run.seed)  # type: ignore[arg-type]


def episode_seed(config: Config, split: str, seed: int | None = None) -> int:
    """Seed of the fixed episodes of ``split`` (``eval.seed``, made distinct per split for sinusoids)."""
    base = config.eval.seed if seed is None else seed
    if config.data.dataset == "sinusoid":
        return base + _SINUSOID_SEED_OFFSETS.get(split, 0)
    return base


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
    dataset: ClassIndexedDataset | None = None,
) -> Iterable[Any]:
    """Fixed, seeded evaluation episodes of ``split`` (an iterable of ``EpisodeBatch``).

    Sizes default to the ``eval`` section; ``episodes`` defaults to ``eval.val_episodes`` for
    ``split="val"`` and ``eval.test_episodes`` otherwise. Pass ``dataset`` to reuse a loaded one.
    """
    e = config.eval
    shots = e.shots if shots is None else shots
    queries = e.queries if queries is None else queries
    if episodes is None:
        episodes = e.val_episodes if split == "val" else e.test_episodes
    s = episode_seed(config, split, seed)
    if config.data.dataset == "sinusoid":
        if ways is not None:
            raise ValueError(f"ways={ways} but sinusoid tasks are regression tasks (no classes); leave ways unset")
        return _sinusoid(shots, queries, s).fixed(episodes, seed=s, batch_size=batch_size)  # type: ignore[arg-type]
    from ..tasks.sampler import FixedEpisodes

    ways = e.ways if ways is None else ways
    if dataset is None:
        dataset = build_dataset(config, split)
    return FixedEpisodes(dataset, ways, shots, queries, episodes, seed=s, batch_size=batch_size)  # type: ignore[arg-type]


def build_context(config: Config, train_dataset: ClassIndexedDataset | None, sampler: Any = None) -> BuildContext:
    """What the algorithm's builder knows about the data (ways, example shape, training classes)."""
    if train_dataset is not None:
        shape = tuple(train_dataset.example_shape)
        classes = train_dataset.num_classes
    else:
        shape = tuple(getattr(sampler, "example_shape", (1,)))
        classes = None
    return BuildContext(ways=config.train.ways, example_shape=shape, num_train_classes=classes)


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
    return None


def lr_of(optimizer: torch.optim.Optimizer) -> float:
    """Current learning rate of the first parameter group."""
    lr = optimizer.param_groups[0]["lr"]
    return float(lr) if not isinstance(lr, torch.Tensor) else float(lr.item())
