"""``metakit eval --reference NAME CONFIG_OR_RUN`` (metakit.runtime.references): a reference on
the fixed test tasks of a config or a run folder, with its regret, and the command's errors."""

import json

import numpy as np
import pytest
import yaml

from metakit.cli.main import main
from metakit.references import UCB1, play_bandit_trials
from metakit.runtime.references import evaluate_reference, reference_names
from metakit.tasks import EnvBatch
from metakit.tasks.bandits import BanditFamily

CONFIG = {
    "task": {"family": "bandits", "arms": 3},
    "train": {"shots": 20, "queries": 1, "meta_batch": 2, "steps": 5},
    "eval": {"test_episodes": 30, "val_episodes": 0, "seed": 4},
    "model": {"name": "mlp", "in_features": 1, "out_features": 3},
    "algorithm": {"name": "random"},
}


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "bandits.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


def test_the_reference_plays_the_configs_fixed_test_tasks(config):
    record = evaluate_reference(str(config), "ucb1", ["c=0.3"], batch=7)
    fam = BanditFamily(BanditFamily.Options(arms=3))
    tasks = tuple(fam.task(4, "test", j) for j in range(30))
    returns = play_bandit_trials(UCB1(0.3), EnvBatch(tasks, 20, 1))
    optimal = np.array([fam.optimal_return(t, 20) for t in tasks])
    assert record["return"] == pytest.approx(returns.mean()) and record["episodes"] == 30 and record["seed"] == 4
    assert record["reference"] == {"method": "ucb1", "c": 0.3} and record["shots"] == 20
    assert record["optimal_return"] == pytest.approx(optimal.mean())
    assert record["regret"] == pytest.approx((optimal - returns).mean())
    assert record["ci95"] == pytest.approx(1.96 * returns.std(ddof=1) / np.sqrt(30))


def test_a_run_folder_gives_the_runs_tasks_and_the_command_prints_json(config, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(config.read_text())
    assert main(["eval", str(run), "--reference", "thompson", "--json", "--episodes", "10", "--shots", "5"]) == 0
    from_run = json.loads(capsys.readouterr().out)
    assert main(["eval", str(config), "--reference", "thompson", "--json", "--episodes", "10", "--shots", "5"]) == 0
    from_config = json.loads(capsys.readouterr().out)
    assert from_run["return"] == from_config["return"] and from_run["episodes"] == 10 and from_run["shots"] == 5
    assert main(["eval", str(config), "--reference", "gittins", "--option", "discount=0.8"]) == 0
    text = capsys.readouterr().out
    assert "gittins (discount=0.8, grid=1001) on bandits" in text and "regret" in text


def test_the_registered_references():
    assert set(reference_names()) == {"random", "gittins", "ucb1", "thompson", "epsilon_greedy", "psrl", "optimal"}


@pytest.mark.parametrize("argv, message", [
    (["--reference", "ucb2"], r"--reference 'ucb2' is not a classical reference; choose one of .*ucb1"),
    (["--reference", "ucb1", "--option", "cc=1"], r"--reference ucb1: unknown config key 'algorithm.cc' .*did you mean 'algorithm.c'"),
    (["--reference", "ucb1", "--option", "c=-1"], r"--reference ucb1 --option: c=-1.0 must be a number in \[0.0, inf\)"),
    (["--reference", "ucb1", "--option", "c"], r"--option 'c' must look like KEY=VALUE"),
    (["--option", "c=1"], r"run folder '.*' is a file, not a folder"),
    (["--reference", "ucb1", "--ways", "5"], r"--ways does not apply to --reference"),
    (["--reference", "psrl"], r"algorithm.name=psrl plays task.family=tabular_mdp, not task.family=bandits"),
])
def test_bad_reference_arguments_end_in_one_named_error(config, capsys, argv, message):
    assert main(["eval", str(config), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("metakit eval: error: ") and len(err.strip().splitlines()) == 1
    import re

    assert re.search(message, err), err
