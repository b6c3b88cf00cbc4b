"""``metakit plot``: figures of a run, written as PNG files into the run folder.

Each figure is one small function ``(args, out_dir) -> list of written paths`` listed in
:func:`_figures`; a new figure adds its option in :func:`register` and its function there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plot",
        help="write PNG learning curves of a run into its folder",
        description=(
            "Write the learning curves of a run (training loss and accuracy against step, the validation "
            "metric of its task family with its 95% confidence interval) as learning_curves.png, read from the run's "
            "metrics.jsonl. Works on a run still training."
        ),
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `metakit train`")
    p.add_argument("--out", metavar="DIR", default=None, help="folder for the PNG files (default: RUN_DIR; created if missing)")
    p.add_argument(
        "--embeddings",
        nargs="?",
        const="pca",
        choices=["pca", "tsne"],
        default=None,
        help="also write embeddings.png: a 2-D projection (pca, the default, or tsne) of the support and query "
        "embeddings of 3 fixed test episodes, coloured by class (metric-based algorithms)",
    )
    p.add_argument(
        "--memory",
        action="store_true",
        help="also write memory.png: the read and write weights of one fixed test episode, time step x memory "
        "location (memory models: mann)",
    )
    p.add_argument(
        "--regret",
        nargs="*",
        metavar="REFERENCE",
        default=None,
        help="write regret.png (meta-RL runs whose task family knows its optimum; by default for bandits and "
        "tabular MDPs, against gittins, ucb1, thompson / psrl, random): the cumulative regret "
        "against the episode of a trial (the pull, for bandits) of the run's algorithm and of the named reference "
        "algorithms (e.g. --regret ucb1 thompson; constants as NAME:KEY=VALUE,..., e.g. --regret ucb1:c=0.2 "
        "epsilon_greedy:epsilon=0.05), on fixed test tasks, mean with 95%% band",
    )
    p.add_argument("--no-regret", action="store_true",
                   help="skip the regret curves a bandit or tabular-MDP run draws by default (they play the references "
                   "on --tasks test tasks: seconds to a minute)")
    p.add_argument("--tasks", type=int, default=None, metavar="N",
                   help="test tasks of the regret curves (default 100)")
    p.add_argument(
        "--trajectories",
        action="store_true",
        help="also write trajectories.png: the episodes of one fixed test task before and after adaptation, drawn "
        "by the task family (written by default for runs whose family draws trajectories, e.g. navigation_2d)",
    )
    p.set_defaults(func=run)


def _learning_curves(args: argparse.Namespace, out_dir: Path) -> list[Path]:
    from ..runtime.plots import plot_run

    return [plot_run(args.run_dir, out_dir)]


def _embeddings(args: argparse.Namespace, out_dir: Path) -> list[Path]:
    from ..runtime.embeddings import plot_run_embeddings

    return [plot_run_embeddings(args.run_dir, out_dir, method=args.embeddings)]


def _check_embeddings(run_dir: Path) -> None:
    """Refuse ``--embeddings`` up front for a run whose algorithm has no embedding network."""
    from ..algorithms import available_algorithms, get_algorithm
    from ..runtime.run import read_run_config
    from .main import UsageError

    def embeds(name: str) -> bool:
        return callable(getattr(get_algorithm(name), "embed", None))

    name = read_run_config(run_dir).algorithm.name
    if not embeds(name):
        able = ", ".join(n for n in available_algorithms() if embeds(n))
        raise UsageError(
            f"--embeddings: run {str(run_dir)!r} trains {name}, which has no embedding network (it outputs class "
            f"scores directly); embedding plots are for {able}. Run `metakit plot {run_dir}` without --embeddings"
        )


def _instance_curves(args: argparse.Namespace, out_dir: Path) -> list[Path]:
    """Per-instance validation accuracy of a sequence run (nothing for runs without it)."""
    from ..runtime.run import METRICS_FILE
    from ..runtime.sequence_plots import plot_instance_curves, read_instance_curves

    if not read_instance_curves(Path(args.run_dir) / METRICS_FILE):
        return []
    return [plot_instance_curves(args.run_dir, out_dir)]


def _memory(args: argparse.Namespace, out_dir: Path) -> list[Path]:
    from ..runtime.sequence_plots import plot_run_memory

    return [plot_run_memory(args.run_dir, out_dir)]


#: test tasks of the regret curves when --tasks is not given
REGRET_TASKS = 100


def _regret(args: argparse.Namespace, out_dir: Path) -> list[Path]:
    from ..runtime.regret import plot_regret

    tasks = REGRET_TASKS if args.tasks is None else args.tasks
    if tasks < 2:
        raise ValueError(f"--tasks {tasks}: the regret curves need at least 2 test tasks (for their 95% band)")
    if args.regret is not None:
        return [plot_regret(args.run_dir, out_dir, references=tuple(args.regret), tasks=tasks)]
    # by default: against the family's references, skipped with a note while there is no checkpoint
    from ..runtime.run import read_run_config

    references = read_run_config(args.run_dir).family.regret_references
    try:
        return [plot_regret(args.run_dir, out_dir, references=tuple(references), tasks=tasks)]
    except FileNotFoundError as e:
        print(f"metakit plot: no regret.png yet: {e}", file=sys.stderr)
        return []


def _wants_regret(args: argparse.Namespace) -> bool:
    """``--regret``, or by default for a meta-RL run whose family names references to compare with
    (``regret_references``: bandits, tabular MDPs) and whose algorithm plays trials (``episode_returns``)."""
    from ..algorithms import get_algorithm
    from ..runtime.run import read_run_config
    from ..tasks import EnvFamily

    if getattr(args, "regret", None) is not None:
        if getattr(args, "no_regret", False):
            raise ValueError("--regret and --no-regret exclude each other")
        return True
    if getattr(args, "no_regret", False):
        return False
    try:
        config = read_run_config(args.run_dir)
    except FileNotFoundError:
        return False  # a folder of metrics only: learning curves alone
    family = config.family
    knows_optimum = isinstance(family, EnvFamily) and type(family).optimal_return is not EnvFamily.optimal_return
    return (bool(getattr(family, "regret_references", ())) and knows_optimum
            and callable(getattr(get_algorithm(config.algorithm.name), "episode_returns", None)))


def _trajectories(args: argparse.Namespace, out_dir: Path) -> list[Path]:
    from ..runtime.plots import plot_run_trajectories

    if not getattr(args, "trajectories", False):  # by default: skipped, with a note, while there is no checkpoint
        try:
            return [plot_run_trajectories(args.run_dir, out_dir)]
        except FileNotFoundError as e:
            print(f"metakit plot: no trajectories.png yet: {e}", file=sys.stderr)
            return []
    return [plot_run_trajectories(args.run_dir, out_dir)]


def _wants_trajectories(args: argparse.Namespace) -> bool:
    """``--trajectories``, or by default for a run whose family draws trajectories and whose algorithm plays them."""
    from ..runtime.plots import draws_trajectories
    from ..runtime.run import read_run_config
    from .main import UsageError

    explicit = bool(getattr(args, "trajectories", False))
    try:
        config = read_run_config(args.run_dir)
    except FileNotFoundError:
        if explicit:
            raise
        return False  # a folder of metrics only: learning curves alone
    able = draws_trajectories(config)
    if explicit and not able:
        raise UsageError(
            f"--trajectories: run {str(args.run_dir)!r} (algorithm.name={config.algorithm.name}, "
            f"task.family={config.family.name}) cannot draw trajectories; they are drawn for environment families "
            "with draw_trajectories (navigation_2d) and algorithms with trajectories (maml_rl). Run `metakit plot "
            f"{args.run_dir}` without --trajectories"
        )
    return able


def _figures(args: argparse.Namespace) -> list[Callable[[argparse.Namespace, Path], list[Path]]]:
    """The figures this invocation asks for, in order."""
    return ([_learning_curves, _instance_curves] + ([_embeddings] if getattr(args, "embeddings", None) else [])
            + ([_memory] if getattr(args, "memory", False) else [])
            + ([_regret] if _wants_regret(args) else [])
            + ([_trajectories] if _wants_trajectories(args) else []))


def run(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {str(run_dir)!r} does not exist; give a folder written by `metakit train`")
    if args.out is not None:
        from ..runtime.plots import check_out_dir

        out_dir = check_out_dir(args.out, "--out")
    else:
        out_dir = run_dir
    if getattr(args, "tasks", None) is not None and not _wants_regret(args):
        raise ValueError(f"--tasks {args.tasks} sets the test tasks of the regret curves; give it with --regret [REFERENCE...]")
    if args.embeddings:
        _check_embeddings(run_dir)
    for figure in _figures(args):
        for path in figure(args, out_dir):
            print(f"wrote {path}")
    return 0
