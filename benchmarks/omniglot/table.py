"""Print the README's Omniglot results table from the run folders of run_queue.sh.

    python benchmarks/omniglot/table.py ~/runs

One row per method: each cell is the test accuracy over 1,000 fixed episodes (seed 0, 15
queries per class) with its 95% interval, read from OUT/<run>.eval.<setting>.json; the
training column gives, per run, the training episodes, the steps trained and the wall time of
training (summary.json; the machine was shared, so it is a cost, not a speed). The runs' exact
commands are the lines of queue_{a,b,c}.jobs beside this file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

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
     {"5w1s": "baselinepp", "5w5s": "baselinepp"}, "—"),
    ("metric", "nearest neighbour + CL2N (SimpleShot-style, Wang et al. 2019)",
     {"5w1s": "nearest", "20w1s": "nearest"}, "—"),
    ("optimization", "MAML, second order (Finn et al. 2017)", {"5w1s": "maml_5w1s", "5w5s": "maml_5w5s"}, "98.7 / 99.9 / — / —"),
    ("optimization", "first-order MAML", {"5w1s": "fomaml_5w1s", "5w5s": "fomaml_5w5s"}, "98.3 / 99.2 / — / —"),
    ("optimization", "Reptile (Nichol et al. 2018), transductive", {"5w1s": "reptile_5w1s", "5w5s": "reptile_5w5s"},
     "97.7 / 99.5 / — / —"),
    ("optimization", "ANIL (Raghu et al. 2020)", {"5w1s": "anil_5w1s", "5w5s": "anil_5w5s"}, "—"),
    ("optimization", "Meta-SGD (Li et al. 2017)", {"5w1s": "metasgd_5w1s", "5w5s": "metasgd_5w5s"}, "99.5 / 99.9 / — / —"),
]


def _training(out: Path, run: str) -> str:
    folder = out / run
    if not folder.exists():
        return f"`{run}`: not run yet"
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    t = cfg["train"]
    episodes = f"{t['ways']}-way {t['shots']}-shot {t['queries']}-query x {t['meta_batch']}"
    summary_file = folder / "summary.json"
    if not summary_file.exists():
        return f"`{run}`: {episodes}, in progress"
    s = json.loads(summary_file.read_text())
    state = "" if s.get("status") == "finished" else f", {s.get('status')}"
    return f"`{run}`: {episodes}, {s['step']:,} steps, {s['elapsed'] / 60:.0f} min{state}"


def _cell(out: Path, run: str | None, setting: str) -> str:
    if run is None or not (out / run).exists():
        return "not run"
    f = out / f"{run}.eval.{setting}.json"
    try:
        r = json.loads(f.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return "pending"  # training or evaluating
    return f"{100 * r['accuracy']:.1f} ± {100 * r['ci95']:.1f}"


def main(argv: list[str]) -> None:
    out = Path(argv[0]).expanduser()
    print("| family | method | training runs (episodes x meta-batch, steps, wall time) | 5w1s | 5w5s | 20w1s | 20w5s "
          "| papers (5w1s / 5w5s / 20w1s / 20w5s) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for family, method, runs, paper in ROWS:
        training = "; ".join(_training(out, r) for r in dict.fromkeys(runs.values()))
        cells = " | ".join(_cell(out, runs.get(s), s) for s in SETTINGS)
        print(f"| {family} | {method} | {training} | {cells} | {paper} |")


if __name__ == "__main__":
    main(sys.argv[1:])
