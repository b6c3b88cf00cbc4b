"""benchmarks/omniglot/curves.py: validation curves of several runs in one PNG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metakit.bench import load_script

HERE = Path(__file__).resolve().parents[2] / "benchmarks" / "omniglot"


def _curves():
    return load_script(HERE / "curves.py", "omniglot_curves")


def test_curves_reads_validation_records_and_writes_a_png(tmp_path):
    curves = _curves()
    for name, accs in (("run_a", [0.5, 0.7, 0.8]), ("run_b", [0.6, 0.9])):
        d = tmp_path / name
        d.mkdir()
        lines = []
        for i, a in enumerate(accs, 1):
            lines.append(json.dumps({"step": 100 * i, "split": "train", "elapsed": 50.0 * i, "loss": 1.0, "accuracy": 0.1}))
            lines.append(json.dumps({"step": 100 * i, "split": "val", "elapsed": 60.0 * i, "metric": "accuracy",
                                     "accuracy": a, "ci95": 0.02, "episodes": 100}))
        (d / "metrics.jsonl").write_text("\n".join(lines) + "\n{\"step\": 4")  # a last line cut by a crash
    rows = curves.read_val(tmp_path / "run_a")
    assert rows == [(100, 60.0, 0.5, 0.02), (200, 120.0, 0.7, 0.02), (300, 180.0, 0.8, 0.02)]
    out = tmp_path / "figs" / "val.png"
    curves.main([str(tmp_path), "run_a", "run_b", "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    empty = tmp_path / "run_c"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text(json.dumps({"step": 1, "split": "train", "loss": 1.0}) + "\n")
    with pytest.raises(ValueError, match="no validation record"):
        curves.read_val(empty)
    with pytest.raises(FileNotFoundError, match="run folder"):
        curves.read_val(tmp_path / "missing")
