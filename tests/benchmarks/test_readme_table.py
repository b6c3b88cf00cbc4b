"""The README's results tables are exactly what their records print: the Omniglot table
(``python benchmarks/omniglot/reproduce.py --table``), the float32 precision table
(``benchmarks/precision/table.py``), the sinusoid table (``benchmarks/sinusoid/record.py table``) and the
time-to-accuracy tables of first-order MAML and Meta-SGD (``benchmarks/omniglot/curves.py --compare ... --reach ...``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

TABLES = [
    ("omniglot-table", ["benchmarks/omniglot/reproduce.py", "--table"],
     "`python benchmarks/omniglot/reproduce.py --table --readme README.md` writes it"),
    ("precision-table", ["benchmarks/precision/table.py"], "paste the output of `python benchmarks/precision/table.py`"),
    ("sinusoid-table", ["benchmarks/sinusoid/record.py", "table"],
     "paste the output of `python benchmarks/sinusoid/record.py table`"),
    ("time-to-accuracy", ["benchmarks/omniglot/curves.py", "--record", "benchmarks/omniglot/results.json", "--compare",
                          "fomaml_5w1s", "fomaml_5w1s_published", "--reach", "85", "90", "91", "93", "95", "96"],
     "paste the output of the curves.py command above the table in README.md"),
    ("time-to-accuracy-metasgd", ["benchmarks/omniglot/curves.py", "--record", "benchmarks/omniglot/results.json",
                                  "--compare", "metasgd_20w1s", "metasgd_20w1s_strided", "metasgd_20w1s_strided_rate01",
                                  "--reach", "60", "70", "75", "80", "85"],
     "paste the output of the curves.py command above the table in README.md"),
]


@pytest.mark.parametrize("marker, command, fix", TABLES, ids=[t[0] for t in TABLES])
def test_the_readme_table_is_what_its_record_prints(marker, command, fix):
    begin, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    readme = (REPO / "README.md").read_text()
    assert readme.count(begin) == 1 and readme.count(end) == 1
    in_readme = readme.split(begin, 1)[1].split(end, 1)[0].strip("\n")
    printed = subprocess.run([sys.executable, str(REPO / command[0]), *command[1:]],
                             capture_output=True, text=True, check=True, timeout=600).stdout.strip("\n")
    assert in_readme == printed, f"README.md's {marker} differs from its record; {fix}"


def test_the_readme_rl_table_is_what_its_record_prints():
    begin, end = "<!-- rl-table -->", "<!-- /rl-table -->"
    readme = (REPO / "README.md").read_text()
    if begin not in readme and end not in readme:
        pytest.skip("README.md has no <!-- rl-table --> / <!-- /rl-table --> markers yet; add them and run "
                    "`python benchmarks/rl/record.py table --readme README.md`")
    assert readme.count(begin) == 1 and readme.count(end) == 1
    in_readme = readme.split(begin, 1)[1].split(end, 1)[0].strip("\n")
    printed = subprocess.run([sys.executable, str(REPO / "benchmarks" / "rl" / "record.py"), "table"],
                             capture_output=True, text=True, check=True, timeout=600).stdout.strip("\n")
    assert in_readme == printed, ("README.md's rl-table differs from benchmarks/rl/runs.json; "
                                  "`python benchmarks/rl/record.py table --readme README.md` writes it")
