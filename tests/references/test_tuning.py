"""The grid search of a reference's constant on training tasks (metakit.references.tuning)."""

import pytest

from metakit.references import UCB1, play_bandit_trials, tune
from metakit.tasks.bandits import BanditFamily


def test_tune_scores_every_value_on_the_same_training_tasks_and_keeps_the_best():
    fam = BanditFamily(BanditFamily.Options(arms=5))
    seen = []

    def play(policy, batch):
        seen.append((policy.c, tuple(t.seed for t in batch), {t.index for t in batch}))
        return play_bandit_trials(policy, batch)

    out = tune(play, UCB1, [0.0, 0.2, 2.0], fam, shots=100, tasks=60, seed=3, batch_size=25)
    assert out["grid"] == [0.0, 0.2, 2.0] and out["tasks"] == 60 and out["seed"] == 3
    assert out["chosen"] == out["grid"][max(range(3), key=out["mean_return"].__getitem__)]
    assert out["chosen"] == 0.2  # pure exploitation and heavy exploration both lose at 100 pulls
    per_value = {c: [s for cc, s, _ in seen if cc == c] for c in out["grid"]}
    assert per_value[0.0] == per_value[0.2] == per_value[2.0] and len(per_value[0.0]) == 3
    train = [fam.task(3, "train", i).seed for i in range(60)]
    assert [s for chunk in per_value[0.0] for s in chunk] == train
    with pytest.raises(ValueError, match="grid is empty"):
        tune(play, UCB1, [], fam, shots=10)
