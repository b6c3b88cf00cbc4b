"""Print the README's Omniglot results rows from the run folders of run_queue.sh.

    python benchmarks/omniglot/table.py ~/runs benchmarks/omniglot/queue_a.jobs benchmarks/omniglot/queue_b.jobs

One row per job (in job-file order): the training episodes and steps, the wall time of
training (summary.json; the machine was shared, so it is a cost, not a speed), and for each
evaluated setting the test accuracy over 1,000 fixed episodes with its 95% interval.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SETTINGS = ("5w1s", "5w5s", "20w1s", "20w5s")


def row(out: Path, name: str) -> str:
    run = out / name
    summary_file = run / "summary.json"
    if not summary_file.exists():
        state = "not started" if not run.exists() else "in progress"
        return f"| {name} | {state} | " + " | ".join("" for _ in SETTINGS) + " |"
    summary = json.loads(summary_file.read_text())
    cells = []
    best_step = None
    for setting in SETTINGS:
        f = out / f"{name}.eval.{setting}.json"
        if f.exists():
            r = json.loads(f.read_text())
            best_step = r["step"]
            cells.append(f"{100 * r['accuracy']:.1f} ± {100 * r['ci95']:.1f}")
        else:
            cells.append("")
    status = summary.get("status", "?")
    budget = f"{summary['step']:,} steps, {summary['elapsed'] / 60:.0f} min ({status}; best step {best_step})"
    return f"| {name} | {budget} | " + " | ".join(cells) + " |"


def main(argv: list[str]) -> None:
    out = Path(argv[0]).expanduser()
    print("| run | training | " + " | ".join(SETTINGS) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in SETTINGS) + " |")
    for jobs in argv[1:]:
        for line in Path(jobs).read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                print(row(out, line.split("|")[0]))


if __name__ == "__main__":
    main(sys.argv[1:])
