"""The tabular-MDP references (metakit.references.mdp): PSRL's posterior against hand-computed
values, the optimal policy against value iteration, PSRL between random and optimal."""

import numpy as np
import pytest

from metakit.references import OptimalMDP, PSRL, RandomMDP, play_mdp_trials
from metakit.references.mdp import normal_posterior
from metakit.runtime.evaluation import mean_ci95
from metakit.tasks import EnvBatch
from metakit.tasks.tabular_mdp import TabularMDPFamily


def batch(episodes: int, tasks: int = 100, **options) -> EnvBatch:
    fam = TabularMDPFamily(TabularMDPFamily.Options(**options))
    return EnvBatch(tuple(fam.task(0, "test", j) for j in range(tasks)), episodes, 1)


def test_normal_posterior_by_hand():
    # prior Normal(1, 1), noise variance 1, rewards 2.0 and 4.0: precision 1 + 2 = 3, mean (1 + 6) / 3
    mean, var = normal_posterior(np.array(2.0), np.array(6.0), 1.0, 1.0, 1.0)
    assert mean == pytest.approx(7 / 3) and var == pytest.approx(1 / 3)
    # prior Normal(0, 4), noise variance 2, one reward 3.0: precision 1/4 + 1/2 = 3/4, mean (3/2) / (3/4) = 2
    mean, var = normal_posterior(np.array(1.0), np.array(3.0), 0.0, 4.0, 2.0)
    assert mean == pytest.approx(2.0) and var == pytest.approx(4 / 3)


def test_psrl_updates_its_posterior_with_each_step():
    b = batch(1, tasks=1, states=2, actions=2, horizon=2)
    psrl = PSRL()
    psrl.start(b, 2, 2, 2, [np.random.default_rng(0)])
    psrl.observe(np.array([0]), np.array([1]), np.array([3.0]), np.array([1]))
    psrl.observe(np.array([1]), np.array([0]), np.array([-1.0]), np.array([1]))
    psrl.observe(np.array([0]), np.array([1]), np.array([1.0]), np.array([0]))
    mean, var, alpha = psrl.posterior()
    # (0, 1) saw 3.0 and 1.0: precision 3, mean (1 + 4) / 3; (1, 0) saw -1.0: precision 2, mean 0; others: the prior
    assert np.allclose(mean[0], [[1.0, 5 / 3], [0.0, 1.0]]) and np.allclose(var[0], [[1.0, 1 / 3], [0.5, 1.0]])
    assert alpha[0, 0, 1].tolist() == [2.0, 2.0] and alpha[0, 1, 0].tolist() == [1.0, 2.0] and alpha[0, 1, 1].tolist() == [1.0, 1.0]
    rewards, transitions = psrl.sample()
    assert rewards.shape == (1, 2, 2) and np.allclose(transitions.sum(-1), 1.0)


def test_psrl_draws_concentrate_on_the_posterior_mean():
    b = batch(1, tasks=1, states=2, actions=2, horizon=2)
    psrl = PSRL()
    psrl.start(b, 2, 2, 2, [np.random.default_rng(0)])
    psrl.count[:] = 400.0
    psrl.total[:] = 400.0 * np.array([[0.5, 2.0], [-1.0, 3.0]])
    psrl.transitions[0, :, :, 0] = 900.0
    psrl.transitions[0, :, :, 1] = 100.0
    draws = [psrl.sample() for _ in range(200)]
    r = np.mean([d[0][0] for d in draws], 0)
    p = np.mean([d[1][0] for d in draws], 0)
    assert np.allclose(r, (1 + 400 * np.array([[0.5, 2.0], [-1.0, 3.0]])) / 401, atol=0.02)
    assert np.allclose(p[..., 0], 901 / 1002, atol=0.01)


def test_the_optimal_policy_earns_the_value_iteration_return():
    b = batch(20, tasks=150)
    got = play_mdp_trials(OptimalMDP(), b)
    expected = np.array([b.family.optimal_return(t, 20) for t in b])
    mean, ci = mean_ci95(got - expected)
    assert abs(mean) < max(ci, 1e-9) * 1.5


def test_psrl_sits_between_random_and_optimal_and_improves_with_episodes():
    b = batch(25, tasks=60)
    optimal = np.mean([b.family.optimal_return(t, 25) for t in b])
    random = play_mdp_trials(RandomMDP(), b).mean()
    psrl = play_mdp_trials(PSRL(), b, per_episode=True)
    assert random < psrl.sum(1).mean() < optimal
    assert psrl[:, -5:].mean() > psrl[:, :5].mean() + 2  # later episodes earn more per episode
    assert random == pytest.approx(25 * 10 * 1.0, rel=0.05)  # random actions earn the prior mean 1 per step


@pytest.mark.parametrize("make, message", [
    (lambda: PSRL(prior_var=0), r"prior_var=0 must be a number in \(0.0, inf\)"),
    (lambda: play_mdp_trials(RandomMDP(), batch(1, tasks=1), episodes=0), r"episodes=0 must be a positive int"),
])
def test_bad_constants_are_refused_with_their_name(make, message):
    with pytest.raises(ValueError, match=message):
        make()
