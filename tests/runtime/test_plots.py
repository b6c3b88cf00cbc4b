import json
import math

import matplotlib
import numpy as np
import pytest
from PIL import Image

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from metakit.runtime.plots import check_out_dir, plot_learning_curves, read_curves, save_figure


def _write(path, records, tail: str = ""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def _synthetic_run(steps: int = 200, every: int = 50) -> list[dict]:
    recs = []
    for s in range(1, steps + 1):
        recs.append({"step": s, "split": "train", "loss": 2.0 * math.exp(-s / 60) + 0.05, "accuracy": 1 - 0.8 * math.exp(-s / 50)})
        if s % every == 0:
            recs.append({"step": s, "split": "val", "accuracy": 1 - 0.7 * math.exp(-s / 50), "ci95": 0.01})
    return recs


def test_read_curves_layouts(tmp_path):
    path = _write(
        tmp_path / "m.jsonl",
        [
            {"step": 1, "loss": 2.0, "accuracy": 0.25, "lr": 0.001},  # flat = training
            {"step": 2, "train/loss": 1.5, "train/accuracy": 0.5},
            {"step": 2, "val/accuracy": 0.6, "val/ci95": 0.02},
            {"step": 3, "split": "val", "accuracy": 0.7, "ci95": 0.01, "loss": 0.9},
            {"step": 4, "phase": "validation", "mse": 0.3, "ci95": 0.05},
            {"step": 5, "train_loss": 1.0, "val_accuracy": 0.8, "val_accuracy_ci95": 0.03},
        ],
    )
    c = read_curves(path)
    assert (c.train_loss.steps, c.train_loss.values) == ([1, 2, 5], [2.0, 1.5, 1.0])
    assert (c.train_accuracy.steps, c.train_accuracy.values) == ([1, 2], [0.25, 0.5])
    assert (c.val_accuracy.steps, c.val_accuracy.values) == ([2, 3, 5], [0.6, 0.7, 0.8])
    assert (c.val_accuracy_ci95.steps, c.val_accuracy_ci95.values) == ([2, 3, 5], [0.02, 0.01, 0.03])
    assert (c.val_loss.steps, c.val_metric.values, c.val_metric_ci95.values) == ([3], [0.3], [0.05])


def test_read_curves_keeps_the_elapsed_time_of_validations_only(tmp_path):
    # the trainer's records: training and validation both carry "elapsed"; only the validation one is kept
    c = read_curves(_write(tmp_path / "m.jsonl", [
        {"step": 100, "split": "train", "elapsed": 50.0, "loss": 1.0},
        {"step": 100, "split": "val", "elapsed": 61.5, "accuracy": 0.7, "ci95": 0.02},
    ]))
    assert (c.val_elapsed.steps, c.val_elapsed.values) == ([100], [61.5])
    assert c.val_accuracy.values == [0.7] and c.train_loss.values == [1.0]


def test_read_curves_ignores_truncated_last_line_only(tmp_path):
    c = read_curves(_write(tmp_path / "m.jsonl", [{"step": 1, "loss": 1.0}], tail='{"step": 2, "lo'))
    assert c.train_loss.values == [1.0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1, "loss": 1.0}\nnot json\n{"step": 3, "loss": 0.5}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2 is not valid JSON .*the metrics file is damaged"):
        read_curves(bad)
    with pytest.raises(ValueError, match=r"m2.jsonl:1 has no integer 'step' field"):
        read_curves(_write(tmp_path / "m2.jsonl", [{"loss": 1.0}]))
    with pytest.raises(FileNotFoundError, match="metrics file .*nope.jsonl' not found; is this a run folder"):
        read_curves(tmp_path / "nope.jsonl")


def _curve(ax, xs, ys) -> bool:
    """Whether ``ax`` has a line through exactly these points."""
    return any(
        np.array_equal(line.get_xdata(), xs) and np.allclose(line.get_ydata(), ys, rtol=0, atol=1e-9)
        for line in ax.get_lines()
    )


def _band(ax, xs, low, high) -> bool:
    """Whether ``ax`` has a shaded band between ``low`` and ``high`` at ``xs``."""
    for collection in ax.collections:
        vertices = np.concatenate([p.vertices for p in collection.get_paths()])
        ok = True
        for x, lo, hi in zip(xs, low, high):
            at = vertices[np.isclose(vertices[:, 0], x)][:, 1]
            ok &= bool(np.isclose(at, lo).any() and np.isclose(at, hi).any())
        if ok:
            return True
    return False


def _centred_average(values, window):
    half, n = window // 2, len(values)
    return [float(np.mean(values[max(0, i - half) : i + half + 1])) for i in range(n)]


def test_plot_shows_the_logged_curves(tmp_path, saved_figures):
    records = _synthetic_run()
    curves = read_curves(_write(tmp_path / "m.jsonl", records))
    out = plot_learning_curves(curves, tmp_path / "sub" / "curves.png", title="protonet omniglot 5-way 1-shot")
    assert out == tmp_path / "sub" / "curves.png"
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size[0] > img.size[1] > 300
    assert sorted(p.name for p in out.parent.iterdir()) == ["curves.png"]  # no temporary file left
    (fig, _), = saved_figures
    assert fig.get_suptitle() == "protonet omniglot 5-way 1-shot"
    loss_ax, acc_ax, val_ax = fig.axes
    assert [a.get_title() for a in fig.axes] == ["loss", "accuracy", "validation accuracy (mean ± 95% CI)"]
    assert all(a.get_xlabel() == "step" for a in fig.axes)
    train = [r for r in records if r["split"] == "train"]
    val = [r for r in records if r["split"] == "val"]
    steps = [r["step"] for r in train]
    loss = [r["loss"] for r in train]
    acc = [100 * r["accuracy"] for r in train]
    # raw values and their centred moving average (200 points: a window of 5)
    assert _curve(loss_ax, steps, loss) and _curve(loss_ax, steps, _centred_average(loss, 5))
    assert _curve(acc_ax, steps, acc) and _curve(acc_ax, steps, _centred_average(acc, 5))
    vs = [r["step"] for r in val]
    vm = [100 * r["accuracy"] for r in val]
    lo, hi = [m - 1.0 for m in vm], [m + 1.0 for m in vm]  # ci95 0.01 = 1 point
    for ax in (acc_ax, val_ax):
        assert _curve(ax, vs, vm) and _band(ax, vs, lo, hi)
    # the best validation is starred, and the zoomed panel spans the band
    assert _curve(val_ax, [vs[-1]], [vm[-1]])
    assert any(f"best {vm[-1]:.2f}% @ step {vs[-1]}" == t.get_text() for t in val_ax.get_legend().get_texts())
    bottom, top = val_ax.get_ylim()
    assert bottom < min(lo) and max(hi) < top and top - bottom < np.subtract(*acc_ax.get_ylim()[::-1])


def test_plot_regression_run_has_one_panel(tmp_path, saved_figures):
    recs = [{"step": s, "loss": 1 / s} for s in range(1, 30)] + [
        {"step": 10, "split": "val", "mse": 0.2, "ci95": 0.02},
        {"step": 20, "split": "val", "mse": 0.1, "ci95": 0.01},
        {"step": 29, "split": "val", "mse": 0.15, "ci95": 0.03},
    ]
    out = plot_learning_curves(read_curves(_write(tmp_path / "m.jsonl", recs)), tmp_path / "c.png")
    with Image.open(out) as img:
        assert img.size[0] < 1000  # one panel (6.5 in at 110 dpi)
    (fig, _), = saved_figures
    (ax,) = fig.axes
    assert _curve(ax, list(range(1, 30)), [1 / s for s in range(1, 30)])
    assert _curve(ax, [10, 20, 29], [0.2, 0.1, 0.15]) and _band(ax, [10, 20, 29], [0.18, 0.09, 0.12], [0.22, 0.11, 0.18])
    assert _curve(ax, [20], [0.1])  # the lowest MSE is the best


@pytest.mark.parametrize("higher_is_better, best", [(True, (10, 0.8)), (False, (20, 0.3))])
def test_a_family_metric_is_plotted_with_its_name_and_direction(tmp_path, saved_figures, higher_is_better, best):
    """Validation records of a family scored by another metric ("return" of an RL family, say)."""
    recs = [{"step": s, "loss": 1 / s} for s in range(1, 30)] + [
        {"step": 10, "split": "val", "metric": "return", "return": 0.8, "ci95": 0.1, "higher_is_better": higher_is_better},
        {"step": 20, "split": "val", "metric": "return", "return": 0.3, "ci95": 0.1, "higher_is_better": higher_is_better},
    ]
    curves = read_curves(_write(tmp_path / "m.jsonl", recs))
    assert (curves.val_metric_name, curves.val_metric.values, curves.val_metric_ci95.values) == ("return", [0.8, 0.3], [0.1, 0.1])
    assert not len(curves.val_accuracy) and not len(curves.val_accuracy_ci95)
    plot_learning_curves(curves, tmp_path / "c.png")
    (fig, _), = saved_figures
    (ax,) = fig.axes
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "validation return" in labels and ax.get_ylabel() == "loss / return"
    assert f"best {best[1]:.2f} @ step {best[0]}" in labels


def test_a_family_metric_logged_in_training_too_gets_its_own_panel(tmp_path, saved_figures):
    """Meta-RL algorithms log the return of their training trials beside the loss."""
    recs = [{"step": s, "split": "train", "loss": 1 / s, "return": float(s)} for s in range(1, 30)] + [
        {"step": 10, "split": "val", "metric": "return", "return": 8.0, "ci95": 1.0, "higher_is_better": True},
        {"step": 20, "split": "val", "metric": "return", "return": 18.0, "ci95": 1.0, "higher_is_better": True},
    ]
    curves = read_curves(_write(tmp_path / "m.jsonl", recs))
    assert curves.train_metric.values == [float(s) for s in range(1, 30)]
    plot_learning_curves(curves, tmp_path / "c.png")
    (fig, _), = saved_figures
    loss_ax, ret_ax = fig.axes
    assert loss_ax.get_ylabel() == "loss" and ret_ax.get_ylabel() == "return"
    assert _curve(ret_ax, list(range(1, 30)), [float(s) for s in range(1, 30)])
    assert _curve(ret_ax, [10, 20], [8.0, 18.0]) and _band(ret_ax, [10, 20], [7.0, 17.0], [9.0, 19.0])
    assert not _curve(loss_ax, [10, 20], [8.0, 18.0])


def test_plot_empty_log_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="the metrics log holds no loss or accuracy values yet"):
        plot_learning_curves(read_curves(_write(tmp_path / "m.jsonl", [{"step": 1, "lr": 0.1}])), tmp_path / "c.png")


def test_save_figure_writes_a_png_and_refuses_a_file_in_the_way(tmp_path):
    fig = plt.figure()
    out = save_figure(fig, tmp_path / "new" / "f.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list((tmp_path / "new").glob("*.tmp.png"))
    assert not plt.fignum_exists(fig.number)  # closed
    (tmp_path / "file").write_text("x")
    fig = plt.figure()
    with pytest.raises(ValueError, match=r"the folder of f.png, '.*file' is a file, not a folder"):
        save_figure(fig, tmp_path / "file" / "f.png")
    assert not plt.fignum_exists(fig.number)  # closed on error too
    with pytest.raises(ValueError, match=r"--out '.*file/sub' lies under the file '.*file', not a folder"):
        check_out_dir(tmp_path / "file" / "sub", "--out")
    assert check_out_dir(tmp_path / "a" / "b", "--out") == tmp_path / "a" / "b"


def test_save_figure_with_colors_writes_a_palette_png_and_refuses_a_bad_count(tmp_path):
    from PIL import Image

    fig, ax = plt.subplots()
    for k in range(8):
        ax.plot([0, 1], [k, k + 1], lw=3)
    ax.fill_between([0, 1], [0, 1], [2, 3], alpha=0.3)
    out = save_figure(fig, tmp_path / "p.png", colors=16)
    with Image.open(out) as image:
        assert image.mode == "P"
        assert len(image.getcolors(256)) <= 16
    assert not list(tmp_path.glob("*.tmp.png"))
    fig = plt.figure()
    with pytest.raises(ValueError, match=r"colors=300 must be an int from 2 to 256"):
        save_figure(fig, tmp_path / "q.png", colors=300)
    assert not plt.fignum_exists(fig.number) and not (tmp_path / "q.png").exists()
