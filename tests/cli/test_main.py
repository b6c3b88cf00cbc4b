import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import metakit.runtime.trainer as trainer_module
from metakit.cli.main import _COMMANDS, UsageError, apply_process_options, main

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
    r = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: metakit")
    assert _listed_commands(r.stdout) == COMMANDS


def _python(code: str, **env: str) -> str:
    """Run ``code`` in a fresh interpreter (OMP_WAIT_POLICY removed from its environment unless given)."""
    environ = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | env
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=600)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_importing_and_parsing_leave_the_process_alone():
    code = (
        "import os\n"
        "from metakit.cli.main import build_parser\n"
        "build_parser().parse_args(['plot', 'RUN'])\n"
        "print(os.environ.get('OMP_WAIT_POLICY'))"
    )
    assert _python(code) == "None"


@pytest.mark.parametrize(("argv", "expected"), [([], "PASSIVE"), (["--omp-wait-policy", "active"], "ACTIVE")])
def test_the_command_sets_the_wait_policy_before_torch_loads(argv, expected):
    code = (
        "import os, sys\n"
        "seen = []\n"
        "class Watch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' and not seen:\n"
        "            seen.append(os.environ.get('OMP_WAIT_POLICY'))\n"
        "sys.meta_path.insert(0, Watch())\n"
        "from metakit.cli.main import main\n"
        f"assert main({argv!r} + ['plot', 'no-such-run']) == 2\n"
        "print(seen[0])"
    )
    assert _python(code) == expected


@pytest.mark.parametrize(
    ("env", "option", "expected"),
    [({}, "None", "PASSIVE"), ({"OMP_WAIT_POLICY": "active"}, "None", "active"), ({"OMP_WAIT_POLICY": "passive"}, "'active'", "ACTIVE")],
)
def test_omp_wait_policy_is_set_before_torch_loads(env, option, expected):
    code = (
        "import os\n"
        "from metakit.cli.main import apply_process_options\n"
        f"apply_process_options({option}, False)\n"
        "print(os.environ['OMP_WAIT_POLICY'])"
    )
    assert _python(code, **env) == expected


def test_omp_wait_policy_once_torch_is_loaded(monkeypatch):
    assert "torch" in sys.modules  # loaded, as in any in-process call of main
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    apply_process_options(None, False)  # the default leaves the caller's process alone
    assert "OMP_WAIT_POLICY" not in os.environ
    with pytest.raises(UsageError, match=r"--omp-wait-policy=active cannot take effect: torch is already loaded"):
        apply_process_options("active", False)
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    apply_process_options("active", False)  # already in force: nothing to do


def test_allocator_is_tuned_only_when_asked(monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.setattr(trainer_module, "tune_allocator", lambda: calls.append(1) or True)
    assert main(["plot", str(tmp_path / "none")]) == 2
    assert calls == []
    assert main(["--tune-allocator", "plot", str(tmp_path / "none")]) == 2
    assert calls == [1]
    capsys.readouterr()


def test_python_dash_m_on_the_cli_module_reports_errors_as_one_line(tmp_path):
    """``python -m metakit.cli.main`` runs the package's module, whose error classes the commands
    raise (a usage error raised as ``metakit.cli.main.UsageError`` must be caught as one)."""
    for argv, start in ((["train"], "metakit train: error: give a config file"),
                        (["train", str(tmp_path / "none.yaml")], "metakit train: error: config file")):
        p = subprocess.run([sys.executable, "-m", "metakit.cli.main", *argv], capture_output=True, text=True, timeout=600)
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
        assert p.stderr.strip().startswith(start), p.stderr
