"""``metakit demo``: a short end-to-end run (train, evaluate by step, Figure 2), its numbers
agree with ``evaluate``, its config is the shipped one, and bad options are clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import metakit

from metakit.cli.demo import demo_config, mse_by_step, plot_figure2
from metakit.cli.main import main
from metakit.runtime.config import load_config
from metakit.runtime.evaluation import evaluate
from metakit.runtime.run import load_run

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "out"
    assert main(["demo", "--steps", "40", "--tasks", "12", "--out", str(out)]) == 0
    return out


def test_demo_writes_results_figure_and_a_run(demo_dir, capsys):
    rec = json.loads((demo_dir / "results.json").read_text())
    assert rec["shots"] == 5 and rec["train_steps"] == 40 and rec["test_tasks"] == 12
    assert set(rec["mse"]) == {str(k) for k in range(11)}
    for k in ("0", "1", "5", "10"):
        assert rec["mse"][k]["mean"] > 0 and rec["mse"][k]["ci95"] > 0
    png = demo_dir / "figure2.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (demo_dir / "run" / "config.yaml").exists()
    loaded = load_run(demo_dir / "run", "last")
    assert loaded.step == 40 and loaded.config.algorithm.name == "maml"


def test_demo_numbers_agree_with_evaluate(demo_dir):
    loaded = load_run(demo_dir / "run", "last")
    episodes = loaded.episodes("test", queries=100, episodes=12)
    by_step = mse_by_step(loaded.algorithm, episodes)
    rec = json.loads((demo_dir / "results.json").read_text())
    for k in (0, 1, 10):
        assert by_step[k].mean == pytest.approx(rec["mse"][str(k)]["mean"], rel=1e-6)
    # `metakit eval` adapts with eval_steps=10: the same per-task numbers as the 10-step column
    result = evaluate(loaded.algorithm, episodes)
    assert result.metric == "mse"
    assert torch.allclose(result.per_episode, by_step[10].per_episode, rtol=1e-5)


def test_figure2_draws_the_true_curves_the_fits_and_the_error_by_step(demo_dir, tmp_path, saved_figures):
    loaded = load_run(demo_dir / "run", "last")
    fixed = loaded.episodes("test", queries=100, episodes=12)
    results = mse_by_step(loaded.algorithm, fixed)
    path = plot_figure2(loaded.algorithm, fixed, results, 5, tmp_path)
    assert path == tmp_path / "figure2.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (fig, _), = saved_figures
    *task_axes, mse_ax = fig.axes
    assert len(task_axes) == 3
    grid = np.linspace(-5, 5, 200)
    with torch.no_grad():
        for i, ax in enumerate(task_axes):
            amplitude, phase = float(fixed.params.amplitude[i]), float(fixed.params.phase[i])
            truth, before, one, ten = ax.get_lines()
            assert truth.get_label() == "ground truth"
            assert np.allclose(np.ravel(truth.get_ydata()), amplitude * np.sin(grid - phase), atol=1e-5)
            # before any step: the meta-learned model itself; after 1 and 10 steps: the adapted learner
            x = torch.linspace(-5, 5, 200).view(-1, 1)
            assert np.allclose(np.ravel(before.get_ydata()), loaded.algorithm.model(x).view(-1).numpy(), atol=1e-6)
            learner = loaded.algorithm.adapt(fixed[i].support_x, fixed[i].support_y, None, steps=10)
            for line, k, label in ((one, 1, "1 grad step"), (ten, 10, "10 grad steps")):
                assert line.get_label() == label
                assert np.allclose(np.ravel(line.get_ydata()), learner.predict(x, step=k).view(-1).numpy(), atol=1e-6)
            assert not np.allclose(np.ravel(one.get_ydata()), np.ravel(before.get_ydata()))  # the step moved the fit
            (support,) = ax.collections
            assert np.allclose(support.get_offsets(), torch.stack([fixed[i].support_x.view(-1), fixed[i].support_y.view(-1)], 1))
            assert ax.get_title() == f"test task {i}: A={amplitude:.2f}, phase={phase:.2f}"
    mean_line = mse_ax.get_lines()[0]
    assert list(mean_line.get_xdata()) == list(range(11))
    assert np.allclose(mean_line.get_ydata(), [results[k].mean for k in range(11)])
    assert mse_ax.get_title() == "12 test tasks, 95% CI"


def test_demo_prints_the_table(tmp_path, capsys):
    assert main(["demo", "--steps", "3", "--tasks", "3", "--out", str(tmp_path / "d"), "--shots", "10"]) == 0
    out = capsys.readouterr().out
    assert "MAML sinusoid regression, K=10: test MSE over 3 tasks" in out
    for k in (0, 1, 5, 10):
        assert any(line.split()[:1] == [str(k)] for line in out.splitlines())
    assert "figure: " in out


def test_demo_config_is_the_shipped_config():
    for k in (5, 10):
        shipped = load_config(REPO / "configs" / f"maml_sinusoid_k{k}.yaml")
        assert demo_config(20000, k).to_dict() == shipped.to_dict()
    # one copy of the settings: the packaged file the demo reads, which configs/ links to
    packaged = Path(metakit.__file__).parent / "configs" / "maml_sinusoid_k5.yaml"
    assert packaged.is_file() and not packaged.is_symlink()
    assert (REPO / "configs" / "maml_sinusoid_k5.yaml").resolve() == packaged.resolve()
    assert demo_config(40, 5, seed=3, threads=2, tasks=12).to_dict() == load_config(
        packaged,
        ["train.steps=40", "eval.val_every=10", "run.checkpoint_every=10", "run.seed=3", "run.num_threads=2",
         "eval.test_episodes=12"],
    ).to_dict()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--steps", "0"], r"--steps=0 must be >= 1"),
        (["--shots", "0"], r"--shots=0 must be >= 1"),
        (["--tasks", "1"], r"--tasks=1 must be >= 2"),
        (["--threads", "0"], r"--threads=0 must be >= 1"),
    ],
)
def test_bad_options(tmp_path, capsys, argv, message):
    assert main(["demo", *argv, "--out", str(tmp_path / "x")]) == 2
    import re

    assert re.search(message, capsys.readouterr().err)


def test_refuses_an_existing_run(demo_dir, capsys):
    assert main(["demo", "--steps", "3", "--out", str(demo_dir)]) == 2
    assert "already holds a demo run" in capsys.readouterr().err


def test_refuses_a_run_folder_and_a_file(demo_dir, tmp_path, capsys):
    run = demo_dir / "run"
    before = sorted(p.name for p in run.iterdir())
    assert main(["demo", "--steps", "3", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"--out {str(run)!r} holds a run (config.yaml); the demo writes its own run into --out/run" in err
    assert sorted(p.name for p in run.iterdir()) == before
    (tmp_path / "f").write_text("x")
    assert main(["demo", "--steps", "3", "--out", str(tmp_path / "f")]) == 2
    assert f"--out {str(tmp_path / 'f')!r} is a file, not a folder" in capsys.readouterr().err
