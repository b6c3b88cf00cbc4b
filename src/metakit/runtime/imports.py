"""``run.imports``: the user's own Python modules, imported before a config is read.

A config can use task families, dataset sources, models and algorithms that live outside
metakit: the modules that register them (``env_family(...)``, ``@register_family``,
``@register_algorithm`` ...) are listed in ``run.imports``, and every command that reads the
config (``metakit train``, ``eval``, ``plot``, ``predict``, ``train --resume``) imports them
first. An entry is either a dotted module name importable from the current environment
(``my_package.envs``) or the path of a ``.py`` file (``my_envs.py``, resolved against the
current directory and stored absolute in the run's ``config.yaml``, so that the run's later
commands find it from any directory).

A file is imported once per process under a name derived from its absolute path, so reading
the same config twice registers its families once.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import traceback
from typing import Any

from ..options import ConfigError

__all__ = ["import_user_modules", "is_file_entry"]

_KEY = "run.imports"


def is_file_entry(entry: str) -> bool:
    """Whether ``entry`` names a file (ends in ``.py`` or contains a path separator)."""
    return entry.endswith(".py") or "/" in entry or os.sep in entry


def _where(error: BaseException, source: str | None) -> str:
    """Where in the user's code ``error`` came from: a syntax error's own line, else the last frame
    of the traceback in ``source`` (a file, or the folder of a package), else the last frame."""
    if isinstance(error, SyntaxError) and error.filename and error.lineno:
        return f" (at {error.filename}, line {error.lineno})"
    frames = traceback.extract_tb(error.__traceback__)
    if source is not None:
        mine = [f for f in frames if os.path.abspath(f.filename) == source or os.path.abspath(f.filename).startswith(source + os.sep)]
        frames = mine or frames
    return f" (at {frames[-1].filename}, line {frames[-1].lineno})" if frames else ""


def _failed(entry: str, error: BaseException, source: str | None) -> ConfigError:
    return ConfigError(
        f"{_KEY}: importing {entry!r} raised {type(error).__name__}: {error}{_where(error, source)}; fix the module "
        f"or remove it from {_KEY}"
    )


def _module_source(entry: str) -> str | None:
    """The file of module ``entry`` (the folder of a package), if it can be found."""
    try:
        spec = importlib.util.find_spec(entry)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not os.path.isfile(spec.origin):
        return None
    origin = os.path.abspath(spec.origin)
    return os.path.dirname(origin) if spec.submodule_search_locations else origin


def _import_file(entry: str) -> str:
    path = os.path.abspath(os.path.expanduser(entry))
    if not os.path.isfile(path):
        raise ConfigError(
            f"{_KEY}: {entry!r} is not a file (looked for {path}); give the path of a .py file (relative to the "
            "current directory) or a module name importable from this Python environment. A run stores the "
            f"absolute path in RUN/config.yaml: if the file has moved, edit {_KEY} there (or resume with "
            f"{_KEY}=[NEW_PATH])"
        )
    stem = os.path.splitext(os.path.basename(path))[0]
    name = f"_metakit_user_{''.join(c if c.isalnum() else '_' for c in stem)}_{hashlib.sha1(path.encode()).hexdigest()[:10]}"
    if name in sys.modules:
        return path
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{_KEY}: {entry!r} cannot be imported as a Python module; give a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's module: report where it failed
        del sys.modules[name]
        raise _failed(entry, e, path) from e
    return path


def _import_module(entry: str) -> str:
    try:
        importlib.import_module(entry)
    except ModuleNotFoundError as e:
        if e.name is not None and (entry == e.name or entry.startswith(e.name + ".")):
            raise ConfigError(
                f"{_KEY}: no module named {entry!r} in this Python environment; install its package, add its "
                f"folder to PYTHONPATH, or give the path of its .py file (e.g. {_KEY}=[./{entry.split('.')[-1]}.py])"
            ) from None
        raise _failed(entry, e, _module_source(entry)) from e
    except Exception as e:
        raise _failed(entry, e, _module_source(entry)) from e
    return entry


def import_user_modules(entries: Any) -> list[str]:
    """Import every entry of ``run.imports`` (module docstring); the entries with files made absolute.

    Raises:
        ConfigError: ``entries`` is not a list of non-empty strings, a file is missing, a module
            is not installed, or importing one raised (the message names the entry, the error and
            the line it came from).
    """
    if entries is None:
        return []
    if isinstance(entries, (str, bytes)) or not isinstance(entries, (list, tuple)):
        raise ConfigError(
            f"{_KEY}={entries!r} must be a list of module names or .py paths, e.g. {_KEY}=[my_envs.py] "
            f"or, in YAML, `run: {{imports: [my_package.envs]}}`"
        )
    resolved = []
    for entry in entries:
        if not isinstance(entry, str) or not entry.strip():
            raise ConfigError(f"{_KEY}: every entry must be a non-empty module name or .py path, got {entry!r}")
        entry = entry.strip()
        resolved.append(_import_file(entry) if is_file_entry(entry) else _import_module(entry))
    return resolved
