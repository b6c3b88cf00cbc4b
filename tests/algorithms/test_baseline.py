import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metakit.algorithms import BuildContext, get_algorithm
from metakit.algorithms.baseline import Baseline, CosineHead, default_cosine_scale, head_scores
from metakit.models import Conv4
from metakit.tasks import EpisodeBatch


class _Identity(nn.Module):
    feature_dim = 2

    def forward(self, x):
        return x


def _toy_batch(tasks=3, seed=0, dtype=torch.float32) -> EpisodeBatch:
    """Two well separated 2-D classes per task (around +-(2, 2) and a task-dependent offset)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[2.0, 2.0], [-2.0, -2.0]])
    sy = torch.tensor([0, 1, 0, 1, 1, 0])
    qy = torch.tensor([1, 0, 0, 1])
    sx = centres[sy] + 0.3 * torch.randn(tasks, 6, 2, generator=g)
    qx = centres[qy] + 0.3 * torch.randn(tasks, 4, 2, generator=g)
    classes = torch.stack([torch.randperm(10, generator=g)[:2] for _ in range(tasks)])
    return EpisodeBatch(sx.to(dtype), sy.expand(tasks, 6), qx.to(dtype), qy.expand(tasks, 4), 2, classes)


def test_registered_and_cosine_scale_rule():
    assert get_algorithm("baseline") is Baseline
    assert default_cosine_scale(5) == 2.0 and default_cosine_scale(200) == 2.0 and default_cosine_scale(4112) == 10.0


def test_head_scores_by_hand():
    z = torch.tensor([[[1.0, 2.0]]])
    w = torch.tensor([[[1.0, 0.0], [0.0, -1.0]]])
    b = torch.tensor([[0.5, 1.0]])
    assert head_scores(z, "linear", w, b, 1.0).tolist() == [[[1.5, -1.0]]]
    gain = torch.tensor([[2.0, 3.0]])
    # cos((1,2),(1,0)) = 1/sqrt(5); cos((1,2),(0,-1)) = -2/sqrt(5); scale 10
    expected = [10 * 2 / math.sqrt(5), 10 * 3 * -2 / math.sqrt(5)]
    assert head_scores(z, "cosine", w, gain, 10.0)[0, 0].tolist() == pytest.approx(expected)
    head = CosineHead(3, 4, 10.0)
    assert torch.allclose(head.gain, head.direction.norm(dim=1))


def test_pretraining_loss_uses_global_labels():
    algo = Baseline(_Identity(), num_classes=10)
    with torch.no_grad():
        algo.classifier.weight.copy_(torch.arange(20.0).reshape(10, 2) / 10)
    batch = EpisodeBatch(
        torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]),
        torch.tensor([[1, 0]]),
        torch.tensor([[[1.0, 1.0]]]),
        torch.tensor([[1]]),
        2,
        torch.tensor([[7, 3]]),
    )
    ys, yq = algo.global_labels(batch)
    assert ys.tolist() == [[3, 7]] and yq.tolist() == [[3]]
    loss, metrics = algo.meta_loss(batch)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    logits = x @ algo.classifier.weight.T  # bias starts at zero
    expected = -(logits.log_softmax(-1)[torch.arange(3), torch.tensor([3, 7, 3])]).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert metrics["accuracy"] == 0.0  # the highest class (9) wins every row
    loss.backward()
    assert algo.classifier.weight.grad.abs().sum() > 0


def test_fine_tuning_matches_hand_unrolled_sgd():
    algo = Baseline(
        _Identity(), num_classes=10, finetune_epochs=3, finetune_batch_size=8, finetune_lr=0.5, finetune_weight_decay=0.1
    ).double()
    batch = _toy_batch(tasks=1, dtype=torch.float64)
    z, y = batch.support_x[0], batch.support_y[0]
    w, b, _ = algo.finetune_draws(2, 2, 6)
    buf_w = buf_b = None
    onehot = F.one_hot(y, 2).double()
    for step in range(3):  # batch size >= support size: one full-batch step per epoch
        p = torch.softmax(z @ w.T + b, -1)
        gw = (p - onehot).T @ z / 6 + 0.1 * w
        gb = (p - onehot).mean(0) + 0.1 * b
        buf_w = gw if buf_w is None else 0.9 * buf_w + (1 - 0.9) * gw
        buf_b = gb if buf_b is None else 0.9 * buf_b + (1 - 0.9) * gb
        w, b = w - 0.5 * buf_w, b - 0.5 * buf_b
    weight, bias = algo.fit_heads(batch.support_x, batch.support_y, 2)
    assert torch.allclose(weight[0], w, atol=1e-12) and torch.allclose(bias[0], b, atol=1e-12)


@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_batched_predict_equals_per_task_adapt_and_is_deterministic(head):
    algo = Baseline(_Identity(), num_classes=10, head=head, finetune_epochs=20)
    batch = _toy_batch(tasks=3)
    state = torch.get_rng_state()
    with torch.no_grad():
        scores = algo.predict(batch)
        again = algo.predict(batch)
        per_task = [algo.adapt(ep.support_x, ep.support_y, 2).predict(ep.query_x) for ep in batch]
    assert torch.equal(torch.get_rng_state(), state)  # private generator: global RNG untouched
    assert torch.equal(scores, again)
    assert torch.allclose(scores, torch.stack(per_task), atol=1e-5)
    assert (scores.argmax(-1) == batch.query_y).all()  # separable toy tasks are solved
    with torch.inference_mode():
        assert torch.allclose(algo.predict(batch), scores, atol=1e-6)


def test_fine_tuning_leaves_the_backbone_untouched():
    torch.manual_seed(0)
    algo = Baseline(Conv4(hidden=8), num_classes=5, finetune_epochs=2).eval()
    before = {k: v.clone() for k, v in algo.state_dict().items()}
    batch = EpisodeBatch(
        torch.randn(2, 4, 1, 28, 28), torch.tensor([[0, 1, 0, 1]] * 2), torch.randn(2, 2, 1, 28, 28), torch.tensor([[1, 0]] * 2), 2
    )
    with torch.no_grad():
        assert algo.predict(batch).shape == (2, 2, 2)
    assert all(torch.equal(before[k], v) for k, v in algo.state_dict().items())
    assert all(p.grad is None for p in algo.parameters())


def test_from_config_takes_the_training_class_count():
    ctx = BuildContext(ways=5, example_shape=(1, 28, 28), num_train_classes=4112)
    algo = Baseline.from_config(Conv4(hidden=4), ctx, head="cosine")
    assert algo.num_classes == 4112 and algo.classifier.scale == 10.0
    assert algo.finetune_scale(5) == 2.0
    with pytest.raises(ValueError, match="num_classes=100 but the training split has 4112 classes"):
        Baseline.from_config(Conv4(hidden=4), ctx, num_classes=100)
    with pytest.raises(ValueError, match=r"this data has no class count \(num_train_classes=None\)"):
        Baseline.from_config(Conv4(hidden=4), BuildContext(ways=5, example_shape=(1, 28, 28)))


def test_bad_inputs():
    with pytest.raises(ValueError, match="num_classes is not set"):
        Baseline(_Identity())
    with pytest.raises(ValueError, match="head='cos' is not known; did you mean 'cosine'"):
        Baseline(_Identity(), num_classes=3, head="cos")
    with pytest.raises(ValueError, match="finetune_lr=0 must be a finite number > 0"):
        Baseline(_Identity(), num_classes=3, finetune_lr=0)
    with pytest.raises(ValueError, match="finetune_momentum=-0.1 must be a finite number >= 0"):
        Baseline(_Identity(), num_classes=3, finetune_momentum=-0.1)
    with pytest.raises(ValueError, match="finetune_seed=1.5 must be an int"):
        Baseline(_Identity(), num_classes=3, finetune_seed=1.5)
    algo = Baseline(_Identity(), num_classes=3)
    batch = _toy_batch()
    no_classes = EpisodeBatch(batch.support_x, batch.support_y, batch.query_x, batch.query_y, 2)
    with pytest.raises(ValueError, match="the baseline pre-trains on global class labels but batch.classes is None"):
        algo.meta_loss(no_classes)
    with pytest.raises(ValueError, match=r"batch.classes holds class indices \d+..\d+ but num_classes=3"):
        Baseline(_Identity(), num_classes=3).meta_loss(
            EpisodeBatch(batch.support_x, batch.support_y, batch.query_x, batch.query_y, 2, torch.tensor([[0, 5]] * 3))
        )
    with pytest.raises(ValueError, match="the encoder gives 3 features but the heads expect 2"):
        algo.embed(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="support_y of task 0 has no example of label 1"):
        algo.adapt(torch.zeros(2, 2), torch.tensor([0, 0]), 2)
    learner = algo.adapt(torch.tensor([[1.0, 1.0], [-1.0, -1.0]]), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match=r"query_x must be a tensor \[Q, \*x_shape\], got list"):
        learner.predict([[1.0, 1.0]])
    with pytest.raises(TypeError, match=r"query_x must be a tensor \[Q, \*x_shape\], got tensor of shape \(\) "):
        learner.predict(torch.tensor(1.0))


def test_evaluation_options_are_checked_and_change_the_fitted_head():
    torch.manual_seed(0)
    b = Baseline(Conv4(hidden=8), num_classes=6, head="cosine")
    z, y = torch.randn(1, 6, 8), torch.arange(3).repeat(2).unsqueeze(0)
    default = b.fit_heads(z, y, 3)[0]
    assert b.finetune_scale(3) == 2.0
    b.set_evaluation_options(finetune_epochs=2, scale=10)
    assert (b.finetune_epochs, b.finetune_scale(3), b.classifier.scale) == (2, 10.0, 2.0)  # the trained head keeps its own
    assert not torch.equal(b.fit_heads(z, y, 3)[0], default)
    with pytest.raises(ValueError, match=r"finetune_epoch is not an evaluation-time option of Baseline \(.*finetune_epochs"):
        b.set_evaluation_options(finetune_epoch=3)
    with pytest.raises(ValueError, match="finetune_lr"):
        b.set_evaluation_options(finetune_lr=0.0)
    assert b.finetune_lr == 0.01
