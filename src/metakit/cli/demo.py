"""``metakit demo``: MAML on sinusoid regression, end to end, with no data to download.

The MAML paper's regression experiment (Finn et al. 2017, section 5.1 and Figure 2): tasks are
sine waves ``y = A sin(x - phase)`` with ``A ~ U[0.1, 5]``, ``phase ~ U[0, pi]``, ``x ~ U[-5, 5]``;
the learner is an MLP 1-40-40-1 with ReLU; MAML meta-trains its initialisation with one inner
gradient step of size 0.01 on K support points, K query points per task, 25 tasks per
meta-batch and Adam (lr 1e-3) as outer optimizer. The paper trains for 70,000 meta-steps; the
demo takes ``--steps`` (default 20,000: one and a half to three minutes on two cores, and
enough to match the paper's errors) through the ordinary trainer (``metakit train``'s run
folder: config, metrics, checkpoints). Its config is ``maml_sinusoid_k5.yaml``, shipped in the
package (``configs/maml_sinusoid_k5.yaml`` links to it), with the options as overrides.

Evaluation: 600 fixed test tasks (``metakit eval``'s seeded test tasks), each adapted on its K
support points with 0..10 plain gradient steps of size 0.01; the number reported after ``k``
steps is the mean over tasks of the squared error on 100 query points per task (the expectation
is the task's MSE; more points only shrink the noise), with the 95% interval ``1.96 * std /
sqrt(600)``. The figure ``figure2.png`` is the paper's Figure 2 for three test tasks: the true
curve, the K points used for the gradient, and the fit before adaptation and after 1 and 10
steps; a fourth panel shows the test MSE against the number of steps.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["register", "run", "demo_config", "mse_by_step", "plot_figure2"]

REPORT_STEPS = (1, 5, 10)
MAX_STEPS = 10
TEST_TASKS = 600
#: the demo's config, in the package's ``configs`` folder
DEMO_CONFIG = "maml_sinusoid_k5.yaml"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="MAML on sinusoid regression (no download): train, evaluate on 600 tasks, plot MAML's Figure 2",
        description=__doc__.split("\n", 2)[2].replace("``", "") if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--steps", type=int, default=20000, help="meta-training steps (default 20000; the paper: 70000)")
    p.add_argument("--shots", type=int, default=5, help="K, support points per task (default 5; the paper shows 5 and 10)")
    p.add_argument(
        "--out",
        metavar="DIR",
        default="runs/demo",
        help="output folder (default runs/demo); it must not hold a run: the demo writes its run into DIR/run",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation and training tasks (default 0)")
    p.add_argument("--tasks", type=int, default=TEST_TASKS, help=f"test tasks (default {TEST_TASKS}, the paper's number)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: fastest for this tiny network)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run)


def demo_config(steps: int, shots: int, seed: int = 0, threads: int = 1, tasks: int = TEST_TASKS) -> Any:
    """The run config of the demo: the packaged :data:`DEMO_CONFIG` with the demo's options as
    overrides (validation and checkpoints every quarter of ``steps``)."""
    from importlib.resources import as_file, files

    from ..runtime.config import load_config

    every = max(1, steps // 4)
    overrides = [
        f"train.steps={steps}",
        f"train.shots={shots}",
        f"train.queries={shots}",
        f"eval.val_every={every}",
        f"eval.test_episodes={tasks}",
        f"run.checkpoint_every={every}",
        f"run.seed={seed}",
        f"run.num_threads={threads}",
    ]
    with as_file(files("metakit") / "configs" / DEMO_CONFIG) as path:
        return load_config(path, overrides)


def mse_by_step(algorithm: Any, episodes: Any, max_steps: int = MAX_STEPS) -> dict[int, Any]:
    """Per-task query MSE after ``0..max_steps`` inner steps: ``{k: EvalResult}``."""
    import torch

    from ..runtime.evaluation import EvalResult

    per_step: list[Any] = []
    algorithm.eval()
    with torch.no_grad():
        for batch in episodes:
            out = algorithm.predict_steps(batch, max_steps)  # [steps + 1, B, Q, 1]
            per_step.append((out - batch.query_y).pow(2).flatten(2).mean(-1).double())
    values = torch.cat(per_step, dim=1)
    return {k: EvalResult.from_values("mse", values[k]) for k in range(max_steps + 1)}


def plot_figure2(algorithm: Any, fixed: Any, results: dict[int, Any], shots: int, out: Path, tasks: tuple[int, ...] = (0, 1, 2)) -> Path:
    """MAML's Figure 2 for ``tasks`` of the fixed test set, plus MSE against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from ..runtime.plots import save_figure

    grid = torch.linspace(-5, 5, 200).view(-1, 1)
    fig, axes = plt.subplots(1, len(tasks) + 1, figsize=(4.2 * (len(tasks) + 1), 3.6))
    with torch.no_grad():
        for ax, i in zip(axes, tasks):
            ep = fixed[i]
            truth = fixed.params.slice(i, i + 1)(grid)[0]
            learner = algorithm.adapt(ep.support_x, ep.support_y, None, steps=MAX_STEPS)
            ax.plot(grid, truth, color="red", lw=2, label="ground truth")
            for k, color, style in ((0, "#9fd49f", ":"), (1, "#3c9a3c", "--"), (MAX_STEPS, "#0b4f0b", "-")):
                label = "pre-update" if k == 0 else f"{k} grad step{'s' if k > 1 else ''}"
                ax.plot(grid, learner.predict(grid, step=k), color=color, ls=style, lw=1.8, label=label)
            ax.scatter(ep.support_x.view(-1), ep.support_y.view(-1), marker="^", s=60, color="purple", zorder=5,
                       label="used for grad")
            amp, ph = float(fixed.params.amplitude[i]), float(fixed.params.phase[i])
            ax.set_title(f"test task {i}: A={amp:.2f}, phase={ph:.2f}", fontsize=10)
            ax.set_xlim(-5, 5)
            ax.set_ylim(-5.5, 5.5)
    axes[0].legend(fontsize=8, loc="lower left")
    ax = axes[-1]
    ks = sorted(results)
    means = [results[k].mean for k in ks]
    cis = [results[k].ci95 for k in ks]
    ax.errorbar(ks, means, yerr=cis, marker="^", color="green", capsize=3, label=f"MAML, K={shots}")
    ax.set_xlabel("number of gradient steps")
    ax.set_ylabel("mean squared error")
    ax.set_title(f"{results[ks[0]].episodes} test tasks, 95% CI", fontsize=10)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(f"MAML on sinusoid regression, K={shots} (metakit demo)", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, out / "figure2.png")


def _check(args: argparse.Namespace) -> None:
    from .main import UsageError

    if args.steps < 1:
        raise UsageError(f"--steps={args.steps} must be >= 1 (meta-training steps; try 8000)")
    if args.shots < 1:
        raise UsageError(f"--shots={args.shots} must be >= 1 (support points per task; the paper uses 5 or 10)")
    if args.tasks < 2:
        raise UsageError(f"--tasks={args.tasks} must be >= 2 (the 95% interval needs two tasks; the paper uses 600)")
    if args.threads < 1:
        raise UsageError(f"--threads={args.threads} must be >= 1")
    from ..runtime.plots import check_out_dir
    from ..runtime.run import CONFIG_FILE

    out = check_out_dir(args.out, "--out")
    if (out / CONFIG_FILE).exists():
        raise UsageError(
            f"--out {str(out)!r} holds a run ({CONFIG_FILE}); the demo writes its own run into --out/run: "
            "choose another folder"
        )
    if (out / "run").exists():
        raise UsageError(f"--out {str(out)!r} already holds a demo run ({out / 'run'}); choose another folder or delete it")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..runtime.run import load_run
    from ..runtime.trainer import torch_settings, train

    _check(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = demo_config(args.steps, args.shots, args.seed, args.threads, args.tasks)
    t0 = time.perf_counter()
    print(
        f"metakit demo: MAML on sinusoid regression, K={args.shots}, MLP 1-40-40-1, 1 inner step of 0.01, "
        f"meta-batch 25, Adam 1e-3, {args.steps} steps -> {out}",
        file=sys.stderr,
    )
    result = train(config, out / "run")
    train_time = time.perf_counter() - t0
    if result.status != "finished":
        print(f"metakit demo: training {result.status} at step {result.step}; run folder {result.run_dir}", file=sys.stderr)
        return 130 if result.interrupted else 1
    loaded = load_run(out / "run", "last")
    t1 = time.perf_counter()
    with torch_settings(loaded.config.run):
        fixed = loaded.episodes("test", episodes=args.tasks)
        results = mse_by_step(loaded.algorithm, fixed)
        figure = plot_figure2(loaded.algorithm, fixed, results, args.shots, out)
    eval_time = time.perf_counter() - t1
    record = {
        "task": "sinusoid regression (MAML protocol)",
        "shots": args.shots,
        "train_steps": args.steps,
        "test_tasks": args.tasks,
        "test_queries_per_task": loaded.config.eval.queries,
        "seed": args.seed,
        "test_seed": loaded.config.eval.seed,
        "mse": {str(k): {"mean": r.mean, "ci95": r.ci95} for k, r in results.items()},
        "train_seconds": round(train_time, 1),
        "eval_seconds": round(eval_time, 1),
        "run_dir": str(out / "run"),
        "figure": str(figure),
        "torch": torch.__version__,
    }
    (out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    print(f"MAML sinusoid regression, K={args.shots}: test MSE over {args.tasks} tasks ({loaded.config.eval.queries} query points each), 95% CI")
    print(f"  {'gradient steps':>14}  {'MSE':>18}")
    for k in (0, *REPORT_STEPS):
        r = results[k]
        ci = "n/a" if math.isnan(r.ci95) else f"{r.ci95:.3f}"
        print(f"  {k:>14}  {r.mean:>8.3f} ± {ci:<7}")
    print(f"trained {args.steps} steps in {train_time:.0f} s, evaluated in {eval_time:.0f} s")
    print(f"figure: {figure}")
    print(f"run folder: {out / 'run'} (metakit eval {out / 'run'} gives the {MAX_STEPS}-step MSE)")
    return 0
