"""The scripts behind the README's Omniglot table: the job files and table.py's record."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from metakit.runtime.config import load_config

HERE = Path(__file__).resolve().parents[2] / "benchmarks" / "omniglot"


def _table():
    spec = importlib.util.spec_from_file_location("omniglot_table", HERE / "table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _jobs():
    for f in sorted(HERE.glob("queue_*.jobs")):
        for line in f.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                yield f.name, line.split("|")


@pytest.mark.parametrize("job", list(_jobs()), ids=lambda j: f"{j[0]}:{j[1][0]}")
def test_every_job_line_is_a_valid_config_with_valid_settings(job, monkeypatch):
    _, fields = job
    assert len(fields) in (4, 5), fields  # NAME|CONFIG|OVERRIDES|EVALS[|EPISODES]
    name, cfg, overrides, evals = fields[:4]
    if len(fields) == 5:
        assert int(fields[4]) >= 600  # the field's minimum for a reported accuracy
    monkeypatch.chdir(HERE.parents[1])  # the job files are run from the checkout
    config = load_config(cfg, overrides.split())
    assert config.train.steps > 0
    for e in evals.split(";"):
        ways, shots = (int(v) for v in e.split(","))
        assert f"{ways}w{shots}s" in _table().SETTINGS


def test_the_table_names_every_run_of_the_job_files():
    table = _table()
    named = {run for _, _, runs, _ in table.ROWS for run in runs.values()}
    assert {job[0] for _, job in _jobs()} <= named


def test_the_committed_record_is_well_formed():
    record = json.loads((HERE / "results.json").read_text())
    table = _table()
    named = {run for _, _, runs, _ in table.ROWS for run in runs.values()}
    for run, entry in record["runs"].items():
        assert run in named, run
        assert entry["status"] in ("finished", "interrupted") and entry["steps"] > 0 and entry["source"]
        for setting, r in entry["evals"].items():
            assert setting in table.SETTINGS
            assert 0 < r["accuracy"] <= 1 and 0 <= r["ci95"] < 0.1
            assert r["episodes"] >= 600 and r["split"] == "test"


def _fake_run(out: Path, name: str, *, finished: bool, evals: dict[str, float]) -> None:
    d = out / name
    d.mkdir(parents=True)
    train = {"ways": 5, "shots": 1, "queries": 15, "meta_batch": 1}
    (d / "config.yaml").write_text(yaml.safe_dump({"train": train}))
    if finished:
        (d / "summary.json").write_text(json.dumps({"status": "finished", "step": 500, "elapsed": 120.0}))
    for setting, acc in evals.items():
        (out / f"{name}.eval.{setting}.json").write_text(json.dumps(
            {"accuracy": acc, "ci95": 0.004, "episodes": 1000, "queries": 15, "seed": 0, "split": "test", "step": 500}))


def test_table_merges_run_folders_over_the_record_and_saves_finished_runs(tmp_path, capsys):
    table = _table()
    record = tmp_path / "results.json"
    record.write_text(json.dumps({"runs": {
        "siamese_5w1s": {"episodes": "5-way 1-shot 15-query x 1", "status": "finished", "steps": 5000, "minutes": 9.0,
                         "source": "an earlier machine",
                         "evals": {"5w1s": {"accuracy": 0.897, "ci95": 0.005, "episodes": 1000, "queries": 15,
                                            "seed": 0, "split": "test"}}}}}))
    out = tmp_path / "runs"
    _fake_run(out, "relation_5w5s", finished=True, evals={"5w5s": 0.991})
    _fake_run(out, "siamese_5w5s", finished=False, evals={})
    _fake_run(out, "reptile_5w5s", finished=True, evals={"5w5s": 0.95})
    r = json.loads((out / "reptile_5w5s.eval.5w5s.json").read_text())
    (out / "reptile_5w5s.eval.5w5s.json").write_text(json.dumps({**r, "episodes": 600}))
    table.main([str(out), "--record", str(record)])
    text = capsys.readouterr().out
    siamese = next(line for line in text.splitlines() if "| Siamese" in line)
    # recorded 5w1s figure; 20w1s of a recorded run never evaluated is "not run"; the live 5-shot run is in progress
    assert "| 89.7 ± 0.5 | pending | not run | pending |" in siamese
    assert "`siamese_5w5s`: 5-way 1-shot 15-query x 1, in progress" in siamese
    relation = next(line for line in text.splitlines() if "| Relation Net" in line)
    assert "`relation_5w5s`: 5-way 1-shot 15-query x 1, 500 steps, 2 min" in relation and "99.1 ± 0.4" in relation
    assert "95.0 ± 0.4 (600 episodes)" in next(line for line in text.splitlines() if "| Reptile" in line)
    assert "relation_5w5s" not in json.loads(record.read_text())["runs"]  # without --update nothing is written
    table.main([str(out), "--record", str(record), "--update"])
    saved = json.loads(record.read_text())["runs"]
    assert saved["relation_5w5s"]["evals"]["5w5s"]["accuracy"] == 0.991 and "measured" in saved["relation_5w5s"]["source"]
    assert "siamese_5w5s" not in saved  # runs still training are not recorded
    assert saved["siamese_5w1s"]["source"] == "an earlier machine"


_FAKE_METAKIT = r"""#!/usr/bin/env bash
# stands in for metakit: logs each call; `train` writes a finished run of the asked budget, `eval` a result
echo "$*" >> "$CALLS"
steps=$(grep -o 'train\.steps=[0-9]*' <<< "$*" | tail -1); steps=${steps#*=}
if [ "$1" = train ]; then
  if [ "$2" = --resume ]; then d=$3; else d=${@: -1}; fi
  mkdir -p "$d/checkpoints"
  printf '{"status": "finished", "step": %s, "steps": %s}\n' "$steps" "$steps" > "$d/summary.json"
elif [ "$1" = eval ]; then
  echo '{"accuracy": 0.5}'
fi
"""


def test_run_queue_starts_skips_and_extends_runs(tmp_path):
    fake = tmp_path / "fake_metakit"
    fake.write_text(_FAKE_METAKIT)
    fake.chmod(0o755)
    calls, out = tmp_path / "calls.txt", tmp_path / "runs"
    env = {**os.environ, "METAKIT": str(fake), "CALLS": str(calls)}

    def queue(steps: int) -> list[str]:
        jobs = tmp_path / f"q{steps}.jobs"
        jobs.write_text(f"# a comment\nrun_a|configs/x.yaml|train.steps={steps} eval.val_every=5|5,5\n")
        calls.write_text("")
        subprocess.run(["bash", str(HERE / "run_queue.sh"), str(jobs), str(out)], env=env, check=True,
                       cwd=tmp_path, timeout=60)
        return calls.read_text().splitlines()

    first = queue(10)  # a new run: trained from its config, then evaluated
    assert first[0].startswith("train configs/x.yaml train.steps=10") and first[0].endswith(str(out / "run_a"))
    assert first[1].startswith("eval ") and "--ways 5 --shots 5" in first[1]
    assert json.loads((out / "run_a.eval.5w5s.json").read_text()) == {"accuracy": 0.5}
    assert queue(10) == []  # finished at that budget and evaluated: nothing to do
    assert queue(8) == []  # a smaller budget than the one trained: nothing to do either
    longer = queue(20)  # a larger budget: resumed to it, and the stale evaluation redone
    assert longer[0] == f"train --resume {out / 'run_a'} run.progress=false train.steps=20"
    assert longer[1].startswith("eval ")


def _curves():
    spec = importlib.util.spec_from_file_location("omniglot_curves", HERE / "curves.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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
