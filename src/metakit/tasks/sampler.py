"""N-way K-shot episode sampling from a class-indexed dataset.

:class:`EpisodeSampler` draws batches of classification episodes from a
:class:`~metakit.datasets.ClassIndexedDataset` with vectorised tensor indexing (no Python loop
per episode or per image):

1. ``ways`` distinct classes per episode, uniformly among the *eligible* classes (those with
   at least ``shots + queries`` examples), by sequential sampling without replacement from
   iid candidates (or the ``ways`` largest of iid keys when ``ways`` is close to the number of
   classes). The chosen classes come out in a uniformly random order; label ``i`` of an
   episode is its ``i``-th chosen class, so which dataset class gets which label is random.
   ``EpisodeBatch.classes[b, i]`` is the dataset class of label ``i``.
2. ``shots + queries`` distinct examples of each chosen class, uniformly without replacement;
   the first ``shots`` go to the support set, the others to the query set, so support and
   query never share an example.
3. One gather from ``dataset.data`` (stored dtype, e.g. ``uint8``) per set, then a single
   ``dataset.to_float`` per set.

Layout: support and query are *class-major*: ``support_y[b] == [0]*shots + [1]*shots + ...``
and ``query_y[b] == [0]*queries + [1]*queries + ...``. Algorithms must read the labels, never
infer them from positions (the layout is documented, not part of the contract).

Randomness comes from the sampler's own ``torch.Generator`` (seeded by ``seed``), so equal
seeds give equal episodes, and :meth:`EpisodeSampler.state_dict` /
:meth:`EpisodeSampler.load_state_dict` capture the generator exactly: a run resumed from a
checkpoint draws the same episodes as an uninterrupted one.

:class:`FixedEpisodes` is a fixed, seeded set of evaluation episodes. It stores the example
indices only (not the images) and yields the same episodes whatever the batch size used to
iterate them.
"""

from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import Tensor

from ..datasets.base import ClassIndexedDataset
from .episode import Episode, EpisodeBatch

__all__ = ["EpisodeSampler", "EpisodeIndices", "FixedEpisodes"]

# Random sort keys are float64 (53 random bits), so ties, which would favour lower indices,
# practically never happen (float32 keys tie often among thousands of classes).
# Per-class examples are drawn by sorting random keys over all of a class's examples when the
# largest eligible class has at most this many; above it, with Floyd's algorithm (O(shots +
# queries) per class, whatever the class size). Both are exact; the choice depends only on
# the dataset, never on the batch size.
_DENSE_EXAMPLES_LIMIT = 256

# Fixed episodes are drawn from their generator in chunks of this many episodes, so the
# episodes do not depend on the batch size used to iterate them. Never change it: it would
# change every fixed evaluation set.
_FIXED_CHUNK = 64


def _positive_int(name: str, value: Any, what: str) -> int:
    """``value`` as an int >= 1, or a ValueError naming ``name`` and the value."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name}={value!r} must be a positive int ({what}); got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}={value!r} must be a positive int ({what}); use {name} >= 1")
    return int(value)


def _seed(value: Any) -> int:
    """``value`` as a seed of ``torch.Generator.manual_seed`` (an int in ``[0, 2**64)``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"seed={value!r} must be a non-negative int")
    if value >= 2**64:
        raise ValueError(f"seed={value!r} is too large: torch generators take seeds in 0..2**64 - 1")
    return int(value)


def _make_generator(seed: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g


def _check_generator_state(state: Any, owner: str) -> Tensor:
    if not isinstance(state, Tensor) or state.dtype != torch.uint8 or state.dim() != 1:
        raise ValueError(
            f"{owner} state_dict['generator'] must be the uint8 tensor returned by state_dict(), "
            f"got {type(state).__name__}"
        )
    return state


def _checked_state(state: Any, expected: dict[str, Any], owner: str, settings: tuple[str, ...], holder: str, fix: str) -> Tensor:
    """The generator state of ``state``, a :meth:`state_dict` of ``owner`` to load into an object whose
    own ``state_dict()`` is ``expected``: ``state`` must be a dict with every key of ``expected``
    and the same ``settings`` (saved lists compare as tuples). The messages name the object as
    ``holder`` ("this sampler has") and end with ``fix``, what to do instead."""
    if not isinstance(state, dict):
        raise ValueError(f"state must be a dict from {owner}.state_dict(), got {type(state).__name__}")
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ValueError(f"state is missing {missing}; pass a dict from {owner}.state_dict()")
    for key in settings:
        saved = tuple(state[key]) if isinstance(state[key], (list, tuple)) else state[key]
        if saved != expected[key]:
            raise ValueError(
                f"state was saved with {key}={state[key]!r} but {holder} {key}={expected[key]!r}; {fix}"
            )
    return _check_generator_state(state["generator"], owner)


@dataclass(frozen=True)
class EpisodeIndices:
    """Which dataset examples make up a batch of episodes (global indices into ``dataset.data``).

    Attributes:
        support: ``[B, ways * shots]`` int64, class-major (see the module docstring).
        query: ``[B, ways * queries]`` int64, class-major.
        classes: ``[B, ways]`` int64 dataset class of each label.
    """

    support: Tensor
    query: Tensor
    classes: Tensor

    @property
    def num_tasks(self) -> int:
        return self.support.shape[0]

    def slice(self, start: int, stop: int) -> "EpisodeIndices":
        return EpisodeIndices(self.support[start:stop], self.query[start:stop], self.classes[start:stop])

    @staticmethod
    def concat(parts: list["EpisodeIndices"]) -> "EpisodeIndices":
        return EpisodeIndices(
            torch.cat([p.support for p in parts]),
            torch.cat([p.query for p in parts]),
            torch.cat([p.classes for p in parts]),
        )


def _distinct_classes(
    num: int, ways: int, batch: int, generator: torch.Generator, draws: int | None = None
) -> Tensor:
    """``[batch, ways]`` distinct integers in ``[0, num)`` per row, a uniformly random ordered draw.

    Small ``num / ways``: the ``ways`` largest of ``num`` iid uniform keys (``topk`` returns them
    sorted by key, i.e. in uniformly random order). Large ``num / ways`` (``num >= 4 * ways``):
    ``2 * ways + 8`` iid uniform candidates per row, keeping the first ``ways`` distinct ones in
    order of appearance, which is sequential sampling without replacement; a row with fewer
    distinct candidates is redrawn. The redraw is exact: whether a row has enough distinct
    values does not depend on which values they are (the event is invariant under relabelling),
    so accepted rows stay uniform. This costs O(ways) per row instead of O(num). (``draws``
    overrides the number of candidates, for tests.)
    """
    if num < 4 * ways:
        return torch.rand(batch, num, dtype=torch.float64, generator=generator).topk(ways, dim=1).indices
    draws = 2 * ways + 8 if draws is None else draws
    out = torch.empty(batch, ways, dtype=torch.int64)
    rows = torch.arange(batch)
    while rows.numel():
        cand = torch.randint(0, num, (rows.numel(), draws), generator=generator)
        ordered, order = cand.sort(dim=1, stable=True)  # equal values keep their draw order
        first_sorted = torch.ones_like(cand, dtype=torch.bool)
        first_sorted[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
        first = torch.empty_like(first_sorted).scatter_(1, order, first_sorted)  # first occurrences
        keep = first & (first.cumsum(dim=1) <= ways)
        ok = keep.sum(dim=1) == ways
        if bool(ok.all()):
            out[rows] = cand[keep].view(-1, ways)
            break
        out[rows[ok]] = cand[ok][keep[ok]].view(-1, ways)
        rows = rows[~ok]
    return out


def _distinct_floyd(n: Tensor, m: int, generator: torch.Generator) -> Tensor:
    """``[R, m]`` distinct integers in ``[0, n[r])`` per row, in uniformly random order.

    Floyd's algorithm, vectorised over rows: for ``j = n-m .. n-1`` draw ``t`` uniform in
    ``[0, j]`` and keep ``t`` unless already chosen, else keep ``j``. The result is a uniform
    ``m``-subset; a random permutation of it gives a uniform ordered draw. Needs ``n >= m``.
    """
    rows = n.shape[0]
    out = torch.empty(rows, m, dtype=torch.int64)
    for i in range(m):
        hi = n - m + i  # inclusive upper bound, per row
        u = torch.rand(rows, dtype=torch.float64, generator=generator)
        t = (u * (hi + 1).to(torch.float64)).to(torch.int64).clamp_(max=hi)
        if i:
            seen = (out[:, :i] == t.unsqueeze(1)).any(dim=1)
            t = torch.where(seen, hi, t)
        out[:, i] = t
    order = torch.rand(rows, m, dtype=torch.float64, generator=generator).argsort(dim=1)
    return out.gather(1, order)


class EpisodeSampler:
    """Draws batches of N-way K-shot episodes from a class-indexed dataset.

    Args:
        dataset: the examples, grouped by class (e.g. ``Omniglot(...)`` or
            ``ClassIndexedDataset.from_tensors(data, labels)``).
        ways: classes per episode (N).
        shots: support examples per class (K).
        queries: query examples per class.
        seed: seed of the sampler's own ``torch.Generator``.

    Only classes with at least ``shots + queries`` examples are drawn (see
    :attr:`eligible_classes`); when some are left out, construction emits one ``UserWarning``
    saying how many and why. ``sample(B)`` returns an :class:`EpisodeBatch` with
    ``support_x [B, ways*shots, *shape]`` and ``query_x [B, ways*queries, *shape]`` as float32
    (via ``dataset.to_float``), int64 labels in ``0..ways-1`` laid out class-major, and
    ``classes [B, ways]`` (dataset class of each label).

    Example::

        sampler = EpisodeSampler(train_set, ways=5, shots=1, queries=15, seed=0)
        batch = sampler.sample(32)
        state = sampler.state_dict()      # store in the checkpoint; load_state_dict(state) resumes
    """

    def __init__(self, dataset: ClassIndexedDataset, ways: int, shots: int, queries: int, seed: int = 0) -> None:
        if not isinstance(dataset, ClassIndexedDataset):
            raise TypeError(
                f"dataset must be a ClassIndexedDataset, got {type(dataset).__name__}; wrap tensors with "
                "ClassIndexedDataset.from_tensors(data, labels)"
            )
        self.ways = _positive_int("ways", ways, "classes per episode")
        self.shots = _positive_int("shots", shots, "support examples per class")
        self.queries = _positive_int("queries", queries, "query examples per class")
        self.seed = _seed(seed)
        self.dataset = dataset
        name = dataset.name
        num_classes = int(dataset.counts.numel())
        if num_classes == 0 or len(dataset) == 0:
            raise ValueError(f"the dataset {name!r} is empty ({num_classes} classes, {len(dataset)} examples)")
        per_episode = self.shots + self.queries
        largest = int(dataset.counts.max())
        if per_episode > largest:
            raise ValueError(
                f"shots + queries = {per_episode} (shots={self.shots}, queries={self.queries}) but the largest "
                f"class of the dataset {name!r} has only {largest} examples; lower shots or queries"
            )
        eligible = torch.nonzero(dataset.counts >= per_episode).flatten()
        if self.ways > eligible.numel():
            if eligible.numel() == num_classes:
                limit = f"has only {num_classes} classes; lower ways"
            else:
                limit = (
                    f"has only {eligible.numel()} classes (of {num_classes}) with at least {per_episode} examples "
                    f"(shots + queries); lower ways, shots or queries"
                )
            raise ValueError(f"ways={self.ways} but the dataset {name!r} {limit}")
        left_out = num_classes - eligible.numel()
        if left_out:
            warnings.warn(
                f"{left_out} of the {num_classes} classes of the dataset {name!r} have fewer than {per_episode} "
                f"examples (shots + queries = {self.shots} + {self.queries}) and are left out of every episode; "
                "lower shots or queries to draw them",
                UserWarning,
                stacklevel=2,
            )
        self.eligible_classes: Tensor = eligible
        """Dataset classes that can be drawn (at least ``shots + queries`` examples), int64."""
        self._starts = dataset.offsets[:-1][eligible].contiguous()
        self._counts = dataset.counts[eligible].contiguous()
        self._max_count = int(self._counts.max())
        self._equal_counts = bool((self._counts == self._max_count).all())
        self._generator = _make_generator(self.seed)
        # Labels are the same for every episode (class-major layout); outputs live where the data does.
        device = dataset.data.device
        self._support_labels = torch.arange(self.ways, device=device).repeat_interleave(self.shots)
        self._query_labels = torch.arange(self.ways, device=device).repeat_interleave(self.queries)

    # -- drawing ------------------------------------------------------------------------------
    def sample(self, batch_size: int) -> EpisodeBatch:
        """A batch of ``batch_size`` new episodes (advances the generator)."""
        return self.gather(self.sample_indices(batch_size))

    def sample_indices(self, batch_size: int) -> EpisodeIndices:
        """The dataset indices of ``batch_size`` new episodes, without gathering the examples.

        ``sample(B)`` is ``gather(sample_indices(B))`` and consumes the generator identically.
        """
        b = _positive_int("batch_size", batch_size, "episodes per batch")
        g = self._generator
        ways, per_class = self.ways, self.shots + self.queries
        num_eligible = self._counts.numel()
        # 1. `ways` distinct classes per episode, in uniformly random order (label i = i-th).
        chosen = _distinct_classes(num_eligible, ways, b, g)  # [B, ways] positions in eligible
        # 2. `shots + queries` distinct examples per chosen class, in random order.
        if self._max_count <= _DENSE_EXAMPLES_LIMIT:
            ex_keys = torch.rand(b, ways, self._max_count, dtype=torch.float64, generator=g)
            if not self._equal_counts:  # examples past a class's count sort last
                counts = self._counts[chosen]
                ex_keys.masked_fill_(torch.arange(self._max_count) >= counts.unsqueeze(-1), 2.0)
            local = ex_keys.argsort(dim=2)[:, :, :per_class]
        else:
            counts = self._counts[chosen].reshape(-1)
            local = _distinct_floyd(counts, per_class, g).view(b, ways, per_class)
        index = self._starts[chosen].unsqueeze(-1) + local  # [B, ways, shots + queries]
        support = index[:, :, : self.shots].reshape(b, ways * self.shots)
        query = index[:, :, self.shots :].reshape(b, ways * self.queries)
        return EpisodeIndices(support, query, self.eligible_classes[chosen])

    def gather(self, indices: EpisodeIndices) -> EpisodeBatch:
        """Materialise episodes from their indices (one gather + one ``to_float`` per set)."""
        return _gather(self.dataset, indices, self.ways, self._support_labels, self._query_labels)

    def fixed(self, episodes: int, seed: int, batch_size: int = 50) -> "FixedEpisodes":
        """A fixed evaluation set with this sampler's dataset and sizes (see :class:`FixedEpisodes`).

        Uses its own generator seeded by ``seed``; this sampler's generator is not touched.
        """
        return FixedEpisodes(self.dataset, self.ways, self.shots, self.queries, episodes, seed, batch_size)

    # -- checkpointing ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The exact state of the generator plus the settings it belongs to."""
        return {
            "generator": self._generator.get_state(),
            "seed": self.seed,
            "ways": self.ways,
            "shots": self.shots,
            "queries": self.queries,
            "num_classes": int(self.dataset.counts.numel()),
            "num_examples": len(self.dataset),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the next episodes are the ones the saved sampler would draw."""
        generator = _checked_state(
            state, self.state_dict(), "EpisodeSampler", ("ways", "shots", "queries", "num_classes", "num_examples"),
            "this sampler has", "load it into a sampler built with the same dataset, ways, shots and queries",
        )
        self._generator.set_state(generator)
        self.seed = int(state["seed"])

    def __repr__(self) -> str:
        return (
            f"EpisodeSampler(dataset={self.dataset.name!r}, ways={self.ways}, shots={self.shots}, "
            f"queries={self.queries}, seed={self.seed}, eligible_classes={self.eligible_classes.numel()})"
        )


def _gather(
    dataset: ClassIndexedDataset,
    indices: EpisodeIndices,
    ways: int,
    support_labels: Tensor,
    query_labels: Tensor,
) -> EpisodeBatch:
    data = dataset.data
    b = indices.num_tasks
    shape = tuple(data.shape[1:])
    support_idx, query_idx, classes = indices.support, indices.query, indices.classes
    if support_idx.device != data.device:  # indices are drawn on the CPU; the data may live elsewhere
        support_idx, query_idx, classes = (t.to(data.device) for t in (support_idx, query_idx, classes))
    # Gather in the stored dtype (uint8: 4x less memory traffic), then convert once per set.
    # Support and query are separate buffers: each is contiguous and can be freed on its own.
    support_x = dataset.to_float(data.index_select(0, support_idx.reshape(-1)))
    query_x = dataset.to_float(data.index_select(0, query_idx.reshape(-1)))
    return EpisodeBatch(
        support_x.view(b, support_idx.shape[1], *shape),
        support_labels.repeat(b, 1),
        query_x.view(b, query_idx.shape[1], *shape),
        query_labels.repeat(b, 1),
        ways,
        classes.clone() if classes is indices.classes else classes,
    )


class FixedEpisodes:
    """A fixed, seeded set of evaluation episodes, built once and iterated any number of times.

    Args:
        dataset, ways, shots, queries: as for :class:`EpisodeSampler`.
        episodes: number of episodes (e.g. 600 or 1000 for the standard protocols).
        seed: the episodes are a function of ``(dataset, ways, shots, queries, seed)`` only.
        batch_size: episodes per :class:`EpisodeBatch` when iterating (the last may be smaller);
            it does not change which episodes are in the set.

    Only the example indices are stored (``episodes * ways * (shots + queries)`` int64), and
    the images are gathered batch by batch while iterating. ``len()`` is the number of batches;
    :attr:`num_episodes` the number of episodes. ``fixed[i]`` is episode ``i``.
    """

    def __init__(
        self,
        dataset: ClassIndexedDataset,
        ways: int,
        shots: int,
        queries: int,
        episodes: int,
        seed: int = 0,
        batch_size: int = 50,
    ) -> None:
        self.num_episodes = _positive_int("episodes", episodes, "number of evaluation episodes")
        self.batch_size = _positive_int("batch_size", batch_size, "episodes per batch")
        sampler = EpisodeSampler(dataset, ways, shots, queries, seed=seed)
        parts = []
        for start in range(0, self.num_episodes, _FIXED_CHUNK):
            parts.append(sampler.sample_indices(min(_FIXED_CHUNK, self.num_episodes - start)))
        self.indices: EpisodeIndices = EpisodeIndices.concat(parts)
        """Global dataset indices of every episode (``[episodes, ...]``)."""
        self._sampler = sampler
        self.dataset = dataset
        self.ways, self.shots, self.queries, self.seed = sampler.ways, sampler.shots, sampler.queries, sampler.seed

    def batches(self, batch_size: int | None = None) -> Iterator[EpisodeBatch]:
        """Iterate the episodes in order, ``batch_size`` at a time (default: the one given)."""
        size = self.batch_size if batch_size is None else _positive_int("batch_size", batch_size, "episodes per batch")
        for start in range(0, self.num_episodes, size):
            yield self._sampler.gather(self.indices.slice(start, start + size))

    def __iter__(self) -> Iterator[EpisodeBatch]:
        return self.batches()

    def __len__(self) -> int:
        return -(-self.num_episodes // self.batch_size)

    def __getitem__(self, i: int) -> Episode:
        if not -self.num_episodes <= i < self.num_episodes:
            raise IndexError(f"episode {i} out of range for {self.num_episodes} fixed episodes")
        i %= self.num_episodes
        return self._sampler.gather(self.indices.slice(i, i + 1))[0]

    def __repr__(self) -> str:
        return (
            f"FixedEpisodes(dataset={self.dataset.name!r}, ways={self.ways}, shots={self.shots}, "
            f"queries={self.queries}, episodes={self.num_episodes}, seed={self.seed}, batch_size={self.batch_size})"
        )
