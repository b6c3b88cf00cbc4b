import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from metakit.cli.main import _COMMANDS, main

# every subcommand, in the order --help lists them
COMMANDS = ["demo", "data", "train", "eval", "predict", "plot", "bench"]


def _listed_commands(help_text: str) -> list[str]:
    """Subcommand names of the COMMAND section of ``metakit --help`` (indented 4 spaces)."""
    return re.findall(r"^    (\S+)(?:\s{2,}|$)", help_text, flags=re.MULTILINE)


def test_help_lists_subcommands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "usage: metakit" in out
    assert _listed_commands(out) == COMMANDS
    assert _COMMANDS == COMMANDS  # a new command needs a line here (and in the docs)


def test_console_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "metakit.cli.main", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("metakit ")


def test_python_dash_m_metakit_runs_the_cli():
    r = subprocess.run([sys.executable, "-m", "metakit", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("metakit "), r.stderr


def test_installed_console_script_prints_help():
    # the script pip installs beside this interpreter (e.g. .venv/bin/metakit)
    bin_dir = Path(sys.executable).parent
    script = shutil.which("metakit", path=str(bin_dir))
    if script is None:
        pytest.skip(f"no installed metakit console script in {bin_dir}; run `pip install -e .` to create it")
    r = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: metakit")
    assert _listed_commands(r.stdout) == COMMANDS
