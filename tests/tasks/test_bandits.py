"""The bandits family (metakit.tasks.bandits): the paper's distribution, check_env, the batched
vector env against the single envs, the optimum, fixed evaluation tasks and the errors."""

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from metakit.options import ConfigError
from metakit.runtime.config import Config
from metakit.tasks import EnvBatch, get_family
from metakit.tasks.bandits import BanditEnv, BanditFamily, BanditVectorEnv


def family(**options) -> BanditFamily:
    return BanditFamily(BanditFamily.Options(**options))


def test_means_are_uniform_per_arm_and_drawn_from_the_task_stream():
    fam = family(arms=10)
    means = np.stack([fam.task(0, "train", i).params["means"] for i in range(2000)])
    assert means.shape == (2000, 10) and means.min() >= 0 and means.max() <= 1
    assert abs(means.mean() - 0.5) < 0.01 and abs(means.var() - 1 / 12) < 0.003  # U[0, 1]: mean 1/2, variance 1/12
    again = family(arms=10).task(0, "train", 7)
    assert np.array_equal(again.params["means"], means[7])


@pytest.mark.parametrize("arms", [2, 5, 10, 50])
def test_every_env_passes_check_env(arms):
    env = family(arms=arms).task(3, "test", 1).make()
    check_env(env, skip_render_check=True)
    assert env.action_space.n == arms and env.observation_space.shape == (1,)


def test_one_episode_is_one_pull_paying_bernoulli_of_the_arm_mean():
    env = BanditEnv([0.2, 0.9])
    obs, _ = env.reset(seed=0)
    pays = []
    for _ in range(4000):
        o, r, terminated, truncated, _ = env.step(1)
        assert terminated and not truncated and np.array_equal(o, obs) and r in (0.0, 1.0)
        pays.append(r)
        env.reset()
    assert abs(np.mean(pays) - 0.9) < 0.015


def test_the_vector_env_gives_the_single_envs_rewards_draw_for_draw():
    fam = family(arms=5)
    tasks = [fam.task(0, "test", j) for j in range(5)]
    vec = EnvBatch(tuple(tasks), 30, 1).vector_env(copies=3)
    assert isinstance(vec, BanditVectorEnv) and vec.num_envs == 15
    copies = [t for t in tasks for _ in range(3)]
    singles = [t.make() for t in copies]
    seeds = [t.seed + c for t, c in zip(copies, [0, 1, 2] * 5)]
    obs, _ = vec.reset(seed=seeds)
    assert np.array_equal(obs, np.stack([e.reset(seed=s)[0] for e, s in zip(singles, seeds)]))
    rng = np.random.default_rng(0)
    total = 0.0
    for pull in range(30):
        if pull:
            vec.reset()
            for e in singles:
                e.reset()
        arms = rng.integers(0, 5, 15)
        _, r, term, trunc, _ = vec.step(arms)
        single = [e.step(a) for e, a in zip(singles, arms)]
        assert r.tolist() == [s[1] for s in single]
        assert term.tolist() == [s[2] for s in single] and trunc.tolist() == [s[3] for s in single]
        total += r.sum()
    assert 0 < total < 15 * 30  # the rewards are not all equal


def test_the_vector_env_resets_only_the_masked_envs_and_seeds_an_int_as_gymnasium_does():
    fam = family(arms=3)
    tasks = tuple(fam.task(0, "test", j) for j in range(2))
    a, b = EnvBatch(tasks, 1, 1).vector_env(), EnvBatch(tasks, 1, 1).vector_env()
    a.reset(seed=10)
    b.reset(seed=[10, 11])
    assert np.array_equal(a.step([0, 1])[1], b.step([0, 1])[1])
    a.reset(seed=[5, 6], options={"reset_mask": [True, False]})  # env 1 keeps its generator
    b.reset(seed=[5, None])
    for _ in range(20):
        assert np.array_equal(a.step([2, 2])[1], b.step([2, 2])[1])


def test_optimal_return_is_episodes_times_the_best_mean():
    fam = family(arms=4)
    task = fam.task(1, "test", 0)
    assert fam.optimal_return(task, 100) == pytest.approx(100 * task.params["means"].max())


def test_eval_sets_are_fixed_by_their_seed():
    fam = family(arms=5)

    def means(seed):
        return [t.params["means"] for b in fam.eval_set("test", None, ways=None, shots=10, queries=1, episodes=7,
                                                        seed=seed, batch_size=3) for t in b]

    assert all(np.array_equal(x, y) for x, y in zip(means(0), means(0)))
    assert not any(np.array_equal(x, y) for x, y in zip(means(0), means(1)))


def test_bad_input_is_refused_with_the_argument_named():
    with pytest.raises(ConfigError, match=r"task.arms=1 .*>= 2"):
        Config.from_dict({"task": {"family": "bandits", "arms": 1}, "algorithm": {"name": "random"},
                          "model": {"name": "mlp", "in_features": 1, "out_features": 1}})
    env = family(arms=3).task(0, "test", 0).make()
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"actions\[0\]=3 is not an action of this env; actions are 0..2"):
        env.step(3)
    vec = EnvBatch((family(arms=3).task(0, "test", 0),), 1, 1).vector_env()
    vec.reset(seed=0)
    with pytest.raises(ValueError, match=r"actions has shape \(2,\); give one action per env, shape \(1,\)"):
        vec.step([0, 1])
    with pytest.raises(ValueError, match=r"params\['means'\] must be a list of at least 2 arm success probabilities"):
        BanditEnv([1.5, 0.2])
    with pytest.raises(ValueError, match=r"copies=0 must be a positive int"):
        family().make_vector_env([family().task(0, "test", 0)], copies=0)
    assert get_family("bandits") is BanditFamily
