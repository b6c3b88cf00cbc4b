"""The MAML paper's adaptation protocol (Finn et al. 2017, Figures 4 and 5: 2D navigation and
half-cheetah): the return after 0..K policy-gradient steps on held-out tasks, for MAML-RL, the
pretrained policy and a randomly initialised one.

    python benchmarks/rl/navigation_figure.py --run maml=RUN_DIR --run pretrained=RUN_DIR[@CHECKPOINT] \\
        [--random-init] [--tasks 1000] [--steps 3] [--inner-lr LR ...] [--record benchmarks/rl/navigation.json] \\
        [--figure FILE.png] [--curves FILE.png]
    python benchmarks/rl/navigation_figure.py --table [--record FILE] [--readme README.md] [--markers NAME] [--curves FILE.png]

Each run is loaded from its best checkpoint (the last one when it did not validate; ``@last`` or
``@FILE`` picks the newest step checkpoint or a file of the run's ``checkpoints/``) and evaluated on
the fixed test tasks of its config (``eval.seed``), adapting with its ``eval.shots`` roll-outs per
step and scoring ``eval.queries`` roll-outs after each step; ``--random-init`` adds the policy the
first run starts from (its config's model, initialised with its ``run.seed``), fine-tuned the same way.
``--inner-lr`` evaluates every policy once per given step size of the policy-gradient steps instead
of its config's ``algorithm.inner_lr`` (the record's labels then name the step size).
The record (one JSON entry appended per call) holds, per policy (and its action noise ``action_std``
where the policy has a ``log_std``), the mean return and its 95% interval
(1.96 * sample std / sqrt(tasks)) after each number of steps, with the run's effective config, its
digest and the checkpoint's, the run's training summary (steps, seconds), the command, the seconds of
the evaluation, the hardware and the date; ``curves`` holds each run's training and validation
returns (and the TRPO step's ``kl`` and accepted ``step_fraction`` where logged) against the iteration,
read from its ``metrics.jsonl``, under the run folder's name (``--curves FILE`` draws the returns). ``--table`` evaluates nothing: it prints the newest entry of
the record as a table (``--readme FILE`` writes it between FILE's ``<!-- NAME -->`` and ``<!-- /NAME -->``
lines instead, NAME ``--markers``, default ``navigation-table``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shlex
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import torch

from metakit.bench import hardware, load_script
from metakit.runtime.builders import build_algorithm
from metakit.runtime.checkpoint import CheckpointError
from metakit.runtime.config import Config
from metakit.runtime.evaluation import mean_ci95
from metakit.runtime.run import load_run
from metakit.runtime.trainer import seed_everything

HERE = Path(__file__).resolve().parent


_rl_record = load_script(HERE / "record.py", "rl_record")  # its README-block writer, shared
MARKERS = "navigation-table"


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {name} -->", f"<!-- /{name} -->"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def curve(algorithm, episodes, steps: int) -> list[dict]:
    """Mean return and 95% interval after 0..steps inner steps over the tasks of ``episodes``."""
    per_task = torch.cat([algorithm.returns_after_steps(batch, steps) for batch in episodes], dim=1)
    n = per_task.shape[1]
    return [{"steps": k, "mean": float(row.mean()), "ci95": float(1.96 * row.std() / math.sqrt(n)) if n > 1 else None}
            for k, row in enumerate(per_task)]


def _cell(mean: float, ci95: float | None) -> str:
    return f"{mean:.2f}" + (f" ± {ci95:.2f}" if ci95 is not None else "")


def table(entry: dict, record: str = "benchmarks/rl/navigation.json") -> str:
    """The returns of one record entry as a Markdown table, with its protocol and provenance."""
    proto = entry["protocol"]
    steps = range(proto["steps"] + 1)
    out = [f"{entry['task']}; {proto['tasks']:,} fixed test tasks ({proto['split']} split, seed {proto['seed']}), "
           f"adapting on {proto['shots']} roll-outs per policy-gradient step and scoring {proto['queries']}: mean "
           f"return per episode ± 95% interval after each number of steps. Record: `{record}`, "
           f"run {entry['run_id']}, {entry['date'][:10]}, {entry['seconds']:.0f} s of evaluation on "
           f"{entry['hardware'].get('cpu', 'unknown CPU')}.", "",
           "| policy | trained | " + " | ".join(f"{k} step" + ("s" if k != 1 else "") for k in steps) + " |",
           "| --- | --- | " + " | ".join("---" for _ in steps) + " |"]
    for label, pol in entry["policies"].items():
        training = pol.get("training")
        if training:
            trained = (f"{pol['checkpoint']} (step {pol['train_step']:,}) of {training['steps']:,} iterations, "
                       f"{training['elapsed'] / 60:.0f} min")
        else:
            trained = f"none (initialisation, seed {pol.get('seed')})"
        out.append(f"| {label} | {trained} | " + " | ".join(_cell(q["mean"], q.get("ci95")) for q in pol["returns"]) + " |")
    best = optimum(entry)
    if best is not None:
        out += ["", f"On the same tasks the best policy that knows the task scores {_cell(best['mean'], best['ci95'])} "
                    f"per episode (`{best['family']}.optimal_return`, horizon {best['horizon']})."]
    return "\n".join(out)


def optimum(entry: dict) -> dict | None:
    """Mean and 95% interval of the family's optimal return per episode over the entry's test tasks
    (the tasks its policies were scored on), the horizon and the family's class name; None when no
    policy's config is in the entry or the family does not know its optimum."""
    config = next((pol["config"] for pol in entry["policies"].values() if pol.get("config")), None)
    if config is None:
        return None
    family, proto = Config.from_dict(config).family, entry["protocol"]
    tasks = family.eval_set("test", None, ways=None, shots=proto["shots"], queries=proto["queries"],
                            episodes=proto["tasks"], seed=proto["seed"], batch_size=proto["tasks"])
    values = [family.optimal_return(task, 1) for batch in tasks for task in batch]
    if any(v is None for v in values):  # a family that does not know its optimum (locomotion)
        return None
    mean, ci95 = mean_ci95(values)
    return {"mean": mean, "ci95": ci95, "horizon": family.options.horizon, "family": type(family).__name__}


def _action_std(algorithm) -> list[float] | None:
    """The policy's standard deviation per action coordinate, where it has a ``log_std`` parameter."""
    log_std = getattr(getattr(algorithm, "model", None), "log_std", None)
    return None if log_std is None else [float(v) for v in log_std.detach().exp()]


def learning_curves(run_dir: Path) -> dict[str, list[list[float]]]:
    """``{"train": [[iteration, return], ...], "val": [...], "kl": [...], "step_fraction": [...]}`` from a run's
    ``metrics.jsonl`` (the training return is that of each logged meta-batch's scored roll-outs: after the
    inner steps, or of the policy itself with ``meta: false``; the validation one is the run's validation
    metric, after its eval steps; ``kl`` and ``step_fraction`` are the training lines' TRPO step), each a
    mean over the iterations of its log line, the last value of an iteration kept when a resume logged it
    twice."""
    out: dict[str, dict[int, float]] = {"train": {}, "val": {}, "kl": {}, "step_fraction": {}}
    path = Path(run_dir) / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        row = json.loads(line)
        split = row.get("split")
        for key, name in (("return", split), ("kl", "kl"), ("step_fraction", "step_fraction")):
            if name in out and (name == split or split == "train") and isinstance(row.get(key), (int, float)):
                out[name][int(row["step"])] = float(row[key])
    return {k: [[step, v[step]] for step in sorted(v)] for k, v in out.items()}


def draw_curves(curves: dict[str, dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from metakit.runtime.plots import save_figure

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, c in enumerate(curves.values()):
        color, label = f"C{i}", Path(c["run_dir"]).name
        if c["train"]:
            ax.plot(*zip(*c["train"]), color=color, alpha=0.35, lw=1, label=f"{label}: training batches")
        if c["val"]:
            ax.plot(*zip(*c["val"]), color=color, marker="o", ms=3, label=f"{label}: validation")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("return per episode")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def _table_main(args: argparse.Namespace) -> int:
    if not args.record.exists():
        raise SystemExit(f"navigation_figure.py: error: --record {str(args.record)!r} does not exist; evaluate runs "
                         "first (--run LABEL=RUN_DIR ...)")
    entries = json.loads(args.record.read_text())
    if not entries:
        raise SystemExit(f"navigation_figure.py: error: --record {str(args.record)!r} holds no entry")
    if args.curves is not None:
        if not entries[-1].get("curves"):
            raise SystemExit(f"navigation_figure.py: error: --curves: the newest entry of --record {str(args.record)!r} holds "
                             "no learning curves (written by evaluations since curves were recorded); evaluate the runs again")
        draw_curves(entries[-1]["curves"], args.curves, f"{entries[-1]['task']}\ntraining and validation returns of the runs")
    name = args.record.resolve()
    text = table(entries[-1], str(name.relative_to(HERE.parents[1]) if name.is_relative_to(HERE.parents[1]) else name))
    if args.readme is None:
        print(text)
        return 0
    try:
        _rl_record.write_into_readme(args.readme, text, _markers(args.markers))
    except _rl_record.RecordError as e:
        raise SystemExit(f"navigation_figure.py: error: {e}") from None
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", metavar="LABEL=RUN_DIR[@CHECKPOINT]",
                   help="a trained run and its label; @last or @FILE (in the run's checkpoints/) instead of its best checkpoint")
    p.add_argument("--table", action="store_true", help="print the record's newest entry as a table; evaluate nothing")
    p.add_argument("--readme", type=Path, default=None, help="with --table: write it into this README's markers")
    p.add_argument("--markers", default=MARKERS, help=f"with --readme: the name in the markers (default {MARKERS})")
    p.add_argument("--inner-lr", type=float, nargs="+", default=None, metavar="LR",
                   help="evaluate each policy with each of these inner step sizes (default: its config's inner_lr)")
    p.add_argument("--random-init", action="store_true", help="add the first run's policy at initialisation")
    p.add_argument("--tasks", type=int, default=1000, help="test tasks (default 1000)")
    p.add_argument("--steps", type=int, default=3, help="policy-gradient steps (default 3)")
    p.add_argument("--record", type=Path, default=HERE / "navigation.json")
    p.add_argument("--figure", type=Path, default=None, help="also draw the returns after each step into this PNG")
    p.add_argument("--curves", type=Path, default=None,
                   help="also draw the runs' training and validation returns into this PNG (with --table: the newest entry's)")
    args = p.parse_args()
    if args.table:
        return _table_main(args)
    if not args.run:
        p.error("--run LABEL=RUN_DIR is required (or --table to print the record)")
    if args.readme is not None:
        p.error("--readme goes with --table")
    labels = [item.partition("=")[0] for item in args.run]
    if len(set(labels)) != len(labels) or "random init" in labels:
        p.error(f"--run labels {labels}: each run needs its own label (and 'random init' names --random-init's row)")
    if args.inner_lr is not None and not all(math.isfinite(lr) and lr >= 0 for lr in args.inner_lr):
        p.error(f"--inner-lr {args.inner_lr}: each step size must be a finite number >= 0")
    if args.inner_lr is not None and len(set(args.inner_lr)) != len(args.inner_lr):
        p.error(f"--inner-lr {args.inner_lr}: a step size is given twice; give each once")
    torch.set_num_threads(1)
    start = time.perf_counter()
    policies: dict[str, dict] = {}
    curves: dict[str, dict] = {}
    first = None
    rates = args.inner_lr or [None]

    def evaluate(algorithm, episodes) -> list[tuple[str, float, list[dict]]]:
        """(label suffix, inner lr, curve) per step size of --inner-lr (the config's without it)."""
        out = []
        for lr in rates:
            if lr is not None:
                algorithm.inner_lr = lr
            with torch.no_grad():
                out.append(("" if lr is None else f", inner lr {lr:g}", algorithm.inner_lr, curve(algorithm, episodes, args.steps)))
        return out

    for item in args.run:
        label, _, spec = item.partition("=")
        run_dir, at, choice = spec.rpartition("@")
        if not at or "/" in choice:  # no checkpoint named (an "@" inside the folder's path)
            run_dir, choice = spec, ""
        if choice not in ("", "best", "last"):
            choice = str(Path(run_dir) / "checkpoints" / choice)
        try:
            loaded = load_run(run_dir, checkpoint=choice or "best", fallback=choice in ("", "best"))
        except (FileNotFoundError, CheckpointError) as e:
            p.error(f"--run {item!r}: {e}")
        first = first or loaded
        curves.setdefault(loaded.run_dir.name, {"run_dir": str(loaded.run_dir), **learning_curves(loaded.run_dir)})
        episodes = loaded.episodes("test", episodes=args.tasks, batch_size=50)
        for suffix, lr, points in evaluate(loaded.algorithm, episodes):
            policies[label + suffix] = {
                "run_dir": str(loaded.run_dir), "checkpoint": loaded.checkpoint.name, "checkpoint_sha256": _sha256(loaded.checkpoint),
                "train_step": loaded.step, "config_sha256": _sha256(Path(run_dir) / "config.yaml"),
                "config": loaded.config.to_dict(), "inner_lr": lr, "action_std": _action_std(loaded.algorithm),
                "returns": points,
                "training": json.loads((Path(run_dir) / "summary.json").read_text()),
            }
    if args.random_init and first is not None:
        seed_everything(first.config.run.seed)
        algorithm = build_algorithm(first.config, first.context)
        algorithm.eval()
        for suffix, lr, points in evaluate(algorithm, first.episodes("test", episodes=args.tasks, batch_size=50)):
            policies["random init" + suffix] = {"config_sha256": _sha256(first.run_dir / "config.yaml"),
                                                "seed": first.config.run.seed, "inner_lr": lr,
                                                "action_std": _action_std(algorithm), "returns": points}
    e = first.config.eval if first is not None else None
    entry = {
        "run_id": uuid.uuid4().hex[:12],
        "command": shlex.join(["python", *sys.argv]),
        "task": first.config.family.describe() if first is not None else None,
        "protocol": {"tasks": args.tasks, "steps": args.steps, "shots": e.shots if e else None,
                     "queries": e.queries if e else None, "seed": e.seed if e else None, "split": "test"},
        "policies": policies,
        "curves": curves,
        "seconds": round(time.perf_counter() - start, 2),
        "hardware": hardware(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    entries = json.loads(args.record.read_text()) if args.record.exists() else []
    entries.append(entry)
    args.record.write_text(json.dumps(entries, indent=1) + "\n")
    if args.figure is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from metakit.runtime.plots import save_figure

        fig, ax = plt.subplots(figsize=(5.5, 4))
        for label, pol in policies.items():
            pts = pol["returns"]
            ax.errorbar([q["steps"] for q in pts], [q["mean"] for q in pts], yerr=[q["ci95"] or 0 for q in pts],
                        marker="o", capsize=3, label=label)
        ax.set_xlabel("number of policy-gradient steps")
        ax.set_ylabel("average return")
        ax.set_xticks(range(args.steps + 1))
        ax.grid(True, alpha=0.3)
        ax.legend()
        ax.set_title(f"{entry['task']}\n{args.tasks} test tasks, mean ± 95% CI", fontsize=9)
        fig.tight_layout()
        save_figure(fig, args.figure)
    if args.curves is not None:
        draw_curves(curves, args.curves, f"{entry['task']}\ntraining and validation returns of the runs")
    print(json.dumps({k: [round(q["mean"], 2) for q in v["returns"]] for k, v in policies.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
