"""RL² (metakit.algorithms.rl2): the hidden state's lifetime, PPO's first update, the scored
episodes, exact resume in the middle of an iteration, `metakit eval` and the errors -- on small
families defined here."""

import json
from pathlib import Path
from typing import ClassVar

import gymnasium
import numpy as np
import pytest
import torch
import yaml

from metakit.algorithms import RL2
from metakit.cli.main import main
from metakit.models import RecurrentPolicy
from metakit.options import ConfigError
from metakit.runtime.config import Config, load_config
from metakit.runtime.run import load_run
from metakit.runtime.trainer import train
from metakit.tasks import EnvBatch, env_family


class Arms(gymnasium.Env):
    """A Bernoulli bandit: one pull an episode, reward 1 with the pulled arm's probability."""

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self, means, horizon: int = 1) -> None:
        self.means, self.horizon = np.asarray(means, dtype=np.float64), horizon
        self.observation_space = gymnasium.spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = gymnasium.spaces.Discrete(len(self.means))
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        reward = float(self.np_random.random() < self.means[int(action)])
        return np.full(1, self.t / self.horizon, np.float32), reward, self.t >= self.horizon, False, {}


ArmsFamily = env_family(
    "_two_arms",
    lambda p, **kw: Arms(p["means"], p.get("horizon", 1)),
    lambda rng: {"means": rng.uniform(0, 1, size=2).tolist()},
    optimal_return=lambda p, episodes: episodes * max(p["means"]),
)


def _batch(n, shots, queries=None, horizon=1, stream="test"):
    fam = ArmsFamily(ArmsFamily.Options())
    tasks = [fam.task(0, stream, j) for j in range(n)]
    tasks = [type(t)({**t.params, "horizon": horizon}, t.seed, t.index, t.family) for t in tasks]
    return EnvBatch(tuple(tasks), shots, shots if queries is None else queries)


def _algo(**kw):
    torch.manual_seed(0)
    return RL2(RecurrentPolicy(observation_dim=1, action_dim=2, hidden=8), **kw)


def test_the_hidden_state_persists_across_the_episodes_of_a_trial_and_resets_between_trials():
    algo = _algo()
    batch = _batch(3, shots=3, horizon=2)
    trials = algo.play(batch, stream=1)
    assert trials.obs.shape[:2] == (3, 6) and trials.episode[0].tolist() == [0, 0, 1, 1, 2, 2]
    prev = trials.prev_inputs()
    with torch.no_grad():
        # one GRU pass over the whole trial from the zero state gives the log-probabilities the trial was played with
        head, _, _ = algo.model(trials.obs, *prev)
        carried = algo.model.distribution(head).log_prob(trials.actions)
        torch.testing.assert_close(carried, trials.log_probs, rtol=0, atol=1e-5)
        # restarting the GRU at every episode would have given other probabilities
        restarted = torch.cat([algo.model.distribution(algo.model(trials.obs[:, s:s + 2], *(p[:, s:s + 2] for p in prev))[0])
                               .log_prob(trials.actions[:, s:s + 2]) for s in (0, 2, 4)], 1)
    assert not torch.allclose(restarted[:, 2:], trials.log_probs[:, 2:], atol=1e-3)
    # a new trial starts from the zero state again: playing the same tasks twice gives the same trials
    again = algo.play(batch, stream=1)
    assert torch.equal(again.actions, trials.actions) and torch.equal(again.log_probs, trials.log_probs)


def test_the_first_update_of_an_iteration_has_ratio_one_and_the_iteration_cycles():
    algo = _algo(epochs=2, minibatches=2)
    batch = _batch(6, shots=5, stream="train")
    metrics = algo.meta_backward(batch)
    assert metrics["clip_fraction"] == 0.0 and abs(metrics["approx_kl"]) < 1e-6
    assert int(algo.rollout_position) == 1 and algo.rollout_obs.shape == (6, 5, 1)
    assert metrics["return"] == pytest.approx(float(algo.rollout_rewards.sum(1).mean()))
    grads = [p.grad for p in algo.model.parameters()]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)
    for position in (2, 3):
        algo.meta_backward(batch)
        assert int(algo.rollout_position) == position
    algo.meta_backward(batch)  # the last update of the iteration empties the buffers
    assert int(algo.rollout_position) == 0 and algo.rollout_obs.numel() == 0


def test_task_returns_score_the_last_queries_episodes_of_the_trial():
    algo = _algo()
    whole = algo.task_returns(_batch(5, shots=4))
    trials = algo.play(_batch(5, shots=4), stream=1)
    assert torch.equal(whole, trials.rewards.double().sum(1))
    last = algo.task_returns(_batch(5, shots=4, queries=1))
    assert torch.equal(last, trials.rewards[:, -1].double())
    with pytest.raises(ValueError, match=r"eval.queries=5 but a trial has eval.shots=4 episodes"):
        algo.task_returns(_batch(5, shots=4, queries=5))


def test_the_running_statistics_of_the_value_targets_match_those_of_all_targets_at_once():
    algo = _algo(normalize_returns=True)
    assert algo.return_scale() == (0.0, 1.0)
    g = torch.Generator().manual_seed(0)
    parts = [torch.randn(n, generator=g, dtype=torch.float64) * 30 + 100 for n in (7, 1, 40, 13)]
    for x in parts:
        algo._update_return_stats(x.float())
    everything = torch.cat([x.float().double() for x in parts])
    mean, std = algo.return_scale()
    assert int(algo.return_count) == 61
    assert mean == pytest.approx(float(everything.mean()), rel=1e-12)
    assert std == pytest.approx(float(everything.std(correction=0)), rel=1e-12)


def _by_hand(algo, trials, mean, std):
    """RL²'s value targets before standardisation, computed without the module: GAE on the value
    head's outputs mapped back to rewards with the statistics ``(mean, std)``."""
    from metakit.algorithms._rl import gae

    values = (trials.values.double() * std + mean).float()
    _, ret = gae(trials.rewards, values, trials.trial_ends(), algo.gamma, algo.gae_lambda)
    return ret


def test_normalize_returns_maps_the_values_back_for_gae_and_standardises_the_targets():
    algo = _algo(normalize_returns=True, epochs=1, minibatches=1)
    plain = _algo(epochs=1, minibatches=1)
    first, second = _batch(6, shots=5, horizon=3, stream="train"), _batch(6, shots=4, horizon=3, stream="train")
    trials = algo.collect(first)
    valid = trials.valid
    # before any target the statistics are (0, 1): GAE sees the raw outputs, as without the option
    ret = _by_hand(algo, trials, 0.0, 1.0)
    plain.collect(first)
    torch.testing.assert_close(plain.rollout_returns, ret, rtol=0, atol=1e-6)
    # the stored targets are those targets standardised with their own statistics
    targets = algo.rollout_returns[valid].double()
    assert float(targets.mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(targets.std(correction=0)) == pytest.approx(1.0, abs=1e-5)
    mean1, std1 = algo.return_scale()
    assert mean1 > 0.5  # a trial of 0/1 rewards: targets around 1, not already standardised ones
    torch.testing.assert_close(algo.rollout_returns[valid], ((ret[valid].double() - mean1) / std1).float(), rtol=0, atol=1e-6)
    algo._clear()
    # the next iteration maps the value head's outputs back with the statistics of the first
    trials = algo.collect(second)
    ret = _by_hand(algo, trials, mean1, std1)
    mean2, std2 = algo.return_scale()
    assert int(algo.return_count) == int(valid.sum()) + int(trials.valid.sum())
    torch.testing.assert_close(algo.rollout_returns[trials.valid],
                               ((ret[trials.valid].double() - mean2) / std2).float(), rtol=0, atol=1e-5)
    # the statistics are buffers: a checkpoint without them (written before they existed) loads as (0, 1)
    state = {k: v for k, v in algo.state_dict().items() if not k.startswith("return_")}
    fresh = _algo(normalize_returns=True)
    fresh._update_return_stats(torch.tensor([3.0, 5.0]))
    assert fresh.return_scale() == (4.0, 1.0)
    fresh.load_state_dict(state)
    assert fresh.return_scale() == (0.0, 1.0) and int(fresh.return_count) == 0
    with pytest.raises(ConfigError, match=r"algorithm.normalize_returns='yes' must be true or false"):
        _algo(normalize_returns="yes")


def _config(**sections) -> dict:
    raw = {
        "task": {"family": "_two_arms"},
        "train": {"shots": 5, "queries": 5, "meta_batch": 4, "steps": 8},
        "eval": {"val_episodes": 4, "val_every": 3, "test_episodes": 12},
        "model": {"name": "recurrent_policy", "hidden": 8},
        "algorithm": {"name": "rl2", "epochs": 2, "minibatches": 2},
        "optim": {"lr": 0.01},
        "run": {"checkpoint_every": 1, "log_every": 1, "progress": False, "seed": 3, "deterministic": True, "num_threads": 1},
    }
    raw.update(sections)
    return raw


def test_a_run_killed_in_the_middle_of_an_iteration_resumes_bitwise_and_metakit_eval_reports_regret(tmp_path, capsys):
    run = tmp_path / "run"
    result = train(Config.from_dict(_config()), run)
    assert result.status == "finished" and result.best["metric"] == "return"
    # stop after step 2 and step 5: the middle of the first and of the second iteration (4 updates each)
    again = tmp_path / "again"
    train(Config.from_dict(_config(train={"shots": 5, "queries": 5, "meta_batch": 4, "steps": 2})), again)
    assert int(load_run(again, checkpoint="last").algorithm.rollout_position) == 2
    train(Config.from_dict(_config(train={"shots": 5, "queries": 5, "meta_batch": 4, "steps": 5})), again, resume=True)
    train(Config.from_dict(_config()), again, resume=True)
    a, b = load_run(run, checkpoint="last"), load_run(again, checkpoint="last")
    for (name, x), y in zip(a.algorithm.state_dict().items(), b.algorithm.state_dict().values()):
        assert torch.equal(x, y), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("return" in r for r in records if r.get("split") == "train")
    assert main(["eval", str(run), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["metric"] == "return" and record["episodes"] == 12 and 0 <= record["return"] <= 5
    fam = ArmsFamily(ArmsFamily.Options())
    best = np.mean([5 * max(fam.task(0, "test", j).params["means"]) for j in range(12)])
    assert record["optimal_return"] == pytest.approx(best)
    assert record["regret"] == pytest.approx(best - record["return"]) and record["regret_ci95"] > 0
    assert main(["eval", str(run)]) == 0
    assert f"regret      {record['regret']:.4g} ± {record['regret_ci95']:.4g}" in capsys.readouterr().out


def test_sizes_and_spaces_the_policy_cannot_serve_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"train.queries=6 but a trial has train.shots=5 episodes: RL² scores the last"):
        Config.from_dict(_config(train={"shots": 5, "queries": 6, "meta_batch": 4, "steps": 8}))
    with pytest.raises(ConfigError, match=r"spaces \(observation Box.*action Discrete\(2\)\) do not fit the policy \(model.observation_dim=1, model.action_dim=3"):
        train(Config.from_dict(_config(model={"name": "recurrent_policy", "hidden": 8, "action_dim": 3})), tmp_path / "r")
    with pytest.raises(ConfigError, match=r"train.meta_batch=4 trials cannot be split into algorithm.minibatches=8"):
        Config.from_dict(_config(algorithm={"name": "rl2", "minibatches": 8}))  # refused when the config is read
    with pytest.raises(ConfigError, match=r"train.meta_batch=3 trials cannot be split into algorithm.minibatches=4"):
        Config.from_dict(_config(train={"shots": 5, "queries": 5, "meta_batch": 3, "steps": 8}, algorithm={"name": "rl2"}))
    with pytest.raises(ValueError, match=r"train.meta_batch=3 trials cannot be split into algorithm.minibatches=4"):
        algo = RL2(RecurrentPolicy(observation_dim=1, action_dim=2, hidden=4))
        fam = Config.from_dict(_config()).family
        algo.collect(EnvBatch(tuple(fam.task(0, "train", i) for i in range(3)), 5, 5))
    with pytest.raises(ConfigError, match=r"algorithm.clip=0.0 must be a positive number"):
        train(Config.from_dict(_config(algorithm={"name": "rl2", "clip": 0})), tmp_path / "r3")


RL2_CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("rl2_*.yaml"))


def test_the_table_grids_are_shipped():
    names = {p.stem for p in RL2_CONFIGS}
    assert {f"rl2_bandits_k{k}_n{n}" for k in (5, 10, 50) for n in (10, 100, 500)} <= names
    assert {f"rl2_mdp_n{n}" for n in (10, 25, 50, 75, 100)} <= names


@pytest.mark.parametrize("path", RL2_CONFIGS, ids=lambda p: p.stem)
def test_shipped_rl2_configs_load_and_score_whole_trials(path):
    cfg = load_config(path)  # an unregistered task.family fails here
    assert cfg.algorithm.name == "rl2" and cfg.model.name == "recurrent_policy"
    assert cfg.train.queries == cfg.train.shots and cfg.eval.test_episodes == 1000
    updates = cfg.algorithm.options["epochs"] * cfg.algorithm.options["minibatches"]
    assert cfg.train.steps % updates == 0 and cfg.train.meta_batch >= cfg.algorithm.options["minibatches"]
    assert f"{cfg.train.steps // updates} PPO iterations = {cfg.train.steps} trainer steps" in path.read_text()


@pytest.mark.slow
def test_a_run_killed_with_sigkill_mid_iteration_resumes_to_the_uninterrupted_state(tmp_path, kill_train_at):
    """A real SIGKILL of `metakit train` between two PPO updates of one iteration: the resumed run
    ends with the uninterrupted run's weights, optimizer state and roll-out buffers, bit for bit."""
    from safetensors.torch import load_file

    # an iteration is 16 updates (4 epochs x 4 minibatches); the kill comes after update 6 of the first
    raw = _config(task={"family": "bandits", "arms": 3},
                  train={"shots": 5, "queries": 5, "meta_batch": 16, "steps": 32},
                  eval={"val_episodes": 0, "test_episodes": 8},
                  algorithm={"name": "rl2", "epochs": 4, "minibatches": 4, "normalize_returns": True})
    raw["run"]["keep_last"] = 100  # no checkpoint is rotated away while the test looks for one
    cfg = tmp_path / "bandits.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["train", str(cfg), "--out", str(tmp_path / "reference")]) == 0
    run = tmp_path / "killed"
    kill_train_at(cfg, run, 6)
    left = max(int(p.stem.split("-")[1]) for p in (run / "checkpoints").glob("step-*.safetensors"))
    assert 6 <= left < 16, f"the kill should land inside the first iteration, the newest checkpoint is step {left}"
    assert main(["train", "--resume", str(run)]) == 0
    a = load_file(str(tmp_path / "reference" / "checkpoints" / "step-00000032.safetensors"))
    b = load_file(str(run / "checkpoints" / "step-00000032.safetensors"))
    compared = [k for k in a if k.startswith(("model/", "optimizer/"))]
    assert any(k.startswith("model/") for k in compared) and any("rollout" in k for k in compared)
    assert any(k.endswith("return_m2") for k in compared)  # the value targets' running statistics
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in compared)
