import pytest
import torch
from torch import nn

from metakit.algorithms import get_algorithm
from metakit.algorithms.relation import RelationNet, class_features
from metakit.models import Conv4, RelationEncoder
from metakit.tasks import EpisodeBatch


def test_registered():
    assert get_algorithm("relation") is RelationNet


def test_class_features_sum_and_mean_by_hand():
    z = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [10.0, 20.0]]])
    y = torch.tensor([[0, 1, 0]])
    assert class_features(z, y, 2).tolist() == [[[11.0, 22.0], [3.0, 4.0]]]
    assert class_features(z, y, 2, "mean").tolist() == [[[5.5, 11.0], [3.0, 4.0]]]
    maps = z.reshape(1, 3, 2, 1, 1)
    assert class_features(maps, y, 2).shape == (1, 2, 2, 1, 1)


class _Fixed(nn.Module):
    """Embeds x as itself; reports a feature_dim so RelationNet can size its module."""

    feature_dim = 2

    def forward(self, x):
        return x


def test_scores_pair_each_query_with_the_summed_class_feature_and_loss_is_mse():
    torch.manual_seed(0)
    algo = RelationNet(_Fixed(), relation_channels=4, relation_hidden=3).eval()
    batch = EpisodeBatch(
        torch.tensor([[[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]]]),
        torch.tensor([[0, 0, 1, 1]]),
        torch.tensor([[[1.0, 1.0], [0.5, -1.0]]]),
        torch.tensor([[1, 0]]),
        2,
    )
    scores = algo.predict(batch)[0]
    rel = algo.relation
    sums = torch.tensor([[3.0, 0.0], [0.0, 4.0]])  # class 0: (1,0)+(2,0); class 1: (0,1)+(0,3)
    for qi in range(2):
        for k in range(2):
            pair = torch.cat([batch.query_x[0, qi], sums[k]]).unsqueeze(0)
            assert scores[qi, k].item() == pytest.approx(rel.forward_concatenated(pair).item(), abs=1e-6)
    loss, metrics = algo.meta_loss(batch)
    target = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert loss.item() == pytest.approx(((torch.sigmoid(scores) - target) ** 2).mean().item(), rel=1e-6)
    assert metrics["accuracy"] == pytest.approx((scores.argmax(-1) == torch.tensor([1, 0])).float().mean().item())
    learner = algo.adapt(batch.support_x[0], batch.support_y[0], 2)
    assert torch.allclose(learner.predict(batch.query_x[0]), scores)


def test_omniglot_network_trains_end_to_end():
    torch.manual_seed(0)
    algo = RelationNet(RelationEncoder(hidden=8), relation_channels=8)
    batch = EpisodeBatch(
        torch.randn(2, 6, 1, 28, 28), torch.tensor([[0, 1, 2] * 2] * 2), torch.randn(2, 3, 1, 28, 28), torch.tensor([[2, 1, 0]] * 2), 3
    )
    loss, metrics = algo.meta_loss(batch)
    loss.backward()
    assert 0 <= metrics["accuracy"] <= 1
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in algo.parameters())
    opt = torch.optim.Adam(algo.parameters(), lr=1e-2)
    first = loss.item()
    for _ in range(15):
        opt.zero_grad()
        loss, _ = algo.meta_loss(batch)
        loss.backward()
        opt.step()
    assert loss.item() < first  # fits one fixed batch
    algo.eval()
    with torch.no_grad():
        assert algo.predict(batch).shape == (2, 3, 3)


def test_gradient_matches_finite_differences(finite_differences):
    torch.manual_seed(0)
    algo = RelationNet(_Fixed(), relation_channels=3, relation_hidden=2).double().eval()
    batch = EpisodeBatch(
        torch.randn(1, 4, 2, dtype=torch.float64),
        torch.tensor([[0, 1, 0, 1]]),
        torch.randn(1, 3, 2, dtype=torch.float64),
        torch.tensor([[0, 1, 1]]),
        2,
    )
    algo.meta_loss(batch)[0].backward()
    grads = torch.cat([p.grad.reshape(-1) for p in algo.parameters()])
    fd = finite_differences(lambda: algo.meta_loss(batch)[0], list(algo.parameters()))
    assert torch.allclose(grads, fd, rtol=0, atol=1e-8), (grads - fd).abs().max()
    assert max(float(p.grad.abs().max()) for p in algo.parameters()) > 1e-2  # not a vacuous match


def test_bad_inputs():
    with pytest.raises(ValueError, match="class_pool='summ' is not known; did you mean 'sum'"):
        RelationNet(RelationEncoder(), class_pool="summ")
    with pytest.raises(ValueError, match="relation_hidden=0 must be a finite int > 0"):
        RelationNet(RelationEncoder(), relation_hidden=0)
    with pytest.raises(ValueError, match="cannot tell the embedding size of encoder Conv4"):
        RelationNet(Conv4(out_features=5))
    with pytest.raises(ValueError, match="weight_init='sung' is not known"):
        RelationNet(RelationEncoder(), weight_init="sung")
    algo = RelationNet(RelationEncoder(hidden=4))
    with pytest.raises(ValueError, match=r"the encoder gives features of shape \(4, 6, 6\) but the relation module was built for \(4, 5, 5\)"):
        algo.embed(torch.zeros(1, 1, 32, 32))


def test_chunked_evaluation_equals_one_call():
    torch.manual_seed(0)
    algo = RelationNet(RelationEncoder(hidden=4), relation_channels=4).eval()
    batch = EpisodeBatch(
        torch.randn(5, 4, 1, 28, 28), torch.tensor([[0, 1, 0, 1]] * 5), torch.randn(5, 3, 1, 28, 28), torch.tensor([[1, 0, 1]] * 5), 2
    )
    with torch.no_grad():
        full = algo.predict(batch)
        algo.max_pair_elements = 3 * 2 * 4 * 25 * 2  # two tasks per chunk
        assert torch.allclose(algo.predict(batch), full, atol=1e-6)


def test_model_defaults_size_the_backbone_for_the_images():
    from metakit.algorithms import BuildContext
    from metakit.algorithms.baseline import Baseline

    ctx = BuildContext(ways=5, example_shape=(3, 32, 32), num_train_classes=10)
    assert RelationNet.model_defaults(ctx) == {"in_channels": 3, "image_size": 32}
    assert Baseline.model_defaults(ctx) == {"in_channels": 3, "image_size": 32}
    assert RelationNet.model_defaults(BuildContext(ways=5, example_shape=(1,))) == {}
    algo = RelationNet.from_config(RelationEncoder(**RelationNet.model_defaults(ctx)), ctx)
    assert algo.predict(
        EpisodeBatch(torch.randn(1, 2, 3, 32, 32), torch.tensor([[0, 1]]), torch.randn(1, 2, 3, 32, 32), torch.tensor([[1, 0]]), 2)
    ).shape == (1, 2, 2)


def test_weight_init_published_reinitialises_both_networks():
    torch.manual_seed(0)
    default = RelationNet(RelationEncoder(hidden=8), relation_channels=8)
    torch.manual_seed(0)
    published = RelationNet(RelationEncoder(hidden=8), relation_channels=8, weight_init="published")
    assert published.weight_init == "published" and "weight_init='published'" in repr(published)
    assert not torch.all(default.relation.head[0].bias == 1)
    assert torch.all(published.relation.head[0].bias == 1) and torch.all(published.relation.head[2].bias == 1)
    conv = published.encoder.features[0]
    assert torch.count_nonzero(conv.bias) == 0 and not torch.equal(conv.weight, default.encoder.features[0].weight)
