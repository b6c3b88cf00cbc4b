"""Entry point of the ``metakit`` command.

Each subcommand lives in its own module of this package and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (called with the parsed
arguments; returns an exit code). Add a new command by adding its module name to
``_COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# With OpenMP's default (active) wait policy, torch's worker threads spin and every parallel op
# stalls badly when another process holds the other core (measured 9-33x slower sampling on this
# 2-core machine under load). Passive waiting costs little when the machine is idle. Must be set
# before torch is imported; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# module name in metakit.cli -> registered in this order in --help
_COMMANDS = ["demo", "data", "train", "eval", "predict", "plot", "bench"]


class UsageError(Exception):
    """A user error the CLI reports as one line on stderr with exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metakit",
        description="Meta-learning (learning to learn): train, evaluate and benchmark few-shot learners.",
    )
    parser.add_argument("--version", action="version", version=f"metakit {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS:
        importlib.import_module(f"metakit.cli.{name}").register(sub)
    return parser


def _version() -> str:
    from metakit import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.func(args) or 0)
    except (UsageError, ValueError, FileNotFoundError, TypeError) as e:
        # errors raised at the library boundary already name the argument and the fix
        if isinstance(e, TypeError) and not getattr(e, "_metakit_user_error", False):
            raise
        print(f"metakit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"metakit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
