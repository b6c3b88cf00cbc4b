"""Runs that go wrong without an exception are reported, not finished silently."""

from __future__ import annotations

import json

import pytest

from metakit.cli.main import main
from metakit.runtime.trainer import COLLAPSE_STEPS

pytestmark = pytest.mark.slow


def test_a_huge_learning_rate_that_kills_every_gradient_is_reported(image_config, tmp_path, capsys):
    """SGD at lr=1e8 on ProtoNet/Conv4: after one step every ReLU is dead and the gradient is exactly 0."""
    run_dir = tmp_path / "run"
    steps = COLLAPSE_STEPS + 5
    argv = ["train", str(image_config), "optim.name=sgd", "optim.lr=1e8", f"train.steps={steps}", "--out", str(run_dir)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "metakit: warning: the gradient norm has been exactly 0 for 20 steps" in err and "collapsed" in err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["warning"].startswith(f"the gradient norm has been exactly 0 for {steps - 1} steps (steps 2-{steps})")


def test_divergence_first_seen_in_validation_names_the_last_good_checkpoint(tmp_path, capsys):
    """MAML whose 30 evaluation inner steps of 3.0 diverge while its 1-step training loss is finite."""
    config = tmp_path / "maml.yaml"
    config.write_text(
        "data: {dataset: sinusoid}\n"
        "train: {shots: 5, queries: 5, meta_batch: 4, steps: 6}\n"
        "eval: {val_episodes: 4, val_every: 3, queries: 10}\n"
        "model: {name: mlp, in_features: 1, hidden: [16], out_features: 1}\n"
        "algorithm: {name: maml, inner_lr: 3.0, inner_steps: 1, eval_steps: 30}\n"
        "run: {checkpoint_every: 100, progress: false, deterministic: true, num_threads: 1}\n"
    )
    run_dir = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert (
        "metakit train: error: step 3: the predictions on the validation episodes are not finite (MAML.predict returned"
        in err
    )
    assert f"the last good checkpoint is {run_dir / 'checkpoints' / 'step-00000000.safetensors'}" in err
    assert "algorithm.inner_lr" in err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["step"] == 3
