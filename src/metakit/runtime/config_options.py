"""The options of registered models and algorithms: their constructors' keyword arguments.

The ``model:`` and ``algorithm:`` sections of a config are open: besides ``name`` their keys are
the keyword arguments of the registered backbone (``metakit.models``) or algorithm
(``__init__`` after the model), with the types and defaults of the signature. Help text comes
from the class's ``option_help`` mapping where it declares one, else from the ``Args:`` entry
of its docstring (:func:`doc_args`).

:func:`check_model_fits` builds the backbone on the meta device (no memory, no compute) and
feeds it one batch of the task family's examples, so that options that cannot work
(``model.hidden=[-4]``, ``model.in_features=2`` for one-dimensional inputs, an output of 0
features) are refused when the config is read, before any data is loaded or run folder made.
"""

from __future__ import annotations

import inspect
import re
import typing
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..options import ConfigError, check_value, suggest

__all__ = ["OptionSpec", "algorithm_option_specs", "model_option_specs", "check_options", "check_model_fits", "doc_args"]


@dataclass(frozen=True)
class OptionSpec:
    """One keyword argument of a backbone or an algorithm, read from its signature."""

    name: str
    annotation: Any
    default: Any  # inspect.Parameter.empty when required
    help: str

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty


def doc_args(obj: Any) -> dict[str, str]:
    """The ``Args:`` section of a Google-style docstring, as ``{name: text}``."""
    lines = (inspect.getdoc(obj) or "").splitlines()
    try:
        start = next(i for i, ln in enumerate(lines) if ln.strip() in ("Args:", "Arguments:", "Parameters:"))
    except StopIteration:
        return {}
    base = len(lines[start]) - len(lines[start].lstrip())
    out: dict[str, str] = {}
    entry_indent: int | None = None
    current: str | None = None
    for ln in lines[start + 1 :]:
        if not ln.strip():
            continue
        indent = len(ln) - len(ln.lstrip())
        if indent <= base:
            break  # the next section (Returns:, Raises:, ...)
        m = re.match(r"^\s*(\w+)(?:\s*\([^)]*\))?:\s*(.*)$", ln)
        if m and (entry_indent is None or indent == entry_indent):
            entry_indent = indent
            current = m.group(1)
            out[current] = m.group(2).strip()
        elif current is not None:
            out[current] += " " + ln.strip()
    return out


def _signature_specs(cls: type, skip: int) -> dict[str, OptionSpec]:
    """Keyword arguments of ``cls.__init__`` after ``self`` and ``skip`` leading positional ones."""
    sig = inspect.signature(cls.__init__)
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # unresolvable annotations: check names only
        hints = {}
    docs = {**doc_args(cls), **dict(getattr(cls, "option_help", None) or {})}
    params = [p for p in sig.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)][1 + skip :]
    return {
        p.name: OptionSpec(p.name, hints.get(p.name, Any), p.default, docs.get(p.name, ""))
        for p in params
        if p.kind != p.POSITIONAL_ONLY
    }


def algorithm_option_specs(name: str) -> dict[str, OptionSpec]:
    """The config options of the registered algorithm ``name``: ``__init__`` after the model."""
    from ..algorithms import get_algorithm

    check_value("algorithm.name", name, str)
    return _signature_specs(get_algorithm(name), skip=1)


def model_class(name: str) -> type:
    from .. import models

    return models.get_model(name)


def model_option_specs(name: str) -> dict[str, OptionSpec]:
    """The config options of the backbone ``name``: the keyword arguments of its class."""
    check_value("model.name", name, str)
    return _signature_specs(model_class(name), skip=0)


def check_options(
    section: str,
    owner: str,
    options: Mapping[str, Any],
    specs: Mapping[str, OptionSpec],
    require: bool,
    all_keys: list[str],
) -> dict[str, Any]:
    """``options`` checked against ``specs``: unknown keys, types and (``require``) missing ones."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        if not isinstance(key, str) or key not in specs:
            valid = ", ".join(specs) or "(none)"
            raise ConfigError(
                f"unknown config key '{section}.{key}' for {section} {owner!r}"
                f"{suggest(f'{section}.{key}', [f'{section}.{k}' for k in specs] + all_keys)}; "
                f"options of {owner}: {valid}"
            )
        out[key] = check_value(f"{section}.{key}", value, specs[key].annotation)
    if require:
        missing = [k for k, s in specs.items() if s.required and k not in out]
        if missing:
            raise ConfigError(
                f"{section} {owner!r} needs {', '.join(f'{section}.{k}' for k in missing)} (no default); set it in the config"
            )
    return out


def _shown(options: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in options.items()) or "its defaults"


def check_model_fits(name: str, options: Mapping[str, Any], family: Any, context: Any) -> None:
    """Build backbone ``name`` with ``options`` on the meta device and run it on two examples of
    ``family``'s shape; raise :class:`ConfigError` if that fails or the output cannot serve.

    ``options`` are the backbone options the run will use (the algorithm's defaults for the task
    and the user's); the message names them and the shape of the task's examples.
    """
    import torch

    from .. import models

    shape = tuple(family.example_shape())
    where = f"model {name!r} with {_shown(options)}"
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zero-size layers warn; they are reported below
            model = models.build_model(name, **options)
            out = model(torch.empty((2, *shape)))
    except (ValueError, TypeError, RuntimeError) as e:
        raise ConfigError(
            f"{where} cannot run on the examples of task.family={family.name} (one example is "
            f"{list(shape)}): {e}. Fix the model options (model.<option>=value) to fit these examples"
        ) from None
    if not isinstance(out, torch.Tensor):
        return  # a model with structured outputs: checked when it runs
    if out.numel() == 0 or out.dim() < 2:
        raise ConfigError(
            f"{where} gives outputs of shape {list(out.shape)} for 2 examples of shape {list(shape)}: "
            "no features per example. Give every size option of the model a value >= 1"
        )
    problem = family.check_model_output(tuple(out.shape[1:]))
    if problem:
        raise ConfigError(f"{where} gives outputs of shape {list(out.shape[1:])} per example, but {problem}; "
                          "fix model.out_features (or the model's other size options)")
