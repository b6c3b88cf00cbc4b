"""Print the README's precision table from a record written by ``metakit bench precision --json``.

    metakit bench precision --iters 3 --json > benchmarks/precision/channels_last.json
    python benchmarks/precision/table.py benchmarks/precision/channels_last.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT = HERE / "channels_last.json"


def table(record: dict) -> str:
    hw = record["hardware"]
    lines = [
        f"Relative error of the float32 meta-gradient against float64 (`{record['command']}`, "
        f"{record['date'][:10]}, {hw['cpu']}, torch {hw['torch']}, {record['threads']} thread; "
        f"{record['settings'][0]['tasks']} tasks of the {record['settings'][0]['data']} split per setting, "
        "the same initial weights; float64 sensitivity: the relative change of the float64 meta-gradient "
        "when the weights are perturbed by float32 rounding; seconds per meta-iteration are medians of "
        "interleaved repetitions):",
        "",
        "| setting | NCHW error | channels_last error | float64 sensitivity | NCHW s/iteration | channels_last s/iteration | channels_last speed-up |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in record["settings"]:
        e, s = r["rel_error"], r["seconds"]
        sens = f"{r['sensitivity']:.1e}" if "sensitivity" in r else "not measured"
        lines.append(f"| {r['setting']} | {e['nchw']:.1e} | {e['channels_last']:.1e} | {sens} | {s['nchw']:.3f} | "
                     f"{s['channels_last']:.3f} | {s['nchw'] / s['channels_last']:.2f}x |")
    lines += ["", "BatchNorm forward alone (training mode, `[N, 64, 28, 28]`), float32 against float64:", "",
              "| images N | NCHW error | channels_last error |", "| --- | --- | --- |"]
    for r in record["batchnorm"]:
        lines.append(f"| {r['images']} | {r['nchw']:.1e} | {r['channels_last']:.1e} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("record", nargs="?", type=Path, default=DEFAULT)
    args = p.parse_args()
    print(table(json.loads(args.record.read_text())))


if __name__ == "__main__":
    main()
