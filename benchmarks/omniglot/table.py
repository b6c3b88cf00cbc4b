"""Print the README's Omniglot results table, from run folders and from the committed record.

    python benchmarks/omniglot/table.py ~/runs            # print the table
    python benchmarks/omniglot/table.py ~/runs --update   # also save ended, evaluated runs to results.json

One row per method: each cell is the test accuracy over 1,000 fixed episodes (seed 0, 15
queries per class; a cell names another count where its job line set one) with its 95% interval, read from OUT/<run>.eval.<setting>.json; the
training column gives, per run, the training episodes, the steps trained and the wall time of
training (summary.json; the machine was shared, so it is a cost, not a speed). The runs' exact
commands are the lines of queue_*.jobs beside this file.

Run folders live outside the repository and can be lost with a machine, so every run that
ended (finished, or interrupted with a checkpoint) and was evaluated is also kept in ``results.json`` beside this file (``--update``): a run found in
OUT is taken from its folder, any other from that record, which says where each entry came from.
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path
from typing import Any

import yaml

RECORD = Path(__file__).with_name("results.json")
SETTINGS = ("5w1s", "5w5s", "20w1s", "20w5s")

# (family, method, {setting: run}, the papers' numbers for 5w1s / 5w5s / 20w1s / 20w5s, as the issues quote
# them; — where the issue quotes none)
ROWS = [
    ("metric", "ProtoNet (Snell et al. 2017)",
     {"5w1s": "protonet_1shot", "20w1s": "protonet_1shot", "5w5s": "protonet_5shot", "20w5s": "protonet_5shot"},
     "98.8 / 99.7 / 96.0 / 98.9"),
    ("metric", "Matching Nets (Vinyals et al. 2016)",
     {"5w1s": "matching_5w1s", "20w1s": "matching_5w1s", "5w5s": "matching_5w5s", "20w5s": "matching_5w5s"}, "98.1 / 98.9 / 93.8 / 98.5"),
    ("metric", "Matching Nets with algorithm.scale=10 (not the paper's 1)",
     {"5w1s": "matching_5w1s_scale10", "20w1s": "matching_5w1s_scale10"}, "—"),
    ("metric", "Relation Net (Sung et al. 2018)",
     {"5w1s": "relation_5w1s", "20w1s": "relation_5w1s", "5w5s": "relation_5w5s", "20w5s": "relation_5w5s"},
     "99.6 / 99.8 / 97.6 / 99.1"),
    ("metric", "Siamese (Koch et al. 2015; Vinyals et al.'s re-run)",
     {"5w1s": "siamese_5w1s", "20w1s": "siamese_5w1s", "5w5s": "siamese_5w5s", "20w5s": "siamese_5w5s"}, "96.7 / 98.4 / 88.0 / 96.5"),
    ("baseline", "Baseline (Chen et al. 2019), linear head",
     {s: "baseline" for s in SETTINGS}, "—"),
    ("baseline", "Baseline++ (Chen et al. 2019), cosine head",
     {s: "baselinepp" for s in SETTINGS}, "—"),
    ("metric", "nearest neighbour + CL2N (SimpleShot-style, Wang et al. 2019)",
     {s: "nearest" for s in SETTINGS}, "—"),
    ("optimization", "MAML, second order (Finn et al. 2017)", {"5w1s": "maml_5w1s", "5w5s": "maml_5w5s"}, "98.7 / 99.9 / — / —"),
    ("optimization", "first-order MAML", {"5w1s": "fomaml_5w1s", "5w5s": "fomaml_5w5s"}, "98.3 / 99.2 / — / —"),
    ("optimization", "Reptile (Nichol et al. 2018), transductive", {"5w1s": "reptile_5w1s", "5w5s": "reptile_5w5s"},
     "97.7 / 99.5 / — / —"),
    ("optimization", "ANIL (Raghu et al. 2020)", {"5w1s": "anil_5w1s", "5w5s": "anil_5w5s"}, "—"),
    ("optimization", "Meta-SGD (Li et al. 2017)", {"5w1s": "metasgd_5w1s", "5w5s": "metasgd_5w5s"}, "99.5 / 99.9 / — / —"),
]


def _from_folder(out: Path, run: str) -> dict[str, Any] | None:
    """The run's entry read from its folder (None when OUT has no such run)."""
    folder = out / run
    if not folder.exists():
        return None
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    t = cfg["train"]
    entry: dict[str, Any] = {"episodes": f"{t['ways']}-way {t['shots']}-shot {t['queries']}-query x {t['meta_batch']}"}
    summary_file = folder / "summary.json"
    if summary_file.exists():
        s = json.loads(summary_file.read_text())
        entry.update(status=s.get("status"), steps=s["step"], minutes=round(s["elapsed"] / 60, 1))
    else:
        entry["status"] = "in progress"
    entry["evals"] = {}
    for setting in SETTINGS:
        try:
            r = json.loads((out / f"{run}.eval.{setting}.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            continue  # not evaluated yet, or being written
        entry["evals"][setting] = {k: r[k] for k in ("accuracy", "ci95", "episodes", "queries", "seed", "split",
                                                     "checkpoint", "step", "seconds", "episodes_per_s") if k in r}
    return entry


def _training(run: str, entry: dict[str, Any] | None) -> str:
    if entry is None:
        return f"`{run}`: not run yet"
    if "steps" not in entry:
        return f"`{run}`: {entry['episodes']}, in progress"
    state = "" if entry.get("status") == "finished" else f", {entry.get('status')}"
    return f"`{run}`: {entry['episodes']}, {entry['steps']:,} steps, {entry['minutes']:.0f} min{state}"


def _cell(entry: dict[str, Any] | None, setting: str) -> str:
    if entry is None:
        return "not run"
    r = entry.get("evals", {}).get(setting)
    if r is None:  # a run folder still training or evaluating, or a recorded run never evaluated so
        return "not run" if "source" in entry else "pending"
    cell = f"{100 * r['accuracy']:.1f} ± {100 * r['ci95']:.1f}"
    return cell if r.get("episodes", 1000) == 1000 else f"{cell} ({r['episodes']:,} episodes)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the folder run_queue.sh wrote (OUT)")
    parser.add_argument("--update", action="store_true",
                        help=f"save the evaluated runs found in OUT that ended (finished or interrupted) to {RECORD.name}")
    parser.add_argument("--record", type=Path, default=RECORD, help="the record file (default: results.json here)")
    args = parser.parse_args(argv)
    out = args.out.expanduser()
    record = json.loads(args.record.read_text()) if args.record.exists() else {"runs": {}}
    entries: dict[str, dict[str, Any] | None] = {}
    for _, _, runs, _ in ROWS:
        for run in runs.values():
            live = _from_folder(out, run)
            entries[run] = live if live is not None else record["runs"].get(run)
            # a run that ended (finished, or stopped with its checkpoint) and was evaluated is a measurement
            if args.update and live is not None and live.get("status") in ("finished", "interrupted") and live["evals"]:
                saved = record["runs"].get(run, {})
                if {k: v for k, v in saved.items() if k != "source"} != live:
                    record["runs"][run] = {**live, "source": f"measured {datetime.date.today().isoformat()}, "
                                                              f"run folder {run} of run_queue.sh"}
    if args.update:
        args.record.write_text(json.dumps(record, indent=1, ensure_ascii=False, sort_keys=True) + "\n")
    print("| family | method | training runs (episodes x meta-batch, steps, wall time) | 5w1s | 5w5s | 20w1s | 20w5s "
          "| papers (5w1s / 5w5s / 20w1s / 20w5s) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for family, method, runs, paper in ROWS:
        training = "; ".join(_training(r, entries[r]) for r in dict.fromkeys(runs.values()))
        cells = " | ".join(_cell(entries[runs[s]] if s in runs else None, s) for s in SETTINGS)
        print(f"| {family} | {method} | {training} | {cells} | {paper} |")


if __name__ == "__main__":
    main()
