"""Per-instance validation curves are read from the validation records of metrics.jsonl."""

from __future__ import annotations

import json

import pytest

from metakit.runtime.sequence_plots import plot_instance_curves, read_instance_curves


def test_instance_curves_come_from_the_validation_records(tmp_path):
    lines = [
        {"step": 5, "split": "train", "loss": 1.6, "instance_1": 0.9},
        {"step": 10, "split": "val", "accuracy": 0.3, "instance_1": 0.2, "instance_1_ci95": 0.05, "instance_2": 0.4,
         "instance_2_ci95": 0.04},
        {"step": 20, "split": "val", "accuracy": 0.4, "instance_1": 0.21, "instance_2": 0.6, "instance_2_ci95": 0.03},
    ]
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in lines) + '\n{"step": 30, "spl')  # a truncated last line
    curves = read_instance_curves(path)
    assert list(curves) == [1, 2]
    assert curves[1][0].steps == [10, 20] and curves[1][0].values == [0.2, 0.21]
    assert curves[1][1].steps == [10]
    assert curves[2][0].values == [0.4, 0.6] and curves[2][1].values == [0.04, 0.03]
    assert plot_instance_curves(tmp_path).is_file()


def test_a_run_without_per_instance_values_is_refused_with_the_reason(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "split": "val", "accuracy": 0.5}) + "\n")
    assert read_instance_curves(tmp_path / "metrics.jsonl") == {}
    with pytest.raises(ValueError, match="holds no per-instance validation accuracy yet"):
        plot_instance_curves(tmp_path)
