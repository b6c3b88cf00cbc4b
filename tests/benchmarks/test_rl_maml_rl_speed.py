"""benchmarks/rl/maml_rl_speed.py: the variants draw the same roll-outs, the record says how it was measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from metakit.bench import load_script

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "rl" / "maml_rl_speed.py"


def _script():
    return load_script(SCRIPT, "maml_rl_speed")


def test_the_variants_compute_the_same_step_from_the_same_rollouts():
    mod = _script()
    result = mod.measure("reduced", 2, 2, 1, mod.load_baseline("HEAD"))
    runs = result["runs"]
    # the baseline and the current exact product: one computation, the same roll-outs, the same step
    assert runs["current_exact"][0]["step_relative_difference"] == 0.0
    assert runs["current_exact"][0]["kl"] == runs["baseline_exact"][0]["kl"] > 0
    assert set(runs["baseline_exact"][0]["split"]) == {"rollouts", "advantages", "kl_products", "line_search", "rest"}
    assert all(v >= 0 for v in runs["current_gauss_newton"][0]["split"].values())
    # perturbing the products by the unit roundoff moves the step: the measure of rounding the record keeps
    assert runs["current_exact_perturbed"][0]["step_relative_difference"] > 0


def test_the_record_names_how_it_was_measured():
    entry = json.loads((REPO / "benchmarks" / "rl" / "maml_rl_speed.json").read_text())[-1]
    assert {"run_id", "command", "seconds", "hardware", "date", "config_sha256", "baseline_commit", "commit"} <= set(entry)
    assert entry["uncommitted_changes"] is False
    for result in entry["results"]:
        assert all(r["step_relative_difference"] == 0.0 for r in result["runs"]["current_exact"])
        if result["dtype"] == "float64":
            assert all(r["step_relative_difference"] < 1e-8 for r in result["runs"]["current_gauss_newton"])


def test_a_baseline_that_is_no_commit_is_refused_with_the_fix():
    run = subprocess.run([sys.executable, str(SCRIPT), "--baseline", "no-such-rev"], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 2 and "--baseline 'no-such-rev' names no commit" in run.stderr
    run = subprocess.run([sys.executable, str(SCRIPT), "--tasks", "0"], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 2 and "--tasks=0: give at least 1" in run.stderr
