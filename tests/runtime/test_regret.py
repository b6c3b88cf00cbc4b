"""Regret curves (metakit.runtime.regret, `metakit plot RUN --regret`): the run's RL² policy
beside a stand-in reference on a bandit family of this module, against hand-computed curves."""

from typing import ClassVar

import gymnasium
import numpy as np
import pytest
import torch

from metakit.algorithms import Algorithm, register
from metakit.cli.main import main
from metakit.runtime.config import Config
from metakit.runtime.regret import regret_curves
from metakit.runtime.run import load_run
from metakit.runtime.trainer import train
from metakit.tasks import EnvBatch, env_family


class Pulls(gymnasium.Env):
    """A Bernoulli bandit, one pull an episode."""

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self, means) -> None:
        self.means = np.asarray(means, dtype=np.float64)
        self.observation_space = gymnasium.spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = gymnasium.spaces.Discrete(len(self.means))

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        return np.zeros(1, np.float32), float(self.np_random.random() < self.means[int(action)]), True, False, {}


env_family("_regret_arms", lambda p, **kw: Pulls(p["means"]), lambda rng: {"means": rng.uniform(0, 1, size=3).tolist()},
           optimal_return=lambda p, episodes: episodes * max(p["means"]))


@register("_oracle_arm")
class OracleArm(Algorithm):
    """A stand-in reference: collects the best arm's mean every pull (zero regret)."""

    task_kinds = ("rl",)

    @classmethod
    def reference(cls, context):
        return cls()

    def episode_returns(self, batch: EnvBatch) -> torch.Tensor:
        return torch.tensor([[max(t.params["means"])] * batch.shots for t in batch], dtype=torch.float64)


def _run(tmp_path):
    raw = {
        "task": {"family": "_regret_arms"},
        "train": {"shots": 6, "queries": 6, "meta_batch": 4, "steps": 2},
        "eval": {"val_episodes": 2, "val_every": 0, "test_episodes": 8},
        "model": {"name": "recurrent_policy", "hidden": 8},
        "algorithm": {"name": "rl2", "epochs": 1, "minibatches": 2},
        "run": {"progress": False, "seed": 1, "num_threads": 1},
    }
    train(Config.from_dict(raw), tmp_path / "run")
    return tmp_path / "run"


def test_regret_curves_of_the_run_and_a_reference_match_hand_computed_ones(tmp_path, capsys):
    run = _run(tmp_path)
    loaded = load_run(run)
    batches = list(loaded.episodes("test", episodes=8, batch_size=3))
    curves = regret_curves({"rl2": loaded.algorithm, "oracle": OracleArm()}, loaded.config.family, batches)
    rows = []
    for batch in batches:
        returns = loaded.algorithm.episode_returns(batch)
        best = torch.tensor([max(t.params["means"]) for t in batch], dtype=torch.float64)[:, None]
        rows.append((best - returns).cumsum(1))
    r = torch.cat(rows)
    torch.testing.assert_close(curves["rl2"][0], r.mean(0))
    torch.testing.assert_close(curves["rl2"][1], 1.96 * r.std(0) / 8 ** 0.5)
    assert torch.equal(curves["oracle"][0], torch.zeros(6, dtype=torch.float64))
    # the trials of episode_returns are the ones task_returns scores
    assert torch.equal(loaded.algorithm.episode_returns(batches[0]).sum(1), loaded.algorithm.task_returns(batches[0]))
    assert main(["plot", str(run), "--regret", "_oracle_arm", "--tasks", "5"]) == 0
    assert (run / "regret.png").stat().st_size > 0 and (run / "learning_curves.png").is_file()
    assert main(["plot", str(run), "--regret", "rl2"]) == 2
    assert "--regret rl2: algorithm 'rl2' is not a reference that plays without training" in capsys.readouterr().err


def test_plot_draws_the_family_s_references_by_default_and_those_named_with_their_constants(tmp_path, capsys, monkeypatch):
    raw = {
        "task": {"family": "bandits", "arms": 3},
        "train": {"shots": 6, "queries": 6, "meta_batch": 4, "steps": 2},
        "eval": {"val_episodes": 0, "test_episodes": 8},
        "model": {"name": "recurrent_policy", "hidden": 8},
        "algorithm": {"name": "rl2", "epochs": 1, "minibatches": 2},
        "run": {"progress": False, "seed": 1, "num_threads": 1},
    }
    train(Config.from_dict(raw), tmp_path / "run")
    import metakit.runtime.regret as regret

    drawn = []
    real = regret.regret_curves
    monkeypatch.setattr(regret, "regret_curves", lambda players, *a: drawn.append(list(players)) or real(players, *a))
    assert main(["plot", str(tmp_path / "run"), "--regret", "ucb1:c=0.2", "epsilon_greedy:epsilon=0.05", "--tasks", "5"]) == 0
    assert (tmp_path / "run" / "regret.png").stat().st_size > 0
    # without --regret: the bandit family's references, with their default constants in the legend
    assert main(["plot", str(tmp_path / "run"), "--tasks", "4"]) == 0
    assert main(["plot", str(tmp_path / "run"), "--no-regret"]) == 0  # learning curves alone
    assert drawn == [["rl2", "ucb1 (c=0.2)", "epsilon_greedy (epsilon=0.05)"],
                     ["rl2", "gittins (discount=0.9, grid=1001)", "ucb1 (c=1)", "thompson"]]
    capsys.readouterr()
    assert main(["plot", str(tmp_path / "run"), "--regret", "ucb1:k=0.2"]) == 2
    assert "--regret ucb1:k=0.2: ucb1 has no constant k; its constants: c" in capsys.readouterr().err
