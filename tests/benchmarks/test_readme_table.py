"""The README's Omniglot results table is exactly what the record prints
(``python benchmarks/omniglot/reproduce.py --table``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BEGIN, END = "<!-- omniglot-table -->", "<!-- /omniglot-table -->"


def test_the_readme_table_is_what_the_record_prints():
    readme = (REPO / "README.md").read_text()
    assert readme.count(BEGIN) == 1 and readme.count(END) == 1
    in_readme = readme.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")
    printed = subprocess.run([sys.executable, str(REPO / "benchmarks" / "omniglot" / "reproduce.py"), "--table"],
                             capture_output=True, text=True, check=True, timeout=120).stdout.strip("\n")
    assert in_readme == printed, (
        "README.md's table differs from the record; paste the output of "
        "`python benchmarks/omniglot/reproduce.py --table` between its markers "
        "(`... --table --readme README.md` does it)"
    )


def test_the_readme_precision_table_is_what_its_record_prints():
    begin, end = "<!-- precision-table -->", "<!-- /precision-table -->"
    readme = (REPO / "README.md").read_text()
    assert readme.count(begin) == 1 and readme.count(end) == 1
    in_readme = readme.split(begin, 1)[1].split(end, 1)[0].strip("\n")
    printed = subprocess.run([sys.executable, str(REPO / "benchmarks" / "precision" / "table.py")],
                             capture_output=True, text=True, check=True, timeout=60).stdout.strip("\n")
    assert in_readme == printed, (
        "README.md's precision table differs from its record; paste the output of "
        "`python benchmarks/precision/table.py` between its markers"
    )


def test_the_readme_sinusoid_table_is_what_its_record_prints():
    begin, end = "<!-- sinusoid-table -->", "<!-- /sinusoid-table -->"
    readme = (REPO / "README.md").read_text()
    assert readme.count(begin) == 1 and readme.count(end) == 1
    in_readme = readme.split(begin, 1)[1].split(end, 1)[0].strip("\n")
    printed = subprocess.run([sys.executable, str(REPO / "benchmarks" / "sinusoid" / "record.py"), "table"],
                             capture_output=True, text=True, check=True, timeout=60).stdout.strip("\n")
    assert in_readme == printed, "README.md's sinusoid table differs from its record; paste `record.py table`"
