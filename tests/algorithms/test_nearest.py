import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metakit.algorithms import get_algorithm
from metakit.algorithms.nearest import NearestNeighbour
from metakit.algorithms.protonet import ProtoNet
from metakit.models import Conv4
from metakit.tasks import EpisodeBatch


def _batch(support, sy, query, qy, ways) -> EpisodeBatch:
    return EpisodeBatch(
        torch.tensor([support], dtype=torch.float32),
        torch.tensor([sy]),
        torch.tensor([query], dtype=torch.float32),
        torch.tensor([qy]),
        ways,
    )


# class 0 at (0,0) and (10,0) (centroid (5,0)); class 1 at (3,3); query (1,0)
HAND = _batch([[0, 0], [10, 0], [3, 3]], [0, 0, 1], [[1, 0]], [0], 2)


def test_registered():
    assert get_algorithm("nearest") is NearestNeighbour


def test_neighbour_and_centroid_rules_by_hand():
    nn_rule = NearestNeighbour(nn.Flatten(), rule="neighbour")
    centroid = NearestNeighbour(nn.Flatten(), rule="centroid")
    # squared distances: to (0,0) 1, to (10,0) 81, to (3,3) 13, to the centroid (5,0) 16
    assert nn_rule.predict(HAND)[0].tolist() == [[-1.0, -13.0]]  # nearest example: class 0
    assert centroid.predict(HAND)[0].tolist() == [[-16.0, -13.0]]  # nearest centroid: class 1
    cos = NearestNeighbour(nn.Flatten(), rule="neighbour", distance="cosine", scale=2.0)
    # cosines of (1,0): with (0,0) -> 0 (zero vector), with (10,0) -> 1, with (3,3) -> 1/sqrt(2)
    assert cos.predict(HAND)[0, 0].tolist() == pytest.approx([2.0, 2 / math.sqrt(2)])
    learner = nn_rule.adapt(HAND.support_x[0], HAND.support_y[0])
    assert learner.predict(HAND.query_x[0]).tolist() == [[-1.0, -13.0]]


def test_soft_neighbour_loss_by_hand_and_centroid_loss_is_protonets():
    algo = NearestNeighbour(nn.Flatten(), rule="neighbour", scale=0.1)
    loss, metrics = algo.meta_loss(HAND)
    # softmax over examples of -0.1 * d^2 = (-0.1, -8.1, -1.3); class 0 holds the first two
    s = [-0.1, -8.1, -1.3]
    z = sum(math.exp(v) for v in s)
    assert loss.item() == pytest.approx(-math.log((math.exp(s[0]) + math.exp(s[1])) / z), rel=1e-6)
    assert metrics["accuracy"] == 1.0
    torch.manual_seed(0)
    enc = Conv4(hidden=8)
    batch = EpisodeBatch(
        torch.randn(2, 4, 1, 28, 28), torch.tensor([[0, 1, 0, 1]] * 2), torch.randn(2, 2, 1, 28, 28), torch.tensor([[1, 0]] * 2), 2
    )
    ours = NearestNeighbour(enc, rule="centroid").meta_loss(batch)[0]
    proto = ProtoNet(enc).meta_loss(batch)[0]
    assert ours.item() == pytest.approx(proto.item(), rel=1e-5)


def test_l2_and_cl2n_normalisation():
    l2 = NearestNeighbour(nn.Flatten(), normalize="l2")
    assert torch.allclose(l2.transform(torch.tensor([[3.0, 4.0]])), torch.tensor([[0.6, 0.8]]))
    algo = NearestNeighbour(nn.Flatten(), rule="neighbour", normalize="cl2n", feature_dim=2)
    with pytest.raises(ValueError, match="normalize='cl2n' needs the mean training feature, which is not set yet"):
        algo.predict(HAND)
    mean = algo.fit_feature_mean(torch.tensor([[1.0, 1.0], [3.0, 1.0], [2.0, 4.0]]), batch_size=2)
    assert mean.tolist() == [2.0, 2.0]
    # centred: support (-2,-2), (8,-2), (1,1); query (-1,-2); after L2 normalisation the query is
    # nearest (in angle) to (-2,-2)
    scores = algo.predict(HAND)[0, 0]
    qn = F.normalize(torch.tensor([-1.0, -2.0]), dim=0)
    expected0 = -(qn - F.normalize(torch.tensor([-2.0, -2.0]), dim=0)).pow(2).sum()
    expected1 = -(qn - F.normalize(torch.tensor([1.0, 1.0]), dim=0)).pow(2).sum()
    assert scores.tolist() == pytest.approx([expected0.item(), expected1.item()], abs=1e-6)
    # an iterable of batches gives the same mean
    assert algo.fit_feature_mean(iter([torch.tensor([[1.0, 1.0]]), torch.tensor([[3.0, 1.0], [2.0, 4.0]])])).tolist() == [2.0, 2.0]


def test_training_updates_the_moving_mean_feature():
    algo = NearestNeighbour(nn.Flatten(), normalize="cl2n", feature_dim=2, mean_momentum=0.5)
    algo.train()
    algo.meta_loss(HAND)
    first = torch.tensor([[0.0, 0], [10, 0], [3, 3], [1, 0]]).mean(0)  # support and query
    assert torch.allclose(algo.feature_mean, first)
    assert "feature_mean" in algo.state_dict() and bool(algo.feature_mean_set)
    shifted = _batch([[2, 2], [4, 4]], [0, 1], [[6, 6]], [0], 2)
    algo.meta_loss(shifted)
    assert torch.allclose(algo.feature_mean, 0.5 * first + 0.5 * torch.tensor([4.0, 4.0]))
    algo.eval()
    algo.meta_loss(HAND)  # no update in eval mode
    assert torch.allclose(algo.feature_mean, 0.5 * first + 0.5 * torch.tensor([4.0, 4.0]))


def test_training_mean_feature_is_of_eval_mode_features():
    # with BatchNorm, training-mode features (batch statistics) have mean ~beta = 0, while
    # prediction centres eval-mode features (running statistics)
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(2))
    algo = NearestNeighbour(enc, normalize="cl2n", feature_dim=2).train()
    algo.meta_loss(HAND)
    x = torch.tensor([[0.0, 0], [10, 0], [3, 3], [1, 0]])  # support and query
    assert enc[1].num_batches_tracked.item() == 1  # only the training forward updates running stats
    assert enc.training and enc[1].training  # modes restored
    with torch.no_grad():
        expected = enc.eval()(x).mean(0)  # what fit_feature_mean would compute on these images
        assert torch.allclose(algo.feature_mean, expected)
    assert expected.abs().min() > 0.1  # not the ~0 mean of batch-normalised training-mode features
    # the moving average uses the same eval-mode mean at every step
    algo.train().meta_loss(HAND)
    with torch.no_grad():
        second = enc.eval()(x).mean(0)
    assert torch.allclose(algo.feature_mean, expected.lerp(second, algo.mean_momentum))


def test_on_top_of_a_trained_protonet_encoder():
    torch.manual_seed(0)
    proto = ProtoNet(Conv4(hidden=8)).eval()
    nearest = NearestNeighbour.from_algorithm(proto, rule="centroid")
    assert nearest.encoder is proto.encoder
    batch = EpisodeBatch(
        torch.randn(3, 4, 1, 28, 28), torch.tensor([[0, 1, 0, 1]] * 3), torch.randn(3, 2, 1, 28, 28), torch.tensor([[1, 0]] * 3), 2
    )
    with torch.no_grad():
        assert torch.allclose(nearest.predict(batch), proto.predict(batch), atol=1e-5)
        simple = NearestNeighbour.from_algorithm(proto, rule="neighbour", normalize="cl2n")
        simple.fit_feature_mean(torch.randn(10, 1, 28, 28))
        assert simple.predict(batch).shape == (3, 2, 2)
    assert proto.training is False and simple.training is True
    assert proto.encoder.training is False  # the borrowed encoder keeps its owner's mode
    assert not any(m.training for m in proto.encoder.modules())


def test_fit_feature_mean_restores_each_modules_own_mode():
    enc = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(2), nn.Dropout(0.5))
    algo = NearestNeighbour(enc, normalize="cl2n", feature_dim=2).train()
    enc[1].eval()  # e.g. a frozen BatchNorm inside a training model
    before = [m.training for m in algo.modules()]
    algo.fit_feature_mean(torch.tensor([[1.0, 1.0], [3.0, 1.0]]))
    assert [m.training for m in algo.modules()] == before == [True, True, True, False, True]
    algo.eval()
    enc[2].train()
    before = [m.training for m in algo.modules()]
    algo.fit_feature_mean(torch.tensor([[1.0, 1.0], [3.0, 1.0]]))
    assert [m.training for m in algo.modules()] == before == [False, False, False, False, True]


def test_gradients_flow_to_the_encoder(finite_differences):
    torch.manual_seed(0)
    enc = nn.Linear(2, 2).double()
    algo = NearestNeighbour(enc, rule="neighbour")
    batch = HAND.to(dtype=torch.float64)
    algo.meta_loss(batch)[0].backward()
    grads = torch.cat([p.grad.reshape(-1) for p in enc.parameters()])
    fd = finite_differences(lambda: algo.meta_loss(batch)[0], list(enc.parameters()))
    assert torch.allclose(grads, fd, rtol=0, atol=1e-8), (grads - fd).abs().max()
    assert max(float(p.grad.abs().max()) for p in enc.parameters()) > 1e-3  # not a vacuous match


def test_bad_inputs():
    with pytest.raises(ValueError, match="rule='neighbor' is not known; did you mean 'neighbour'"):
        NearestNeighbour(nn.Flatten(), rule="neighbor")
    with pytest.raises(ValueError, match="normalize='cl2' is not known; did you mean 'cl2n'"):
        NearestNeighbour(nn.Flatten(), normalize="cl2")
    with pytest.raises(ValueError, match="distance='manhattan' is not known"):
        NearestNeighbour(nn.Flatten(), distance="manhattan")
    with pytest.raises(ValueError, match=r"mean_momentum=2 must be in \(0, 1\]"):
        NearestNeighbour(nn.Flatten(), mean_momentum=2)
    with pytest.raises(ValueError, match="cannot tell the embedding size of encoder Flatten"):
        NearestNeighbour(nn.Flatten(), normalize="cl2n")
    with pytest.raises(ValueError, match="fit_feature_mean is for normalize='cl2n' but this model has normalize='none'"):
        NearestNeighbour(nn.Flatten()).fit_feature_mean(torch.zeros(2, 2))
    algo = NearestNeighbour(nn.Flatten(), normalize="cl2n", feature_dim=3)
    with pytest.raises(ValueError, match="the encoder gives 2 features but feature_mean has 3"):
        algo.fit_feature_mean(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="images is empty"):
        algo.fit_feature_mean([])
    with pytest.raises(TypeError, match="images must be tensors"):
        algo.fit_feature_mean([[1.0, 2.0]])
    with pytest.raises(TypeError, match="algorithm Flatten has no encoder module"):
        NearestNeighbour.from_algorithm(nn.Flatten())
    algo.fit_feature_mean(torch.zeros(2, 3))
    with pytest.raises(
        ValueError, match="features have size 2 but feature_mean has 3; set feature_dim to the encoder's output size"
    ):
        algo.transform(torch.zeros(4, 2))


def test_encoder_runs_in_chunks_only_when_batch_independent():
    from metakit.algorithms._embedding import batch_dependent, run_encoder

    calls = []

    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(3)

        def forward(self, x):
            calls.append(x.shape[0])
            return self.bn(x)

    torch.manual_seed(0)
    enc = Counting()
    x = torch.randn(10, 3)
    assert batch_dependent(enc)
    one = run_encoder(enc, x, chunk_values=6)  # training mode: one call (batch statistics)
    assert calls == [10]
    enc.eval()
    assert not batch_dependent(enc)
    calls.clear()
    chunked = run_encoder(enc, x, chunk_values=6)  # 2 examples (of 3 values) per call
    assert calls == [2] * 5 and torch.allclose(chunked, enc(x))
    assert batch_dependent(nn.BatchNorm1d(3, track_running_stats=False).eval())
    assert one.shape == (10, 3)
