"""Validation curves of several runs in one PNG, against step and against training time.

    python benchmarks/omniglot/curves.py ~/runs/omni maml_5w5s fomaml_5w5s anil_5w5s metasgd_5w5s \
        --out docs/optimization_5w5s_validation.png

Each run's ``metrics.jsonl``, read with :func:`metakit.runtime.plots.read_curves`, gives its
validation records: accuracy, its 95% interval over the validation episodes, and ``elapsed``,
the training seconds so far, which a resumed run carries on counting. Left panel: validation accuracy against meta-training step;
right panel: the same against elapsed minutes, which puts cheap first-order steps and expensive
second-order ones on one scale. The shaded band is ``mean ± ci95``.

    python benchmarks/omniglot/curves.py --record benchmarks/omniglot/results.json --out docs/omniglot_convergence.png

draws, from the record alone (no run folder needed), one panel per run whose newest record holds
learning curves (``reproduce.py`` stores them): validation accuracy with its band against step, the
training loss on a second axis (log scale where it spans more than a decade), and a mark at 75% of the steps trained, where the README's
convergence table splits each curve.

    python benchmarks/omniglot/curves.py --record benchmarks/omniglot/results.json \
        --compare fomaml_5w1s fomaml_5w1s_published --out docs/fomaml_5w1s_validation.png

draws the two-panel figure of the first form (against step and against training time) from the
validation curves of the named runs' newest records that hold them. With ``--reach 90 95`` it also
prints, per run, the step and the training minutes of its first validation at or above each
accuracy (time to accuracy, the measure metakit's default configs are chosen by), as a table;
without ``--out`` it prints the table alone.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

from metakit.runtime.plots import read_curves, save_figure  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reproduce  # noqa: E402  (the record's reader, beside this script)


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
    axes[0].legend(loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, out, dpi=110)


def recorded_curves(record: Path, run_list: Path = reproduce.RUN_LIST) -> dict[str, dict[str, Any]]:
    """Per run of the list (in its order) whose newest record holds curves: ``steps``, ``budget`` and ``curves``."""
    runs = reproduce.load_run_list(run_list).runs
    records = reproduce.read_record(record)
    out: dict[str, dict[str, Any]] = {}
    for name, run in runs.items():
        r = reproduce.newest_with_curves(records, name)
        if r is not None:
            out[name] = {"steps": r["steps"], "budget": run.steps, "curves": r["curves"]}
    return out


RECORD_COLORS = 64  # the many-panel figure stored as a PNG palette: a few times smaller than full colour
RECORD_TITLE = "Omniglot runs of the README table: learning curves against meta-training step"


def plot_record(runs: dict[str, dict[str, Any]], out: Path, columns: int = 4, title: str = RECORD_TITLE) -> Path:
    """One panel per run: validation accuracy (band: its 95% interval) and training loss against step."""
    if not runs:
        raise ValueError("no record holds learning curves; `reproduce.py --add-curves` adds them to older records")
    rows = math.ceil(len(runs) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.8 * rows), squeeze=False)
    for ax, (name, r) in zip(axes.flat, runs.items()):
        val, train = r["curves"]["val"], r["curves"]["train"]
        loss_ax = ax.twinx()
        if train:
            losses = [p[2] for p in train]
            loss_ax.plot([p[0] for p in train], losses, color="0.6", lw=1, label="training loss")
            if min(losses) > 0 and max(losses) > 10 * min(losses):  # a log scale where the loss spans a decade
                loss_ax.set_yscale("log")
                loss_ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.3g"))
                loss_ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        loss_ax.tick_params(which="both", labelsize=7, colors="0.45")
        if val:
            steps, acc, ci = [p[0] for p in val], [100 * p[2] for p in val], [100 * p[3] for p in val]
            ax.plot(steps, acc, marker="o", ms=2.5, color="C0", label="validation accuracy (%)")
            ax.fill_between(steps, [a - c for a, c in zip(acc, ci)], [a + c for a, c in zip(acc, ci)], color="C0", alpha=0.2, lw=0)
        else:
            ax.text(0.5, 0.5, "no validation", transform=ax.transAxes, ha="center", va="center", color="0.4")
            ax.set_yticks([])
        ax.set_zorder(loss_ax.get_zorder() + 1)  # the accuracy line over the loss line
        ax.patch.set_visible(False)
        ax.axvline(0.75 * r["steps"], color="0.3", ls=":", lw=1)
        share = "" if r["steps"] == r["budget"] else f" ({reproduce.budget_share(r['steps'], r['budget'])} of {r['budget']:,})"
        ax.set_title(f"{name}: {r['steps']:,} steps{share}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(5))  # step labels that do not run together
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(runs):]:
        ax.set_visible(False)
    handles = [plt.Line2D([], [], color="C0", marker="o", ms=3, label="validation accuracy (%) ± 95% CI (left)"),
               plt.Line2D([], [], color="0.6", label="training loss (right; log scale where it spans a decade)"),
               plt.Line2D([], [], color="0.3", ls=":", label="75% of the steps trained")]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    return save_figure(fig, out, dpi=80, colors=RECORD_COLORS)


def compared_curves(record: Path, names: list[str], run_list: Path | None = None) -> dict[str, list[tuple[int, float, float, float]]]:
    """``read_val``'s rows of each named run, from the record :func:`recorded_curves` draws it from
    (``reproduce.newest_with_curves``), which must hold validation (``run_list``: default ``runs.yaml``)."""
    recorded = recorded_curves(record, reproduce.RUN_LIST if run_list is None else run_list)
    out = {}
    for name in names:
        val = recorded.get(name, {}).get("curves", {}).get("val")
        if not val:
            raise ValueError(f"run {name!r}: no record of it in {record} holds validation curves (or it is not in the "
                             "run list); `reproduce.py --add-curves` adds curves to records written without them")
        out[name] = [(int(s), float(e), float(a), float(c)) for s, e, a, c in val]
    return out


def first_reaching(rows: list[tuple[int, float, float, float]], percent: float) -> tuple[int, float] | None:
    """``(step, minutes)`` of the first validation of ``rows`` (``read_val``'s) at or above ``percent``; None if none is."""
    for step, secs, acc, _ in rows:
        if 100 * acc >= percent - 1e-9:
            return step, secs / 60
    return None


def reach_lines(runs: dict[str, list[tuple[int, float, float, float]]], percents: list[float]) -> list[str]:
    """A Markdown table: per run, its best validation and the step and minutes of its first validation at or
    above each of ``percents``."""
    head = ["run", "best validation (step)", *(f"first at >= {p:g}%" for p in percents)]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, rows in runs.items():
        best = max(rows, key=lambda r: (r[2], -r[0]))
        cells = [f"`{name}`", f"{100 * best[2]:.1f} ± {100 * best[3]:.1f} (step {best[0]:,})"]
        for p in percents:
            hit = first_reaching(rows, p)
            cells.append("not reached" if hit is None else f"step {hit[0]:,}, {hit[1]:.0f} min")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs_dir", type=Path, nargs="?", help="folder holding the run folders")
    ap.add_argument("names", nargs="*", help="run folder names, one curve each")
    ap.add_argument("--record", type=Path, help="draw every run's curves from this results record instead of run folders")
    ap.add_argument("--out", type=Path, help="PNG file to write (with --compare and --reach it may be left out: the table only)")
    ap.add_argument("--compare", nargs="+", metavar="NAME",
                    help="with --record: these runs' validation against step and training time, in one figure")
    ap.add_argument("--reach", nargs="+", type=float, metavar="PERCENT",
                    help="with --compare: also print each run's step and minutes of its first validation at or above "
                         "each of these accuracies (%%)")
    ap.add_argument("--title", help="the figure's title (default: one naming what is drawn)")
    args = ap.parse_args(argv)
    if args.compare is not None and args.record is None:
        ap.error("--compare draws runs from the record; give --record RESULTS_JSON with it")
    if args.reach is not None and args.compare is None:
        ap.error("--reach reads the runs of --compare; give --record RESULTS_JSON --compare NAME... with it")
    if args.reach is not None and not all(0 < p <= 100 for p in args.reach):
        ap.error(f"--reach {' '.join(f'{p:g}' for p in args.reach)}: give accuracies in percent, in (0, 100]")
    if args.out is None and args.reach is None:
        ap.error("give --out PNG (only --compare ... --reach prints a table without a figure)")
    if args.record is not None:
        if args.runs_dir is not None:
            ap.error("--record draws from the record alone; give no run folders with it")
        if args.compare is not None:
            try:
                runs = compared_curves(args.record, args.compare)
            except ValueError as e:
                ap.error(str(e))
            if args.out is not None:
                print(plot(runs, args.out, args.title or "Omniglot validation (vinyals val split), from the record"))
            if args.reach is not None:
                print("\n".join(reach_lines(runs, args.reach)))
            return
        print(plot_record(recorded_curves(args.record), args.out, title=args.title or RECORD_TITLE))
        return
    if args.runs_dir is None or not args.names:
        ap.error("give a folder of run folders and run names, or --record RESULTS_JSON")
    runs = {n: read_val(args.runs_dir / n) for n in args.names}
    print(plot(runs, args.out, args.title or "Omniglot 5-way 5-shot validation (vinyals val split)"))


if __name__ == "__main__":
    main()
