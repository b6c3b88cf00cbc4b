import subprocess
import sys

from metakit.cli.main import main


def test_help_lists_subcommands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "usage: metakit" in out


def test_console_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "metakit.cli.main", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("metakit ")
