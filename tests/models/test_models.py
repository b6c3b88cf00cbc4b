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
    with pytest.raises(ValueError, match=r"model.name='conv5' is not a known model \(did you mean 'conv4'\?\); available: conv4, conv4_strided, flatten, gaussian_mlp, mlp, recurrent_policy, relation_encoder"):
        build_model("conv5")
    with pytest.raises(ValueError, match=r"model.name='mlp' does not accept these options \['widht'\]"):
        build_model("mlp", widht=3)


def _conventional_forward(features, x):
    """``features`` run the way the papers write the blocks: ... BatchNorm, ReLU, then pool."""
    mods = list(features)
    i = 0
    while i < len(mods):
        if isinstance(mods[i], torch.nn.MaxPool2d) and i + 1 < len(mods) and isinstance(mods[i + 1], torch.nn.ReLU):
            x = mods[i](mods[i + 1](x))
            i += 2
        else:
            x = mods[i](x)
            i += 1
    return x


@pytest.mark.parametrize("which", ["conv4", "relation"])
def test_pooling_before_relu_is_the_conventional_block_with_its_gradients(which):
    """The blocks pool before the ReLU (less work); values, gradients and second-order gradients
    must equal the conventional conv-BN-ReLU-pool order (float64, where ties cannot occur)."""
    from metakit.models import RelationEncoder

    torch.manual_seed(0)
    model = (Conv4(hidden=8, track_running_stats=False) if which == "conv4"
             else RelationEncoder(hidden=8, track_running_stats=False)).double()
    order = [type(m).__name__ for m in model.features][:4]
    assert order == ["Conv2d", "BatchNorm2d", "MaxPool2d", "ReLU"]
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        torch.nn.init.uniform_(bn.weight, -1.5, 1.5)  # negative scales too
        torch.nn.init.uniform_(bn.bias, -0.5, 0.5)
    x = torch.randn(6, 1, 28, 28, dtype=torch.float64)
    params = list(model.parameters())

    def grads(forward):
        out = forward(x)
        loss = (out.flatten(1) ** 2).sum(1).mul(torch.linspace(0.1, 1, len(out), dtype=out.dtype)).sum()
        g = torch.autograd.grad(loss, params, create_graph=True)
        gg = torch.autograd.grad(sum((gi ** 2).sum() for gi in g), params, allow_unused=True, materialize_grads=True)
        return out, g, gg

    ours, g1, gg1 = grads(model.features)
    ref, g2, gg2 = grads(lambda t: _conventional_forward(model.features, t))
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(gg1, gg2):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    assert sum(float(g.abs().sum()) for g in gg1) > 0  # the second-order check is not vacuous
