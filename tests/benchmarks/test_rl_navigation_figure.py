"""benchmarks/rl/navigation_figure.py: the MAML paper's adaptation protocol over runs, written as a JSON record and a PNG."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest

from metakit.bench import load_script
from metakit.runtime.config import Config
from metakit.runtime.trainer import train

HERE = Path(__file__).resolve().parents[2] / "benchmarks" / "rl"


def _script():
    return load_script(HERE / "navigation_figure.py", "rl_navigation_figure")


def _train_tiny(run_dir: Path, horizon: int, steps: int) -> None:
    """A tiny MAML-RL run on navigation (no validation: its "best" checkpoint is its last one)."""
    raw = {
        "task": {"family": "navigation_2d", "horizon": horizon},
        "train": {"shots": 2, "queries": 2, "meta_batch": 2, "steps": steps},
        "eval": {"val_episodes": 0, "test_episodes": 4},
        "model": {"name": "gaussian_mlp", "hidden": [4]},
        "algorithm": {"name": "maml_rl", "inner_lr": 0.1},
        "optim": {"name": "sgd", "lr": 1.0},
        "run": {"progress": False, "num_threads": 1, "checkpoint_every": 1},
    }
    train(Config.from_dict(raw), run_dir)


def test_the_record_holds_each_policy_s_returns_after_each_step(tmp_path, monkeypatch):
    _train_tiny(tmp_path / "run", horizon=8, steps=1)
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
    # the optimum on the same 3 test tasks, from the family
    family = Config.from_dict(entry["policies"]["maml"]["config"]).family
    best = [family.optimal_return(family.task(0, "test", i), 1) for i in range(3)]
    mean = sum(best) / 3
    ci = 1.96 * math.sqrt(sum((b - mean) ** 2 for b in best) / 2) / math.sqrt(3)
    assert f"scores {mean:.2f} ± {ci:.2f} per episode (`Navigation2DFamily.optimal_return`, horizon 8)" in text
    assert _script().main() == 0 and readme.read_text() == text  # idempotent
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="navigation-table"):
        _script().main()


def test_a_chosen_checkpoint_and_inner_step_sizes_label_the_rows_and_other_markers_take_the_table(tmp_path, monkeypatch,
                                                                                              capsys):
    _train_tiny(tmp_path / "run", horizon=6, steps=2)
    record = tmp_path / "record.json"
    monkeypatch.setattr(sys, "argv", ["navigation_figure.py", "--run", f"a={tmp_path / 'run'}@step-00000001.safetensors",
                                      "--run", f"b={tmp_path / 'run'}", "--run", f"c={tmp_path / 'run'}@last", "--random-init", "--inner-lr", "0.1", "0", "--tasks", "3",
                                      "--steps", "1", "--record", str(record), "--curves", str(tmp_path / "curves.png")])
    assert _script().main() == 0
    (entry,) = json.loads(record.read_text())
    pols = entry["policies"]
    assert list(pols) == ["a, inner lr 0.1", "a, inner lr 0", "b, inner lr 0.1", "b, inner lr 0", "c, inner lr 0.1",
                          "c, inner lr 0", "random init, inner lr 0.1", "random init, inner lr 0"]
    assert pols["a, inner lr 0"]["train_step"] == 1 and pols["a, inner lr 0"]["checkpoint"] == "step-00000001.safetensors"
    assert pols["b, inner lr 0"]["train_step"] == 2  # no validation: its "best" is its last checkpoint
    assert pols["c, inner lr 0"]["train_step"] == 2 and pols["c, inner lr 0"]["checkpoint"] == "step-00000002.safetensors"
    std = pols["a, inner lr 0"]["action_std"]
    assert len(std) == 2 and all(v > 0 for v in std) and pols["random init, inner lr 0"]["action_std"] == [1.0, 1.0]
    assert (tmp_path / "curves.png").stat().st_size > 5000
    assert list(entry["curves"]) == ["run"]  # once per run folder, under its name
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for key, name in (("return", "train"), ("kl", "kl"), ("step_fraction", "step_fraction")):
        assert entry["curves"]["run"][name] == [[r["step"], r[key]] for r in logged if r["split"] == "train"] != []
    assert [p["inner_lr"] for p in pols.values()] == [0.1, 0.0] * 4
    for label in ("a", "b", "c", "random init"):  # the step size changes the adapted policy, not the initial one
        zero, step = pols[f"{label}, inner lr 0"]["returns"], pols[f"{label}, inner lr 0.1"]["returns"]
        assert zero[0] == step[0] and zero[1]["mean"] != step[1]["mean"]
    docs = tmp_path / "doc.md"
    docs.write_text("<!-- navigation-table -->\nkeep\n<!-- /navigation-table -->\n<!-- other -->\nold\n<!-- /other -->\n")
    monkeypatch.setattr(sys, "argv", ["navigation_figure.py", "--table", "--record", str(record), "--readme", str(docs),
                                      "--markers", "other", "--curves", str(tmp_path / "again.png")])
    (tmp_path / "curves.png").unlink()
    assert _script().main() == 0 and (tmp_path / "again.png").stat().st_size > 5000
    text = docs.read_text()
    assert "\nkeep\n" in text and "\nold\n" not in text and "| a, inner lr 0 | step-00000001.safetensors (step 1)" in text
    run = tmp_path / "run"
    for bad, message in ((["--inner-lr", "-1"], r"--inner-lr \[-1.0\]: each step size must be a finite number >= 0"),
                         (["--inner-lr", "0.1", "0.1"], r"a step size is given twice"),
                         (["--run", f"a={run}@last"], r"--run labels \['a', 'a'\]: each run needs its own label"),
                         (["--run", f"random init={run}"], r"'random init' names --random-init's row"),
                         (["--run", f"x={run}@step-9.safetensors"], r"--run 'x=.*@step-9.safetensors': checkpoint .* does not exist")):
        monkeypatch.setattr(sys, "argv", ["navigation_figure.py", "--run", f"a={run}", "--record", str(record), *bad])
        with pytest.raises(SystemExit):
            _script().main()
        assert re.search(message, capsys.readouterr().err), bad
        assert len(json.loads(record.read_text())) == 1
    old = tmp_path / "old.json"  # a record written before curves were kept: --curves says so
    old.write_text(json.dumps([{k: v for k, v in entry.items() if k != "curves"}]))
    monkeypatch.setattr(sys, "argv", ["navigation_figure.py", "--table", "--record", str(old), "--curves", str(tmp_path / "x.png")])
    with pytest.raises(SystemExit, match="holds no learning curves"):
        _script().main()


def test_the_docs_table_is_the_short_run_record_s():
    docs = (HERE.parents[1] / "docs" / "meta_rl.md").read_text()
    block = docs.split("<!-- navigation-table -->\n", 1)[1].split("\n<!-- /navigation-table -->", 1)[0]
    entries = json.loads((HERE / "navigation_short.json").read_text())
    assert block == _script().table(entries[-1], "benchmarks/rl/navigation_short.json")


def test_the_docs_diagnosis_table_is_the_diagnosis_record_s():
    docs = (HERE.parents[1] / "docs" / "meta_rl.md").read_text()
    block = docs.split("<!-- navigation-diagnosis -->\n", 1)[1].split("\n<!-- /navigation-diagnosis -->", 1)[0]
    entries = json.loads((HERE / "navigation_diagnosis.json").read_text())
    assert block == _script().table(entries[-1], "benchmarks/rl/navigation_diagnosis.json")
    assert set(entries[-1]["curves"]) == {"maml_rl_navigation", "maml_rl_navigation_lvc", "pretrained_navigation"}
    assert (HERE.parents[1] / "docs" / "maml_rl_navigation_curves.png").stat().st_size > 5000


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


@pytest.mark.parametrize("task", ["direction", "velocity"])
def test_the_readme_half_cheetah_tables_are_the_newest_records(task):
    readme = (HERE.parents[1] / "README.md").read_text()
    marker = f"cheetah-{task}-table"
    block = readme.split(f"<!-- {marker} -->\n", 1)[1].split(f"\n<!-- /{marker} -->", 1)[0]
    entries = json.loads((HERE / f"cheetah_{task}.json").read_text())
    assert block == _script().table(entries[-1], f"benchmarks/rl/cheetah_{task}.json")
    policies = entries[-1]["policies"]
    assert {"maml", "pretrained", "random init"} <= set(policies)
    assert {pol["config"]["task"]["family"] for pol in policies.values() if "config" in pol} == {f"half_cheetah_{task}"}
    assert (HERE.parents[1] / "docs" / f"maml_rl_cheetah_{task}.png").stat().st_size > 5000
