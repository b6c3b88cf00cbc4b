import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metakit.algorithms import BuildContext, ProtoNet, get_algorithm
from metakit.algorithms._embedding import batch_dependent
from metakit.algorithms.protonet import cosine_scores, euclidean_scores, prototypes
from metakit.models import Conv4
from metakit.tasks import EpisodeBatch


def _identity_net(**kw) -> ProtoNet:
    return ProtoNet(nn.Identity(), **kw)


def _tiny_batch() -> EpisodeBatch:
    # one task, 2 ways, 2-D "images" that the identity encoder embeds as they are.
    # Support in shuffled label order with unequal shots: class 0 = {(0,0), (2,0)}, class 1 = {(0,4)}.
    support_x = torch.tensor([[[2.0, 0.0], [0.0, 4.0], [0.0, 0.0]]])
    support_y = torch.tensor([[0, 1, 0]])
    query_x = torch.tensor([[[1.0, 2.0], [0.0, 3.0]]])
    query_y = torch.tensor([[0, 1]])
    return EpisodeBatch(support_x, support_y, query_x, query_y, ways=2)


def test_registered_under_protonet():
    assert get_algorithm("protonet") is ProtoNet


def test_prototypes_use_labels_not_positions():
    z = torch.tensor([[[2.0, 0.0], [0.0, 4.0], [0.0, 0.0]]])
    protos = prototypes(z, torch.tensor([[0, 1, 0]]), 2)
    assert torch.equal(protos, torch.tensor([[[1.0, 0.0], [0.0, 4.0]]]))


def test_euclidean_scores_by_hand():
    algo = _identity_net()
    scores = algo.predict(_tiny_batch())
    # prototypes c0=(1,0), c1=(0,4); query (1,2): |.|^2 = 4 and 1+4=5; query (0,3): 1+9=10 and 1
    assert torch.allclose(scores, torch.tensor([[[-4.0, -5.0], [-10.0, -1.0]]]))


def test_meta_loss_is_cross_entropy_by_hand():
    loss, metrics = _identity_net().meta_loss(_tiny_batch())
    # query 0 (label 0): logits (-4, -5) -> CE = log(1 + e^-1); query 1 (label 1): (-10, -1) -> log(1 + e^-9)
    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(-9.0))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert metrics == {"loss": pytest.approx(expected, rel=1e-5), "accuracy": 1.0}


def test_accuracy_metric_counts_wrong_queries():
    b = _tiny_batch()
    wrong = EpisodeBatch(b.support_x, b.support_y, b.query_x, torch.tensor([[0, 0]]), ways=2)
    _, metrics = _identity_net().meta_loss(wrong)
    assert metrics["accuracy"] == 0.5


def test_euclidean_matches_explicit_differences():
    g = torch.Generator().manual_seed(0)
    q, c = torch.randn(3, 7, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    explicit = -((q[:, :, None, :] - c[:, None, :, :]) ** 2).sum(-1)
    assert torch.allclose(euclidean_scores(q, c), explicit, atol=1e-5)


def test_cosine_scores_by_hand_and_scale():
    algo = _identity_net(distance="cosine", scale=2.0)
    scores = algo.predict(_tiny_batch())
    # cos((1,2),(1,0)) = 1/sqrt5, cos((1,2),(0,4)) = 2/sqrt5; cos((0,3),(1,0)) = 0, cos((0,3),(0,4)) = 1
    r = 1 / math.sqrt(5)
    assert torch.allclose(scores, 2.0 * torch.tensor([[[r, 2 * r], [0.0, 1.0]]]))
    assert torch.allclose(cosine_scores(torch.tensor([[[3.0, 4.0]]]), torch.tensor([[[4.0, 3.0]]])), torch.tensor(24 / 25))


def test_default_scales():
    assert float(_identity_net().scale) == pytest.approx(1.0)
    assert float(_identity_net(distance="cosine").scale) == pytest.approx(10.0)


def test_batched_predict_matches_adapt_per_task():
    torch.manual_seed(0)
    algo = ProtoNet(Conv4(hidden=8)).eval()
    sx, qx = torch.rand(3, 6, 1, 28, 28), torch.rand(3, 4, 1, 28, 28)
    sy = torch.tensor([0, 1, 2, 0, 1, 2]).repeat(3, 1)
    qy = torch.tensor([0, 1, 2, 0]).repeat(3, 1)
    batch = EpisodeBatch(sx, sy, qx, qy, ways=3)
    with torch.no_grad():
        batched = algo.predict(batch)
        looped = torch.stack([algo.adapt(e.support_x, e.support_y, e.ways).predict(e.query_x) for e in batch])
    assert batched.shape == (3, 4, 3)
    assert torch.allclose(batched, looped, atol=1e-4)


def test_one_encoder_call_per_batch():
    calls = []

    class Counting(nn.Module):
        def forward(self, x):
            calls.append(x.shape[0])
            return x.flatten(1)

    sx, qx = torch.rand(4, 6, 3), torch.rand(4, 5, 3)
    batch = EpisodeBatch(sx, torch.tensor([0, 1, 2] * 2).repeat(4, 1), qx, torch.zeros(4, 5, dtype=torch.long), ways=3)
    ProtoNet(Counting()).meta_loss(batch)
    assert calls == [4 * 6 + 4 * 5]


def test_gradient_matches_finite_differences(finite_differences):
    torch.manual_seed(0)
    enc = nn.Linear(3, 2).double()
    algo = ProtoNet(enc)
    sx, qx = torch.randn(2, 4, 3, dtype=torch.double), torch.randn(2, 3, 3, dtype=torch.double)
    batch = EpisodeBatch(sx, torch.tensor([[0, 1, 1, 0], [1, 0, 0, 1]]), qx, torch.tensor([[0, 1, 1], [1, 1, 0]]), ways=2)
    loss, _ = algo.meta_loss(batch)
    (grad,) = torch.autograd.grad(loss, enc.weight)
    assert grad.abs().sum() > 0
    numeric = finite_differences(lambda: algo.meta_loss(batch)[0], [enc.weight]).view_as(grad)
    assert torch.allclose(grad, numeric, rtol=0, atol=1e-8) and grad.abs().max() > 1e-2


def test_gradient_reaches_every_conv4_parameter():
    torch.manual_seed(0)
    algo = ProtoNet(Conv4(hidden=8))
    batch = EpisodeBatch(
        torch.rand(2, 4, 1, 28, 28), torch.tensor([[0, 1, 0, 1]] * 2), torch.rand(2, 2, 1, 28, 28), torch.tensor([[0, 1]] * 2), 2
    )
    algo.meta_backward(batch)
    for name, p in algo.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_learnable_scale_is_a_parameter_with_gradient():
    algo = _identity_net(distance="cosine", scale=5.0, learn_scale=True)
    assert [n for n, _ in algo.named_parameters()] == ["log_scale"]
    loss, _ = algo.meta_loss(_tiny_batch())
    loss.backward()
    assert algo.log_scale.grad is not None and algo.log_scale.grad != 0
    # fixed scale: a buffer, saved in the state dict, not trained
    fixed = _identity_net(distance="cosine", scale=5.0)
    assert list(fixed.parameters()) == [] and "log_scale" in fixed.state_dict()


def test_learnable_scale_gradient_by_hand():
    # d/ds CE(s * a) for logits s*a: sum_k (softmax_k - onehot_k) * a_k, and d/dlog s = s * that
    algo = _identity_net(distance="cosine", scale=3.0, learn_scale=True)
    b = _tiny_batch()
    loss, _ = algo.meta_loss(b)
    loss.backward()
    r = 1 / math.sqrt(5)
    a = torch.tensor([[r, 2 * r], [0.0, 1.0]])
    p = F.softmax(3.0 * a, -1)
    onehot = F.one_hot(torch.tensor([0, 1]), 2).float()
    expected = 3.0 * ((p - onehot) * a).sum(-1).mean()
    assert algo.log_scale.grad.item() == pytest.approx(expected.item(), rel=1e-5)


def test_adapt_default_ways_and_learner_shape():
    algo = _identity_net()
    learner = algo.adapt(torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]]), torch.tensor([2, 0, 1]))
    assert learner.ways == 3
    # prototypes (5, 0), (0, 5), (0, 0) by label: the query (1, 0) is 16, 26 and 1 away (squared)
    assert torch.equal(learner.predict(torch.tensor([[1.0, 0.0]])), torch.tensor([[-16.0, -26.0, -1.0]]))
    assert learner.predict(torch.tensor([[4.0, 1.0], [0.1, 0.0]])).argmax(-1).tolist() == [0, 2]


def test_error_distance_typo():
    with pytest.raises(ValueError, match="distance='euclidian' is not known; did you mean 'euclidean'"):
        ProtoNet(nn.Identity(), distance="euclidian")


def test_error_bad_scale_and_encoder():
    with pytest.raises(ValueError, match=r"scale=0 must be a positive finite number"):
        ProtoNet(nn.Identity(), scale=0)
    with pytest.raises(TypeError, match="encoder must be a torch.nn.Module, got function"):
        ProtoNet(lambda x: x)
    with pytest.raises(TypeError, match="learn_scale='yes' must be True or False"):
        ProtoNet(nn.Identity(), learn_scale="yes")


def test_error_label_without_support_example():
    b = EpisodeBatch(torch.rand(2, 2, 2), torch.tensor([[0, 1], [0, 0]]), torch.rand(2, 1, 2), torch.tensor([[0], [0]]), ways=2)
    with pytest.raises(ValueError, match=r"support_y of task 1 has no example of label 1 \(labels present: \[0\], ways=2\)"):
        _identity_net().meta_loss(b)
    with pytest.raises(ValueError, match="support_y of task 0 has no example of label 2"):
        _identity_net().adapt(torch.rand(2, 2), torch.tensor([0, 1]), ways=3)


def test_error_regression_batch_and_bad_adapt_input():
    reg = EpisodeBatch(torch.rand(1, 3, 1), torch.rand(1, 3, 1), torch.rand(1, 2, 1), torch.rand(1, 2, 1))
    with pytest.raises(ValueError, match="batch.ways is None .*ProtoNet classifies"):
        _identity_net().meta_loss(reg)
    with pytest.raises(TypeError, match="batch must be an EpisodeBatch, got tuple"):
        _identity_net().predict((1, 2))
    with pytest.raises(TypeError, match="support_y must be a 1-D integer label tensor"):
        _identity_net().adapt(torch.rand(3, 2), torch.rand(3))
    with pytest.raises(ValueError, match=r"support_x has shape \(3, 2\) but support_y has shape \(2,\)"):
        _identity_net().adapt(torch.rand(3, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"support_y holds labels 0..3 but ways=2"):
        _identity_net().adapt(torch.rand(2, 2), torch.tensor([0, 3]), ways=2)
    with pytest.raises(ValueError, match="the support set is empty"):
        _identity_net().adapt(torch.rand(0, 2), torch.zeros(0, dtype=torch.long))
    with pytest.raises(TypeError, match="query_x must be a tensor"):
        _identity_net().adapt(torch.rand(2, 2), torch.tensor([0, 1])).predict([1.0])


def test_eval_mode_chunks_large_batches_with_identical_results():
    torch.manual_seed(0)
    algo = ProtoNet(Conv4(hidden=8))
    batch = EpisodeBatch(
        torch.rand(3, 4, 1, 28, 28), torch.tensor([[0, 1, 0, 1]] * 3), torch.rand(3, 6, 1, 28, 28), torch.tensor([[0, 1] * 3] * 3), 2
    )
    algo.meta_loss(batch)  # one training step's worth of running statistics
    algo.eval()
    assert not batch_dependent(algo.encoder)
    with torch.no_grad():
        whole = algo.predict(batch)
        algo.embed_chunk_values = 7 * 28 * 28  # 7 images per encoder call: 30 images -> 5 calls
        calls = []
        handle = algo.encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
        chunked = algo.predict(batch)
        handle.remove()
    assert calls == [7, 7, 7, 7, 2]
    assert torch.allclose(whole, chunked, atol=1e-5)


def test_batch_statistics_encoders_are_never_chunked():
    algo = ProtoNet(Conv4(hidden=8, track_running_stats=False)).eval()
    assert batch_dependent(algo.encoder)
    algo.embed_chunk_values = 28 * 28
    calls = []
    algo.encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with torch.no_grad():
        algo.embed(torch.rand(5, 1, 28, 28))
    assert calls == [5]
    assert batch_dependent(ProtoNet(Conv4(hidden=8)).encoder)  # training mode


def test_model_defaults_fit_the_images():
    ctx = BuildContext(ways=5, example_shape=(3, 32, 32))
    assert ProtoNet.model_defaults(ctx) == {"in_channels": 3, "image_size": 32}
    assert ProtoNet.model_defaults(BuildContext(ways=None, example_shape=(1,))) == {}
    algo = ProtoNet.from_config(Conv4(hidden=8, **ProtoNet.model_defaults(ctx)), ctx)
    batch = EpisodeBatch(torch.rand(1, 2, 3, 32, 32), torch.tensor([[0, 1]]), torch.rand(1, 3, 3, 32, 32), torch.tensor([[1, 0, 1]]), 2)
    assert algo.predict(batch).shape == (1, 3, 2)
