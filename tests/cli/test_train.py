"""``metakit train``: in-process for the arguments and errors, a subprocess for Ctrl-C."""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from metakit.algorithms import ProtoNet, register
from metakit.cli.main import main
from metakit.runtime.config import DataConfig, OptimConfig, RunConfig, TrainConfig
from metakit.runtime.run import load_run, read_run_config


def make_image_folder(root: Path, classes: int = 4, per_class: int = 4) -> Path:
    g = torch.Generator().manual_seed(2)
    for split in ("train", "val", "test"):
        for c in range(classes):
            d = root / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(per_class):
                img = 255 - (torch.rand(28, 28, generator=g) * 60).to(torch.uint8)
                img[5 * c : 5 * c + 8, 5 * c : 5 * c + 8] = 0
                Image.fromarray(img.numpy()).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("cli")
    folder = make_image_folder(base / "images")
    raw = {
        "data": {"dataset": "folder", "root": str(folder)},
        "train": {"ways": 3, "shots": 1, "queries": 2, "meta_batch": 2, "steps": 4},
        "eval": {"val_episodes": 4, "val_every": 2},
        "model": {"name": "conv4", "hidden": 8},
        "algorithm": {"name": "protonet"},
        "run": {"checkpoint_every": 2, "log_every": 2, "progress": False, "deterministic": True, "num_threads": 1},
    }
    path = base / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_train_prints_the_best_validation_and_the_run_folder(config_file, tmp_path, capsys):
    out_dir = tmp_path / "run"
    assert main(["train", str(config_file), "train.steps=4", "optim.lr=0.002", "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert f"run folder: {out_dir}" in out
    summary = json.loads((out_dir / "summary.json").read_text())
    best = summary["best"]
    assert f"best validation accuracy: {100 * best['accuracy']:.2f} ± " in out and f"at step {best['step']}" in out
    assert "steps: 4/4 in " in out
    cfg = read_run_config(out_dir)
    assert cfg.optim.lr == 0.002 and cfg.train.steps == 4
    assert load_run(out_dir).step == best["step"]


def test_default_run_folder_is_under_runs(config_file, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(config_file), "train.steps=1", "eval.val_episodes=0"]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("tiny-") and (run_dir / "config.yaml").is_file()


def test_resume_continues_a_run(config_file, tmp_path, capsys):
    out_dir = tmp_path / "run"
    assert main(["train", str(config_file), "train.steps=2", "--out", str(out_dir)]) == 0
    assert main(["train", "--resume", str(out_dir), "train.steps=4"]) == 0
    straight = tmp_path / "straight"
    assert main(["train", str(config_file), "train.steps=4", "--out", str(straight)]) == 0
    a, b = load_run(out_dir, "last").algorithm.state_dict(), load_run(straight, "last").algorithm.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["CFG", "optim.lrr=0.1"], r"unknown config key 'optim.lrr' \(did you mean 'optim.lr'\?\)"),
        (["CFG", "train.ways=0"], r"train.ways=0 is out of range: it must be >= 1"),
        (["CFG", "algorithm.distance=manhattan"], r"algorithm.distance='manhattan' is not a valid choice; use one of: euclidean, cosine"),
        ([], r"give a config file \(e.g. configs/protonet_omniglot_5w1s.yaml\) or --resume RUN_DIR"),
        (["CFG", "train.steps=1", "other.yaml"], r"unexpected argument 'other.yaml'"),
        (["CFG", "--resume", "somewhere"], r"--resume uses the run's own config.yaml; drop"),
        (["--resume", "a", "--out", "b"], r"--out and --resume exclude each other"),
        (["--resume", "NOWHERE"], r"run folder '.*NOWHERE' does not exist"),
        (["missing.yaml"], r"config file 'missing.yaml' does not exist"),
    ],
)
def test_errors_exit_2_with_a_message(config_file, tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    argv = [str(config_file) if a == "CFG" else a for a in argv]
    code = main(["train", *argv] + ([] if "--resume" in argv else ["--out", str(tmp_path / "r")]))
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("metakit train: error: ") and re.search(message, err), err


def test_existing_run_and_non_resumable_changes(config_file, tmp_path, capsys):
    out_dir = tmp_path / "run"
    assert main(["train", str(config_file), "train.steps=2", "--out", str(out_dir)]) == 0
    capsys.readouterr()
    assert main(["train", str(config_file), "--out", str(out_dir)]) == 2
    assert "already holds a run (config.yaml); continue it with --resume" in capsys.readouterr().err
    assert main(["train", "--resume", str(out_dir), "optim.lr=0.1"]) == 2
    assert "cannot change optim.lr (0.001 -> 0.1) when resuming" in capsys.readouterr().err


@register("_cli_test_nan")
class _NaNAtStep3(ProtoNet):
    """ProtoNet whose loss turns NaN at the third meta-training step."""

    def meta_loss(self, batch):
        self.calls = getattr(self, "calls", 0) + 1
        loss, metrics = super().meta_loss(batch)
        if self.calls == 3:
            loss = loss * float("nan")
            metrics["loss"] = float(loss.detach())
        return loss, metrics


def test_nan_loss_exits_1_with_step_and_metric(config_file, tmp_path, capsys):
    out_dir = tmp_path / "run"
    code = main(["train", str(config_file), "algorithm.name=_cli_test_nan", "train.steps=5", "--out", str(out_dir)])
    assert code == 1
    err = capsys.readouterr().err
    assert "metakit train: error: step 3: loss is nan (not finite)" in err
    assert "step-00000002.safetensors" in err
    assert json.loads((out_dir / "summary.json").read_text())["status"] == "failed"
    assert load_run(out_dir, "last").step == 2  # the last good checkpoint is intact


def test_help_documents_every_config_field(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for section in (DataConfig, TrainConfig, OptimConfig, RunConfig):
        for f in dataclasses.fields(section):
            assert f"{section.section}.{f.name} = " in out
    assert "algorithm options" in out and "protonet:" in out and "algorithm.distance = euclidean" in out
    assert "--resume RUN_DIR" in out


@pytest.mark.slow
def test_ctrl_c_writes_a_checkpoint_and_resume_matches_an_uninterrupted_run(config_file, tmp_path):
    out_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "metakit.cli.main", "train", str(config_file), "train.steps=100000",
           "run.checkpoint_every=3", "eval.val_every=0", "--out", str(out_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not list((out_dir / "checkpoints").glob("step-*.safetensors")):
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "SIGINT received: stopping after this step" in err
    assert f"interrupted; continue with: metakit train --resume {out_dir}" in out
    stopped = load_run(out_dir, "last").step
    assert json.loads((out_dir / "summary.json").read_text())["status"] == "interrupted"
    # resume to a few steps past the interruption; compare with a straight run of that length
    total = stopped + 3
    assert main(["train", "--resume", str(out_dir), f"train.steps={total}"]) == 0
    straight = tmp_path / "straight"
    assert main(["train", str(config_file), f"train.steps={total}", "run.checkpoint_every=3", "eval.val_every=0",
                 "--out", str(straight)]) == 0
    a = load_run(out_dir, "last").algorithm.state_dict()
    b = load_run(straight, "last").algorithm.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_without_checkpoints_needs_restart(config_file, tmp_path, capsys):
    out_dir = tmp_path / "run"
    assert main(["train", str(config_file), "--out", str(out_dir)]) == 0
    for p in (out_dir / "checkpoints").glob("step-*.safetensors"):
        p.unlink()
    capsys.readouterr()
    assert main(["train", "--resume", str(out_dir)]) == 2
    err = capsys.readouterr().err
    assert "has no checkpoint left to resume from" in err and f"metakit train --resume {out_dir} --restart" in err
    assert main(["train", "--resume", str(out_dir), "--restart"]) == 0
    assert "restarting" in capsys.readouterr().err
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == 4
