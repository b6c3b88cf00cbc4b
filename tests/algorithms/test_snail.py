"""SNAIL: the support sequence with the query last, batched queries, training order, errors."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metakit.algorithms import SNAIL, BuildContext, get_algorithm
from metakit.algorithms.snail import shuffle_support
from metakit.models import Conv4
from metakit.tasks import EpisodeBatch

SMALL = dict(filters=3, key_sizes=(4, 5, 3), value_sizes=(2, 3, 2))


class Linear(nn.Module):
    """A tiny encoder of 4-value examples into 3 features (float64 tests)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.feature_dim = 3

    def forward(self, x):
        return torch.tanh(self.lin(x.flatten(1)))


def make(ways=3, shots=2, encoder=None, **kw) -> SNAIL:
    torch.manual_seed(0)
    return SNAIL(encoder or Linear(), ways=ways, shots=shots, **{**SMALL, **kw}).double()


def batch(b=2, ways=3, shots=2, queries=2, seed=1) -> EpisodeBatch:
    g = torch.Generator().manual_seed(seed)
    sy = torch.arange(ways).repeat_interleave(shots).repeat(b, 1)
    qy = torch.arange(ways).repeat_interleave(queries).repeat(b, 1)
    sx = torch.randn(b, ways * shots, 4, generator=g, dtype=torch.float64)
    qx = torch.randn(b, ways * queries, 4, generator=g, dtype=torch.float64)
    return EpisodeBatch(sx, sy, qx, qy, ways=ways)


def one_sequence(algo: SNAIL, sx, sy, qx) -> torch.Tensor:
    """The scores of one query read from the whole sequence [support..., query] run at once."""
    zs, zq = algo.embed(sx), algo.embed(qx.unsqueeze(0))
    seq = torch.cat([torch.cat([zs, F.one_hot(sy, algo.ways).double()], -1),
                     torch.cat([zq, zq.new_zeros(1, algo.ways)], -1)])
    return algo.net(seq.unsqueeze(0))[0, -1]


def test_registered_and_built_for_the_training_ways():
    assert get_algorithm("snail") is SNAIL
    algo = SNAIL.from_config(Conv4(hidden=8), BuildContext(ways=5, example_shape=(1, 28, 28)), shots=2)
    assert (algo.ways, algo.shots, algo.context, algo.net.seq_len) == (5, 2, 10, 11)
    assert algo.net.in_features == 8 + 5 and algo.net.out_features == 5
    with pytest.raises(ValueError, match=r"algorithm.ways=4 but train.ways=5; remove algorithm.ways"):
        SNAIL.from_config(Conv4(hidden=8), BuildContext(ways=5, example_shape=(1, 28, 28)), ways=4)


def test_each_query_is_read_after_the_whole_support_sequence():
    algo = make().eval()
    b = batch()
    scores = algo.predict(b)
    assert scores.shape == (2, 6, 3)
    for t in range(2):
        for q in range(6):
            expected = one_sequence(algo, b.support_x[t], b.support_y[t], b.query_x[t, q])
            torch.testing.assert_close(scores[t, q], expected, rtol=1e-12, atol=1e-12)


def test_a_querys_prediction_does_not_depend_on_the_other_queries():
    torch.manual_seed(0)
    algo = SNAIL(Conv4(hidden=4, image_size=16), ways=3, shots=1, **SMALL)
    algo.train()
    algo.meta_loss(EpisodeBatch(torch.rand(2, 3, 1, 16, 16), torch.arange(3).repeat(2, 1),
                                torch.rand(2, 6, 1, 16, 16), torch.arange(3).repeat_interleave(2).repeat(2, 1), ways=3))
    algo.eval()  # running statistics: every image embedded on its own
    sx, sy = torch.rand(3, 1, 16, 16), torch.arange(3)
    qx = torch.rand(5, 1, 16, 16)
    learner = algo.adapt(sx, sy)
    with torch.no_grad():
        scores = learner.predict(qx)
        changed = qx.clone()
        changed[2] = torch.rand(1, 16, 16)
        scores2 = learner.predict(changed)
        alone = torch.cat([learner.predict(qx[i : i + 1]) for i in range(5)])
    keep = [0, 1, 3, 4]
    assert torch.equal(scores[keep], scores2[keep])
    assert not torch.equal(scores[2], scores2[2])
    torch.testing.assert_close(scores, alone, rtol=1e-5, atol=1e-6)


def test_adapt_then_predict_equals_the_batched_predict():
    algo = make().eval()
    b = batch()
    scores = algo.predict(b)
    for t in range(2):
        learner = algo.adapt(b.support_x[t], b.support_y[t], 3)
        torch.testing.assert_close(learner.predict(b.query_x[t]), scores[t], rtol=1e-12, atol=1e-12)


def test_meta_loss_is_the_cross_entropy_of_the_queries_in_the_given_order_without_shuffling():
    algo = make(shuffle_support=False).train()
    b = batch()
    loss, metrics = algo.meta_loss(b)
    logits = torch.stack([torch.stack([one_sequence(algo, b.support_x[t], b.support_y[t], b.query_x[t, q])
                                       for q in range(6)]) for t in range(2)])
    expected = F.cross_entropy(logits.flatten(0, 1), b.query_y.flatten())
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    assert metrics["accuracy"] == pytest.approx(float((logits.argmax(-1) == b.query_y).double().mean()))


def test_training_shuffles_the_support_pairs_of_every_task_from_the_global_generator():
    algo = make().train()
    b = batch()
    torch.manual_seed(7)
    loss, _ = algo.meta_loss(b)
    torch.manual_seed(7)
    sx, sy = shuffle_support(b.support_x, b.support_y)
    assert not torch.equal(sy, b.support_y)  # a real reordering at this seed
    shuffled = EpisodeBatch(sx, sy, b.query_x, b.query_y, ways=3)
    ref = make(shuffle_support=False).train()
    torch.testing.assert_close(loss, ref.meta_loss(shuffled)[0], rtol=1e-12, atol=1e-12)
    # the order given is what a plain run sees, so the loss differs from it
    assert not torch.allclose(loss, ref.meta_loss(b)[0])
    # evaluation never reorders
    algo.eval()
    torch.testing.assert_close(algo.predict(b), ref.eval().predict(b), rtol=0, atol=0)


def test_shuffle_keeps_each_example_with_its_label():
    z = torch.arange(2 * 6 * 2, dtype=torch.float64).reshape(2, 6, 2)
    y = torch.arange(6).repeat(2, 1)
    zs, ys = shuffle_support(z, y, torch.Generator().manual_seed(0))
    for t in range(2):
        assert sorted(ys[t].tolist()) == list(range(6))
        assert torch.equal(zs[t], z[t, ys[t]])


def test_meta_gradient_matches_finite_differences_in_float64():
    algo = make(shuffle_support=False).train()
    b = batch(b=1, queries=1)
    names = [n for n, _ in algo.named_parameters()]
    picked = ["encoder.lin.weight", "net.blocks.0.query.weight", "net.blocks.1.blocks.0.conv.conv.weight", "net.head.bias"]
    assert all(p in names for p in picked)
    params = dict(algo.named_parameters())

    class Loss(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.algo = algo

        def forward(self):
            return self.algo.meta_loss(b)[0]

    def loss(*ps):
        return torch.func.functional_call(Loss(), {f"algo.{n}": p for n, p in zip(picked, ps)}, ())

    inputs = tuple(params[p].detach().clone().requires_grad_(True) for p in picked)
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


def test_fewer_shots_than_the_context_are_accepted():
    algo = make(shots=2).eval()
    scores = algo.predict(batch(shots=1))
    assert scores.shape == (2, 6, 3) and torch.isfinite(scores).all()


def test_bad_tasks_are_refused_with_the_fix():
    algo = make(ways=3, shots=1).eval()
    with pytest.raises(ValueError, match=r"the task is 4-way but this SNAIL network was built for 3-way tasks .* \(train.ways=4\)"):
        algo.adapt(torch.randn(4, 4, dtype=torch.float64), torch.arange(4), 4)
    with pytest.raises(ValueError, match=r"the support set has 6 examples but this SNAIL network's context holds 3 "
                                         r"\(3-way x 1-shot, algorithm.shots=1\); give at most 1 example\(s\) per class, "
                                         r"or train with algorithm.shots >= 2"):
        algo.adapt(torch.randn(6, 4, dtype=torch.float64), torch.arange(3).repeat(2))
    with pytest.raises(ValueError, match=r"context holds 3"):
        algo.predict(batch(shots=2))
    with pytest.raises(ValueError, match=r"context holds 3"):
        algo.train().meta_loss(batch(shots=2))
    with pytest.raises(ValueError, match=r"the task is 2-way"):
        algo.meta_loss(batch(ways=2, shots=1))
    with pytest.raises(ValueError, match=r"has no example of label 2"):
        algo.adapt(torch.randn(2, 4, dtype=torch.float64), torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match=r"ways=None: SNAIL's network is built for a number of classes"):
        SNAIL(Linear())
    with pytest.raises(ValueError, match=r"shots=0 must be a finite int > 0"):
        SNAIL(Linear(), ways=3, shots=0)
    with pytest.raises(TypeError, match=r"shuffle_support='yes' must be True or False"):
        SNAIL(Linear(), ways=3, shuffle_support="yes")


@pytest.mark.slow
def test_it_learns_few_shot_tasks_it_has_never_seen():
    """5-way 1-shot tasks whose classes are fresh random prototypes (examples: prototype + noise):
    nothing but the support pairs of a task tells which class a query is. After 250 steps the
    network classifies unseen tasks far above chance (0.2); a network that cannot read the
    support labels, or whose queries are not read after the support, stays at chance."""

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(8, 16)
            self.feature_dim = 16

        def forward(self, x):
            return torch.relu(self.lin(x))

    g = torch.Generator().manual_seed(0)

    def tasks(b, queries):
        protos = torch.randn(b, 5, 8, generator=g)
        sy, qy = torch.arange(5).repeat(b, 1), torch.arange(5).repeat_interleave(queries).repeat(b, 1)
        sx = protos + 0.3 * torch.randn(b, 5, 8, generator=g)
        qx = protos.repeat_interleave(queries, 1) + 0.3 * torch.randn(b, 5 * queries, 8, generator=g)
        return EpisodeBatch(sx, sy, qx, qy, ways=5)

    torch.manual_seed(0)
    algo = SNAIL(Encoder(), ways=5, shots=1, filters=8, key_sizes=(8, 16, 16), value_sizes=(8, 8, 8))
    opt = torch.optim.Adam(algo.parameters(), lr=3e-3)
    for _ in range(250):
        loss, _ = algo.meta_loss(tasks(16, 1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    algo.eval()
    test = tasks(40, 5)
    with torch.no_grad():
        acc = float((algo.predict(test).argmax(-1) == test.query_y).float().mean())
    assert acc > 0.7, acc
