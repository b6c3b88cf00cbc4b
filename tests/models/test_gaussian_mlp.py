"""The Gaussian policy (metakit.models.gaussian_mlp): output layout, initial std, activations, errors."""

import math

import pytest
import torch
from torch.func import functional_call

from metakit.models import GaussianMLP, build_model


def test_the_output_is_the_mean_then_the_state_independent_log_std():
    torch.manual_seed(0)
    policy = GaussianMLP(3, 2, (5, 4), init_std=0.5)
    x = torch.randn(7, 3)
    out = policy(x)
    assert out.shape == (7, 4)
    assert torch.equal(out[:, :2], policy.mean(x))
    assert torch.allclose(out[:, 2:], torch.full((7, 2), math.log(0.5)))
    assert [type(m).__name__ for m in policy.mean.net] == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    # log_std is a parameter the functional call replaces
    params = {n: p.detach().clone() for n, p in policy.named_parameters()}
    params["log_std"] = torch.tensor([0.1, -0.2])
    assert torch.allclose(functional_call(policy, params, (x,))[:, 2:], torch.tensor([0.1, -0.2]).expand(7, 2))


def test_tanh_and_the_registry():
    policy = build_model("gaussian_mlp", in_features=2, action_dim=6, hidden=[8], activation="tanh")
    assert [type(m).__name__ for m in policy.mean.net] == ["Linear", "Tanh", "Linear"]
    assert policy(torch.zeros(1, 2)).shape == (1, 12)


def test_bad_options_are_refused_by_name():
    with pytest.raises(ValueError, match=r"init_std=0 must be a positive number"):
        GaussianMLP(init_std=0)
    with pytest.raises(ValueError, match=r"activation='gelu' is not valid; use relu or tanh"):
        GaussianMLP(activation="gelu")  # type: ignore[arg-type]
