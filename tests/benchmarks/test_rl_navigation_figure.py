"""benchmarks/rl/navigation_figure.py: the Figure 4 protocol over runs, written as a JSON record and a PNG."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from metakit.runtime.config import Config
from metakit.runtime.trainer import train

HERE = Path(__file__).resolve().parents[2] / "benchmarks" / "rl"


def _script():
    spec = importlib.util.spec_from_file_location("rl_navigation_figure", HERE / "navigation_figure.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_record_holds_each_policy_s_returns_after_each_step(tmp_path, monkeypatch):
    raw = {
        "task": {"family": "navigation_2d", "horizon": 8},
        "train": {"shots": 2, "queries": 2, "meta_batch": 2, "steps": 1},
        "eval": {"val_episodes": 0, "test_episodes": 4},
        "model": {"name": "gaussian_mlp", "hidden": [4]},
        "algorithm": {"name": "maml_rl"},
        "optim": {"name": "sgd", "lr": 1.0},
        "run": {"progress": False, "num_threads": 1},
    }
    train(Config.from_dict(raw), tmp_path / "run")
    record, figure = tmp_path / "record.json", tmp_path / "fig.png"
    monkeypatch.setattr(sys, "argv", ["navigation_figure.py", "--run", f"maml={tmp_path / 'run'}", "--random-init",
                                      "--tasks", "3", "--steps", "2", "--record", str(record), "--figure", str(figure)])
    assert _script().main() == 0
    (entry,) = json.loads(record.read_text())
    assert entry["protocol"] == {"tasks": 3, "steps": 2, "shots": 2, "queries": 2, "seed": 0, "split": "test"}
    assert set(entry["policies"]) == {"maml", "random init"}
    maml = entry["policies"]["maml"]
    assert [p["steps"] for p in maml["returns"]] == [0, 1, 2]
    assert all(math.isfinite(p["mean"]) and p["ci95"] > 0 for p in maml["returns"])
    assert maml["training"]["step"] == 1 and len(maml["checkpoint_sha256"]) == 64
    assert {"run_id", "command", "seconds", "hardware", "date"} <= set(entry) and figure.stat().st_size > 5000
    # the table mode prints the newest entry, and writes it between a README's markers only
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- navigation-table -->\nold\n<!-- /navigation-table -->\nrest\n")
    monkeypatch.setattr(sys, "argv", ["navigation_figure.py", "--table", "--record", str(record), "--readme", str(readme)])
    assert _script().main() == 0
    text = readme.read_text()
    assert text.startswith("intro\n<!-- navigation-table -->\n") and text.endswith("\n<!-- /navigation-table -->\nrest\n")
    assert "\nold\n" not in text and entry["run_id"] in text and "3 fixed test tasks" in text
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    for label, pol in entry["policies"].items():
        cells = rows[label].strip("| ").split(" | ")[2:]
        assert cells == [f"{q['mean']:.2f} ± {q['ci95']:.2f}" for q in pol["returns"]]
    assert "(step 1) of 1 iterations" in rows["maml"] and "none (initialisation, seed 0)" in rows["random init"]
    assert _script().main() == 0 and readme.read_text() == text  # idempotent
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="navigation-table"):
        _script().main()


def test_the_docs_table_is_the_short_run_record_s():
    docs = (HERE.parents[1] / "docs" / "meta_rl.md").read_text()
    block = docs.split("<!-- navigation-table -->\n", 1)[1].split("\n<!-- /navigation-table -->", 1)[0]
    entries = json.loads((HERE / "navigation_short.json").read_text())
    assert block == _script().table(entries[-1], "benchmarks/rl/navigation_short.json")


def test_the_readme_table_is_the_newest_navigation_record_s():
    readme = (HERE.parents[1] / "README.md").read_text()
    block = readme.split("<!-- navigation-table -->\n", 1)[1].split("\n<!-- /navigation-table -->", 1)[0]
    entries = json.loads((HERE / "navigation.json").read_text())
    assert block == _script().table(entries[-1], "benchmarks/rl/navigation.json")
    assert (HERE.parents[1] / "docs" / "maml_rl_navigation.png").stat().st_size > 5000


def test_table_mode_refuses_a_missing_or_empty_record_and_a_stray_readme(tmp_path, monkeypatch):
    missing = tmp_path / "none.json"
    monkeypatch.setattr(sys, "argv", ["navigation_figure.py", "--table", "--record", str(missing)])
    with pytest.raises(SystemExit, match="--record .* does not exist; evaluate runs first"):
        _script().main()
    missing.write_text("[]")
    with pytest.raises(SystemExit, match="holds no entry"):
        _script().main()
    monkeypatch.setattr(sys, "argv", ["navigation_figure.py", "--readme", str(tmp_path / "README.md"), "--run", "a=b"])
    with pytest.raises(SystemExit):
        _script().main()
