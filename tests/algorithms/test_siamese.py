import math

import pytest
import torch
from torch import nn

from metakit.algorithms import get_algorithm
from metakit.algorithms.siamese import SiameseNet, weighted_l1_logits
from metakit.models import Conv4
from metakit.tasks import EpisodeBatch


def _identity_siamese(alpha=(-1.0, -1.0), beta=0.0) -> SiameseNet:
    algo = SiameseNet(nn.Flatten(), feature_dim=2)
    with torch.no_grad():
        algo.alpha.copy_(torch.tensor(alpha))
        algo.beta.fill_(beta)
    return algo


def _batch(support, sy, query, qy, ways) -> EpisodeBatch:
    return EpisodeBatch(
        torch.tensor([support], dtype=torch.float32),
        torch.tensor([sy]),
        torch.tensor([query], dtype=torch.float32),
        torch.tensor([qy]),
        ways,
    )


def test_registered():
    assert get_algorithm("siamese") is SiameseNet


def test_weighted_l1_by_hand():
    q = torch.tensor([[[1.0, 2.0]]])
    s = torch.tensor([[[0.0, 0.0], [1.0, 5.0]]])
    out = weighted_l1_logits(q, s, torch.tensor([1.0, -2.0]), torch.tensor(0.5))
    # |1-0|*1 + |2-0|*(-2) + 0.5 = -2.5 ;  0*1 + 3*(-2) + 0.5 = -5.5
    assert out.tolist() == [[[-2.5, -5.5]]]


def test_scores_take_the_most_similar_support_example():
    algo = _identity_siamese()
    # class 0 at (0,0) and (10,10); class 1 at (3,3)
    batch = _batch([[0, 0], [10, 10], [3, 3]], [0, 0, 1], [[9, 9], [2, 2]], [0, 1], 2)
    with torch.no_grad():
        scores = algo.predict(batch)[0]
    # query (9,9): class 0 best is (10,10) -> -(1+1) = -2; class 1 -> -(6+6) = -12
    # query (2,2): class 0 best is (0,0) -> -4; class 1 -> -2
    assert scores.tolist() == [[-2.0, -12.0], [-4.0, -2.0]]
    learner = algo.adapt(batch.support_x[0], batch.support_y[0], 2)
    assert torch.equal(learner.predict(batch.query_x[0]), scores)


def test_balanced_and_plain_pair_loss_by_hand():
    batch = _batch([[0, 0], [3, 0]], [0, 1], [[1, 0]], [0], 2)
    # pair logits: with (0,0): -1 + 0.5 = -0.5 (same class); with (3,0): -2 + 0.5 = -1.5 (different)
    pos = math.log1p(math.exp(0.5))  # BCE(-0.5, 1) = log(1 + e^{0.5})
    neg = math.log1p(math.exp(-1.5))  # BCE(-1.5, 0) = log(1 + e^{-1.5})
    loss, metrics = _identity_siamese(beta=0.5).meta_loss(batch)
    assert loss.item() == pytest.approx((pos + neg) / 2, rel=1e-6)
    assert metrics["accuracy"] == 1.0 and metrics["pair_accuracy"] == 0.5
    algo = SiameseNet(nn.Flatten(), balance=False, feature_dim=2)
    with torch.no_grad():
        algo.alpha.fill_(-1.0)
        algo.beta.fill_(0.5)
    # 2-way 1-shot with 1 query: one positive and one negative pair, the plain mean is equal here;
    # with 3 ways the balanced loss weighs the single positive pair as much as the two negatives
    batch3 = _batch([[0, 0], [3, 0], [0, 4]], [0, 1, 2], [[1, 0]], [0], 3)
    neg2 = math.log1p(math.exp(-4.5))  # pair with (0,4): -(1+4) + 0.5 = -4.5 -> BCE(-4.5, 0)
    assert algo.meta_loss(batch3)[0].item() == pytest.approx((pos + neg + neg2) / 3, rel=1e-6)
    balanced = _identity_siamese(beta=0.5).meta_loss(batch3)[0].item()
    assert balanced == pytest.approx(pos / 2 + (neg + neg2) / 4, rel=1e-6)


def test_single_way_batches_have_no_negative_pairs():
    batch = _batch([[0, 0]], [0], [[1, 0]], [0], 1)
    loss, _ = _identity_siamese().meta_loss(batch)
    assert loss.item() == pytest.approx(math.log1p(math.exp(1.0)), rel=1e-6)


def test_gradients_match_finite_differences(finite_differences):
    torch.manual_seed(0)
    batch = EpisodeBatch(
        torch.randn(2, 4, 3, dtype=torch.float64),
        torch.tensor([[0, 1, 0, 1], [1, 0, 1, 0]]),
        torch.randn(2, 2, 3, dtype=torch.float64),
        torch.tensor([[0, 1], [1, 1]]),
        2,
    )
    algo = SiameseNet(nn.Linear(3, 3), feature_dim=3).double()
    params = list(algo.parameters())
    algo.zero_grad()
    algo.meta_loss(batch)[0].backward()
    g = torch.cat([p.grad.reshape(-1) for p in params])
    num = finite_differences(lambda: algo.meta_loss(batch)[0], params)
    assert torch.allclose(g, num, rtol=0, atol=1e-8), (g, num)
    assert max(float(p.grad.abs().max()) for p in params) > 1e-2  # not a vacuous match


def test_chunked_scoring_equals_one_shot():
    torch.manual_seed(1)
    algo = SiameseNet(nn.Flatten(), feature_dim=4)
    zs, zq = torch.randn(5, 6, 4), torch.randn(5, 3, 4)
    full = algo.pair_logits(zq, zs)
    algo.max_pair_elements = 3 * 6 * 4 * 2  # two tasks per chunk
    assert torch.allclose(algo.pair_logits(zq, zs), full)


def test_conv4_training_step_reaches_every_parameter():
    torch.manual_seed(0)
    algo = SiameseNet(Conv4(hidden=8))
    batch = EpisodeBatch(
        torch.randn(2, 3, 1, 28, 28), torch.tensor([[0, 1, 2]] * 2), torch.randn(2, 3, 1, 28, 28), torch.tensor([[2, 1, 0]] * 2), 3
    )
    loss, metrics = algo.meta_loss(batch)
    loss.backward()
    assert set(metrics) == {"loss", "accuracy", "pair_accuracy"}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in algo.parameters())
    algo.eval()
    with torch.no_grad():
        assert algo.predict(batch).shape == (2, 3, 3)


def test_bad_inputs():
    with pytest.raises(TypeError, match="encoder must be a torch.nn.Module, got str"):
        SiameseNet("conv4")
    with pytest.raises(TypeError, match="balance='yes' must be True or False"):
        SiameseNet(nn.Flatten(), balance="yes", feature_dim=2)
    with pytest.raises(ValueError, match="max_pair_elements=0 must be a finite int > 0"):
        SiameseNet(nn.Flatten(), feature_dim=2, max_pair_elements=0)
    with pytest.raises(ValueError, match="cannot tell the embedding size of encoder Flatten"):
        SiameseNet(nn.Flatten())
    with pytest.raises(ValueError, match="cannot tell the embedding size of encoder Conv4"):
        SiameseNet(Conv4(out_features=5))
    algo = _identity_siamese()
    with pytest.raises(ValueError, match="the encoder gives 3 features but the distance has 2 weights"):
        algo.embed(torch.zeros(1, 3))
    with pytest.raises(TypeError, match="batch must be an EpisodeBatch, got tuple"):
        algo.meta_loss((1, 2))
    reg = EpisodeBatch(torch.zeros(1, 2, 2), torch.zeros(1, 2, 1), torch.zeros(1, 2, 2), torch.zeros(1, 2, 1))
    with pytest.raises(ValueError, match="batch.ways is None .* SiameseNet classifies"):
        algo.predict(reg)
    missing = _batch([[0, 0], [1, 1]], [0, 0], [[1, 0]], [1], 2)
    with pytest.raises(ValueError, match=r"support_y of task 0 has no example of label 1 \(labels present: \[0\]"):
        algo.meta_loss(missing)
    with pytest.raises(ValueError, match="support_y holds labels 0..3 but ways=2"):
        algo.adapt(torch.zeros(2, 2), torch.tensor([0, 3]), 2)
    with pytest.raises(TypeError, match="support_y must be a 1-D integer label tensor"):
        algo.adapt(torch.zeros(2, 2), torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match="query_x must be a tensor"):
        algo.adapt(torch.zeros(2, 2), torch.tensor([0, 1])).predict([[0.0, 0.0]])
