"""Declared options: typed, validated and documented fields of frozen dataclasses.

Every config field of metakit -- a section of the run config, the options of a task family or
of a dataset source -- is declared once with :func:`option` (default, help text, checks) on a
frozen dataclass deriving from :class:`Options`. Constructing the dataclass checks every value
against its annotation and its checks (``choices``, ``ge``, ``gt``, ``le``, ``lt``) and raises
:class:`ConfigError` naming the key (``section.field``), the value and the allowed types,
range or choices, with the closest valid choice as a suggestion. ``metakit train --help``
reads the same declarations (:func:`option_rows`).

This module is the one place of that machinery; it imports nothing from metakit so that every
layer (tasks, runtime) can declare options.
"""

from __future__ import annotations

import difflib
import inspect
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, Literal

__all__ = [
    "ConfigError",
    "Options",
    "option",
    "check_value",
    "check_range",
    "suggest",
    "type_name",
    "range_text",
    "plain",
    "option_rows",
]


class ConfigError(ValueError):
    """A config value or key is wrong; the message names the key, the value and the fix."""


def option(default: Any, help: str, **checks: Any) -> Any:
    """A declared field: default, help text and checks (``choices``, ``ge``, ``gt``, ``le``, ``lt``)."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **checks})
    return field(default=default, metadata={"help": help, **checks})


# -- value checking ------------------------------------------------------------------------------
_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^[+-]?(inf|nan)$", re.IGNORECASE)


def type_name(tp: Any) -> str:
    """A short readable name of the annotation ``tp`` (``int or null``, ``list of int``...)."""
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + "|".join(str(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple, Sequence, typing.Sequence):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return f"list of {type_name(args[0])}" if args else "list"
    if origin in (dict, Mapping, typing.Mapping):
        return "mapping"
    if tp is Any:
        return "any"
    return getattr(tp, "__name__", str(tp))


def check_value(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints/numeric strings -> float).

    Raises :class:`ConfigError` naming ``key`` when the type is wrong.
    """
    ok, out = _match(value, tp)
    if not ok:
        choices = _literal_choices(tp)
        if choices and isinstance(value, str):
            raise ConfigError(
                f"{key}={value!r} is not a valid choice{suggest(value, [str(c) for c in choices])}; "
                f"use one of: {', '.join(map(str, choices))}"
            )
        raise ConfigError(
            f"{key}={value!r} has the wrong type: expected {type_name(tp)}, got {type(value).__name__}"
            + (" (quote nothing: numbers and true/false are written bare in YAML)" if isinstance(value, str) else "")
        )
    return out


def _literal_choices(tp: Any) -> list[Any]:
    """The values of the ``Literal`` arms of ``tp`` (``Literal["a", "b"] | None`` -> ``["a", "b"]``)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return list(typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return [c for arm in typing.get_args(tp) for c in _literal_choices(arm)]
    return []


def _match(value: Any, tp: Any) -> tuple[bool, Any]:
    if tp is Any or tp is inspect.Parameter.empty:
        return True, value
    if tp is type(None) or tp is None:
        return value is None, value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(tp):
            ok, out = _match(value, arm)
            if ok:
                return True, out
        return False, value
    if origin is Literal:
        return value in typing.get_args(tp), value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, (int, float)):
            return True, float(value)
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            # PyYAML reads 1e-3 (no dot) as a string; accept it for float fields
            return True, float(value)
        return False, value
    if tp is str:
        return isinstance(value, str), value
    if origin in (dict, Mapping, typing.Mapping) or tp in (dict, Mapping):
        return isinstance(value, Mapping), value
    if origin in (list, tuple, Sequence, typing.Sequence) or tp in (list, tuple, Sequence):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            return False, value
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                return False, value
            pairs = list(zip(value, args))
        else:
            arm = args[0] if args else Any
            pairs = [(v, arm) for v in value]
        out = []
        for v, a in pairs:
            ok, o = _match(v, a)
            if not ok:
                return False, value
            out.append(o)
        return True, (tuple(out) if isinstance(value, tuple) else out)
    if isinstance(tp, type):
        return isinstance(value, tp), value
    return True, value  # an annotation we cannot check (a protocol, a string forward reference...)


_BOUNDS = (("ge", ">=", lambda v, b: v >= b), ("gt", ">", lambda v, b: v > b),
           ("le", "<=", lambda v, b: v <= b), ("lt", "<", lambda v, b: v < b))


def check_range(key: str, value: Any, meta: Mapping[str, Any]) -> None:
    """Check ``value`` against the ``choices`` and bounds of a field's metadata."""
    if value is None:
        return
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        hint = suggest(str(value), [str(c) for c in choices])
        raise ConfigError(f"{key}={value!r} is not a valid choice{hint}; use one of: {', '.join(map(str, choices))}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and math.isnan(value):
            raise ConfigError(f"{key}=nan is not a number; give a finite value")
        for op, sym, ok in _BOUNDS:
            bound = meta.get(op)
            if bound is not None and not ok(value, bound):
                raise ConfigError(f"{key}={value!r} is out of range: it must be {sym} {bound}")
        if isinstance(value, float) and math.isinf(value):
            raise ConfigError(f"{key}={value!r} must be finite")


def range_text(meta: Mapping[str, Any]) -> str:
    """``{a, b}`` or ``>= 1, < 5``: the checks of a field, for help text."""
    if meta.get("choices") is not None:
        return "{" + ", ".join(map(str, meta["choices"])) + "}"
    return ", ".join(f"{sym} {meta[op]}" for op, sym, _ in _BOUNDS if meta.get(op) is not None)


def suggest(word: str, candidates: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or ``""``."""
    candidates = list(candidates)
    # a field name that exists in one other section (lr=0.1, task.steps=3): the key that ends with it
    name = word.rsplit(".", 1)[-1]
    same = [c for c in candidates if c.rsplit(".", 1)[-1] == name and c != word]
    if len(same) == 1:
        return f" (did you mean {same[0]!r}?)"
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def plain(v: Any) -> Any:
    """Plain YAML-able values (tuples -> lists, mappings -> dicts)."""
    if isinstance(v, Mapping):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return v


# -- declared options ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Options:
    """Base of a frozen dataclass of declared options, checked on construction.

    ``section`` names the config section the fields are written in (error messages say
    ``section.field``). Subclasses declare fields with :func:`option` and may override
    :meth:`_resolve` for cross-field checks and defaults that depend on other fields.
    """

    section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            key = f"{self.section}.{f.name}"
            value = check_value(key, getattr(self, f.name), hints[f.name])
            check_range(key, value, f.metadata)
            object.__setattr__(self, f.name, value)
        self._resolve()

    def _resolve(self) -> None:
        """Cross-field checks and defaults that depend on other fields (override in subclasses)."""

    def _set(self, name: str, value: Any) -> None:
        """Set a field during :meth:`_resolve` (the dataclass is frozen)."""
        object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: plain(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], all_keys: Sequence[str] = (), owner: str = "") -> "Options":
        """Build from a mapping; an unknown key is a :class:`ConfigError` with the closest key
        (``owner``, e.g. ``task.family=sinusoid``, says whose keys these are)."""
        valid = cls.keys()
        for key in raw:
            if key not in valid:
                dotted = [f"{cls.section}.{k}" for k in valid]
                raise ConfigError(
                    f"unknown config key '{cls.section}.{key}'{f' for {owner}' if owner else ''}"
                    f"{suggest(f'{cls.section}.{key}', dotted + [k for k in all_keys if k not in dotted])}; "
                    f"keys of {cls.section}: {', '.join(valid)}"
                )
        return cls(**raw)


def option_rows(cls: type) -> list[tuple[str, str, Any, str]]:
    """``(field, type and range, default, help)`` of every declared field of ``cls``, for help text."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in fields(cls):
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        extra = range_text(f.metadata)
        rows.append((f.name, type_name(hints[f.name]) + (f", {extra}" if extra else ""), default, f.metadata.get("help", "")))
    return rows
