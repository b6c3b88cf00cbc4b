"""Name -> class registries: algorithms, task families, dataset sources.

A :class:`Registry` maps the short names configs use to classes registered with its
:meth:`~Registry.register` decorator. Names starting with ``_`` are private (tests, examples):
they can be used but are not listed. An unknown name is a :class:`~metakit.options.ConfigError`
that names the config key, suggests the closest name and lists the available ones.
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, TypeVar

from .options import ConfigError

__all__ = ["Registry"]

C = TypeVar("C", bound=type)


class Registry(Generic[C]):
    """Registered classes by name.

    Args:
        what: what the classes are, for messages (``"task family"``).
        key: the config key that names one (``"task.family"``).
        required: class attributes a registered class must set (non-empty).
    """

    def __init__(self, what: str, key: str, required: tuple[str, ...] = ()) -> None:
        self.what, self.key, self.required = what, key, required
        self._classes: dict[str, C] = {}

    def register(self, name: str) -> Callable[[C], C]:
        """Class decorator: register under ``name`` (and set the class's ``name``)."""

        def deco(cls: C) -> C:
            taken = self._classes.get(name)
            if taken is not None and taken is not cls:
                raise ValueError(f"{self.what} name {name!r} is already registered by {taken.__qualname__}")
            for attr in self.required:
                if not getattr(cls, attr, None):
                    raise ValueError(f"{self.what} {cls.__qualname__} must set the class attribute {attr!r}")
            cls.name = name  # type: ignore[attr-defined]
            self._classes[name] = cls
            return cls

        return deco

    def names(self, private: bool = False) -> list[str]:
        """Registered names, sorted (those starting with ``_`` only with ``private``)."""
        return sorted(n for n in self._classes if private or not n.startswith("_"))

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def get(self, name: str) -> C:
        """The class registered as ``name``; a :class:`ConfigError` with a suggestion otherwise."""
        try:
            return self._classes[name]
        except (KeyError, TypeError):
            close = difflib.get_close_matches(str(name), self.names(private=True), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{self.key}={name!r} is not a known {self.what}{hint}; available: {', '.join(self.names())} "
                f"(one of your own: list the module that registers it in run.imports)"
            ) from None
