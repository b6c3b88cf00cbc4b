"""Train, evaluate and record the Omniglot runs of ``runs.yaml``; print the README's results table.

    python benchmarks/omniglot/reproduce.py --runs ~/runs/repro                  # every run of the list
    python benchmarks/omniglot/reproduce.py --runs ~/runs/repro maml_5w1s anil_5w1s
    python benchmarks/omniglot/reproduce.py --runs ~/runs/repro --dry-run        # say what it would do
    python benchmarks/omniglot/reproduce.py --runs ~/runs/repro --only-eval nearest
    python benchmarks/omniglot/reproduce.py --table                              # the README table
    python benchmarks/omniglot/reproduce.py --table --readme README.md           # ... written into it

For each named run (all of the list by default), in the order given:

1. Training (skipped with ``--only-eval``). ``DIR/NAME`` absent: ``metakit train CONFIG OVERRIDES
   --out DIR/NAME``. Present and ended (``summary.json``) as ``finished`` at or beyond the list's
   ``train.steps``, or stopped early (``train.patience``: so many validations in a row no better
   than the best) with at least the list's patience: nothing. Otherwise: ``metakit train --resume DIR/NAME
   train.steps=N [train.patience=P]`` (the list's; ``null`` if the list sets none and the run has one),
   so a raised budget extends a finished run, a raised or removed patience a run stopped early,
   and an interrupted or killed run continues.
   Training runs with one thread (``run.num_threads=1``, ``OMP_NUM_THREADS=1``): start one
   process per core, each with its own run names, to use several cores. ``--minutes M`` stops
   each training command after M minutes (as Ctrl-C does: the run writes its checkpoint), then
   evaluates and records that run as ``interrupted`` and goes on to the next: on a small machine,
   several runs each get a share of the time, and the same command later continues them.
   A run with ``trained_as: OTHER`` trains nothing: it evaluates the folder ``DIR/OTHER`` of an
   earlier run of the list (with other evaluation-time options, for example). A name under the
   list's ``retired`` (a former run, with the reason) is refused, the reason given; its records
   stay in ``results.json``, out of the table.
2. Evaluation of each listed setting with ``metakit eval DIR/NAME ... --json`` (one thread; an
   evaluation's ``options`` are passed as ``--option KEY=VALUE``: the algorithm's evaluation-time
   options),
   unless the record already holds an evaluation of that setting with the same run, config
   digest, checkpoint digest, steps and evaluation parameters (so re-running is safe and cheap).
3. Right after each evaluation, one record is appended to ``results.json`` (under a file lock:
   parallel processes may share it): the result, the run id, sha256 digests of the run's
   ``config.yaml`` and of the evaluated checkpoint file, the exact commands, training and
   evaluation seconds, steps trained and best step, hardware (CPU model, cores, load average,
   torch version and build), date, the git commit of the metakit code that ran, and the run's
   learning curves up to the evaluated step (every validation; the training loss at up to 100
   points), so that whether a run had converged is read from the record alone.

``--status`` trains and evaluates nothing: per run, the steps logged in ``DIR/NAME`` against the
list's budget, whether a process is training it now (else: finished, stopped early, or stopped), its
seconds per step so far, the training time the rest of its budget needs at that pace (none for a run
stopped early), and the steps of its newest record.

``--add-curves`` trains and evaluates nothing: it adds the curves of ``DIR/NAME`` to that run's
records written without them, where the folder is the recorded run (same run id and config digest).

A run folder is trained on and evaluated only if its ``config.yaml`` is what the list's entry
trains (its config file with its overrides, as metakit resolves them; the keys a resume may change
and the data path aside): otherwise the run fails, naming each key that differs, and nothing is
run or recorded for it. Run folders made by ``metakit train`` outside this script are adopted on
that condition (their record says so: the command that started them is unknown). Progress goes to ``DIR/NAME.log``, the train
commands run for a folder to ``DIR/NAME.commands.jsonl`` and each evaluation's JSON to
``DIR/NAME.eval.<W>w<S>s.json``. The exit status is 1 if any step failed (the others still ran).
Ctrl-C stops after the running command, which stops by itself (a training writes its checkpoint
first; exit status 130); running the same command again continues where it stopped.

``--table`` prints the README's Omniglot table from the record (and, under it, the convergence of
every run whose record holds curves): per run and setting, the latest
record. Records whose status is ``unrecorded`` (figures transcribed by hand, with no run folder or
evaluation output behind them) are printed with "(unrecorded)"; ``partial`` ones (a ``metakit eval
--json`` result read from a run folder before digests and commands were recorded) with "*". A
``recorded`` cell whose 95% interval reaches its paper's number is printed in bold, and a line under
the table lists those cells and the rows reproduced in every setting with a paper's number.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import hashlib
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RUN_LIST = HERE / "runs.yaml"
RECORD = HERE / "results.json"
RECORD_FORMAT = 2
STATUSES = ("recorded", "partial", "unrecorded")
EVAL_FIELDS = ("split", "ways", "shots", "queries", "episodes", "seed")
# config keys that may differ between a run folder and the list: a resume may change them
# (metakit.runtime.run.RESUMABLE_KEYS), or they are paths of the machine that trained the run
MACHINE_KEYS = ("task.root", "task.cache_dir")
ENDED = ("finished", "interrupted", "stopped_early")  # summary.json statuses of a training that ended cleanly
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class ListError(ValueError):
    """The run list or the record is malformed."""


# -- the run list -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Evaluation:
    split: str
    ways: int
    shots: int
    queries: int
    episodes: int
    seed: int
    options: dict[str, Any] = field(default_factory=dict)  # evaluation-time options of the algorithm

    @property
    def setting(self) -> str:
        return f"{self.ways}w{self.shots}s"

    def params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in EVAL_FIELDS}

    def matches(self, result: dict[str, Any]) -> bool:
        """Whether an evaluation's result (``metakit eval --json``) was made with these settings."""
        return all(result.get(k) == v for k, v in self.params().items()) and result.get("options", {}) == self.options


@dataclass(frozen=True)
class Run:
    name: str
    family: str
    method: str
    config: str
    overrides: tuple[str, ...]
    evaluations: tuple[Evaluation, ...]
    paper: dict[str, float] = field(default_factory=dict)
    paper_source: str | None = None
    trained_as: str | None = None  # another run of the list whose folder this one evaluates (it trains none)

    @property
    def folder(self) -> str:
        """The name of the run folder under ``--runs`` that this run trains and evaluates."""
        return self.trained_as or self.name

    def _override(self, key: str) -> Any:
        """The value (YAML) of the override ``key=...``, ``None`` if the list gives none."""
        value = dict(o.split("=", 1) for o in self.overrides).get(key)
        return None if value is None else yaml.safe_load(value)

    @property
    def steps(self) -> int:
        return int(self._override("train.steps"))

    @property
    def patience(self) -> int | None:
        """The list's ``train.patience`` (early stopping), ``None`` if it sets none."""
        return self._override("train.patience")


@dataclass(frozen=True)
class RunList:
    columns: tuple[str, ...]
    runs: dict[str, Run]
    defaults: dict[str, Any] = field(default_factory=dict)  # the list's `evaluation` defaults
    retired: dict[str, str] = field(default_factory=dict)  # names of former runs the record still holds -> why


def _need(cond: bool, where: str, message: str) -> None:
    if not cond:
        raise ListError(f"{where}: {message}")


def load_run_list(path: Path = RUN_LIST) -> RunList:
    """Read and check ``runs.yaml``: every error names the run and the field."""
    raw = yaml.safe_load(Path(path).read_text())
    where = str(path)
    _need(isinstance(raw, dict) and {"columns", "evaluation", "runs"} <= set(raw) <= {"columns", "evaluation", "runs", "retired"},
          where, f"expected the keys columns, evaluation, runs[, retired]; got {sorted(raw) if isinstance(raw, dict) else raw!r}")
    columns = tuple(raw["columns"])
    defaults = raw["evaluation"]
    _need(isinstance(defaults, dict) and set(defaults) <= set(EVAL_FIELDS), f"{where}: evaluation",
          f"keys must be among {', '.join(EVAL_FIELDS)}; got {defaults!r}")
    runs: dict[str, Run] = {}
    for name, body in raw["runs"].items():
        at = f"{where}: run {name!r}"
        _need(isinstance(body, dict), at, f"expected a mapping, got {body!r}")
        if "trained_as" in body:  # the folder, config and overrides of an earlier run of the list
            other = runs.get(body["trained_as"])
            _need(other is not None and other.trained_as is None, f"{at}: trained_as",
                  f"name a run listed above it that trains its own folder; got {body['trained_as']!r}")
            _need(set(body) <= {"family", "method", "trained_as", "evaluate", "paper"} and
                  {"family", "method", "evaluate"} <= set(body), at,
                  f"a run trained as another has the keys family, method, trained_as, evaluate[, paper] (its config and "
                  f"overrides are the other's); got {sorted(body)}")
            body = {**body, "config": other.config, "overrides": list(other.overrides)}
        allowed = {"family", "method", "config", "overrides", "evaluate", "paper", "trained_as"}
        _need(set(body) <= allowed and {"family", "method", "config", "overrides", "evaluate"} <= set(body), at,
              f"keys must be family, method, config, overrides, evaluate[, paper, trained_as]; got {sorted(body)}")
        overrides = tuple(body["overrides"])
        _need(all(isinstance(o, str) and "=" in o for o in overrides), f"{at}: overrides",
              f"each override is 'section.key=value'; got {list(overrides)}")
        steps = [o for o in overrides if o.startswith("train.steps=")]
        _need(len(steps) == 1 and steps[0].split("=", 1)[1].isdigit() and int(steps[0].split("=", 1)[1]) > 0,
              f"{at}: overrides", f"state the budget exactly once as train.steps=N (N >= 1); got {list(overrides)}")
        patience = [o.split("=", 1)[1] for o in overrides if o.startswith("train.patience=")]
        _need(len(patience) <= 1 and all(p == "null" or (p.isdigit() and int(p) >= 1) for p in patience),
              f"{at}: overrides", f"train.patience=P is given at most once, P an int >= 1 or null; got {list(overrides)}")
        evaluations = []
        for e in body["evaluate"]:
            _need(isinstance(e, dict) and set(e) <= {*EVAL_FIELDS, "options"}, f"{at}: evaluate",
                  f"each evaluation is a mapping of {', '.join(EVAL_FIELDS)}[, options]; got {e!r}")
            options = e.get("options", {})
            _need(isinstance(options, dict) and all(isinstance(k, str) and isinstance(v, (int, float, str))
                                                    and not isinstance(v, bool) for k, v in options.items()),
                  f"{at}: evaluate", f"options maps option names to numbers or strings; got {options!r}")
            merged = {**defaults, **{k: v for k, v in e.items() if k != "options"}}
            _need(set(merged) == set(EVAL_FIELDS), f"{at}: evaluate", f"{e!r} lacks {sorted(set(EVAL_FIELDS) - set(merged))}")
            for k in ("ways", "shots", "queries", "episodes"):
                _need(isinstance(merged[k], int) and merged[k] >= 1, f"{at}: evaluate", f"{k} must be an int >= 1, got {merged[k]!r}")
            evaluations.append(Evaluation(**merged, options=dict(options)))
        settings = [e.setting for e in evaluations]
        _need(len(set(settings)) == len(settings), f"{at}: evaluate", f"a setting is listed twice: {settings}")
        paper = dict(body.get("paper") or {})
        source = paper.pop("source", None)
        _need(set(paper) <= set(settings), f"{at}: paper", f"numbers for settings not evaluated: {sorted(set(paper) - set(settings))}")
        _need(not paper or bool(source), f"{at}: paper", "give the source of the papers' numbers (source: 'Author year, Table N')")
        runs[name] = Run(name, str(body["family"]), str(body["method"]), str(body["config"]), overrides,
                         tuple(evaluations), paper, source, body.get("trained_as"))
    retired = raw.get("retired") or {}
    _need(isinstance(retired, dict) and all(isinstance(v, str) and v.strip() for v in retired.values()),
          f"{where}: retired", f"map each former run's name to why it is no longer run; got {retired!r}")
    _need(not set(retired) & set(runs), f"{where}: retired",
          f"a retired name is also a run: {sorted(set(retired) & set(runs))}; keep it under runs or under retired, not both")
    return RunList(columns, runs, dict(defaults), {str(k): v.strip() for k, v in retired.items()})


# -- the record -------------------------------------------------------------------------------------
def read_record(path: Path = RECORD) -> list[dict[str, Any]]:
    """The records of ``results.json``, oldest first."""
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT:
        raise ListError(
            f"{path}: not a results record of format {RECORD_FORMAT} (a mapping with 'format': {RECORD_FORMAT} and "
            "'records': [...]); a record of the older {'runs': {...}} form was converted once, in the repository's "
            "results.json: start from that file"
        )
    return data["records"]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock = path.with_name(path.name + ".lock")
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write_record(path: Path, records: list[dict[str, Any]]) -> None:
    """Replace ``path`` by ``records`` atomically (the caller holds the lock)."""
    tmp = path.with_name(path.name + ".tmp")
    text = json.dumps({"format": RECORD_FORMAT, "records": records}, indent=1, ensure_ascii=False, sort_keys=True)
    tmp.write_text(_NUMBER_LIST.sub(lambda m: "[" + " ".join(m.group(1).split()) + "]", text) + "\n")
    os.replace(tmp, path)


# a list of numbers that json.dumps(indent=...) spread over lines (a curve's point): written on one line
_NUMBER = r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
_NUMBER_LIST = re.compile(rf"\[\n *((?:{_NUMBER},\n *)*{_NUMBER})\n *\]")  # raw newlines: never inside a JSON string


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one record to ``path`` atomically, under an exclusive lock."""
    with _locked(path):
        records = read_record(path)
        records.append(record)
        _write_record(path, records)


def latest(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The newest record of every (run, setting)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in records:
        out[(r["run"], r["setting"])] = r
    return out


# -- the table --------------------------------------------------------------------------------------
def _minutes(r: dict[str, Any]) -> float | None:
    if isinstance(r.get("train_seconds"), (int, float)):
        return r["train_seconds"] / 60
    if isinstance(r.get("train_minutes"), (int, float)):
        return r["train_minutes"]
    return None


def budget_share(trained: int, budget: int) -> str:
    """``trained`` as a share of ``budget``, rounded down (99.6% of a budget is not 100%): one decimal under 10%."""
    pct = 100 * trained / budget
    return f"{math.floor(pct * 10) / 10:.1f}%" if pct < 10 else f"{math.floor(pct)}%"


def _of_run(newest: dict[tuple[str, str], dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """The newest record of each setting run ``name`` was evaluated in."""
    return [r for (n, _), r in newest.items() if n == name]


def _longest(recs: list[dict[str, Any]]) -> dict[str, Any]:
    """The record of the longest training among ``recs`` (a record without a step count counts as shortest)."""
    return max(recs, key=lambda x: x["steps"] if isinstance(x["steps"], int) else -1)


def _training(name: str, recs: list[dict[str, Any]], budget: int) -> str:
    if not recs:
        return f"`{name}`: not run yet (budget {budget:,} steps)"
    r = _longest(recs)
    trained = r["steps"] if isinstance(r["steps"], int) else None
    if trained is None or trained > budget:  # a record of a longer run than the list now asks for
        steps = f"{r['steps']:,} steps" if trained is not None else f"{r['steps']} steps"
    else:
        share = "" if trained == budget else f" ({budget_share(trained, budget)})"
        steps = f"{trained:,} of {budget:,} steps{share}"
    parts = [r["training"]["episodes"], steps]
    minutes = _minutes(r)
    if minutes is not None:
        parts.append(f"{minutes:.0f} min")
    if r["training"]["status"] == "stopped_early":
        early = r["training"].get("stopped_early") or {}
        parts.append(f"stopped early (best validation at step {early['best_step']:,}, none better in the "
                     f"{early.get('validations_since_best', '?')} after it)" if isinstance(early.get("best_step"), int)
                     else "stopped early")
    elif r["training"]["status"] != "finished":
        parts.append(r["training"]["status"])
    return f"`{name}`: " + ", ".join(parts)


def reaches_paper(r: dict[str, Any] | None, paper: float | None) -> bool:
    """A machine-recorded result whose 95% interval reaches the paper's number: mean + ci95 >= paper,
    in %, the upper end rounded to the decimals the paper prints (96.0: one, 99.07: two). Transcribed
    (``unrecorded``) and ``partial`` records never count."""
    if r is None or paper is None or r["status"] != "recorded":
        return False
    res = r["result"]
    return round(100 * (res["accuracy"] + res["ci95"]), _decimals(paper)) >= paper


def _decimals(paper: float) -> int:
    """How many decimals a paper's number was written with (96.0: 1, 99.07: 2)."""
    return len(repr(float(paper)).partition(".")[2])


def _mean_ci(r: dict[str, Any]) -> str:
    """A record's accuracy and 95% interval in percent, one decimal each."""
    return f"{100 * r['result']['accuracy']:.1f} ± {100 * r['result']['ci95']:.1f}"


def _against(r: dict[str, Any], paper: float) -> str:
    """A record's result against a paper's number, as the legend under the table writes it."""
    return f"{_mean_ci(r)} against {paper:.{_decimals(paper)}f}"


MISS_ORDER = (
    "short at the full budget or stopped early (docs/reproduction.md compares each with its paper's setup)",
    "short of its paper with part of the budget trained",
    "no machine-written record (transcribed or partial)",
    "no result yet (not run, or the setting not evaluated)",
)


def _miss(r: dict[str, Any] | None, paper: float, budget: int) -> tuple[str, str]:
    """Why the cell of record ``r`` does not reproduce ``paper`` -- one of :data:`MISS_ORDER`, judged by the
    training behind that record (its steps against ``budget``, whether it stopped early) -- and the cell's
    result against the paper (none without a result), with the share of the budget where that is the reason."""
    if r is None:
        return MISS_ORDER[3], ""
    result = _against(r, paper)
    if r["status"] != "recorded":
        return MISS_ORDER[2], result
    steps = r["steps"]
    if not isinstance(steps, int):
        return MISS_ORDER[1], f"{result}, steps unknown"
    if steps >= budget or r["training"]["status"] == "stopped_early":
        return MISS_ORDER[0], result
    return MISS_ORDER[1], f"{result}, {budget_share(steps, budget)} of the budget"


def _cell(r: dict[str, Any] | None, steps: int | None, reproduced: bool = False,
          defaults: dict[str, Any] | None = None) -> str:
    """A table cell: the result, and notes where it departs from the list's evaluation ``defaults``."""
    if r is None:
        return "not run"
    res = r["result"]
    defaults = defaults or {}
    cell = _mean_ci(r)
    if reproduced:
        cell = f"**{cell}**"
    notes = []
    if res["episodes"] != defaults.get("episodes", 1000):
        notes.append(f"{res['episodes']:,} episodes")
    queries = res.get("queries")
    if isinstance(queries, int) and queries != defaults.get("queries", queries):
        notes.append(f"{queries} quer{'y' if queries == 1 else 'ies'} per class")
    if steps is not None and r["steps"] != steps:
        notes.append(f"after {r['steps']:,} steps")
    if r["status"] == "unrecorded":
        notes.append("unrecorded")
    cell += f" ({', '.join(notes)})" if notes else ""
    return cell + ("*" if r["status"] == "partial" else "")


def table_lines(run_list: RunList, records: list[dict[str, Any]]) -> list[str]:
    """The README's Omniglot table (and its legend) from the record."""
    newest = latest(records)
    cols = run_list.columns
    rows: dict[str, list[Run]] = {}
    for run in run_list.runs.values():
        rows.setdefault(run.method, []).append(run)
    lines = [
        "| family | method | training runs (episodes x meta-batch, steps of the list's budget, training time) | " + " | ".join(cols)
        + f" | papers ({' / '.join(cols)}) |",
        "| --- | --- | --- | " + " | ".join("---" for _ in cols) + " | --- |",
    ]
    compared: list[tuple[str, str, dict[str, Any] | None, float, bool]] = []  # method, setting, record, paper, reached
    misses: dict[str, list[str]] = {}  # why a cell with a paper's number is not reproduced -> the cells
    for method, runs in rows.items():
        by_setting = {e.setting: run for run in runs for e in run.evaluations}
        run_recs = {run.name: _of_run(newest, run.name) for run in runs}
        steps = {n: max((r["steps"] for r in rs if isinstance(r["steps"], int)), default=None) for n, rs in run_recs.items()}
        training = "; ".join(_training(run.name, run_recs[run.name], run.steps) if not run.trained_as else
                             f"`{run.name}`: the run of `{run.trained_as}`" for run in runs)
        cells = []
        for c in cols:
            if c not in by_setting:
                cells.append("—")  # no run of the row is meant for this setting
                continue
            run, r = by_setting[c], newest.get((by_setting[c].name, c))
            ok = reaches_paper(r, run.paper.get(c))
            cells.append(_cell(r, steps[run.name], ok, run_list.defaults))
            if c in run.paper:
                compared.append((method, c, r, run.paper[c], ok))
                if not ok:
                    why, what = _miss(r, run.paper[c], run_list.runs[run.folder].steps)
                    misses.setdefault(why, []).append(f"`{run.name}` {c}" + (f" ({what})" if what else ""))
        papers = [f"{by_setting[c].paper[c]:.{_decimals(by_setting[c].paper[c])}f}" if c in by_setting and c in by_setting[c].paper else "—" for c in cols]
        paper = "—" if all(p == "—" for p in papers) else " / ".join(papers)
        lines.append(f"| {runs[0].family} | {method} | {training} | " + " | ".join(cells) + f" | {paper} |")
    lines.append("")
    sources: dict[str, list[str]] = {}
    for run in run_list.runs.values():
        if run.paper_source:
            sources.setdefault(run.paper_source, []).append(f"`{run.name}`")
    hits = [f"{m} {c} ({_against(r, p)})"
            for m, c, r, p, ok in compared if ok and r is not None]
    by_method: dict[str, list[bool]] = {}
    for m, _, _, _, ok in compared:
        by_method.setdefault(m, []).append(ok)
    whole = [m for m, oks in by_method.items() if all(oks)]
    lines.append("**Bold**: reproduced -- a machine-written record whose 95% interval reaches the paper's number "
                 "(mean + interval, rounded to the decimals the paper prints, >= paper). Reproduced cells: " + ("; ".join(hits) if hits else "none")
                 + f" ({len(hits)} of the {len(compared)} cells with a paper's number). Rows reproduced in every "
                 "setting with a paper's number: " + (", ".join(whole) if whole else "none") + ".")
    if misses:
        lines.append("")
        lines.append("Not reproduced, by what the record says: " + "; ".join(
            f"**{why}**: {', '.join(cells)}" for why, cells in sorted(misses.items(), key=lambda kv: MISS_ORDER.index(kv[0]))) + ".")
    lines += trained_lines(run_list, newest)
    lines += budget_lines(run_list, newest)
    lines.append("")
    lines.append("Papers' numbers: " + "; ".join(f"{', '.join(n)}: {s}" for s, n in sources.items()) + ".")
    shown = {r["status"] for r in newest.values()}
    if "unrecorded" in shown:
        lines += ["", "(unrecorded): a figure transcribed by hand from an earlier results table, with no run folder, "
                  "evaluation output or digest behind it; it stays marked until a recorded run replaces it."]
    if "partial" in shown:
        lines += ["", "*: the output of `metakit eval --json`, read from its run folder before commands, digests and "
                  "hardware were recorded; `results.json` holds the result, steps and training time, and marks "
                  "the rest unknown."]
    return lines + convergence_lines(run_list, records)


def _budget_done(run: Run, r: dict[str, Any]) -> bool:
    """Whether the record ``r`` of ``run`` trained the list's whole budget or stopped early."""
    return isinstance(r["steps"], int) and (r["steps"] >= run.steps or r["training"]["status"] == "stopped_early")


def trained_lines(run_list: RunList, newest: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """The training time behind the table: each run's longest training on record, summed over the runs
    that train their own folder; how many of them trained their whole budget (or stopped early), and
    the range of minutes and steps of the others. Runs whose records hold no training minutes are
    named. Nothing when no run has a record."""
    hours, runs, whole, unknown = 0.0, 0, 0, []
    part: list[tuple[float, int]] = []  # minutes and steps of the runs short of their budget
    for run in run_list.runs.values():
        recs = _of_run(newest, run.name)
        if run.trained_as or not recs:
            continue
        r = _longest(recs)
        runs += 1
        steps, minutes = r["steps"], _minutes(r)
        done = _budget_done(run, r)
        whole += done
        if minutes is None or r["status"] == "unrecorded":
            unknown.append(f"`{run.name}`")
            continue
        hours += minutes / 60
        if not done and isinstance(steps, int):
            part.append((minutes, steps))
    if not runs:
        return []
    line = (f"**Training on record**: {hours:,.1f} h of one CPU thread in all, over the {runs} run{'s' if runs != 1 else ''} "
            f"with a record (each run's longest training on record), {whole} of {runs} at their whole budget or "
            "stopped early")
    if part:
        (m0, m1), (s0, s1) = ((min(x), max(x)) for x in zip(*part))
        line += (f"; the other {runs - whole} trained {m0:.0f} to {m1:.0f} minutes each ({s0:,} to {s1:,} steps)"
                 if len(part) > 1 else f"; the other trained {m0:.0f} minutes ({s0:,} steps)")
    if unknown:
        line += f"; without recorded minutes: {', '.join(unknown)}"
    return ["", line + "."]


def budget_lines(run_list: RunList, newest: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """The training time the rest of each run's budget needs at the pace its record shows (its training
    minutes over its steps trained, validations included): per run short of its budget and not stopped
    early, largest first, and in all. Transcribed records, and records without steps or minutes, give no
    pace; their runs are named as such. Runs without a record are left out (their cells say "not run")."""
    rest: list[tuple[float, str]] = []
    unknown: list[str] = []
    for run in run_list.runs.values():
        recs = _of_run(newest, run.name)
        if run.trained_as or not recs:
            continue
        r = _longest(recs)
        steps, minutes = r["steps"], _minutes(r)
        if _budget_done(run, r):
            continue
        if r["status"] == "unrecorded" or not isinstance(steps, int) or steps <= 0 or minutes is None:
            unknown.append(f"`{run.name}`")
            continue
        rest.append(((run.steps - steps) * minutes / steps / 60, run.name))
    if not rest and not unknown:
        return []
    rest.sort(key=lambda x: -x[0])
    total = sum(h for h, _ in rest)
    parts = []
    if rest:
        parts.append("each at its run's recorded pace (training minutes over steps trained, validations included): "
                     + ", ".join(f"`{n}` {h:,.1f} h" for h, n in rest)
                     + f"; {total:,.1f} h in all, {total / 24:,.1f} days of one CPU thread")
    if unknown:
        parts.append(f"of unknown pace (a transcribed record, or no steps or minutes recorded): {', '.join(unknown)}")
    line = "**The rest of the budgets**, " + "; ".join(parts)
    return ["", line + "."]


def _quarters(points: list[list[float]], steps: int) -> tuple[list[list[float]], list[list[float]]]:
    """The points up to 75% of ``steps`` and those after."""
    return [p for p in points if p[0] <= 0.75 * steps], [p for p in points if p[0] > 0.75 * steps]


def convergence(curves: dict[str, Any], steps: int) -> dict[str, Any]:
    """Whether a run's validation had levelled off when it stopped, from its record's curves.

    ``before`` / ``after``: the best validation (``[step, elapsed, accuracy, ci95]``) up to 75% of the
    steps trained / after it; ``verdict``: ``rising`` if the later best exceeds the earlier one by more
    than its 95% interval, ``past its best`` if it falls short of it by more than the earlier one's,
    else ``level`` (``None`` without a validation on both sides). ``loss``: the mean training loss over
    the third and over the last quarter of the steps (``None`` where a quarter has no point)."""
    early, late = _quarters(curves["val"], steps)
    before = max(early, key=lambda p: p[2], default=None)
    after = max(late, key=lambda p: p[2], default=None)
    verdict = None
    if before is not None and after is not None:
        gain = after[2] - before[2]
        verdict = "rising" if gain > after[3] else "past its best" if -gain > before[3] else "level"
    third = [p[2] for p in curves["train"] if 0.5 * steps < p[0] <= 0.75 * steps]
    last = [p[2] for p in curves["train"] if p[0] > 0.75 * steps]
    loss = tuple(sum(q) / len(q) if q else None for q in (third, last))
    return {"before": before, "after": after, "verdict": verdict, "loss": loss}


def convergence_lines(run_list: RunList, records: list[dict[str, Any]]) -> list[str]:
    """The README's convergence table: per run of the list whose newest record holds curves, where its
    validation stood at 75% of its steps and at the end, and its training loss over the last two quarters."""
    rows = []
    for run in run_list.runs.values():
        r = newest_with_curves(records, run.name)
        if r is None or run.trained_as:  # a run trained as another has that one's curves
            continue
        c = convergence(r["curves"], r["steps"])

        def acc(p: list[float] | None) -> str:
            return "—" if p is None else f"{100 * p[2]:.1f} ± {100 * p[3]:.1f} (step {p[0]:,})"

        episodes = r["curves"]["val_episodes"]
        loss = " → ".join("—" if x is None else f"{x:.3g}" for x in c["loss"])
        rows.append(f"| `{run.name}` | {r['steps']:,} of {run.steps:,} | "
                    + (f"{episodes} episodes, {_spacing(r['curves']['val'])}" if episodes else "none")
                    + f" | {acc(c['before'])} | {acc(c['after'])} | {c['verdict'] or '—'} | {loss} |")
    if not rows:
        return []
    return [
        "",
        "**Convergence** (from the learning curves in each run's newest record; validation on the `val` split in "
        "the run's `eval` setting, not the test episodes of the table): the best validation accuracy up to 75% of "
        "the steps trained and after it. *rising*: the later best is above the earlier one by more than its 95% "
        "interval (the run had not converged); *past its best*: below it by more than the earlier one's; else "
        "*level*. The training loss is the mean over the third and over the last quarter of the steps of the "
        f"logged values the record keeps (at most {TRAIN_POINTS}, evenly spread).",
        "",
        "| run | steps trained | validation | best up to 75% of the steps | best after | verdict | training loss, 3rd → 4th quarter |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *rows,
    ]


def _spacing(val: list[list[float]]) -> str:
    """How often a run validated: ``every N steps``, the most common step gap between its
    validations, or ``once (step N)`` for a single validation."""
    gaps = [b[0] - a[0] for a, b in zip(val, val[1:])]
    if not gaps:
        return f"once (step {int(val[0][0]):,})"
    common = max(set(gaps), key=gaps.count)
    return f"every {common:,} steps"


# -- status -----------------------------------------------------------------------------------------
def _training_now(run_dir: Path) -> bool:
    """Whether the process the run folder's ``.lock`` record names lives on this host and still runs
    the recorded command (its arguments, as ``/proc`` shows them where it can: a reused pid does not)."""
    lock = _read_json(run_dir / ".lock")
    if not lock or lock.get("host") != platform.node() or not isinstance(lock.get("pid"), int):
        return False
    try:
        os.kill(lock["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        args = Path(f"/proc/{lock['pid']}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return True  # alive, and no /proc to tell more
    if not any(args):
        return True  # alive, its arguments not readable (a process in the middle of starting shows none)
    # metakit's lock records "metakit ARGS..." joined by spaces (and cut after 300 characters): the
    # process's own arguments, joined the same way, must contain it
    recorded = str(lock.get("command", "")).partition(" ")[2]
    return recorded in " ".join(a for a in args if a)


def _last_logged(run_dir: Path) -> tuple[int, float] | None:
    """``(step, elapsed seconds)`` of the last readable line of the run's ``metrics.jsonl``."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        with contextlib.suppress(json.JSONDecodeError, KeyError, TypeError, ValueError):
            m = json.loads(line)
            return int(m["step"]), float(m["elapsed"])
    return None


def _stopped_for_good(run: Run, summary: dict[str, Any] | None) -> bool:
    """The run stopped early (``train.patience``) with a patience no smaller than the list's now (a
    smaller one would have stopped it no later; a larger one, or none, trains it on)."""
    if not summary or summary.get("status") != "stopped_early":
        return False
    patience = (summary.get("stopped_early") or {}).get("patience")
    return run.patience is not None and isinstance(patience, int) and patience >= run.patience


def status_lines(run_list: RunList, records: list[dict[str, Any]], runs_dir: Path, names: list[str]) -> list[str]:
    """Per run: steps logged against the list's budget, training now or not, seconds per step so far,
    the training time the rest of the budget needs at that pace, and the steps of its newest record."""
    newest = latest(records)
    lines = ["| run | steps logged / budget | state | s per step | rest of the budget | newest record |",
             "| --- | --- | --- | --- | --- | --- |"]
    total, unstarted = 0.0, 0
    for name in names:
        run = run_list.runs[name]
        d = runs_dir / run.folder
        recorded = max((r["steps"] for r in _of_run(newest, name) if isinstance(r["steps"], int)), default=None)
        rec = "none" if recorded is None else f"{recorded:,} steps"
        last = _last_logged(d) if d.exists() else None
        if last is None:
            unstarted += 1
            lines.append(f"| `{name}` | 0 / {run.steps:,} | {'no run folder' if not d.exists() else 'nothing logged'} | — | — | {rec} |")
            continue
        step, elapsed = last
        summary = _read_json(d / "summary.json") or {}
        state = "training" if _training_now(d) else ("finished" if summary.get("status") == "finished" and
                                                       summary.get("step", 0) >= run.steps else
                                                       "stopped early" if _stopped_for_good(run, summary) else "stopped")
        pace = elapsed / step if step > 0 else None
        rest = 0.0 if state == "stopped early" else max(0, run.steps - step) * pace if pace is not None else None
        total += rest or 0.0
        lines.append(f"| `{name}` | {step:,} / {run.steps:,} | {state} | " + ("—" if pace is None else f"{pace:.2f}")
                     + " | " + ("—" if rest is None else f"{rest / 3600:.1f} h") + f" | {rec} |")
    lines += ["", f"Training time the started runs still need, each at its pace so far: {total / 3600:.1f} h (one "
              f"training job per core); {unstarted} run(s) not started, of unknown pace."]
    return lines


README_MARKERS = ("<!-- omniglot-table -->", "<!-- /omniglot-table -->")


def write_into_readme(path: Path, lines: list[str], markers: tuple[str, str] = README_MARKERS) -> None:
    """Replace what stands between the file's ``markers`` (the README's table markers by default) by ``lines``."""
    text = path.read_text()
    begin, end = markers
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ListError(f"{path}: expected one {begin} line followed by one {end} line around the table")
    head, rest = text.split(begin, 1)
    path.write_text(head + begin + "\n" + "\n".join(lines) + "\n" + end + rest.split(end, 1)[1])


# -- running ----------------------------------------------------------------------------------------
def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


_PROBE = """\
import json, platform, subprocess, os
out = {"python": platform.python_version()}
try:
    import torch
    out["torch"] = torch.__version__
    out["torch_cuda"] = torch.version.cuda
    out["torch_git"] = torch.version.git_version
    out["torch_debug"] = bool(torch.version.debug)
except Exception as e:
    out["torch"] = "unknown (%s)" % type(e).__name__
try:
    import metakit
    d = os.path.dirname(os.path.abspath(metakit.__file__))
    out["metakit_path"] = d
    head = subprocess.run(["git", "-C", d, "rev-parse", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", d, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    if head.returncode == 0:
        out["git_commit"] = head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
except Exception as e:
    out["metakit_path"] = "unknown (%s)" % type(e).__name__
print(json.dumps(out))
"""


def probe_environment(metakit: str) -> dict[str, Any]:
    """Hardware and software of the runs: CPU model and cores of the host running the script, torch and the git
    commit of the metakit code from the interpreter that ``metakit`` runs on (its ``#!`` line)."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    if cpu == "unknown" and platform.processor():
        cpu = platform.processor()
    env: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "os": platform.platform()}
    software: dict[str, Any] = {}
    with contextlib.suppress(OSError, UnicodeDecodeError):
        first = Path(metakit).read_bytes()[:200].split(b"\n", 1)[0].decode()
        interpreter = first[2:].strip().split()[0] if first.startswith("#!") else ""
        if Path(interpreter).name.startswith("python"):
            p = subprocess.run([interpreter, "-c", _PROBE], capture_output=True, text=True, timeout=120)
            if p.returncode == 0:
                software = json.loads(p.stdout)
    env.update({k: software.get(k, "unknown") for k in ("torch", "torch_cuda", "torch_git", "torch_debug", "python")})
    return {"hardware": env, "git_commit": software.get("git_commit", "unknown")}


def _run_id(run_dir: Path) -> str:
    """``NAME-<UTC start>``: the start of training, from the first line of ``metrics.jsonl``
    (its wall-clock ``time`` minus the training seconds ``elapsed`` it reports)."""
    with contextlib.suppress(OSError, ValueError, KeyError, IndexError, TypeError):
        first = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
        start = datetime.datetime.fromtimestamp(first["time"] - first["elapsed"], datetime.timezone.utc)
        return f"{run_dir.name}-{start:%Y%m%dT%H%M%SZ}"
    return "unknown"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


TRAIN_POINTS = 100  # training-loss points kept per record (evenly spaced over the log, the last one always)


def read_curves(run_dir: Path, upto: int | None = None) -> dict[str, Any]:
    """The run's learning curves from its ``metrics.jsonl``, up to step ``upto``: ``val``, every
    validation as ``[step, elapsed_s, accuracy, ci95]``, ``val_episodes`` (the episodes per validation,
    or ``None`` if the run never validated) and ``train``, the training log as ``[step, elapsed_s,
    loss]`` thinned to ``TRAIN_POINTS`` evenly spread points (the first and last kept).

    Steps come in order; a step logged twice (a crash, then a resume) keeps its last line. A line
    that is not JSON -- cut short when a run was killed, with its resume appending after it -- is
    skipped, as :func:`metakit.runtime.logging.read_metrics` skips it. A point whose accuracy, interval
    or loss was logged as ``null`` (metakit logs a non-finite number so) is left out. A JSON line that is not a metrics
    record is an error naming the file and line."""
    val: dict[int, list[float]] = {}
    episodes: set[int] = set()
    train: dict[int, list[float]] = {}
    path = run_dir / "metrics.jsonl"
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            m = json.loads(line)
        except json.JSONDecodeError:
            continue
        try:
            step, split = int(m["step"]), m["split"]
            if upto is not None and step > upto:
                continue
            if split == "val" and "accuracy" in m:
                val.pop(step, None)
                if m["accuracy"] is not None and m.get("ci95", 0.0) is not None:
                    val[step] = [step, round(float(m["elapsed"]), 1), float(m["accuracy"]), float(m.get("ci95", 0.0))]
                    episodes.add(int(m["episodes"]))
            elif split == "train" and "loss" in m:
                train.pop(step, None)
                if m["loss"] is not None:
                    train[step] = [step, round(float(m["elapsed"]), 1), float(m["loss"])]
        except (KeyError, TypeError, ValueError) as e:
            raise ListError(f"{path}:{number}: not a metrics record ({type(e).__name__}: {e}); is it a metakit run "
                            "folder?") from None
    if len(episodes) > 1:
        raise ListError(f"{path}: validations of different sizes ({sorted(episodes)} episodes); a curve needs one")
    rows = [train[s] for s in sorted(train)]
    if len(rows) > TRAIN_POINTS:
        rows = [rows[round(i * (len(rows) - 1) / (TRAIN_POINTS - 1))] for i in range(TRAIN_POINTS)]
    return {"val": [val[s] for s in sorted(val)], "val_episodes": episodes.pop() if episodes else None, "train": rows}


def evaluated_checkpoint(run_dir: Path) -> Path:
    """The checkpoint a run is evaluated from: its best, or where it has none (a run without validation,
    or one stopped before its first) its newest step checkpoint, which ``metakit eval --checkpoint
    last`` reads (the path of the best one, absent, when there is neither)."""
    best = run_dir / "checkpoints" / "best.safetensors"
    if not best.exists():
        best = max((run_dir / "checkpoints").glob("step-*.safetensors"), default=best)
    return best


def record_fields(env: dict[str, Any], run_id: str, config_digest: str) -> dict[str, Any]:
    """The fields every evaluation record starts with: run id, date, metakit's git commit, hardware
    (with the load average now) and the digest of the run's config."""
    return {"run_id": run_id, "date": _now(), "git_commit": env["git_commit"],
            "hardware": {**env["hardware"], "load_average": [round(x, 2) for x in os.getloadavg()]},
            "config_sha256": config_digest}


def ended_run_problem(run_dir: Path) -> str | None:
    """Why the run folder cannot be evaluated now (``None``: it can): its ``summary.json`` must say the
    training finished, stopped early or was interrupted."""
    summary = _read_json(run_dir / "summary.json")
    if not summary or summary.get("status") not in ENDED:
        return (f"{run_dir / 'summary.json'} is missing or says {summary and summary.get('status')!r}: the run is still "
                "training, was killed or failed; wait for it, or resume it")
    return None


def unknown_runs(run_list: RunList, names: list[str], list_path: Path) -> str | None:
    """An error message naming the ``names`` the list lacks, a retired one with its reason (``None``
    if it has them all)."""
    problems = [f"{n} is retired ({run_list.retired[n]})" for n in names if n in run_list.retired]
    unknown = [n for n in names if n not in run_list.runs and n not in run_list.retired]
    if unknown:
        problems.append(f"unknown run name(s) {', '.join(unknown)}; the list ({list_path}) has: {', '.join(run_list.runs)}")
    return "; ".join(problems) or None


def newest_with_curves(records: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """Among the newest records of run ``name`` (one per setting), the one of most steps holding curves."""
    recs = [r for (n, _), r in latest(records).items() if n == name and "curves" in r and isinstance(r["steps"], int)]
    return max(recs, key=lambda x: x["steps"], default=None)


def _train_section(run_dir: Path) -> dict[str, Any]:
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    return cfg.get("train", {}) if isinstance(cfg, dict) else {}


def _episodes_text(train: dict[str, Any]) -> str:
    try:
        return f"{train['ways']}-way {train['shots']}-shot {train['queries']}-query x {train['meta_batch']}"
    except KeyError:
        return "episodes unknown"


def _resolved_config(raw: Any, fill_model: bool = True) -> dict[str, dict[str, Any]]:
    """A config mapping as metakit resolves it: every section's defaults filled in, the algorithm's (and with
    ``fill_model``, the model's) from their options' declared defaults, as ``resolve_config`` writes them into a
    run folder. The model's are left out of the list's side: there the algorithm sets some of them from the
    task's shape (a head of ``ways`` outputs, BatchNorm without running statistics), which only a built run knows."""
    from metakit.runtime.builders import _plain_default  # the defaults resolve_config writes
    from metakit.runtime.config import Config, algorithm_option_specs, model_option_specs

    cfg = Config.from_dict(raw).to_dict()
    for section, specs in (("model", model_option_specs), ("algorithm", algorithm_option_specs)):
        if section == "model" and not fill_model:
            continue
        body = dict(cfg.get(section) or {})
        defaults = {s.name: s.default for s in specs(body["name"]).values() if not s.required and _plain_default(s.default)}
        cfg[section] = {**defaults, **body}
    return cfg


def _config_mismatches(run: Run, run_dir: Path) -> list[str]:
    """Where the run's ``config.yaml`` differs from what the list's entry trains: its config file with its
    overrides; both resolved as metakit resolves them (:func:`_resolved_config`), compared key by key over
    the keys of the list's, except the keys a resume may change and the machine's paths. Empty when they
    agree. Of the model's options, those the list's entry sets are compared (the others follow from the
    model's name, the algorithm and the task's shape, all compared)."""
    from metakit.runtime.config import ConfigError, apply_overrides, parse_overrides, read_yaml
    from metakit.runtime.run import RESUMABLE_KEYS

    path = REPO / run.config
    if not path.is_file():
        return [f"its config file {run.config} does not exist"]
    try:
        want = _resolved_config(apply_overrides(read_yaml(path.read_text()) or {}, parse_overrides(run.overrides)),
                                fill_model=False)
        have = _resolved_config(yaml.safe_load((run_dir / "config.yaml").read_text()))
    except (ConfigError, ValueError, yaml.YAMLError) as e:
        return [f"the configs cannot be compared: {e}"]
    out = []
    for section, body in want.items():
        for key, value in body.items():
            name = f"{section}.{key}"
            if name in RESUMABLE_KEYS or name in MACHINE_KEYS:
                continue
            got = have.get(section, {}).get(key, "<absent>")
            if got != value:
                out.append(f"{name} is {got!r} in {run_dir / 'config.yaml'}, {value!r} in {run.config} with the list's overrides")
    return out


class Runner:
    def __init__(self, args: argparse.Namespace, run_list: RunList) -> None:
        self.args = args
        self.list = run_list
        self.dir: Path = args.runs.expanduser().resolve()
        self.metakit = args.metakit
        self.failed = False
        self.interrupted = False
        self._env: dict[str, Any] | None = None

    # progress: stdout and the run's log
    def say(self, run: Run, text: str) -> None:
        line = f"{datetime.datetime.now():%H:%M:%S} {run.name}: {text}"
        print(line, flush=True)
        if not self.args.dry_run:
            with open(self.dir / f"{run.name}.log", "a") as f:
                f.write(line + "\n")

    def fail(self, run: Run, text: str) -> None:
        self.failed = True
        self.say(run, f"FAILED: {text}")

    def env(self) -> dict[str, Any]:
        if self._env is None:
            self._env = probe_environment(self.metakit)
        return self._env

    def _call(self, run: Run, cmd: list[str], limit: float | None = None) -> tuple[subprocess.CompletedProcess, bool]:
        """Run ``cmd`` (stderr to the run's log). On Ctrl-C, which reaches the child too, wait for it to
        stop by itself (``metakit train`` writes a checkpoint first) and stop after this command. After
        ``limit`` seconds, send the child the same SIGINT, wait for it, and go on. Returns the result and
        whether the time limit stopped it."""
        timed_out = False
        with open(self.dir / f"{run.name}.log", "a") as log:
            proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **ONE_THREAD}, stdout=subprocess.PIPE,
                                    stderr=log, text=True)
            try:
                try:
                    out, _ = proc.communicate(timeout=limit)
                except subprocess.TimeoutExpired:
                    timed_out = True
                    proc.send_signal(signal.SIGINT)
                    out, _ = proc.communicate()
            except KeyboardInterrupt:
                self.interrupted = True
                out, _ = proc.communicate()
        return subprocess.CompletedProcess(cmd, proc.returncode, out), timed_out

    # 1. training
    def train(self, run: Run) -> bool:
        d = self.dir / run.folder
        ledger = self.dir / f"{run.folder}.commands.jsonl"
        if run.trained_as:
            if not d.exists():
                self.fail(run, f"it evaluates the run folder of {run.trained_as}, and {d} does not exist yet: run "
                               f"{run.trained_as} first")
                return False
        if d.exists():
            if not (d / "config.yaml").exists():
                self.fail(run, f"{d} exists but holds no config.yaml: not a metakit run folder; move it away")
                return False
            mismatches = _config_mismatches(run, d)
            if mismatches:
                self.fail(run, f"{d} was not trained with the list's config ({'; '.join(mismatches)}): move the folder "
                               "away to train the list's run afresh, or make the list's entry say what the folder trained")
                return False
        if run.trained_as:
            self.say(run, f"trains nothing: it evaluates the run folder of {run.trained_as}")
            return True
        if d.exists():
            if not ledger.exists() and not self.args.dry_run:
                ledger.write_text(json.dumps({"adopted": str(d), "date": _now(),
                                              "note": "run folder made outside reproduce.py; its first command is unknown"}) + "\n")
        if self.args.only_eval:
            return d.exists() or self._missing(run, d)
        summary = _read_json(d / "summary.json") if d.exists() else None
        if summary and summary.get("status") == "finished" and summary.get("step", 0) >= run.steps:
            self.say(run, f"trained: finished at step {summary['step']} (the list asks {run.steps})")
            return True
        if _stopped_for_good(run, summary):
            self.say(run, f"trained: {summary['stopped_early']['message']}")
            return True
        if not d.exists():
            cmd = [self.metakit, "train", run.config, *run.overrides, "run.progress=false", "run.num_threads=1", "--out", str(d)]
        else:  # the list's budget and patience (none: train on to the budget, also if the run had one)
            patience = [] if run.patience is None and _train_section(d).get("patience") is None else \
                [f"train.patience={'null' if run.patience is None else run.patience}"]
            cmd = [self.metakit, "train", "--resume", str(d), f"train.steps={run.steps}", *patience,
                   "run.progress=false", "run.num_threads=1"]
        if self.args.dry_run:
            self.say(run, f"would run: {shlex.join(cmd)}")
            return True  # evaluate() says what it would evaluate
        self.say(run, f"run: {shlex.join(cmd)}")
        start = time.perf_counter()
        limit = None if self.args.minutes is None else 60 * self.args.minutes
        p, timed_out = self._call(run, cmd, limit)
        entry = {"command": shlex.join(cmd), "cwd": str(REPO), "date": _now(), "returncode": p.returncode,
                 "seconds": round(time.perf_counter() - start, 1)}
        if timed_out:
            entry["stopped"] = f"after the time limit, --minutes {self.args.minutes:g}"
        with open(ledger, "a") as f:
            f.write(json.dumps(entry) + "\n")
        summary = _read_json(d / "summary.json")
        if p.returncode not in (0, 130) or not summary or summary.get("status") not in ENDED:
            self.fail(run, f"training exited with status {p.returncode} (see {self.dir / run.name}.log)")
            return False
        why = f" (the --minutes {self.args.minutes:g} limit)" if timed_out and summary["status"] == "interrupted" else ""
        self.say(run, f"trained: {summary['status']} at step {summary['step']}{why}")
        return True

    def _missing(self, run: Run, d: Path) -> bool:
        self.fail(run, f"no run folder {d} to evaluate (--only-eval trains nothing)")
        return False

    # 2-3. evaluation and record
    def evaluate(self, run: Run) -> None:
        d = self.dir / run.folder
        if not d.exists():  # a dry run that would train it first
            for e in run.evaluations:
                self.say(run, f"would evaluate {e.setting} after training")
            return
        problem = ended_run_problem(d)
        if problem:
            self.fail(run, f"{problem} (without --only-eval)")
            return
        summary = _read_json(d / "summary.json")
        best = evaluated_checkpoint(d)
        before = sha256(best) if best.exists() else None
        config_digest = sha256(d / "config.yaml")
        run_id = _run_id(d)
        newest = latest(read_record(self.args.record))
        try:
            curves: dict[str, Any] | None = read_curves(d, upto=summary["step"])
        except (ListError, OSError) as err:
            self.say(run, f"warning: no learning curves in its records: {err}")
            curves = None
        for e in run.evaluations:
            old = newest.get((run.name, e.setting))
            if (old and old["status"] == "recorded" and old["run_id"] == run_id and old["config_sha256"] == config_digest
                    and old["checkpoint"]["sha256"] == before and old["steps"] == summary["step"]
                    and e.matches(old["result"])):
                self.say(run, f"{e.setting}: up to date in {self.args.record.name}")
                continue
            cmd = [self.metakit, "eval", str(d), "--split", e.split, "--ways", str(e.ways), "--shots", str(e.shots),
                   "--queries", str(e.queries), "--episodes", str(e.episodes), "--seed", str(e.seed), "--json",
                   *(a for k, v in e.options.items() for a in ("--option", f"{k}={v}")),
                   *(() if best.name == "best.safetensors" else ("--checkpoint", "last"))]
            if self.args.dry_run:
                self.say(run, f"would run: {shlex.join(cmd)}")
                continue
            self.say(run, f"run: {shlex.join(cmd)}")
            start = time.perf_counter()
            p, _ = self._call(run, cmd)
            wall = time.perf_counter() - start
            try:
                result = json.loads(p.stdout)
            except json.JSONDecodeError:
                result = None
            if p.returncode != 0 or not isinstance(result, dict) or not {"accuracy", "ci95", "checkpoint"} <= set(result):
                self.fail(run, f"{e.setting}: evaluation exited with status {p.returncode} without a JSON result "
                               f"(see {self.dir / run.name}.log)")
                continue
            ckpt = d / "checkpoints" / Path(result["checkpoint"]).name
            digest = sha256(ckpt)
            if ckpt == best and digest != before:
                self.fail(run, f"{e.setting}: {ckpt} changed during the evaluation (is the run still training?); not recorded")
                continue
            out = self.dir / f"{run.name}.eval.{e.setting}.json"
            out.write_text(json.dumps(result, indent=2) + "\n")
            ledger = self.dir / f"{run.folder}.commands.jsonl"
            train_cmds = [json.loads(line) for line in ledger.read_text().splitlines() if line.strip()] if ledger.exists() else []
            env = self.env()
            record = {
                "run": run.name,
                "setting": e.setting,
                "status": "recorded",
                **record_fields(env, run_id, config_digest),
                "checkpoint": {"file": ckpt.name, "sha256": digest, "step": result.get("step")},
                "commands": {"train": train_cmds, "eval": shlex.join(cmd), "cwd": str(REPO)},
                "train_seconds": summary.get("elapsed"),
                "eval_seconds": result.get("seconds"),
                "eval_wall_seconds": round(wall, 1),
                "steps": summary["step"],
                "best_step": (summary.get("best") or {}).get("step", result.get("step")),
                "training": {"episodes": _episodes_text(_train_section(d)), "status": summary["status"],
                             **({"stopped_early": summary["stopped_early"]} if "stopped_early" in summary else {})},
                **({"curves": curves} if curves is not None else {}),
                "result": {k: v for k, v in result.items() if k != "formatted"},
            }
            append_record(self.args.record, record)
            self.say(run, f"{e.setting}: {100 * result['accuracy']:.2f} ± {100 * result['ci95']:.2f} % "
                          f"({result['episodes']} episodes, checkpoint {ckpt.name} sha256 {digest[:12]}), recorded")

    # curves for records written before records held them
    def add_curves(self, run: Run) -> None:
        """Add ``curves`` to the run's records that lack them, read from ``DIR/NAME`` when the folder is the
        run the record describes (same run id and config digest), up to the record's steps."""
        d = self.dir / run.folder
        if not (d / "metrics.jsonl").exists():
            self.say(run, f"no {d / 'metrics.jsonl'}: no curves to add")
            return
        run_id, config_digest = _run_id(d), sha256(d / "config.yaml")
        if run_id == "unknown":
            self.fail(run, f"{d / 'metrics.jsonl'} does not give the run's start, so no record can be matched to it")
            return
        with _locked(self.args.record):
            records = read_record(self.args.record)
            added = []
            for r in records:
                if (r["run"] == run.name and r["status"] == "recorded" and "curves" not in r and r["run_id"] == run_id
                        and r["config_sha256"] == config_digest):
                    try:
                        r["curves"] = read_curves(d, upto=r["steps"])
                    except ListError as err:
                        self.fail(run, f"no curves added: {err}")
                        return
                    added.append(f"{r['setting']} ({r['steps']:,} steps, {len(r['curves']['val'])} validations)")
            if added and not self.args.dry_run:
                _write_record(self.args.record, records)
        if added:
            self.say(run, ("would add" if self.args.dry_run else "added") + " curves to the records of " + ", ".join(added))
        else:
            self.say(run, f"no record of run {run_id} (config sha256 {config_digest[:12]}) lacks curves")

    def run(self, names: list[str]) -> int:
        if not self.args.dry_run:
            self.dir.mkdir(parents=True, exist_ok=True)
        if self.args.add_curves:
            for name in names:
                self.add_curves(self.list.runs[name])
            return 1 if self.failed else 0
        for name in names:
            run = self.list.runs[name]
            if self.train(run):
                if not self.interrupted:
                    self.evaluate(run)
            if self.interrupted:
                self.say(run, "interrupted (Ctrl-C); run the same command again to continue")
                return 130
        return 1 if self.failed else 0


def _metakit_path(text: str | None) -> str:
    if text is None:
        beside = Path(sys.executable).with_name("metakit")
        found = str(beside) if beside.exists() else shutil.which("metakit")
        if found is None:
            raise SystemExit("reproduce.py: error: no metakit executable beside this Python or on PATH; "
                             "give --metakit PATH (e.g. .venv/bin/metakit)")
        return found
    p = Path(text).expanduser()
    if not (p.is_file() and os.access(p, os.X_OK)):
        raise SystemExit(f"reproduce.py: error: --metakit {text!r} is not an executable file; "
                         "give the metakit command of an installed checkout (e.g. .venv/bin/metakit)")
    return str(p.resolve())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:8]))
    parser.add_argument("names", nargs="*", metavar="NAME", help="runs of the list (default: all, in list order)")
    parser.add_argument("--runs", type=Path, metavar="DIR", help="folder of the run folders DIR/NAME")
    parser.add_argument("--metakit", help="the metakit executable (default: the one beside this Python, else on PATH)")
    parser.add_argument("--dry-run", action="store_true", help="print what would be run; change nothing")
    parser.add_argument("--only-eval", action="store_true", help="train nothing; evaluate existing run folders")
    parser.add_argument("--minutes", type=float, metavar="M",
                        help="stop each training after M minutes (it checkpoints), evaluate and record it, go on")
    parser.add_argument("--add-curves", action="store_true",
                        help="train and evaluate nothing; add the learning curves of DIR/NAME to its records written "
                             "without them (records of the same run id and config digest)")
    parser.add_argument("--status", action="store_true",
                        help="train and evaluate nothing; print each run's progress in DIR against its budget")
    parser.add_argument("--table", action="store_true", help="print the README's results table from the record and exit")
    parser.add_argument("--readme", type=Path, help="with --table: write the table between the markers of this README")
    parser.add_argument("--list", type=Path, default=RUN_LIST, help="the run list (default: runs.yaml beside this script)")
    parser.add_argument("--record", type=Path, default=RECORD, help="the record (default: results.json beside this script)")
    args = parser.parse_args(argv)
    modes = [flag for flag, on in (("--table", args.table), ("--status", args.status), ("--add-curves", args.add_curves),
                                   ("--only-eval", args.only_eval), ("--minutes", args.minutes is not None)) if on]
    if len(modes) > 1:
        parser.error(f"{' and '.join(modes)} do different things; give one of them")
    if args.dry_run and (args.table or args.status):
        parser.error(f"{modes[0]} changes nothing anyway; drop --dry-run")
    if args.readme is not None and not args.table:
        parser.error("--readme goes with --table (the table it writes)")
    try:
        run_list = load_run_list(args.list)
        unknown = unknown_runs(run_list, args.names, args.list)
        if unknown:
            parser.error(unknown)
        if args.table and args.names:
            parser.error(f"--table prints every run of the list; drop the run names ({' '.join(args.names)})")
        if args.table:
            lines = table_lines(run_list, read_record(args.record))
            if args.readme:
                write_into_readme(args.readme, lines)
            else:
                print("\n".join(lines))
            return 0
        if args.runs is None:
            parser.error("give --runs DIR (the folder of the run folders), or --table")
        if args.minutes is not None and not args.minutes > 0:
            parser.error(f"--minutes {args.minutes:g}: give a positive number of minutes per training")
        if args.status:
            names = args.names or list(run_list.runs)
            print("\n".join(status_lines(run_list, read_record(args.record), args.runs.expanduser().resolve(), names)))
            return 0
        read_record(args.record)  # a malformed record is an error before any work
    except ListError as e:
        print(f"reproduce.py: error: {e}", file=sys.stderr)
        return 2
    args.metakit = _metakit_path(args.metakit)
    return Runner(args, run_list).run(args.names or list(run_list.runs))


if __name__ == "__main__":
    sys.exit(main())
