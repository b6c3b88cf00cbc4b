"""Learning curves of a run, from its machine-readable metrics log.

:func:`read_curves` reads the run's ``metrics.jsonl`` (one JSON object per line, each with an
integer ``step``) into :class:`Curves`; :func:`plot_learning_curves` draws them into a PNG:

* left panel: training loss against step (the raw logged values, faint, and a moving average);
* right panel: training accuracy (raw and moving average) and validation accuracy with its 95%
  confidence interval as a shaded band (``mean ± ci95``, in percent). Runs whose task family
  scores another metric (MSE for regression, or any metric a family names in its validation
  records' ``"metric"`` field) show it with its band on the loss panel instead, its best value
  marked by the record's ``higher_is_better`` (default: lower is better). When the training
  records carry that metric too (the return of meta-RL's training trials), training and
  validation values of it get a panel of their own.

The log format written by the trainer is read leniently: a record's metrics may be flat
(``{"step": 10, "loss": .., "accuracy": ..}`` = training), prefixed (``"train/loss"``,
``"val/accuracy"``, ``"val_ci95"``...), or tagged with a ``"split"`` / ``"phase"`` field
(``{"step": 10, "split": "val", "accuracy": .., "ci95": ..}``). A truncated *last* line (a run
killed while writing) is ignored; any other unreadable line is an error naming the line.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Curves",
    "Series",
    "read_curves",
    "plot_learning_curves",
    "plot_run",
    "save_figure",
    "check_out_dir",
    "LEARNING_CURVES_PNG",
]

#: file name of the learning-curve figure written into the run folder
LEARNING_CURVES_PNG = "learning_curves.png"

_TRAIN = ("train", "training")
_VAL = ("val", "valid", "validation")
_TAGS = ("split", "phase", "kind", "type")


def check_out_dir(out_dir: str | os.PathLike, arg: str = "out_dir") -> Path:
    """``out_dir`` as a Path if it is a folder or can become one (it or a parent may not exist
    yet); a ValueError naming ``arg`` when it, or the nearest existing parent, is a file."""
    folder = Path(out_dir)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "is a file" if existing == folder else f"lies under the file {str(existing)!r}"
        raise ValueError(f"{arg} {str(folder)!r} {where}, not a folder; give the path of a folder")
    return folder


def save_figure(fig: Any, out: str | os.PathLike, dpi: int = 110, colors: int | None = None) -> Path:
    """Write the matplotlib figure ``fig`` to the PNG file ``out`` and close it.

    The folder of ``out`` is created if needed (a ValueError if a file stands in its way); the
    PNG is written beside ``out`` and renamed over it, so a reader never sees half a file.
    ``colors`` (2 to 256) stores the image with a palette of at most that many colours, which
    keeps large multi-panel figures small; ``None`` keeps full colour.
    """
    import matplotlib.pyplot as plt

    if colors is not None and (not isinstance(colors, int) or isinstance(colors, bool) or not 2 <= colors <= 256):
        plt.close(fig)
        raise ValueError(f"colors={colors!r} must be an int from 2 to 256 (a PNG palette's size), or None for full colour")
    out = Path(out)
    try:
        check_out_dir(out.parent, f"the folder of {out.name},")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp.png")
        try:
            fig.savefig(tmp, dpi=dpi)
            if colors is not None:
                from PIL import Image

                with Image.open(tmp) as image:
                    indexed = image.convert("RGB").quantize(colors=colors)
                indexed.save(tmp, format="PNG", optimize=True)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    finally:
        plt.close(fig)
    return out


@dataclass
class Series:
    """Values of one metric against step."""

    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def add(self, step: int, value: float) -> None:
        self.steps.append(step)
        self.values.append(value)

    def __len__(self) -> int:
        return len(self.steps)


@dataclass
class Curves:
    """The curves of one run (each may be empty)."""

    train_loss: Series = field(default_factory=Series)
    train_accuracy: Series = field(default_factory=Series)
    val_accuracy: Series = field(default_factory=Series)
    val_accuracy_ci95: Series = field(default_factory=Series)
    val_loss: Series = field(default_factory=Series)
    #: training seconds so far at each validation (the trainer's ``elapsed``; a resumed run carries on counting)
    val_elapsed: Series = field(default_factory=Series)
    #: the validation metric when it is not accuracy (``val_metric_name``: ``mse``, or what the family names)
    val_metric: Series = field(default_factory=Series)
    val_metric_ci95: Series = field(default_factory=Series)
    val_metric_name: str = "mse"
    val_metric_higher_is_better: bool = False
    #: the training values of that metric, when the algorithm logs it too (e.g. the return of RL's training trials)
    train_metric: Series = field(default_factory=Series)

    def is_empty(self) -> bool:
        return not any(len(s) for s in vars(self).values() if isinstance(s, Series))


def _flatten(rec: dict[str, Any]) -> dict[str, float]:
    """``{"train/loss": .., "val/accuracy": ..}`` from any of the accepted record layouts."""
    tag = next((str(rec[t]).lower() for t in _TAGS if isinstance(rec.get(t), str)), None)
    prefix = "val" if tag in _VAL else "train"
    out: dict[str, float] = {}
    for key, value in rec.items():
        if key == "step" or key in _TAGS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        k = key.lower()
        for sep in ("/", "_", "."):
            head, _, tail = k.partition(sep)
            if tail and head in _TRAIN + _VAL:
                k = ("val" if head in _VAL else "train") + "/" + tail
                break
        else:
            k = f"{prefix}/{k}"
        out[k] = float(value)
    return out


_KEYS = {
    "train/loss": "train_loss",
    "train/accuracy": "train_accuracy",
    "train/acc": "train_accuracy",
    "val/accuracy": "val_accuracy",
    "val/acc": "val_accuracy",
    "val/accuracy_ci95": "val_accuracy_ci95",
    "val/loss": "val_loss",
    "val/elapsed": "val_elapsed",
    "val/mse": "val_metric",
    "val/mse_ci95": "val_metric_ci95",
}


def read_curves(path: str | os.PathLike) -> Curves:
    """Read a ``metrics.jsonl`` file (see the module docstring for the accepted layouts)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"metrics file {str(path)!r} not found; is this a run folder written by `metakit train`?"
        )
    lines = path.read_text(encoding="utf-8").splitlines()
    curves = Curves()
    train_other: dict[str, Series] = {}  # training metrics without a fixed curve (one may be the family's metric)
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if n == len(lines):
                break  # the last line of a run killed while writing it
            raise ValueError(f"{path}:{n} is not valid JSON ({e.msg}); the metrics file is damaged") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
            raise ValueError(f"{path}:{n} has no integer 'step' field: {line[:80]!r}")
        flat = _flatten(rec)
        step = rec["step"]
        metric = rec.get("metric")
        other = None  # a validation metric other than accuracy, named by the record
        if isinstance(metric, str) and metric.lower() not in ("accuracy", "acc") and f"val/{metric.lower()}" in flat:
            other = f"val/{metric.lower()}"
            curves.val_metric_name = metric
            if isinstance(rec.get("higher_is_better"), bool):
                curves.val_metric_higher_is_better = rec["higher_is_better"]
        for key, value in flat.items():
            if key == "val/ci95":
                # the interval of the validation metric of this record
                mse_only = "val/mse" in flat and "val/accuracy" not in flat
                key = "val/mse_ci95" if other is not None or mse_only else "val/accuracy_ci95"
            elif key == other:
                key = "val/mse"
            name = _KEYS.get(key)
            if name is not None and math.isfinite(value):
                getattr(curves, name).add(step, value)
            elif name is None and key.startswith("train/") and math.isfinite(value):
                train_other.setdefault(key, Series()).add(step, value)
    if len(curves.val_metric):
        curves.train_metric = train_other.get(f"train/{curves.val_metric_name.lower()}", Series())
    return curves


def _moving_average(values: list[float], window: int) -> list[float]:
    """Centred moving average (the window shrinks at both ends), so the curve does not lag."""
    prefix = [0.0]
    for v in values:
        prefix.append(prefix[-1] + v)
    half = window // 2
    n = len(values)
    out = []
    for i in range(n):
        lo, hi = max(0, i - half), min(n, i + half + 1)
        out.append((prefix[hi] - prefix[lo]) / (hi - lo))
    return out


def _plot_raw_and_smooth(ax, series: Series, color: str, label: str, scale: float = 1.0) -> None:
    ys = [v * scale for v in series.values]
    window = 2 * (len(ys) // 100) + 1
    if window > 1:
        ax.plot(series.steps, ys, color=color, alpha=0.25, linewidth=0.8)
        ax.plot(series.steps, _moving_average(ys, window), color=color, linewidth=1.6, label=f"{label} (moving avg of {window})")
    else:
        ax.plot(series.steps, ys, color=color, linewidth=1.6, label=label, marker="." if len(ys) < 30 else None)


def _plot_band(ax, mean: Series, ci: Series, color: str, label: str, scale: float = 1.0) -> tuple[float, float]:
    """Plot ``mean`` with a shaded ``± ci`` band; returns the (low, high) extent of the band."""
    ys = [v * scale for v in mean.values]
    ax.plot(mean.steps, ys, color=color, linewidth=1.8, marker="o", markersize=3.5, label=label)
    half = dict(zip(ci.steps, ci.values))
    pts = [(s, y, half[s] * scale) for s, y in zip(mean.steps, ys) if s in half]
    if pts:
        ax.fill_between(
            [p[0] for p in pts],
            [p[1] - p[2] for p in pts],
            [p[1] + p[2] for p in pts],
            color=color,
            alpha=0.2,
            linewidth=0,
            label="95% confidence interval",
        )
    lows = ys + [p[1] - p[2] for p in pts]
    highs = ys + [p[1] + p[2] for p in pts]
    return min(lows), max(highs)


def _mark_best(ax, series: Series, higher_is_better: bool, scale: float, unit: str) -> None:
    pick = max if higher_is_better else min
    best = pick(range(len(series)), key=lambda i: series.values[i])
    x, y = series.steps[best], series.values[best] * scale
    ax.plot([x], [y], marker="*", markersize=11, color="black", linestyle="none", label=f"best {y:.2f}{unit} @ step {x}")


def plot_learning_curves(
    curves: Curves, out: str | os.PathLike, title: str = "", train_note: str = "", val_note: str = ""
) -> Path:
    """Draw ``curves`` into the PNG file ``out`` (folders created); returns its path.

    ``train_note`` / ``val_note`` are appended to the training / validation legend labels
    (e.g. ``"20-way 1-shot"``: training and validation episodes often differ in size).
    """
    tn = f" ({train_note})" if train_note else ""
    vn = f" ({val_note})" if val_note else ""
    if curves.is_empty():
        raise ValueError("the metrics log holds no loss or accuracy values yet; train for a few steps first")
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    has_acc = bool(len(curves.train_accuracy) or len(curves.val_accuracy))
    zoom = len(curves.val_accuracy) > 0
    own_panel = len(curves.train_metric) > 0  # the family's metric logged in training too: a panel of its own
    panels = 1 + has_acc + zoom + own_panel
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.6), squeeze=False)
    ax = axes[0][0]
    if len(curves.train_loss):
        _plot_raw_and_smooth(ax, curves.train_loss, "tab:blue", f"training loss{tn}")
    if len(curves.val_loss):
        ax.plot(curves.val_loss.steps, curves.val_loss.values, color="tab:orange", marker="o", markersize=3.5, label=f"validation loss{vn}")
    metric = curves.val_metric_name.upper() if curves.val_metric_name.lower() == "mse" else curves.val_metric_name
    if len(curves.val_metric) and not own_panel:
        _plot_band(ax, curves.val_metric, curves.val_metric_ci95, "tab:red", f"validation {metric}{vn}")
        _mark_best(ax, curves.val_metric, curves.val_metric_higher_is_better, 1.0, "")
    ax.set_title("loss")
    ax.set_ylabel("loss" if not len(curves.val_metric) or own_panel else f"loss / {metric}")
    positive = [v for s in (curves.train_loss, curves.val_loss, curves.val_metric if not own_panel else Series()) for v in s.values]
    if positive and min(positive) > 0 and max(positive) / min(positive) > 50:
        ax.set_yscale("log")
    if has_acc:
        ax = axes[0][1]
        if len(curves.train_accuracy):
            _plot_raw_and_smooth(ax, curves.train_accuracy, "tab:blue", f"training accuracy{tn}", scale=100)
        if len(curves.val_accuracy):
            _plot_band(ax, curves.val_accuracy, curves.val_accuracy_ci95, "tab:red", f"validation accuracy{vn}", scale=100)
        ax.set_title("accuracy")
        ax.set_ylabel("accuracy (%)")
    if zoom:
        # the validation curve on its own scale: near 100% it is flat on the full-range panel
        ax = axes[0][2]
        lo, hi = _plot_band(ax, curves.val_accuracy, curves.val_accuracy_ci95, "tab:red", f"validation accuracy{vn}", scale=100)
        _mark_best(ax, curves.val_accuracy, True, 100.0, "%")
        pad = max(0.05, 0.08 * (hi - lo))
        ax.set_ylim(lo - pad, min(100.0 + pad, hi + pad))
        ax.set_title("validation accuracy (mean ± 95% CI)")
        ax.set_ylabel("accuracy (%)")
    if own_panel:
        ax = axes[0][-1]
        _plot_raw_and_smooth(ax, curves.train_metric, "tab:blue", f"training {metric}{tn}")
        _plot_band(ax, curves.val_metric, curves.val_metric_ci95, "tab:red", f"validation {metric}{vn}")
        _mark_best(ax, curves.val_metric, curves.val_metric_higher_is_better, 1.0, "")
        ax.set_title(f"{metric} (validation: mean ± 95% CI)")
        ax.set_ylabel(metric)
    from matplotlib.ticker import MaxNLocator

    for ax in axes[0]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8.5)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, out)


def plot_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Learning curves of a run folder: ``RUN_DIR/metrics.jsonl`` -> ``OUT_DIR/learning_curves.png``.

    ``out_dir`` defaults to the run folder. The title names the algorithm, data and episode
    sizes from the run's ``config.yaml`` (the folder name if it has none).
    """
    from .run import CONFIG_FILE, METRICS_FILE, read_run_config

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {str(run_dir)!r} does not exist")
    curves = read_curves(run_dir / METRICS_FILE)
    title, train_note, val_note = run_dir.name, "", ""
    if (run_dir / CONFIG_FILE).is_file():
        cfg = read_run_config(run_dir)
        data = cfg.family.describe()
        t, e = cfg.train, cfg.eval
        train_note = f"{t.ways}-way {t.shots}-shot" if t.ways is not None else f"{t.shots}-shot"
        val_note = (f"{e.ways}-way {e.shots}-shot" if e.ways is not None else f"{e.shots}-shot") + f", {e.val_episodes} episodes"
        title = f"{cfg.algorithm.name} on {data}, meta-batch {t.meta_batch}  [{run_dir.name}]"
    out = Path(out_dir or run_dir) / LEARNING_CURVES_PNG
    return plot_learning_curves(curves, out, title=title, train_note=train_note, val_note=val_note)


# -- trajectories of environment tasks ------------------------------------------------------------
#: file name of the trajectories figure (environment families that draw trajectories)
TRAJECTORIES_PNG = "trajectories.png"
__all__ += ["TRAJECTORIES_PNG", "draws_trajectories", "plot_run_trajectories"]


def draws_trajectories(config: Any) -> bool:
    """Whether a run of ``config`` can draw trajectories: its task family draws them
    (``draw_trajectories(ax, task, paths)``) and its algorithm plays them (``trajectories(batch, steps)``)."""
    from ..algorithms import get_algorithm

    return callable(getattr(config.family, "draw_trajectories", None)) and callable(
        getattr(get_algorithm(config.algorithm.name), "trajectories", None)
    )


def plot_run_trajectories(
    run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *, steps: int | None = None,
    split: str = "test", checkpoint: str = "best", episodes: int = 5,
) -> Path:
    """Write ``trajectories.png``: the episodes of the first fixed task of ``split`` before adaptation and
    after each adaptation step (``steps``, default the algorithm's ``eval_steps``), drawn by the task family
    (the MAML paper's Figure 4 for 2D navigation), at most ``episodes`` of each. ``metakit plot RUN_DIR --trajectories``."""
    import matplotlib.pyplot as plt

    from .run import load_run

    loaded = load_run(run_dir, checkpoint=checkpoint, fallback=True)
    cfg = loaded.config
    if not draws_trajectories(cfg):
        raise ValueError(
            f"run {str(run_dir)!r} cannot draw trajectories: task.family={cfg.family.name} "
            f"{'draws them' if callable(getattr(cfg.family, 'draw_trajectories', None)) else 'does not draw them'} and "
            f"algorithm.name={cfg.algorithm.name} {'plays them' if callable(getattr(loaded.algorithm, 'trajectories', None)) else 'does not play them'}; "
            "trajectory plots are for environment families with draw_trajectories and algorithms with trajectories"
        )
    batch = next(iter(loaded.episodes(split, episodes=1, batch_size=1)))
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes={episodes!r} must be a positive int")
    paths = {label: runs[:episodes] for label, runs in loaded.algorithm.trajectories(batch, steps)[0].items()}
    fig, ax = plt.subplots(figsize=(5.8, 5.8))
    cfg.family.draw_trajectories(ax, batch[0], paths)
    ax.set_title(
        f"{cfg.algorithm.name}, {loaded.split_name(split)} task {batch[0].index} ({len(next(iter(paths.values())))} "
        f"episodes per policy)\n{loaded.checkpoint.name}, step {loaded.step}", fontsize=9,
    )
    fig.tight_layout()
    return save_figure(fig, Path(out_dir or run_dir) / TRAJECTORIES_PNG)
