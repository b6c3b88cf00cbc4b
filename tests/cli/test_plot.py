import math
import re

import pytest
from PIL import Image

from metakit.cli.main import main
from metakit.runtime.config import Config
from metakit.runtime.logging import MetricsLogger
from metakit.runtime.plots import read_curves
from metakit.runtime.run import CONFIG_FILE


def _fake_run(tmp_path, val: bool = True, algorithm: str = "protonet"):
    """A run folder with the trainer's own log format (MetricsLogger) and config, without training."""
    run = tmp_path / "run"
    run.mkdir()
    cfg = Config.from_dict(
        {
            "data": {"dataset": "omniglot", "root": str(tmp_path)},
            "train": {"ways": 20, "shots": 1, "meta_batch": 4},
            "algorithm": {"name": algorithm},
        }
    )
    (run / CONFIG_FILE).write_text(cfg.to_yaml())
    with MetricsLogger(run, tensorboard=False) as log:
        for step in range(10, 310, 10):
            log.log(step, "train", {"loss": 2 * math.exp(-step / 80), "accuracy": 1 - math.exp(-step / 60), "lr": 1e-3})
            if val and step % 100 == 0:
                log.log(step, "val", {"metric": "accuracy", "accuracy": 0.9 + step / 10000, "ci95": 0.01,
                                      "episodes": 100, "higher_is_better": True, "is_best": True})
    return run


def test_plot_command_writes_png_into_the_run(tmp_path, capsys, saved_figures):
    run = _fake_run(tmp_path)
    assert main(["plot", str(run)]) == 0
    png = run / "learning_curves.png"
    assert capsys.readouterr().out.strip() == f"wrote {png}"
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size[0] > 3 * 400  # three panels: loss, accuracy, validation
    (fig, _), = saved_figures
    # the title and legends come from the run's config.yaml, the curves from its metrics.jsonl
    assert fig.get_suptitle() == "protonet on omniglot (vinyals), meta-batch 4  [run]"
    loss_ax, acc_ax, val_ax = fig.axes
    labels = [t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts()]
    assert "training loss (20-way 1-shot)" in labels
    assert "validation accuracy (20-way 1-shot, 100 episodes)" in labels
    steps = list(range(10, 310, 10))
    (loss_line,) = loss_ax.get_lines()  # 30 points: no moving average
    assert list(loss_line.get_xdata()) == steps
    assert list(loss_line.get_ydata()) == pytest.approx([2 * math.exp(-s / 80) for s in steps])
    val_lines = [ln for ln in val_ax.get_lines() if list(ln.get_xdata()) == [100, 200, 300]]
    assert [list(ln.get_ydata()) for ln in val_lines][0] == pytest.approx([91.0, 92.0, 93.0])
    curves = read_curves(run / "metrics.jsonl")
    assert curves.val_accuracy.steps == [100, 200, 300] and curves.val_accuracy_ci95.values == [0.01] * 3


def test_plot_command_out_folder(tmp_path, capsys, saved_figures):
    run = _fake_run(tmp_path, val=False)
    assert main(["plot", str(run), "--out", str(tmp_path / "figs")]) == 0
    assert (tmp_path / "figs" / "learning_curves.png").is_file() and not (run / "learning_curves.png").exists()
    with Image.open(tmp_path / "figs" / "learning_curves.png") as img:
        assert img.size[0] < 3 * 500  # two panels without validation
    (fig, _), = saved_figures
    assert [ax.get_title() for ax in fig.axes] == ["loss", "accuracy"]
    (acc_line,) = fig.axes[1].get_lines()
    assert list(acc_line.get_ydata()) == pytest.approx([100 * (1 - math.exp(-s / 60)) for s in range(10, 310, 10)])


def test_plot_command_errors(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert f"run folder {str(tmp_path / 'missing')!r} does not exist; give a folder written by `metakit train`" in err
    (tmp_path / "empty").mkdir()
    assert main(["plot", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "metrics.jsonl' not found; is this a run folder written by `metakit train`?" in err


@pytest.mark.parametrize("content", ["", '{"step": 1, "split": "train", "lr": 0.1}\n'])
def test_plot_command_nothing_to_plot(tmp_path, capsys, content):
    run = _fake_run(tmp_path)
    (run / "metrics.jsonl").write_text(content)
    assert main(["plot", str(run)]) == 2
    assert "the metrics log holds no loss or accuracy values yet" in capsys.readouterr().err


def test_plot_out_must_be_a_folder(tmp_path, capsys):
    run = _fake_run(tmp_path)
    (tmp_path / "file.png").write_bytes(b"x")
    assert main(["plot", str(run), "--out", str(tmp_path / "file.png")]) == 2
    err = capsys.readouterr().err
    assert f"error: --out {str(tmp_path / 'file.png')!r} is a file, not a folder; give the path of a folder" in err
    assert (tmp_path / "file.png").read_bytes() == b"x" and not (run / "learning_curves.png").exists()


def test_embeddings_of_a_run_without_an_embedding_network_is_a_one_line_error(tmp_path, capsys):
    run = _fake_run(tmp_path, algorithm="maml")
    assert main(["plot", str(run), "--embeddings"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"error: --embeddings: run {str(run)!r} trains maml, which has no embedding network" in err
    able = set(re.search(r"embedding plots are for (.*?)\. Run", err).group(1).split(", "))
    # (other tests may register more algorithms)
    assert {"baseline", "matching", "nearest", "protonet", "relation", "siamese"} <= able
    assert not able & {"maml", "metasgd", "anil", "reptile"}
    assert f"Run `metakit plot {run}` without --embeddings" in err
    assert not (run / "learning_curves.png").exists()  # refused before any figure is written
