from __future__ import annotations

import json
import math
import os
import time

import pytest

from metakit.runtime.logging import MetricsLogger, read_metrics


def test_records_have_step_split_and_time_and_go_to_tensorboard(tmp_path):
    with MetricsLogger(tmp_path) as log:
        rec = log.log(5, "train", {"loss": 0.5, "accuracy": 0.75}, elapsed=1.23456)
        log.log(10, "val", {"metric": "accuracy", "accuracy": 0.9, "ci95": 0.01, "is_best": True})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first == rec
    assert first["step"] == 5 and first["split"] == "train" and isinstance(first["time"], float)
    assert first["elapsed"] == 1.235 and first["loss"] == 0.5
    assert [r["step"] for r in read_metrics(tmp_path, split="val")] == [10]
    # the numbers, not the strings or flags, are TensorBoard scalars "<split>/<name>"
    assert _tensorboard_scalars(tmp_path / "tb") == {
        "train/loss": [(5, 0.5)], "train/accuracy": [(5, 0.75)], "val/accuracy": [(10, pytest.approx(0.9))],
        "val/ci95": [(10, pytest.approx(0.01))],
    }


def _tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_resume_purges_tensorboard_steps_after_the_checkpoint(tmp_path):
    with MetricsLogger(tmp_path) as log:
        for step in (2, 4, 6):
            log.log(step, "train", {"loss": float(step)})
    with MetricsLogger(tmp_path, resume_step=3) as log:
        log.log(4, "train", {"loss": 40.0})
    assert _tensorboard_scalars(tmp_path / "tb") == {"train/loss": [(2, 2.0), (4, 40.0)]}


def test_a_resume_in_the_same_second_is_read_after_the_file_it_continues(tmp_path):
    # an earlier writer's file from this very second whose name sorts after any host name
    with MetricsLogger(tmp_path) as log:
        for step in (2, 4, 6):
            log.log(step, "train", {"loss": float(step)})
    (old,) = (tmp_path / "tb").iterdir()
    old.rename(old.with_name(f"events.out.tfevents.{int(time.time()):010d}.~.1.0"))
    with MetricsLogger(tmp_path, resume_step=3) as log:
        log.log(4, "train", {"loss": 40.0})
    assert _tensorboard_scalars(tmp_path / "tb") == {"train/loss": [(2, 2.0), (4, 40.0)]}


@pytest.mark.parametrize("ahead, now, expected", [
    (0, [0.25], [0.75]),  # a file of this second: wait for the next one
    (-1, [0.5], []),  # a file of the previous second: no wait
    (3600, [0.0], [1.0]),  # a file dated an hour ahead (clock set back): at most one second
    (0, [0.999999, 1.000001], [pytest.approx(1e-6)]),  # the second turns between two clock readings
])
def test_the_wait_past_event_files_is_between_zero_and_one_second(tmp_path, monkeypatch, ahead, now, expected):
    from metakit.runtime import logging as metrics_logging

    start = 1_000
    (tmp_path / f"events.out.tfevents.{start + ahead}.host.1.0").write_bytes(b"")
    readings, slept = iter(now), []
    monkeypatch.setattr(metrics_logging.time, "time", lambda: start + next(readings, now[-1]))
    monkeypatch.setattr(metrics_logging.time, "sleep", slept.append)
    metrics_logging._wait_past_event_files(tmp_path)
    assert slept == expected


def test_non_finite_values_are_written_as_null(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        log.log(1, "train", {"loss": math.nan, "grad_norm": math.inf})
    (rec,) = read_metrics(tmp_path)
    assert rec["loss"] is None and rec["grad_norm"] is None
    assert "NaN" not in (tmp_path / "metrics.jsonl").read_text()  # strict JSON


def test_resume_drops_lines_after_the_checkpoint_and_a_partial_line(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        for step in (2, 4, 6, 8):
            log.log(step, "train", {"loss": float(step)})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 10, "split": "tr')  # killed mid-line
    assert [r["step"] for r in read_metrics(tmp_path)] == [2, 4, 6, 8]
    with MetricsLogger(tmp_path, resume_step=5, tensorboard=False) as log:
        log.log(6, "train", {"loss": 60.0})
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path)] == [(2, 2.0), (4, 4.0), (6, 60.0)]


def test_a_new_run_starts_a_new_file(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        log.log(1, "train", {"loss": 1.0})
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        log.log(1, "train", {"loss": 2.0})
    assert [r["loss"] for r in read_metrics(tmp_path)] == [2.0]


def test_missing_metrics_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"metrics file '.*metrics.jsonl' does not exist"):
        read_metrics(tmp_path)


def test_the_rewrite_on_resume_is_synced_before_it_replaces_the_file(tmp_path, monkeypatch):
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        for step in (2, 4, 6):
            log.log(step, "train", {"loss": float(step)})
    events: list[str] = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(f"replace {os.path.basename(b)}"), replace(a, b))[1])
    MetricsLogger(tmp_path, resume_step=4, tensorboard=False).close()
    assert "replace metrics.jsonl" in events
    assert events.index("fsync") < events.index("replace metrics.jsonl")
    assert [r["step"] for r in read_metrics(tmp_path)] == [2, 4]
