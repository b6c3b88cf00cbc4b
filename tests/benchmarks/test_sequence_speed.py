"""benchmarks/sequence/speed.py: the measured paragraph of docs/model_based.md is the newest record's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from metakit.bench import load_script

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "sequence" / "speed.py"


def _script():
    return load_script(SCRIPT, "sequence_speed")


def test_the_docs_paragraph_is_printed_from_the_newest_record():
    doc = (REPO / "docs" / "model_based.md").read_text()
    assert doc.count("<!-- sequence-speed -->") == 1 and doc.count("<!-- /sequence-speed -->") == 1
    block = doc.split("<!-- sequence-speed -->\n", 1)[1].split("<!-- /sequence-speed -->", 1)[0]
    assert block.strip() == _script().table().strip()


def test_the_record_names_how_it_was_measured():
    entry = json.loads((REPO / "benchmarks" / "sequence" / "speed.json").read_text())[-1]
    assert {"run_id", "command", "seconds", "hardware", "date", "baseline_commit", "commit"} <= set(entry)
    assert entry["uncommitted_changes"] is False
    for result in entry["results"].values():
        assert len(result["config_sha256"]) == 64
        assert result["first_batch_loss_abs_difference"] == 0.0
    assert entry["sampler"]["identical_batches"] is True


@pytest.mark.parametrize("args, message", [
    (["--baseline", "no-such-revision"], "--baseline 'no-such-revision' names no commit of this repository; give a commit hash, tag or branch"),
    (["--timed", "0"], "--timed=0: give at least 1 step"),
])
def test_bad_arguments_are_refused_before_anything_is_measured(args, message):
    p = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)
    assert p.returncode == 2 and p.stderr.strip().endswith(f"speed.py: error: {message}"), p.stderr
