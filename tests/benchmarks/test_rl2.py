"""benchmarks/rl/rl2.py: docs/meta_rl.md's RL² table is exactly what its records print."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_meta_rl_doc_table_is_what_the_records_print():
    begin, end = "<!-- rl2-table -->", "<!-- /rl2-table -->"
    doc = (REPO / "docs" / "meta_rl.md").read_text()
    assert doc.count(begin) == 1 and doc.count(end) == 1
    in_doc = doc.split(begin, 1)[1].split(end, 1)[0].strip("\n")
    printed = subprocess.run([sys.executable, str(REPO / "benchmarks" / "rl" / "rl2.py"), "table"],
                             capture_output=True, text=True, check=True, timeout=600).stdout.strip("\n")
    assert in_doc == printed, "docs/meta_rl.md's rl2-table differs from its records; paste `python benchmarks/rl/rl2.py table`"
