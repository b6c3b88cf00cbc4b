"""benchmarks/omniglot/reproduce.py: the run list, the record, training/evaluation driven through a
stand-in ``metakit`` executable, and the table printed from the record."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from metakit.bench import load_script
from metakit.runtime.config import load_config

REPO = Path(__file__).resolve().parents[2]
HERE = REPO / "benchmarks" / "omniglot"


def _load():
    return load_script(HERE / "reproduce.py", "omniglot_reproduce")


rp = _load()

# Stands in for metakit: logs each call to $CALLS; `train` writes a finished run of the asked budget
# (config.yaml, metrics.jsonl, a best checkpoint whose bytes depend on the steps, summary.json), or with
# $STOP_EARLY=N and a train.patience set, a run stopped early at step N;
# `eval` prints a JSON result; $FAIL=train|eval makes that command exit with status 1.
_FAKE = """\
#!{python}
import json, os, sys
from pathlib import Path
import yaml
args = sys.argv[1:]
with open(os.environ["CALLS"], "a") as f:
    f.write(" ".join(args) + "\\n")
if os.environ.get("FAIL") == "train" == args[0]:
    sys.exit(1)
def new_config():  # the config file (relative to the working directory) with the command's overrides set
    cfg = yaml.safe_load(Path(args[1]).read_text())
    for a in args:
        if "=" in a:
            k, v = a.split("=", 1)
            sec, key = k.split(".")
            cfg.setdefault(sec, {{}})[key] = yaml.safe_load(v)
    return cfg
if args[0] == "train" and os.environ.get("WAIT_FOR_SIGINT"):  # a long training that Ctrl-C stops cleanly
    import signal, time
    d = Path(args[args.index("--out") + 1])
    def stop(*_):
        d.mkdir(parents=True)
        (d / "config.yaml").write_text(json.dumps(new_config()))
        (d / "checkpoints").mkdir()
        (d / "checkpoints" / "best.safetensors").write_bytes(b"weights after 3 steps")
        (d / "summary.json").write_text(json.dumps({{"status": "interrupted", "step": 3, "elapsed": 4.0,
                                                    "best": {{"step": 2}}}}))
        sys.exit(130)
    signal.signal(signal.SIGINT, stop)
    open(os.environ["WAIT_FOR_SIGINT"], "w").close()
    time.sleep(60)
    sys.exit(1)
if args[0] == "train":
    steps = int([a for a in args if a.startswith("train.steps=")][-1].split("=")[1])
    if args[1] == "--resume":
        d = Path(args[2])
        cfg = json.loads((d / "config.yaml").read_text())
    else:
        d = Path(args[args.index("--out") + 1])
        d.mkdir(parents=True)
        cfg = new_config()
    for a in args:
        if a.startswith("train.patience="):
            cfg["train"]["patience"] = json.loads(a.split("=", 1)[1])
    summary = {{"status": "finished", "step": steps, "elapsed": 1.5 * steps, "best": {{"step": steps - 1}}}}
    patience = cfg["train"].get("patience")
    if os.environ.get("STOP_EARLY") and patience is not None and int(os.environ["STOP_EARLY"]) < steps:
        cfg["train"]["steps"] = steps
        steps = int(os.environ["STOP_EARLY"])
        summary = {{"status": "stopped_early", "step": steps, "elapsed": 1.5 * steps, "best": {{"step": steps - 2 * patience}},
                   "stopped_early": {{"patience": patience, "validations_since_best": patience,
                                     "best_step": steps - 2 * patience, "message": "stopped early at step %d" % steps}}}}
    # the log: a training loss 1/step at every step, a validation at every second one (first line: step 1 at
    # 0.5 s, so the run started at 2026-12-01T00:00:00Z)
    done = json.loads((d / "summary.json").read_text())["step"] if args[1] == "--resume" else 0
    with open(d / "metrics.jsonl", "a") as f:
        for s in range(done + 1, steps + 1):
            t = {{"step": s, "time": 1796083200 + 0.5 * s, "elapsed": 0.5 * s}}
            f.write(json.dumps({{**t, "split": "train", "loss": 1.0 / s}}) + "\\n")
            if s % 2 == 0:
                f.write(json.dumps({{**t, "split": "val", "accuracy": 0.5 + s / 100, "ci95": 0.01, "episodes": 10}}) + "\\n")
    cfg["train"].setdefault("steps", steps)
    if summary["status"] == "finished":
        cfg["train"]["steps"] = steps
    (d / "config.yaml").write_text(json.dumps(cfg))
    (d / "checkpoints").mkdir(exist_ok=True)
    name = "step-%08d.safetensors" % steps if os.environ.get("NO_VALIDATION") else "best.safetensors"
    (d / "checkpoints" / name).write_bytes(b"weights after %d steps" % steps)
    (d / "summary.json").write_text(json.dumps(summary))
elif args[0] == "eval":
    d = Path(args[1])
    if not (d / "checkpoints" / "best.safetensors").exists() and "--checkpoint" not in args:
        sys.exit(2)  # as metakit eval: no best checkpoint before the first validation
    opt = dict(zip(args[2:args.index("--json"):2], args[3:args.index("--json"):2]))
    options = {{a.split("=")[0]: json.loads(a.split("=")[1]) for a in args[args.index("--json"):] if "=" in a}}
    print(json.dumps({{**({{"options": options}} if options else {{}}), "accuracy": 0.9, "ci95": 0.01, "episodes": int(opt["--episodes"]), "queries": int(opt["--queries"]),
                      "seed": int(opt["--seed"]), "split": opt["--split"], "ways": int(opt["--ways"]),
                      "shots": int(opt["--shots"]),
                      "checkpoint": sorted(p.name for p in (d / "checkpoints").iterdir())[0],
                      "step": json.loads((d / "summary.json").read_text())["best"]["step"], "seconds": 2.0,
                      "episodes_per_s": 5.0, "formatted": "90.00 ± 1.00 %"}}))
    sys.exit(1 if os.environ.get("FAIL") == "eval" else 0)  # a result printed by a failing command is not one
"""

_CONFIG = """\
task: {family: classification, dataset: omniglot, root: data, protocol: vinyals}
train: {ways: 5, shots: 5, queries: 5, meta_batch: 32, steps: 100}
model: {name: conv4}
algorithm: {name: matching}
"""

_LIST = """\
columns: [5w1s, 5w5s, 20w1s, 20w5s]
evaluation: {{split: test, queries: 15, episodes: 1000, seed: 0}}
runs:
  run_a:
    family: metric
    method: Method A
    config: configs/x.yaml
    overrides: [train.steps={steps}, algorithm.scale=10]
    evaluate: [{{ways: 5, shots: 5}}, {{ways: 20, shots: 5, episodes: 600}}]
    paper: {{5w5s: 99.0, source: "Someone 2020, Table 3"}}
"""


class Bench:
    """A temporary run list, record, runs folder and stand-in metakit."""

    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp = tmp
        self.fake = tmp / "metakit"
        self.fake.write_text(_FAKE.format(python=sys.executable))
        self.fake.chmod(0o755)
        self.calls = tmp / "calls.txt"
        self.list = tmp / "runs.yaml"
        self.record = tmp / "results.json"
        self.record.write_text(json.dumps({"format": 2, "records": []}))
        self.runs = tmp / "runs"
        monkeypatch.setenv("CALLS", str(self.calls))
        # the list's config files, relative to the folder the commands run in (the repository's, here tmp)
        monkeypatch.setattr(rp, "REPO", tmp)
        (tmp / "configs").mkdir()
        (tmp / "configs" / "x.yaml").write_text(_CONFIG)
        self.set_steps(10)

    def config_by_absolute_path(self) -> None:
        self.list.write_text(self.list.read_text().replace("config: configs/x.yaml", f"config: {self.tmp / 'configs' / 'x.yaml'}"))

    def set_steps(self, steps: int) -> None:
        self.list.write_text(_LIST.format(steps=steps))

    def main(self, *args: str) -> tuple[int, list[str]]:
        self.calls.write_text("")
        rc = rp.main(["--runs", str(self.runs), "--metakit", str(self.fake), "--list", str(self.list),
                      "--record", str(self.record), *args])
        return rc, self.calls.read_text().splitlines()

    def records(self) -> list[dict]:
        return json.loads(self.record.read_text())["records"]


@pytest.fixture
def bench(tmp_path, monkeypatch) -> Bench:
    return Bench(tmp_path, monkeypatch)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_new_run_is_trained_evaluated_and_recorded_then_left_alone(bench):
    rc, calls = bench.main()
    d = bench.runs / "run_a"
    assert rc == 0
    assert calls[0] == f"train configs/x.yaml train.steps=10 algorithm.scale=10 run.progress=false run.num_threads=1 --out {d}"
    assert calls[1] == f"eval {d} --split test --ways 5 --shots 5 --queries 15 --episodes 1000 --seed 0 --json"
    assert calls[2] == f"eval {d} --split test --ways 20 --shots 5 --queries 15 --episodes 600 --seed 0 --json"
    assert len(calls) == 3
    recs = bench.records()
    assert [(r["run"], r["setting"], r["status"]) for r in recs] == [("run_a", "5w5s", "recorded"), ("run_a", "20w5s", "recorded")]
    r = recs[1]
    assert r["config_sha256"] == _sha(d / "config.yaml")
    assert r["checkpoint"] == {"file": "best.safetensors", "sha256": _sha(d / "checkpoints" / "best.safetensors"), "step": 9}
    assert r["commands"]["eval"] == f"{bench.fake} {calls[2]}"
    assert [c["command"] for c in r["commands"]["train"]] == [f"{bench.fake} {calls[0]}"]
    assert r["commands"]["train"][0]["returncode"] == 0
    assert (r["steps"], r["best_step"], r["train_seconds"], r["eval_seconds"]) == (10, 9, 15.0, 2.0)
    assert r["run_id"] == "run_a-20261201T000000Z"  # metrics.jsonl's first line: time - elapsed
    assert r["result"]["episodes"] == 600 and r["result"]["accuracy"] == 0.9 and "formatted" not in r["result"]
    assert r["training"] == {"episodes": "5-way 5-shot 5-query x 32", "status": "finished"}
    assert r["curves"] == {"val": [[s, 0.5 * s, 0.5 + s / 100, 0.01] for s in (2, 4, 6, 8, 10)], "val_episodes": 10,
                           "train": [[s, 0.5 * s, 1.0 / s] for s in range(1, 11)]}
    hw = r["hardware"]
    assert hw["cores"] >= 1 and hw["cpu"] and hw["torch"].startswith("2.") and len(hw["load_average"]) == 3
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", r["git_commit"])  # this checkout's commit, from metakit's interpreter
    assert re.match(r"\d{4}-\d\d-\d\dT", r["date"])
    assert json.loads((bench.runs / "run_a.eval.20w5s.json").read_text())["episodes"] == 600
    assert "20w5s: 90.00 ± 1.00 %" in (bench.runs / "run_a.log").read_text()
    # nothing changed: nothing to train, nothing to evaluate, nothing recorded
    assert bench.main() == (0, [])
    assert bench.records() == recs
    # an evaluation setting changed in the list: that evaluation alone is run and recorded again
    bench.list.write_text(bench.list.read_text().replace("episodes: 600", "episodes: 700"))
    rc, calls = bench.main()
    assert rc == 0 and calls == [calls[0]] and "--ways 20 --shots 5 --queries 15 --episodes 700" in calls[0]
    assert len(bench.records()) == 3


def test_a_raised_budget_resumes_the_run_and_records_the_new_checkpoint(bench):
    bench.main()
    bench.set_steps(25)
    rc, calls = bench.main()
    d = bench.runs / "run_a"
    assert rc == 0
    assert calls[0] == f"train --resume {d} train.steps=25 run.progress=false run.num_threads=1"
    assert [c.split()[0] for c in calls[1:]] == ["eval", "eval"]
    recs = bench.records()
    assert len(recs) == 4 and recs[2]["steps"] == 25
    assert [p[0] for p in recs[2]["curves"]["val"]] == list(range(2, 25, 2))  # the whole run's curve, across the resume
    assert recs[2]["checkpoint"]["sha256"] == _sha(d / "checkpoints" / "best.safetensors") != recs[0]["checkpoint"]["sha256"]
    assert [c["command"].split()[1:3] for c in recs[3]["commands"]["train"]] == [["train", "configs/x.yaml"], ["train", "--resume"]]
    bench.set_steps(20)  # a smaller budget than trained: nothing to do
    assert bench.main() == (0, [])


def test_a_run_stopped_early_is_recorded_as_such_and_left_alone_until_its_patience_is_raised(bench, monkeypatch, capsys):
    bench.list.write_text(_LIST.format(steps=40).replace("algorithm.scale=10]", "algorithm.scale=10, train.patience=2]"))
    monkeypatch.setenv("STOP_EARLY", "12")
    rc, calls = bench.main()
    d = bench.runs / "run_a"
    assert rc == 0 and calls[0].startswith("train configs/x.yaml train.steps=40 algorithm.scale=10 train.patience=2 ")
    recs = bench.records()
    assert [r["steps"] for r in recs] == [12, 12]
    assert recs[0]["training"]["status"] == "stopped_early" and recs[0]["training"]["stopped_early"]["best_step"] == 8
    table = "\n".join(rp.table_lines(rp.load_run_list(bench.list), recs))
    assert "`run_a`: 5-way 5-shot 5-query x 32, 12 of 40 steps (30%), 0 min, stopped early (best validation at step 8, none better in the 2 after it)" in table
    status = "\n".join(rp.status_lines(rp.load_run_list(bench.list), recs, bench.runs, ["run_a"]))
    assert "| `run_a` | 12 / 40 | stopped early | 0.50 | 0.0 h |" in status
    capsys.readouterr()
    assert bench.main() == (0, [])  # ended: nothing to train, its evaluations up to date
    assert "run_a: trained: stopped early at step 12" in capsys.readouterr().out
    # a lowered patience leaves it alone too (it would have stopped no later)
    bench.list.write_text(bench.list.read_text().replace("train.patience=2", "train.patience=1"))
    assert bench.main() == (0, [])
    bench.list.write_text(bench.list.read_text().replace("train.patience=1", "train.patience=2"))
    # a patience raised in the list trains on from the run's checkpoint
    bench.list.write_text(bench.list.read_text().replace("train.patience=2", "train.patience=4"))
    monkeypatch.setenv("STOP_EARLY", "30")
    rc, calls = bench.main()
    assert rc == 0 and calls[0] == f"train --resume {d} train.steps=40 train.patience=4 run.progress=false run.num_threads=1"
    assert bench.records()[-1]["steps"] == 30 and bench.records()[-1]["training"]["stopped_early"]["patience"] == 4
    # a patience removed from the list trains on to the budget
    bench.list.write_text(bench.list.read_text().replace(", train.patience=4", ""))
    rc, calls = bench.main()
    assert rc == 0 and calls[0] == f"train --resume {d} train.steps=40 train.patience=null run.progress=false run.num_threads=1"
    assert bench.records()[-1]["steps"] == 40 and bench.records()[-1]["training"]["status"] == "finished"


_TRAINED_AS = """\
  run_b:
    family: metric
    method: Method A with scale 10 at test
    trained_as: run_a
    evaluate: [{ways: 5, shots: 5, options: {scale: 10}}]
"""


def test_a_run_trained_as_another_evaluates_its_folder_with_its_options(bench):
    bench.list.write_text(bench.list.read_text() + _TRAINED_AS)
    rc, calls = bench.main()
    d = bench.runs / "run_a"
    assert rc == 0 and [c.split()[0] for c in calls] == ["train", "eval", "eval", "eval"]
    assert calls[3] == f"eval {d} --split test --ways 5 --shots 5 --queries 15 --episodes 1000 --seed 0 --json --option scale=10"
    assert not (bench.runs / "run_b").exists()
    b = bench.records()[-1]
    a = bench.records()[0]
    assert (b["run"], b["setting"], b["result"]["options"]) == ("run_b", "5w5s", {"scale": 10})
    assert (b["run_id"], b["config_sha256"], b["steps"]) == (a["run_id"], a["config_sha256"], a["steps"])
    assert [c["command"].split()[1] for c in b["commands"]["train"]] == ["train"]  # run_a's training command
    assert "trains nothing: it evaluates the run folder of run_a" in (bench.runs / "run_b.log").read_text()
    assert bench.main() == (0, [])  # up to date, options included
    bench.list.write_text(bench.list.read_text().replace("{scale: 10}", "{scale: 5}"))
    rc, calls = bench.main()
    assert rc == 0 and calls == [calls[0]] and calls[0].endswith("--option scale=5")
    table = "\n".join(rp.table_lines(rp.load_run_list(bench.list), bench.records()))
    assert "| metric | Method A with scale 10 at test | `run_b`: the run of `run_a` | — | 90.0 ± 1.0 |" in table
    assert table.count("| `run_a` |") == 1 and "| `run_b` |" not in table  # the convergence table: once


def test_a_run_trained_as_another_takes_its_config_from_it(bench):
    bench.list.write_text(bench.list.read_text() + _TRAINED_AS.replace("    trained_as: run_a\n",
                                                                          "    trained_as: run_a\n    config: configs/y.yaml\n"))
    with pytest.raises(rp.ListError, match=r"run 'run_b': a run trained as another has the keys family, method, "
                                           r"trained_as, evaluate\[, paper\] \(its config and overrides are the other's\)"):
        rp.load_run_list(bench.list)


def test_a_run_trained_as_another_needs_that_folder(bench):
    bench.list.write_text(bench.list.read_text() + _TRAINED_AS)
    rc, calls = bench.main("run_b")
    assert rc == 1 and calls == []
    assert "run_a first" in (bench.runs / "run_b.log").read_text()


def test_dry_run_prints_the_commands_and_changes_nothing(bench, capsys):
    assert bench.main("--dry-run") == (0, [])
    out = capsys.readouterr().out
    assert f"would run: {bench.fake} train configs/x.yaml train.steps=10" in out and "would evaluate 20w5s" in out
    assert not bench.runs.exists() and bench.records() == []
    bench.main()
    bench.set_steps(30)
    assert bench.main("--dry-run") == (0, [])
    out = capsys.readouterr().out
    assert f"train --resume {bench.runs / 'run_a'} train.steps=30" in out and " eval " in out
    assert len(bench.records()) == 2


def test_only_eval_adopts_a_run_folder_made_by_metakit_train(bench, monkeypatch, capsys):
    d = bench.runs / "run_a"
    subprocess.run([str(bench.fake), "train", "configs/x.yaml", "train.steps=7", "algorithm.scale=10", "--out", str(d)],
                   check=True, cwd=bench.tmp)
    rc, calls = bench.main("--only-eval")
    assert rc == 0 and [c.split()[0] for c in calls] == ["eval", "eval"]
    r = bench.records()[0]
    assert r["steps"] == 7 and "adopted" in r["commands"]["train"][0]
    # --only-eval never trains: a missing folder is an error, and the exit status says so
    bench.list.write_text(bench.list.read_text().replace("run_a", "run_b"))
    rc, calls = bench.main("--only-eval")
    assert rc == 1 and calls == [] and "no run folder" in capsys.readouterr().out


@pytest.mark.parametrize("only_eval", [False, True])
def test_a_folder_trained_with_another_config_than_the_lists_is_neither_trained_nor_evaluated(bench, capsys, only_eval):
    d = bench.runs / "run_a"
    subprocess.run([str(bench.fake), "train", "configs/x.yaml", "train.steps=7", "algorithm.scale=3", "--out", str(d)],
                   check=True, cwd=bench.tmp)
    before = (d / "config.yaml").read_text()
    rc, calls = bench.main(*(["--only-eval"] if only_eval else []))
    assert rc == 1 and calls == [] and bench.records() == []
    assert not (bench.runs / "run_a.commands.jsonl").exists() and (d / "config.yaml").read_text() == before
    out = capsys.readouterr().out
    assert f"{d} was not trained with the list's config (algorithm.scale is 3.0 in {d / 'config.yaml'}, 10.0 in " \
           "configs/x.yaml with the list's overrides): move the folder away" in out
    # the list's config file counts as much as its overrides: a key the file sets and the folder contradicts
    subprocess.run([str(bench.fake), "train", "configs/x.yaml", "train.steps=7", "algorithm.scale=10", "model.name=conv4_strided",
                    "--out", str(bench.runs / "run_b")], check=True, cwd=bench.tmp)
    bench.list.write_text(bench.list.read_text().replace("run_a", "run_b"))
    assert bench.main()[0] == 1 and "model.name is 'conv4_strided' in" in capsys.readouterr().out
    # a key a resume may change (the budget) and the machine's data path are not contradictions
    (bench.runs / "run_c").mkdir()
    cfg = yaml.safe_load((bench.runs / "run_b" / "config.yaml").read_text())
    cfg["model"] = {"name": "conv4"}
    cfg["train"]["steps"], cfg["task"]["root"] = 3, "/elsewhere/omniglot"
    (bench.runs / "run_c" / "config.yaml").write_text(yaml.safe_dump(cfg))
    run = rp.load_run_list(bench.list).runs["run_b"]
    assert rp._config_mismatches(run, bench.runs / "run_c") == []
    # a key the folder sets and the list leaves at its default, in the algorithm or another section, is one
    for key, value in (("algorithm", {"normalize_query": False}), ("run", {"seed": 5})):
        changed = {**cfg, key: {**cfg.get(key, {}), **value}}
        (bench.runs / "run_c" / "config.yaml").write_text(yaml.safe_dump(changed))
        name, v = next(iter(value.items()))
        assert rp._config_mismatches(run, bench.runs / "run_c") == [
            f"{key}.{name} is {v!r} in {bench.runs / 'run_c' / 'config.yaml'}, {not v if key == 'algorithm' else 0!r} "
            "in configs/x.yaml with the list's overrides"]
    # a folder written before a key existed holds its default: no contradiction where the list sets the default
    (bench.tmp / "configs" / "x.yaml").write_text(_CONFIG.replace("{name: matching}", "{name: matching, normalize_query: true}"))
    (bench.runs / "run_c" / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert "normalize_query" not in cfg["algorithm"] and rp._config_mismatches(run, bench.runs / "run_c") == []
    (bench.runs / "run_c" / "config.yaml").write_text("task: [unclosed")
    assert rp._config_mismatches(run, bench.runs / "run_c")[0].startswith("the configs cannot be compared: ")
    (bench.tmp / "configs" / "x.yaml").unlink()
    assert rp._config_mismatches(run, bench.runs / "run_c") == ["its config file configs/x.yaml does not exist"]


def test_a_refused_folder_is_evaluated_neither_through_a_run_trained_as_it_nor_in_a_dry_run(bench, capsys):
    d = bench.runs / "run_a"
    subprocess.run([str(bench.fake), "train", "configs/x.yaml", "train.steps=7", "algorithm.scale=3", "--out", str(d)],
                   check=True, cwd=bench.tmp)
    bench.list.write_text(bench.list.read_text() + _TRAINED_AS)
    rc, calls = bench.main("run_b")
    assert rc == 1 and calls == [] and bench.records() == []
    assert f"run_b: FAILED: {d} was not trained with the list's config (algorithm.scale is 3.0" in capsys.readouterr().out
    assert bench.main("--dry-run") == (1, [])
    out = capsys.readouterr().out
    assert "was not trained with the list's config" in out and "would" not in out


def test_a_failed_evaluation_is_not_recorded_and_fails_the_exit_status(bench, monkeypatch):
    monkeypatch.setenv("FAIL", "eval")
    rc, calls = bench.main()
    assert rc == 1 and len(calls) == 3 and bench.records() == []
    assert "FAILED: 5w5s: evaluation exited with status 1" in (bench.runs / "run_a.log").read_text()
    monkeypatch.setenv("FAIL", "train")
    bench.set_steps(40)
    rc, calls = bench.main()
    assert rc == 1 and len(calls) == 1 and "FAILED: training exited with status 1" in (bench.runs / "run_a.log").read_text()


def test_bad_arguments_are_clear_errors(bench, capsys):
    with pytest.raises(SystemExit):
        bench.main("no_such_run")
    assert "unknown run name(s) no_such_run; the list" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--metakit '/nonexistent/metakit' is not an executable file"):
        rp.main(["--runs", str(bench.runs), "--metakit", "/nonexistent/metakit", "--list", str(bench.list)])
    bench.record.write_text(json.dumps({"runs": {}}))
    assert bench.main() == (2, [])
    assert "not a results record of format 2" in capsys.readouterr().err


@pytest.mark.parametrize(
    "edit, message",
    [
        (("train.steps=10, ", ""), "state the budget exactly once as train.steps=N"),
        ((', source: "Someone 2020, Table 3"', ""), "give the source of the papers' numbers"),
        (("{ways: 5, shots: 5}", "{ways: 5, shots: 5, batch: 3}"), "each evaluation is a mapping of split, ways"),
        (("{ways: 5, shots: 5}", "{ways: 0, shots: 5}"), "ways must be an int >= 1, got 0"),
        (("5w5s: 99.0", "5w1s: 99.0"), "numbers for settings not evaluated: ['5w1s']"),
        (("algorithm.scale=10", "train.patience=ten"), "train.patience=P is given at most once, P an int >= 1 or null"),
        (("{ways: 5, shots: 5}", "{ways: 5, shots: 5, options: [scale]}"), "options maps option names to numbers"),
        (("    config: configs/x.yaml\n", "    config: configs/x.yaml\n    trained_as: run_z\n"),
         "trained_as: name a run listed above it that trains its own folder; got 'run_z'"),
    ],
)
def test_run_list_errors_name_the_run_and_the_field(bench, edit, message):
    bench.list.write_text(bench.list.read_text().replace(*edit))
    with pytest.raises(rp.ListError) as e:
        rp.load_run_list(bench.list)
    assert "run 'run_a'" in str(e.value) and message in str(e.value)


def test_a_retired_run_is_named_with_its_reason_and_is_never_also_a_run(bench, capsys):
    bench.list.write_text(bench.list.read_text() + "retired:\n  run_old: the same training as run_a\n")
    run_list = rp.load_run_list(bench.list)
    assert run_list.retired == {"run_old": "the same training as run_a"} and "run_old" not in run_list.runs
    with pytest.raises(SystemExit):
        bench.main("run_old")
    assert "run_old is retired (the same training as run_a)" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a retired and an unknown name: both are named
        bench.main("run_old", "nope")
    err = capsys.readouterr().err
    assert "run_old is retired (the same training as run_a); unknown run name(s) nope; the list" in err
    # a retired run's records stay in the record and out of the table
    table = "\n".join(rp.table_lines(run_list, [_rec("run_old", "5w5s", "recorded", 0.5)]))
    assert "run_old" not in table
    for retired, message in (("  run_a: again\n", "a retired name is also a run: ['run_a']"),
                             ("  run_old: ''\n", "map each former run's name to why it is no longer run")):
        bench.list.write_text(bench.list.read_text().split("retired:")[0] + "retired:\n" + retired)
        with pytest.raises(rp.ListError, match=re.escape(message)):
            rp.load_run_list(bench.list)


def test_appends_from_parallel_processes_are_all_kept(tmp_path):
    record = tmp_path / "results.json"
    record.write_text(json.dumps({"format": 2, "records": []}))
    code = textwrap.dedent(f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("r", {str(HERE / 'reproduce.py')!r})
        m = importlib.util.module_from_spec(spec); sys.modules["r"] = m; spec.loader.exec_module(m)
        from pathlib import Path
        for i in range(40):
            m.append_record(Path({str(record)!r}), {{"run": sys.argv[1], "setting": str(i)}})
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, name]) for name in ("a", "b")]
    assert [p.wait(timeout=600) for p in procs] == [0, 0]
    assert len(json.loads(record.read_text())["records"]) == 80


def _rec(run: str, setting: str, status: str, acc: float, *, episodes: int = 1000, steps: int = 100) -> dict:
    return {"run": run, "setting": setting, "status": status, "steps": steps, "train_seconds": 600.0,
            "training": {"episodes": "5-way 5-shot 5-query x 32", "status": "finished"},
            "result": {"accuracy": acc, "ci95": 0.004, "episodes": episodes}}


def test_the_table_shows_the_newest_record_of_each_setting_and_marks_its_status(bench):
    run_list = rp.load_run_list(bench.list)
    lines = rp.table_lines(run_list, [
        _rec("run_a", "5w5s", "unrecorded", 0.5),
        _rec("run_a", "20w5s", "partial", 0.80, episodes=600),
    ])
    row = next(line for line in lines if "| Method A |" in line)
    assert row == ("| metric | Method A | `run_a`: 5-way 5-shot 5-query x 32, 100 steps, 10 min | — | "
                   "50.0 ± 0.4 (unrecorded) | — | 80.0 ± 0.4 (600 episodes)* | — / 99.0 / — / — |")
    assert "Papers' numbers: `run_a`: Someone 2020, Table 3." in lines
    assert any(line.startswith("(unrecorded): ") for line in lines) and any(line.startswith("*: ") for line in lines)
    # a recorded run replaces the transcribed figure; a cell of an older, shorter training says so
    lines = rp.table_lines(run_list, [
        _rec("run_a", "5w5s", "unrecorded", 0.5),
        _rec("run_a", "20w5s", "recorded", 0.80, steps=50),
        _rec("run_a", "5w5s", "recorded", 0.9812),
    ])
    row = next(line for line in lines if "| Method A |" in line)
    assert "| — | 98.1 ± 0.4 | — | 80.0 ± 0.4 (after 50 steps) |" in row
    assert not any(line.startswith(("(unrecorded)", "*:")) for line in lines)
    # the training column measures each run against the list's budget (train.steps=10 here)
    for steps, text in ((10, "10 of 10 steps, "), (4, "4 of 10 steps (40%), "), (12, "12 steps, ")):
        row = next(line for line in rp.table_lines(run_list, [_rec("run_a", "5w5s", "recorded", 0.9, steps=steps)])
                   if "| Method A |" in line)
        assert f"`run_a`: 5-way 5-shot 5-query x 32, {text}10 min" in row, row
    none = rp.table_lines(run_list, [])
    row = next(line for line in none if "| Method A |" in line)
    # a setting the row's run is listed for has no result yet: "not run"; one it is not meant for: "—"
    assert "`run_a`: not run yet (budget 10 steps) | — | not run | — | not run | — / 99.0 / — / — |" in row, row


@pytest.mark.parametrize("status, acc, reached", [
    ("recorded", 0.986, True),     # 98.6 + 0.4 = 99.0: the interval reaches the paper's 99.0
    ("recorded", 0.9849, False),   # 98.49 + 0.4 = 98.89, 98.9 at the paper's one decimal: short
    ("partial", 0.995, False),     # above the paper, but not a machine-written record with digests
    ("unrecorded", 0.995, False),  # a transcribed figure never counts
])
def test_a_cell_is_marked_reproduced_only_when_a_recorded_interval_reaches_the_paper(bench, status, acc, reached):
    lines = rp.table_lines(rp.load_run_list(bench.list), [_rec("run_a", "5w5s", status, acc)])
    row = next(line for line in lines if "| Method A |" in line)
    legend = next(line for line in lines if line.startswith("**Bold**: reproduced"))
    cell = f"{100 * acc:.1f} ± 0.4"
    assert (f"| **{cell}**" in row) is reached and (f"| {cell}" in row) is not reached
    if reached:
        assert f"Reproduced cells: Method A 5w5s ({cell} against 99.0) (1 of the 1 cells" in legend
        assert legend.endswith("setting with a paper's number: Method A.")
    else:
        assert "Reproduced cells: none (0 of the 1 cells" in legend and legend.endswith(": none.")


@pytest.mark.parametrize("records, says", [
    ([], "**no result yet (not run, or the setting not evaluated)**: `run_a` 5w5s."),
    ([_rec("run_a", "5w5s", "recorded", 0.9, steps=10)], "**short at the full budget or stopped early "
     "(docs/reproduction.md compares each with its paper's setup)**: `run_a` 5w5s (90.0 ± 0.4 against 99.0)."),
    ([_rec("run_a", "5w5s", "recorded", 0.9, steps=4)],
     "**short of its paper with part of the budget trained**: `run_a` 5w5s (90.0 ± 0.4 against 99.0, 40% of the budget)."),
    ([{**_rec("run_a", "5w5s", "recorded", 0.9, steps=4), "training": {"episodes": "e", "status": "stopped_early"}}],
     "**short at the full budget or stopped early"),
    # the training behind the cell's own record counts: evaluated at step 4, it is not a full-budget result
    ([_rec("run_a", "5w5s", "recorded", 0.9, steps=4), _rec("run_a", "20w5s", "recorded", 0.9, steps=10)],
     "**short of its paper with part of the budget trained**: `run_a` 5w5s (90.0 ± 0.4 against 99.0, 40% of the budget)."),
    ([{**_rec("run_a", "5w5s", "recorded", 0.9), "steps": "unknown"}], "`run_a` 5w5s (90.0 ± 0.4 against 99.0, steps unknown)."),
    ([_rec("run_a", "5w5s", "partial", 0.9)],
     "**no machine-written record (transcribed or partial)**: `run_a` 5w5s (90.0 ± 0.4 against 99.0)."),
    ([_rec("run_a", "5w5s", "recorded", 0.99)], None),
])
def test_the_table_says_why_each_cell_with_a_papers_number_is_not_reproduced(bench, records, says):
    lines = rp.table_lines(rp.load_run_list(bench.list), records)
    line = [line for line in lines if line.startswith("Not reproduced, by what the record says: ")]
    if says is None:
        assert line == []
    else:
        assert len(line) == 1 and says in line[0], line


def test_a_papers_decimals_set_the_rounding_of_the_comparison():
    r = {"status": "recorded", "result": {"accuracy": 0.9900, "ci95": 0.0006}}  # upper end 99.06
    assert rp.reaches_paper(r, 99.1) and not rp.reaches_paper(r, 99.07) and rp.reaches_paper(r, 99.06)
    assert not rp.reaches_paper(None, 99.0) and not rp.reaches_paper(r, None)


def test_the_shipped_run_list_names_todays_runs_and_loads_every_config(monkeypatch):
    run_list = rp.load_run_list()
    records = rp.read_record()
    recorded = {r["run"] for r in records}
    assert recorded <= set(run_list.runs) | set(run_list.retired)  # no record of a run the list does not name
    table = "\n".join(rp.table_lines(run_list, records))
    for name in sorted(set(run_list.runs) - recorded):  # a run not trained yet shows as such
        assert f"`{name}`: not run yet" in table, name
    monkeypatch.chdir(REPO)  # config paths are relative to the checkout
    for run in run_list.runs.values():
        config = load_config(run.config, list(run.overrides))
        assert config.train.steps == run.steps
        assert all(e.setting in run_list.columns and e.episodes >= 600 for e in run.evaluations), run.name


def test_the_committed_record_is_well_formed():
    records = rp.read_record()
    for r in records:
        assert r["status"] in rp.STATUSES, r
        res = r["result"]
        assert 0 < res["accuracy"] <= 1 and 0 <= res["ci95"] < 0.1 and res["episodes"] >= 600 and res["split"] == "test"
        assert r["setting"] == f"{res['ways']}w{res['shots']}s"
        if r["status"] == "recorded":
            assert re.fullmatch(r"[0-9a-f]{64}", r["config_sha256"]) and re.fullmatch(r"[0-9a-f]{64}", r["checkpoint"]["sha256"])
        else:  # what was not recorded is said to be unknown, never filled in
            assert r["config_sha256"] == r["checkpoint"]["sha256"] == r["commands"] == r["hardware"] == "unknown"
            assert r["source"]


def test_table_readme_writes_between_the_markers_only(bench, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- omniglot-table -->\nold table\n<!-- /omniglot-table -->\n\nafter\n")
    assert rp.main(["--table", "--list", str(bench.list), "--record", str(bench.record), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# x\n\n<!-- omniglot-table -->\n| family | method |") and text.endswith("<!-- /omniglot-table -->\n\nafter\n")
    assert "old table" not in text and "| Method A |" in text
    readme.write_text("no markers\n")
    assert rp.main(["--table", "--list", str(bench.list), "--record", str(bench.record), "--readme", str(readme)]) == 2


def test_a_run_without_validation_is_recorded_from_its_last_checkpoint_and_left_alone(bench, monkeypatch):
    monkeypatch.setenv("NO_VALIDATION", "1")  # or none yet: evaluated with --checkpoint last
    rc, calls = bench.main()
    assert rc == 0 and all(c.endswith("--json --checkpoint last") for c in calls if c.startswith("eval "))
    d = bench.runs / "run_a"
    r = bench.records()[0]
    assert r["checkpoint"]["file"] == "step-00000010.safetensors"
    assert r["checkpoint"]["sha256"] == _sha(d / "checkpoints" / "step-00000010.safetensors")
    assert bench.main() == (0, [])


def test_ctrl_c_lets_training_stop_cleanly_and_stops_after_it(bench, tmp_path, wait_until):
    bench.config_by_absolute_path()  # the script works in the repository, not in tmp
    started = tmp_path / "started"
    script = subprocess.Popen(
        [sys.executable, str(HERE / "reproduce.py"), "--runs", str(bench.runs), "--metakit", str(bench.fake),
         "--list", str(bench.list), "--record", str(bench.record)],
        env={**os.environ, "WAIT_FOR_SIGINT": str(started)}, stdout=subprocess.PIPE, text=True, start_new_session=True)
    wait_until(started.exists, script, "start of the training", 0.1)
    os.killpg(script.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground process group
    out, _ = script.communicate(timeout=60)
    assert script.returncode == 130 and "run the same command again to continue" in out
    ledger = [json.loads(line) for line in (bench.runs / "run_a.commands.jsonl").read_text().splitlines()]
    assert ledger[0]["returncode"] == 130  # the training stopped by itself (checkpoint written), was not killed
    assert bench.calls.read_text().splitlines()[-1].startswith("train ") and bench.records() == []  # nothing evaluated


def test_minutes_stops_each_training_then_records_it_as_interrupted_and_goes_on(bench, tmp_path):
    bench.config_by_absolute_path()  # the script works in the repository, not in tmp
    started = tmp_path / "started"
    out = subprocess.run(
        [sys.executable, str(HERE / "reproduce.py"), "--runs", str(bench.runs), "--metakit", str(bench.fake),
         "--list", str(bench.list), "--record", str(bench.record), "--minutes", "0.02"],
        env={**os.environ, "WAIT_FOR_SIGINT": str(started)}, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "trained: interrupted at step 3 (the --minutes 0.02 limit)" in out.stdout
    ledger = [json.loads(line) for line in (bench.runs / "run_a.commands.jsonl").read_text().splitlines()]
    assert ledger[0]["returncode"] == 130 and ledger[0]["stopped"] == "after the time limit, --minutes 0.02"
    records = bench.records()
    assert [(r["setting"], r["training"]["status"], r["steps"]) for r in records] == [
        ("5w5s", "interrupted", 3), ("20w5s", "interrupted", 3)]


def test_minutes_must_be_positive_and_needs_training(bench, capsys):
    with pytest.raises(SystemExit):
        bench.main("--minutes", "0")
    assert "--minutes 0: give a positive number of minutes per training" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main("--minutes", "5", "--only-eval")
    assert "--only-eval and --minutes do different things; give one of them" in capsys.readouterr().err
    assert bench.calls.read_text() == ""  # nothing ran


# -- learning curves in the record ------------------------------------------------------------------
def _metrics(d: Path, lines: list) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "metrics.jsonl").write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return d


def test_read_curves_keeps_the_last_line_of_a_step_skips_cut_lines_and_thins_the_training_log(tmp_path):
    val = lambda s, a, n=100: {"step": s, "split": "val", "elapsed": 2.0 * s, "accuracy": a, "ci95": 0.02, "episodes": n}
    d = _metrics(tmp_path / "r", [
        *({"step": s, "split": "train", "elapsed": 1.0 * s, "loss": 10.0 / s, "accuracy": 0.5} for s in range(1, 301)),
        val(100, 0.6), '{"step": 200, "split": "va',  # cut short by a kill, the resume appended after it
        val(200, 0.7), val(200, 0.71), val(300, 0.8),
        {"step": 300, "split": "test", "accuracy": 0.1},  # neither validation nor training
    ])
    c = rp.read_curves(d)
    assert c["val"] == [[100, 200.0, 0.6, 0.02], [200, 400.0, 0.71, 0.02], [300, 600.0, 0.8, 0.02]]
    assert c["val_episodes"] == 100
    assert len(c["train"]) == rp.TRAIN_POINTS and c["train"][0] == [1, 1.0, 10.0] and c["train"][-1] == [300, 300.0, 10.0 / 300]
    assert [p[0] for p in c["train"]] == sorted({p[0] for p in c["train"]})  # evenly spread, none twice
    cut = rp.read_curves(d, upto=200)
    assert [p[0] for p in cut["val"]] == [100, 200] and max(p[0] for p in cut["train"]) == 200
    assert rp.read_curves(_metrics(tmp_path / "none", [{"step": 1, "split": "train", "elapsed": 1.0, "loss": 1.0}])) == {
        "val": [], "val_episodes": None, "train": [[1, 1.0, 1.0]]}
    with pytest.raises(rp.ListError, match=r"validations of different sizes \(\[100, 200\] episodes\)"):
        rp.read_curves(_metrics(tmp_path / "mixed", [val(1, 0.5), val(2, 0.5, n=200)]))
    with pytest.raises(rp.ListError, match=r"metrics.jsonl:2: not a metrics record \(KeyError"):
        rp.read_curves(_metrics(tmp_path / "bad", [val(1, 0.5), {"split": "val"}]))
    with pytest.raises(rp.ListError, match=r"metrics.jsonl:1: not a metrics record \(KeyError: 'elapsed'\)"):
        rp.read_curves(_metrics(tmp_path / "no_time", [{"step": 1, "split": "train", "loss": 1.0}]))
    # a non-finite value, logged as null, leaves its point out
    nulls = rp.read_curves(_metrics(tmp_path / "nulls", [
        {"step": 1, "split": "train", "elapsed": 1.0, "loss": None}, {"step": 2, "split": "train", "elapsed": 2.0, "loss": 0.5},
        {**val(2, 0.5), "accuracy": None}, {**val(4, 0.6), "ci95": None}, val(6, 0.7),
        val(8, 0.8), {**val(8, 0.8), "accuracy": None}]))  # the last line of a step counts, null or not
    assert nulls["train"] == [[2, 2.0, 0.5]] and nulls["val"] == [[6, 12.0, 0.7, 0.02]]


def test_add_curves_fills_the_records_of_the_same_run_only(bench, capsys):
    assert bench.main()[0] == 0
    bench.set_steps(14)
    assert bench.main()[0] == 0  # resumed to 14 steps: two more records
    full = bench.records()
    other = {**full[0], "run_id": "run_a-20250101T000000Z"}  # another run of the same name (a folder since replaced)
    del other["curves"]
    partial = {**full[0], "status": "partial"}
    del partial["curves"]
    stripped = [{k: v for k, v in r.items() if k != "curves"} for r in full]
    bench.record.write_text(json.dumps({"format": 2, "records": [other, partial, *stripped]}))
    before = bench.record.read_text()
    assert bench.main("--add-curves", "--dry-run") == (0, [])  # no metakit call; nothing written
    assert bench.record.read_text() == before
    assert "would add curves to the records of 5w5s (14 steps, 7 validations), 20w5s (14 steps, 7 validations)" \
        in capsys.readouterr().out
    assert bench.main("--add-curves") == (0, [])
    recs = bench.records()
    assert recs[4:] == full[2:]  # the curve up to the record's steps, as if written with it
    # the resume rewrote config.yaml (train.steps): the 10-step records' config digest is not the folder's any
    # more, so they are left alone, as are another run id's and a record that is not machine-written
    assert recs[:4] == [other, partial, *stripped[:2]]
    assert bench.main("--add-curves") == (0, [])
    assert "no record of run run_a-20261201T000000Z (config sha256" in capsys.readouterr().out
    (bench.runs / "run_a" / "config.yaml").write_text("{}")  # the folder no longer holds the recorded config
    bench.record.write_text(json.dumps({"format": 2, "records": stripped}))
    assert bench.main("--add-curves") == (0, []) and bench.records() == stripped


@pytest.mark.parametrize("argv, message", [
    (["--add-curves", "--minutes", "5"], "--add-curves and --minutes do different things; give one of them"),
    (["--add-curves", "--only-eval"], "--add-curves and --only-eval do different things"),
    (["--status", "--add-curves"], "--status and --add-curves do different things"),
    (["--table", "--status"], "--table and --status do different things"),
    (["--status", "--dry-run"], "--status changes nothing anyway; drop --dry-run"),
    (["--readme", "README.md"], "--readme goes with --table"),
    (["--status", "nope"], "unknown run name(s) nope; the list"),
    (["--table", "run_a"], "--table prints every run of the list; drop the run names (run_a)"),
])
def test_modes_that_clash_are_errors_naming_both(bench, capsys, argv, message):
    with pytest.raises(SystemExit):
        bench.main(*argv)
    assert message in capsys.readouterr().err
    assert bench.calls.read_text() == ""


def _curves(val: list, train: list, episodes: int | None = 100) -> dict:
    return {"val": val, "val_episodes": episodes if val else None, "train": train}


@pytest.mark.parametrize("late, verdict", [
    (0.915, "rising"),        # 1.5 points up: beyond the later best's interval (1.0)
    (0.905, "level"),         # within it
    (0.885, "level"),         # 1.5 points down: within the earlier best's interval (2.0)
    (0.875, "past its best"),  # beyond it
])
def test_convergence_compares_the_best_validation_before_and_after_three_quarters(late, verdict):
    val = [[100, 1.0, 0.80, 0.01], [700, 7.0, 0.90, 0.02], [800, 8.0, late, 0.01], [1000, 10.0, 0.5, 0.01]]
    train = [[s, 0.0, float(s)] for s in (100, 500, 600, 700, 800, 1000)]
    c = rp.convergence(_curves(val, train), 1000)
    assert c["before"] == [700, 7.0, 0.90, 0.02] and c["after"] == [800, 8.0, late, 0.01]
    assert c["verdict"] == verdict
    assert c["loss"] == (650.0, 900.0)  # (600 + 700) / 2 in the third quarter, (800 + 1000) / 2 in the last
    assert rp.convergence(_curves(val[:2], []), 1000) == {"before": [700, 7.0, 0.90, 0.02], "after": None,
                                                         "verdict": None, "loss": (None, None)}


def test_the_table_ends_with_the_convergence_of_runs_whose_records_hold_curves(bench):
    run_list = rp.load_run_list(bench.list)
    plain = rp.table_lines(run_list, [_rec("run_a", "5w5s", "recorded", 0.9)])
    assert not any("Convergence" in line for line in plain)
    rec = {**_rec("run_a", "5w5s", "recorded", 0.9, steps=8),
           "curves": _curves([[2, 1.0, 0.6, 0.01], [4, 2.0, 0.7, 0.01], [6, 3.0, 0.8, 0.01], [8, 4.0, 0.9, 0.011]],
                             [[5, 0.0, 0.5], [6, 0.0, 0.3], [7, 0.0, 0.2], [8, 0.0, 0.1]], episodes=200)}
    lines = rp.table_lines(run_list, [rec])
    assert lines[-1] == ("| `run_a` | 8 of 10 | 200 episodes, every 2 steps | 80.0 ± 1.0 (step 6) | 90.0 ± 1.1 (step 8) | "
                         "rising | 0.4 → 0.15 |")
    assert lines[lines.index(lines[-1]) - 2].startswith("| run | steps trained | validation |")
    once = {**rec, "curves": _curves([[6, 3.0, 0.8, 0.01]], [[8, 0.0, 0.1]], episodes=200)}
    assert rp.table_lines(run_list, [once])[-1].startswith("| `run_a` | 8 of 10 | 200 episodes, once (step 6) | ")
    no_val = {**rec, "curves": _curves([], [[8, 0.0, 0.1]])}
    assert rp.table_lines(run_list, [no_val])[-1] == "| `run_a` | 8 of 10 | none | — | — | — | — → 0.1 |"


def test_status_reports_progress_pace_and_the_rest_of_each_budget(bench, capsys, wait_until):
    bench.set_steps(10)
    assert bench.main("run_a")[0] == 0  # finished at 10 steps, 0.5 s per step (the stand-in's log)
    run_list = rp.load_run_list(bench.list)
    assert rp.status_lines(run_list, bench.records(), bench.runs, ["run_a"])[2] == \
        "| `run_a` | 10 / 10 | finished | 0.50 | 0.0 h | 10 steps |"
    bench.set_steps(7210)  # the budget raised: 7,200 steps to go, an hour at 0.5 s each
    capsys.readouterr()
    assert rp.main(["--status", "--runs", str(bench.runs), "--list", str(bench.list), "--record", str(bench.record)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2] == "| `run_a` | 10 / 7,210 | stopped | 0.50 | 1.0 h | 10 steps |"
    assert out[-1] == ("Training time the started runs still need, each at its pace so far: 1.0 h (one training job per "
                       "core); 0 run(s) not started, of unknown pace.")
    run_list = rp.load_run_list(bench.list)
    lines = rp.status_lines(run_list, [], bench.tmp / "elsewhere", ["run_a"])
    assert lines[2] == "| `run_a` | 0 / 7,210 | no run folder | — | — | none |" and "1 run(s) not started" in lines[-1]
    # a live metakit process on this host holding the folder: training; on another host, or ended: not
    d = bench.runs / "run_a"
    spaced = f"{d}/with space"  # an argument with a space in it, and a command metakit's lock cut at 300 characters
    command = f"metakit train --resume {d} run.note={spaced} {'x' * 400}"[:300]
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "train", "--resume", str(d),
                             f"run.note={spaced}", "x" * 400])
    try:
        wait_until(lambda: b"--resume" in Path(f"/proc/{proc.pid}/cmdline").read_bytes(), proc, "arguments in /proc")
        (d / ".lock").write_text(json.dumps({"pid": proc.pid, "host": rp.platform.node(), "command": command}))
        assert rp.status_lines(run_list, [], bench.runs, ["run_a"])[2].startswith("| `run_a` | 10 / 7,210 | training |")
        (d / ".lock").write_text(json.dumps({"pid": proc.pid, "host": "another-host", "command": command}))
        assert not rp._training_now(d)
    finally:
        proc.kill()
        proc.wait()
    (d / ".lock").write_text(json.dumps({"pid": proc.pid, "host": rp.platform.node(), "command": command}))
    assert not rp._training_now(d)  # its process ended
    (d / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": rp.platform.node(), "command": command}))
    assert not rp._training_now(d)  # a live process running something else (a reused pid)


def test_the_record_writes_lists_of_numbers_on_one_line_and_leaves_strings_alone(tmp_path):
    path = tmp_path / "r.json"
    strings = ["x [ 1,\n 2 ] y", "[1,  2]", "a [ 3 ] b", "[ 4, 5 ]"]  # bracketed numbers inside strings stay as written
    records = [{"points": [[1, 2.5, -3e-05], [2, 0.1, 7]], "strings": strings, "mixed": ["a", 1], "empty": []}]
    rp._write_record(path, records)
    text = path.read_text()
    assert json.loads(text)["records"] == records
    assert '[1, 2.5, -3e-05],\n' in text and '"a",\n' in text
    assert all(json.dumps(x) in text for x in strings)


def test_a_cell_evaluated_off_the_lists_default_says_how(bench):
    bench.list.write_text(bench.list.read_text().replace("{ways: 5, shots: 5}", "{ways: 5, shots: 5, queries: 1}"))
    assert bench.main()[0] == 0
    table = "\n".join(rp.table_lines(rp.load_run_list(bench.list), bench.records()))
    assert "| 90.0 ± 1.0 (1 query per class) | — | 90.0 ± 1.0 (600 episodes) |" in table


def test_the_training_on_record_sums_each_training_runs_longest_training(bench):
    bench.set_steps(1000)
    bench.list.write_text(bench.list.read_text() + _TRAINED_AS)
    run_list = rp.load_run_list(bench.list)
    assert "run_b" in run_list.runs
    assert rp.trained_lines(run_list, {}) == []
    # run_a's longest training (400 steps in 5,400 s) counts once; run_b trains nothing of its own
    longer = {**_rec("run_a", "20w5s", "recorded", 0.9, steps=400), "train_seconds": 5400.0}
    of_b = {**_rec("run_b", "5w5s", "recorded", 0.9, steps=400), "train_seconds": 5400.0}
    newest = rp.latest([_rec("run_a", "5w5s", "recorded", 0.9), longer, of_b])
    assert rp.trained_lines(run_list, newest) == [
        "", "**Training on record**: 1.5 h of one CPU thread in all, over the 1 run with a record (each run's longest "
            "training on record), 0 of 1 at their whole budget or stopped early; the other trained 90 minutes (400 steps)."]
    whole = {**longer, "steps": 1000}
    assert rp.trained_lines(run_list, rp.latest([whole]))[1].endswith("1 of 1 at their whole budget or stopped early.")
    early = {**longer, "training": {**longer["training"], "status": "stopped_early"}}
    assert "1 of 1 at their whole budget" in rp.trained_lines(run_list, rp.latest([early]))[1]
    # a second run short of its budget: the range of minutes and steps of the two
    bench.list.write_text(bench.list.read_text() + "  run_c:\n    family: metric\n    method: Method C\n"
                          "    config: configs/x.yaml\n    overrides: [train.steps=1000]\n    evaluate: [{ways: 5, shots: 5}]\n")
    two = rp.trained_lines(rp.load_run_list(bench.list), rp.latest([longer, _rec("run_c", "5w5s", "recorded", 0.9, steps=50)]))
    assert two[1].endswith("0 of 2 at their whole budget or stopped early; the other 2 trained 10 to 90 minutes each "
                           "(50 to 400 steps).") and "1.7 h of one CPU thread in all, over the 2 runs" in two[1]
    # a transcribed figure has no training time: named, not counted
    line = rp.trained_lines(run_list, rp.latest([_rec("run_a", "5w5s", "unrecorded", 0.9)]))[1]
    assert line.startswith("**Training on record**: 0.0 h") and line.endswith("; without recorded minutes: `run_a`.")
    assert "**Training on record**" in "\n".join(rp.table_lines(run_list, [_rec("run_a", "5w5s", "recorded", 0.9)]))


def test_the_rest_of_each_budget_is_priced_at_its_records_pace(bench):
    bench.set_steps(1000)
    run_list = rp.load_run_list(bench.list)
    # 100 of 1,000 steps in 600 s: the other 900 steps need 5,400 s
    rest = rp.budget_lines(run_list, rp.latest([_rec("run_a", "5w5s", "recorded", 0.9)]))
    assert rest == ["", "**The rest of the budgets**, each at its run's recorded pace (training minutes over steps "
                        "trained, validations included): `run_a` 1.5 h; 1.5 h in all, 0.1 days of one CPU thread."]
    # the pace comes from the run's longest training on record, whichever setting it was evaluated on
    longer = {**_rec("run_a", "20w5s", "recorded", 0.9, steps=400), "train_seconds": 1200.0}
    assert "`run_a` 0.5 h;" in rp.budget_lines(run_list, rp.latest([_rec("run_a", "5w5s", "recorded", 0.9), longer]))[1]
    # a transcribed figure gives no pace
    assert rp.budget_lines(run_list, rp.latest([_rec("run_a", "5w5s", "unrecorded", 0.9)]))[1] == (
        "**The rest of the budgets**, of unknown pace (a transcribed record, or no steps or minutes recorded): `run_a`.")
    # nothing is left of a finished budget, nor of a run stopped early
    assert rp.budget_lines(run_list, rp.latest([_rec("run_a", "5w5s", "recorded", 0.9, steps=1000)])) == []
    early = _rec("run_a", "5w5s", "recorded", 0.9)
    early["training"] = {**early["training"], "status": "stopped_early"}
    assert rp.budget_lines(run_list, rp.latest([early])) == []
    assert "**The rest of the budgets**" in "\n".join(rp.table_lines(run_list, [_rec("run_a", "5w5s", "recorded", 0.9)]))
