"""The tabular_mdp family (metakit.tasks.tabular_mdp): the paper's construction, value iteration
against a hand-solved MDP, check_env, the batched vector env against the single envs, the optimum,
fixed evaluation tasks and the errors."""

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from metakit.options import ConfigError
from metakit.runtime.config import Config
from metakit.tasks import EnvBatch
from metakit.tasks.tabular_mdp import TabularMDPEnv, TabularMDPFamily, TabularMDPVectorEnv, value_iteration


def family(**options) -> TabularMDPFamily:
    return TabularMDPFamily(TabularMDPFamily.Options(**options))


def test_the_prior_is_normal_1_1_reward_means_and_flat_dirichlet_transitions():
    fam = family()
    tasks = [fam.task(0, "train", i) for i in range(400)]
    r = np.stack([t.params["rewards"] for t in tasks])
    p = np.stack([t.params["transitions"] for t in tasks])
    assert r.shape == (400, 10, 5) and p.shape == (400, 10, 5, 10)
    assert abs(r.mean() - 1) < 0.02 and abs(r.std() - 1) < 0.02
    assert np.allclose(p.sum(-1), 1) and p.min() >= 0
    # Dirichlet(1, ..., 1) over 10 states: each entry has mean 1/10 and variance (1/10)(9/10)/11
    assert abs(p.mean() - 0.1) < 1e-9 and abs(p.var() - 0.09 / 11) < 3e-4


def test_value_iteration_matches_a_hand_solved_two_state_mdp():
    # state 0: action 0 pays 1 and stays, action 1 pays 0 and moves to state 1; state 1: action 0 pays 3
    # and moves to state 0, action 1 pays 2 and stays.
    r = np.array([[1.0, 0.0], [3.0, 2.0]])
    p = np.zeros((2, 2, 2))
    p[0, 0, 0] = p[0, 1, 1] = p[1, 0, 0] = p[1, 1, 1] = 1.0
    values, policy = value_iteration(r, p, 3)
    # one step left: V(0) = 1 (a0), V(1) = 3 (a0)
    # two steps: V(0) = max(1 + 1, 0 + 3) = 3 (a1); V(1) = max(3 + 1, 2 + 3) = 5 (a1)
    # three steps: V(0) = max(1 + 3, 0 + 5) = 5 (a1); V(1) = max(3 + 3, 2 + 5) = 7 (a1)
    assert values.tolist() == [[5.0, 7.0], [3.0, 5.0], [1.0, 3.0], [0.0, 0.0]]
    assert policy.tolist() == [[1, 1], [1, 1], [0, 0]]
    # with stochastic transitions: from state 0, action 0 moves to state 1 with probability 0.25
    p[0, 0] = [0.75, 0.25]
    values, _ = value_iteration(r, p, 2)
    assert values[0, 0] == pytest.approx(max(1 + 0.75 * 1 + 0.25 * 3, 0 + 3))
    batched, _ = value_iteration(np.stack([r, r + 1]), np.stack([p, p]), 2)
    assert np.allclose(batched[1], values + np.array([[2.0], [1.0], [0.0]]))


def test_episodes_start_in_state_0_last_horizon_steps_and_pass_check_env():
    fam = family(states=4, actions=3, horizon=6)
    env = fam.task(0, "test", 0).make()
    check_env(env, skip_render_check=True)
    check_env(family().task(0, "test", 1).make(), skip_render_check=True)
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        assert obs.tolist() == [1.0, 0.0, 0.0, 0.0]
        for t in range(6):
            obs, r, term, trunc, _ = env.step(t % 3)
            assert obs.sum() == 1 and not term and trunc == (t == 5)


def test_the_vector_env_gives_the_single_envs_transitions_and_rewards_draw_for_draw():
    fam = family()
    tasks = [fam.task(2, "test", j) for j in range(4)]
    vec = EnvBatch(tuple(tasks), 3, 1).vector_env(copies=2)
    assert isinstance(vec, TabularMDPVectorEnv) and vec.num_envs == 8
    copies = [t for t in tasks for _ in range(2)]
    singles = [t.make() for t in copies]
    seeds = list(range(100, 108))
    rng = np.random.default_rng(1)
    visited = set()
    for episode in range(3):
        obs, _ = vec.reset(seed=seeds if episode == 0 else None)
        single_obs = [e.reset(seed=s if episode == 0 else None)[0] for e, s in zip(singles, seeds)]
        assert np.array_equal(obs, np.stack(single_obs))
        for _ in range(10):
            a = rng.integers(0, 5, 8)
            obs, r, term, trunc, _ = vec.step(a)
            single = [e.step(x) for e, x in zip(singles, a)]
            assert np.array_equal(obs, np.stack([s[0] for s in single]))
            assert r.tolist() == [s[1] for s in single]
            assert trunc.tolist() == [s[3] for s in single] and not term.any()
            visited.update(obs.argmax(-1).tolist())
    assert len(visited) > 5


def test_optimal_return_is_value_iteration_on_the_true_mdp():
    fam = family(states=3, actions=2, horizon=4)
    task = fam.task(0, "test", 0)
    values, _ = value_iteration(task.params["rewards"], task.params["transitions"], 4)
    assert fam.optimal_return(task, 25) == pytest.approx(25 * values[0, 0])


def test_eval_sets_are_fixed_by_their_seed():
    fam = family()
    a = [t.params["rewards"] for b in fam.eval_set("test", None, ways=None, shots=10, queries=1, episodes=5, seed=0) for t in b]
    b = [t.params["rewards"] for b in fam.eval_set("test", None, ways=None, shots=10, queries=1, episodes=5, seed=0) for t in b]
    c = [t.params["rewards"] for b in fam.eval_set("test", None, ways=None, shots=10, queries=1, episodes=5, seed=1) for t in b]
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("key, value, message", [
    ("horizon", 0, r"task.horizon=0 .*>= 1"),
    ("states", 0, r"task.states=0 .*>= 1"),
    ("actions", 1, r"task.actions=1 .*>= 2"),
    ("states", 3000, r"task.states=3000 with task.actions=5 gives a transition table of 45,000,000 entries"),
])
def test_bad_options_are_refused_with_the_key_named(key, value, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_dict({"task": {"family": "tabular_mdp", key: value}, "algorithm": {"name": "random"},
                          "model": {"name": "mlp", "in_features": 1, "out_features": 1}})


def test_bad_params_and_actions_are_refused():
    with pytest.raises(ValueError, match=r"every transitions\[s, a, :\] must be a probability vector"):
        TabularMDPEnv(np.zeros((2, 2)), np.full((2, 2, 2), 0.7))
    with pytest.raises(ValueError, match=r"horizon=0 must be a positive int"):
        TabularMDPEnv(np.zeros((2, 2)), np.full((2, 2, 2), 0.5), horizon=0)
    with pytest.raises(ValueError, match=r"params must hold 'rewards' \[S, A\] and 'transitions' \[S, A, S\]"):
        family().make_env({"rewards": np.zeros((2, 2))})
    env = family().task(0, "test", 0).make()
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"actions\[0\]=-1 is not an action of this env; actions are 0..4"):
        env.step(-1)
