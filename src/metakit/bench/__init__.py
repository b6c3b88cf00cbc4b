"""Benchmarks, run with ``metakit bench NAME [options]``.

A benchmark is a module of this package that exposes:

``DESCRIPTION``
    One line, shown by ``metakit bench --help``.
``add_arguments(parser: argparse.ArgumentParser) -> None``
    Adds its options to its ``metakit bench NAME`` parser.
``run(args: argparse.Namespace) -> int``
    Runs it, prints what was measured and how, and returns the exit code.

Add a benchmark by writing the module and adding one line to :data:`BENCHMARKS`.
"""

from __future__ import annotations

import difflib
import importlib
import os
import platform
from pathlib import Path
from types import ModuleType

__all__ = ["BENCHMARKS", "available_benchmarks", "load_benchmark", "hardware"]

# name -> module (in the order ``metakit bench --help`` lists them)
BENCHMARKS: dict[str, str] = {
    "sampler": "metakit.bench.sampler",
    "maml": "metakit.bench.maml",
    "precision": "metakit.bench.precision",
}


def available_benchmarks() -> list[str]:
    return list(BENCHMARKS)


def load_benchmark(name: str) -> ModuleType:
    """The module of benchmark ``name`` (``ValueError`` naming the known ones if unknown)."""
    if name not in BENCHMARKS:
        close = difflib.get_close_matches(str(name), BENCHMARKS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"benchmark {name!r} is not known{hint} Available: {', '.join(BENCHMARKS)}")
    module = importlib.import_module(BENCHMARKS[name])
    for attr in ("DESCRIPTION", "add_arguments", "run"):
        if not hasattr(module, attr):
            raise TypeError(f"benchmark module {module.__name__} lacks {attr}; see metakit.bench for the protocol")
    return module


def hardware() -> dict[str, object]:
    """What a benchmark record names as its hardware: CPU model, cores, Python and torch versions."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()}
