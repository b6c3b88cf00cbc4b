"""benchmarks/snail/throughput.py: it measures a config and appends a well-formed record; the table
in docs/snail.md is exactly what the committed record prints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "snail" / "throughput.py"


def test_the_docs_table_is_what_the_record_prints():
    docs = (REPO / "docs" / "snail.md").read_text()
    begin, end = "<!-- snail-throughput -->", "<!-- /snail-throughput -->"
    assert docs.count(begin) == 1 and docs.count(end) == 1
    in_docs = docs.split(begin, 1)[1].split(end, 1)[0].strip("\n")
    printed = subprocess.run([sys.executable, str(SCRIPT), "--table"], capture_output=True, text=True, check=True,
                             timeout=600).stdout.strip("\n")
    assert in_docs == printed, "docs/snail.md's throughput table differs from its record; paste `throughput.py --table`"


@pytest.mark.slow
def test_a_measurement_appends_a_record(tmp_path):
    for split in ("train", "val", "test"):
        for c in range(3):
            for i in range(3):
                img = Image.new("L", (16, 16), 255)
                ImageDraw.Draw(img).rectangle([c * 4, i, c * 4 + 5, i + 5], fill=0)
                (tmp_path / "data" / split / f"c{c}").mkdir(parents=True, exist_ok=True)
                img.save(tmp_path / "data" / split / f"c{c}" / f"{i}.png")
    config = tmp_path / "snail.yaml"
    config.write_text(yaml.safe_dump({
        "task": {"family": "classification", "dataset": "folder", "root": str(tmp_path / "data"), "image_size": 16},
        "train": {"ways": 3, "shots": 1, "queries": 1, "meta_batch": 2, "steps": 10},
        "eval": {"queries": 2, "val_episodes": 0},
        "model": {"name": "conv4", "hidden": 4},
        "algorithm": {"name": "snail", "filters": 4, "key_sizes": [4, 4], "value_sizes": [2, 2]},
        "run": {"num_threads": 1},
    }))
    record = tmp_path / "record.json"
    for _ in range(2):
        subprocess.run([sys.executable, str(SCRIPT), str(config), "--steps", "2", "--warmup", "1", "--eval-episodes", "3",
                        "--record", str(record)], capture_output=True, text=True, check=True, timeout=600)
    entries = json.loads(record.read_text())
    assert len(entries) == 2 and entries[0]["run_id"] != entries[1]["run_id"]
    e = entries[-1]
    assert e["train"]["steps"] == 2 and e["train"]["meta_batch"] == 2 and e["train"]["episodes_per_s"] > 0
    assert e["eval"]["episodes"] == 3 and e["eval"]["ways"] == 3 and e["eval"]["episodes_per_cpu_s"] > 0
    assert len(e["config_sha256"]) == 64 and e["command"].startswith("python benchmarks/snail/throughput.py ")
    assert {"cpu", "cores", "torch", "python"} <= set(e["hardware"]) and e["threads"] == 1
    out = subprocess.run([sys.executable, str(SCRIPT), "--table", "--record", str(record)], capture_output=True,
                         text=True, check=True).stdout
    assert out.count("| `snail.yaml` | 3-way 1-shot 1-query x 2, 2 steps |") == 2


def test_the_recorded_snail_runs_files_are_kept_and_match_their_newest_records():
    """benchmarks/snail/runs/NAME holds metakit train's files of each run behind the README's SNAIL
    row: its summary stops at the recorded step count, its best validation at the evaluated step."""
    records = json.loads((REPO / "benchmarks" / "omniglot" / "results.json").read_text())["records"]
    newest = {r["run"]: r for r in records if r["run"].startswith("snail_") and r.get("status") == "recorded"}
    assert set(newest) == {"snail_5w1s", "snail_5w5s", "snail_20w1s", "snail_20w5s"}
    for name, record in newest.items():
        folder = REPO / "benchmarks" / "snail" / "runs" / name
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["step"] == record["steps"] and summary["best"]["step"] == record["checkpoint"]["step"], name
        vals = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if '"val"' in line]
        assert vals and max(v["step"] for v in vals) <= summary["step"], name
        import hashlib

        assert hashlib.sha256((folder / "config.yaml").read_bytes()).hexdigest() == record["config_sha256"], name
