"""``metakit train``: in-process for the arguments and errors, a subprocess for Ctrl-C."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from metakit.algorithms import ProtoNet, get_algorithm, register
from metakit.cli.main import main
from metakit.runtime.config import OptimConfig, RunConfig, TrainConfig, load_config
from metakit.runtime.logging import read_metrics
from metakit.runtime.run import load_run, read_run_config

REPO = Path(__file__).resolve().parents[2]
SHIPPED_CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


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


def test_early_stopping_says_where_and_how_to_train_on(config_file, tmp_path, capsys, monkeypatch):
    from metakit.runtime import evaluation

    level = evaluation.EvalResult.from_values("accuracy", [0.5, 0.5])  # never better than the first
    monkeypatch.setattr(evaluation, "evaluate", lambda algorithm, episodes, **kw: level)
    out_dir = tmp_path / "run"
    argv = ["train", str(config_file), "train.steps=20", "train.patience=2", "--out", str(out_dir)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "steps: 6/20 in " in out
    assert f"stopped early (train.patience=2: no better validation since step 2); train on with: metakit train " \
           f"--resume {out_dir} train.patience=null" in out
    assert main(["train", "--resume", str(out_dir), "train.patience=null"]) == 0
    assert "steps: 20/20 in " in capsys.readouterr().out


@pytest.mark.parametrize("patience", ["null", "2"])
def test_a_run_folder_from_before_train_patience_resumes_with_it(config_file, tmp_path, capsys, patience):
    out_dir = tmp_path / "run"
    assert main(["train", str(config_file), "train.steps=2", "--out", str(out_dir)]) == 0
    cfg = yaml.safe_load((out_dir / "config.yaml").read_text())
    del cfg["train"]["patience"]  # as written by a version without the field
    (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert main(["train", "--resume", str(out_dir), "train.steps=4", f"train.patience={patience}"]) == 0
    assert "steps: 4/4 in " in capsys.readouterr().out
    assert read_run_config(out_dir).train.patience == (None if patience == "null" else 2)


def _lines_up_to(run_dir: Path, step: int) -> list[str]:
    """The metrics.jsonl lines of steps <= ``step`` as written (wall-clock times included)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [line for line in lines if json.loads(line)["step"] <= step]


def test_resume_continues_a_run(config_file, tmp_path, capsys):
    out_dir = tmp_path / "run"
    assert main(["train", str(config_file), "train.steps=2", "--out", str(out_dir)]) == 0
    before = _lines_up_to(out_dir, 2)
    capsys.readouterr()
    assert main(["train", "--resume", str(out_dir), "train.steps=4"]) == 0
    # it continued from the step-2 checkpoint: steps 1-2 were not trained (nor logged) again
    assert f"resuming {out_dir} from step-00000002.safetensors (step 2)" in capsys.readouterr().err
    assert len(before) == 2 and _lines_up_to(out_dir, 2) == before  # the train and val lines of step 2
    assert [r["step"] for r in map(json.loads, (out_dir / "metrics.jsonl").read_text().splitlines())] == [2, 2, 4, 4]
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
    for section in (TrainConfig, OptimConfig, RunConfig):
        for f in dataclasses.fields(section):
            assert f"{section.section}.{f.name} = " in out
    assert "task.family = classification" in out and "task.protocol = vinyals" in out
    assert "algorithm options" in out and "protonet:" in out and "algorithm.distance = euclidean" in out
    assert "--resume RUN_DIR" in out


@pytest.mark.slow
def test_ctrl_c_writes_a_checkpoint_and_resume_matches_an_uninterrupted_run(config_file, tmp_path, capsys, wait_until):
    out_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "metakit.cli.main", "train", str(config_file), "train.steps=100000",
           "run.checkpoint_every=3", "eval.val_every=0", "--out", str(out_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # past the initial checkpoint (step 0) and the first periodic one, so that log lines exist
        wait_until(lambda: any(p.stem != "step-00000000" for p in (out_dir / "checkpoints").glob("step-*.safetensors")),
                   proc, "periodic checkpoint", 0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=600)
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
    before = _lines_up_to(out_dir, stopped)
    assert main(["train", "--resume", str(out_dir), f"train.steps={total}"]) == 0
    # it continued from the interruption's checkpoint, not from step 0
    assert f"from step-{stopped:08d}.safetensors (step {stopped})" in capsys.readouterr().err
    assert len(before) >= 1 and _lines_up_to(out_dir, stopped) == before
    assert max(json.loads(line)["step"] for line in (out_dir / "metrics.jsonl").read_text().splitlines()) == total
    straight = tmp_path / "straight"
    assert main(["train", str(config_file), f"train.steps={total}", "run.checkpoint_every=3", "eval.val_every=0",
                 "--out", str(straight)]) == 0
    a = load_run(out_dir, "last").algorithm.state_dict()
    b = load_run(straight, "last").algorithm.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# -- every shipped config trains -------------------------------------------------------------------
_ONE_SMALL_STEP = ["train.steps=1", "train.meta_batch=1", "eval.val_episodes=0", "run.progress=false"]


@pytest.fixture
def beside_shared_data(omniglot_root, cache_dir, tmp_path, monkeypatch):
    """A working folder from which the configs' ``root: ../shared/data/omniglot`` is the real data."""
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "shared" / "data" / "omniglot").symlink_to(omniglot_root)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv("METAKIT_CACHE", str(cache_dir))  # the session's decoded Omniglot
    return tmp_path / "work"


def test_configs_are_shipped():
    assert len(SHIPPED_CONFIGS) >= 30


def _assert_settings_kept(shipped, ran, where: str = "") -> None:
    if isinstance(shipped, dict):
        assert isinstance(ran, dict), where
        for key, value in shipped.items():
            assert key in ran, f"{where}{key} is missing from the run's config"
            _assert_settings_kept(value, ran[key], f"{where}{key}.")
    elif shipped is not None:
        assert ran == shipped, f"{where.rstrip('.')}: {shipped!r} in the config file, {ran!r} in the run"


@pytest.mark.slow  # about a second each: loads its data, builds its model and algorithm, one step
@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: p.stem)
def test_shipped_config_builds_its_algorithm_and_trains_one_step(path, beside_shared_data, capsys):
    """The shipped file as it is (its data, model, algorithm and options) with one step of one task."""
    assert "BUDGET" in path.read_text().upper(), "every shipped config states its budget in a comment"
    raw = yaml.safe_load(path.read_text())
    # one task per step: an algorithm that splits the meta-batch into minibatches gets one
    small = _ONE_SMALL_STEP + (["algorithm.minibatches=1"] if "minibatches" in (raw.get("algorithm") or {}) else [])
    out_dir = beside_shared_data / "run"
    assert main(["train", str(path), *small, "--out", str(out_dir)]) == 0, capsys.readouterr().err
    shipped = load_config(path, small)
    # the run used every setting of the file (its data, episodes, model, algorithm options...);
    # the run's config may only add what the file leaves to the data (null) or to defaults
    _assert_settings_kept(yaml.safe_load(shipped.to_yaml()), yaml.safe_load(read_run_config(out_dir).to_yaml()))
    run = load_run(out_dir, "last")
    assert run.step == 1 and type(run.algorithm) is get_algorithm(shipped.algorithm.name)
    (line,) = read_metrics(out_dir, split="train")
    assert line["step"] == 1 and math.isfinite(line["loss"])
    assert math.isfinite(line["grad_norm"]) and line["grad_norm"] > 0  # the step had a gradient to apply
    assert json.loads((out_dir / "summary.json").read_text())["status"] == "finished"


@pytest.mark.parametrize("override", ["model.hidden=[-4]", "model.out_features=0", "model.in_features=2"])
def test_model_options_that_cannot_run_fail_before_any_work(tmp_path, capsys, override):
    out_dir = tmp_path / "run"
    code = main(["train", str(REPO / "configs" / "maml_sinusoid_k5.yaml"), override, "--out", str(out_dir)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("metakit train: error: model 'mlp' with ") and override.split("=")[0].split(".")[1] in err
    assert not out_dir.exists()


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
