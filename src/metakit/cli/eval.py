"""``metakit eval``: the standard few-shot evaluation of a trained run.

The mean of the task family's metric (accuracy for classification, mean squared error for
sinusoid regression, ...) over fixed, seeded tasks of a split with its 95% confidence interval
(``1.96 * sample std / sqrt(episodes)``, see :mod:`metakit.runtime.evaluation`) and its
direction, printed with the whole protocol so that the number can be reproduced and compared.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import yaml

__all__ = ["register", "run", "evaluate_run"]


def int_at_least(low: int):
    """argparse type: an int >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} must be >= {low}")
        return value

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a trained run on fixed seeded episodes (its task family's metric with 95%% CI)",
        description=(
            "Evaluate a trained run: the mean of its task family's metric (accuracy for classification, "
            "mean squared error for sinusoid regression) over fixed, seeded episodes of a split, with the "
            "95% confidence interval 1.96 * std / sqrt(episodes) (sample std) and whether higher is better. "
            "Ways, shots and queries default to the run's eval settings and may differ from training "
            "(e.g. train 20-way, test 5-way)."
        ),
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `metakit train`")
    p.add_argument("--split", default="test", help="train, val, test (default) or a split name of the dataset")
    p.add_argument("--ways", type=positive_int, default=None, help="classes per episode (default: the run's eval.ways)")
    p.add_argument("--shots", type=positive_int, default=None, help="support examples per class (default: eval.shots)")
    p.add_argument("--queries", type=positive_int, default=None, help="query examples per class (default: eval.queries)")
    p.add_argument(
        "--episodes",
        type=positive_int,
        default=None,
        help="number of episodes (default: the run's eval.test_episodes; eval.val_episodes with --split val)",
    )
    p.add_argument(
        "--seed", type=non_negative_int, default=None, help="seed of the fixed episodes (default: the run's eval.seed)"
    )
    p.add_argument("--batch", type=positive_int, default=50, help="episodes evaluated at once (default 50): memory and speed only, results do not depend on it -- unless the model's BatchNorm keeps no running statistics and the algorithm embeds all episodes of a batch in one call (model_batch_norm 'batch' in --json): then its statistics span the batch; for baseline runs it is also how many tasks fine-tune their new heads together in one batched SGD run")
    p.add_argument(
        "--checkpoint",
        default="best",
        help="'best' (default; if it is unreadable, the newest readable step checkpoint, with a warning), "
        "'last', or the path of a checkpoint file",
    )
    p.add_argument(
        "--steps", type=non_negative_int, default=None,
        help="adaptation steps before scoring, for algorithms with an inner loop (default: the run's algorithm.eval_steps); "
        "e.g. --steps 0, 1, 2, 3 give the return after 0..3 policy-gradient steps of maml_rl",
    )
    p.add_argument(
        "--batch-norm", choices=("running", "episode"), default="running",
        help="BatchNorm at test time: 'running' (default) normalises with the running statistics of training, "
        "so every query is scored on its own; 'episode' normalises each episode with the statistics of its own "
        "images (transductive: the queries of an episode inform one another), as test code that never leaves "
        "training mode does",
    )
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument(
        "--reference",
        metavar="NAME",
        default=None,
        help="evaluate the classical reference NAME (gittins, ucb1, thompson, epsilon_greedy, psrl, optimal, random) "
        "instead of the run, on the run's tasks; RUN_DIR may then also be a config file",
    )
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="an evaluation-time option of the run's algorithm, which changes how a new task is "
                        "learned and not the trained weights (repeatable; e.g. --option scale=10 --option "
                        "finetune_epochs=200 for a Baseline++ run), or with --reference a constant of the "
                        "reference (e.g. --option c=0.2)")
    p.set_defaults(func=run)


def evaluate_run(
    run_dir: str,
    *,
    split: str = "test",
    ways: int | None = None,
    shots: int | None = None,
    queries: int | None = None,
    episodes: int | None = None,
    seed: int | None = None,
    batch: int = 50,
    checkpoint: str = "best",
    progress: bool = False,
    steps: int | None = None,
    batch_norm: str = "running",
    options: Sequence[str] = (),
) -> dict[str, Any]:
    """Evaluate a run folder; returns the JSON-ready record ``metakit eval --json`` prints.

    ``options`` are ``KEY=VALUE`` strings (values read as YAML) of the algorithm's evaluation-time
    options (:attr:`~metakit.algorithms.Algorithm.evaluation_options`)."""
    from ..runtime.evaluation import batch_norm_statistics, evaluate
    from ..runtime.run import load_run

    loaded = load_run(run_dir, checkpoint=checkpoint, fallback=True)
    cfg = loaded.config
    family = cfg.family
    if family.kind != "classification" and ways is not None:
        raise ValueError(
            f"--ways {ways} was given but this run solves {family.kind} tasks (task.family={family.name}), "
            "which have no classes; drop --ways"
        )
    if steps is not None:
        if not isinstance(getattr(loaded.algorithm, "eval_steps", None), int):
            raise ValueError(
                f"--steps {steps} was given but algorithm.name={cfg.algorithm.name} has no inner loop to take steps in "
                "(no eval_steps); drop --steps"
            )
        loaded.algorithm.eval_steps = steps
    chosen = _evaluation_options(loaded.algorithm, cfg.algorithm.name, options)
    split_name = loaded.split_name(split)
    loaded.dataset(split, progress=progress)  # load (and report loading) before the episodes are drawn
    seed = cfg.eval.seed if seed is None else seed
    source = loaded.episodes(
        split, ways=ways, shots=shots, queries=queries, episodes=episodes, seed=seed, batch_size=batch
    )
    start = time.perf_counter()
    result = evaluate(loaded.algorithm, source, family=family, progress=progress, desc=f"eval {split_name}",
                      batch_norm=batch_norm)
    seconds = time.perf_counter() - start  # drawing the episodes included, loading the data not
    record: dict[str, Any] = {
        "algorithm": cfg.algorithm.name,
        "task": family.name,
        **family.record(),
        "split": split_name,
        "ways": cfg.eval.ways if ways is None else ways,
        "shots": cfg.eval.shots if shots is None else shots,
        "queries": cfg.eval.queries if queries is None else queries,
        "episodes": result.episodes,
        "seed": seed,
        "metric": result.metric,
        result.metric: result.mean,
        "ci95": result.to_dict()["ci95"],
        "higher_is_better": result.higher_is_better,
        **result.regret_dict(),  # optimal_<metric>, regret, regret_ci95 where the family knows its optimum
        "checkpoint": loaded.checkpoint.name,  # the file actually used (best may have fallen back)
        **({"adaptation_steps": steps} if steps is not None else {}),
        **({"options": chosen} if chosen else {}),
        "batch_norm": batch_norm,
        "model_batch_norm": batch_norm_statistics(loaded.algorithm),
        "step": loaded.step,
        "run_dir": str(loaded.run_dir),
        "train": {"ways": cfg.train.ways, "shots": cfg.train.shots},
        "seconds": round(seconds, 6),
        "episodes_per_s": round(result.episodes / seconds, 2) if seconds > 0 else None,
        "formatted": result.format(),
        "described": family.describe(),
    }
    text = family.episode_text(record["ways"], record["shots"], record["queries"])
    if text:
        record["episode_text"] = text
    trained = family.episode_text(cfg.train.ways, cfg.train.shots, cfg.train.queries)
    if trained:
        record["train_episode_text"] = trained
    if result.details:
        record["details"] = {n: {"mean": m, "ci95": None if ci != ci else ci, "episodes": k} for n, (m, ci, k) in result.details.items()}
    return record


def _evaluation_options(algorithm: Any, name: str, options: Sequence[str]) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` items and set them on the algorithm as evaluation-time options."""
    chosen: dict[str, Any] = {}
    for item in options:
        key, sep, value = item.partition("=")
        if not sep or not key or "." in key:
            raise ValueError(f"--option {item!r} must look like KEY=VALUE (e.g. --option finetune_epochs=200)")
        chosen[key] = yaml.safe_load(value)
    if chosen:
        have = algorithm.evaluation_options
        if not have:
            raise ValueError(
                f"--option {options[0]!r}: algorithm.name={name} has no evaluation-time options (they change how a new "
                "task is learned, e.g. the baseline's fine-tuning); drop --option, or give --reference NAME for a "
                "classical reference's constants"
            )
        try:
            algorithm.set_evaluation_options(**chosen)
        except ValueError as e:
            raise ValueError(f"--option: {e}") from None
    return chosen


def _protocol_text(r: dict[str, Any]) -> str:
    dataset = r["described"]
    if r.get("episode_text"):
        task = r["episode_text"]
    elif r["ways"] is None:
        task = f"{r['shots']}-shot regression, {r['queries']} query points"
    else:
        task = f"{r['ways']}-way {r['shots']}-shot, {r['queries']} queries per class"
    train = r["train"]
    trained = f"{train['ways']}-way {train['shots']}-shot" if train["ways"] is not None else f"{train['shots']}-shot"
    trained = r.get("train_episode_text") or trained
    return "\n".join(
        [
            f"{r['algorithm']} on {dataset}, split {r['split']}",
            f"  checkpoint  {r['checkpoint']} (step {r['step']}; trained {trained})",
            f"  episodes    {r['episodes']} x {task}, seed {r['seed']}",
            *([f"  options     {', '.join(f'{k}={v}' for k, v in r['options'].items())} (evaluation-time, not trained)"]
              if r.get("options") else []),
            *(["  batchnorm   each episode's own statistics (transductive), not the running ones"]
              if r.get("batch_norm") == "episode" else []),
            *([f"  batchnorm   {'the model keeps' if r.get('model_batch_norm') == 'batch' else 'some BatchNorm layers keep'} "
               "no running statistics: each call normalises the images it is given with their own statistics "
               "(transductive; MAML family: a task's support, then its queries)"]
              if r.get("model_batch_norm") in ("batch", "mixed") else []),
            f"  time        {r['seconds']:.1f} s ({r['episodes_per_s']} episodes/s)",
            f"  {r['metric']:<10}  {r['formatted']}   (mean ± 95% CI = 1.96 * sample std / sqrt({r['episodes']}); "
            f"{'higher' if r['higher_is_better'] else 'lower'} is better)",
        ]
        + _details_text(r)
        + (
            [f"  regret      {r['regret']:.4g} ± {_number(r['regret_ci95'])}"
             f"   (optimal {r['metric']} {r['optimal_' + r['metric']]:.4g} minus the {r['metric']}, per task)"]
            if "regret" in r else []
        )
    )


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _details_text(r: dict[str, Any]) -> list[str]:
    """The breakdowns of the metric (e.g. accuracy at the k-th instance of a class) as a table."""
    details = r.get("details") or {}
    if not details:
        return []
    scale, unit = (100.0, " %") if r["metric"] == "accuracy" else (1.0, "")
    width = max(len(n) for n in details)
    rows = [f"  {'breakdown':<{width}}  mean ± 95% CI{unit}  (episodes)"]
    for name, d in details.items():
        ci = "n/a" if d["ci95"] is None else f"{scale * d['ci95']:.2f}"
        rows.append(f"  {name:<{width}}  {scale * d['mean']:6.2f} ± {ci:<5}  ({d['episodes']})")
    return rows


def run(args: argparse.Namespace) -> int:
    if args.reference is not None:
        return _run_reference(args)
    record = evaluate_run(
        args.run_dir,
        split=args.split,
        ways=args.ways,
        shots=args.shots,
        queries=args.queries,
        episodes=args.episodes,
        seed=args.seed,
        batch=args.batch,
        checkpoint=args.checkpoint,
        progress=sys.stderr.isatty(),
        steps=args.steps,
        batch_norm=args.batch_norm,
        options=args.option,
    )
    if args.json:
        print(json.dumps({k: v for k, v in record.items() if k not in ("formatted", "described", "episode_text", "train_episode_text")}, indent=2))
    else:
        print(_protocol_text(record))
    return 0


def _run_reference(args: argparse.Namespace) -> int:
    from ..runtime.references import evaluate_reference, reference_text

    for flag, value in (("--ways", args.ways), ("--queries", args.queries)):
        if value is not None:
            raise ValueError(f"{flag} does not apply to --reference: a reference plays one trial of --shots episodes per task")
    if args.checkpoint != "best":
        raise ValueError("--checkpoint does not apply to --reference: a classical reference has no weights")
    if args.batch_norm != "running":
        raise ValueError(f"--batch-norm {args.batch_norm} does not apply to --reference: a classical reference has no "
                         "network; drop --batch-norm")
    if args.steps is not None:
        raise ValueError(f"--steps {args.steps} does not apply to --reference: a classical reference has no inner loop; drop --steps")
    record = evaluate_reference(
        args.run_dir, args.reference, args.option, split=args.split, shots=args.shots, episodes=args.episodes,
        seed=args.seed, batch=args.batch, progress=sys.stderr.isatty(),
    )
    print(json.dumps(record, indent=2) if args.json else reference_text(record))
    return 0
