"""benchmarks/sequence/runs.py: the record of a sequence-protocol run (digests, the result of ``metakit eval
--json``, the validation curve, finished or part-way), its refusals, the table beside Santoro et al.'s rows, the
README block and the figure drawn from the records alone."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from metakit.bench import load_script
from metakit.cli.main import main as metakit_main
from metakit.runtime.config import Config
from metakit.runtime.run import lock_run_dir
from metakit.runtime.trainer import train

REPO = Path(__file__).resolve().parents[2]
HERE = REPO / "benchmarks" / "sequence"
METAKIT = str(Path(sys.executable).with_name("metakit"))


def _script():
    return load_script(HERE / "runs.py", "sequence_runs")


rec = _script()


def _image_folder(root: Path) -> Path:
    """ROOT/<split>/classN/i.png: 4 images of 12x12 per class, a dark square at a class-specific place."""
    from PIL import Image, ImageDraw

    for split, n in {"train": 4, "val": 3, "test": 3}.items():
        for c in range(n):
            for i in range(4):
                img = Image.new("L", (12, 12), 255)
                ImageDraw.Draw(img).rectangle([(c * 3) % 7 + i % 2, (c * 4) % 7, (c * 3) % 7 + 4, (c * 4) % 7 + 4], fill=0)
                p = root / split / f"class{c}" / f"{i}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                img.save(p)
    return root


def _config(root: Path) -> dict:
    """A tiny MANN on 3-class, 3-instance sequences: 4 steps, validation at steps 2 and 4 (a second or two)."""
    return {
        "task": {"family": "sequence", "dataset": "folder", "root": str(root), "image_size": 12,
                 "classes_per_episode": 3, "instances_per_class": 3},
        "train": {"meta_batch": 4, "steps": 4},
        "eval": {"val_episodes": 6, "val_every": 2, "test_episodes": 8},
        "model": {"name": "flatten"},
        "algorithm": {"name": "mann", "hidden_size": 12, "slots": 8, "width": 5, "heads": 2},
        "run": {"checkpoint_every": 2, "log_every": 1, "progress": False, "deterministic": True, "num_threads": 1,
                "seed": 1},
    }


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, _sha(p))
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A trained tiny sequence run, its record (20 test episodes) and what ``metakit eval --json`` printed for it."""
    root = tmp_path_factory.mktemp("sequence_runs")
    run = root / "mann_tiny"
    assert train(Config.from_dict(_config(_image_folder(root / "data"))), run).status == "finished"
    before = _snapshot(run)
    record = root / "runs.json"
    assert rec.main(["eval", str(run), "--episodes", "20", "--record", str(record), "--metakit", METAKIT]) == 0
    after = _snapshot(run)
    return run, record, before, after


@pytest.fixture
def printed(recorded, capsys):
    """What ``metakit eval RUN --split test --episodes 20 --json`` prints (the CLI in this process)."""
    run = recorded[0]
    capsys.readouterr()
    assert metakit_main(["eval", str(run), "--split", "test", "--episodes", "20", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_eval_appends_a_record_whose_digests_and_values_are_the_run_folders_and_metakit_evals(recorded, printed):
    run, record, _, _ = recorded
    [entry] = json.loads(record.read_text())
    assert entry["model"] == "MANN (LRUA)"
    assert entry["config"] == yaml.safe_load((run / "config.yaml").read_text())
    assert entry["config_sha256"] == _sha(run / "config.yaml")
    best = run / "checkpoints" / "best.safetensors"
    assert printed["checkpoint"] == "best.safetensors"
    assert entry["checkpoint"]["path"] == str(best) and entry["checkpoint"]["sha256"] == _sha(best)
    assert entry["checkpoint"]["step"] == printed["step"] == 2  # the best validation checkpoint
    res = entry["result"]
    for key in ("split", "episodes", "seed", "accuracy", "ci95", "classes_per_episode", "instances_per_class",
                "episode_length", "labels", "dataset"):
        assert res[key] == printed[key], key
    assert res["split"] == "test" and res["episodes"] == 20 and res["seed"] == 0
    assert res["instances"] == {name.removeprefix("instance_"): d for name, d in printed["details"].items()}
    assert list(res["instances"]) == ["1", "2", "3"]
    summary = json.loads((run / "summary.json").read_text())
    assert entry["training"] == {
        "finished": True, "status": "finished", "summary_status": "finished", "steps": 4, "planned_steps": 4,
        "seconds": summary["elapsed"], "checkpoint_step": 2, "meta_batch": 4, "label": "finished",
        "seconds_at_checkpoint": [json.loads(line)["elapsed"] for line in (run / "metrics.jsonl").read_text().splitlines()
                                  if json.loads(line)["step"] == 2][-1],
    }
    vals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [v for v in vals if v["split"] == "val"]
    assert [p["step"] for p in entry["validation"]] == [v["step"] for v in vals] == [2, 4]
    for point, v in zip(entry["validation"], vals):
        assert point["accuracy"] == v["accuracy"] and point["ci95"] == v["ci95"] and point["episodes"] == 6
        assert point["instances"] == {str(k): [v[f"instance_{k}"], v[f"instance_{k}_ci95"]] for k in (1, 2, 3)}
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    start = datetime.fromtimestamp(first["time"] - first["elapsed"], timezone.utc)
    assert entry["run_id"] == f"mann_tiny-{start:%Y%m%dT%H%M%SZ}"
    assert re.fullmatch(rf"{re.escape(METAKIT)} eval {re.escape(str(run))} --split test --episodes 20 --checkpoint "
                        r"\S+/best\.safetensors --json", entry["command"]["eval"])
    assert not entry["command"]["eval"].split("--checkpoint ")[1].startswith(str(run))  # a copy outside the run
    assert entry["command"]["record"].startswith("python benchmarks/sequence/runs.py eval ")
    assert {"cpu", "cores", "torch", "python", "threads", "load_average"} <= set(entry["hardware"])
    assert entry["eval_seconds"] > 0 and entry["eval_wall_seconds"] >= entry["eval_seconds"]
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", entry["git_commit"]) and entry["git_commit"].startswith(head)
    datetime.fromisoformat(entry["date"])


def test_recording_writes_nothing_into_the_run_folder(recorded):
    _, _, before, after = recorded
    assert after == before


# -- a stand-in metakit: fast, and able to act as a trainer that replaces the checkpoint during the evaluation
def _fake_metakit(tmp_path: Path, result: dict | None, status: int = 0, replace: Path | None = None,
                  stderr: str = "checkpoint is corrupt") -> str:
    """Prints ``result`` as JSON (nothing if None) and ``stderr``, exits ``status``; logs its argv and the sha256 of
    the --checkpoint file it got to ``calls.jsonl``; with ``replace``, first overwrites that file (as a trainer
    writing a new best checkpoint would)."""
    path = tmp_path / "metakit"
    path.write_text(f"""#!/usr/bin/env python3
import hashlib, json, os, sys
args = sys.argv[1:]
ckpt = args[args.index("--checkpoint") + 1]
digest = hashlib.sha256(open(ckpt, "rb").read()).hexdigest()
with open({str(tmp_path / 'calls.jsonl')!r}, "a") as f:
    f.write(json.dumps({{"args": args, "sha256": digest}}) + "\\n")
replace = {str(replace) if replace else None!r}
if replace:
    open(replace + ".new", "wb").write(b"new weights")
    os.replace(replace + ".new", replace)
result = {json.dumps(result) if result is not None else None!r}
if result:
    print(result)
print({stderr!r}, file=sys.stderr)
sys.exit({status})
""")
    path.chmod(0o755)
    return str(path)


def _calls(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]


def _copy_run(run: Path, tmp_path: Path, *, planned: int | None = None, summary: str | None = "keep") -> Path:
    target = tmp_path / "copy"
    shutil.copytree(run, target)
    if planned is not None:
        cfg = yaml.safe_load((target / "config.yaml").read_text())
        cfg["train"]["steps"] = planned
        (target / "config.yaml").write_text(yaml.safe_dump(cfg))
    if summary is None:
        (target / "summary.json").unlink()
    elif summary != "keep":
        (target / "summary.json").write_text(summary)
    return target


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _result(printed: dict, step: int) -> dict:
    return {**{k: v for k, v in printed.items() if k != "checkpoint"}, "checkpoint": "x.safetensors", "step": step}


def test_the_evaluated_bytes_are_a_copy_taken_before_the_evaluation(recorded, printed, tmp_path):
    """A trainer that replaces best.safetensors while the evaluation runs: the record names the bytes scored."""
    run, _, _, _ = recorded
    target = _copy_run(run, tmp_path)
    best = target / "checkpoints" / "best.safetensors"
    old = _sha(best)
    metakit = _fake_metakit(tmp_path, _result(printed, 2), replace=best)
    out = tmp_path / "runs.json"
    assert rec.main(["eval", str(target), "--episodes", "20", "--record", str(out), "--metakit", metakit]) == 0
    [call] = _calls(tmp_path)
    given = call["args"][call["args"].index("--checkpoint") + 1]
    assert not given.startswith(str(target)) and call["sha256"] == old
    [entry] = json.loads(out.read_text())
    assert entry["checkpoint"]["sha256"] == old != _sha(best)
    assert not Path(given).exists()  # the copy is removed again


@pytest.mark.parametrize("case, planned, summary, checkpoint, step, status", [
    ("no_summary", 10, None, "best", 2, "part-way (stopped; no summary.json)"),
    ("interrupted", 10, {"status": "interrupted", "step": 4, "elapsed": 1.0}, "last", 4,
     "part-way (summary.json: interrupted at step 4)"),
    ("budget_raised", 10, "keep", "best", 2, "part-way (summary.json: finished at step 4)"),
    ("stopped_early", 10, {"status": "stopped_early", "step": 4, "elapsed": 1.0}, "best", 2,
     "stopped early (train.patience) at step 4 of 10"),
    ("live", 4, "keep", "last", 4, "part-way (still training)"),
])
def test_a_run_short_of_its_budget_is_recorded_part_way_with_its_step(recorded, printed, tmp_path, case, planned, summary,
                                                                        checkpoint, step, status):
    run, _, _, _ = recorded
    target = _copy_run(run, tmp_path, planned=planned if planned != 4 else None,
                       summary=json.dumps(summary) if isinstance(summary, dict) else summary)
    metakit = _fake_metakit(tmp_path, _result(printed, step))
    out = tmp_path / "runs.json"
    argv = ["eval", str(target), "--record", str(out), "--metakit", metakit, "--checkpoint", checkpoint]
    if case == "live":  # a training process (this one) holds the run folder, as `metakit train` does
        with lock_run_dir(target):
            assert rec.main(argv) == 0
    else:
        # a lock record left by a killed training: its process no longer runs
        (target / ".lock").write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname()}))
        assert rec.main(argv) == 0
    [entry] = json.loads(out.read_text())
    [call] = _calls(tmp_path)
    source = target / "checkpoints" / ("best.safetensors" if checkpoint == "best" else "step-00000004.safetensors")
    assert entry["checkpoint"]["path"] == str(source) and call["sha256"] == entry["checkpoint"]["sha256"] == _sha(source)
    t = entry["training"]
    assert t["finished"] is False and t["status"] == status and t["steps"] == 4 and t["planned_steps"] == planned
    assert t["label"] == f"part-way, step {step} of {planned}"
    row = [line for line in rec.table([entry]).splitlines() if line.startswith("| MANN")][0]
    assert f"| {step} / {planned} steps (**{status}**; the run stood at step 4 when recorded), {4 * step} episodes" in row


def _not_sequence(tmp_path: Path) -> Path:
    d = tmp_path / "sine"
    d.mkdir()
    (d / "config.yaml").write_text(yaml.safe_dump({
        "task": {"family": "sinusoid"}, "train": {"shots": 5, "queries": 5, "meta_batch": 2, "steps": 1},
        "model": {"name": "mlp", "in_features": 1, "out_features": 1}, "algorithm": {"name": "maml"}}))
    return d


@pytest.mark.parametrize("case, message", [
    ("no_config", r"holds no config\.yaml: not a run folder; give a folder made by `metakit train"),
    ("missing", r"holds no config\.yaml: not a run folder"),
    ("not_sequence", r"is a run of task\.family=sinusoid \(regression tasks\), not of the sequence family"),
    ("failed_run", r"summary\.json says the training failed \(loss is nan\); its checkpoints may hold the weights of "
                   r"a diverged run"),
    ("no_best", r"has no best checkpoint yet \(written at the first validation\); wait for it, or give "
                r"--checkpoint last"),
    ("no_step", r"has no step checkpoint in .* yet; record it after the first checkpoint"),
    ("bad_file", r"--checkpoint '.*nowhere\.safetensors' is not a file; give best, last or the path"),
    ("failed_eval", r"exited with status 1 without a JSON result holding the accuracy and the per-instance "
                    r"accuracies; nothing recorded\. Its stderr ends:\ncheckpoint is corrupt"),
    ("json_then_failed", r"exited with status 1 without a JSON result"),
    ("no_details", r"exited with status 0 without a JSON result holding the accuracy and the per-instance"),
    ("bad_metakit", r"--metakit '.*nothing-here' is not an executable file"),
])
def test_bad_inputs_are_refused_with_the_reason_and_nothing_is_recorded(recorded, printed, tmp_path, capsys, case,
                                                                        message):
    run, _, _, _ = recorded
    metakit, extra = METAKIT, []
    target = run
    if case == "no_config":
        target = tmp_path / "empty"
        target.mkdir()
    elif case == "missing":
        target = tmp_path / "absent"
    elif case == "not_sequence":
        target = _not_sequence(tmp_path)
    elif case == "failed_run":
        target = _copy_run(run, tmp_path, summary=json.dumps({"status": "failed", "step": 3, "error": "loss is nan"}))
    elif case in ("no_best", "no_step"):
        target = _copy_run(run, tmp_path, summary=None)
        for p in (target / "checkpoints").glob("*"):
            if case == "no_step" or p.name == "best.safetensors":
                p.unlink()
        extra = ["--checkpoint", "last"] if case == "no_step" else []
    elif case == "bad_file":
        extra = ["--checkpoint", str(tmp_path / "nowhere.safetensors")]
    elif case == "failed_eval":
        metakit = _fake_metakit(tmp_path, None, 1)
    elif case == "json_then_failed":
        metakit = _fake_metakit(tmp_path, _result(printed, 2), 1)
    elif case == "no_details":
        metakit = _fake_metakit(tmp_path, {k: v for k, v in _result(printed, 2).items() if k != "details"}, 0)
    else:
        metakit = str(tmp_path / "nothing-here")
    out = tmp_path / "runs.json"
    assert rec.main(["eval", str(target), "--record", str(out), "--metakit", metakit, "--episodes", "5", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("runs.py: error: ") and re.search(message, err), err
    assert not out.exists()


def test_episodes_below_one_are_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        rec.main(["eval", "somewhere", "--episodes", "0"])
    assert "--episodes: must be an integer >= 1, got '0'" in capsys.readouterr().err


# -- the table ----------------------------------------------------------------------------------------
def _paper_protocol(entry: dict, model: str, values: list[float]) -> dict:
    """``entry`` as if it had been measured on the paper's protocol (Omniglot, 5 classes x 10 instances, one-hot)."""
    e = copy.deepcopy(entry)
    e["model"] = model
    e["result"].update(dataset="omniglot", protocol="vinyals", classes_per_episode=5, instances_per_class=10,
                       episode_length=50, labels="one_hot", episodes=1000)
    e["result"]["instances"] = {str(k): {"mean": v, "ci95": 0.01, "episodes": 1000} for k, v in zip(range(1, 11), values)}
    return e


def test_the_table_shows_the_records_values_the_budget_and_the_protocol(recorded):
    _, record, _, _ = recorded
    entries = json.loads(record.read_text())
    e = entries[0]
    lines = rec.table(entries).splitlines()
    res = e["result"]
    assert lines[0] == ("Protocol: folder, split `test`, 3 classes x 3 instances in episodes of 9 steps, one-hot labels, "
                        "20 fixed test episodes, seed 0; accuracy in %, mean ± 95% CI (1.96 * sample std / sqrt(episodes)).")
    assert lines[2] == ("| model | run | budget: checkpoint step / planned, episodes seen, training time | 1st | 2nd | 3rd "
                        "| 4th | 5th | 10th | all steps |")
    [row] = [line for line in lines if line.startswith("| MANN")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:2] == ["MANN (LRUA)", f"`{e['run_id']}`"]
    assert cells[2] == "2 / 4 steps (finished; the best validation checkpoint), 8 episodes, 0 s"
    assert cells[3:6] == [f"{100 * res['instances'][k]['mean']:.1f} ± {100 * res['instances'][k]['ci95']:.1f}"
                          for k in ("1", "2", "3")]
    assert cells[6:9] == ["—", "—", "—"]  # a 3-instance protocol has no 4th, 5th, 10th instance
    assert cells[9] == f"{100 * res['accuracy']:.1f} ± {100 * res['ci95']:.1f}"
    assert "(Not the protocol of Santoro et al. 2016, Table 1: no paper rows beside it.)" in lines
    assert not any("Santoro et al. 2016 | paper" in line for line in lines)
    printed = subprocess.run([sys.executable, str(HERE / "runs.py"), "table", "--record", str(record)],
                             capture_output=True, text=True, check=True).stdout
    assert printed.strip("\n") == "\n".join(lines)


def test_the_papers_rows_stand_beside_runs_of_the_papers_protocol_and_each_model_shows_its_newest_record(recorded):
    _, record, _, _ = recorded
    e = json.loads(record.read_text())[0]
    old = _paper_protocol(e, "MANN (LRUA)", [0.2] * 10)
    new = _paper_protocol(e, "MANN (LRUA)", [0.3, 0.6, 0.7, 0.75, 0.8, 0.8, 0.8, 0.8, 0.8, 0.9])
    lstm = _paper_protocol(e, "LSTM", [0.25] * 10)
    lines = rec.table([old, lstm, new]).splitlines()
    assert lines[0].startswith("Protocol: omniglot (vinyals class split), split `test`, 5 classes x 10 instances in "
                               "episodes of 50 steps, one-hot labels, 1,000 fixed test episodes, seed 0")
    rows = [line for line in lines if line.startswith("| ") and not line.startswith(("| model", "| ---"))]
    assert [r.split("|")[1].strip() for r in rows] == ["LSTM", "MANN (LRUA)", "MANN, Santoro et al. 2016",
                                                      "LSTM, Santoro et al. 2016", "Human, Santoro et al. 2016"]
    assert "| 30.0 ± 1.0 | 60.0 ± 1.0 | 70.0 ± 1.0 | 75.0 ± 1.0 | 80.0 ± 1.0 | 90.0 ± 1.0 |" in rows[1]  # the newer
    assert rows[2].endswith("| paper | — | 36.4 | 82.8 | 91.0 | 92.6 | 94.9 | 98.1 | — |")
    assert rows[3].endswith("| paper | — | 24.4 | 49.5 | 55.3 | 61.0 | 63.6 | 62.5 | — |")
    assert rows[4].endswith("| paper | — | 34.5 | 57.3 | 70.1 | 71.8 | 81.4 | 92.4 | — |")
    assert lines[-1].startswith("Paper rows: Santoro et al. 2016, Table 1")
    # another protocol (the tiny run's) gets its own table, without the paper's rows
    both = rec.table([new, e])
    assert both.count("| model | run |") == 2 and both.count("Santoro et al. 2016 | paper") == 3


@pytest.mark.parametrize("key, value", [("dataset", "folder"), ("classes_per_episode", 15), ("instances_per_class", 5),
                                        ("episode_length", 40), ("labels", "string"), ("split", "val")])
def test_a_protocol_that_differs_from_the_papers_in_one_key_gets_no_paper_rows(recorded, key, value):
    _, record, _, _ = recorded
    e = _paper_protocol(json.loads(record.read_text())[0], "MANN (LRUA)", [0.5] * 10)
    assert rec.table([e]).count("Santoro et al. 2016 | paper") == 3
    e["result"][key] = value
    text = rec.table([e])
    assert "Santoro et al. 2016 | paper" not in text and "(Not the protocol of Santoro et al. 2016, Table 1" in text


def test_an_empty_record_says_how_to_fill_it():
    assert "python benchmarks/sequence/runs.py eval RUN_DIR" in rec.table([])


def test_table_readme_rewrites_only_the_marked_block_idempotently_and_refuses_a_readme_without_markers(
        recorded, tmp_path, capsys):
    _, record, _, _ = recorded
    readme = tmp_path / "README.md"
    head, tail = "# x\n\nbefore ✓\n\n", "\n\n## after\n\ntext <!-- rl-table -->\n"
    readme.write_text(f"{head}<!-- sequence-table -->\nold table\n<!-- /sequence-table -->{tail}")
    assert rec.main(["table", "--record", str(record), "--readme", str(readme)]) == 0
    text = rec.table(rec.read_records(record))
    expected = f"{head}<!-- sequence-table -->\n{text}\n<!-- /sequence-table -->{tail}"
    assert readme.read_text() == expected
    assert rec.main(["table", "--record", str(record), "--readme", str(readme)]) == 0
    assert readme.read_text() == expected  # idempotent
    for bad in ("# no markers\n", "<!-- /sequence-table -->\n<!-- sequence-table -->\n",
                "<!-- sequence-table -->\n<!-- sequence-table -->\n<!-- /sequence-table -->\n"):
        readme.write_text(bad)
        assert rec.main(["table", "--record", str(record), "--readme", str(readme)]) == 2
        assert "expected one <!-- sequence-table --> line followed by one <!-- /sequence-table -->" in capsys.readouterr().err
        assert readme.read_text() == bad


# -- the figure ---------------------------------------------------------------------------------------
def test_the_figure_is_drawn_from_the_records_alone(recorded, tmp_path, capsys):
    run, record, _, _ = recorded
    e = json.loads(record.read_text())[0]
    e["run_dir"] = str(tmp_path / "gone")  # the run folder plays no part
    part = _paper_protocol(e, "LSTM", [0.2] * 10)
    part["run_id"] = "lstm-part"
    part["validation"] = [{"step": s, "instances": {str(k): [0.01 * k + s / 10000, 0.01] for k in range(1, 11)}}
                          for s in (1000, 2000)]
    out_record = tmp_path / "runs.json"
    out_record.write_text(json.dumps([e, part]))
    assert rec.curves(e) == {k: ([2, 4], [100 * p["instances"][str(k)][0] for p in e["validation"]]) for k in (1, 2, 3)}
    assert rec.curves(part)[10] == ([1000, 2000], [pytest.approx(20.0), pytest.approx(30.0)])
    assert set(rec.curves(part)) == {1, 2, 3, 5, 10}
    out = tmp_path / "fig" / "sequence_validation.png"
    assert rec.main(["plot", "--record", str(out_record), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    assert rec.main(["plot", "--record", str(empty), "--out", str(tmp_path / "none.png")]) == 2
    assert "no record holds a validation curve with per-instance accuracies" in capsys.readouterr().err
    assert not (tmp_path / "none.png").exists()


# -- the repository's README and figure ---------------------------------------------------------------
def test_the_readme_sequence_table_is_what_the_repositorys_record_prints():
    begin, end = rec.README_MARKERS
    readme = (REPO / "README.md").read_text()
    assert readme.count(begin) == 1 and readme.count(end) == 1
    in_readme = readme.split(begin, 1)[1].split(end, 1)[0].strip("\n")
    printed = subprocess.run([sys.executable, str(HERE / "runs.py"), "table"], capture_output=True, text=True,
                             check=True, timeout=600).stdout.strip("\n")
    assert in_readme == printed, ("README.md's sequence-table differs from benchmarks/sequence/runs.json; "
                                  "`python benchmarks/sequence/runs.py table --readme README.md` writes it")


def test_the_figure_exists_once_a_recorded_run_has_a_validation_curve():
    records = rec.read_records(rec.RECORD)
    if any(rec.curves(r) for r in records):
        assert rec.FIGURE.is_file(), ("benchmarks/sequence/runs.json holds validation curves but "
                                      "docs/sequence_validation.png is missing; `python benchmarks/sequence/runs.py plot` "
                                      "draws it")
