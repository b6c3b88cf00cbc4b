"""A machine-written record of trained runs on Santoro et al.'s sequence protocol, their table and figure.

    python benchmarks/sequence/runs.py eval RUN_DIR [--metakit PATH] [--episodes 1000] [--checkpoint best|last|FILE]
    python benchmarks/sequence/runs.py table [--readme README.md]
    python benchmarks/sequence/runs.py plot [--out docs/sequence_validation.png]

``eval`` scores a run folder of the ``sequence`` task family (MANN with LRUA or NTM memory, the LSTM
meta-learner) with ``metakit eval RUN_DIR --split test --episodes N --checkpoint COPY --json`` in a
subprocess (one thread) and appends one record to ``runs.json`` beside this script: the run id
(``NAME-<UTC start of training>``), the run's ``config.yaml`` and its sha256, the evaluated checkpoint
(path, sha256, training step), the planned steps (``train.steps``), whether training had finished
(``summary.json`` says so at the planned step) or the run is recorded part-way (still training, stopped,
interrupted, or stopped early by ``train.patience``), the accuracy at the 1st..k-th instance of a class and over all steps with their 95% intervals,
episodes and seed, the run's validation curve (every validation record of ``metrics.jsonl``: step, accuracy
and per-instance accuracy with their intervals), the training seconds so far and at the checkpoint's step,
the commands, the evaluation's seconds, the hardware (``metakit.bench.hardware()``), the date and the git
commit of the metakit that evaluated.

The checkpoint (``best``: ``best.safetensors``, or the newest step checkpoint of a run that does not
validate; ``last``: the newest step checkpoint; or a file) is first copied out of the run folder and the copy
is what is hashed and evaluated: a run that is still training may replace ``best.safetensors`` or delete old
step checkpoints at any moment, and the record must name the bytes that were scored. ``metakit eval``
itself writes nothing into the run folder. A folder that is no run, a run of another task family, a run
whose training failed, a run with no checkpoint yet and a failed evaluation are refused with the reason and
no record.

``table`` prints the newest record of each model (per protocol: dataset, split, classes, instances, labels,
test episodes, seed) with its budget (checkpoint step of the planned steps, episodes seen, training time)
and the accuracy at the 1st, 2nd, 3rd, 4th, 5th and 10th instance, beside the rows of Santoro et al. 2016,
Table 1 where the protocol is the paper's (Omniglot, 5 classes, 10 instances, one-hot labels). ``--readme
FILE`` writes it between FILE's ``<!-- sequence-table -->`` and ``<!-- /sequence-table -->`` lines instead.

``plot`` draws, from the records alone (not the run folders), the validation accuracy at the 1st, 2nd,
3rd, 5th and 10th instance against the training step, one panel per recorded run, with the paper's final
MANN (dashed) and LSTM (dotted) values as reference lines.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from metakit.bench import load_script

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


# the run id, the digests, reading and appending the record, the --metakit lookup and the argument check of the
# meta-RL runs' record (which takes the run id, digests and --metakit lookup from the Omniglot runs' record), shared
_rl = load_script(HERE.parent / "rl" / "record.py", "rl_record")
_reproduce = _rl._reproduce
sha256, run_id, read_records, _append = _rl.sha256, _rl.run_id, _rl.read_records, _rl._append
_metakit_path, _at_least_one = _rl._metakit_path, _rl._at_least_one
#: a run folder, an evaluation or a record that cannot be recorded or read; the message says why
RecordError = _rl.RecordError

RECORD = HERE / "runs.json"
FIGURE = REPO / "docs" / "sequence_validation.png"
README_MARKERS = ("<!-- sequence-table -->", "<!-- /sequence-table -->")
ONE_THREAD = _rl.ONE_THREAD
#: the instances of a class the table and the figure show (Santoro et al.'s Table 1 columns; the figure omits the 4th)
TABLE_INSTANCES = (1, 2, 3, 4, 5, 10)
FIGURE_INSTANCES = (1, 2, 3, 5, 10)
#: Santoro et al. 2016, Table 1: Omniglot test set, one-hot labels, 5 classes per episode; accuracy (%) at the
#: 1st, 2nd, 3rd, 4th, 5th and 10th instance of a class
PAPER = {
    "Human": (34.5, 57.3, 70.1, 71.8, 81.4, 92.4),
    "LSTM": (24.4, 49.5, 55.3, 61.0, 63.6, 62.5),
    "MANN": (36.4, 82.8, 91.0, 92.6, 94.9, 98.1),
}
PAPER_SOURCE = ("Santoro et al. 2016, Table 1 (Omniglot test set, 5 classes, one-hot labels), as carried in "
                "docs/model_based.md; the MANN and LSTM rows agree with the table as quoted by an independent "
                "re-implementation, the human row is not checked against a second source")
#: the protocol of the paper's Table 1, as the record's result states it
PAPER_PROTOCOL = {"dataset": "omniglot", "classes_per_episode": 5, "instances_per_class": 10, "episode_length": 50,
                  "labels": "one_hot"}


# -- files ------------------------------------------------------------------------------------------
def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    from metakit.runtime.logging import read_metrics

    try:
        return read_metrics(run_dir / "metrics.jsonl")
    except FileNotFoundError:
        return []


def _training_live(run_dir: Path) -> bool:
    """Whether ``metakit train`` is running in the run folder: ``RUN_DIR/.lock`` names its owner (process id and
    host) while a training holds it, and is emptied when the training ends; a process that was killed leaves a
    record whose process no longer runs. Only read: the lock itself is never taken, so recording cannot stand in
    the way of a training that starts meanwhile."""
    import socket

    try:
        owner = json.loads((run_dir / ".lock").read_text() or "{}")
    except (OSError, ValueError):
        return False
    pid = owner.get("pid") if isinstance(owner, dict) else None
    if not isinstance(pid, int) or pid <= 0 or owner.get("host", socket.gethostname()) != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, owned by another user
        return True
    return True


# -- eval -------------------------------------------------------------------------------------------
def check_run(run_dir: Path) -> tuple[dict[str, Any], Any, dict[str, Any] | None]:
    """The run's config (as written and as loaded) and summary; :class:`RecordError` if it is no run of the
    sequence family or its training failed."""
    if not (run_dir / "config.yaml").is_file():
        raise RecordError(f"RUN_DIR {str(run_dir)!r} holds no config.yaml: not a run folder; give a folder made by "
                          "`metakit train ... --out RUN_DIR`")
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    from metakit.runtime.config import load_config

    try:
        cfg = load_config(run_dir / "config.yaml")
    except (ValueError, OSError) as err:
        raise RecordError(f"RUN_DIR {str(run_dir)!r}: its config.yaml does not load ({err})") from err
    if cfg.family.kind != "sequence":
        raise RecordError(f"RUN_DIR {str(run_dir)!r} is a run of task.family={cfg.family.name} ({cfg.family.kind} "
                          "tasks), not of the sequence family; this record holds runs of Santoro et al.'s sequence "
                          "protocol (configs/{mann,ntm,lstm}_omniglot_sequence.yaml)")
    summary = _reproduce._read_json(run_dir / "summary.json")
    summary = summary if isinstance(summary, dict) else None
    if summary is not None and summary.get("status") == "failed":
        raise RecordError(f"RUN_DIR {str(run_dir)!r}: summary.json says the training failed ({summary.get('error')}); "
                          "its checkpoints may hold the weights of a diverged run. Resume it with "
                          "`metakit train --resume RUN_DIR` and record it when it trains again")
    return config, cfg, summary


def _choose_checkpoint(run_dir: Path, choice: str, validates: bool) -> Path:
    """The checkpoint file ``choice`` names (``best``, ``last`` or a path); :class:`RecordError` if there is none."""
    folder = run_dir / "checkpoints"
    steps = sorted(folder.glob("step-*.safetensors")) if folder.is_dir() else []
    if choice == "best" and (validates or (folder / "best.safetensors").exists()):
        path = folder / "best.safetensors"
        if not path.exists():
            raise RecordError(f"RUN_DIR {str(run_dir)!r} has no best checkpoint yet (written at the first validation); "
                              "wait for it, or give --checkpoint last for the newest step checkpoint")
        return path
    if choice in ("best", "last"):
        if not steps:
            raise RecordError(f"RUN_DIR {str(run_dir)!r} has no step checkpoint in {folder} yet; record it after the "
                              "first checkpoint (run.checkpoint_every)")
        return steps[-1]  # zero-padded step numbers: the newest sorts last
    path = Path(choice).expanduser()
    if not path.is_file():
        raise RecordError(f"--checkpoint {choice!r} is not a file; give best, last or the path of a checkpoint of the run")
    return path.resolve()


def validation_curve(metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every validation record of ``metrics.jsonl``, oldest first: step, accuracy and its interval, episodes, the
    training seconds then, and the per-instance accuracies with their intervals (``instances``: ``{"1": [mean,
    ci95], ...}``). A step logged twice keeps its last record."""
    by_step: dict[int, dict[str, Any]] = {}
    for r in metrics:
        if r.get("split") != "val" or not isinstance(r.get("step"), int):
            continue
        instances = {}
        k = 1
        while isinstance(r.get(f"instance_{k}"), (int, float)):
            instances[str(k)] = [r[f"instance_{k}"], r.get(f"instance_{k}_ci95")]
            k += 1
        by_step[r["step"]] = {"step": r["step"], "accuracy": r.get("accuracy"), "ci95": r.get("ci95"),
                              "episodes": r.get("episodes"), "seconds": r.get("elapsed"), "instances": instances}
    return [by_step[s] for s in sorted(by_step)]


def _training(cfg: Any, summary: dict[str, Any] | None, metrics: list[dict[str, Any]], checkpoint_step: int | None,
              live: bool) -> dict[str, Any]:
    planned = cfg.train.steps
    # where the run stood: the newer of summary.json (written when a training call ends) and metrics.jsonl
    # (written as it trains; a resumed run's summary.json is the previous call's until it ends)
    last = max(metrics, key=lambda r: r.get("step", 0), default={})
    steps, seconds = last.get("step"), last.get("elapsed")
    if summary is not None and isinstance(summary.get("step"), int) and summary["step"] >= (steps or 0):
        steps, seconds = summary["step"], summary.get("elapsed")
    at_checkpoint = [r.get("elapsed") for r in metrics if r.get("step") == checkpoint_step and "elapsed" in r]
    finished = (not live and summary is not None and summary.get("status") == "finished"
                and summary.get("step") == planned)
    if finished:
        state = "finished"
    elif live:
        state = "part-way (still training)"
    elif summary is not None and summary.get("status") == "stopped_early" and isinstance(summary.get("step"), int):
        state = f"stopped early (train.patience) at step {summary['step']:,} of {planned:,}"
    elif summary is not None:
        step = summary.get("step")
        state = f"part-way (summary.json: {summary.get('status')} at step {f'{step:,}' if isinstance(step, int) else step})"
    else:
        state = "part-way (stopped; no summary.json)"
    return {
        "finished": finished,
        "status": state,
        "summary_status": summary.get("status") if summary is not None else None,
        "steps": steps,
        "planned_steps": planned,
        "seconds": seconds,
        "checkpoint_step": checkpoint_step,
        "seconds_at_checkpoint": at_checkpoint[-1] if at_checkpoint else None,
        "meta_batch": cfg.train.meta_batch,
        "label": "finished" if finished else f"part-way, step {checkpoint_step:,} of {planned:,}",
    }


def evaluate(run_dir: Path, metakit: str, episodes: int, checkpoint: str, record: Path, argv: list[str]) -> dict[str, Any]:
    """Evaluate ``run_dir`` with ``metakit eval --json`` on a copy of its checkpoint and append its record to ``record``."""
    from metakit.bench import hardware

    run_dir = run_dir.expanduser().resolve()
    config, cfg, summary = check_run(run_dir)
    source = _choose_checkpoint(run_dir, checkpoint, cfg.validates)
    live = _training_live(run_dir)
    with tempfile.TemporaryDirectory(prefix="sequence-record-") as tmp:
        copy = Path(tmp) / source.name
        try:
            shutil.copyfile(source, copy)  # one consistent version: the trainer replaces files, never rewrites them
        except OSError as err:
            raise RecordError(f"cannot copy the checkpoint {str(source)!r} ({err}); if the run is still training it "
                              "may have just replaced it: try again") from err
        digest = sha256(copy)
        cmd = [metakit, "eval", str(run_dir), "--split", "test", "--episodes", str(episodes), "--checkpoint",
               str(copy), "--json"]
        start = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **ONE_THREAD})
        wall = time.perf_counter() - start
    try:
        result = json.loads(p.stdout)
    except json.JSONDecodeError:
        result = None
    details = result.get("details") if isinstance(result, dict) else None
    if (p.returncode != 0 or not isinstance(result, dict) or "accuracy" not in result
            or not isinstance(details, dict) or "instance_1" not in details):
        tail = "\n".join(p.stderr.strip().splitlines()[-5:])
        raise RecordError(f"the evaluation `{shlex.join(cmd)}` exited with status {p.returncode} without a JSON result "
                          f"holding the accuracy and the per-instance accuracies; nothing recorded. Its stderr ends:\n{tail}")
    step = result.get("step")
    metrics = _metrics(run_dir)
    instances = {name.removeprefix("instance_"): {"mean": d["mean"], "ci95": d["ci95"], "episodes": d["episodes"]}
                 for name, d in details.items() if name.startswith("instance_")}
    entry = {
        "run_id": run_id(run_dir),
        "run_dir": str(run_dir),
        "model": model_name(config),
        "config": config,
        "config_sha256": sha256(run_dir / "config.yaml"),
        "checkpoint": {"path": str(source), "sha256": digest, "step": step, "chosen": checkpoint,
                       "evaluated": "a copy taken before the evaluation"},
        "result": {
            **{k: result.get(k) for k in ("algorithm", "task", "dataset", "protocol", "classes_per_episode",
                                          "instances_per_class", "episode_length", "labels", "split", "episodes",
                                          "seed", "accuracy", "ci95") if k in result},
            "instances": instances,
        },
        "training": _training(cfg, summary, metrics, step, live),
        "validation": validation_curve(metrics),
        "command": {"record": shlex.join(["python", "benchmarks/sequence/runs.py", *argv]), "eval": shlex.join(cmd)},
        "eval_seconds": result.get("seconds"),
        "eval_wall_seconds": round(wall, 3),
        "hardware": {**hardware(), "threads": 1, "load_average": [round(x, 2) for x in os.getloadavg()]},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _reproduce.probe_environment(metakit)["git_commit"],
    }
    _append(record, entry)
    return entry


def model_name(config: dict[str, Any]) -> str:
    """``MANN (LRUA)``, ``MANN (NTM)``, ``LSTM``, or the algorithm's name, from a run's config."""
    algorithm = config.get("algorithm") or {}
    name = str(algorithm.get("name"))
    if name == "mann":
        return f"MANN ({str(algorithm.get('memory') or 'lrua').upper()})"
    return name.upper() if name == "lstm" else name


# -- table ------------------------------------------------------------------------------------------
PROTOCOL_KEYS = ("dataset", "protocol", "split", "classes_per_episode", "instances_per_class", "episode_length",
                 "labels", "episodes", "seed")


def _protocol(res: dict[str, Any]) -> tuple:
    return tuple(json.dumps(res.get(k), sort_keys=True) for k in PROTOCOL_KEYS)


def _is_papers(res: dict[str, Any]) -> bool:
    return res.get("split") == "test" and all(res.get(k) == v for k, v in PAPER_PROTOCOL.items())


def _protocol_line(res: dict[str, Any]) -> str:
    labels = str(res.get("labels")).replace("_", "-")
    dataset = str(res.get("dataset")) + (f" ({res['protocol']} class split)" if res.get("protocol") else "")
    return (f"Protocol: {dataset}, split `{res.get('split')}`, "
            f"{res.get('classes_per_episode')} classes x {res.get('instances_per_class')} instances in episodes of "
            f"{res.get('episode_length')} steps, {labels} labels, {res.get('episodes'):,} fixed test episodes, seed "
            f"{res.get('seed')}; accuracy in %, mean ± 95% CI (1.96 * sample std / sqrt(episodes)).")


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "time unknown"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _budget(r: dict[str, Any]) -> str:
    t = r["training"]
    step = t["checkpoint_step"]
    seconds = t["seconds_at_checkpoint"] if t["seconds_at_checkpoint"] is not None else t["seconds"]
    head = f"{step:,} / {t['planned_steps']:,} steps"
    if not t["finished"]:
        stood = f"{t['steps']:,}" if isinstance(t["steps"], int) else "unknown"
        head += f" (**{t['status']}**; the run stood at step {stood} when recorded)"
    elif step != t["planned_steps"]:
        head += " (finished; the best validation checkpoint)"
    return f"{head}, {step * t['meta_batch']:,} episodes, {_duration(seconds)}"


def _cell(d: dict[str, Any] | None) -> str:
    if d is None:
        return "—"
    return f"{100 * d['mean']:.1f}" if d.get("ci95") is None else f"{100 * d['mean']:.1f} ± {100 * d['ci95']:.1f}"


def newest(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest record of each (model, protocol), in order of first appearance."""
    out: dict[tuple, dict[str, Any]] = {}
    for r in records:
        out[(r["model"], _protocol(r["result"]))] = r
    return list(out.values())


def table(records: list[dict[str, Any]]) -> str:
    """One Markdown table per protocol: the newest record of each model, beside the paper's rows where the
    protocol is the paper's."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in newest(records):
        groups.setdefault(_protocol(r["result"]), []).append(r)
    if not groups:
        return "No sequence run is recorded yet (`python benchmarks/sequence/runs.py eval RUN_DIR`)."
    head = ("| model | run | budget: checkpoint step / planned, episodes seen, training time | "
            + " | ".join(_ordinal(k) for k in TABLE_INSTANCES) + " | all steps |")
    out: list[str] = []
    for runs in groups.values():
        res0 = runs[0]["result"]
        if out:
            out.append("")
        out += [_protocol_line(res0), "", head, "| --- | --- | --- | " + " | ".join("---" for _ in TABLE_INSTANCES) + " | --- |"]
        for r in sorted(runs, key=lambda r: r["model"]):
            res = r["result"]
            cells = [_cell(res["instances"].get(str(k))) for k in TABLE_INSTANCES]
            overall = _cell({"mean": res["accuracy"], "ci95": res["ci95"]})
            out.append(f"| {r['model']} | `{r['run_id']}` | {_budget(r)} | " + " | ".join(cells) + f" | {overall} |")
        if _is_papers(res0):
            for name in ("MANN", "LSTM", "Human"):
                out.append(f"| {name}, Santoro et al. 2016 | paper | — | "
                           + " | ".join(f"{v:.1f}" for v in PAPER[name]) + " | — |")
        else:
            out += ["", "(Not the protocol of Santoro et al. 2016, Table 1: no paper rows beside it.)"]
    out += ["", f"Paper rows: {PAPER_SOURCE}. A run marked part-way was evaluated at the checkpoint step shown, "
            "short of its planned budget: its numbers are not the paper's budget's."]
    return "\n".join(out)


def _ordinal(k: int) -> str:
    suffix = {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th") if not 11 <= k % 100 <= 13 else "th"
    return f"{k}{suffix}"


def write_into_readme(path: Path, text: str) -> None:
    """Replace what stands between the README's ``sequence-table`` markers by ``text``."""
    _rl.write_into_readme(path, text, README_MARKERS)


# -- figure -----------------------------------------------------------------------------------------
def curves(record: dict[str, Any]) -> dict[int, tuple[list[int], list[float]]]:
    """``{k: (steps, accuracy in %)}`` of a record's validation curve, for the instances the figure shows."""
    out: dict[int, tuple[list[int], list[float]]] = {}
    for point in record.get("validation") or []:
        for k in FIGURE_INSTANCES:
            value = (point.get("instances") or {}).get(str(k))
            if value is not None and isinstance(value[0], (int, float)):
                steps, ys = out.setdefault(k, ([], []))
                steps.append(point["step"])
                ys.append(100 * value[0])
    return out


def plot(records: list[dict[str, Any]], out: Path) -> Path:
    """The figure: per recorded run (its newest record), validation accuracy at the k-th instance against step."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    latest: dict[str, dict[str, Any]] = {}
    for r in records:
        latest[r["run_id"]] = r
    runs = [r for r in latest.values() if curves(r)]
    if not runs:
        raise RecordError("no record holds a validation curve with per-instance accuracies; record a sequence run that "
                          "has validated (`python benchmarks/sequence/runs.py eval RUN_DIR`) first")
    fig, axes = plt.subplots(1, len(runs), figsize=(max(7.0, 5.2 * len(runs)), 5.2), squeeze=False, sharey=True)
    cmap = plt.get_cmap("viridis")
    colors = {k: cmap(i / (len(FIGURE_INSTANCES) - 1)) for i, k in enumerate(FIGURE_INSTANCES)}
    for ax, r in zip(axes[0], runs):
        for k, (steps, ys) in curves(r).items():
            ax.plot(steps, ys, color=colors[k], marker="o", markersize=2.5, linewidth=1.4, label=f"{_ordinal(k)} instance")
            column = TABLE_INSTANCES.index(k)
            ax.axhline(PAPER["MANN"][column], color=colors[k], linestyle="--", linewidth=0.9, alpha=0.8)
            ax.axhline(PAPER["LSTM"][column], color=colors[k], linestyle=":", linewidth=0.9, alpha=0.8)
        t = r["training"]
        ax.axvline(t["checkpoint_step"], color="grey", linewidth=0.8, alpha=0.6)
        ax.set_title(f"{r['model']}: {r['run_id']}\n{t['label']} ({t['checkpoint_step'] * t['meta_batch']:,} episodes)",
                     fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylim(0, 100)
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("validation accuracy (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    handles += [Line2D([], [], color="black", linestyle="--", linewidth=0.9),
                Line2D([], [], color="black", linestyle=":", linewidth=0.9),
                Line2D([], [], color="grey", linewidth=0.8)]
    labels += ["MANN, Santoro et al. 2016 (final, test)", "LSTM, Santoro et al. 2016 (final, test)", "checkpoint recorded"]
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=4, frameon=False)
    fig.suptitle("Validation accuracy at the k-th instance of a class (benchmarks/sequence/runs.json)", fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# -- command line -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="runs.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("eval", help="evaluate a sequence run folder (finished or part-way) and append its record")
    e.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    e.add_argument("--metakit", help="the metakit executable (default: the one beside this Python, else on PATH)")
    e.add_argument("--episodes", type=_at_least_one, default=1000, help="fixed test episodes (default 1000)")
    e.add_argument("--checkpoint", default="best",
                   help="best (default: the best validation checkpoint), last (the newest step checkpoint) or a file")
    e.add_argument("--record", type=Path, default=RECORD, help="the record (default: runs.json beside this script)")
    t = sub.add_parser("table", help="print the table of the newest record of each model beside the paper's rows")
    t.add_argument("--readme", type=Path, help="write the table between the sequence-table markers of this file instead")
    t.add_argument("--record", type=Path, default=RECORD)
    f = sub.add_parser("plot", help="draw the recorded runs' per-instance validation curves")
    f.add_argument("--out", type=Path, default=FIGURE, help="the figure (default: docs/sequence_validation.png)")
    f.add_argument("--record", type=Path, default=RECORD)
    args = parser.parse_args(argv)
    try:
        if args.command == "eval":
            entry = evaluate(args.run_dir, _metakit_path(args.metakit), args.episodes, args.checkpoint, args.record, argv)
            res, t = entry["result"], entry["training"]
            shown = ", ".join(f"{_ordinal(int(k))} {_cell(d)}" for k, d in res["instances"].items())
            print(f"{entry['run_id']} ({t['label']}): accuracy {_cell({'mean': res['accuracy'], 'ci95': res['ci95']})} % "
                  f"over {res['episodes']} test episodes; {shown} % ({entry['checkpoint']['path']}, sha256 "
                  f"{entry['checkpoint']['sha256'][:12]}); recorded in {args.record}")
        elif args.command == "table":
            text = table(read_records(args.record))
            if args.readme:
                write_into_readme(args.readme, text)
            else:
                print(text)
        else:
            print(plot(read_records(args.record), args.out))
    except (RecordError, FileNotFoundError) as err:
        print(f"runs.py: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
