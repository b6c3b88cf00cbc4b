"""MAML-RL through the command line: train a navigation run, evaluate it after 0..2 adaptation steps,
plot its learning curves and trajectories (seconds)."""

import json

import pytest
import yaml

from metakit.cli.main import main


@pytest.fixture(scope="module")
def navigation_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("maml_rl")
    cfg = root / "nav.yaml"
    cfg.write_text(yaml.safe_dump({
        "task": {"family": "navigation_2d", "horizon": 12},
        "train": {"shots": 3, "queries": 3, "meta_batch": 3, "steps": 2},
        "eval": {"val_episodes": 3, "val_every": 2, "test_episodes": 6},
        "model": {"name": "gaussian_mlp", "hidden": [8]},
        "algorithm": {"name": "maml_rl"},
        "optim": {"name": "sgd", "lr": 1.0},
        "run": {"checkpoint_every": 1, "log_every": 1, "progress": False, "num_threads": 1},
    }))
    run = root / "run"
    assert main(["train", str(cfg), "--out", str(run)]) == 0
    return run


def test_train_logs_the_return_and_eval_reports_it_after_each_number_of_steps(navigation_run, capsys):
    records = [json.loads(line) for line in (navigation_run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r.get("split") == "train"]
    assert len(train) == 2 and all("return" in r and "kl" in r for r in train)
    capsys.readouterr()
    results = []
    for steps in (0, 1, 2):
        assert main(["eval", str(navigation_run), "--steps", str(steps), "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert [r["adaptation_steps"] for r in results] == [0, 1, 2]
    assert len({r["return"] for r in results}) == 3  # each number of steps plays other policies
    assert all(r["metric"] == "return" and r["episodes"] == 6 and r["higher_is_better"] for r in results)
    assert all(-12 * 1.5 <= r["return"] <= 0 and r["ci95"] > 0 for r in results)  # 12 steps, never beyond ~1.4 away
    assert main(["eval", str(navigation_run), "--json"]) == 0  # the run's eval_steps (1)
    assert json.loads(capsys.readouterr().out)["return"] == results[1]["return"]
    assert main(["eval", str(navigation_run), "--shots", "2"]) == 0  # the text report names episodes, not query points
    out = capsys.readouterr().out
    assert "6 x shots 2, queries 3 (episodes), seed 0" in out and "regression" not in out, out
    assert "trained shots 3, queries 3 (episodes))" in out, out  # the training sizes, not the evaluation's


def test_plot_draws_the_learning_curves_and_the_trajectories_by_default(navigation_run, tmp_path, capsys):
    assert main(["plot", str(navigation_run), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "learning_curves.png" in out and "trajectories.png" in out
    assert (tmp_path / "trajectories.png").stat().st_size > 10_000
