"""Tests of the machinery shared by the embedding methods (metakit.algorithms._embedding)."""

import pytest
import torch
from torch import nn

from metakit.algorithms._embedding import check_batch, check_support, eval_mode, feature_shape_of
from metakit.algorithms.protonet import ProtoNet
from metakit.tasks import EpisodeBatch


def test_check_batch_needs_one_label_per_example():
    # integer labels [tasks, examples, 1]: a valid EpisodeBatch, but not one label per example
    labels = torch.zeros(2, 4, 1, dtype=torch.long)
    batch = EpisodeBatch(torch.rand(2, 4, 3), labels, torch.rand(2, 2, 3), labels[:, :2], 2)
    message = (
        r"support_y has shape \(2, 4, 1\) and query_y \(2, 2, 1\); ProtoNet needs one integer label per example "
        r"\(\[tasks, examples\]\)"
    )
    with pytest.raises(ValueError, match=message):
        check_batch(batch, "ProtoNet")
    with pytest.raises(ValueError, match=message):
        ProtoNet(nn.Flatten()).meta_loss(batch)


def test_check_support_needs_tensors():
    message = r"support_x and support_y must be tensors, got list and tensor of shape \(2,\) and dtype torch.int64"
    with pytest.raises(TypeError, match=message):
        check_support([[0.0], [1.0]], torch.tensor([0, 1]), None, "ProtoNet")
    with pytest.raises(TypeError, match=r"tensors, got tensor of shape \(2, 1\) and dtype torch.float32 and list"):
        ProtoNet(nn.Flatten()).adapt(torch.zeros(2, 1), [0, 1])


def test_eval_mode_restores_each_modules_own_mode():
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Dropout())
    net[1].eval()  # a frozen BatchNorm in a training model
    with eval_mode(net):
        assert not any(m.training for m in net.modules())
    assert [m.training for m in net.modules()] == [True, True, False, True]
    with pytest.raises(RuntimeError, match="boom"), eval_mode(net):
        raise RuntimeError("boom")
    assert [m.training for m in net.modules()] == [True, True, False, True]
    # feature_shape_of measures in eval mode and leaves the modes as they were
    assert feature_shape_of(net, example_shape=(2,)) == (2,)
    assert [m.training for m in net.modules()] == [True, True, False, True]
