"""``metakit bench NAME [options]``: run a registered benchmark (see :mod:`metakit.bench`)."""

from __future__ import annotations

import argparse

from ..bench import BENCHMARKS, load_benchmark


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="measure speed and memory (episode sampler; MAML meta-iteration vs higher)",
        description="Run a benchmark; each prints what it measured and how.",
    )
    names = parser.add_subparsers(dest="benchmark", metavar="NAME")
    for name in BENCHMARKS:
        module = load_benchmark(name)
        sub = names.add_parser(name, help=module.DESCRIPTION, description=module.DESCRIPTION)
        module.add_arguments(sub)
        sub.set_defaults(func=module.run)
    parser.set_defaults(func=_no_benchmark(parser))


def _no_benchmark(parser: argparse.ArgumentParser):
    def show_help(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    return show_help
