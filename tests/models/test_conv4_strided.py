"""The published MAML network: shapes, parameters, initialisation, and an inner loop that leaves
BatchNorm's offset out."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from metakit.algorithms import MAML
from metakit.algorithms._inner import select_parameters
from metakit.models import StridedConv4, build_model
from metakit.tasks import EpisodeBatch


def test_maps_halve_to_2x2_and_the_features_are_their_mean():
    torch.manual_seed(0)
    m = StridedConv4(track_running_stats=False)
    x = torch.rand(6, 1, 28, 28)
    maps = m.features(x)
    assert maps.shape == (6, 64, 2, 2)
    torch.testing.assert_close(m(x), maps.mean(dim=(2, 3)))
    assert not any(isinstance(l, torch.nn.MaxPool2d) for l in m.features)


def test_batchnorm_has_an_offset_and_no_scale_and_matches_a_hand_written_block():
    torch.manual_seed(0)
    m = StridedConv4(track_running_stats=False).double()
    names = [n for n, _ in m.named_parameters()]
    assert "features.2.offset" in names and not any(n.startswith("features.1.") for n in names)
    with torch.no_grad():
        m.features[2].offset.normal_()
    x = torch.rand(5, 1, 28, 28, dtype=torch.float64)
    conv = m.features[0]
    a = F.conv2d(x, conv.weight, conv.bias, stride=2, padding=1)
    mean, var = a.mean(dim=(0, 2, 3), keepdim=True), a.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    expected = torch.relu((a - mean) / torch.sqrt(var + 1e-5) + m.features[2].offset.view(1, -1, 1, 1))
    torch.testing.assert_close(m.features[:4](x), expected, rtol=1e-12, atol=1e-12)


def test_initialisation_glorot_convolutions_and_a_unit_normal_head():
    torch.manual_seed(0)
    m = StridedConv4(out_features=5, hidden=64)
    w = m.features[4].weight  # 64 -> 64, 3x3
    bound = math.sqrt(6.0 / (64 * 9 + 64 * 9))
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert all(float(m.features[i].bias.detach().abs().max()) == 0.0 for i in (0, 4, 8, 12))
    assert 0.8 < float(m.head.weight.detach().std()) < 1.2 and float(m.head.bias.detach().abs().max()) == 0.0


def test_bn_scale_gives_an_ordinary_affine_batchnorm():
    m = StridedConv4(bn_scale=True)
    assert isinstance(m.features[1], torch.nn.BatchNorm2d) and m.features[1].affine


def test_the_inner_loop_can_leave_the_offsets_out():
    m = StridedConv4(out_features=5, track_running_stats=False)
    adapted = select_parameters(m, ".*(weight|bias)")
    assert adapted and not any("offset" in n for n in adapted)
    assert {"head.weight", "head.bias", "features.0.weight"} <= set(adapted)
    maml = MAML(m, inner_lr=2.0, adapt=".*(weight|bias)")
    assert maml.adapt_names == adapted


@pytest.mark.parametrize("image_size, side", [(28, 2), (84, 6)])
def test_reptiles_network_flattens_the_last_map_into_a_glorot_head(image_size, side):
    torch.manual_seed(0)
    m = StridedConv4(out_features=5, bn_scale=True, pool="flatten", head_init="glorot", image_size=image_size,
                     track_running_stats=False)
    assert m.feature_dim == 64 * side * side and m.head.in_features == 64 * side * side
    x = torch.rand(3, 1, image_size, image_size)
    maps = m.features(x)
    assert maps.shape == (3, 64, side, side)
    torch.testing.assert_close(m(x), m.head(maps.flatten(1)))
    bound = math.sqrt(6.0 / (64 * side * side + 5))
    w = m.head.weight.detach()
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound and float(m.head.bias.detach().abs().max()) == 0.0
    assert StridedConv4(image_size=image_size, pool="flatten")(x).shape == (3, 64 * side * side)  # the bare encoder


def test_registered_and_bad_options_named():
    with pytest.raises(ValueError, match=r"pool='max' is not valid; use mean .* or flatten"):
        StridedConv4(pool="max")
    with pytest.raises(ValueError, match=r"head_init='zeros' is not valid; use normal .* or glorot"):
        StridedConv4(head_init="zeros")
    assert isinstance(build_model("conv4_strided", out_features=3), StridedConv4)
    with pytest.raises(ValueError, match="image_size=8 must be an int >= 16"):
        StridedConv4(image_size=8)
    with pytest.raises(ValueError, match="out_features=0"):
        StridedConv4(out_features=0)


def test_second_order_meta_gradient_with_unadapted_offsets_matches_finite_differences(finite_differences):
    # the published configs' path: the offsets are meta-learned but left out of the inner loop,
    # so their meta-gradient flows only through the adapted weights' dependence on them
    torch.manual_seed(0)
    model = StridedConv4(out_features=3, hidden=3, image_size=16, track_running_stats=False).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "offset" in name:
                p.normal_(0.0, 0.5)
    maml = MAML(model, inner_lr=2.0, inner_steps=2, adapt=".*(weight|bias)")
    g = torch.Generator().manual_seed(1)
    batch = EpisodeBatch(
        torch.rand(2, 3, 1, 16, 16, generator=g, dtype=torch.float64),
        torch.arange(3).expand(2, -1).contiguous(),
        torch.rand(2, 6, 1, 16, 16, generator=g, dtype=torch.float64),
        torch.arange(3).repeat(2).expand(2, -1).contiguous(),
        3,
    )
    maml.meta_backward(batch)
    names = [n for n, _ in model.named_parameters()]
    grads = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    fd = finite_differences(lambda: float(maml.meta_loss(batch)[0]), list(model.parameters()))
    offsets = torch.cat([p.grad.reshape(-1) for n, p in model.named_parameters() if "offset" in n])
    assert any("offset" in n for n in names) and offsets.abs().max() > 1e-6
    assert float((grads - fd).abs().max() / fd.abs().max()) < 1e-7
