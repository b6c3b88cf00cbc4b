"""A machine-written record of trained meta-RL runs, and their table beside the classical references.

    python benchmarks/rl/record.py eval RUN_DIR [--metakit PATH] [--episodes 1000]
    python benchmarks/rl/record.py table [--readme README.md]

``eval`` scores a finished run folder of an RL task family with ``metakit eval RUN_DIR --split test
--episodes N --json`` (the run's ``eval.seed``: with seed 0 and 1,000 episodes, the fixed test tasks
``references.py run`` measures the classical references on) in a subprocess, and appends one record to
``runs.json`` beside this script: the run id (``NAME-<UTC start of training>``), the run's
``config.yaml`` and its sha256, the evaluated checkpoint's path and sha256, the result (mean return,
its 95% interval, the regret against the family's optimum and its interval, episodes, seed), the
training steps and seconds (``summary.json``) with the run's validation returns and the 10th, 50th
and 90th percentiles of its gradient norm before clipping (``metrics.jsonl``), the command, the
evaluation's seconds, the hardware (``metakit.bench.hardware()``), the date, and the git commit and
torch version of the metakit that evaluated. A folder that is no run, a run of a task family that is not RL, a run still training and a
failed evaluation are refused with the reason and no record.

``table`` prints the newest record of each run next to the newest reference record of the same
protocol in ``references.json`` (task family and its options, trial length, test tasks, seed) and
the numbers of Duan et al. 2016 (Table 1 for bandits, Table 2 for tabular MDPs) that
``references.py`` carries; where runs share a setting, each row names the ``algorithm.*`` options
that differ between them. ``--readme FILE`` writes the table between FILE's ``<!-- rl-table -->``
and ``<!-- /rl-table -->`` lines instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from metakit.bench import load_script

HERE = Path(__file__).resolve().parent


_references = load_script(HERE / "references.py", "rl_references")
# the run id, file digests and the --metakit lookup of the Omniglot runs' record, shared
_reproduce = load_script(HERE.parent / "omniglot" / "reproduce.py", "omniglot_reproduce")
sha256 = _reproduce.sha256
PAPER_BANDITS, PAPER_MDP = _references.PAPER_BANDITS, _references.PAPER_MDP  # Duan et al. 2016, Tables 1 and 2

RECORD = HERE / "runs.json"
REFERENCES = HERE / "references.json"
README_MARKERS = ("<!-- rl-table -->", "<!-- /rl-table -->")
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class RecordError(ValueError):
    """A run folder, an evaluation or a record that cannot be recorded or read; the message says why."""


# -- files ------------------------------------------------------------------------------------------
def run_id(run_dir: Path) -> str:
    """``NAME-<UTC start>`` as ``benchmarks/omniglot/reproduce.py`` names runs (``NAME-unknown`` without
    a readable ``metrics.jsonl``)."""
    found = _reproduce._run_id(run_dir)
    return f"{run_dir.name}-unknown" if found == "unknown" else found


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    if not isinstance(data, list):
        raise RecordError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def _append(path: Path, entry: dict[str, Any]) -> None:
    records = read_records(path)
    records.append(entry)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


# -- eval -------------------------------------------------------------------------------------------
def check_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's config and summary; :class:`RecordError` if it is no finished run of an RL family."""
    if not (run_dir / "config.yaml").is_file():
        raise RecordError(f"RUN_DIR {str(run_dir)!r} holds no config.yaml: not a run folder; give a folder made by "
                          "`metakit train ... --out RUN_DIR`")
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    family = (config.get("task") or {}).get("family") if isinstance(config, dict) else None
    from metakit.runtime.config import load_config

    try:
        kind = load_config(run_dir / "config.yaml").family.kind
    except (ValueError, OSError) as err:
        raise RecordError(f"RUN_DIR {str(run_dir)!r}: its config.yaml does not load ({err})") from err
    if kind != "rl":
        raise RecordError(f"RUN_DIR {str(run_dir)!r} is a run of task.family={family} ({kind} tasks), not of an RL "
                          "task family; this record holds meta-RL runs (bandits, tabular_mdp, ...)")
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        summary = None
    if not isinstance(summary, dict) or summary.get("status") not in ("finished", "interrupted", "stopped_early"):
        status = summary.get("status") if isinstance(summary, dict) else "missing"
        raise RecordError(f"RUN_DIR {str(run_dir)!r}: summary.json is {status!r}, not 'finished' (or 'interrupted', "
                          "'stopped_early'): the run is still "
                          "training, was killed or failed; record it when `metakit train` has finished "
                          "(or resume it with `metakit train --resume RUN_DIR`)")
    return config, summary


def _software(metakit: str) -> dict[str, str]:
    """What the ``metakit`` executable runs: its Python's torch version and the git commit (``-dirty`` with
    uncommitted changes) of its metakit package; "unknown" where that cannot be read."""
    out = {"metakit": metakit, "torch": "unknown", "git_commit": "unknown"}
    probe = "import metakit, os, torch; print(torch.__version__); print(os.path.dirname(metakit.__file__))"
    try:
        first = Path(metakit).read_bytes()[:200].split(b"\n", 1)[0].decode()
        python = first[2:].strip().split()[0] if first.startswith("#!") else sys.executable
        out["torch"], where = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=120,
                                             check=True).stdout.split()
        head = subprocess.run(["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True)
    except (OSError, UnicodeDecodeError, IndexError, ValueError, subprocess.SubprocessError):
        return out
    out["git_commit"] = head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    return out


def training_curves(run_dir: Path) -> dict[str, Any]:
    """From the run's ``metrics.jsonl``: ``validation``, the ``[step, return]`` of each validation, and
    ``grad_norm``, the 10th, 50th and 90th percentiles of the gradient norm before clipping over the
    logged training lines (empty where the run logged none)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out: dict[str, Any] = {"validation": [[r["step"], r["return"]] for r in rows
                                          if r.get("split") == "val" and "return" in r]}
    norms = sorted(r["grad_norm"] for r in rows if r.get("split") == "train" and isinstance(r.get("grad_norm"), (int, float)))
    if norms:
        out["grad_norm"] = {f"p{q}": norms[min(len(norms) - 1, len(norms) * q // 100)] for q in (10, 50, 90)}
        out["grad_norm"]["lines"] = len(norms)
    return out


def evaluate(run_dir: Path, metakit: str, episodes: int, record: Path, argv: list[str]) -> dict[str, Any]:
    """Evaluate ``run_dir`` with ``metakit eval --json`` and append its record to ``record``."""
    from metakit.bench import hardware

    run_dir = run_dir.expanduser().resolve()
    config, summary = check_run(run_dir)
    cmd = [metakit, "eval", str(run_dir), "--split", "test", "--episodes", str(episodes), "--json"]
    start = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **ONE_THREAD})
    seconds = time.perf_counter() - start
    try:
        result = json.loads(p.stdout)
    except json.JSONDecodeError:
        result = None
    if p.returncode != 0 or not isinstance(result, dict) or "return" not in result:
        tail = "\n".join(p.stderr.strip().splitlines()[-5:])
        raise RecordError(f"the evaluation `{shlex.join(cmd)}` exited with status {p.returncode} without a JSON "
                          f"result holding a return; nothing recorded. Its stderr ends:\n{tail}")
    checkpoint = run_dir / "checkpoints" / Path(result["checkpoint"]).name
    entry = {
        "run_id": run_id(run_dir),
        "run_dir": str(run_dir),
        "config": config,
        "config_sha256": sha256(run_dir / "config.yaml"),
        "checkpoint": {"path": str(checkpoint), "sha256": sha256(checkpoint), "step": result.get("step")},
        "result": {k: result.get(k) for k in ("algorithm", "task", "options", "split", "shots", "queries", "episodes",
                                              "seed", "return", "ci95", "optimal_return", "regret", "regret_ci95")
                   if k in result},
        "training": {"status": summary["status"], "steps": summary.get("step"), "seconds": summary.get("elapsed"),
                     "best": summary.get("best"), **training_curves(run_dir)},
        "command": {"record": shlex.join(["python", "benchmarks/rl/record.py", *argv]), "eval": shlex.join(cmd)},
        "eval_seconds": result.get("seconds"),
        "eval_wall_seconds": round(seconds, 3),
        "hardware": {**hardware(), "load_average": [round(x, 2) for x in os.getloadavg()]},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    software = _software(metakit)
    entry.update(git_commit=software.pop("git_commit"), evaluated_with=software)
    _append(record, entry)
    return entry


# -- table ------------------------------------------------------------------------------------------
def _same_protocol(ref: dict[str, Any], res: dict[str, Any]) -> bool:
    p = ref["protocol"]
    return (p["family"] == res.get("task") and p["options"] == res.get("options") and p["shots"] == res.get("shots")
            and res.get("queries") == res.get("shots") and p["tasks"] == res.get("episodes")
            and p["eval_seed"] == res.get("seed"))


def _paper(res: dict[str, Any]) -> dict[str, float] | None:
    """Duan et al.'s row of the run's setting, if the run's family options are those of the paper's."""
    from metakit.tasks.bandits import BanditFamily
    from metakit.tasks.tabular_mdp import TabularMDPFamily

    if res.get("queries") != res.get("shots"):
        return None
    if res.get("task") == "bandits":
        arms = (res.get("options") or {}).get("arms")
        if arms is not None and res["options"] == BanditFamily(BanditFamily.Options(arms=arms)).to_dict():
            return PAPER_BANDITS.get((arms, res["shots"]))
    if res.get("task") == "tabular_mdp" and res.get("options") == TabularMDPFamily(TabularMDPFamily.Options()).to_dict():
        return PAPER_MDP.get(res["shots"])
    return None


def _setting(res: dict[str, Any]) -> str:
    options = " ".join(f"{k}={v}" for k, v in (res.get("options") or {}).items())
    return f"{res.get('task')} {options} n={res.get('shots')}".replace("  ", " ")


def _differing_options(runs: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Per run id, the ``algorithm.*`` options (a missing one read as the algorithm's default) whose
    values differ between runs of the same setting, so that rows of one setting tell their configs apart."""
    from metakit.runtime.config_options import algorithm_option_specs

    def options(r: dict[str, Any]) -> dict[str, Any]:
        section = dict(r["config"].get("algorithm") or {})
        specs = algorithm_option_specs(section.pop("name"))
        return {**{k: spec.default for k, spec in specs.items() if not spec.required}, **section}

    out: dict[str, dict[str, str]] = {}
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(_setting(r["result"]), []).append(r)
    for group in groups.values():
        if len(group) < 2:
            continue
        opts = [options(r) for r in group]
        keys = sorted(k for k in set().union(*opts) if len({json.dumps(o.get(k)) for o in opts}) > 1)
        for r, o in zip(group, opts):
            out[r["run_id"]] = {f"algorithm.{k}": json.dumps(o.get(k)) for k in keys}
    return out


def _pm(mean: float, ci: float | None) -> str:
    return f"{mean:.2f}" if ci is None else f"{mean:.2f} ± {ci:.2f}"


def _duration(seconds: float | None) -> str:
    if not isinstance(seconds, (int, float)):
        return "time unknown"
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


NAMES = {"random": "random", "gittins": "Gittins", "thompson": "TS", "ucb1": "UCB1", "epsilon_greedy": "ε-greedy",
         "greedy": "greedy", "psrl": "PSRL", "optimal": "optimal (true MDP)"}
#: per task family: the measured reference columns (the optimum has its own column); the oracle ("optimal", which
#: plays the true MDP) is never the "best reference"
COLUMNS = {"bandits": ["gittins", "ucb1", "thompson"], "tabular_mdp": ["psrl", "random"]}
ORACLES = {"optimal"}


def table(records: list[dict[str, Any]], references: list[dict[str, Any]]) -> str:
    """One Markdown table per task family: the newest record of each run beside the references."""
    newest: dict[str, dict[str, Any]] = {}
    for r in records:
        newest[r["run_id"]] = r
    by_family: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(newest.values(), key=lambda r: (_setting(r["result"]), r["run_id"])):
        by_family.setdefault(r["result"]["task"], []).append(r)
    out: list[str] = []
    for family, runs in by_family.items():
        columns = COLUMNS.get(family, [])
        differing = _differing_options(runs)
        if out:
            out.append("")
        out += ["| setting | RL² (this run): return, regret | training | RL² (paper) | best reference (measured) | "
                + " | ".join(NAMES[c] for c in columns) + " | optimum |",
                "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in columns) + " | --- |"]
        for r in runs:
            res = r["result"]
            refs = [e for e in references if _same_protocol(e, res)]
            ref = refs[-1] if refs else None
            cell = _pm(res["return"], res["ci95"])
            if "regret" in res:
                cell += f", regret {_pm(res['regret'], res.get('regret_ci95'))}"
            cell += f" ({res['episodes']:,} tasks)"
            training = f"`{r['run_id']}`: {r['training']['steps']:,} steps, {_duration(r['training']['seconds'])}"
            training += "".join(f"; {k}={v}" for k, v in differing.get(r["run_id"], {}).items())
            paper = _paper(res)
            measured = ref["results"] if ref else {}
            players = {m: v for m, v in measured.items() if m not in ORACLES}
            if players:
                m = max(players, key=lambda m: players[m]["return"])
                best = f"{NAMES.get(m, m)}: {_pm(players[m]['return'], players[m]['ci95'])}"
            else:
                best = "not measured"
            cells = [_pm(measured[c]["return"], measured[c]["ci95"]) if c in measured else "not measured"
                     for c in columns]
            optimum = f"{res['optimal_return']:.2f}" if "optimal_return" in res else "—"
            out.append(f"| {_setting(res)} | {cell} | {training} | {paper['rl2'] if paper else '—'} | {best} | "
                       + " | ".join(cells) + f" | {optimum} |")
    if not out:
        return "No meta-RL run is recorded yet (`python benchmarks/rl/record.py eval RUN_DIR`)."
    out += ["", "Return: total reward of a trial of n episodes, mean ± 95% CI (1.96 * sample std / sqrt(tasks)) over "
            "the fixed test tasks; regret: the optimum's return minus the run's. References: the newest record of "
            "`benchmarks/rl/references.py run` on the same tasks (family options, n, tasks, seed); papers' numbers: "
            "Duan et al. 2016, Table 1 (bandits) and Table 2 (tabular MDPs)."]
    return "\n".join(out)


def write_into_readme(path: Path, text: str, markers: tuple[str, str] = README_MARKERS) -> None:
    """Replace what stands between the README's ``markers`` (``rl-table`` unless given) by ``text``."""
    content = path.read_text()
    begin, end = markers
    if content.count(begin) != 1 or content.count(end) != 1 or content.index(begin) > content.index(end):
        raise RecordError(f"--readme {str(path)!r}: expected one {begin} line followed by one {end} line around the "
                          "table; add them where the table belongs")
    head, rest = content.split(begin, 1)
    path.write_text(head + begin + "\n" + text + "\n" + end + rest.split(end, 1)[1])


# -- command line -----------------------------------------------------------------------------------
def _metakit_path(text: str | None) -> str:
    try:
        return _reproduce._metakit_path(text)
    except SystemExit as e:  # reproduce.py's refusal, as this script's error
        raise RecordError(str(e).removeprefix("reproduce.py: error: ")) from None


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="record.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("eval", help="evaluate a finished RL run folder and append its record")
    e.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    e.add_argument("--metakit", help="the metakit executable (default: the one beside this Python, else on PATH)")
    e.add_argument("--episodes", type=_at_least_one, default=1000,
                   help="test tasks (default 1000: those of the references' record)")
    e.add_argument("--record", type=Path, default=RECORD, help="the record (default: runs.json beside this script)")
    t = sub.add_parser("table", help="print the table of the recorded runs beside the references")
    t.add_argument("--readme", type=Path, help="write the table between the rl-table markers of this file instead")
    t.add_argument("--record", type=Path, default=RECORD)
    t.add_argument("--references", type=Path, default=REFERENCES)
    args = parser.parse_args(argv)
    try:
        if args.command == "eval":
            entry = evaluate(args.run_dir, _metakit_path(args.metakit), args.episodes, args.record, argv)
            res = entry["result"]
            print(f"{entry['run_id']}: return {_pm(res['return'], res['ci95'])} over {res['episodes']} test tasks "
                  f"({entry['checkpoint']['path']}, sha256 {entry['checkpoint']['sha256'][:12]}); recorded in {args.record}")
        else:
            text = table(read_records(args.record), read_records(args.references))
            if args.readme:
                write_into_readme(args.readme, text)
            else:
                print(text)
    except (RecordError, FileNotFoundError) as err:
        print(f"record.py: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
