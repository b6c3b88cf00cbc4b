"""Half-cheetah direction and velocity tasks (metakit.tasks.locomotion): the paper's rewards over
gymnasium's HalfCheetah-v5 dynamics, the horizon, check_env and the task distributions."""

import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from metakit.options import ConfigError
from metakit.runtime.config import Config
from metakit.tasks import EnvBatch, get_family

pytest.importorskip("mujoco", reason="the half-cheetah families need MuJoCo (pip install 'gymnasium[mujoco]')")


def _family(name, **options):
    fam = get_family(name)
    return fam(fam.Options(**options))


@pytest.mark.parametrize("name", ["half_cheetah_direction", "half_cheetah_velocity"])
def test_envs_pass_check_env(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gymnasium warns about the unbounded Box of its own HalfCheetah
        check_env(_family(name).task(0, "test", 0).make(), skip_render_check=True)


@pytest.mark.parametrize("params", [{"direction": -1.0}, {"direction": 1.0}, {"velocity": 1.3}])
def test_the_reward_is_the_task_s_over_the_half_cheetah_dynamics(params):
    fam = _family("half_cheetah_velocity" if "velocity" in params else "half_cheetah_direction")
    env = fam.make_env(params)
    ref = gymnasium.make("HalfCheetah-v5").unwrapped  # the same dynamics with gymnasium's own reward
    obs, _ = env.reset(seed=3)
    ref_obs, _ = ref.reset(seed=3)
    assert np.array_equal(obs, ref_obs)
    rng = np.random.default_rng(0)
    for _ in range(5):
        action = rng.uniform(-1, 1, size=6).astype(np.float32)
        obs, reward, terminated, truncated, info = env.step(action)
        ref_obs, _, _, _, ref_info = ref.step(action)
        assert np.array_equal(obs, ref_obs) and info["x_velocity"] == ref_info["x_velocity"]
        v, ctrl = ref_info["x_velocity"], 0.05 * float(np.sum(np.square(action)))
        task = params["direction"] * v if "direction" in params else -abs(v - params["velocity"])
        assert reward == pytest.approx(task - ctrl, rel=1e-6, abs=1e-7)  # the control cost is summed in float32
        assert not terminated and not truncated


def test_episodes_are_truncated_after_the_horizon():
    env = _family("half_cheetah_direction", horizon=3).make_env({"direction": 1.0})
    env.reset(seed=0)
    assert [env.step(np.zeros(6))[3] for _ in range(3)] == [False, False, True]
    env.reset(seed=0)
    assert not env.step(np.zeros(6))[3]


def test_tasks_are_drawn_as_in_the_paper():
    d = _family("half_cheetah_direction")
    dirs = [d.task(0, "train", i).params["direction"] for i in range(400)]
    assert set(dirs) == {-1.0, 1.0} and 150 < dirs.count(1.0) < 250
    v = _family("half_cheetah_velocity")
    vels = np.array([v.task(0, "train", i).params["velocity"] for i in range(400)])
    assert vels.min() >= 0 and vels.max() <= 2 and abs(vels.mean() - 1) < 0.1
    assert _family("half_cheetah_velocity", velocity_range=(3.0, 3.0)).task(0, "test", 0).params["velocity"] == 3.0


def test_the_vector_env_of_a_batch_steps_each_task():
    fam = _family("half_cheetah_velocity", horizon=4)
    tasks = tuple(fam.task(0, "test", j) for j in range(2))
    vec = EnvBatch(tasks, 1, 1).vector_env(copies=2)
    singles = [t.make() for t in tasks for _ in range(2)]
    vec.reset(seed=[1, 2, 3, 4])
    for env, s in zip(singles, [1, 2, 3, 4]):
        env.reset(seed=s)
    actions = np.random.default_rng(0).uniform(-1, 1, size=(4, 6))
    for _ in range(4):
        _, r, _, trunc, _ = vec.step(actions)
        assert np.allclose(r, [env.step(a)[1] for env, a in zip(singles, actions)], rtol=1e-12)
    assert trunc.all()


def test_options_are_checked_when_the_config_is_read():
    base = {"train": {"shots": 2, "queries": 2}, "model": {"name": "gaussian_mlp"}, "algorithm": {"name": "maml_rl"},
            "optim": {"name": "sgd", "lr": 1.0}}
    with pytest.raises(ConfigError, match=r"task.velocity_range=\[2.0, 0.0\] must be \(low, high\) with low <= high"):
        Config.from_dict({"task": {"family": "half_cheetah_velocity", "velocity_range": [2.0, 0.0]}, **base})
    with pytest.raises(ConfigError, match=r"task.ctrl_cost"):
        Config.from_dict({"task": {"family": "half_cheetah_direction", "ctrl_cost": -1}, **base})
    with pytest.raises(ValueError, match=r"give exactly one of direction= .* or velocity="):
        _family("half_cheetah_direction").make_env({"direction": 1.0, "velocity": 1.0})
