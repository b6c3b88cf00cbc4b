"""SIGKILL at random moments, including during checkpoint writes; each resumed run is bitwise the
uninterrupted one and resumed from the newest checkpoint the killed run left.

Each trial starts ``metakit train`` in a subprocess (MAML on sinusoids, a tiny MLP, a checkpoint
every step so that writes are frequent), kills it with SIGKILL at a seeded random moment in the first
half of the run (trial 0: the moment a checkpoint's temporary file appears, i.e. during a write),
resumes it with ``metakit train --resume`` and compares the final checkpoint with the one of an
uninterrupted run: model, optimizer state and RNG states, bit for bit.
"""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from metakit.cli.main import main
from metakit.runtime.checkpoint import load_checkpoint
from metakit.runtime.logging import read_metrics

from .conftest import SINUSOID_CONFIG

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIGSTOP and /proc/PID/stat"),
]

STEPS = 60
TRIALS = 3
METAKIT = str(Path(sys.executable).parent / "metakit")


def _tensors(obj, prefix=""):
    """Every tensor of a nested checkpoint state, by path."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}/{i}")


def _final_state(run_dir: Path) -> dict:
    state = load_checkpoint(run_dir / "checkpoints" / f"step-{STEPS:08d}.safetensors")
    return {k: state[k] for k in ("model", "optimizer", "sampler", "rng")}


def _kill_during_run(run_dir: Path, config: Path, rng: random.Random, during_write: bool, wait_until, newest_checkpoint) -> bool:
    """Start a run, SIGKILL it (``during_write``: in the middle of a checkpoint write); return whether
    a write was in progress at the kill (its temporary file is left behind)."""
    proc = subprocess.Popen([METAKIT, "train", str(config), "--out", str(run_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: newest_checkpoint(run_dir) >= 0, proc, "first checkpoint")
    if during_write:
        # stop the process the moment a temporary checkpoint file appears; if the file is still there
        # once it is stopped (not yet renamed into place), the write is in progress: kill it there
        folder = run_dir / "checkpoints"
        while True:
            assert proc.poll() is None, "the run ended before a write could be caught"
            if any(e.name.startswith(".step-") for e in os.scandir(folder)):
                proc.send_signal(signal.SIGSTOP)
                while _state(proc.pid) not in ("T", "t"):
                    time.sleep(0.001)
                if any(e.name.startswith(".step-") for e in os.scandir(folder)):
                    break
                proc.send_signal(signal.SIGCONT)
    else:
        # a seeded random step in the first half of the run, then a random moment within a step: a
        # moment set by progress, not by wall-clock time, falls before the run's end at any speed
        step = rng.randint(1, STEPS // 2)
        wait_until(lambda: newest_checkpoint(run_dir) >= step, proc, f"a checkpoint at step {step} or later")
        time.sleep(rng.uniform(0.0, 0.005))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill: {proc.returncode}"
    left = [e.name for e in os.scandir(run_dir / "checkpoints") if e.name.startswith(".step-")]
    return bool(left)


def _state(pid: int) -> str:
    """The scheduler state letter of a process (``T``: stopped)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_sigkill_at_random_moments_then_resume_is_bitwise_the_uninterrupted_run(tmp_path, capsys, wait_until, newest_checkpoint):
    config = tmp_path / "sinusoid.yaml"
    config.write_text(SINUSOID_CONFIG.format(seed=0, steps=STEPS, every=1))
    assert main(["train", str(config), "--out", str(tmp_path / "reference")]) == 0
    reference = _final_state(tmp_path / "reference")
    reference_log = [{k: v for k, v in r.items() if k not in ("time", "elapsed", "episodes_per_s")} for r in read_metrics(tmp_path / "reference")]
    rng = random.Random(0)
    writes_hit = 0
    for trial in range(TRIALS):
        run_dir = tmp_path / f"trial{trial}"
        writes_hit += _kill_during_run(run_dir, config, rng, during_write=trial == 0, wait_until=wait_until,
                                      newest_checkpoint=newest_checkpoint)
        newest = newest_checkpoint(run_dir)
        assert 0 <= newest < STEPS
        capsys.readouterr()
        assert main(["train", "--resume", str(run_dir)]) == 0
        err = capsys.readouterr().err
        assert f"resuming {run_dir} from step-{newest:08d}.safetensors (step {newest})" in err, err
        resumed = _final_state(run_dir)
        ref = dict(_tensors(reference))
        got = dict(_tensors(resumed))
        assert ref.keys() == got.keys()
        for k in ref:
            assert torch.equal(ref[k], got[k]), f"trial {trial}: {k} differs"
        log = [{k: v for k, v in r.items() if k not in ("time", "elapsed", "episodes_per_s")} for r in read_metrics(run_dir)]
        assert log == reference_log, f"trial {trial}: the metrics differ from the uninterrupted run's"
        assert not [p for p in (run_dir / "checkpoints").iterdir() if ".tmp-" in p.name]  # leftovers cleaned
    assert writes_hit >= 1  # trial 0 at least
