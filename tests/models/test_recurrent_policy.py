"""The recurrent policy of RL² (metakit.models.recurrent_policy): its inputs, sequence and step
forms, distributions, and the errors."""

import pytest
import torch

from metakit.models import RecurrentPolicy, build_model


def test_inputs_encode_previous_action_reward_and_done():
    p = RecurrentPolicy(observation_dim=2, action_dim=3, hidden=4)
    x = p.inputs(torch.tensor([[0.5, 1.0], [0.0, 2.0]]), torch.tensor([-1, 2]), torch.tensor([0.0, 1.5]), torch.tensor([0.0, 1.0]))
    assert x.tolist() == [[0.5, 1.0, 0, 0, 0, 0.0, 0.0], [0.0, 2.0, 0, 0, 1, 1.5, 1.0]]
    box = RecurrentPolicy(observation_dim=1, action_dim=2, discrete=False, hidden=4)
    y = box.inputs(torch.tensor([[3.0]]), torch.tensor([[0.25, -1.0]]), torch.tensor([2.0]), torch.tensor([0.0]))
    assert y.tolist() == [[3.0, 0.25, -1.0, 2.0, 0.0]]


def test_the_sequence_form_equals_steps_with_the_hidden_state_carried():
    torch.manual_seed(0)
    p = RecurrentPolicy(observation_dim=2, action_dim=3, hidden=5).double()
    obs = torch.randn(4, 6, 2, dtype=torch.float64)
    act = torch.randint(-1, 3, (4, 6))
    rew, done = torch.randn(4, 6, dtype=torch.float64), (torch.rand(4, 6) < 0.3).double()
    head, value, h = p(obs, act, rew, done)
    state = None
    for t in range(6):
        ht, vt, state = p(obs[:, t], act[:, t], rew[:, t], done[:, t], state)
        torch.testing.assert_close(ht, head[:, t], rtol=0, atol=1e-12)
        torch.testing.assert_close(vt, value[:, t], rtol=0, atol=1e-12)
    torch.testing.assert_close(state, h, rtol=0, atol=1e-12)
    # from a zero state by default: the same as an explicit initial state, different from another state
    torch.testing.assert_close(p(obs, act, rew, done, p.initial_state(4))[0], head, rtol=0, atol=0)
    assert not torch.allclose(p(obs, act, rew, done, torch.ones_like(h))[0], head)


def test_distributions_and_registration():
    p = build_model("recurrent_policy", observation_dim=1, action_dim=2, discrete=False, hidden=3, init_log_std=-1.0)
    head, value, _ = p(torch.zeros(5, 1))
    d = p.distribution(head)
    assert head.shape == (5, 2) and value.shape == (5,)
    assert isinstance(d, torch.distributions.Independent) and torch.allclose(d.base_dist.scale, torch.full((5, 2), torch.e ** -1))
    c = RecurrentPolicy(observation_dim=1, action_dim=4, hidden=3)
    assert isinstance(c.distribution(c(torch.zeros(2, 1))[0]), torch.distributions.Categorical)


def test_wrong_sizes_are_refused():
    p = RecurrentPolicy(observation_dim=3, action_dim=2, hidden=4)
    with pytest.raises(ValueError, match=r"observations of size 2 given to a RecurrentPolicy of observation_dim=3"):
        p(torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"hidden=0 must be a positive int"):
        RecurrentPolicy(hidden=0)


def test_one_step_of_unflattened_observations_is_flattened():
    torch.manual_seed(0)
    p = RecurrentPolicy(observation_dim=6, action_dim=2, hidden=3)
    obs = torch.randn(4, 2, 3)
    torch.testing.assert_close(p(obs)[0], p(obs.flatten(1))[0])
