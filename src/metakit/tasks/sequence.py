"""Santoro et al.'s sequence protocol: labelled examples shown one at a time, the label one step late.

Santoro, Bartunov, Botvinick, Wierstra & Lillicrap, "Meta-learning with memory-augmented neural
networks", ICML 2016, section 4: an episode draws ``classes_per_episode`` classes of a split and
``instances_per_class`` examples of each, shuffles them into a sequence of ``episode_length``
steps (default: all of them) and shows the learner, at step ``t``, the image ``x_t`` together with
the label of the *previous* step, ``y_{t-1}`` (a zero label at ``t = 0``). The learner predicts
``y_t`` at every step; it can only be right about a class from its second instance on, by
remembering the pairing of image and label it saw earlier in the episode. The classes and the
labels they get are drawn anew for every episode.

Labels (``task.labels``):

* ``one_hot``: class ``c`` of an episode is label ``c`` of ``classes_per_episode`` (the
  classes themselves are drawn in random order);
* ``string``: every class gets a distinct random five-character string over an alphabet of
  five characters (3,125 possible labels); the input is the five one-hot characters side by
  side, the output five 5-way softmaxes, and a prediction is right when all five characters are.

Both are a *label code* of ``positions x alphabet`` (``1 x classes`` or ``5 x 5``), in
``SequenceBatch.codes``; :func:`label_inputs` builds the step-delayed input from it.

Augmentation (``task.augment``; train and evaluation episodes alike, as the paper augments its
held-out classes too): each class of an episode is rotated by a random multiple of 90 degrees
(the paper's "new classes through rotations"), and every example is rotated by a uniform random
angle in ``+-max_rotation`` degrees and translated by a uniform random offset in
``+-max_shift`` pixels (bilinear resampling, empty border; the paper states "random translations
and rotations" without their ranges, so these two ranges are this implementation's choice).

The images come from the classification family's dataset sources (``task.dataset``: omniglot,
folder, ...), resized to ``image_size`` (20, as in the paper). Splits hold disjoint classes
(omniglot: the vinyals split trains on 1,028 classes, validates on 172 and tests on 423 held-out
ones; the paper trains on 1,200 and tests on the same 423).

Score: the per-episode accuracy over all steps, and the accuracy at the ``k``-th instance of a
class (``instance_1`` .. ``instance_{instances_per_class}``, what the paper's Table 1 reports),
returned by :meth:`SequenceFamily.score_details`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from ..datasets.base import ClassIndexedDataset
from ..options import ConfigError, Options, option, suggest
from .classification import ClassificationFamily, ClassificationOptions, _SOURCES
from .family import BuildContext, TaskFamily, checked_predictions, register_family
from .sampler import _check_generator_state, _make_generator, _positive_int, _seed

__all__ = [
    "SequenceBatch",
    "SequenceOptions",
    "SequenceFamily",
    "SequenceSampler",
    "FixedSequences",
    "label_code_shape",
    "label_inputs",
    "instance_index",
    "code_correct",
]

#: positions and alphabet of the five-character string labels of the paper
STRING_POSITIONS, STRING_ALPHABET = 5, 5
# Fixed sequences are drawn in chunks of this many episodes, so that they do not depend on the
# iteration batch size. Never change it: it would change every fixed evaluation set.
_FIXED_CHUNK = 16
#: the defaults of train/eval.shots and .queries, which sequence episodes do not use (other values are refused)
_UNUSED_SIZES = {"shots": 1, "queries": 15}


def label_code_shape(labels: str, classes: int) -> tuple[int, int]:
    """``(positions, alphabet)`` of a label encoding: ``(1, classes)`` one-hot, ``(5, 5)`` strings."""
    if labels == "one_hot":
        return (1, classes)
    if labels == "string":
        return (STRING_POSITIONS, STRING_ALPHABET)
    raise ValueError(f"labels={labels!r} is not a label encoding; use one_hot or string")


@dataclass(frozen=True)
class SequenceBatch:
    """``B`` episodes of the sequence protocol, stacked on a leading dimension.

    Attributes:
        x: ``[B, T, *example_shape]`` float32 images in the order they are shown.
        labels: ``[B, T]`` int64 class of every step, ``0 .. ways-1``.
        codes: ``[B, ways, positions]`` int64 label code of every class (characters ``0 .. alphabet-1``).
        alphabet: size of the code's alphabet.
        ways: classes per episode.
    """

    x: Tensor
    labels: Tensor
    codes: Tensor
    alphabet: int
    ways: int

    def __post_init__(self) -> None:
        if self.x.dim() < 3 or tuple(self.labels.shape) != tuple(self.x.shape[:2]):
            raise ValueError(
                f"x has shape {tuple(self.x.shape)} and labels {tuple(self.labels.shape)}; expected x [B, T, ...] "
                "and labels [B, T]"
            )
        if self.codes.dim() != 3 or self.codes.shape[:2] != (self.x.shape[0], self.ways):
            raise ValueError(f"codes has shape {tuple(self.codes.shape)}; expected [B, ways={self.ways}, positions]")
        if self.labels.numel() and (int(self.labels.min()) < 0 or int(self.labels.max()) >= self.ways):
            raise ValueError(
                f"labels hold {int(self.labels.min())}..{int(self.labels.max())} but ways={self.ways}: "
                f"labels must be 0..{self.ways - 1}"
            )
        if self.codes.numel() and (int(self.codes.min()) < 0 or int(self.codes.max()) >= self.alphabet):
            raise ValueError(f"codes hold characters outside 0..{self.alphabet - 1} (alphabet={self.alphabet})")

    @property
    def num_tasks(self) -> int:
        return self.x.shape[0]

    @property
    def steps(self) -> int:
        return self.x.shape[1]

    @property
    def positions(self) -> int:
        return self.codes.shape[-1]

    def targets(self) -> Tensor:
        """``[B, T, positions]``: the code of every step's label (what the learner must output)."""
        return self.codes.gather(1, self.labels.unsqueeze(-1).expand(-1, -1, self.positions))

    def to(self, device: torch.device | str | None = None) -> "SequenceBatch":
        return SequenceBatch(self.x.to(device), self.labels.to(device), self.codes.to(device), self.alphabet, self.ways)

    def __len__(self) -> int:
        return self.num_tasks


def one_hot_code(code: Tensor, alphabet: int) -> Tensor:
    """``[..., positions]`` characters -> ``[..., positions * alphabet]`` one-hot characters side by side."""
    return F.one_hot(code, alphabet).flatten(-2).to(torch.float32)


def label_inputs(batch: SequenceBatch) -> Tensor:
    """``[B, T, positions * alphabet]``: at step ``t`` the one-hot code of step ``t-1``'s label, zeros at ``t = 0``."""
    coded = one_hot_code(batch.targets(), batch.alphabet)
    return torch.cat([torch.zeros_like(coded[:, :1]), coded[:, :-1]], dim=1)


def instance_index(labels: Tensor) -> Tensor:
    """``[B, T]`` 0-based count of earlier steps with the same label (0 at a class's first instance)."""
    ways = int(labels.max()) + 1 if labels.numel() else 1
    seen = F.one_hot(labels, ways).cumsum(1) - 1
    return seen.gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def code_correct(logits: Tensor, batch: SequenceBatch) -> Tensor:
    """``[B, T]`` bool: every position's argmax of ``logits`` ``[B, T, positions, alphabet]`` is the target."""
    return (logits.argmax(-1) == batch.targets()).all(-1)


# -- drawing episodes -----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Shape:
    classes: int
    instances: int
    length: int
    labels: str
    augment: bool
    max_rotation: float
    max_shift: float


def _draw(data: ClassIndexedDataset, shape: _Shape, batch: int, g: torch.Generator) -> SequenceBatch:
    """``batch`` episodes. The random draws are made episode by episode (classes, instances, order,
    augmentation parameters, string labels), so a generator state gives the same episodes at any
    batch size; the images are then gathered and augmented for the whole batch at once."""
    counts = torch.as_tensor(data.counts)
    offsets = torch.as_tensor(data.offsets)
    positions, alphabet = label_code_shape(shape.labels, shape.classes)
    indices, ys, codes, quarters, angles, shifts = [], [], [], [], [], []
    for _ in range(batch):
        classes = torch.randperm(data.num_classes, generator=g)[: shape.classes]
        picks = [torch.randperm(int(counts[c]), generator=g)[: shape.instances] + offsets[c] for c in classes]
        index = torch.stack(picks)  # [classes, instances]
        label = torch.arange(shape.classes).unsqueeze(1).expand_as(index)
        order = torch.randperm(index.numel(), generator=g)[: shape.length]
        y = label.flatten()[order]
        if shape.augment:
            quarter, angle, shift = _augment_draws(y, shape, data.example_shape[-1], g)
            quarters.append(quarter)
            angles.append(angle)
            shifts.append(shift)
        if shape.labels == "string":
            words = torch.randperm(alphabet**positions, generator=g)[: shape.classes]
            powers = alphabet ** torch.arange(positions - 1, -1, -1)
            code = (words.unsqueeze(1) // powers) % alphabet
        else:
            code = torch.arange(shape.classes).unsqueeze(1)
        indices.append(index.flatten()[order])
        ys.append(y)
        codes.append(code)
    x = data.to_float(data.data[torch.cat(indices)])  # [batch * length, *example_shape]
    if shape.augment:
        x = _augment_images(x, torch.cat(quarters), torch.cat(angles), torch.cat(shifts))
    return SequenceBatch(x.unflatten(0, (batch, -1)), torch.stack(ys), torch.stack(codes), alphabet, shape.classes)


def _augment_draws(y: Tensor, shape: _Shape, size: int, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """One episode's augmentation parameters for its labels ``y`` ``[T]``: a multiple of 90 degrees
    per class, and per example an angle in radians and a shift in ``[-1, 1]`` grid units."""
    quarter = torch.randint(0, 4, (shape.classes,), generator=g)[y]
    n = y.shape[0]
    angle = (torch.rand(n, generator=g) * 2 - 1) * math.radians(shape.max_rotation)
    shift = (torch.rand(n, 2, generator=g) * 2 - 1) * (2 * shape.max_shift / size)
    return quarter, angle, shift


def _augment_images(x: Tensor, quarter: Tensor, angle: Tensor, shift: Tensor) -> Tensor:
    """Rotate images ``[n, C, H, W]`` by ``quarter`` x 90 degrees, then by ``angle`` and translate by
    ``shift`` (bilinear resampling, empty border)."""
    x = x.clone()
    for k in range(1, 4):
        at = (quarter == k).nonzero().squeeze(1)
        if at.numel():
            x[at] = torch.rot90(x[at], k, dims=(-2, -1))
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], -1), torch.stack([sin, cos, shift[:, 1]], -1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _check_fits(data: ClassIndexedDataset, shape: _Shape) -> None:
    if shape.classes > data.num_classes:
        raise ValueError(
            f"task.classes_per_episode={shape.classes} but the split {data.name!r} has only {data.num_classes} classes; "
            "lower task.classes_per_episode or use a split with more classes"
        )
    fewest = int(torch.as_tensor(data.counts).min())
    if shape.instances > fewest:
        raise ValueError(
            f"task.instances_per_class={shape.instances} but a class of the split {data.name!r} has only {fewest} "
            "examples; lower task.instances_per_class"
        )


class SequenceSampler:
    """Seeded source of training sequences (``sample(B)``, ``state_dict()``, ``load_state_dict()``)."""

    def __init__(self, data: ClassIndexedDataset, shape: _Shape, seed: int = 0) -> None:
        _check_fits(data, shape)
        self.data, self.shape, self.seed = data, shape, _seed(seed)
        self._generator = _make_generator(self.seed)

    def sample(self, batch_size: int) -> SequenceBatch:
        return _draw(self.data, self.shape, _positive_int("batch_size", batch_size, "episodes per batch"), self._generator)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self._generator.get_state(), "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or "generator" not in state:
            raise ValueError("state must be a dict from SequenceSampler.state_dict()")
        self._generator.set_state(_check_generator_state(state["generator"], "SequenceSampler"))
        self.seed = int(state.get("seed", self.seed))


class FixedSequences:
    """A fixed, seeded set of evaluation sequences: the same arguments give the same episodes."""

    def __init__(self, data: ClassIndexedDataset, shape: _Shape, episodes: int, seed: int = 0, batch_size: int = 50) -> None:
        _check_fits(data, shape)
        self.num_tasks = _positive_int("episodes", episodes, "number of evaluation episodes")
        self.batch_size = _positive_int("batch_size", batch_size, "episodes per batch")
        g = _make_generator(_seed(seed))
        chunks = [_draw(data, shape, min(_FIXED_CHUNK, self.num_tasks - s), g) for s in range(0, self.num_tasks, _FIXED_CHUNK)]
        self._x = torch.cat([c.x for c in chunks])
        self._labels = torch.cat([c.labels for c in chunks])
        self._codes = torch.cat([c.codes for c in chunks])
        self.alphabet, self.ways = chunks[0].alphabet, chunks[0].ways

    def __iter__(self) -> Iterator[SequenceBatch]:
        for s in range(0, self.num_tasks, self.batch_size):
            e = s + self.batch_size
            yield SequenceBatch(self._x[s:e], self._labels[s:e], self._codes[s:e], self.alphabet, self.ways)

    def __len__(self) -> int:
        return -(-self.num_tasks // self.batch_size)


# -- the family -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SequenceOptions(Options):
    """The episodes of the sequence protocol (Santoro et al. 2016's one-hot 5-class setting by default)."""

    section: ClassVar[str] = "task"

    classes_per_episode: int = option(5, "sequence: classes per episode (the paper: 5 or 15)", ge=1)
    instances_per_class: int = option(10, "sequence: examples drawn per class (the paper: 10)", ge=1)
    episode_length: int | None = option(
        None, "sequence: steps per episode, at most classes x instances (default: all of them, 50 for 5 x 10)", ge=1
    )
    labels: str = option("one_hot", "sequence: label encoding, one_hot or string (five characters of five)",
                         choices=("one_hot", "string"))
    augment: bool = option(True, "sequence: rotate each class by k x 90 degrees and each example slightly (see max_rotation, max_shift)")
    max_rotation: float = option(10.0, "sequence: largest per-example rotation in degrees (augment)", ge=0, le=180)
    max_shift: float = option(2.0, "sequence: largest per-example translation in pixels (augment)", ge=0)

    def _resolve(self) -> None:
        total = self.classes_per_episode * self.instances_per_class
        if self.episode_length is None:
            self._set("episode_length", total)
        elif self.episode_length > total:
            raise ConfigError(
                f"task.episode_length={self.episode_length} but an episode holds only classes_per_episode x "
                f"instances_per_class = {total} examples; lower task.episode_length or raise task.instances_per_class"
            )
        if self.labels == "string" and self.classes_per_episode > STRING_ALPHABET**STRING_POSITIONS:
            raise ConfigError(
                f"task.classes_per_episode={self.classes_per_episode} but there are only "
                f"{STRING_ALPHABET**STRING_POSITIONS} distinct string labels; lower it"
            )


@register_family("sequence")
class SequenceFamily(TaskFamily):
    """Santoro et al.'s sequence protocol over a classification dataset source (see the module docstring)."""

    kind = "sequence"
    metric = "accuracy"  # higher is better (the default)
    percent = True
    Options = SequenceOptions

    def __init__(self, options: Options, images: ClassificationFamily | None = None) -> None:
        super().__init__(options)
        self.images = images if images is not None else ClassificationFamily.from_options({"image_size": 20, "root": "."})
        o: Any = options
        self.shape = _Shape(o.classes_per_episode, o.instances_per_class, o.episode_length, o.labels, o.augment,
                            o.max_rotation, o.max_shift)

    @classmethod
    def from_options(cls, raw: Mapping[str, Any], all_keys: Sequence[str] = ()) -> "SequenceFamily":
        own = set(SequenceOptions.keys())
        rest = {k: v for k, v in raw.items() if k not in own}
        dataset = rest.get("dataset", "omniglot")
        source = _SOURCES.get(dataset) if isinstance(dataset, str) else None
        valid = sorted(own) + ClassificationOptions.keys() + (source.Options.keys() if source is not None else [])
        for key in rest:
            if key not in valid:
                raise ConfigError(
                    f"unknown config key 'task.{key}' for task.family={cls.name}"
                    f"{suggest(f'task.{key}', [f'task.{k}' for k in valid])}; keys of the task section: family, {', '.join(valid)}"
                )
        rest.setdefault("image_size", 20)
        images = ClassificationFamily.from_options(rest, all_keys)
        return cls(SequenceOptions.from_mapping({k: v for k, v in raw.items() if k in own}, all_keys,
                                                owner=f"task.family={cls.name}"), images)

    @classmethod
    def option_classes(cls) -> list[tuple[str, type[Options]]]:
        return [("", SequenceOptions)] + ClassificationFamily.option_classes()

    def to_dict(self) -> dict[str, Any]:
        return {**self.images.to_dict(), **self.options.to_dict()}

    def check_sizes(self, section: str, ways: int | None, shots: int, queries: int) -> None:
        if ways is not None:
            raise ConfigError(
                f"{section}.ways={ways} but task.family=sequence sets the classes of an episode with "
                f"task.classes_per_episode; set {section}.ways=null (remove it)"
            )
        for name, value in (("shots", shots), ("queries", queries)):
            if value != _UNUSED_SIZES[name]:
                raise ConfigError(
                    f"{section}.{name}={value} does not apply to task.family=sequence (every example is predicted, then "
                    "its label is shown); remove it and set task.instances_per_class / task.episode_length instead"
                )

    def check_validation(self, val_episodes: int) -> None:
        self.images.check_validation(val_episodes)

    def describe(self) -> str:
        s = self.shape
        return f"{self.images.describe()} sequences ({s.classes} classes, {s.length} steps, {s.labels.replace('_', '-')} labels)"

    def record(self) -> dict[str, Any]:
        s = self.shape
        return {**self.images.record(), "classes_per_episode": s.classes, "instances_per_class": s.instances,
                "episode_length": s.length, "labels": s.labels}

    def episode_text(self, ways: int | None, shots: int, queries: int) -> str:
        s = self.shape
        return f"sequences of {s.length} steps, {s.classes} classes x {s.instances} instances, {s.labels.replace('_', '-')} labels"

    def example_shape(self) -> tuple[int, ...]:
        return self.images.example_shape()

    def split_name(self, split: str) -> str:
        return self.images.split_name(split)

    def load(self, split: str, *, progress: bool = False) -> ClassIndexedDataset:
        return self.images.load(split, progress=progress)

    def context(self, ways: int | None, data: Any) -> BuildContext:
        return BuildContext(ways=self.shape.classes, example_shape=tuple(data.example_shape), num_train_classes=data.num_classes,
                            label_code=label_code_shape(self.shape.labels, self.shape.classes))

    def check_model_output(self, shape: tuple[int, ...]) -> str | None:
        if len(shape) != 1:
            return f"a sequence model reads one feature vector per image, so the model must output [features], not {list(shape)}"
        return None

    def data_meta(self, data: Any) -> dict[str, Any]:
        return dict(data.meta)

    def train_sampler(self, data: Any, *, ways: int | None, shots: int, queries: int, seed: int) -> SequenceSampler:
        return SequenceSampler(data, self.shape, seed=seed)

    def eval_set(self, split: str, data: Any, *, ways: int | None, shots: int, queries: int, episodes: int,
                 seed: int, batch_size: int = 50) -> Iterable[SequenceBatch]:
        if ways is not None:
            raise ValueError(f"ways={ways} but sequence episodes take their classes from task.classes_per_episode; leave ways unset")
        for name, value in (("shots", shots), ("queries", queries)):
            if value != _UNUSED_SIZES[name]:
                raise ValueError(
                    f"{name}={value} does not apply to sequence episodes (every example is predicted, then its label is "
                    "shown); leave it unset"
                )
        if data is None:
            data = self.load(split)
        return FixedSequences(data, self.shape, episodes, seed=seed, batch_size=batch_size)

    def score(self, algorithm: Any, batch: SequenceBatch) -> Tensor:
        return self.score_details(algorithm, batch)[0]

    def score_details(self, algorithm: Any, batch: SequenceBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """Per-episode accuracy ``[B]`` and ``{"instance_k": [B]}``: the accuracy at the ``k``-th
        instance of a class (``nan`` in an episode where no class reaches ``k`` instances)."""
        logits = checked_predictions(algorithm, batch)
        expected = (batch.num_tasks, batch.steps, batch.positions, batch.alphabet)
        if tuple(logits.shape) != expected:
            raise ValueError(
                f"{type(algorithm).__name__}.predict returned shape {tuple(logits.shape)}; expected "
                f"[episodes, steps, positions, alphabet] = {list(expected)}"
            )
        correct = code_correct(logits, batch).to(torch.float64)
        inst = instance_index(batch.labels)
        details = {}
        for k in range(self.shape.instances):
            at = (inst == k).to(torch.float64)
            n = at.sum(1)
            details[f"instance_{k + 1}"] = torch.where(n > 0, (correct * at).sum(1) / n.clamp_min(1), torch.nan)
        return correct.mean(1), details
