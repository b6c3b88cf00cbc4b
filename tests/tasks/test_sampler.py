import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from metakit.datasets import ClassIndexedDataset
from metakit.tasks import EpisodeBatch, EpisodeIndices, EpisodeSampler, FixedEpisodes
from metakit.tasks import sampler as sampler_module


def _tagged(counts: list[int]) -> ClassIndexedDataset:
    """Float data whose rows say where they come from: [global index, class]."""
    labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    data = torch.stack([torch.arange(len(labels)), labels], dim=1).to(torch.float64)
    return ClassIndexedDataset.from_tensors(data, labels, name="tagged")


def _images(classes: int = 10, per_class: int = 20) -> ClassIndexedDataset:
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (classes * per_class, 1, 28, 28), dtype=torch.uint8, generator=g)
    return ClassIndexedDataset(data, torch.arange(classes + 1) * per_class, name="images")


def _equal(a: EpisodeBatch, b: EpisodeBatch) -> bool:
    return all(
        torch.equal(getattr(a, k), getattr(b, k)) for k in ("support_x", "support_y", "query_x", "query_y", "classes")
    )


def _check_batch(batch: EpisodeBatch, ds: ClassIndexedDataset, b: int, ways: int, shots: int, queries: int) -> None:
    assert batch.num_tasks == b and batch.ways == ways
    assert batch.support_x.shape == (b, ways * shots, 2) and batch.query_x.shape == (b, ways * queries, 2)
    assert batch.support_y.shape == (b, ways * shots) and batch.query_y.shape == (b, ways * queries)
    assert batch.support_y.dtype == batch.query_y.dtype == batch.classes.dtype == torch.int64
    for t in (batch.support_x, batch.support_y, batch.query_x, batch.query_y, batch.classes):
        assert t.is_contiguous()
    for i in range(b):
        s_idx, s_cls = batch.support_x[i, :, 0].long(), batch.support_x[i, :, 1].long()
        q_idx, q_cls = batch.query_x[i, :, 0].long(), batch.query_x[i, :, 1].long()
        classes = batch.classes[i]
        # disjoint support / query, no example twice
        all_idx = torch.cat([s_idx, q_idx])
        assert all_idx.unique().numel() == all_idx.numel()
        # distinct classes, each with enough examples
        assert classes.unique().numel() == ways
        assert bool((ds.counts[classes] >= shots + queries).all())
        # every label shots / queries times; labels name the class the example comes from
        assert torch.equal(torch.bincount(batch.support_y[i], minlength=ways), torch.full((ways,), shots))
        assert torch.equal(torch.bincount(batch.query_y[i], minlength=ways), torch.full((ways,), queries))
        assert torch.equal(s_cls, classes[batch.support_y[i]])
        assert torch.equal(q_cls, classes[batch.query_y[i]])


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(1, 12), min_size=1, max_size=12),
    ways=st.integers(1, 6),
    shots=st.integers(1, 4),
    queries=st.integers(1, 5),
    b=st.integers(1, 5),
    seed=st.integers(0, 2**31),
)
def test_episode_properties(counts, ways, shots, queries, b, seed):
    ds = _tagged(counts)
    eligible = sum(c >= shots + queries for c in counts)
    if eligible < ways:
        with pytest.raises(ValueError, match="lower"):
            EpisodeSampler(ds, ways, shots, queries, seed=seed)
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sampler = EpisodeSampler(ds, ways, shots, queries, seed=seed)
        # one warning exactly when some class is left out, none otherwise
        assert len([w for w in caught if "left out of every episode" in str(w.message)]) == (eligible < len(counts))
        batch = sampler.sample(b)
        _check_batch(batch, ds, b, ways, shots, queries)
        # equal seeds, equal episodes
        assert _equal(batch, EpisodeSampler(ds, ways, shots, queries, seed=seed).sample(b))


@settings(max_examples=20, deadline=None)
@given(
    counts=st.lists(st.integers(300, 400), min_size=3, max_size=5),
    shots=st.integers(1, 5),
    queries=st.integers(1, 8),
    seed=st.integers(0, 2**31),
)
def test_episode_properties_for_large_classes(counts, shots, queries, seed):
    # classes above the dense limit go through Floyd's algorithm
    assert max(counts) > sampler_module._DENSE_EXAMPLES_LIMIT
    ds = _tagged(counts)
    _check_batch(EpisodeSampler(ds, 3, shots, queries, seed=seed).sample(4), ds, 4, 3, shots, queries)


def test_class_major_layout_and_float_conversion():
    ds = _images()
    batch = EpisodeSampler(ds, ways=5, shots=2, queries=3, seed=1).sample(4)
    assert batch.support_x.shape == (4, 10, 1, 28, 28) and batch.support_x.dtype == torch.float32
    assert batch.query_x.shape == (4, 15, 1, 28, 28) and batch.query_x.dtype == torch.float32
    assert torch.equal(batch.support_y[0], torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4]))
    assert torch.equal(batch.query_y[2], torch.arange(5).repeat_interleave(3))
    # each support image is a stored image of the class its label names, scaled to [0, 1]
    for i in range(4):
        for j in range(10):
            stored = ds.class_examples(int(batch.classes[i, batch.support_y[i, j]]))
            x = (batch.support_x[i, j] * 255).round().to(torch.uint8)
            assert bool((stored == x).flatten(1).all(1).any())
    assert 0.0 <= float(batch.query_x.min()) and float(batch.query_x.max()) <= 1.0


def test_indices_and_gather_match_sample():
    ds = _tagged([6] * 8)
    a, b = EpisodeSampler(ds, 4, 2, 3, seed=5), EpisodeSampler(ds, 4, 2, 3, seed=5)
    idx = a.sample_indices(3)
    assert isinstance(idx, EpisodeIndices) and idx.support.shape == (3, 8) and idx.query.shape == (3, 12)
    assert _equal(a.gather(idx), b.sample(3))
    assert torch.equal(a.gather(idx).support_x[:, :, 0].long(), idx.support)


def test_only_classes_with_enough_examples_are_drawn():
    counts = [3, 10, 2, 10, 10, 4]
    ds = _tagged(counts)
    with pytest.warns(UserWarning) as record:
        sampler = EpisodeSampler(ds, ways=2, shots=2, queries=3, seed=0)
    assert len(record) == 1  # once per construction
    assert str(record[0].message) == (
        "3 of the 6 classes of the dataset 'tagged' have fewer than 5 examples (shots + queries = 2 + 3) "
        "and are left out of every episode; lower shots or queries to draw them"
    )
    assert record[0].filename == __file__  # points at the caller
    assert sampler.eligible_classes.tolist() == [1, 3, 4]
    seen = sampler.sample(200).classes.unique().tolist()
    assert seen == [1, 3, 4]


def test_draws_are_uniform():
    # classes, labels and examples: counts over many draws against their expectation
    ds = _tagged([10] * 6)
    sampler = EpisodeSampler(ds, ways=3, shots=1, queries=1, seed=0)
    n = 6000
    batch = sampler.sample(n)
    class_freq = torch.bincount(batch.classes.flatten(), minlength=6).double() / (n * 3)
    assert torch.allclose(class_freq, torch.full((6,), 1 / 6, dtype=torch.float64), atol=0.01)
    # which label class 0 gets is uniform over 0..2 (class order is random)
    has0 = (batch.classes == 0).nonzero()
    label_freq = torch.bincount(has0[:, 1], minlength=3).double() / has0.shape[0]
    assert torch.allclose(label_freq, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.03)
    # the support example of a class is uniform over its 10 examples, the query too
    support_idx = batch.support_x[:, :, 0].long().flatten()
    freq = torch.bincount(support_idx, minlength=60).double() / support_idx.numel()
    assert torch.allclose(freq, torch.full((60,), 1 / 60, dtype=torch.float64), atol=0.006)


def test_many_classes_are_drawn_uniformly():
    # 40 classes, 5 ways: the candidate (rejection) path of the class choice
    ds = _tagged([2] * 40)
    n = 8000
    batch = EpisodeSampler(ds, ways=5, shots=1, queries=1, seed=0).sample(n)
    _check_batch(batch.split(50)[0], ds, 50, 5, 1, 1)
    freq = torch.bincount(batch.classes.flatten(), minlength=40).double() / (n * 5)
    assert torch.allclose(freq, torch.full((40,), 1 / 40, dtype=torch.float64), atol=0.004)
    has0 = (batch.classes == 0).nonzero()
    label_freq = torch.bincount(has0[:, 1], minlength=5).double() / has0.shape[0]
    assert torch.allclose(label_freq, torch.full((5,), 0.2, dtype=torch.float64), atol=0.04)


@pytest.mark.parametrize("draws", [None, 3])
def test_class_choice_is_an_exact_uniform_ordered_draw(draws):
    # draws=3 candidates for 3 ways forces many redraws (all distinct only ~59% of the time)
    g = torch.Generator().manual_seed(1)
    out = sampler_module._distinct_classes(12, 3, 30000, g, draws=draws)
    assert out.shape == (30000, 3)
    assert bool((out.sort(dim=1).values.diff(dim=1) > 0).all()) and 0 <= int(out.min()) and int(out.max()) < 12
    # every ordered pair (first, second) equally likely: 132 cells of ~227 draws each
    pairs = torch.bincount(out[:, 0] * 12 + out[:, 1], minlength=144).view(12, 12).double()
    assert int(pairs.diagonal().sum()) == 0
    off = pairs[~torch.eye(12, dtype=torch.bool)]
    expected = 30000 / 132
    chi2 = float(((off - expected) ** 2 / expected).sum())
    assert chi2 < 200  # 131 degrees of freedom: mean 131, sd ~16
    third = torch.bincount(out[:, 2], minlength=12).double() / 30000
    assert torch.allclose(third, torch.full((12,), 1 / 12, dtype=torch.float64), atol=0.01)


def test_floyd_draws_distinct_uniform_values():
    g = torch.Generator().manual_seed(0)
    n = torch.tensor([5, 7, 1000] * 4000)
    out = sampler_module._distinct_floyd(n, 5, g)
    assert out.shape == (12000, 5)
    assert bool((out >= 0).all()) and bool((out < n.unsqueeze(1)).all())
    assert all(row.unique().numel() == 5 for row in out[:50])
    assert bool((out.sort(dim=1).values.diff(dim=1) > 0).all())  # distinct in every row
    rows7 = out[1::3]
    freq = torch.bincount(rows7.flatten(), minlength=7).double() / rows7.numel()
    assert torch.allclose(freq, torch.full((7,), 1 / 7, dtype=torch.float64), atol=0.01)
    # the position of the value 6 among the 5 draws is uniform (order is shuffled)
    pos = (rows7 == 6).nonzero()[:, 1]
    pfreq = torch.bincount(pos, minlength=5).double() / pos.numel()
    assert torch.allclose(pfreq, torch.full((5,), 0.2, dtype=torch.float64), atol=0.03)


def test_seeds_and_consecutive_batches_differ():
    ds = _images()
    a = EpisodeSampler(ds, 5, 1, 5, seed=0)
    first, second = a.sample(8), a.sample(8)
    assert not torch.equal(first.classes, second.classes)
    assert not torch.equal(first.classes, EpisodeSampler(ds, 5, 1, 5, seed=1).sample(8).classes)


def test_state_dict_resumes_the_same_episodes(tmp_path):
    ds = _images()
    uninterrupted = EpisodeSampler(ds, 5, 1, 3, seed=3)
    for _ in range(3):
        uninterrupted.sample(4)
    state = uninterrupted.state_dict()
    expected = [uninterrupted.sample(4) for _ in range(3)]
    torch.save(state, tmp_path / "ckpt.pt")
    resumed = EpisodeSampler(ds, 5, 1, 3, seed=3)
    resumed.sample(4)  # some other progress, overwritten by the checkpoint
    resumed.load_state_dict(torch.load(tmp_path / "ckpt.pt"))
    for want in expected:
        assert _equal(resumed.sample(4), want)
    # the saved state is a snapshot, not a live view of the generator
    assert torch.equal(state["generator"], torch.load(tmp_path / "ckpt.pt")["generator"])


def test_load_state_dict_rejects_other_settings():
    ds = _images()
    state = EpisodeSampler(ds, 5, 1, 3).state_dict()
    with pytest.raises(ValueError, match=r"saved with ways=5 but this sampler has ways=4; load it into a sampler built with the same dataset, ways, shots and queries$"):
        EpisodeSampler(ds, 4, 1, 3).load_state_dict(state)
    with pytest.raises(ValueError, match=r"saved with num_classes=10 but this sampler has num_classes=12"):
        EpisodeSampler(_images(classes=12), 5, 1, 3).load_state_dict(state)
    with pytest.raises(ValueError, match=r"state is missing \['generator'\]"):
        EpisodeSampler(ds, 5, 1, 3).load_state_dict({k: v for k, v in state.items() if k != "generator"})
    with pytest.raises(ValueError, match=r"state_dict\['generator'\] must be the uint8 tensor"):
        EpisodeSampler(ds, 5, 1, 3).load_state_dict({**state, "generator": [1, 2]})
    with pytest.raises(ValueError, match=r"state must be a dict"):
        EpisodeSampler(ds, 5, 1, 3).load_state_dict([1])


# -- fixed evaluation episodes -----------------------------------------------------------------
def test_fixed_episodes_do_not_depend_on_the_batch_size():
    ds = _tagged([8] * 12)
    fixed = FixedEpisodes(ds, ways=4, shots=2, queries=3, episodes=150, seed=7, batch_size=64)
    assert fixed.num_episodes == 150 and len(fixed) == 3
    whole = EpisodeBatch.concat(list(fixed))
    _check_batch(whole, ds, 150, 4, 2, 3)
    for size in (1, 7, 150, 500):
        again = EpisodeBatch.concat(list(FixedEpisodes(ds, 4, 2, 3, 150, seed=7, batch_size=size)))
        assert _equal(again, whole)
    assert _equal(EpisodeBatch.concat(list(fixed.batches(13))), whole)
    assert _equal(EpisodeBatch.concat(list(fixed)), whole)  # re-iterable
    assert [b.num_tasks for b in fixed] == [64, 64, 22]
    ep = fixed[100]
    assert torch.equal(ep.query_x, whole.query_x[100]) and torch.equal(ep.classes, whole.classes[100])
    assert torch.equal(fixed[-1].support_x, whole.support_x[149])
    other = EpisodeBatch.concat(list(FixedEpisodes(ds, 4, 2, 3, 150, seed=8)))
    assert not torch.equal(other.classes, whole.classes)


def test_sampler_fixed_leaves_the_training_generator_alone():
    ds = _images()
    a, b = EpisodeSampler(ds, 5, 1, 3, seed=0), EpisodeSampler(ds, 5, 1, 3, seed=0)
    fixed = a.fixed(20, seed=11, batch_size=8)
    assert isinstance(fixed, FixedEpisodes) and len(fixed) == 3
    assert _equal(a.sample(4), b.sample(4))
    direct = FixedEpisodes(ds, 5, 1, 3, 20, seed=11)
    assert _equal(EpisodeBatch.concat(list(fixed)), EpisodeBatch.concat(list(direct)))


def test_fixed_episodes_store_indices_not_images():
    ds = _images(classes=30)
    fixed = FixedEpisodes(ds, 20, 5, 15, episodes=100, seed=0)
    assert fixed.indices.support.shape == (100, 100) and fixed.indices.query.shape == (100, 300)
    assert fixed.indices.support.dtype == torch.int64
    with pytest.raises(IndexError, match="episode 100 out of range for 100"):
        fixed[100]


# -- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(ways=0), r"ways=0 must be a positive int \(classes per episode\); use ways >= 1"),
        (dict(ways=-2), r"ways=-2 must be a positive int"),
        (dict(ways=2.5), r"ways=2.5 must be a positive int \(classes per episode\); got float"),
        (dict(ways=True), r"ways=True must be a positive int"),
        (dict(shots=0), r"shots=0 must be a positive int \(support examples per class\)"),
        (dict(shots="1"), r"shots='1' must be a positive int .*got str"),
        (dict(queries=0), r"queries=0 must be a positive int \(query examples per class\)"),
        (dict(queries=-1), r"queries=-1 must be a positive int"),
        (dict(seed=-1), r"seed=-1 must be a non-negative int"),
        (dict(seed=1.5), r"seed=1.5 must be a non-negative int"),
        (
            dict(seed=2**64),
            r"seed=18446744073709551616 is too large: torch generators take seeds in 0\.\.2\*\*64 - 1",
        ),
    ],
)
def test_bad_sizes_raise(kwargs, message):
    args = dict(ways=5, shots=1, queries=1, seed=0) | kwargs
    with pytest.raises(ValueError, match=message):
        EpisodeSampler(_images(), **args)


def test_largest_seed_is_accepted():
    seed = 2**64 - 1
    assert EpisodeSampler(_images(), 5, 1, 1, seed=seed).seed == seed
    assert FixedEpisodes(_images(), 5, 1, 1, episodes=2, seed=seed).seed == seed
    with pytest.raises(ValueError, match=r"seed=18446744073709551616 is too large"):
        FixedEpisodes(_images(), 5, 1, 1, episodes=2, seed=2**64)


def test_no_warning_when_every_class_is_drawn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        EpisodeSampler(_images(), 5, 5, 15)  # 20 examples per class, like Omniglot: 5 + 15 is enough
        FixedEpisodes(_tagged([6] * 5), 5, 1, 5, episodes=3)


def test_too_many_ways_names_the_limit():
    with pytest.raises(ValueError, match=r"ways=30 but the dataset 'images' has only 20 classes; lower ways"):
        EpisodeSampler(_images(classes=20), ways=30, shots=1, queries=5)
    ds = _tagged([6] * 20 + [3] * 5)
    with pytest.raises(
        ValueError,
        match=r"ways=21 but the dataset 'tagged' has only 20 classes \(of 25\) with at least 6 examples "
        r"\(shots \+ queries\); lower ways, shots or queries",
    ):
        EpisodeSampler(ds, ways=21, shots=1, queries=5)


def test_too_many_examples_per_class_names_the_limit():
    with pytest.raises(
        ValueError,
        match=r"shots \+ queries = 25 \(shots=5, queries=20\) but the largest class of the dataset 'images' "
        r"has only 20 examples; lower shots or queries",
    ):
        EpisodeSampler(_images(), ways=5, shots=5, queries=20)


def test_bad_batch_size_raises():
    sampler = EpisodeSampler(_images(), 5, 1, 1)
    with pytest.raises(ValueError, match=r"batch_size=0 must be a positive int \(episodes per batch\)"):
        sampler.sample(0)
    with pytest.raises(ValueError, match=r"batch_size=-3 must be a positive int"):
        sampler.sample_indices(-3)
    with pytest.raises(ValueError, match=r"batch_size=2.0 must be a positive int"):
        sampler.sample(2.0)


def test_fixed_episodes_bad_sizes_raise():
    ds = _images()
    with pytest.raises(ValueError, match=r"episodes=0 must be a positive int \(number of evaluation episodes\)"):
        FixedEpisodes(ds, 5, 1, 1, episodes=0)
    with pytest.raises(ValueError, match=r"batch_size=0 must be a positive int"):
        FixedEpisodes(ds, 5, 1, 1, episodes=10, batch_size=0)
    with pytest.raises(ValueError, match=r"batch_size=-1 must be a positive int"):
        next(FixedEpisodes(ds, 5, 1, 1, episodes=10).batches(-1))
    with pytest.raises(ValueError, match=r"ways=11 but the dataset 'images' has only 10 classes"):
        FixedEpisodes(ds, 11, 1, 1, episodes=10)


def test_dataset_must_be_class_indexed():
    with pytest.raises(TypeError, match=r"dataset must be a ClassIndexedDataset, got Tensor; wrap tensors with"):
        EpisodeSampler(torch.zeros(10, 3), 2, 1, 1)


class _BrokenEmpty(ClassIndexedDataset):
    """A subclass that skips the base validation and holds nothing."""

    def __init__(self) -> None:
        self.data = torch.zeros(0, 1, 28, 28, dtype=torch.uint8)
        self.offsets = torch.zeros(1, dtype=torch.int64)
        self.counts = torch.zeros(0, dtype=torch.int64)
        self.class_names = []
        self.name = "empty"
        self.meta = {}


def test_empty_dataset_raises():
    with pytest.raises(ValueError, match=r"the dataset 'empty' is empty \(0 classes, 0 examples\)"):
        EpisodeSampler(_BrokenEmpty(), 1, 1, 1)
    # and the dataset itself refuses to be built empty
    with pytest.raises(ValueError, match="data is empty"):
        ClassIndexedDataset.from_tensors(torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.int64))


def test_repr_names_the_settings():
    text = repr(EpisodeSampler(_images(), 5, 1, 15, seed=2))
    assert text == "EpisodeSampler(dataset='images', ways=5, shots=1, queries=15, seed=2, eligible_classes=10)"
    assert repr(FixedEpisodes(_images(), 5, 1, 1, 3)) == (
        "FixedEpisodes(dataset='images', ways=5, shots=1, queries=1, episodes=3, seed=0, batch_size=50)"
    )
