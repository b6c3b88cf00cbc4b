import argparse
import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from metakit.algorithms import Algorithm, register
from metakit.cli.main import main
from metakit.runtime.config import Config
from metakit.runtime.evaluation import evaluate, mean_ci95
from metakit.runtime.run import load_run
from metakit.runtime.trainer import train
from metakit.tasks.sampler import FixedEpisodes


def _tiny_run(tmp: Path, write_image_folder, train_section: dict, eval_section: dict, algorithm: dict) -> Path:
    """A run of a Conv4 of 8 filters trained on 16x16 images of a small image folder."""
    write_image_folder(tmp / "data", {"train": 5, "val": 4, "test": 5})
    config = Config.from_dict(
        {
            "data": {"dataset": "folder", "root": str(tmp / "data"), "image_size": 16},
            "train": {"ways": 3, "shots": 1, "queries": 2, **train_section},
            "eval": eval_section,
            "model": {"name": "conv4", "hidden": 8, "image_size": 16},
            "algorithm": algorithm,
            "run": {"checkpoint_every": 1, "log_every": 1, "progress": False},
        }
    )
    train(config, tmp / "run")
    return tmp / "run"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, write_image_folder) -> Path:
    return _tiny_run(tmp_path_factory.mktemp("eval"), write_image_folder, {"meta_batch": 2, "steps": 2},
                     {"val_episodes": 3, "val_every": 1, "test_episodes": 12}, {"name": "protonet"})


def _json(capsys, argv) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_eval_json_matches_the_protocol_by_hand(run_dir, capsys):
    r = _json(capsys, ["eval", str(run_dir), "--json", "--episodes", "12", "--batch", "5"])
    for key in ("algorithm", "dataset", "protocol", "split", "ways", "shots", "queries", "episodes", "seed",
                "accuracy", "ci95", "checkpoint", "step"):
        assert key in r, key
    assert (r["algorithm"], r["dataset"], r["split"], r["ways"], r["shots"], r["queries"], r["episodes"], r["seed"]) == (
        "protonet", "folder", "test", 3, 1, 2, 12, 0)
    assert r["checkpoint"] == "best.safetensors" and r["step"] in (1, 2) and r["metric"] == "accuracy"
    assert r["seconds"] > 0 and r["episodes_per_s"] == pytest.approx(12 / r["seconds"], rel=0.01)
    # the same fixed episodes evaluated by hand: per-episode fraction correct, mean, 1.96 * sample std / sqrt(n)
    loaded = load_run(run_dir)
    fixed = FixedEpisodes(loaded.dataset("test"), 3, 1, 2, episodes=12, seed=0)
    per = []
    with torch.no_grad():
        for batch in fixed.batches(12):
            scores = loaded.algorithm.predict(batch)
            per += (scores.argmax(-1) == batch.query_y).float().mean(-1).tolist()
    mean, ci = mean_ci95(per)
    assert r["accuracy"] == pytest.approx(mean) and r["ci95"] == pytest.approx(ci)
    assert 0.0 <= r["accuracy"] <= 1.0
    # the batch size does not change the episodes
    assert _json(capsys, ["eval", str(run_dir), "--json", "--episodes", "12", "--batch", "7"])["accuracy"] == pytest.approx(mean)


def test_eval_other_ways_and_shots_than_training(run_dir, capsys):
    r = _json(capsys, ["eval", str(run_dir), "--json", "--ways", "5", "--shots", "2", "--queries", "1",
                       "--episodes", "4", "--seed", "3", "--checkpoint", "last"])
    assert (r["ways"], r["shots"], r["queries"], r["episodes"], r["seed"]) == (5, 2, 1, 4, 3)
    assert r["checkpoint"] == "step-00000002.safetensors" and r["step"] == 2
    assert r["train"] == {"ways": 3, "shots": 1}
    # 5 ways x 1 query: accuracies are multiples of 1/5
    loaded = load_run(run_dir, checkpoint="last")
    res = evaluate(loaded.algorithm, FixedEpisodes(loaded.dataset("test"), 5, 2, 1, episodes=4, seed=3))
    assert r["accuracy"] == pytest.approx(res.mean)


def test_eval_text_states_the_protocol(run_dir, capsys):
    assert main(["eval", str(run_dir), "--episodes", "6", "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "protonet on folder, split val" in out
    assert "6 x 3-way 1-shot, 2 queries per class, seed 0" in out
    assert "1.96 * sample std / sqrt(6)" in out
    assert "accuracy" in out and " %" in out and "±" in out and "higher is better" in out


def test_eval_errors(run_dir, tmp_path, capsys):
    assert main(["eval", str(run_dir), "--ways", "9"]) == 2
    assert "ways=9 but the dataset 'folder' has only 5 classes; lower ways" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", str(run_dir), "--ways", "0"])
    assert "argument --ways: 0 must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", str(run_dir), "--episodes", "x"])
    assert "argument --episodes: 'x' is not an integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", str(run_dir), "--seed", "-1"])
    assert "argument --seed: -1 must be >= 0" in capsys.readouterr().err


class _SupportMean(Algorithm):
    """Regression stand-in: predicts the mean support target plus a learnt offset."""

    task_kinds = ("regression",)

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.offset = nn.Parameter(torch.zeros(()))

    def predict(self, batch):
        return (batch.support_y.mean(1, keepdim=True) + self.offset).expand_as(batch.query_y)

    def meta_loss(self, batch):
        loss = (self.predict(batch) - batch.query_y).pow(2).mean()
        return loss, {"loss": float(loss.detach())}


def test_eval_regression_run_reports_mse(tmp_path, capsys):
    register("_test_support_mean")(_SupportMean)
    config = Config.from_dict(
        {
            "data": {"dataset": "sinusoid"},
            "train": {"ways": None, "shots": 5, "queries": 5, "steps": 2},
            "eval": {"val_episodes": 3, "val_every": 1, "test_episodes": 8},
            "model": {"name": "mlp", "hidden": [4]},
            "algorithm": {"name": "_test_support_mean"},
            "run": {"checkpoint_every": 1, "progress": False},
        }
    )
    train(config, tmp_path / "run")
    r = _json(capsys, ["eval", str(tmp_path / "run"), "--json"])
    assert r["metric"] == "mse" and "accuracy" not in r and r["mse"] > 0 and r["ci95"] > 0
    assert (r["ways"], r["episodes"], r["higher_is_better"]) == (None, 8, False)
    assert main(["eval", str(tmp_path / "run"), "--ways", "5"]) == 2
    assert "--ways 5 was given but this run solves regression tasks (task.family=sinusoid), which have no classes; drop --ways" in capsys.readouterr().err


def test_eval_falls_back_from_a_corrupt_best_and_reports_the_checkpoint_used(run_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    best = copy / "checkpoints" / "best.safetensors"
    best.write_bytes(best.read_bytes()[:100])
    assert main(["eval", str(copy), "--json", "--episodes", "3"]) == 0
    out, err = capsys.readouterr()
    r = json.loads(out)
    assert r["checkpoint"] == "step-00000002.safetensors" and r["step"] == 2
    assert "best.safetensors' is unusable" in err and "using the newest readable step checkpoint step-00000002" in err
    assert main(["eval", str(copy), "--episodes", "3"]) == 0
    assert "checkpoint  step-00000002.safetensors (step 2;" in capsys.readouterr().out
    # an explicit path stays an error naming the file
    assert main(["eval", str(copy), "--checkpoint", str(best)]) == 2
    assert re.search(r"error: checkpoint '.*best.safetensors' is unusable: truncated", capsys.readouterr().err)


def test_eval_help_states_the_episode_default_of_each_split():
    from metakit.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    episodes = next(a for a in sub.choices["eval"]._actions if a.dest == "episodes")
    assert episodes.help == "number of episodes (default: the run's eval.test_episodes; eval.val_episodes with --split val)"


def test_eval_states_a_model_that_normalises_with_batch_statistics(tmp_path, write_image_folder, capsys):
    write_image_folder(tmp_path / "data", {"train": 5, "val": 4, "test": 5})
    config = Config.from_dict(
        {
            "data": {"dataset": "folder", "root": str(tmp_path / "data"), "image_size": 16},
            "train": {"ways": 3, "shots": 1, "queries": 2, "meta_batch": 2, "steps": 1},
            "eval": {"val_episodes": 0, "test_episodes": 4},
            "model": {"name": "conv4", "hidden": 8, "image_size": 16, "track_running_stats": False},
            "algorithm": {"name": "protonet"},
            "run": {"checkpoint_every": 1, "log_every": 1, "progress": False},
        }
    )
    train(config, tmp_path / "run")
    assert _json(capsys, ["eval", str(tmp_path / "run"), "--json"])["model_batch_norm"] == "batch"
    assert main(["eval", str(tmp_path / "run")]) == 0
    assert "batchnorm   the model keeps no running statistics" in capsys.readouterr().out


def test_eval_batch_norm_episode_is_recorded_and_computed_per_episode(run_dir, capsys):
    argv = ["eval", str(run_dir), "--json", "--episodes", "6", "--batch", "4"]
    running = _json(capsys, argv)
    episode = _json(capsys, [*argv, "--batch-norm", "episode"])
    assert running["batch_norm"] == "running" and episode["batch_norm"] == "episode"
    assert running["model_batch_norm"] == episode["model_batch_norm"] == "running"
    loaded = load_run(run_dir)
    fixed = FixedEpisodes(loaded.dataset("test"), 3, 1, 2, episodes=6, seed=0)
    res = evaluate(loaded.algorithm, fixed.batches(6), batch_norm="episode")
    assert episode["accuracy"] == pytest.approx(res.mean)
    assert main(["eval", str(run_dir), "--episodes", "3", "--batch-norm", "episode"]) == 0
    out = capsys.readouterr().out
    assert "batchnorm   each episode's own statistics (transductive)" in out and "no running statistics" not in out
    assert main(["eval", str(run_dir), "--reference", "random", "--batch-norm", "episode"]) == 2
    assert "--batch-norm episode does not apply to --reference" in capsys.readouterr().err


@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory, write_image_folder) -> Path:
    return _tiny_run(tmp_path_factory.mktemp("baseline"), write_image_folder, {"meta_batch": 1, "steps": 3},
                     {"val_episodes": 0, "test_episodes": 6}, {"name": "baseline", "head": "cosine", "finetune_epochs": 20})


def test_eval_options_change_how_a_task_is_learned_and_are_recorded(baseline_run, capsys, monkeypatch):
    from metakit.runtime import evaluation

    seen = []
    original = evaluation.evaluate

    def spy(algorithm, episodes, **kw):  # the algorithm as it is scored
        seen.append((algorithm.scale, algorithm.finetune_epochs, algorithm.finetune_lr))
        return original(algorithm, episodes, **kw)

    monkeypatch.setattr(evaluation, "evaluate", spy)
    argv = ["eval", str(baseline_run), "--json", "--option", "scale=0.5", "--option", "finetune_epochs=1"]
    r = _json(capsys, argv)
    assert r["options"] == {"scale": 0.5, "finetune_epochs": 1}
    assert seen == [(0.5, 1, 0.01)]
    assert "options" not in _json(capsys, ["eval", str(baseline_run), "--json"])
    assert seen[1] == (None, 20, 0.01)  # the run's own settings
    assert main(["eval", str(baseline_run), "--option", "finetune_epochs=1"]) == 0
    assert "options     finetune_epochs=1 (evaluation-time, not trained)" in capsys.readouterr().out


@pytest.mark.parametrize("which, option, message", [
    ("baseline", "finetune_epoch=3", r"--option: finetune_epoch is not an evaluation-time option of Baseline \(.*finetune_epochs"),
    ("baseline", "scale=-1", r"--option: scale=-1 .*"),
    ("baseline", "finetune_epochs", r"--option 'finetune_epochs' must look like KEY=VALUE"),
    ("protonet", "scale=10", r"algorithm.name=protonet has no evaluation-time options .*drop --option"),
])
def test_eval_option_errors_name_the_option(baseline_run, run_dir, capsys, which, option, message):
    import re

    target = baseline_run if which == "baseline" else run_dir
    assert main(["eval", str(target), "--option", option]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
