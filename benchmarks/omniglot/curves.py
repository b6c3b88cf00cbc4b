"""Validation curves of several runs in one PNG, against step and against training time.

    python benchmarks/omniglot/curves.py ~/runs/omni maml_5w5s fomaml_5w5s anil_5w5s metasgd_5w5s \
        --out docs/optimization_5w5s_validation.png

Each run's ``metrics.jsonl``, read with :func:`metakit.runtime.plots.read_curves`, gives its
validation records: accuracy, its 95% interval over the validation episodes, and ``elapsed``,
the training seconds so far, which a resumed run carries on counting. Left panel: validation accuracy against meta-training step;
right panel: the same against elapsed minutes, which puts cheap first-order steps and expensive
second-order ones on one scale. The shaded band is ``mean ± ci95``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from metakit.runtime.plots import read_curves  # noqa: E402


def read_val(run_dir: Path) -> list[tuple[int, float, float, float]]:
    """``(step, elapsed_s, accuracy, ci95)`` of every validation record of a run, in step order."""
    c = read_curves(run_dir / "metrics.jsonl")
    if not len(c.val_accuracy):
        raise ValueError(f"{run_dir / 'metrics.jsonl'} holds no validation record (split 'val' with an accuracy)")
    elapsed = dict(zip(c.val_elapsed.steps, c.val_elapsed.values))
    ci = dict(zip(c.val_accuracy_ci95.steps, c.val_accuracy_ci95.values))
    rows = {s: (s, elapsed.get(s, float("nan")), a, ci.get(s, 0.0)) for s, a in zip(c.val_accuracy.steps, c.val_accuracy.values)}
    return [rows[s] for s in sorted(rows)]


def plot(runs: dict[str, list[tuple[int, float, float, float]]], out: Path, title: str) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for name, rows in runs.items():
        steps, secs, acc, ci = (list(v) for v in zip(*rows))
        lo = [100 * (a - c) for a, c in zip(acc, ci)]
        hi = [100 * (a + c) for a, c in zip(acc, ci)]
        for ax, x in ((axes[0], steps), (axes[1], [s / 60 for s in secs])):
            (line,) = ax.plot(x, [100 * a for a in acc], marker="o", ms=3, label=name)
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
    axes[0].set_xlabel("meta-training step")
    axes[1].set_xlabel("training time (minutes, one CPU thread)")
    axes[0].set_ylabel("validation accuracy (%) ± 95% CI")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs_dir", type=Path, help="folder holding the run folders")
    ap.add_argument("names", nargs="+", help="run folder names, one curve each")
    ap.add_argument("--out", type=Path, required=True, help="PNG file to write")
    ap.add_argument("--title", default="Omniglot 5-way 5-shot validation (vinyals val split)")
    args = ap.parse_args(argv)
    runs = {n: read_val(args.runs_dir / n) for n in args.names}
    print(plot(runs, args.out, args.title))


if __name__ == "__main__":
    main()
