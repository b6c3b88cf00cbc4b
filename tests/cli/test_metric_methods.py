"""Every metric-based method and baseline trains, evaluates, predicts and plots from the CLI
(a tiny image-folder dataset; a couple of training steps each)."""

import json
from pathlib import Path

import pytest

from metakit.cli.main import main
from metakit.runtime.config import Config
from metakit.runtime.run import load_run
from metakit.runtime.trainer import train


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, write_image_folder) -> Path:
    root = tmp_path_factory.mktemp("metric-data")
    write_image_folder(root, {"train": 5, "val": 3, "test": 4})
    return root


CASES = {
    "siamese": ("conv4", {}),
    "matching": ("conv4", {"fce": True, "fce_steps": 2}),
    "relation": ("relation_encoder", {"relation_channels": 8}),
    "nearest": ("conv4", {"rule": "neighbour", "normalize": "cl2n"}),
    "baseline": ("conv4", {"head": "cosine", "finetune_epochs": 3}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_train_eval_predict_plot(name, data_root, tmp_path, capsys, saved_figures):
    model, options = CASES[name]
    config = Config.from_dict(
        {
            "data": {"dataset": "folder", "root": str(data_root), "image_size": 16},
            "train": {"ways": 3, "shots": 1, "queries": 2, "meta_batch": 2, "steps": 2},
            "eval": {"ways": 3, "shots": 1, "queries": 2, "val_episodes": 3, "val_every": 1, "test_episodes": 6},
            "model": {"name": model, "hidden": 8, "image_size": 16},
            "algorithm": {"name": name, **options},
            "run": {"checkpoint_every": 1, "log_every": 1, "progress": False},
        }
    )
    run = tmp_path / "run"
    train(config, run)
    loaded = load_run(run)
    assert loaded.config.algorithm.name == name
    capsys.readouterr()

    assert main(["eval", str(run), "--json", "--episodes", "6", "--shots", "2"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["algorithm"] == name and record["episodes"] == 6 and record["shots"] == 2
    assert 0.0 <= record["accuracy"] <= 1.0

    support = data_root / "test"
    assert main(["predict", str(run), "--support", str(support), "--query", str(support / "class1"), "--json"]) == 0
    preds = json.loads(capsys.readouterr().out)
    assert len(preds) == 4 and all(p["class"] in {f"class{c}" for c in range(4)} for p in preds)

    assert main(["plot", str(run), "--embeddings"]) == 0
    assert (run / "embeddings.png").stat().st_size > 1000
    (fig, path), = [(f, p) for f, p in saved_figures if p.name.startswith("embeddings.png")]
    assert fig.get_suptitle().startswith(f"{name} embeddings, folder test episodes (best.safetensors, step ")
    assert len(fig.axes) == 3  # three test episodes (the default)
    for ax in fig.axes:
        assert ax.get_title().startswith("episode ") and " 3-way 1-shot (PCA, " in ax.get_title()
        points = [len(c.get_offsets()) for c in ax.collections]
        assert points == [1, 2] * 3  # per class: 1 support star, 2 queries
