"""Evaluate trained Omniglot runs under variants of the test protocol and record the results.

    python benchmarks/omniglot/protocols.py eval --runs ~/runs/repro relation_5w1s
    python benchmarks/omniglot/protocols.py table                  # the table of docs/reproduction.md
    python benchmarks/omniglot/protocols.py table --doc docs/reproduction.md   # ... written into it

A published number can rest on a test protocol other than metakit's: BatchNorm normalising each
episode with its own statistics (test code that never leaves training mode) and as many queries per
class as shots. For a model that keeps no running statistics (MAML's setting: its BatchNorm
normalises the images of each call with their own statistics under metakit's evaluation already) or
has no BatchNorm, metakit refuses ``--batch-norm episode``: only the query count varies, and the
table marks the episode-statistics variants "n/a". ``eval`` evaluates each named run of ``runs.yaml`` (from its run folder ``DIR/NAME``)
in the first setting the list evaluates it on, under every variant of
``VARIANTS``, on the list's split, episodes and seed (queries: the list's default evaluation's -- metakit's
protocol, also for runs the list evaluates with another count --, or as many as shots),
with ``metakit eval ... --json`` of the checkpoint ``reproduce.py`` evaluates, and appends
one record per variant to ``protocols.json``: the result, the run id, sha256 digests of the run's
config and checkpoint, the command, seconds, hardware, date and git commit (as ``reproduce.py``
records). A variant already recorded for the same run id, checkpoint digest and evaluation is skipped.
``table`` prints the table from the record: per run, the newest record of each variant.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reproduce  # noqa: E402  (the run list and the record machinery, beside this script)

RECORD = reproduce.HERE / "protocols.json"
DOC_MARKERS = ("<!-- protocols-table -->", "<!-- /protocols-table -->")

#: (name, queries per class -- "list": the list's evaluation, "shots": as many as the setting's shots --,
#: BatchNorm statistics at test time: ``metakit eval --batch-norm``)
VARIANTS: tuple[tuple[str, str, str], ...] = (
    ("list's queries, running statistics (metakit)", "list", "running"),
    ("list's queries, each episode's statistics", "list", "episode"),
    ("shots queries, running statistics", "shots", "running"),
    ("shots queries, each episode's statistics", "shots", "episode"),
)
#: the table's column of each variant: ``--batch-norm running`` is metakit's evaluation, whatever the
#: model normalises with (running statistics, or its own batch statistics: the model's column)
HEADERS = ("list's queries, metakit's BatchNorm", "list's queries, each episode's statistics",
           "shots queries, metakit's BatchNorm", "shots queries, each episode's statistics")
#: ``model_batch_norm`` of ``metakit eval --json``: what a model's BatchNorm normalises with under ``running``
MODEL_BATCH_NORM = {"running": "running statistics", "batch": "batch statistics (no running ones)",
                    "mixed": "running statistics in some layers", "none": "no BatchNorm"}
#: the model column of records without ``model_batch_norm`` but with an episode-statistics evaluation
INFERRED = "running statistics, in some layers at least (inferred)"
#: models for which ``metakit eval --batch-norm episode`` is refused (no layer keeps running statistics)
NO_EPISODE_MODE = ("batch", "none")


def evaluate(args: argparse.Namespace) -> int:
    run_list = reproduce.load_run_list(args.list)
    unknown = reproduce.unknown_runs(run_list, args.names, args.list)
    if unknown:
        raise reproduce.ListError(unknown)
    metakit = reproduce._metakit_path(args.metakit)
    env = reproduce.probe_environment(metakit)
    failed = False
    for name in args.names:
        run = run_list.runs[name]
        d = args.runs.expanduser().resolve() / run.folder
        problem = reproduce.ended_run_problem(d)
        if problem:
            print(f"{name}: FAILED: {problem}", flush=True)
            failed = True
            continue
        summary = reproduce._read_json(d / "summary.json")
        e = run.evaluations[0]
        checkpoint = reproduce.evaluated_checkpoint(d)
        if not checkpoint.exists():
            print(f"{name}: FAILED: {d / 'checkpoints'} holds no checkpoint to evaluate", flush=True)
            failed = True
            continue
        digest, config_digest, run_id = reproduce.sha256(checkpoint), reproduce.sha256(d / "config.yaml"), reproduce._run_id(d)
        model_norm: str | None = None  # the model's BatchNorm, from its first result
        for variant, queries, norm in VARIANTS:
            params = {**e.params(), "queries": e.shots if queries == "shots" else run_list.defaults.get("queries", e.queries)}
            if norm == "episode" and model_norm in NO_EPISODE_MODE:
                print(f"{name}: {variant}: not applicable: the model has "
                      f"{'no BatchNorm' if model_norm == 'none' else 'BatchNorm on batch statistics only'}, "
                      "so no running statistics to replace", flush=True)
                continue
            done = [r for r in reproduce.read_record(args.record)
                    if r["run_id"] == run_id and r["checkpoint"]["sha256"] == digest and r["variant"] == variant
                    and all(r["result"].get(k) == v for k, v in params.items())]
            # a record written before eval reported the model's BatchNorm cannot tell it: evaluated again
            if done and (model_norm is not None or "model_batch_norm" in done[-1]["result"]):
                model_norm = model_norm or done[-1]["result"]["model_batch_norm"]
                print(f"{name}: {variant}: up to date in {args.record.name}", flush=True)
                continue
            cmd = [metakit, "eval", str(d), *(a for k in reproduce.EVAL_FIELDS for a in (f"--{k}", str(params[k]))),
                   "--checkpoint", str(checkpoint), "--batch-norm", norm, "--json"]
            print(f"{name}: run: {shlex.join(cmd)}", flush=True)
            start = time.perf_counter()
            p = subprocess.run(cmd, cwd=reproduce.REPO, capture_output=True, text=True, env={**os.environ, **reproduce.ONE_THREAD})
            wall = time.perf_counter() - start
            try:
                result = json.loads(p.stdout)
            except json.JSONDecodeError:
                result = None
            if (p.returncode != 0 or not isinstance(result, dict) or result.get("batch_norm") != norm
                    or result.get("checkpoint") != checkpoint.name):
                print(f"{name}: {variant}: FAILED: exit status {p.returncode}, or a result of another checkpoint or "
                      f"BatchNorm mode than asked: {p.stderr.strip()[-500:]}", flush=True)
                failed = True
                continue
            if reproduce.sha256(checkpoint) != digest:
                print(f"{name}: {variant}: FAILED: {checkpoint} changed during the evaluation; not recorded", flush=True)
                failed = True
                continue
            model_norm = model_norm or result.get("model_batch_norm")
            reproduce.append_record(args.record, {
                "run": name, "setting": e.setting, "variant": variant,
                **reproduce.record_fields(env, run_id, config_digest),
                "checkpoint": {"file": checkpoint.name, "sha256": digest, "step": result.get("step")},
                "command": shlex.join(cmd), "cwd": str(reproduce.REPO), "steps": summary["step"],
                "eval_wall_seconds": round(wall, 1),
                "result": {k: v for k, v in result.items() if k != "formatted"},
            })
            print(f"{name}: {variant}: {100 * result['accuracy']:.2f} ± {100 * result['ci95']:.2f} %, recorded", flush=True)
    return 1 if failed else 0


def table_lines(records: list[dict[str, Any]]) -> list[str]:
    """Per run, the checkpoint of its newest record: the model's BatchNorm and the accuracy ± 95% interval
    under each variant (the newest record of each; a variant not recorded for that checkpoint is "not run",
    an episode-statistics variant of a model without running statistics "n/a")."""
    newest: dict[str, dict[str, dict[str, Any]]] = {}
    current = {r["run"]: (r["run_id"], r["checkpoint"]["sha256"]) for r in records}
    for r in records:
        if (r["run_id"], r["checkpoint"]["sha256"]) == current[r["run"]]:
            newest.setdefault(r["run"], {})[r["variant"]] = r
    lines = ["| run (checkpoint step) | test episodes | model's BatchNorm | " + " | ".join(HEADERS) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in HEADERS) + " |"]
    for run, by_variant in newest.items():
        any_r = next(iter(by_variant.values()))
        res = any_r["result"]
        # records written before eval reported the model's BatchNorm: an episode-statistics evaluation,
        # which metakit refuses unless some layer keeps running statistics, shows that one does
        model = next((r["result"]["model_batch_norm"] for r in by_variant.values() if "model_batch_norm" in r["result"]), None)
        label = (MODEL_BATCH_NORM.get(model, model) if model is not None else
                 INFERRED if any(r["result"].get("batch_norm") == "episode" for r in by_variant.values()) else "not recorded")
        cells = []
        for variant, _, norm in VARIANTS:
            r = by_variant.get(variant)
            if r is None:
                cells.append("n/a" if norm == "episode" and model in NO_EPISODE_MODE else "not run")
            else:
                cells.append(f"{100 * r['result']['accuracy']:.2f} ± {100 * r['result']['ci95']:.2f} ({r['result']['queries']} q)")
        lines.append(f"| `{run}` (step {any_r['checkpoint']['step']:,}) | {res['episodes']:,} x {res['ways']}-way "
                     f"{res['shots']}-shot, {res['split']}, seed {res['seed']} | {label} | "
                     + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[2:5]))
    sub = ap.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("eval", help="evaluate runs under every variant and record the results")
    ev.add_argument("names", nargs="+", metavar="NAME", help="runs of the list")
    ev.add_argument("--runs", type=Path, required=True, metavar="DIR", help="folder of the run folders DIR/NAME")
    ev.add_argument("--metakit", help="the metakit executable (default: the one beside this Python, else on PATH)")
    tb = sub.add_parser("table", help="print the table from the record")
    tb.add_argument("--doc", type=Path, help="write the table between the protocols-table markers of this file")
    for p in (ev, tb):
        p.add_argument("--list", type=Path, default=reproduce.RUN_LIST, help="the run list (default: runs.yaml)")
        p.add_argument("--record", type=Path, default=RECORD, help="the record (default: protocols.json)")
    args = ap.parse_args(argv)
    try:
        if args.command == "eval":
            return evaluate(args)
        lines = table_lines(reproduce.read_record(args.record))
        if args.doc is None:
            print("\n".join(lines))
            return 0
        reproduce.write_into_readme(args.doc, lines, DOC_MARKERS)
        return 0
    except reproduce.ListError as e:
        print(f"protocols.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
