import pytest
import torch

from metakit.models import RelationEncoder, RelationModule, build_model


def test_encoder_feature_maps_follow_the_paper():
    enc = RelationEncoder()
    assert enc.feature_shape == (64, 5, 5)
    assert enc(torch.randn(2, 1, 28, 28)).shape == (2, 64, 5, 5)
    big = RelationEncoder(in_channels=3, image_size=84)
    assert big.feature_shape == (64, 19, 19)
    assert big(torch.randn(1, 3, 84, 84)).shape == (1, 64, 19, 19)
    pools = [m for m in enc.modules() if isinstance(m, torch.nn.MaxPool2d)]
    pads = [m.padding for m in enc.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(pools) == 2 and pads == [(0, 0), (0, 0), (1, 1), (1, 1)]
    assert isinstance(build_model("relation_encoder", hidden=8), RelationEncoder)


@pytest.mark.parametrize("shape", [(4, 5, 5), (6,)])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_split_first_layer_equals_scoring_concatenated_pairs(shape, mode):
    torch.manual_seed(0)
    rel = RelationModule(shape, channels=6, hidden=3).double()
    if mode == "eval":
        # non-trivial running statistics
        rel.train()
        rel(torch.randn(2, 3, *shape, dtype=torch.float64), torch.randn(2, 2, *shape, dtype=torch.float64))
        rel.eval()
    else:
        rel.train()
    q = torch.randn(2, 3, *shape, dtype=torch.float64)
    c = torch.randn(2, 4, *shape, dtype=torch.float64)
    pairs = torch.cat(
        [q.unsqueeze(2).expand(2, 3, 4, *shape), c.unsqueeze(1).expand(2, 3, 4, *shape)], dim=3
    ).flatten(0, 2)
    expected = rel.forward_concatenated(pairs).reshape(2, 3, 4)
    assert torch.allclose(rel(q, c), expected, atol=1e-10)


def test_relation_module_on_omniglot_maps_has_the_papers_layers():
    rel = RelationModule((64, 5, 5))
    assert rel.first.in_channels == 128 and rel.first.out_channels == 64
    assert rel.pool1 and rel.pool2
    assert rel.head[0].in_features == 64 and rel.head[0].out_features == 8 and rel.head[2].out_features == 1
    assert rel(torch.randn(1, 2, 64, 5, 5), torch.randn(1, 3, 64, 5, 5)).shape == (1, 2, 3)


def test_bad_inputs():
    with pytest.raises(ValueError, match="image_size=8 is too small for the relation encoder"):
        RelationEncoder(image_size=8)
    with pytest.raises(ValueError, match="hidden=0 must be a positive int"):
        RelationEncoder(hidden=0)
    with pytest.raises(ValueError, match=r"feature_shape=\(64, 5\) must be \(C, H, W\) feature maps or \(D,\) vectors"):
        RelationModule((64, 5))
    with pytest.raises(ValueError, match="channels=0 must be a positive int"):
        RelationModule((4,), channels=0)
    rel = RelationModule((4, 5, 5))
    with pytest.raises(ValueError, match=r"query features have shape \(1, 2, 4, 6, 6\); expected \[tasks, queries, 4, 5, 5\]"):
        rel(torch.zeros(1, 2, 4, 6, 6), torch.zeros(1, 2, 4, 5, 5))
    with pytest.raises(ValueError, match=r"class features have shape \(2, 2, 4, 5, 5\); expected \[1, ways, 4, 5, 5\]"):
        rel(torch.zeros(1, 2, 4, 5, 5), torch.zeros(2, 2, 4, 5, 5))


def test_published_init_draws_the_papers_weights():
    from metakit.models.relation import published_init

    torch.manual_seed(0)
    enc, rel = RelationEncoder(), RelationModule((64, 5, 5))
    assert published_init(enc) is enc
    published_init(rel)
    for net in (enc, rel):
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                std = (2.0 / (9 * m.out_channels)) ** 0.5
                assert abs(float(m.weight.detach().std()) / std - 1) < 0.05
                assert abs(float(m.weight.detach().mean())) < 0.05 * std
                assert torch.count_nonzero(m.bias) == 0
            elif isinstance(m, torch.nn.BatchNorm2d):
                assert torch.all(m.weight == 1) and torch.count_nonzero(m.bias) == 0
    fc1, fc2 = rel.head[0], rel.head[2]
    assert abs(float(fc1.weight.detach().std()) / 0.01 - 1) < 0.2
    assert torch.all(fc1.bias == 1) and torch.all(fc2.bias == 1)
    # PyTorch's default draws differ: the first convolution's scale is uniform on the fan-in
    default = RelationEncoder().features[0].weight
    assert abs(float(default.detach().std()) / (2.0 / 9) ** 0.5 - 1) > 0.2
