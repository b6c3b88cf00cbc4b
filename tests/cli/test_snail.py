"""SNAIL trains, resumes, evaluates, predicts and plots from the command line (a tiny image-folder
dataset, a few steps), and refuses tasks its network was not built for."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from metakit.cli.main import main


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, write_image_folder) -> Path:
    root = tmp_path_factory.mktemp("snail-data")
    write_image_folder(root, {"train": 5, "val": 3, "test": 4})
    return root


@pytest.fixture(scope="module")
def config(data_root, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("snail-config") / "snail.yaml"
    path.write_text(yaml.safe_dump({
        "task": {"family": "classification", "dataset": "folder", "root": str(data_root), "image_size": 16},
        "train": {"ways": 3, "shots": 2, "queries": 1, "meta_batch": 2, "steps": 3},
        "eval": {"ways": 3, "shots": 1, "queries": 2, "val_episodes": 4, "val_every": 2, "test_episodes": 6},
        "model": {"name": "conv4", "hidden": 8},
        "algorithm": {"name": "snail", "shots": 2, "filters": 4, "key_sizes": [4, 4, 4], "value_sizes": [2, 2, 2]},
        "run": {"checkpoint_every": 2, "log_every": 1, "progress": False, "num_threads": 1},
    }))
    return path


def test_train_resume_eval_predict_plot(config, data_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run)]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["algorithm"]["name"] == "snail" and saved["algorithm"]["shots"] == 2
    assert main(["train", "--resume", str(run), "train.steps=4"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == 4
    capsys.readouterr()

    assert main(["eval", str(run), "--json", "--episodes", "6", "--shots", "2"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["algorithm"] == "snail" and record["episodes"] == 6 and record["ways"] == 3 and record["shots"] == 2
    assert 0.0 <= record["accuracy"] <= 1.0

    support = tmp_path / "support"
    for c in range(3):
        shutil.copytree(data_root / "test" / f"class{c}", support / f"class{c}", ignore=shutil.ignore_patterns("[23].png"))
    assert main(["predict", str(run), "--support", str(support), "--query", str(data_root / "test" / "class1"), "--json"]) == 0
    preds = json.loads(capsys.readouterr().out)
    assert len(preds) == 4 and all(p["class"] in {"class0", "class1", "class2"} and 0 < p["score"] <= 1 for p in preds)

    assert main(["plot", str(run), "--embeddings"]) == 0
    assert (run / "embeddings.png").stat().st_size > 1000


def test_tasks_the_network_was_not_built_for_are_refused_with_one_error_line(config, data_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(config), "train.steps=1", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--ways", "4", "--episodes", "2"]) != 0
    err = capsys.readouterr().err
    assert "the task is 4-way but this SNAIL network was built for 3-way tasks" in err and "Traceback" not in err
    assert main(["eval", str(run), "--shots", "3", "--queries", "1", "--episodes", "2"]) != 0
    err = capsys.readouterr().err
    assert "the support set has 9 examples but this SNAIL network's context holds 6" in err
    # the test split's four classes against a 3-way network
    assert main(["predict", str(run), "--support", str(data_root / "test"), "--query", str(data_root / "test" / "class1")]) != 0
    err = capsys.readouterr().err
    assert "the task is 4-way but this SNAIL network was built for 3-way tasks" in err
    # three classes of four images: 12 support examples, a context of 3 x 2
    full = tmp_path / "full"
    for c in range(3):
        shutil.copytree(data_root / "test" / f"class{c}", full / f"class{c}")
    assert main(["predict", str(run), "--support", str(full), "--query", str(data_root / "test" / "class1")]) != 0
    err = capsys.readouterr().err
    assert "the support set has 12 examples but this SNAIL network's context holds 6" in err
    assert "give at most 2 example(s) per class, or train with algorithm.shots >= 4" in err
