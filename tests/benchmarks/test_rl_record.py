"""benchmarks/rl/record.py: the record of a trained meta-RL run (digests, the result of ``metakit eval
--json``, training steps and seconds), its refusals, and the table beside the references."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from metakit.bench import load_script
from metakit.runtime.config import Config
from metakit.runtime.trainer import train

REPO = Path(__file__).resolve().parents[2]
HERE = REPO / "benchmarks" / "rl"
METAKIT = str(Path(sys.executable).with_name("metakit"))


def _script():
    return load_script(HERE / "record.py", "rl_record")


rec = _script()

#: Duan et al.'s bandit setting k=5, n=10 with a tiny GRU and a few PPO updates (seconds); eval.seed 0
CONFIG = {
    "task": {"family": "bandits", "arms": 5},
    "train": {"shots": 10, "queries": 10, "meta_batch": 4, "steps": 4},
    "eval": {"val_episodes": 0, "test_episodes": 20, "seed": 0},
    "model": {"name": "recurrent_policy", "hidden": 8},
    "algorithm": {"name": "rl2", "epochs": 1, "minibatches": 2},
    "optim": {"lr": 0.01},
    "run": {"checkpoint_every": 2, "log_every": 1, "progress": False, "seed": 1, "num_threads": 1},
}


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A trained RL² run, its record (1,000 test tasks: the references' protocol) and ``metakit eval --json``."""
    root = tmp_path_factory.mktemp("rl_record")
    run = root / "rl2_tiny"
    assert train(Config.from_dict(CONFIG), run).status == "finished"
    record = root / "runs.json"
    assert rec.main(["eval", str(run), "--episodes", "1000", "--record", str(record), "--metakit", METAKIT]) == 0
    direct = json.loads(subprocess.run([METAKIT, "eval", str(run), "--episodes", "1000", "--json"],
                                       capture_output=True, text=True, check=True).stdout)
    return run, record, direct


def test_eval_appends_a_record_whose_digests_match_the_files_and_whose_result_is_metakit_evals(recorded):
    run, record, direct = recorded
    [entry] = json.loads(record.read_text())
    assert entry["config"] == yaml.safe_load((run / "config.yaml").read_text())
    assert entry["config_sha256"] == _sha(run / "config.yaml")
    checkpoint = run / "checkpoints" / direct["checkpoint"]
    assert entry["checkpoint"] == {"path": str(checkpoint), "sha256": _sha(checkpoint), "step": 4}
    for key in ("task", "options", "split", "shots", "queries", "episodes", "seed", "return", "ci95",
                "optimal_return", "regret", "regret_ci95"):
        assert entry["result"][key] == direct[key], key
    assert entry["result"]["split"] == "test" and entry["result"]["episodes"] == 1000 and entry["result"]["seed"] == 0
    summary = json.loads((run / "summary.json").read_text())
    assert entry["training"]["steps"] == 4 and entry["training"]["seconds"] == summary["elapsed"]
    norms = sorted(json.loads(line)["grad_norm"] for line in (run / "metrics.jsonl").read_text().splitlines()
                   if json.loads(line)["split"] == "train")
    assert entry["training"]["validation"] == [] and entry["training"]["grad_norm"]["lines"] == len(norms) == 4
    assert entry["training"]["grad_norm"]["p50"] == norms[2] and entry["training"]["grad_norm"]["p10"] == norms[0]
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    start = datetime.fromtimestamp(first["time"] - first["elapsed"], timezone.utc)
    assert entry["run_id"] == f"rl2_tiny-{start:%Y%m%dT%H%M%SZ}"
    assert entry["command"]["eval"] == f"{METAKIT} eval {run} --split test --episodes 1000 --json"
    assert entry["command"]["record"].startswith("python benchmarks/rl/record.py eval ")
    assert {"cpu", "cores", "torch", "python"} <= set(entry["hardware"])
    assert entry["eval_seconds"] > 0 and entry["eval_wall_seconds"] >= entry["eval_seconds"]
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", entry["git_commit"]) and entry["git_commit"].startswith(head)
    import torch

    assert entry["evaluated_with"] == {"metakit": METAKIT, "torch": torch.__version__}
    datetime.fromisoformat(entry["date"])


def test_training_curves_read_the_validations_and_the_gradient_norms_of_metrics_jsonl(tmp_path):
    lines = [{"step": s, "split": "train", "grad_norm": float(g)} for s, g in zip(range(1, 11), [5, 1, 9, 3, 7, 2, 8, 4, 6, 10])]
    lines += [{"step": 5, "split": "val", "return": 1.5}, {"step": 10, "split": "val", "return": 2.5}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    curves = rec.training_curves(tmp_path)
    assert curves["validation"] == [[5, 1.5], [10, 2.5]]
    assert curves["grad_norm"] == {"p10": 2.0, "p50": 6.0, "p90": 10.0, "lines": 10}
    assert rec.training_curves(tmp_path / "no_run") == {}


def test_rows_of_one_setting_name_the_algorithm_options_that_tell_them_apart(recorded):
    _, record, _ = recorded
    [entry] = json.loads(record.read_text())
    alone = [line for line in rec.table([entry], []).splitlines() if line.startswith("| bandits")]
    assert "algorithm." not in alone[0]
    other = copy.deepcopy(entry)
    other["run_id"] = "other-run"
    other["config"]["algorithm"]["normalize_returns"] = True
    entry = copy.deepcopy(entry)
    del entry["config"]["algorithm"]["normalize_returns"]  # a config without the key: read as the default
    rows = [line for line in rec.table([entry, other], []).splitlines() if line.startswith("| bandits")]
    training = {row.split(" | ")[2].split("`")[1]: row.split(" | ")[2] for row in rows}
    assert training[entry["run_id"]].endswith("; algorithm.normalize_returns=false")
    assert training["other-run"].endswith("; algorithm.normalize_returns=true")
    assert "epochs" not in rows[0] + rows[1]  # options the runs share are not named


def test_a_second_eval_appends_and_the_table_shows_the_newest_record_of_the_run(recorded, tmp_path):
    run, record, _ = recorded
    copy_of = tmp_path / "runs.json"
    shutil.copy(record, copy_of)
    assert rec.main(["eval", str(run), "--episodes", "30", "--record", str(copy_of), "--metakit", METAKIT]) == 0
    entries = json.loads(copy_of.read_text())
    assert [e["result"]["episodes"] for e in entries] == [1000, 30]
    rows = [line for line in rec.table(entries, []).splitlines() if line.startswith("| bandits")]
    assert len(rows) == 1 and "(30 tasks)" in rows[0]


def test_the_table_puts_the_run_beside_the_references_of_its_protocol_and_the_papers_row(recorded):
    _, record, direct = recorded
    entries = json.loads(record.read_text())
    references = json.loads((HERE / "references.json").read_text())
    text = rec.table(entries, references)
    lines = text.splitlines()
    assert lines[0].startswith("| setting | RL² (this run): return, regret | training | RL² (paper) | best reference")
    rows = [line for line in lines if line.startswith("| bandits")]
    assert len(rows) == 1  # only the setting with a recorded run
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    ref = [e for e in references if e["setting"] == "bandits-k5-n10"][-1]["results"]
    best = max((m for m in ref if m != "optimal"), key=lambda m: ref[m]["return"])
    assert cells[0] == "bandits arms=5 n=10"
    assert cells[1].startswith(f"{direct['return']:.2f} ± {direct['ci95']:.2f}, regret {direct['regret']:.2f}")
    assert cells[2].startswith(f"`{entries[0]['run_id']}`: 4 steps")
    assert cells[3] == "6.7"  # Duan et al. 2016, Table 1, k=5 n=10
    assert cells[4] == f"{rec.NAMES[best]}: {ref[best]['return']:.2f} ± {ref[best]['ci95']:.2f}"
    assert cells[5:8] == [f"{ref[m]['return']:.2f} ± {ref[m]['ci95']:.2f}" for m in ("gittins", "ucb1", "thompson")]
    assert cells[8] == f"{direct['optimal_return']:.2f}"
    # other test tasks (a seed or a number of tasks the references were not measured on): no reference beside it
    other = copy.deepcopy(entries[0])
    other["result"]["seed"] = 3
    row = [line for line in rec.table([other], references).splitlines() if line.startswith("| bandits")][0]
    assert row.count("not measured") == 4 and "| 6.7 |" in row
    # a tabular-MDP record (the same fields, hand-set) gets its own table beside Table 2 and PSRL
    mdp = copy.deepcopy(entries[0])
    mdp["run_id"] = "mdp-run"
    mdp["result"].update(task="tabular_mdp", options={"states": 10, "actions": 5, "horizon": 10})
    mdp_text = rec.table([entries[0], mdp], references)
    assert mdp_text.count("| setting |") == 2
    mdp_row = [line for line in mdp_text.splitlines() if line.startswith("| tabular_mdp")][0]
    psrl = [e for e in references if e["setting"] == "mdp-n10"][-1]["results"]["psrl"]
    assert f"| 156.2 | PSRL: {psrl['return']:.2f} ± {psrl['ci95']:.2f} | {psrl['return']:.2f} ±" in mdp_row
    # the command prints the same table
    printed = subprocess.run([sys.executable, str(HERE / "record.py"), "table", "--record", str(record)],
                             capture_output=True, text=True, check=True).stdout
    assert printed.strip("\n") == text


def test_table_readme_writes_between_the_markers_and_refuses_a_readme_without_them(recorded, tmp_path, capsys):
    _, record, _ = recorded
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- rl-table -->\nold\n<!-- /rl-table -->\n\nafter\n")
    assert rec.main(["table", "--record", str(record), "--readme", str(readme)]) == 0
    text = rec.table(rec.read_records(record), rec.read_records(rec.REFERENCES))
    assert readme.read_text() == f"# x\n\n<!-- rl-table -->\n{text}\n<!-- /rl-table -->\n\nafter\n"
    bare = tmp_path / "BARE.md"
    bare.write_text("# no markers\n")
    assert rec.main(["table", "--record", str(record), "--readme", str(bare)]) == 2
    assert "expected one <!-- rl-table --> line followed by one <!-- /rl-table -->" in capsys.readouterr().err
    assert bare.read_text() == "# no markers\n"


def test_an_empty_record_says_how_to_fill_it():
    assert "python benchmarks/rl/record.py eval RUN_DIR" in rec.table([], [])


def _fake_metakit(path: Path, stdout: str, status: int) -> str:
    """A stand-in ``metakit`` that prints ``stdout`` and "checkpoint is corrupt" on stderr, then exits ``status``."""
    path.write_text(f"#!{sys.executable}\nimport sys\nprint({stdout!r})\nprint('checkpoint is corrupt', file=sys.stderr)\n"
                    f"sys.exit({status})\n")
    path.chmod(0o755)
    return str(path)


def _unfinished(run: Path, tmp_path: Path, summary: str | None) -> Path:
    copy_of = tmp_path / "unfinished"
    shutil.copytree(run, copy_of)
    if summary is None:
        (copy_of / "summary.json").unlink()
    else:
        (copy_of / "summary.json").write_text(summary)
    return copy_of


def _not_rl(tmp_path: Path) -> Path:
    d = tmp_path / "sine"
    d.mkdir()
    (d / "config.yaml").write_text(yaml.safe_dump({
        "task": {"family": "sinusoid"}, "train": {"shots": 5, "queries": 5, "meta_batch": 2, "steps": 1},
        "model": {"name": "mlp", "in_features": 1, "out_features": 1}, "algorithm": {"name": "maml"}}))
    return d


@pytest.mark.parametrize("case, message", [
    ("no_config", r"holds no config\.yaml: not a run folder; give a folder made by `metakit train"),
    ("missing", r"holds no config\.yaml: not a run folder"),
    ("not_rl", r"is a run of task\.family=sinusoid \(regression tasks\), not of an RL task family"),
    ("unfinished", r"summary\.json is 'missing', not 'finished' \(or 'interrupted', 'stopped_early'\): the run is still training"),
    ("failed_run", r"summary\.json is 'failed', not 'finished' \(or 'interrupted', 'stopped_early'\): the run is still training, was killed or failed"),
    ("failed_eval", r"exited with status 1 without a JSON result holding a return; nothing recorded\. "
                    r"Its stderr ends:\ncheckpoint is corrupt"),
    ("json_then_failed", r"exited with status 1 without a JSON result holding a return"),
    ("no_return", r"exited with status 0 without a JSON result holding a return"),
    ("bad_metakit", r"--metakit '.*nothing-here' is not an executable file"),
])
def test_bad_inputs_are_refused_with_the_reason_and_nothing_is_recorded(recorded, tmp_path, capsys, case, message):
    run, _, _ = recorded
    metakit = METAKIT
    if case == "no_config":
        target = tmp_path / "empty"
        target.mkdir()
    elif case == "missing":
        target = tmp_path / "absent"
    elif case == "not_rl":
        target = _not_rl(tmp_path)
    elif case == "unfinished":
        target = _unfinished(run, tmp_path, None)
    elif case == "failed_run":
        target = _unfinished(run, tmp_path, json.dumps({"status": "failed", "step": 2, "elapsed": 1.0}))
    elif case == "failed_eval":
        target, metakit = run, _fake_metakit(tmp_path / "metakit", "", 1)
    elif case == "json_then_failed":
        result = {"return": 1.0, "ci95": 0.1, "episodes": 5, "checkpoint": "step-00000004.safetensors", "step": 4}
        target, metakit = run, _fake_metakit(tmp_path / "metakit", json.dumps(result), 1)
    elif case == "no_return":
        result = {"accuracy": 0.5, "ci95": 0.1, "episodes": 5, "checkpoint": "step-00000004.safetensors", "step": 4}
        target, metakit = run, _fake_metakit(tmp_path / "metakit", json.dumps(result), 0)
    else:
        target, metakit = run, str(tmp_path / "nothing-here")
    out = tmp_path / "runs.json"
    assert rec.main(["eval", str(target), "--record", str(out), "--metakit", metakit, "--episodes", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("record.py: error: ") and re.search(message, err), err
    assert not out.exists()


def test_episodes_below_one_are_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        rec.main(["eval", "somewhere", "--episodes", "0"])
    assert "--episodes: must be an integer >= 1, got '0'" in capsys.readouterr().err
