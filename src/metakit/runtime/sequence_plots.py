"""Figures of the model-based sequence learners: per-instance accuracy curves and memory access.

* :func:`plot_instance_curves`: the validation accuracy at the k-th instance of a class against
  training step (one line per instance, with its 95% band), read from the ``instance_k`` /
  ``instance_k_ci95`` values of the run's validation records (``metrics.jsonl``); a sequence
  run's learning picture, in the form of Santoro et al. 2016's Figure 2.
* :func:`plot_run_memory`: one fixed test episode of a trained memory model, its read and write
  weights as images (time step x memory location, one panel per head): which location each step
  reads and writes. The title and the y-axis name every step's class and instance.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from .plots import Series, save_figure

__all__ = ["read_instance_curves", "plot_instance_curves", "plot_run_memory", "INSTANCE_CURVES_PNG", "MEMORY_PNG"]

INSTANCE_CURVES_PNG = "instance_curves.png"
MEMORY_PNG = "memory.png"
_INSTANCE = re.compile(r"^instance_(\d+)$")


def read_instance_curves(path: str | os.PathLike) -> dict[int, tuple[Series, Series]]:
    """``{k: (accuracy, ci95)}`` of the validation records of ``metrics.jsonl`` (empty if none has them)."""
    out: dict[int, tuple[Series, Series]] = {}
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):
                break  # the last line of a run killed while writing it
            raise ValueError(f"{path}:{n} is not valid JSON; the metrics file is damaged") from None
        if not isinstance(rec, dict) or rec.get("split") != "val" or not isinstance(rec.get("step"), int):
            continue
        for key, value in rec.items():
            m = _INSTANCE.match(key)
            if m and isinstance(value, (int, float)) and math.isfinite(value):
                mean, ci = out.setdefault(int(m.group(1)), (Series(), Series()))
                mean.add(rec["step"], float(value))
                half = rec.get(f"{key}_ci95")
                if isinstance(half, (int, float)) and math.isfinite(half):
                    ci.add(rec["step"], float(half))
    return dict(sorted(out.items()))


def _ordinal(k: int) -> str:
    return f"{k}{'st' if k % 10 == 1 and k != 11 else 'nd' if k % 10 == 2 and k != 12 else 'rd' if k % 10 == 3 and k != 13 else 'th'}"


def plot_instance_curves(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """``OUT_DIR/instance_curves.png`` from ``RUN_DIR/metrics.jsonl``; a ValueError if it has no per-instance values."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from .run import METRICS_FILE

    run_dir = Path(run_dir)
    curves = read_instance_curves(run_dir / METRICS_FILE)
    if not curves:
        raise ValueError(
            f"{run_dir / METRICS_FILE} holds no per-instance validation accuracy yet (written at each validation of a "
            "sequence run); train until the first validation"
        )
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    cmap = plt.get_cmap("viridis")
    for i, (k, (mean, ci)) in enumerate(curves.items()):
        color = cmap(i / max(1, len(curves) - 1))
        ys = [100 * v for v in mean.values]
        ax.plot(mean.steps, ys, color=color, marker="o", markersize=3, linewidth=1.5, label=f"{_ordinal(k)} instance")
        half = dict(zip(ci.steps, ci.values))
        pts = [(s, y, 100 * half[s]) for s, y in zip(mean.steps, ys) if s in half]
        if pts:
            ax.fill_between([p[0] for p in pts], [p[1] - p[2] for p in pts], [p[1] + p[2] for p in pts],
                            color=color, alpha=0.15, linewidth=0)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, ncol=2, loc="lower right")
    ax.set_title(f"accuracy at the k-th instance of a class (mean ± 95% CI)  [{run_dir.name}]", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, Path(out_dir or run_dir) / INSTANCE_CURVES_PNG)


def plot_run_memory(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *, episode: int = 0,
                    checkpoint: str = "best") -> Path:
    """``OUT_DIR/memory.png``: read and write weights of fixed test episode ``episode`` of a memory model."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import torch

    from ..tasks.sequence import instance_index
    from .run import load_run

    loaded = load_run(run_dir, checkpoint=checkpoint, fallback=True)
    trace = getattr(loaded.algorithm, "memory_trace", None)
    if trace is None or getattr(loaded.algorithm.network, "memory", None) is None:  # type: ignore[union-attr]
        raise ValueError(
            f"run {str(run_dir)!r} trains {loaded.config.algorithm.name}, which has no external memory; "
            "--memory draws the read and write weights of a memory model (algorithm mann)"
        )
    batches = loaded.episodes("test", episodes=episode + 1, batch_size=episode + 1)
    batch = next(iter(batches))
    with torch.no_grad():
        out = trace(batch)
    read, write = out["read"][episode], out["write"][episode]  # [T, H, N]
    labels = batch.labels[episode]
    inst = instance_index(batch.labels)[episode]
    correct = (out["logits"][episode].argmax(-1) == batch.targets()[episode]).all(-1)
    heads_r, heads_w = read.shape[1], write.shape[1]
    cols = heads_r + heads_w
    fig, axes = plt.subplots(1, cols, figsize=(2.6 * cols + 1.5, 0.11 * read.shape[0] + 2.2), squeeze=False, sharey=True)
    panels = [(f"read head {h + 1}", read[:, h]) for h in range(heads_r)] + [
        (f"write head {h + 1}", write[:, h]) for h in range(heads_w)]
    for ax, (title, w) in zip(axes[0], panels):
        ax.imshow(w.cpu().numpy(), aspect="auto", interpolation="nearest", cmap="magma", vmin=0.0, vmax=1.0)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("memory location")
    ticks = list(range(read.shape[0]))
    axes[0][0].set_yticks(ticks)
    axes[0][0].set_yticklabels([f"t{t} c{int(c)}#{int(i) + 1}{'' if ok else ' x'}" for t, c, i, ok in zip(ticks, labels, inst, correct)],
                               fontsize=5)
    axes[0][0].set_ylabel("time step: class #instance (x = wrong)")
    fig.suptitle(
        f"{loaded.config.algorithm.name} ({loaded.config.algorithm.options.get('memory')}) memory access, test episode {episode} "
        f"of {loaded.config.family.describe()}, step {loaded.step}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, Path(out_dir or run_dir) / MEMORY_PNG)
