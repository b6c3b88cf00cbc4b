import pytest
import torch

from metakit.tasks import Episode, EpisodeBatch


def _batch(b=3, ways=5, shots=2, q=4):
    sx = torch.randn(b, ways * shots, 1, 4, 4)
    sy = torch.arange(ways).repeat_interleave(shots).expand(b, -1).clone()
    qx = torch.randn(b, ways * q, 1, 4, 4)
    qy = torch.arange(ways).repeat_interleave(q).expand(b, -1).clone()
    return EpisodeBatch(sx, sy, qx, qy, ways, torch.arange(b * ways).view(b, ways))


def test_batch_indexing_iteration_and_stack_roundtrip():
    batch = _batch()
    assert batch.num_tasks == len(batch) == 3
    eps = list(batch)
    assert all(isinstance(e, Episode) for e in eps)
    assert torch.equal(eps[1].query_x, batch.query_x[1])
    assert torch.equal(eps[2].classes, torch.tensor([10, 11, 12, 13, 14]))
    again = EpisodeBatch.stack(eps)
    for name in ("support_x", "support_y", "query_x", "query_y", "classes"):
        assert torch.equal(getattr(again, name), getattr(batch, name))


def test_split_and_concat_are_inverse():
    batch = _batch(b=7)
    parts = batch.split(3)
    assert [p.num_tasks for p in parts] == [3, 3, 1]
    whole = EpisodeBatch.concat(parts)
    for name in ("support_x", "support_y", "query_x", "query_y", "classes"):
        assert torch.equal(getattr(whole, name), getattr(batch, name)), name
    assert whole.ways == batch.ways
    assert torch.equal(parts[1].support_x, batch.support_x[3:6]) and torch.equal(parts[2].classes, batch.classes[6:])
    with pytest.raises(ValueError, match="size=0 must be >= 1"):
        batch.split(0)


def test_to_keeps_metadata():
    original = _batch()
    batch = original.to(dtype=torch.float64)
    assert batch.support_x.dtype == torch.float64 and batch.query_x.dtype == torch.float64 and batch.ways == 5
    assert batch.support_y.dtype == torch.int64 and batch.classes.dtype == torch.int64
    assert torch.equal(batch.support_x, original.support_x.double()) and torch.equal(batch.query_x, original.query_x.double())
    assert torch.equal(batch.support_y, original.support_y) and torch.equal(batch.classes, original.classes)
    reg = EpisodeBatch(torch.randn(1, 2, 1), torch.randn(1, 2, 1), torch.randn(1, 2, 1), torch.randn(1, 2, 1))
    assert reg.to("cpu", torch.float64).query_y.dtype == torch.float64


def test_regression_episode_accepts_float_targets():
    ep = Episode(torch.randn(5, 1), torch.randn(5, 1), torch.randn(7, 1), torch.randn(7, 1))
    assert ep.ways is None
    assert ep.unsqueeze().num_tasks == 1


def test_label_out_of_range_is_rejected():
    with pytest.raises(ValueError, match=r"query_y holds labels in 0..5 but ways=5"):
        Episode(torch.randn(5, 2), torch.arange(5), torch.randn(6, 2), torch.arange(6), ways=5)


def test_float_labels_with_ways_are_rejected():
    with pytest.raises(TypeError, match="support_y has dtype torch.float32; classification labels"):
        Episode(torch.randn(2, 2), torch.zeros(2), torch.randn(2, 2), torch.zeros(2, dtype=torch.long), ways=2)


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError, match=r"support_x has shape \(5, 2\) but support_y has shape \(4,\)"):
        Episode(torch.randn(5, 2), torch.zeros(4, dtype=torch.long), torch.randn(2, 2), torch.zeros(2, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="support_x has example shape"):
        Episode(torch.randn(5, 2), torch.zeros(5, dtype=torch.long), torch.randn(2, 3), torch.zeros(2, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="support_x has 2 tasks but query_x has 3"):
        EpisodeBatch(torch.randn(2, 5, 2), torch.zeros(2, 5, dtype=torch.long), torch.randn(3, 2, 2), torch.zeros(3, 2, dtype=torch.long), 1)
    with pytest.raises(ValueError, match=r"classes has shape \(2, 3\); expected \[tasks, ways\] = \[2, 1\]"):
        EpisodeBatch(torch.randn(2, 5, 2), torch.zeros(2, 5, dtype=torch.long), torch.randn(2, 2, 2), torch.zeros(2, 2, dtype=torch.long), 1, torch.zeros(2, 3))


def test_bad_ways_and_empty_stack():
    with pytest.raises(ValueError, match="ways=0 must be a positive int"):
        Episode(torch.randn(1, 2), torch.zeros(1, dtype=torch.long), torch.randn(1, 2), torch.zeros(1, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="episodes is empty"):
        EpisodeBatch.stack([])
    a = Episode(torch.randn(1, 2), torch.zeros(1, dtype=torch.long), torch.randn(1, 2), torch.zeros(1, dtype=torch.long), 1)
    b = Episode(torch.randn(1, 2), torch.zeros(1, dtype=torch.long), torch.randn(1, 2), torch.zeros(1, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="episodes have different ways"):
        EpisodeBatch.stack([a, b])


def test_concat_refuses_batches_of_different_ways():
    five, two = _batch(b=2, ways=5, shots=2, q=4), _batch(b=2, ways=2, shots=5, q=10)  # same tensor widths
    with pytest.raises(ValueError, match=r"batches have different ways \[2, 5\]; concat equal-ways batches only"):
        EpisodeBatch.concat([five, two])
