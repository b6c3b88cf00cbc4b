import pytest
import torch

from metakit.models import MLP, Conv4, build_model


def test_conv4_feature_sizes():
    x = torch.randn(3, 1, 28, 28)
    assert Conv4()(x).shape == (3, 64)
    assert Conv4(out_features=5)(x).shape == (3, 5)
    assert Conv4(in_channels=3, image_size=84)(torch.randn(2, 3, 84, 84)).shape == (2, 64 * 5 * 5)


def test_conv4_without_running_stats_uses_batch_statistics_in_eval():
    m = Conv4(track_running_stats=False).eval()
    bns = [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    assert all(bn.running_mean is None for bn in bns)
    x = torch.randn(4, 1, 28, 28)
    # batch statistics: the output of one example depends on the rest of the batch
    assert not torch.allclose(m(x)[:2], m(x[:2]))


def test_mlp_shapes_and_layers():
    m = MLP(1, [40, 40], 1)
    assert m(torch.randn(7, 1)).shape == (7, 1)
    assert sum(p.numel() for p in m.parameters()) == (1 * 40 + 40) + (40 * 40 + 40) + (40 + 1)


def test_build_model_errors():
    assert isinstance(build_model("conv4", out_features=3), Conv4)
    with pytest.raises(ValueError, match="model='conv5' is not known; did you mean 'conv4'"):
        build_model("conv5")
    with pytest.raises(ValueError, match=r"model='mlp' does not accept these options \['widht'\]"):
        build_model("mlp", widht=3)
