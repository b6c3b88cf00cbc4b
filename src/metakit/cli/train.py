"""``metakit train CONFIG.yaml [key=value ...] [--out RUN_DIR] [--resume RUN_DIR]``."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from .main import UsageError

_DESCRIPTION = """\
Meta-train an algorithm from a YAML config (see configs/), with optional section.key=value
overrides (values are YAML: optim.lr=3e-4, task.root=/data/omniglot, model.hidden=[40,40]).

The run folder (--out; default runs/<config-name>-<timestamp>) receives the effective config
(config.yaml), metrics.jsonl, TensorBoard events (tb/), checkpoints/ (the last run.keep_last step
checkpoints and best.safetensors) and summary.json. Ctrl-C stops after the current step and writes
a checkpoint; `metakit train --resume RUN_DIR` continues from the newest readable checkpoint and ends
with the parameters an uninterrupted run would have (bitwise with run.deterministic=true and the same
run.num_threads). Only these keys may be overridden on resume:
{resumable}.
"""

_EPILOG_HEAD = """\
examples:
  metakit train configs/protonet_omniglot_5w1s.yaml
  metakit train configs/protonet_omniglot_5w1s.yaml train.steps=500 run.seed=1 --out runs/try
  metakit train --resume runs/try train.steps=1000

"""


class _HelpWithConfig(argparse.Action):
    """``-h/--help`` that documents every config field (built only when asked: it imports torch)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: object) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, help="show this help message and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: object, values: object, option_string: str | None = None) -> None:
        from ..runtime.config import config_help
        from ..runtime.run import RESUMABLE_KEYS

        resumable = textwrap.fill(", ".join(RESUMABLE_KEYS), width=96, initial_indent="  ", subsequent_indent="  ")
        parser.description = _DESCRIPTION.format(resumable=resumable)
        parser.epilog = _EPILOG_HEAD + config_help()
        parser.print_help()
        parser.exit()


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="meta-train an algorithm from a YAML config (with key=value overrides); resume a run",
        description="Meta-train an algorithm from a YAML config; --help lists every config field.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
    )
    p.add_argument("-h", "--help", action=_HelpWithConfig)
    p.add_argument(
        "items",
        nargs="*",
        metavar="CONFIG.yaml [key=value ...]",
        help="the config file (omit with --resume), then section.key=value overrides",
    )
    p.add_argument("--out", metavar="RUN_DIR", help="run folder to create (default: runs/<config-name>-<timestamp>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its newest readable checkpoint")
    p.add_argument(
        "--restart",
        action="store_true",
        help="with --resume: start the run again from step 0 when none of its checkpoints is left "
        "(without it such a resume is refused)",
    )
    p.set_defaults(func=run)


def _split_items(items: list[str]) -> tuple[str | None, list[str]]:
    config_path: str | None = None
    overrides: list[str] = []
    for item in items:
        if "=" in item:
            overrides.append(item)
        elif config_path is None and not overrides:
            config_path = item
        else:
            raise UsageError(
                f"unexpected argument {item!r}: give CONFIG.yaml first, then section.key=value overrides"
            )
    return config_path, overrides


def run(args: argparse.Namespace) -> int:
    from ..runtime.config import load_config
    from ..runtime.run import default_run_dir, read_run_config
    from ..runtime.trainer import NonFiniteLossError, train

    config_path, overrides = _split_items(list(args.items))
    if args.resume:
        if args.out:
            raise UsageError("--out and --resume exclude each other: --resume continues the run in its own folder")
        if config_path is not None:
            raise UsageError(
                f"--resume uses the run's own config.yaml; drop {config_path!r} (key=value overrides of the "
                "resumable keys are allowed)"
            )
        run_dir = Path(args.resume)
        config = read_run_config(run_dir, overrides)
    elif args.restart:
        raise UsageError("--restart goes with --resume RUN_DIR (it restarts that run from step 0)")
    else:
        if config_path is None:
            raise UsageError("give a config file (e.g. configs/protonet_omniglot_5w1s.yaml) or --resume RUN_DIR")
        config = load_config(config_path, overrides)
        run_dir = Path(args.out) if args.out else default_run_dir(config_path)
    try:
        result = train(config, run_dir, resume=bool(args.resume), restart=args.restart)
    except FileExistsError as e:
        raise UsageError(str(e)) from None
    except NonFiniteLossError as e:
        print(f"metakit train: error: {e}", file=sys.stderr)
        print(f"run folder: {run_dir}")
        return 1
    print(f"run folder: {result.run_dir}")
    if result.best is not None:
        b = result.best
        print(
            f"best validation {b['metric']}: {_format_record(b)} at step {b['step']} "
            f"({b['episodes']} episodes, 95% CI)"
        )
    speed = f", {result.steps_per_s:.2f} steps/s" if result.steps_per_s else ""
    print(f"steps: {result.step}/{result.steps} in {result.elapsed:.1f} s{speed}")
    if result.interrupted:
        print(f"interrupted; continue with: metakit train --resume {result.run_dir}")
        return 130
    if result.status == "stopped_early":
        print(
            f"stopped early (train.patience={config.train.patience}: no better validation since step "
            f"{result.best['step'] if result.best else '?'}); train on with: metakit train --resume "
            f"{result.run_dir} train.patience=null"
        )
    return 0


def _format_record(rec: dict) -> str:
    metric, mean, ci = rec["metric"], rec[rec["metric"]], rec.get("ci95")
    if metric == "accuracy":
        return f"{100 * mean:.2f} ± {'n/a' if ci is None else f'{100 * ci:.2f}'} %"
    return f"{mean:.4g} ± {'n/a' if ci is None else f'{ci:.4g}'}"
