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
import importlib.util
import os
import platform
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["BENCHMARKS", "available_benchmarks", "load_benchmark", "load_script", "hardware"]

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


def load_script(path: str | os.PathLike[str], name: str) -> ModuleType:
    """Execute the script at ``path`` (a file of the repository's ``benchmarks/``, which is no package)
    as a new module ``name`` and return it; the module is registered in ``sys.modules`` under
    ``name`` first, since dataclasses look their module up while a class is built."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_script: {str(path)!r} is not a file; give the path of a benchmark script")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None  # a .py file always has a source loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
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
