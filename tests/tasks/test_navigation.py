"""2D navigation (metakit.tasks.navigation): the dynamics of the paper, check_env, the batched vector
env equal to the single envs, the options and the trajectory drawing."""

import dataclasses

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from gymnasium.utils.env_checker import check_env  # noqa: E402

from metakit.options import ConfigError  # noqa: E402
from metakit.runtime.config import Config  # noqa: E402
from metakit.tasks import EnvBatch, get_family  # noqa: E402
from metakit.tasks.navigation import Navigation2DEnv, Navigation2DVectorEnv  # noqa: E402
from metakit.tasks.rl import task_rng  # noqa: E402


def _family(**options):
    fam = get_family("navigation_2d")
    return fam(fam.Options(**options))


def test_goals_are_uniform_in_the_square_and_fixed_by_the_task_stream():
    fam = _family()
    goals = np.array([fam.task(0, "train", i).params["goal"] for i in range(2000)])
    assert goals.min() >= -0.5 and goals.max() <= 0.5 and abs(goals.mean()) < 0.02
    assert np.allclose(goals.std(0), 1 / np.sqrt(12), rtol=0.05)
    assert fam.task(4, "test", 2).params["goal"] == tuple(task_rng(4, "test", 2).uniform(-0.5, 0.5, size=2))
    assert _family(goal_range=(1.0, 2.0)).task(0, "test", 0).params["goal"][0] >= 1.0


def test_a_step_moves_by_the_clipped_velocity_and_rewards_minus_the_distance_after_it():
    env = Navigation2DEnv((0.3, -0.2))
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.float32 and obs.tolist() == [0, 0]
    obs, reward, terminated, truncated, _ = env.step(np.array([0.5, -0.05]))  # x clipped to 0.1
    assert np.allclose(obs, [0.1, -0.05]) and reward == pytest.approx(-np.hypot(0.2, 0.15))
    assert not terminated and not truncated
    for _ in range(98):
        env.step(np.zeros(2))
    assert env.step(np.zeros(2))[3]  # truncated after 100 steps


def test_the_episode_terminates_within_the_tolerance_of_the_goal_in_both_coordinates():
    env = Navigation2DEnv((0.111, 0.0))
    env.reset()
    assert not env.step(np.array([0.1, 0.0]))[2]  # 0.011 away in x
    env = Navigation2DEnv((0.1, 0.011))
    env.reset()
    assert not env.step(np.array([0.1, 0.0]))[2]  # 0.011 away in y
    env = Navigation2DEnv((0.1, 0.009))
    env.reset()
    _, reward, terminated, _, _ = env.step(np.array([0.1, 0.0]))
    assert terminated and reward == pytest.approx(-0.009)


def test_envs_pass_check_env():
    fam = _family()
    check_env(fam.task(0, "test", 0).make(), skip_render_check=True)
    obs, act = fam.spaces()
    assert np.allclose(act.high, 0.1) and np.allclose(obs.high, 10.0)  # 100 steps of at most 0.1


def test_the_vector_env_steps_every_task_like_its_own_env():
    fam = _family(horizon=30)
    tasks = [fam.task(0, "test", j) for j in range(4)]
    tasks[1] = type(tasks[1])({"goal": (0.02, 0.0)}, tasks[1].seed, 1, fam)  # reached at step 1
    vec = EnvBatch(tuple(tasks), 1, 1).vector_env(copies=3)
    assert isinstance(vec, Navigation2DVectorEnv) and vec.num_envs == 12
    singles = [t.make() for t in tasks for _ in range(3)]
    seeds = list(range(12))
    obs, _ = vec.reset(seed=seeds)
    assert np.array_equal(obs, np.stack([env.reset(seed=s)[0] for env, s in zip(singles, seeds)]))
    rng = np.random.default_rng(0)
    for t in range(31):  # past the horizon: both keep stepping
        actions = rng.normal(scale=0.15, size=(12, 2))
        if t == 0:
            actions[3:6] = [0.02, 0.0]
        out = vec.step(actions)
        want = [env.step(a) for env, a in zip(singles, actions)]
        assert np.array_equal(out[0], np.stack([w[0] for w in want]))
        assert np.array_equal(out[1], np.array([w[1] for w in want]))
        assert np.array_equal(out[2], np.array([w[2] for w in want]))
        assert np.array_equal(out[3], np.array([w[3] for w in want]))
        if t == 0:
            assert out[2][3:6].all() and not out[2][:3].any()
    assert out[3].all()
    with pytest.raises(ValueError, match=r"copies=0 must be a positive int"):
        fam.make_vector_env(tasks, copies=0)


def test_options_are_checked_when_the_config_is_read():
    base = {"train": {"shots": 2, "queries": 2}, "model": {"name": "gaussian_mlp"}, "algorithm": {"name": "maml_rl"},
            "optim": {"name": "sgd", "lr": 1.0}}
    with pytest.raises(ConfigError, match=r"task.goal_range=\[0.5, -0.5\] must be \(low, high\) with low < high"):
        Config.from_dict({"task": {"family": "navigation_2d", "goal_range": [0.5, -0.5]}, **base})
    with pytest.raises(ConfigError, match=r"task.max_action"):
        Config.from_dict({"task": {"family": "navigation_2d", "max_action": 0}, **base})
    with pytest.raises(ConfigError, match=r"task.horizon"):
        Config.from_dict({"task": {"family": "navigation_2d", "horizon": 0}, **base})


def test_the_family_draws_the_paths_and_the_goal():
    fam = _family()
    task = fam.task(0, "test", 0)
    fig, ax = plt.subplots()
    paths = {"pre-update": [np.zeros((3, 2)), np.ones((2, 2))], "1 step": [np.full((4, 2), 0.2)]}
    fam.draw_trajectories(ax, task, paths)
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels[:4] == ["pre-update", "_child1", "1 step", "goal"]
    assert ax.get_lines()[3].get_xydata().tolist() == [list(task.params["goal"])]
    plt.close(fig)


def _play(env, policy, rng=None):
    obs, _ = env.reset(seed=0)
    total, done = 0.0, False
    while not done:
        obs, reward, terminated, truncated, _ = env.step(policy(np.asarray(obs, dtype=np.float64), rng))
        total += reward
        done = terminated or truncated
    return total


def test_the_optimal_return_is_the_full_speed_path_per_coordinate_and_no_policy_beats_it():
    family = _family()
    # by hand: goal (0.25, 0) is reached in 3 steps, at distances 0.15, 0.05, 0 after them; goal
    # (0.5, -0.205) in 5, the y coordinate within 0.01 from step 2 (distances sqrt(0.4^2 + 0.105^2), ...)
    hand = dataclasses.replace(family.task(0, "test", 0), params={"goal": (0.25, 0.0)})
    assert family.optimal_return(hand, 1) == pytest.approx(-0.2)
    far = dataclasses.replace(hand, params={"goal": (0.5, -0.205)})
    by_hand = -sum(np.hypot(0.5 - min(0.5, 0.1 * t), 0.205 - min(0.205, 0.1 * t)) for t in range(1, 6))
    assert family.optimal_return(far, 2) == pytest.approx(2 * by_hand)
    assert family.optimal_return(hand, 1) > _family(max_action=0.05).optimal_return(hand, 1)
    tasks = [family.task(0, "test", i) for i in range(20)]
    for task in tasks:
        env = family.make_env(task.params)
        straight = _play(env, lambda x, _: np.clip(np.asarray(task.params["goal"]) - x, -0.1, 0.1))
        assert family.optimal_return(task, 1) == pytest.approx(straight, abs=1e-5)
        assert family.optimal_return(task, 3) == pytest.approx(3 * family.optimal_return(task, 1))
        rng = np.random.default_rng(task.index)
        for scale in (0.01, 0.05, 0.3):  # noisy versions of it and random walks never do better
            noisy = _play(env, lambda x, r: np.clip(np.asarray(task.params["goal"]) - x, -0.1, 0.1) + r.normal(0, scale, 2), rng)
            assert noisy <= family.optimal_return(task, 1) + 1e-5
        assert _play(env, lambda x, r: r.uniform(-0.1, 0.1, 2), rng) < family.optimal_return(task, 1)
