"""The bandit references (metakit.references.bandits): the Gittins index against Gittins' tables,
UCB1's logarithmic regret, Thompson sampling and UCB1 against random pulls and the optimum,
reproducibility per task, and the errors."""

import numpy as np
import pytest

from metakit.references import EpsilonGreedy, Gittins, RandomArms, Thompson, UCB1, gittins_index_table, play_bandit_trials
from metakit.tasks import EnvBatch
from metakit.tasks.bandits import BanditFamily

# Discounted Gittins indices of Bernoulli arms with a uniform prior at discount 0.9, from Gittins'
# table (Gittins, Glazebrook & Weber, "Multi-armed Bandit Allocation Indices", 2011; the same table
# is reproduced in Christian & Griffiths, "Algorithms to Live By", 2016): (successes, failures) -> index.
GITTINS_0_9 = {(0, 0): 0.7029, (1, 1): 0.6346, (2, 2): 0.6010, (9, 1): 0.8695}


def batch(arms: int, pulls: int, tasks: int = 200, stream: str = "test") -> EnvBatch:
    fam = BanditFamily(BanditFamily.Options(arms=arms))
    return EnvBatch(tuple(fam.task(0, stream, j) for j in range(tasks)), pulls, 1)


def regret(policy, b: EnvBatch) -> float:
    optimal = np.mean([b.family.optimal_return(t, b.shots) for t in b])
    return float(optimal - play_bandit_trials(policy, b).mean())


def test_gittins_index_matches_the_tabulated_values():
    table = gittins_index_table(0.9, 12)
    for (s, f), value in GITTINS_0_9.items():
        assert table[s, f] == pytest.approx(value, abs=1e-4), (s, f)


def test_gittins_index_exceeds_the_posterior_mean_and_grows_with_successes():
    table = gittins_index_table(0.95, 20, grid=501)
    s, f = np.meshgrid(np.arange(21), np.arange(21), indexing="ij")
    known = s + f <= 20
    mean = (1 + s) / (2 + s + f)
    assert np.all(table[known] > mean[known])
    assert np.all(np.isnan(table[~known]))
    assert np.all(np.diff(table[:10, 0]) > 0) and np.all(np.diff(table[0, :10]) < 0)
    # a deeper truncation changes the index by less than the grid's resolution
    deeper = gittins_index_table(0.95, 20, grid=501, depth=400)
    assert np.nanmax(np.abs(deeper - table)) < 2e-3


def test_ucb1_regret_grows_logarithmically_and_random_regret_linearly():
    short, long = batch(5, 100, 100), batch(5, 1000, 100)
    ucb_ratio = regret(UCB1(0.2), long) / regret(UCB1(0.2), short)
    random_ratio = regret(RandomArms(), long) / regret(RandomArms(), short)
    assert ucb_ratio < 4  # log(1000) / log(100) = 1.5; linear growth would be 10
    assert 8 < random_ratio < 12


def test_thompson_gittins_and_ucb1_beat_random_and_approach_the_optimum():
    b = batch(5, 300, 100)
    optimal = np.mean([b.family.optimal_return(t, 300) for t in b])
    random = play_bandit_trials(RandomArms(), b).mean()
    for policy in (Thompson(), UCB1(0.2), Gittins(0.98)):
        got = play_bandit_trials(policy, b).mean()
        # each closes more than 85% of the gap between random pulls and the optimum in 300 pulls
        assert got > random + 0.85 * (optimal - random), policy.describe()


def test_a_tasks_trial_does_not_depend_on_its_batch():
    b = batch(10, 50, 6)
    alone = EnvBatch((b[3],), 50, 1)
    for policy in (RandomArms(), UCB1(0.5), Thompson(), EpsilonGreedy(0.2), Gittins(0.9)):
        assert play_bandit_trials(policy, b, per_pull=True)[3].tolist() == play_bandit_trials(policy, alone, per_pull=True)[0].tolist()


@pytest.mark.parametrize("make, message", [
    (lambda: UCB1(-0.1), r"c=-0.1 must be a number in \[0.0, inf\)"),
    (lambda: EpsilonGreedy(1.5), r"epsilon=1.5 must be a number in \[0.0, 1.0\]"),
    (lambda: Gittins(1.0), r"discount=1.0 must be a number in \(0.0, 1.0\)"),
    (lambda: gittins_index_table(0.9, -1), r"pulls=-1 must be an int >= 0"),
    (lambda: play_bandit_trials(Thompson(), batch(2, 3, 1), pulls=0), r"pulls=0 must be an int >= 1"),
])
def test_bad_constants_are_refused_with_their_name(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_non_finite_reward_stops_the_trial_with_the_task_named(monkeypatch):
    from metakit.tasks.bandits import BanditVectorEnv

    original = BanditVectorEnv._step_rows

    def nan_rewards(self, actions):
        rewards, terminated, truncated = original(self, actions)
        rewards[1] = np.nan
        return rewards, terminated, truncated

    monkeypatch.setattr(BanditVectorEnv, "_step_rows", nan_rewards)
    with pytest.raises(ValueError, match=r"the environment of task 1 \(task.family=bandits\) returned the reward nan at step 0; rewards must be finite"):
        play_bandit_trials(UCB1(), batch(3, 5, 3))
