"""Two processes on one run folder: exactly one proceeds, the other gets an error naming the owner."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from metakit.cli.main import main
from metakit.runtime.logging import read_metrics
from metakit.runtime.run import lock_run_dir

from .conftest import SINUSOID_CONFIG

pytestmark = pytest.mark.slow


METAKIT = str(Path(sys.executable).parent / "metakit")  # the installed command


def _cli(*argv: str) -> subprocess.Popen:
    return subprocess.Popen(
        [METAKIT, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _config(tmp_path: Path, name: str, *, seed: int, steps: int, every: int = 5) -> Path:
    path = tmp_path / name
    path.write_text(SINUSOID_CONFIG.format(seed=seed, steps=steps, every=every))
    return path


def _assert_one_clean_log(run_dir: Path) -> None:
    steps = [r["step"] for r in read_metrics(run_dir, split="train")]
    assert steps == sorted(set(steps)), f"duplicated or reordered metrics records: {steps}"


def test_two_runs_started_at_once_on_one_folder(tmp_path):
    """The "already holds a run" check cannot race: one run owns the folder, the other is refused."""
    run_dir = tmp_path / "R"
    configs = [_config(tmp_path, f"seed{s}.yaml", seed=s, steps=30) for s in (1, 2)]
    procs = [_cli("train", str(c), "--out", str(run_dir)) for c in configs]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    winner = next(i for i, (code, _, _) in enumerate(results) if code == 0)
    loser_err = results[1 - winner][2]
    assert re.search(r"metakit train: error: (run folder '.*R' is in use by process \d+|'.*R' already holds a run)", loser_err), loser_err
    assert "Traceback" not in loser_err
    assert f"run folder: {run_dir}" in results[winner][1] and "run folder" not in results[1 - winner][1]
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["run"]["seed"] == winner + 1  # the folder holds the winner's run, whole
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"
    _assert_one_clean_log(run_dir)


def test_a_second_process_is_refused_while_the_first_trains(tmp_path, capsys, wait_until, newest_checkpoint):
    run_dir = tmp_path / "R"
    owner = _cli("train", str(_config(tmp_path, "long.yaml", seed=0, steps=1_000_000)), "--out", str(run_dir))
    try:
        wait_until(lambda: newest_checkpoint(run_dir) >= 0, owner, "first checkpoint", 0.05)
        assert json.loads((run_dir / ".lock").read_text())["pid"] == owner.pid
        # a new run into the same folder and a resume (this process): both refused, naming the owner.
        # (train.steps=1 keeps a resume that got through from running on: it would fail on its own.)
        for argv in (
            ["train", str(_config(tmp_path, "other.yaml", seed=1, steps=10)), "--out", str(run_dir)],
            ["train", "--resume", str(run_dir), "train.steps=1"],
        ):
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert re.fullmatch(rf"metakit train: error: run folder '.*R' is in use by process {owner.pid} \(metakit train .*\), since .*\n", err), err
        with pytest.raises(Exception, match=rf"is in use by process {owner.pid} "):
            with lock_run_dir(run_dir):
                pass
    finally:
        owner.send_signal(signal.SIGTERM)  # stops after the current step, writes a checkpoint
        out, err = owner.communicate(timeout=600)
    assert owner.returncode == 130, err
    _assert_one_clean_log(run_dir)
    with lock_run_dir(run_dir):  # released when its owner ended
        pass
