"""N-way K-shot classification: the few-shot image classification family.

An episode draws ``ways`` classes of a split, ``shots`` support and ``queries`` query examples
per class, labels ``0..ways-1`` (:class:`~metakit.tasks.EpisodeSampler`; the evaluation
protocol of Vinyals et al. 2016 and Snell et al. 2017). Splits hold disjoint classes, so the
fixed validation and test episodes of every split are drawn with the same seed.

The examples come from any class-indexed dataset; a **dataset source** (a class registered with
:func:`register_source`, chosen by ``task.dataset``) turns the options of the ``task:``
section into the :class:`~metakit.datasets.ClassIndexedDataset` of a split. Two sources ship:
``omniglot`` (:class:`~metakit.datasets.Omniglot`, vinyals or lake protocol) and ``folder``
(an image folder ``ROOT/<split>/<class>/<image>``, :class:`~metakit.datasets.ImageFolder`).

Score: the fraction of a task's queries whose highest score is their label (``accuracy``,
higher is better), the mean of which over fixed episodes is the number the field reports.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, TypeVar

import torch
from torch import Tensor

from ..datasets.base import ClassIndexedDataset
from ..datasets.images import RESAMPLE_FILTERS
from ..options import ConfigError, Options, option, suggest
from ..registry import Registry
from .episode import EpisodeBatch
from .family import BuildContext, TaskFamily, checked_predictions, register_family
from .sampler import EpisodeSampler, FixedEpisodes

__all__ = ["ClassificationFamily", "accuracy_scores", "ClassificationOptions", "DatasetSource", "register_source", "available_sources"]


class DatasetSource:
    """Where the examples of a classification family come from (register with :func:`register_source`).

    Class attributes:
        name: registry name (``task.dataset``), set by :func:`register_source`.
        Options: the source's own keys of the ``task:`` section (an :class:`Options` dataclass).
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[Options]] = Options

    @classmethod
    def default_splits(cls, options: Options) -> tuple[str | None, str | None, str | None]:
        """Names of the (train, val, test) splits when the config does not name them (``None``: none)."""
        return ("train", "val", "test")

    @classmethod
    def example_shape(cls, common: "ClassificationOptions", options: Options) -> tuple[int, ...]:
        """Shape of one example, known without loading: ``(1, image_size, image_size)`` by default."""
        return (1, common.image_size, common.image_size)

    @classmethod
    def load(cls, common: "ClassificationOptions", options: Options, split: str, *, progress: bool) -> ClassIndexedDataset:
        """The dataset of the split named ``split``."""
        raise NotImplementedError

    @classmethod
    def describe(cls, options: Options) -> str:
        return cls.name

    @classmethod
    def protocol(cls, options: Options) -> str | None:
        """The class-split protocol reported with evaluations (``None`` if the source has none)."""
        return None


_SOURCES: Registry[type[DatasetSource]] = Registry("dataset source", "task.dataset")
S = TypeVar("S", bound=type[DatasetSource])


def register_source(name: str) -> Callable[[S], S]:
    """Class decorator: make a dataset source selectable with ``task.dataset: name``."""
    return _SOURCES.register(name)  # type: ignore[return-value]


def available_sources(private: bool = False) -> list[str]:
    """Names of the registered dataset sources (those starting with ``_`` only with ``private``)."""
    return _SOURCES.names(private)


def _absolute(path: str | None) -> str | None:
    return None if path is None else os.path.abspath(os.path.expanduser(path))


# -- the two shipped sources ---------------------------------------------------------------------
_PROTOCOL_SPLITS = {
    # protocol -> (train, val, test); lake has no validation split
    "vinyals": ("train", "val", "test"),
    "lake": ("background", None, "evaluation"),
}


@dataclass(frozen=True)
class OmniglotOptions(Options):
    section: ClassVar[str] = "task"

    protocol: str = option(
        "vinyals",
        "omniglot: class split protocol, vinyals (Vinyals et al. 2016: train/val/test) or lake "
        "(background/evaluation alphabets, no validation split)",
        choices=tuple(_PROTOCOL_SPLITS),
    )
    cache_dir: str | None = option(
        None, "omniglot: folder of the decoded-image cache (default: $METAKIT_CACHE or ~/.cache/metakit)"
    )
    download: bool = option(False, "omniglot: download missing archives into root from the official source")

    def _resolve(self) -> None:
        self._set("cache_dir", _absolute(self.cache_dir))


@register_source("omniglot")
class OmniglotSource(DatasetSource):
    """Omniglot (Lake et al. 2015) through :class:`metakit.datasets.Omniglot`."""

    Options = OmniglotOptions

    @classmethod
    def default_splits(cls, options: Options) -> tuple[str | None, str | None, str | None]:
        return _PROTOCOL_SPLITS[options.protocol]  # type: ignore[attr-defined]

    @classmethod
    def load(cls, common: "ClassificationOptions", options: Options, split: str, *, progress: bool) -> ClassIndexedDataset:
        from ..datasets import Omniglot

        o: Any = options
        return Omniglot(common.root, protocol=o.protocol, split=split, image_size=common.image_size,  # type: ignore[arg-type]
                        download=o.download, cache_dir=o.cache_dir, progress=progress, resample=common.resample)

    @classmethod
    def describe(cls, options: Options) -> str:
        return f"omniglot ({options.protocol})"  # type: ignore[attr-defined]

    @classmethod
    def protocol(cls, options: Options) -> str | None:
        return options.protocol  # type: ignore[attr-defined]


@dataclass(frozen=True)
class FolderOptions(Options):
    section: ClassVar[str] = "task"

    channels: int = option(1, "folder: 1 (grayscale) or 3 (RGB)", choices=(1, 3))
    invert: bool = option(True, "folder: invert the images (dark strokes on white become ink = 1, the Omniglot convention)")


@register_source("folder")
class FolderSource(DatasetSource):
    """An image folder ``ROOT/<split>/<class>/<image>`` through :class:`metakit.datasets.ImageFolder`."""

    Options = FolderOptions

    @classmethod
    def example_shape(cls, common: "ClassificationOptions", options: Options) -> tuple[int, ...]:
        return (options.channels, common.image_size, common.image_size)  # type: ignore[attr-defined]

    @classmethod
    def load(cls, common: "ClassificationOptions", options: Options, split: str, *, progress: bool) -> ClassIndexedDataset:
        from ..datasets import ImageFolder

        folder = Path(common.root) / split  # type: ignore[arg-type]
        if not folder.is_dir():
            raise FileNotFoundError(
                f"task.root={common.root!r} has no folder {split!r}; a folder dataset is ROOT/<split>/<class>/<image> "
                "(or set task.train_split/val_split/test_split to the folder names)"
            )
        o: Any = options
        return ImageFolder(folder, image_size=common.image_size, channels=o.channels, invert=o.invert,
                           resample=common.resample)


# -- the family ----------------------------------------------------------------------------------
RESAMPLE_NAMES = tuple(RESAMPLE_FILTERS)  # the filters task.resample accepts


@dataclass(frozen=True)
class ClassificationOptions(Options):
    """The keys every classification source shares (the source adds its own)."""

    section: ClassVar[str] = "task"

    dataset: str = option("omniglot", "dataset source of the examples: omniglot or folder (ROOT/<split>/<class>/<image>)")
    root: str | None = option(
        None,
        "folder holding the data (omniglot: the official archives images_background.zip and "
        "images_evaluation.zip or their extracted folders; folder: ROOT/<split>/<class>/<image>). "
        "Relative paths are resolved against the current directory and stored absolute",
    )
    train_split: str | None = option(None, "split episodes are trained on (default: the source's, e.g. train; lake: background)")
    val_split: str | None = option(
        None,
        "split of the periodic validation (default: val; lake has none: set eval.val_episodes=0 or name another split)",
    )
    test_split: str | None = option(None, "split `metakit eval` uses by default (default: test; lake: evaluation)")
    image_size: int = option(28, "side of the square images after resizing", ge=4)
    resample: str = option(
        "lanczos",
        "Pillow filter that resizes the raw images to image_size: lanczos (anti-aliased grey levels), nearest "
        "(Omniglot's 1-bit scans stay binary, the images of the published Omniglot code of Prototypical Networks, "
        "MAML, Relation Networks and Reptile), box, bilinear, hamming or bicubic",
        choices=RESAMPLE_NAMES,
    )

    def _resolve(self) -> None:
        _SOURCES.get(self.dataset)  # an unknown source: named, with the closest name
        if self.root is None:
            raise ConfigError(
                f"task.root is required for task.dataset={self.dataset}; set it to the folder holding the data "
                "(e.g. task.root=../shared/data/omniglot)"
            )
        self._set("root", _absolute(self.root))


@register_family("classification")
class ClassificationFamily(TaskFamily):
    """N-way K-shot classification episodes over a class-indexed dataset (see the module docstring)."""

    kind = "classification"
    metric = "accuracy"
    higher_is_better = True
    percent = True
    Options = ClassificationOptions

    def __init__(self, options: Options, source_options: Options | None = None) -> None:
        super().__init__(options)
        self.source = _SOURCES.get(options.dataset)  # type: ignore[attr-defined]
        self.source_options = source_options if source_options is not None else self.source.Options()
        defaults = self.source.default_splits(self.source_options)
        self.splits = {
            role: given if given is not None else default
            for role, given, default in zip(
                ("train", "val", "test"), (options.train_split, options.val_split, options.test_split), defaults  # type: ignore[attr-defined]
            )
        }

    @classmethod
    def from_options(cls, raw: Mapping[str, Any], all_keys: Sequence[str] = ()) -> "ClassificationFamily":
        common_keys = set(ClassificationOptions.keys())
        common = ClassificationOptions.from_mapping({k: v for k, v in raw.items() if k in common_keys}, all_keys, owner=f"task.family={cls.name}")
        source = _SOURCES.get(common.dataset)  # type: ignore[attr-defined]
        rest = {k: v for k, v in raw.items() if k not in common_keys}
        own = source.Options.keys()
        for key in rest:
            if key not in own:
                valid = sorted(common_keys) + own
                raise ConfigError(
                    f"unknown config key 'task.{key}' for task.dataset={source.name}"
                    f"{suggest(f'task.{key}', [f'task.{k}' for k in valid])}; keys of the task section "
                    f"for this dataset: family, {', '.join(valid)}"
                )
        return cls(common, source.Options(**rest))

    @classmethod
    def option_classes(cls) -> list[tuple[str, type[Options]]]:
        return [("", ClassificationOptions)] + [(f"task.dataset={n}", _SOURCES.get(n).Options) for n in available_sources()]

    def to_dict(self) -> dict[str, Any]:
        d = self.options.to_dict()
        d.update(train_split=self.splits["train"], val_split=self.splits["val"], test_split=self.splits["test"])
        return {**d, **self.source_options.to_dict()}

    def check_validation(self, val_episodes: int) -> None:
        if self.splits["val"] is None and val_episodes > 0:
            raise ConfigError(
                f"task.val_split is null ({self.describe()} has no validation split) but "
                f"eval.val_episodes={val_episodes}; set eval.val_episodes=0 or name a split with task.val_split"
            )

    def describe(self) -> str:
        return self.source.describe(self.source_options)

    def record(self) -> dict[str, Any]:
        return {"dataset": self.source.name, "protocol": self.source.protocol(self.source_options)}

    def example_shape(self) -> tuple[int, ...]:
        return self.source.example_shape(self.options, self.source_options)  # type: ignore[arg-type]

    def split_name(self, split: str) -> str:
        name = self.splits.get(split, split)
        if name is None:
            raise ValueError(
                f"split={split!r}: task.{split}_split is null ({self.describe()} has no {split} split); "
                "name a split of the dataset instead"
            )
        return name

    def load(self, split: str, *, progress: bool = False) -> ClassIndexedDataset:
        return self.source.load(self.options, self.source_options, self.split_name(split), progress=progress)  # type: ignore[arg-type]

    def context(self, ways: int | None, data: Any) -> BuildContext:
        return BuildContext(ways=ways, example_shape=tuple(data.example_shape), num_train_classes=data.num_classes)

    def data_meta(self, data: Any) -> dict[str, Any]:
        return dict(data.meta)

    def train_sampler(self, data: Any, *, ways: int | None, shots: int, queries: int, seed: int) -> EpisodeSampler:
        return EpisodeSampler(data, ways, shots, queries, seed=seed)  # type: ignore[arg-type]

    def eval_set(self, split: str, data: Any, *, ways: int | None, shots: int, queries: int, episodes: int,
                 seed: int, batch_size: int = 50) -> Iterable[EpisodeBatch]:
        if ways is None:
            raise ValueError(f"ways is required for task.family={self.name} (classes per episode)")
        if data is None:
            data = self.load(split)
        return FixedEpisodes(data, ways, shots, queries, episodes, seed=seed, batch_size=batch_size)

    def score(self, algorithm: Any, batch: EpisodeBatch) -> Tensor:
        return accuracy_scores(algorithm, batch)


def accuracy_scores(algorithm: Any, batch: EpisodeBatch) -> Tensor:
    """Per-task accuracy ``[B]`` (float64, 0..1) of ``algorithm.predict(batch)`` on a classification batch."""
    scores = checked_predictions(algorithm, batch)
    expected = (batch.num_tasks, batch.query_y.shape[1], batch.ways)
    if tuple(scores.shape) != expected:
        raise ValueError(
            f"{type(algorithm).__name__}.predict returned shape {tuple(scores.shape)}; expected scores "
            f"[tasks, queries, ways] = {list(expected)}"
        )
    return (scores.argmax(-1) == batch.query_y).to(torch.float64).mean(-1)
