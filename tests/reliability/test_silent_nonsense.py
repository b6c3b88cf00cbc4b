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
