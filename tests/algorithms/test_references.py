"""The registered references (metakit.algorithms.references): scored by the family through
task_returns, the same numbers as the strategies they wrap, refused on another family and by the
trainer."""

import numpy as np
import pytest
import torch

from metakit.algorithms import get_algorithm
from metakit.references import PSRL, UCB1, play_bandit_trials, play_mdp_trials
from metakit.runtime.config import Config
from metakit.runtime.evaluation import evaluate
from metakit.runtime.trainer import train
from metakit.tasks import EnvBatch
from metakit.tasks.bandits import BanditFamily
from metakit.tasks.tabular_mdp import TabularMDPFamily


def bandit_batch(tasks=8, pulls=30):
    fam = BanditFamily(BanditFamily.Options(arms=4))
    return EnvBatch(tuple(fam.task(0, "test", j) for j in range(tasks)), pulls, 1)


def mdp_batch(tasks=8, episodes=4):
    fam = TabularMDPFamily(TabularMDPFamily.Options())
    return EnvBatch(tuple(fam.task(0, "test", j) for j in range(tasks)), episodes, 1)


def test_task_returns_are_the_wrapped_strategys_trial_returns():
    b = bandit_batch()
    ucb = get_algorithm("ucb1")(None, c=0.3)
    assert ucb.task_returns(b).tolist() == play_bandit_trials(UCB1(0.3), b).tolist()
    m = mdp_batch()
    assert get_algorithm("psrl")(None).task_returns(m).tolist() == play_mdp_trials(PSRL(), m).tolist()
    assert b.family.score(ucb, b).dtype == torch.float64


@pytest.mark.parametrize("name", ["random", "gittins", "ucb1", "thompson", "epsilon_greedy"])
def test_every_bandit_reference_scores_between_zero_and_the_pulls(name):
    out = evaluate(get_algorithm(name)(None), [bandit_batch(6, 20)], family=bandit_batch().family)
    assert out.metric == "return" and out.episodes == 6 and 0 <= out.mean <= 20


@pytest.mark.parametrize("name", ["random", "psrl", "optimal"])
def test_every_mdp_reference_is_scored(name):
    out = evaluate(get_algorithm(name)(None), [mdp_batch(5, 2)], family=mdp_batch().family)
    assert out.episodes == 5 and np.isfinite(out.mean)


def test_a_reference_of_another_family_is_refused_with_both_families_named():
    with pytest.raises(ValueError, match=r"algorithm.name=psrl plays task.family=tabular_mdp, not task.family=bandits"):
        get_algorithm("psrl")(None).task_returns(bandit_batch())
    with pytest.raises(ValueError, match=r"algorithm.name=ucb1 plays task.family=bandits, not task.family=tabular_mdp"):
        get_algorithm("ucb1")(None).task_returns(mdp_batch())


def test_there_is_nothing_to_train(tmp_path):
    with pytest.raises(TypeError, match=r"ucb1 is a classical reference with nothing to train; evaluate it with `metakit eval --reference ucb1"):
        get_algorithm("ucb1")(None).meta_loss(bandit_batch())
    cfg = Config.from_dict({"task": {"family": "bandits"}, "train": {"shots": 5, "queries": 1, "steps": 1},
                            "model": {"name": "mlp", "in_features": 1, "out_features": 5}, "algorithm": {"name": "ucb1"},
                            "run": {"progress": False}})
    with pytest.raises(ValueError, match=r"no trainable parameters"):
        train(cfg, tmp_path / "run")


def test_references_play_beside_a_run_in_the_regret_curves_with_per_episode_returns():
    from metakit.runtime.regret import build_reference, regret_curves

    b, m = bandit_batch(5, 12), mdp_batch(5, 3)
    ucb = build_reference("ucb1", None)
    per = ucb.episode_returns(b)
    assert per.shape == (5, 12) and per.dtype == torch.float64
    assert per.sum(1).tolist() == play_bandit_trials(UCB1(1.0), b).tolist() == ucb.task_returns(b).tolist()
    psrl = build_reference("psrl", None)
    assert psrl.episode_returns(m).shape == (5, 3)
    assert psrl.episode_returns(m).sum(1).tolist() == play_mdp_trials(PSRL(), m).tolist()
    curves = regret_curves({"ucb1": ucb, "thompson": build_reference("thompson", None)}, b.family, [b])
    mean, _ = curves["ucb1"]
    optimum = torch.tensor([b.family.optimal_return(t, 1) for t in b], dtype=torch.float64)
    expected = (optimum[:, None] - per).cumsum(1).mean(0)
    assert torch.allclose(mean, expected)


def test_references_in_the_regret_curves_take_their_constants_from_the_spec():
    from metakit.runtime.regret import build_reference, parse_reference

    b = bandit_batch(6, 20)
    assert parse_reference("ucb1:c=0.2") == ("ucb1", {"c": 0.2}) and parse_reference("thompson") == ("thompson", {})
    tuned = build_reference("ucb1:c=0.2", None)
    assert tuned.describe() == {"method": "ucb1", "c": 0.2}
    assert tuned.episode_returns(b).sum(1).tolist() == play_bandit_trials(UCB1(0.2), b).tolist()
    greedy = build_reference("epsilon_greedy:epsilon=0", None)
    assert greedy.describe()["epsilon"] == 0
    for spec, message in [
        ("ucb1:cc=1", r"--regret ucb1:cc=1: ucb1 has no constant cc; its constants: c$"),
        ("thompson:c=1", r"thompson has no constant c; it has none: give it as thompson, without :KEY=VALUE"),
        ("ucbx", r"--regret ucbx: 'ucbx' is not a registered reference; references: .*ucb1"),
        ("ucb1:,", r"--regret 'ucb1:,': write a reference as NAME or NAME:KEY=VALUE"),
        ("ucb1:c=1,c=2", r"c is given twice"),
        ("ucb1:c", r"--regret 'ucb1:c': write a reference as NAME or NAME:KEY=VALUE\[,KEY=VALUE\] \(e.g. ucb1:c=0.2\), got 'c'"),
        ("ucb1:", r"--regret 'ucb1:': write a reference as NAME or NAME:KEY=VALUE"),
        ("ucb1:c=-1", r"--regret ucb1:c=-1: c=-1 must be a number in \[0.0, inf\)"),
    ]:
        with pytest.raises(ValueError, match=message):
            build_reference(spec, None)
