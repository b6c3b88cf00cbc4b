"""The generic trainer on a tiny problem: 12 Gaussian clusters in 6-D, ProtoNet with an MLP encoder.

The kill-and-resume test runs this module's ``make_trainer`` in a subprocess that SIGKILLs
itself mid-run, then resumes in-process and compares with an uninterrupted run, bit for bit.
"""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import random

import numpy as np
import pytest
import torch

from metakit.algorithms import ProtoNet
from metakit.datasets import ClassIndexedDataset
from metakit.models import MLP
from metakit.runtime.checkpoint import load_checkpoint, save_checkpoint
from metakit.runtime.config import Config, ConfigError
from metakit.runtime.evaluation import EvalResult
from metakit.runtime.logging import read_metrics
import metakit.runtime.trainer as trainer_module
from metakit.runtime.trainer import COLLAPSE_STEPS, NoCheckpointError, NonFiniteLossError, Trainer, seed_everything
from metakit.tasks.classification import DatasetSource, register_source
from metakit.tasks.sampler import EpisodeSampler, FixedEpisodes

HERE = Path(__file__).resolve()


def toy_dataset() -> ClassIndexedDataset:
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(12, 6, generator=g) * 2
    x = centers.repeat_interleave(8, 0) + torch.randn(96, 6, generator=g)
    return ClassIndexedDataset.from_tensors(x, torch.arange(12).repeat_interleave(8))


@register_source("_toy_vectors")
class ToyVectors(DatasetSource):
    """The 6-dimensional toy data as a dataset source, so that toy configs describe their examples."""

    @classmethod
    def example_shape(cls, common, options) -> tuple[int, ...]:
        return (6,)

    @classmethod
    def load(cls, common, options, split, *, progress):
        return toy_dataset()


def toy_config(root: Path, *overrides: str) -> Config:
    raw = {
        "task": {"family": "classification", "dataset": "_toy_vectors", "root": str(root)},
        "train": {"ways": 3, "shots": 2, "queries": 3, "meta_batch": 2, "steps": 30},
        "eval": {"val_episodes": 10, "val_every": 10},
        "model": {"name": "mlp", "in_features": 6, "hidden": [16], "out_features": 8},
        "optim": {"name": "adam", "lr": 0.01, "schedule": "step", "step_size": 7, "gamma": 0.5},
        "run": {"checkpoint_every": 5, "log_every": 3, "progress": False, "deterministic": True, "num_threads": 1},
    }
    return Config.from_dict(raw).with_overrides(list(overrides))


class Hooked(ProtoNet):
    """ProtoNet with test hooks keyed by the number of the ``meta_backward`` call.

    Its loss is scaled by random factors from torch's, Python's and NumPy's global generators,
    so that a resume that does not restore every RNG state ends with different parameters.
    """

    def __init__(self, encoder, hooks: dict[int, str] | None = None) -> None:
        super().__init__(encoder)
        self.hooks = dict(hooks or {})
        self.calls = 0

    def meta_loss(self, batch):
        loss, metrics = super().meta_loss(batch)
        noise = (1 + 0.1 * torch.rand(())) * (1 + 0.1 * random.random()) * (1 + 0.1 * float(np.random.rand()))
        loss = loss * noise
        if self.hooks.get(self.calls) == "nan":
            loss = loss * float("nan")
            metrics["loss"] = float(loss.detach())
        return loss, metrics

    def meta_backward(self, batch):
        self.calls += 1
        action = self.hooks.get(self.calls)
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if action == "sigint":
            os.kill(os.getpid(), signal.SIGINT)
        if action == "error":
            raise RuntimeError("boom from the algorithm")
        metrics = super().meta_backward(batch)
        if action == "inf_grad":
            next(self.encoder.parameters()).grad[0, 0] = float("inf")
        return metrics


def make_trainer(run_dir, config: Config, hooks=None, evaluate=None, stream=None) -> Trainer:
    seed_everything(config.run.seed)
    data = toy_dataset()
    sampler = EpisodeSampler(data, 3, 2, 3, seed=config.run.seed)
    val = FixedEpisodes(data, 3, 2, 3, config.eval.val_episodes, seed=0) if config.validates else None
    algorithm = Hooked(MLP(6, [16], 8), hooks)
    return Trainer(config, run_dir, algorithm, sampler, val, evaluate=evaluate, stream=stream or io.StringIO())


def params(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.algorithm.state_dict().items()}


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


_TIMING = {"time", "elapsed", "episodes_per_s"}


def logged(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in _TIMING} for r in read_metrics(run_dir)]


def raw_lines_up_to(run_dir: Path, step: int) -> list[str]:
    """The ``metrics.jsonl`` lines of steps <= ``step``, as written (wall-clock times included)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [line for line in lines if json.loads(line)["step"] <= step]


def assert_continued_from(run_dir: Path, resumed: Trainer, result, step: int, total: int, lines: list[str]) -> None:
    """The resumed trainer took only the steps after ``step`` and kept what was written before it.

    A resume that silently restarts from step 0 ends with the same parameters on this
    deterministic problem, so the parameters alone do not show that it continued: the number of
    steps the resumed algorithm ran and the untouched log lines (their wall-clock times
    included) do.
    """
    assert resumed.algorithm.calls == total - step, f"the resumed run took {resumed.algorithm.calls} steps"
    assert result.step == total
    assert lines and raw_lines_up_to(run_dir, step) == lines


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 30-step run: its final parameters and its log."""
    run_dir = tmp_path_factory.mktemp("reference")
    trainer = make_trainer(run_dir, toy_config(run_dir))
    result = trainer.fit()
    assert result.status == "finished" and result.step == 30
    return params(trainer), logged(run_dir), result


def test_training_logs_validates_and_checkpoints(tmp_path, reference):
    _, log, result = reference
    train_lines = [r for r in log if r["split"] == "train"]
    val_lines = [r for r in log if r["split"] == "val"]
    # log every 3 steps and at the end; validation every 10 steps
    assert [r["step"] for r in train_lines] == [3, 6, 9, 12, 15, 18, 21, 24, 27, 30]
    assert [r["step"] for r in val_lines] == [10, 20, 30]
    for r in train_lines:
        assert {"loss", "accuracy", "grad_norm", "lr"} <= r.keys() and math.isfinite(r["loss"])
    assert train_lines[-1]["lr"] == pytest.approx(0.01 * 0.5**4)  # StepLR: halved at 7, 14, 21, 28
    for r in val_lines:
        assert r["metric"] == "accuracy" and 0 <= r["accuracy"] <= 1 and r["episodes"] == 10
    # the training made progress on this easy problem
    assert train_lines[-1]["loss"] < train_lines[0]["loss"]
    best = max(val_lines, key=lambda r: r["accuracy"])
    assert result.best["accuracy"] == best["accuracy"]
    # the best checkpoint holds the weights of the best validation
    run_dir = result.run_dir
    state = load_checkpoint(run_dir / "checkpoints" / "best.safetensors")
    assert state["kind"] == "best" and state["val"]["accuracy"] == best["accuracy"]
    assert state["step"] == min(r["step"] for r in val_lines if r["accuracy"] == best["accuracy"])
    # last K=3 step checkpoints (every 5 steps) and the TensorBoard events
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["best.safetensors", "step-00000020.safetensors", "step-00000025.safetensors", "step-00000030.safetensors"]
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    raw = read_metrics(run_dir)
    assert all(isinstance(r["time"], float) and "elapsed" in r for r in raw)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == 30 and summary["best"]["step"] == state["step"]


def test_same_seed_same_run_bitwise(tmp_path, reference):
    trainer = make_trainer(tmp_path, toy_config(tmp_path))
    trainer.fit()
    assert_bitwise_equal(params(trainer), reference[0])
    assert logged(tmp_path) == reference[1]


def _scripted_evaluate(values, metric="mse"):
    it = iter(values)

    def evaluate(algorithm, episodes, **kw):
        return EvalResult.from_values(metric, [next(it)] * 3)

    return evaluate


def test_best_follows_the_metric_direction(tmp_path):
    # mse: lower is better -> the second validation (step 20) is the best
    cfg = toy_config(tmp_path, "train.steps=30")
    result = make_trainer(tmp_path, cfg, evaluate=_scripted_evaluate([0.5, 0.3, 0.4])).fit()
    assert result.best["step"] == 20 and result.best["mse"] == pytest.approx(0.3)
    assert load_checkpoint(tmp_path / "checkpoints" / "best.safetensors")["step"] == 20
    flags = [r["is_best"] for r in read_metrics(tmp_path, split="val")]
    assert flags == [True, True, False]
    # accuracy: higher is better -> the last one
    other = tmp_path / "acc"
    result = make_trainer(other, cfg, evaluate=_scripted_evaluate([0.5, 0.3, 0.6], "accuracy")).fit()
    assert result.best["step"] == 30


def test_validation_every_zero_means_only_at_the_end(tmp_path):
    cfg = toy_config(tmp_path, "eval.val_every=0", "train.steps=12")
    make_trainer(tmp_path, cfg).fit()
    assert [r["step"] for r in read_metrics(tmp_path, split="val")] == [12]


def test_without_validation_there_is_no_best(tmp_path):
    cfg = toy_config(tmp_path, "eval.val_episodes=0", "train.steps=6")
    result = make_trainer(tmp_path, cfg).fit()
    assert result.best is None and result.best_checkpoint is None
    assert read_metrics(tmp_path, split="val") == []


def test_nan_loss_stops_with_step_and_metric_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, toy_config(tmp_path), hooks={12: "nan"})
    with pytest.raises(NonFiniteLossError, match=r"step 12: loss is nan \(not finite\); training stopped") as info:
        trainer.fit()
    err = info.value
    assert err.step == 12 and err.metric == "loss"
    assert err.checkpoint == tmp_path / "checkpoints" / "step-00000010.safetensors"
    assert "step-00000010.safetensors" in str(err) and "optim.grad_clip" in str(err)
    # the NaN step was not applied, the checkpoints on disk are the good ones
    assert all(bool(torch.isfinite(p).all()) for p in trainer.algorithm.parameters())
    assert [s for s, _ in trainer.checkpoints.steps()] == [0, 5, 10]  # step 0: the initial state
    state = load_checkpoint(err.checkpoint)
    assert all(bool(torch.isfinite(t).all()) for t in state["model"].values())
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "step 12: loss is nan" in summary["error"]


def test_infinite_gradient_stops_too(tmp_path):
    trainer = make_trainer(tmp_path, toy_config(tmp_path), hooks={3: "inf_grad"})
    # before the first periodic checkpoint, the last good one is the initial state (step 0)
    with pytest.raises(NonFiniteLossError, match=r"step 3: grad_norm is inf \(not finite\).*last good checkpoint is .*step-00000000"):
        trainer.fit()
    assert all(bool(torch.isfinite(p).all()) for p in trainer.algorithm.parameters())


def test_an_algorithm_error_is_raised_and_recorded(tmp_path):
    trainer = make_trainer(tmp_path, toy_config(tmp_path), hooks={4: "error"})
    with pytest.raises(RuntimeError, match="boom from the algorithm"):
        trainer.fit()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["step"] == 3


def test_grad_clip_bounds_the_update(tmp_path):
    cfg = toy_config(tmp_path, "optim.name=sgd", "optim.lr=1.0", "optim.schedule=none", "optim.grad_clip=0.001",
                     "train.steps=1", "eval.val_episodes=0")
    trainer = make_trainer(tmp_path, cfg)
    before = [p.detach().clone() for p in trainer.params]
    trainer.fit()
    moved = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(trainer.params, before)))
    assert float(moved) == pytest.approx(0.001, rel=1e-4)  # SGD lr 1: the step is the clipped gradient
    assert read_metrics(tmp_path, split="train")[0]["grad_norm"] > 0.001


class _Pull(ProtoNet):
    """A Reptile-like method: its outer direction is not the gradient of a loss."""

    def meta_backward(self, batch):
        for p in self.parameters():
            if p.requires_grad:
                p.grad = p.detach().clone()  # moves every parameter towards 0
        return {"loss": 1.0}


def test_the_trainer_applies_whatever_meta_backward_leaves_in_grad(tmp_path):
    cfg = toy_config(tmp_path, "optim.name=sgd", "optim.lr=0.5", "optim.schedule=none", "train.steps=2",
                     "eval.val_episodes=0")
    seed_everything(0)
    data = toy_dataset()
    algorithm = _Pull(MLP(6, [16], 8))
    start = [p.detach().clone() for p in algorithm.parameters()]
    Trainer(cfg, tmp_path, algorithm, EpisodeSampler(data, 3, 2, 3), None, stream=io.StringIO()).fit()
    for p, s in zip(algorithm.parameters(), start):
        assert torch.allclose(p, s * 0.25)  # two steps of p <- p - 0.5 p


class _BadReturn(ProtoNet):
    def meta_backward(self, batch):
        return 1.0


def test_meta_backward_must_return_metrics(tmp_path):
    cfg = toy_config(tmp_path, "train.steps=1")
    trainer = Trainer(cfg, tmp_path, _BadReturn(MLP(6, [16], 8)), EpisodeSampler(toy_dataset(), 3, 2, 3), None,
                      stream=io.StringIO())
    with pytest.raises(TypeError, match=r"_BadReturn.meta_backward returned float; it must return a dict"):
        trainer.fit()


def test_ctrl_c_finishes_the_step_writes_a_checkpoint_and_resumes_exactly(tmp_path, reference):
    stream = io.StringIO()
    trainer = make_trainer(tmp_path, toy_config(tmp_path), hooks={13: "sigint"}, stream=stream)
    result = trainer.fit()
    assert result.status == "interrupted" and result.step == 13
    assert result.checkpoint == tmp_path / "checkpoints" / "step-00000013.safetensors"
    assert "SIGINT received" in stream.getvalue() and f"--resume {tmp_path}" in stream.getvalue()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    before = raw_lines_up_to(tmp_path, 13)
    stream = io.StringIO()
    resumed = make_trainer(tmp_path, toy_config(tmp_path), stream=stream)
    result = resumed.fit(resume=True)
    assert result.status == "finished"
    assert f"resuming {tmp_path} from step-00000013.safetensors (step 13)" in stream.getvalue()
    assert_continued_from(tmp_path, resumed, result, 13, 30, before)
    assert_bitwise_equal(params(resumed), reference[0])
    assert logged(tmp_path) == reference[1]


def test_resume_skips_a_corrupt_checkpoint_by_name(tmp_path, reference):
    trainer = make_trainer(tmp_path, toy_config(tmp_path, "train.steps=20"))
    trainer.fit()
    newest = tmp_path / "checkpoints" / "step-00000020.safetensors"
    newest.write_bytes(newest.read_bytes()[:-100])  # truncated
    before = raw_lines_up_to(tmp_path, 15)
    stream = io.StringIO()
    resumed = make_trainer(tmp_path, toy_config(tmp_path), stream=stream)
    result = resumed.fit(resume=True)
    assert_continued_from(tmp_path, resumed, result, 15, 30, before)
    text = stream.getvalue()
    assert "step-00000020.safetensors' is unusable: " in text and "falling back to the previous checkpoint" in text
    assert "resuming" in text and "step-00000015.safetensors (step 15)" in text
    # train.steps 20 -> 30 on resume: same parameters as a 30-step run (StepLR does not depend on it)
    assert_bitwise_equal(params(resumed), reference[0])


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_parameters(tmp_path, reference):
    """A real SIGKILL in a subprocess after the step-10 checkpoint, then --resume."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('toy', {str(HERE)!r})\n"
        "toy = importlib.util.module_from_spec(spec); spec.loader.exec_module(toy)\n"
        "from pathlib import Path\n"
        f"run = Path({str(tmp_path)!r})\n"
        "toy.make_trainer(run, toy.toy_config(run), hooks={13: 'kill'}).fit()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert [p.name for p in sorted((tmp_path / "checkpoints").glob("step-*"))] == [
        "step-00000000.safetensors",
        "step-00000005.safetensors",
        "step-00000010.safetensors",
    ]
    assert max(r["step"] for r in read_metrics(tmp_path)) == 12  # lines written after the checkpoint
    before = raw_lines_up_to(tmp_path, 10)
    resumed = make_trainer(tmp_path, toy_config(tmp_path))
    result = resumed.fit(resume=True)
    assert result.status == "finished" and result.step == 30
    assert_continued_from(tmp_path, resumed, result, 10, 30, before)
    assert_bitwise_equal(params(resumed), reference[0])
    assert logged(tmp_path) == reference[1]  # the lines of steps 11-12 were replaced, not duplicated


def test_resume_without_checkpoint_starts_over(tmp_path, reference):
    stream = io.StringIO()
    trainer = make_trainer(tmp_path, toy_config(tmp_path), stream=stream)
    trainer.fit(resume=True)
    assert trainer.algorithm.calls == 30
    assert_bitwise_equal(params(trainer), reference[0])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_allocator_tuning_applies_once_on_glibc():
    import platform

    from metakit.runtime.trainer import tune_allocator

    expected = platform.libc_ver()[0] == "glibc"
    assert tune_allocator() is expected
    assert tune_allocator() is expected  # idempotent


def test_fit_leaves_the_process_allocator_alone(tmp_path, monkeypatch):
    def refuse() -> bool:
        raise AssertionError("fit() must not tune the process allocator")

    monkeypatch.setattr(trainer_module, "tune_allocator", refuse)
    make_trainer(tmp_path, toy_config(tmp_path, "train.steps=2", "eval.val_episodes=0")).fit()


def test_resume_refuses_fewer_steps_than_the_checkpoint(tmp_path):
    make_trainer(tmp_path, toy_config(tmp_path, "train.steps=10", "eval.val_episodes=0")).fit()
    shorter = make_trainer(tmp_path, toy_config(tmp_path, "train.steps=8", "eval.val_episodes=0"))
    with pytest.raises(ValueError, match=r"train.steps=8 but the checkpoint step-00000010.safetensors is at step 10"):
        shorter.fit(resume=True)


def test_resume_sets_a_corrupt_checkpoint_aside_so_pruning_keeps_the_fresh_one(tmp_path):
    # keep_last=1: only step 20 is on disk, and it is corrupt; the resumed run starts over (with restart)
    make_trainer(tmp_path, toy_config(tmp_path, "run.keep_last=1", "eval.val_episodes=0", "train.steps=20")).fit()
    folder = tmp_path / "checkpoints"
    newest = folder / "step-00000020.safetensors"
    newest.write_bytes(newest.read_bytes()[:-100])
    stream = io.StringIO()
    cfg = toy_config(tmp_path, "run.keep_last=1", "eval.val_episodes=0", "train.steps=5")
    result = make_trainer(tmp_path, cfg, stream=stream).fit(resume=True, restart=True)
    assert result.step == 5 and result.checkpoint == folder / "step-00000005.safetensors"
    assert sorted(p.name for p in folder.iterdir()) == ["step-00000005.safetensors", "step-00000020.safetensors.corrupt"]
    assert "step-00000020.safetensors' is unusable: " in stream.getvalue()
    assert "renamed it to step-00000020.safetensors.corrupt" in stream.getvalue()


def _unrestorable(path: Path) -> None:
    """Rewrite a step checkpoint so that it reads fine but its weights do not fit the model."""
    state = load_checkpoint(path)
    first = next(iter(state["model"]))
    state["model"][first] = torch.zeros(1, 1)
    save_checkpoint(path, state)


def test_resume_falls_back_past_a_checkpoint_that_cannot_be_restored(tmp_path, reference):
    make_trainer(tmp_path, toy_config(tmp_path, "train.steps=20")).fit()
    _unrestorable(tmp_path / "checkpoints" / "step-00000020.safetensors")
    before = raw_lines_up_to(tmp_path, 15)
    stream = io.StringIO()
    resumed = make_trainer(tmp_path, toy_config(tmp_path), stream=stream)
    result = resumed.fit(resume=True)
    assert result.status == "finished"
    assert_continued_from(tmp_path, resumed, result, 15, 30, before)
    text = stream.getvalue()
    assert "step-00000020.safetensors' is unusable: it cannot be restored (RuntimeError: " in text
    assert "falling back to the previous checkpoint" in text and "step-00000015.safetensors (step 15)" in text
    assert_bitwise_equal(params(resumed), reference[0])


def test_a_failed_restore_leaves_the_trainer_as_it_was(tmp_path, reference):
    # the only checkpoint cannot be restored: with restart, the run starts over exactly like a new one
    make_trainer(tmp_path, toy_config(tmp_path, "train.steps=5", "run.keep_last=1")).fit()
    _unrestorable(tmp_path / "checkpoints" / "step-00000005.safetensors")
    stream = io.StringIO()
    resumed = make_trainer(tmp_path, toy_config(tmp_path), stream=stream)
    resumed.fit(resume=True, restart=True)
    assert "restarting " in stream.getvalue() and "from step 0 (no checkpoint to resume from)" in stream.getvalue()
    assert resumed.algorithm.calls == 30  # all the steps, from the start
    assert_bitwise_equal(params(resumed), reference[0])


def test_an_update_that_makes_parameters_non_finite_stops_before_its_checkpoint(tmp_path, monkeypatch):
    cfg = toy_config(tmp_path, "eval.val_episodes=0", "optim.name=sgd", "optim.schedule=none")
    trainer = make_trainer(tmp_path, cfg)
    inner = trainer.algorithm.meta_backward

    def meta_backward(batch):
        metrics = inner(batch)
        if trainer.algorithm.calls == 10:  # a finite loss and gradient, but a step that overflows: 1e38 * 10
            trainer.optimizer.param_groups[0]["lr"] = 1e38
            for p in trainer.params:
                p.grad.fill_(10.0)
        return metrics

    monkeypatch.setattr(trainer.algorithm, "meta_backward", meta_backward)
    with pytest.raises(
        NonFiniteLossError,
        match=r"step 10: the update made parameter '[\w.]+' (nan|-?inf) \(not finite\); training stopped without "
        r"saving it, the last good checkpoint is .*step-00000005.safetensors\. Start a new run with a lower optim.lr",
    ) as info:
        trainer.fit()
    assert info.value.checkpoint == tmp_path / "checkpoints" / "step-00000005.safetensors"
    assert [s for s, _ in trainer.checkpoints.steps()] == [0, 5]
    state = load_checkpoint(info.value.checkpoint)
    assert all(bool(torch.isfinite(t).all()) for t in state["model"].values())
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["step"] == 9 and "step 10: the update made" in summary["error"]


# -- divergence in any state, validation divergence, collapse, restarts ----------------------------
class WithBatchNorm(Hooked):
    """The toy ProtoNet with a BatchNorm layer (running statistics) in its encoder."""

    def __init__(self, hooks=None) -> None:
        super().__init__(torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 8)), hooks)


def test_the_initial_state_is_a_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, toy_config(tmp_path, "train.steps=3", "eval.val_episodes=0"))
    trainer.fit()
    assert [s for s, _ in trainer.checkpoints.steps()] == [0, 3]
    assert load_checkpoint(tmp_path / "checkpoints" / "step-00000000.safetensors")["step"] == 0


def test_a_non_finite_running_statistic_stops_the_run(tmp_path):
    """A running variance that overflows in the forward pass while the weights stay finite."""

    class Overflowing(WithBatchNorm):
        def meta_backward(self, batch):
            metrics = super().meta_backward(batch)
            if self.calls == 7:
                self.encoder[1].running_var[3] = float("inf")
            return metrics

    cfg = toy_config(tmp_path, "eval.val_episodes=0")
    seed_everything(0)
    algorithm = Overflowing()
    trainer = Trainer(cfg, tmp_path, algorithm, EpisodeSampler(toy_dataset(), 3, 2, 3, seed=0), stream=io.StringIO())
    with pytest.raises(NonFiniteLossError, match=r"step 7: the update made buffer 'encoder\.1\.running_var' inf \(not finite\); training stopped without saving it, the last good checkpoint is .*step-00000005") as info:
        trainer.fit()
    err = info.value
    assert err.kind == "buffer" and err.in_parameters
    assert all(bool(torch.isfinite(p).all()) for p in algorithm.parameters())  # the weights alone look fine
    for _, path in trainer.checkpoints.steps():  # every checkpoint on disk is finite, buffers included
        assert all(bool(torch.isfinite(t).all()) for t in load_checkpoint(path)["model"].values() if t.is_floating_point())


def test_a_non_finite_optimizer_state_stops_the_run(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, toy_config(tmp_path, "eval.val_episodes=0", "optim.schedule=none"))
    inner = trainer.optimizer.step

    def step(*a, **k):
        out = inner(*a, **k)
        if trainer.algorithm.calls == 7:  # Adam's second moment overflows; the update it gives is 0
            first = trainer.params[0]
            trainer.optimizer.state[first]["exp_avg_sq"][0, 0] = float("inf")
        return out

    monkeypatch.setattr(trainer.optimizer, "step", step)
    with pytest.raises(NonFiniteLossError, match=r"step 7: the update made optimizer state 'exp_avg_sq of encoder\.net\.0\.weight' inf .*last good checkpoint is .*step-00000005"):
        trainer.fit()


def test_divergence_first_seen_in_validation_names_the_last_good_checkpoint(tmp_path):
    calls = []

    def evaluate(algorithm, episodes):
        from metakit.runtime.evaluation import evaluate as real

        calls.append(1)
        if len(calls) == 2:  # the validation at step 20
            with torch.no_grad():
                next(algorithm.parameters()).fill_(float("inf"))
        return real(algorithm, episodes)

    trainer = make_trainer(tmp_path, toy_config(tmp_path), evaluate=evaluate)
    with pytest.raises(NonFiniteLossError, match=r"step 20: the predictions on the validation episodes are not finite \(Hooked\.predict returned \d+ non-finite values .*\); training stopped without saving this step, the last good checkpoint is .*step-00000015\.safetensors\. Start a new run with a lower optim\.lr") as info:
        trainer.fit()
    assert info.value.kind == "validation" and info.value.step == 20
    assert [s for s, _ in trainer.checkpoints.steps()] == [5, 10, 15]


def test_validation_divergence_with_few_steps_still_names_a_checkpoint(tmp_path):
    def evaluate(algorithm, episodes):
        from metakit.runtime.evaluation import evaluate as real

        with torch.no_grad():
            next(algorithm.parameters()).fill_(float("nan"))
        return real(algorithm, episodes)

    cfg = toy_config(tmp_path, "train.steps=3", "run.checkpoint_every=100")
    with pytest.raises(NonFiniteLossError, match=r"step 3: the predictions .* the last good checkpoint is .*step-00000000\.safetensors"):
        make_trainer(tmp_path, cfg, evaluate=evaluate).fit()


class ZeroGradient(Hooked):
    """From ``meta_backward`` call ``since`` on, the gradient is exactly zero (a collapsed model)."""

    since = 5

    def meta_backward(self, batch):
        metrics = super().meta_backward(batch)
        if self.calls >= self.since:
            for p in self.parameters():
                if p.grad is not None:
                    p.grad.zero_()
        return metrics


@pytest.mark.parametrize("zero_steps", [COLLAPSE_STEPS, COLLAPSE_STEPS - 1])
def test_a_collapsed_run_is_reported_after_collapse_steps_of_zero_gradient(tmp_path, zero_steps):
    cfg = toy_config(tmp_path, "eval.val_episodes=0", f"train.steps={4 + zero_steps}")
    seed_everything(0)
    stream = io.StringIO()
    trainer = Trainer(cfg, tmp_path, ZeroGradient(MLP(6, [16], 8)), EpisodeSampler(toy_dataset(), 3, 2, 3, seed=0), stream=stream)
    trainer.fit()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "finished"
    if zero_steps < COLLAPSE_STEPS:  # one step short: nothing to report
        assert "warning" not in stream.getvalue() and "warning" not in summary
        return
    expected = f"the gradient norm has been exactly 0 for {COLLAPSE_STEPS} steps (steps 5-{4 + COLLAPSE_STEPS})"
    assert f"metakit: warning: {expected}" in stream.getvalue()
    assert summary["warning"].startswith(expected)


def test_resume_refuses_to_restart_silently_when_every_checkpoint_is_gone(tmp_path):
    make_trainer(tmp_path, toy_config(tmp_path, "train.steps=12")).fit()
    for _, path in make_trainer(tmp_path, toy_config(tmp_path)).checkpoints.steps():
        path.unlink()
    trainer = make_trainer(tmp_path, toy_config(tmp_path))
    with pytest.raises(NoCheckpointError, match=rf"run folder '{tmp_path}' recorded training up to step 12 \(metrics\.jsonl\) but has no checkpoint left to resume from; a resume would start again from step 0\. To start it again from step 0 \(its metrics are replaced\): metakit train --resume {tmp_path} --restart"):
        trainer.fit(resume=True)
    assert max(r["step"] for r in read_metrics(tmp_path)) == 12  # nothing was touched
    stream = io.StringIO()
    result = make_trainer(tmp_path, toy_config(tmp_path, "train.steps=4"), stream=stream).fit(resume=True, restart=True)
    assert result.step == 4 and "restarting" in stream.getvalue()
    assert max(r["step"] for r in read_metrics(tmp_path)) == 4


def test_the_progress_bar_shows_the_family_metric_an_algorithm_reports():
    from metakit.runtime.trainer import _postfix

    assert _postfix({"loss": 2.0, "return": 10.0}, 2, 4.0, "return") == {"loss": "1", "return": "5", "ep/s": "4.0"}
    assert _postfix({"loss": 2.0, "accuracy": 1.0}, 2, None, "accuracy") == {"loss": "1", "acc": "50.0%"}
    assert _postfix({"loss": 2.0}, 2, None, "mse") == {"loss": "1"}  # not reported in training: not shown


# -- early stopping (train.patience) ---------------------------------------------------------------
def _val_steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in read_metrics(run_dir, split="val")]


@pytest.mark.parametrize(
    "values, stop",
    [
        ([0.5, 0.6, 0.55, 0.58, 0.9, 0.9], 40),  # best at 20, then 2 no better -> stop at 40
        ([0.5, 0.4, 0.6, 0.5, 0.6, 0.9], 50),  # a new best at 30 resets the count; equal is no better
    ],
)
def test_patience_stops_after_that_many_validations_without_a_better_one(tmp_path, values, stop):
    cfg = toy_config(tmp_path, "train.steps=60", "train.patience=2")
    stream = io.StringIO()
    trainer = make_trainer(tmp_path, cfg, evaluate=_scripted_evaluate(values, "accuracy"), stream=stream)
    result = trainer.fit()
    assert result.status == "stopped_early" and result.step == stop and not result.interrupted
    assert trainer.algorithm.calls == stop
    assert _val_steps(tmp_path) == list(range(10, stop + 1, 10))
    assert result.checkpoint == tmp_path / "checkpoints" / f"step-{stop:08d}.safetensors" and result.checkpoint.exists()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "stopped_early" and summary["step"] == stop
    early = summary["stopped_early"]
    assert early["patience"] == 2 and early["validations_since_best"] == 2 and early["best_step"] == stop - 20
    assert f"stopped early at step {stop} of 60" in stream.getvalue()


def test_patience_does_not_shorten_a_run_that_ends_anyway(tmp_path):
    cfg = toy_config(tmp_path, "train.steps=40", "train.patience=2")
    result = make_trainer(tmp_path, cfg, evaluate=_scripted_evaluate([0.5, 0.6, 0.55, 0.58], "accuracy")).fit()
    assert result.status == "finished" and result.step == 40
    assert "stopped_early" not in json.loads((tmp_path / "summary.json").read_text())


def test_a_stopped_run_resumes_to_nothing_unless_the_patience_is_raised(tmp_path):
    values = [0.5, 0.6, 0.55, 0.58]
    make_trainer(tmp_path, toy_config(tmp_path, "train.steps=60", "train.patience=2"),
                 evaluate=_scripted_evaluate(values, "accuracy")).fit()
    stream = io.StringIO()
    again = make_trainer(tmp_path, toy_config(tmp_path, "train.steps=60", "train.patience=2"), stream=stream)
    result = again.fit(resume=True)
    assert result.status == "stopped_early" and result.step == 40 and again.algorithm.calls == 0
    assert "nothing to train" in stream.getvalue()
    on = make_trainer(tmp_path, toy_config(tmp_path, "train.steps=60", "train.patience=3"),
                      evaluate=_scripted_evaluate([0.7, 0.7], "accuracy"))
    result = on.fit(resume=True)
    assert result.status == "finished" and result.step == 60 and on.algorithm.calls == 20
    assert _val_steps(tmp_path) == [10, 20, 30, 40, 50, 60]


@pytest.mark.parametrize("older_checkpoint", [False, True])
def test_the_count_of_validations_without_a_better_one_survives_a_resume(tmp_path, older_checkpoint):
    # stopped by Ctrl-C at step 35, one validation after the best: the resumed run stops where an
    # uninterrupted one does (step 40), not two validations later; a checkpoint written before the
    # count was kept has it recounted from the log
    cfg = toy_config(tmp_path, "train.steps=60", "train.patience=2")
    values = iter([0.5, 0.6, 0.55, 0.58, 0.9])
    scripted = _scripted_evaluate(values, "accuracy")
    result = make_trainer(tmp_path, cfg, hooks={35: "sigint"}, evaluate=scripted).fit()
    assert result.status == "interrupted" and result.step == 35
    if older_checkpoint:
        state = load_checkpoint(result.checkpoint)
        del state["trainer"]["stale_validations"]
        save_checkpoint(result.checkpoint, state)
        with open(tmp_path / "metrics.jsonl", "a") as f:  # a validation logged after the checkpoint (then killed)
            f.write(json.dumps({"step": 40, "split": "val", "time": 0.0, "elapsed": 0.0, "metric": "accuracy",
                                "accuracy": 0.1}) + "\n")
    resumed = make_trainer(tmp_path, cfg, evaluate=scripted)
    result = resumed.fit(resume=True)
    assert result.status == "stopped_early" and result.step == 40 and resumed.algorithm.calls == 5


@pytest.mark.parametrize("override", ["eval.val_episodes=0", "eval.val_every=0"])
def test_patience_without_periodic_validation_is_refused(tmp_path, override):
    with pytest.raises(ConfigError, match=r"train\.patience=2 counts validations.*set both above 0 or set train\.patience=null"):
        toy_config(tmp_path, "train.patience=2", override)
