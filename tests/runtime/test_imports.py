"""run.imports: a task family of the user's own, registered from a file or module the config names,
works in every command of a fresh process (train, then eval and plot from another directory)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml

from metakit.options import ConfigError
from metakit.runtime.config import Config, load_config
from metakit.runtime.imports import import_user_modules
from metakit.tasks import available_families

ENVS = textwrap.dedent(
    '''
    import gymnasium
    import numpy as np
    from metakit.tasks import env_family


    class Coin(gymnasium.Env):
        """Arm 0 pays 1 with probability p, arm 1 with 1 - p; one pull per episode."""

        observation_space = gymnasium.spaces.Box(0.0, 1.0, (1,), np.float32)
        action_space = gymnasium.spaces.Discrete(2)

        def __init__(self, p, **kwargs):
            self.p = p

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            return np.zeros(1, np.float32), {{}}

        def step(self, action):
            win = self.np_random.random() < (self.p if action == 0 else 1 - self.p)
            return np.zeros(1, np.float32), float(win), True, False, {{}}


    env_family("{name}", lambda params, **kw: Coin(params["p"], **kw), lambda rng: {{"p": float(rng.uniform())}})
    '''
)

CONFIG = textwrap.dedent(
    """
    task: {{family: {name}}}
    train: {{shots: 4, queries: 4, meta_batch: 8, steps: 4}}
    eval: {{val_episodes: 0, test_episodes: 16}}
    model: {{name: recurrent_policy, hidden: 8}}
    algorithm: {{name: rl2, epochs: 1, minibatches: 1}}
    run: {{imports: [{entry}], checkpoint_every: 2, progress: false, num_threads: 1}}
    """
)


def _metakit(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, "-m", "metakit", *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env
    )


def test_a_family_from_a_file_trains_evaluates_and_plots_from_a_fresh_process_in_another_directory(tmp_path):
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    (project / "coin_envs.py").write_text(ENVS.format(name="_coins_file"))
    (project / "coins.yaml").write_text(CONFIG.format(name="_coins_file", entry="coin_envs.py"))
    r = _metakit("train", "coins.yaml", "--out", str(tmp_path / "run"), cwd=project)
    assert r.returncode == 0, r.stderr
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert saved.run.imports == [str(project / "coin_envs.py")]  # stored absolute
    r = _metakit("eval", str(tmp_path / "run"), "--json", cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["task"] == "_coins_file" and result["episodes"] == 16 and 0 <= result["return"] <= 4
    r = _metakit("plot", str(tmp_path / "run"), cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    r = _metakit("train", "--resume", str(tmp_path / "run"), "train.steps=6", cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    # the file moves: every command names the stored path and the way out; resuming with the new path works
    moved = tmp_path / "moved_envs.py"
    (project / "coin_envs.py").rename(moved)
    r = _metakit("eval", str(tmp_path / "run"), cwd=elsewhere)
    assert r.returncode != 0 and f"looked for {project / 'coin_envs.py'}" in r.stderr and "RUN/config.yaml" in r.stderr
    r = _metakit("train", "--resume", str(tmp_path / "run"), "train.steps=8", f"run.imports=[{moved}]", cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["run"]["imports"] == [str(moved)]


def test_a_module_name_is_imported_from_the_python_path_and_a_missing_one_is_named(tmp_path):
    (tmp_path / "my_coin_pkg.py").write_text(ENVS.format(name="_coins_module"))
    (tmp_path / "coins.yaml").write_text(CONFIG.format(name="_coins_module", entry="my_coin_pkg"))
    env_cwd = tmp_path / "elsewhere"
    env_cwd.mkdir()
    r = subprocess.run(
        [sys.executable, "-m", "metakit", "train", str(tmp_path / "coins.yaml"), "--out", str(tmp_path / "run")],
        cwd=env_cwd, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", "")},
    )
    assert r.returncode == 0, r.stderr
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["run"]["imports"] == ["my_coin_pkg"]  # a name stays a name
    r = _metakit("train", str(tmp_path / "coins.yaml"), "--out", str(tmp_path / "run2"), cwd=env_cwd)
    assert r.returncode != 0
    assert "run.imports: no module named 'my_coin_pkg'" in r.stderr and "PYTHONPATH" in r.stderr


def test_entries_are_stored_without_surrounding_spaces(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "spaced.py").write_text(ENVS.format(name="_coins_spaced"))
    raw = {"task": {"family": "_coins_spaced"}, "train": {"shots": 2, "queries": 2, "meta_batch": 4, "steps": 2},
           "eval": {"val_episodes": 0}, "model": {"name": "recurrent_policy"}, "algorithm": {"name": "rl2"},
           "run": {"imports": [" spaced.py ", " json "]}}
    assert Config.from_dict(raw).run.imports == [str(tmp_path / "spaced.py"), "json"]
    assert Config.from_dict(Config.from_dict(raw).to_dict()).run.imports == [str(tmp_path / "spaced.py"), "json"]


def test_a_file_is_imported_once_per_process(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "once.py").write_text(ENVS.format(name="_coins_once"))
    raw = {"task": {"family": "_coins_once"}, "train": {"shots": 2, "queries": 2, "meta_batch": 4, "steps": 2},
           "eval": {"val_episodes": 0}, "model": {"name": "recurrent_policy"}, "algorithm": {"name": "rl2"},
           "run": {"imports": ["once.py"]}}
    first = Config.from_dict(raw)
    second = Config.from_dict(raw)  # a second import would register a second class under the name and fail
    assert first.family.name == second.family.name == "_coins_once"
    assert "_coins_once" in available_families(private=True)


@pytest.mark.parametrize(
    "entries, message",
    [
        ("one.py", r"run.imports='one.py' must be a list of module names or .py paths, e.g. run.imports=\[my_envs.py\]"),
        ([""], r"run.imports: every entry must be a non-empty module name or .py path, got ''"),
        ([3], r"run.imports: every entry must be a non-empty module name or .py path, got 3"),
        (["missing.py"], r"run.imports: 'missing.py' is not a file \(looked for .*missing.py\)"),
        (["no_such_module_xyz"], r"run.imports: no module named 'no_such_module_xyz' in this Python environment"),
        (["broken.py"], r"run.imports: importing 'broken.py' raised ZeroDivisionError: division by zero \(at .*broken.py, line 2\)"),
        (["imports_missing.py"], r"run.imports: importing 'imports_missing.py' raised ModuleNotFoundError: No module named 'absent_dep_xyz'"),
        (["syntax.py"], r"run.imports: importing 'syntax.py' raised SyntaxError: .* \(at .*syntax.py, line 2\)"),
        (["deep.py"], r"run.imports: importing 'deep.py' raised JSONDecodeError: .* \(at .*deep.py, line 3\)"),
    ],
)
def test_bad_imports_are_refused_naming_the_entry_and_the_cause(tmp_path, monkeypatch, entries, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.py").write_text("x = 1\ny = 1 / 0\n")
    (tmp_path / "imports_missing.py").write_text("import absent_dep_xyz\n")
    (tmp_path / "syntax.py").write_text("x = 1\ndef f(:\n")
    (tmp_path / "deep.py").write_text("import json\n\njson.loads('not json')\n")  # raised inside the json module
    with pytest.raises(ConfigError, match=message):
        import_user_modules(entries)


def test_an_unknown_family_points_at_run_imports():
    with pytest.raises(ConfigError, match=r"task.family='my_goals' is not a known task family.*list the module that registers it in run.imports"):
        Config.from_dict({"task": {"family": "my_goals"}})


def test_the_documented_example_runs_as_written(tmp_path):
    """docs/task_families.md's coin family and config, copied out of the page, train and evaluate."""
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "task_families.md").read_text()
    blocks = page[page.index("A file `coin_envs.py`"):].split("```")
    python, config = blocks[1], blocks[3]
    assert python.startswith("python\n") and config.startswith("yaml\n")
    (tmp_path / "coin_envs.py").write_text(python.split("\n", 1)[1])
    (tmp_path / "coins.yaml").write_text(config.split("\n", 1)[1])
    r = _metakit("train", "coins.yaml", "train.steps=16", "eval.val_every=8", "run.progress=false",
                 "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = _metakit("eval", str(tmp_path / "run"), "--episodes", "50", "--json", cwd=tmp_path.parent)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["task"] == "coins"
