"""benchmarks/omniglot/protocols.py: test-protocol variants of a run, driven through a stand-in
``metakit`` executable, recorded, and the table of docs/reproduction.md printed from the record."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from metakit.bench import load_script

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "omniglot" / "protocols.py"
pr = load_script(SCRIPT, "omniglot_protocols")

# Stands in for `metakit eval ... --json`: logs its arguments to $CALLS and prints a result whose
# accuracy encodes the protocol (episode statistics +0.05, each query per class fewer -0.001);
# $IGNORE_BATCH_NORM makes it report running statistics whatever it was asked, $CHECKPOINT_SAID another
# checkpoint than the one asked; $MODEL_BN is the model's BatchNorm it reports (default "running"; "omit":
# none, as eval did before it reported it).
_FAKE = """\
#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["CALLS"], "a") as f:
    f.write(" ".join(args) + "\\n")
opt = dict(zip(args[2::2], args[3::2]))
norm = "running" if os.environ.get("IGNORE_BATCH_NORM") else opt["--batch-norm"]
acc = 0.9 + (0.05 if norm == "episode" else 0.0) - 0.001 * (15 - int(opt["--queries"]))
print(json.dumps({{"accuracy": acc, "ci95": 0.002, "episodes": int(opt["--episodes"]), "queries": int(opt["--queries"]),
                  "ways": int(opt["--ways"]), "shots": int(opt["--shots"]), "split": opt["--split"],
                  "seed": int(opt["--seed"]), "batch_norm": norm, "step": 7,
                  "checkpoint": os.environ.get("CHECKPOINT_SAID", os.path.basename(opt["--checkpoint"])),
                  **({{}} if os.environ.get("MODEL_BN") == "omit" else {{"model_batch_norm": os.environ.get("MODEL_BN", "running")}})}}))
"""

_LIST = """\
columns: [5w1s, 20w1s]
evaluation: {split: test, queries: 15, episodes: 1000, seed: 0}
runs:
  run_a:
    family: metric
    method: Method A
    config: configs/x.yaml
    overrides: [train.steps=10]
    evaluate: [{ways: 5, shots: 1}, {ways: 20, shots: 1}]
"""


@pytest.fixture
def setup(tmp_path, monkeypatch):
    fake = tmp_path / "metakit"
    fake.write_text(_FAKE.format(python=sys.executable))
    fake.chmod(0o755)
    monkeypatch.setenv("CALLS", str(tmp_path / "calls.txt"))
    (tmp_path / "runs.yaml").write_text(_LIST)
    d = tmp_path / "runs" / "run_a"
    (d / "checkpoints").mkdir(parents=True)
    (d / "checkpoints" / "best.safetensors").write_bytes(b"weights")
    (d / "config.yaml").write_text("train: {steps: 10}\n")
    (d / "metrics.jsonl").write_text(json.dumps({"step": 1, "split": "train", "time": 1796083200.5, "elapsed": 0.5}) + "\n")
    (d / "summary.json").write_text(json.dumps({"status": "finished", "step": 10}))
    record = tmp_path / "protocols.json"

    def run(*extra: str) -> int:
        (tmp_path / "calls.txt").write_text("")
        return pr.main(["eval", "run_a", "--runs", str(tmp_path / "runs"), "--metakit", str(fake),
                        "--list", str(tmp_path / "runs.yaml"), "--record", str(record), *extra])

    return run, record, tmp_path / "calls.txt", d


def test_every_variant_is_evaluated_in_the_first_listed_setting_recorded_and_not_repeated(setup, monkeypatch):
    run, record, calls, d = setup
    assert run() == 0
    lines = calls.read_text().splitlines()
    base = f"eval {d} --split test --ways 5 --shots 1 --queries"
    best = d / "checkpoints" / "best.safetensors"
    assert lines == [f"{base} 15 --episodes 1000 --seed 0 --checkpoint {best} --batch-norm running --json",
                     f"{base} 15 --episodes 1000 --seed 0 --checkpoint {best} --batch-norm episode --json",
                     f"{base} 1 --episodes 1000 --seed 0 --checkpoint {best} --batch-norm running --json",
                     f"{base} 1 --episodes 1000 --seed 0 --checkpoint {best} --batch-norm episode --json"]
    recs = json.loads(record.read_text())["records"]
    assert [r["variant"] for r in recs] == [v[0] for v in pr.VARIANTS]
    r = recs[3]
    assert r["run_id"] == "run_a-20261201T000000Z" and r["setting"] == "5w1s" and r["steps"] == 10
    assert r["checkpoint"]["sha256"] == pr.reproduce.sha256(d / "checkpoints" / "best.safetensors")
    assert r["command"].endswith(lines[3]) and r["result"]["batch_norm"] == "episode"
    assert r["hardware"]["cores"] >= 1 and r["date"]
    assert run() == 0 and calls.read_text() == ""  # all up to date
    # another list evaluation (fewer episodes): every variant again
    lst = d.parents[1] / "runs.yaml"
    lst.write_text(lst.read_text().replace("episodes: 1000", "episodes: 500"))
    assert run() == 0 and len(calls.read_text().splitlines()) == 4 and all("--episodes 500 " in c for c in calls.read_text().splitlines())
    # a new checkpoint whose episode-statistics evaluations fail: the table shows that checkpoint alone
    (d / "checkpoints" / "best.safetensors").write_bytes(b"other weights")
    monkeypatch.setenv("IGNORE_BATCH_NORM", "1")
    assert run() == 1 and len(calls.read_text().splitlines()) == 4
    monkeypatch.delenv("IGNORE_BATCH_NORM")
    lines = pr.table_lines(json.loads(record.read_text())["records"])
    assert len(lines) == 3
    assert lines[2].endswith("| running statistics | 90.00 ± 0.20 (15 q) | not run | 88.60 ± 0.20 (1 q) | not run |"), lines[2]
    # a run without validation: its newest step checkpoint, as reproduce.py evaluates it
    (d / "checkpoints" / "best.safetensors").unlink()
    for step in (5, 10):
        (d / "checkpoints" / f"step-{step:08d}.safetensors").write_bytes(b"weights %d" % step)
    assert run() == 0
    assert all(f"--checkpoint {d / 'checkpoints' / 'step-00000010.safetensors'} " in c for c in calls.read_text().splitlines())


@pytest.mark.parametrize("model, shown, said", [("batch", "batch statistics (no running ones)", "BatchNorm on batch statistics only"),
                                               ("none", "no BatchNorm", "no BatchNorm")])
def test_a_model_without_running_statistics_varies_the_queries_only(setup, monkeypatch, capsys, model, shown, said):
    run, record, calls, d = setup
    monkeypatch.setenv("MODEL_BN", model)
    assert run() == 0
    lines = calls.read_text().splitlines()
    assert len(lines) == 2 and all("--batch-norm running" in c for c in lines)
    assert [" --queries 15 " in lines[0], " --queries 1 " in lines[1]] == [True, True]
    assert capsys.readouterr().out.count(f"not applicable: the model has {said}, so no running statistics to replace") == 2
    recs = json.loads(record.read_text())["records"]
    assert [r["variant"] for r in recs] == [pr.VARIANTS[0][0], pr.VARIANTS[2][0]]
    assert run() == 0 and calls.read_text() == ""  # up to date: the model's BatchNorm read from the record
    assert pr.table_lines(recs)[2].endswith(f"| {shown} | 90.00 ± 0.20 (15 q) | n/a | 88.60 ± 0.20 (1 q) | n/a |")


def test_records_that_do_not_state_the_models_batch_norm_are_evaluated_again_once(setup, monkeypatch):
    run, record, calls, _ = setup
    monkeypatch.setenv("MODEL_BN", "omit")
    assert run() == 0 and len(calls.read_text().splitlines()) == 4
    monkeypatch.setenv("MODEL_BN", "batch")
    assert run() == 0
    again = calls.read_text().splitlines()  # the first variant, which tells; the shots variant is up to date
    assert len(again) == 1 and " --queries 15 " in again[0] and "--batch-norm running" in again[0]
    assert run() == 0 and calls.read_text() == ""


def test_a_result_of_another_checkpoint_is_not_recorded(setup, monkeypatch, capsys):
    run, record, _, _ = setup
    monkeypatch.setenv("CHECKPOINT_SAID", "step-00000005.safetensors")
    assert run() == 1 and not record.exists()
    assert "a result of another checkpoint or BatchNorm mode than asked" in capsys.readouterr().out


def test_a_result_that_does_not_state_the_asked_batch_norm_is_not_recorded(setup, monkeypatch, capsys):
    run, record, _, _ = setup
    monkeypatch.setenv("IGNORE_BATCH_NORM", "1")
    assert run() == 1
    recs = json.loads(record.read_text())["records"]
    assert [r["variant"] for r in recs] == [pr.VARIANTS[0][0], pr.VARIANTS[2][0]]
    assert "list's queries, each episode's statistics: FAILED" in capsys.readouterr().out


def test_unknown_runs_and_unended_runs_are_errors(setup, capsys):
    run, _, _, d = setup
    assert pr.main(["eval", "nope", "--runs", str(d.parent), "--list", str(d.parents[1] / "runs.yaml")]) == 2
    assert "unknown run name(s) nope" in capsys.readouterr().err
    (d / "summary.json").write_text(json.dumps({"status": "running", "step": 3}))
    assert run() == 1 and "the run is still training, was killed or failed" in capsys.readouterr().out


def test_the_table_shows_each_variant_and_the_doc_shows_the_committed_record(tmp_path):
    rec = {"run": "run_a", "variant": pr.VARIANTS[1][0], "run_id": "r", "checkpoint": {"step": 1200, "sha256": "x"},
           "result": {"accuracy": 0.9761, "ci95": 0.0023, "queries": 15, "episodes": 1000, "ways": 5, "shots": 1,
                      "split": "test", "seed": 0, "batch_norm": "episode"}}
    lines = pr.table_lines([rec])
    assert lines[2] == ("| `run_a` (step 1,200) | 1,000 x 5-way 1-shot, test, seed 0 | "
                        "running statistics, in some layers at least (inferred) | not run | "
                        "97.61 ± 0.23 (15 q) | not run | not run |")  # written before eval reported it: inferred
    rec = {**rec, "variant": pr.VARIANTS[0][0], "result": {**rec["result"], "batch_norm": "running"}}
    assert "| not recorded | 97.61 ± 0.23 (15 q) | not run |" in pr.table_lines([rec])[2]
    doc = (REPO / "docs" / "reproduction.md").read_text()
    begin, end = pr.DOC_MARKERS
    in_doc = doc.split(begin, 1)[1].split(end, 1)[0].strip("\n")
    printed = subprocess.run([sys.executable, str(SCRIPT), "table"], capture_output=True, text=True, check=True,
                             timeout=600).stdout.strip("\n")
    assert in_doc == printed, "docs/reproduction.md's protocols table differs; `protocols.py table --doc docs/reproduction.md`"
    page = tmp_path / "page.md"
    page.write_text("a\n<!-- protocols-table -->\nold\n<!-- /protocols-table -->\nb\n")
    assert pr.main(["table", "--doc", str(page), "--record", str(tmp_path / "none.json")]) == 0
    assert page.read_text() == "a\n<!-- protocols-table -->\n" + "\n".join(pr.table_lines([])) + "\n<!-- /protocols-table -->\nb\n"


def test_a_run_the_list_evaluates_with_its_own_query_count_is_still_compared_with_the_default(setup):
    run, record, calls, d = setup
    lst = d.parents[1] / "runs.yaml"
    lst.write_text(lst.read_text().replace("evaluate: [{ways: 5, shots: 1}", "evaluate: [{ways: 5, shots: 1, queries: 1}"))
    assert run() == 0
    queries = [c.split("--queries ")[1].split()[0] for c in calls.read_text().splitlines()]
    assert queries == ["15", "15", "1", "1"]  # the list's default, then as many as shots
