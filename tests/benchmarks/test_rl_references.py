"""benchmarks/rl/references.py: the references' record and the table beside Duan et al.'s numbers."""

from __future__ import annotations

import json
from pathlib import Path

from metakit.bench import load_script

HERE = Path(__file__).resolve().parents[2] / "benchmarks" / "rl"


def _script():
    return load_script(HERE / "references.py", "rl_references")


def test_run_writes_a_stamped_record_per_setting_and_the_table_reads_it(tmp_path, monkeypatch):
    refs = _script()
    monkeypatch.setattr(refs, "GRIDS", {"ucb1": [0.0, 0.5], "epsilon_greedy": [0.0, 0.5], "gittins": [0.5, 0.9]})
    record = tmp_path / "references.json"
    assert refs.main(["run", "bandits-k5-n10", "mdp-n10", "--tasks", "30", "--tune-tasks", "20", "--record", str(record)]) == 0
    entries = json.loads(record.read_text())
    assert [e["setting"] for e in entries] == ["bandits-k5-n10", "mdp-n10"]
    bandit, mdp = entries
    for key in ("run_id", "protocol_sha256", "command", "seconds", "hardware", "date", "git_commit"):
        assert key in bandit
    assert bandit["command"].startswith("python benchmarks/rl/references.py run bandits-k5-n10")
    assert set(bandit["results"]) == {"random", "gittins", "thompson", "ucb1", "epsilon_greedy", "greedy"}
    assert bandit["tuning"]["ucb1"]["grid"] == [0.0, 0.5] and bandit["tuning"]["ucb1"]["tasks"] == 20
    assert bandit["results"]["ucb1"]["constants"]["c"] == bandit["tuning"]["ucb1"]["chosen"]
    assert set(mdp["results"]) == {"random", "psrl", "optimal"} and mdp["protocol"]["tasks"] == 30
    r = mdp["results"]["optimal"]
    assert r["regret"] == r["regret"] and abs(r["return"] + r["regret"] - mdp["optimal_return"]) < 1e-9
    text = refs.table(record)
    g = bandit["results"]["gittins"]
    assert f"| 5 | 10 | 30 | " in text and f"{g['return']:.1f} ± {g['ci95']:.1f} (6.6)" in text
    p = mdp["results"]["psrl"]
    assert f"| 10 | 30 | " in text and f"{p['return']:.1f} ± {p['ci95']:.1f} (138.1)" in text


def test_throughput_compares_the_batched_env_with_sync_vector_env(tmp_path):
    refs = _script()
    out = refs.throughput(envs=4, steps=20)
    for family in ("bandits", "tabular_mdp"):
        row = out["families"][family]
        assert row["batched"]["env_steps_per_s"] > 0 and row["sync"]["env_steps_per_s"] > 0
        assert row["speedup"] == round(row["batched"]["env_steps_per_s"] / row["sync"]["env_steps_per_s"], 2)


def test_the_docs_show_exactly_the_tables_of_the_committed_records():
    refs = _script()
    doc = (Path(__file__).resolve().parents[2] / "docs" / "meta_rl.md").read_text()
    shown = doc.split("<!-- rl-references-table -->\n", 1)[1].split("<!-- /rl-references-table -->", 1)[0]
    assert shown.strip() == (refs.table() + "\n\n" + refs.throughput_table()).strip()
