"""Record a `metakit demo --json` result and print the README's sinusoid table from the records.

    metakit demo --shots 5 --out DIR --json > k5.json
    python benchmarks/sinusoid/record.py add k5.json --command "metakit demo --shots 5 --out DIR --json" --seconds S
    python benchmarks/sinusoid/record.py table

``add`` appends one record to ``results.json`` beside this script: the demo's output, the command,
its wall-clock seconds, sha256 digests of the run's ``config.yaml`` and of its newest checkpoint,
the hardware and the date. ``table`` prints the table from the newest record per K.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

from metakit.bench import hardware

HERE = Path(__file__).resolve().parent
RECORD = HERE / "results.json"
#: MAML paper, section 5.1 / Figure 2 (K=5: mean squared error after 1, 5, 10 steps)
PAPER = {5: "0.67 / 0.38 / 0.35", 10: "(Figure 2 only)"}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def add(result_file: Path, command: str, seconds: float, record: Path = RECORD) -> dict:
    result = json.loads(result_file.read_text())
    run_dir = Path(result["run_dir"])
    checkpoints = sorted((run_dir / "checkpoints").glob("step-*.safetensors"))
    if not checkpoints:
        raise SystemExit(f"{run_dir}/checkpoints holds no step checkpoint to digest")
    entry = {
        "result": result,
        "command": command,
        "seconds": seconds,
        "config_sha256": _sha256(run_dir / "config.yaml"),
        "checkpoint": {"file": checkpoints[-1].name, "sha256": _sha256(checkpoints[-1])},
        "hardware": {**hardware(), "torch": result.get("torch")},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    entries = json.loads(record.read_text()) if record.exists() else []
    entries.append(entry)
    record.write_text(json.dumps(entries, indent=1) + "\n")
    return entry


def table(record: Path = RECORD) -> str:
    newest: dict[int, dict] = {}
    for e in json.loads(record.read_text()):
        newest[int(e["result"]["shots"])] = e
    lines = ["| K | after 1 step | 5 steps | 10 steps | MAML paper (1 / 5 / 10) | command |",
             "| --- | --- | --- | --- | --- | --- |"]
    for k in sorted(newest):
        e = newest[k]
        mse = e["result"]["mse"]
        cells = [f"{mse[s]['mean']:.3f} ± {mse[s]['ci95']:.3f}" for s in ("1", "5", "10")]
        lines.append(f"| {k} | {' | '.join(cells)} | {PAPER.get(k, '—')} | `{e['command']}` ({e['seconds']:.0f} s, {e['date'][:10]}) |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("add", help="append a demo result to the record")
    a.add_argument("result", type=Path)
    a.add_argument("--command", required=True)
    a.add_argument("--seconds", type=float, required=True)
    sub.add_parser("table", help="print the README table")
    args = p.parse_args()
    if args.cmd == "add":
        print(json.dumps(add(args.result, args.command, args.seconds))[:200])
    else:
        print(table())


if __name__ == "__main__":
    main()
