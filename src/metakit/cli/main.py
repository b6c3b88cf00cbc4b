"""Entry point of the ``metakit`` command.

Each subcommand lives in its own module of this package and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (called with the parsed
arguments; returns an exit code). Add a new command by adding its module name to
``_COMMANDS``.

Process options (before the command: ``metakit --omp-wait-policy active train ...``) tune the
whole process; the command sets them, importing metakit never does:

* ``--omp-wait-policy {passive,active}`` (default: ``OMP_WAIT_POLICY`` from the environment,
  else passive). With OpenMP's active policy idle worker threads spin, which stalls every
  parallel op when other processes hold the cores. Measured: a ProtoNet Conv4 training step
  (20-way 1-shot, 5 queries, 2 threads) with the load average at 5.8-7.3 on 2 cores took 0.97 s
  active against 0.41 s passive (mean of 3 interleaved runs of 8 steps; CPU 0.50 against
  0.20 s per step). OpenMP reads the policy once, when torch is loaded: when torch is already
  loaded (``main`` called from Python), an explicit ``--omp-wait-policy`` that differs from the
  environment is an error, and the default leaves the caller's process alone.
* ``--tune-allocator`` (off by default): call :func:`metakit.runtime.trainer.tune_allocator`
  (glibc ``mallopt``: freed buffers stay in the heap) before the command; its docstring gives
  the measured effect. Library users call that function themselves if they want it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# module name in metakit.cli -> registered in this order in --help
_COMMANDS = ["demo", "data", "train", "eval", "predict", "plot", "bench"]

_WAIT_POLICIES = ("passive", "active")


class UsageError(Exception):
    """A user error the CLI reports as one line on stderr with exit code 2."""


def _process_parser() -> argparse.ArgumentParser:
    """The process options alone (module docstring): parsed before the command modules, some of
    which load torch, are imported."""
    parser = argparse.ArgumentParser(prog="metakit", add_help=False, allow_abbrev=False)
    parser.add_argument(
        "--omp-wait-policy",
        choices=_WAIT_POLICIES,
        default=None,
        help="how idle torch worker threads wait (default: OMP_WAIT_POLICY from the environment, else passive: "
        "much faster when other processes share the cores)",
    )
    parser.add_argument(
        "--tune-allocator",
        action="store_true",
        help="keep freed buffers of up to 32 MiB in the heap (glibc mallopt): fewer page faults; off by default",
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metakit",
        description="Meta-learning (learning to learn): train, evaluate and benchmark few-shot learners.",
        parents=[_process_parser()],
    )
    parser.add_argument("--version", action="version", version=f"metakit {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS:
        importlib.import_module(f"metakit.cli.{name}").register(sub)
    return parser


def _version() -> str:
    from metakit import __version__

    return __version__


def apply_process_options(omp_wait_policy: str | None, tune_allocator: bool) -> None:
    """Set the process options of the command (module docstring); call it before torch is loaded."""
    current = os.environ.get("OMP_WAIT_POLICY")
    if "torch" in sys.modules:
        if omp_wait_policy is not None and omp_wait_policy.upper() != (current or "").upper():
            raise UsageError(
                f"--omp-wait-policy={omp_wait_policy} cannot take effect: torch is already loaded in this process "
                f"(OMP_WAIT_POLICY={current or 'unset'}); run metakit as a program, or set OMP_WAIT_POLICY before "
                "starting Python"
            )
    elif omp_wait_policy is not None or current is None:
        os.environ["OMP_WAIT_POLICY"] = (omp_wait_policy or "passive").upper()
    if tune_allocator:
        from ..runtime.trainer import tune_allocator as tune

        tune()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    early, _ = _process_parser().parse_known_args(argv)
    try:
        apply_process_options(early.omp_wait_policy, early.tune_allocator)
    except UsageError as e:
        print(f"metakit: error: {e}", file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.func(args) or 0)
    except (UsageError, ValueError, FileNotFoundError) as e:
        # errors raised at the library boundary already name the argument and the fix
        print(f"metakit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"metakit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    # run the package's module, not this file's second copy: the commands raise the error classes
    # of ``metakit.cli.main``, which a ``__main__`` copy would not recognise
    from metakit.cli.main import main as _package_main

    sys.exit(_package_main())
