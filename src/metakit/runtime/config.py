"""Typed run configs: frozen dataclasses, validated on construction, filled from YAML.

A training run is described by one :class:`Config` of seven sections::

    data:      {dataset: omniglot, root: ../shared/data/omniglot, protocol: vinyals}
    train:     {ways: 60, shots: 1, queries: 5, meta_batch: 1, steps: 20000}
    eval:      {ways: 5, shots: 1, queries: 15, val_episodes: 200, val_every: 1000}
    model:     {name: conv4}                 # other keys: options of the backbone
    algorithm: {name: protonet, distance: euclidean}   # other keys: the algorithm's options
    optim:     {name: adam, lr: 0.001, schedule: step, step_size: 2000, gamma: 0.5}
    run:       {seed: 0, checkpoint_every: 500, keep_last: 3}

Every field is declared once, below, with its type, default, range/choices and help text
(``field(metadata={"help": ...})``); validation, error messages and ``metakit train --help``
all read that one declaration. The options of ``model`` and ``algorithm`` are not fixed
fields: they are the keyword arguments of the registered backbone / algorithm class (type
annotations and defaults of ``__init__``; help text from the ``Args:`` section of the class
docstring), validated against that signature.

Command-line overrides ``section.key=value`` are parsed as YAML values (``optim.lr=3e-4``,
``data.root=null``, ``model.hidden=[40,40]``). An unknown or misspelt key is an error that
suggests the closest valid key.
"""

from __future__ import annotations

import difflib
import inspect
import math
import os
import re
import textwrap
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

__all__ = [
    "ConfigError",
    "Config",
    "DataConfig",
    "TrainConfig",
    "EvalConfig",
    "ModelConfig",
    "AlgorithmConfig",
    "OptimConfig",
    "RunConfig",
    "OptionSpec",
    "load_config",
    "parse_overrides",
    "apply_overrides",
    "algorithm_option_specs",
    "model_option_specs",
    "config_help",
    "SECTIONS",
]


class ConfigError(ValueError):
    """A config value or key is wrong; the message names the key, the value and the fix."""


def _f(default: Any, help: str, **checks: Any) -> Any:
    """A config field: default, help text and checks (``choices``, ``ge``, ``gt``, ``le``, ``lt``)."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **checks})
    return field(default=default, metadata={"help": help, **checks})


# -- value checking ------------------------------------------------------------------------------
_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^[+-]?(inf|nan)$", re.IGNORECASE)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + "|".join(str(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple, Sequence, typing.Sequence):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return f"list of {_type_name(args[0])}" if args else "list"
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
                f"{key}={value!r} is not a valid choice{_suggest(value, [str(c) for c in choices])}; "
                f"use one of: {', '.join(map(str, choices))}"
            )
        raise ConfigError(
            f"{key}={value!r} has the wrong type: expected {_type_name(tp)}, got {type(value).__name__}"
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


def _check_range(key: str, value: Any, meta: Mapping[str, Any]) -> None:
    if value is None:
        return
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        hint = _suggest(str(value), [str(c) for c in choices])
        raise ConfigError(f"{key}={value!r} is not a valid choice{hint}; use one of: {', '.join(map(str, choices))}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and math.isnan(value):
            raise ConfigError(f"{key}=nan is not a number; give a finite value")
        for op, bound, ok in (
            ("ge", meta.get("ge"), lambda v, b: v >= b),
            ("gt", meta.get("gt"), lambda v, b: v > b),
            ("le", meta.get("le"), lambda v, b: v <= b),
            ("lt", meta.get("lt"), lambda v, b: v < b),
        ):
            if bound is not None and not ok(value, bound):
                sym = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}[op]
                raise ConfigError(f"{key}={value!r} is out of range: it must be {sym} {bound}")
        if isinstance(value, float) and math.isinf(value):
            raise ConfigError(f"{key}={value!r} must be finite")


def _range_text(meta: Mapping[str, Any]) -> str:
    parts = []
    if meta.get("choices") is not None:
        return "{" + ", ".join(map(str, meta["choices"])) + "}"
    for op, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if meta.get(op) is not None:
            parts.append(f"{sym} {meta[op]}")
    return ", ".join(parts)


# -- sections ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Section:
    """Base of the fixed-field sections: type, range and choice checks from the field metadata."""

    section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            key = f"{self.section}.{f.name}"
            value = check_value(key, getattr(self, f.name), hints[f.name])
            _check_range(key, value, f.metadata)
            object.__setattr__(self, f.name, value)
        self._resolve()

    def _resolve(self) -> None:
        """Cross-field checks and defaults that depend on other fields (override in sections)."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


_DATASETS = ("omniglot", "sinusoid", "folder")
_PROTOCOL_SPLITS = {
    # protocol -> (train, val, test); lake has no validation split
    "vinyals": ("train", "val", "test"),
    "lake": ("background", None, "evaluation"),
}


@dataclass(frozen=True)
class DataConfig(_Section):
    """Where the tasks come from."""

    section: ClassVar[str] = "data"

    dataset: str = _f(
        "omniglot",
        "which data the tasks come from: omniglot (metakit.datasets.Omniglot), folder (an image "
        "folder ROOT/<split>/<class>/<image>) or sinusoid (MAML's sinusoid regression tasks, no data on disk)",
        choices=_DATASETS,
    )
    root: str | None = _f(
        None,
        "folder holding the data (omniglot: the official archives images_background.zip and "
        "images_evaluation.zip or their extracted folders; folder: ROOT/<split>/<class>/<image>). "
        "Relative paths are resolved against the current directory and stored absolute. Not used by sinusoid",
    )
    protocol: str | None = _f(
        None,
        "omniglot only: class split protocol, vinyals (Vinyals et al. 2016: train/val/test, default) or "
        "lake (background/evaluation alphabets)",
        choices=tuple(_PROTOCOL_SPLITS),
    )
    train_split: str | None = _f(
        None, "split episodes are trained on (default: train; lake: background; not used by sinusoid)"
    )
    val_split: str | None = _f(
        None,
        "split of the periodic validation (default: val; lake has none: set eval.val_episodes=0 "
        "or name another split)",
    )
    test_split: str | None = _f(None, "split `metakit eval` uses by default (default: test; lake: evaluation)")
    image_size: int | None = _f(None, "side of the square images after resizing (default 28; not used by sinusoid)", ge=4)
    channels: int | None = _f(None, "folder only: 1 (grayscale, default) or 3 (RGB)", choices=(1, 3))
    invert: bool | None = _f(
        None, "folder only: invert the images (default true: dark strokes on white, the Omniglot convention)"
    )
    cache_dir: str | None = _f(
        None, "omniglot only: folder of the decoded-image cache (default: the dataset's own default)"
    )
    download: bool = _f(False, "omniglot only: download missing archives into root from the official source")

    def _resolve(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - frozen dataclass
        if self.dataset == "sinusoid":
            for name in ("root", "protocol", "train_split", "val_split", "test_split", "image_size", "channels",
                         "invert", "cache_dir"):
                if getattr(self, name) is not None:
                    raise ConfigError(
                        f"data.{name}={getattr(self, name)!r} is not used by data.dataset=sinusoid "
                        "(sinusoid tasks are generated, not read); remove it"
                    )
            if self.download:
                raise ConfigError("data.download=true is not used by data.dataset=sinusoid; remove it")
            return
        if self.root is None:
            raise ConfigError(
                f"data.root is required for data.dataset={self.dataset}; set it to the folder holding the data "
                "(e.g. data.root=../shared/data/omniglot)"
            )
        set_("root", os.path.abspath(os.path.expanduser(self.root)))
        if self.cache_dir is not None:
            if self.dataset != "omniglot":
                raise ConfigError(f"data.cache_dir is used by data.dataset=omniglot only, not {self.dataset}; remove it")
            set_("cache_dir", os.path.abspath(os.path.expanduser(self.cache_dir)))
        if self.download and self.dataset != "omniglot":
            raise ConfigError(f"data.download=true is supported by data.dataset=omniglot only, not {self.dataset}")
        if self.dataset == "omniglot":
            if self.protocol is None:
                set_("protocol", "vinyals")
            defaults = _PROTOCOL_SPLITS[self.protocol]
        else:
            if self.protocol is not None:
                raise ConfigError(
                    f"data.protocol={self.protocol!r} is used by data.dataset=omniglot only; for a folder "
                    "dataset name the splits with data.train_split/val_split/test_split"
                )
            defaults = ("train", "val", "test")
        for name, default in zip(("train_split", "val_split", "test_split"), defaults):
            if getattr(self, name) is None:
                set_(name, default)
        if self.image_size is None:
            set_("image_size", 28)
        if self.dataset == "folder":
            set_("channels", 1 if self.channels is None else self.channels)
            set_("invert", True if self.invert is None else self.invert)
        else:
            for name in ("channels", "invert"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"data.{name} is used by data.dataset=folder only, not {self.dataset}; remove it")


@dataclass(frozen=True)
class TrainConfig(_Section):
    """The episodes of meta-training and how many outer steps to take."""

    section: ClassVar[str] = "train"

    ways: int | None = _f(None, "classes per training episode (required for classification; null for sinusoid)", ge=1)
    shots: int = _f(1, "support examples per class (sinusoid: support points per task)", ge=1)
    queries: int = _f(15, "query examples per class (sinusoid: query points per task)", ge=1)
    meta_batch: int = _f(1, "tasks per outer step (meta-batch size)", ge=1)
    steps: int = _f(1000, "outer (meta-)optimizer steps", ge=1)


@dataclass(frozen=True)
class EvalConfig(_Section):
    """Validation during training and the defaults of `metakit eval`."""

    section: ClassVar[str] = "eval"

    ways: int | None = _f(None, "classes per evaluation episode (default: train.ways)", ge=1)
    shots: int | None = _f(None, "support examples per class in evaluation (default: train.shots)", ge=1)
    queries: int | None = _f(None, "query examples per class in evaluation (default: train.queries)", ge=1)
    val_episodes: int = _f(100, "fixed, seeded validation episodes per validation (0 disables validation)", ge=0)
    val_every: int = _f(
        500, "steps between validations (0: validate only at the end); the best checkpoint follows them", ge=0
    )
    test_episodes: int = _f(1000, "test episodes `metakit eval` uses by default", ge=1)
    seed: int = _f(0, "seed of the fixed validation and test episodes (same seed, same episodes)")


def _freeze(d: Mapping[str, Any]) -> Mapping[str, Any]:
    return types.MappingProxyType(dict(d))


@dataclass(frozen=True)
class ModelConfig:
    """The backbone: a name from ``metakit.models`` and its keyword arguments."""

    section: ClassVar[str] = "model"

    name: str = _f("conv4", "backbone registered in metakit.models (conv4, mlp, ...)")
    options: Mapping[str, Any] = _f({}, "keyword arguments of the backbone (written as model.<option>)")

    def __post_init__(self) -> None:
        check_value("model.name", self.name, str)
        check_value("model.options", self.options, Mapping)
        specs = model_option_specs(self.name)
        object.__setattr__(self, "options", _freeze(_check_options("model", self.name, self.options, specs, False)))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **{k: _plain(v) for k, v in self.options.items()}}


@dataclass(frozen=True)
class AlgorithmConfig:
    """The meta-learning algorithm: a registered name and its keyword arguments."""

    section: ClassVar[str] = "algorithm"

    name: str = _f("protonet", "algorithm registered in metakit.algorithms (protonet, maml, ...)")
    options: Mapping[str, Any] = _f({}, "keyword arguments of the algorithm (written as algorithm.<option>)")

    def __post_init__(self) -> None:
        check_value("algorithm.name", self.name, str)
        check_value("algorithm.options", self.options, Mapping)
        specs = algorithm_option_specs(self.name)
        opts = _check_options("algorithm", self.name, self.options, specs, True)
        object.__setattr__(self, "options", _freeze(opts))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **{k: _plain(v) for k, v in self.options.items()}}


@dataclass(frozen=True)
class OptimConfig(_Section):
    """The outer (meta-)optimizer and its learning-rate schedule."""

    section: ClassVar[str] = "optim"

    name: str = _f("adam", "outer optimizer: adam (torch.optim.Adam) or sgd (torch.optim.SGD)", choices=("adam", "sgd"))
    lr: float = _f(1e-3, "outer learning rate", gt=0)
    weight_decay: float = _f(0.0, "L2 weight decay of the outer optimizer", ge=0)
    momentum: float = _f(0.0, "sgd only: momentum", ge=0, lt=1)
    schedule: str = _f(
        "none",
        "learning-rate schedule: none, step (multiply by gamma every step_size steps) or cosine "
        "(cosine decay to 0 over train.steps)",
        choices=("none", "step", "cosine"),
    )
    step_size: int = _f(2000, "schedule=step: steps between learning-rate decays", ge=1)
    gamma: float = _f(0.5, "schedule=step: factor applied every step_size steps", gt=0, le=1)
    grad_clip: float | None = _f(None, "clip the global gradient norm to this value (null: no clipping)", gt=0)

    def _resolve(self) -> None:
        if self.name != "sgd" and self.momentum != 0.0:
            raise ConfigError(f"optim.momentum={self.momentum} is used by optim.name=sgd only; remove it or set optim.name=sgd")


@dataclass(frozen=True)
class RunConfig(_Section):
    """Seeds, checkpoints, logging and threads."""

    section: ClassVar[str] = "run"

    seed: int = _f(0, "seed of model initialisation and of the training episodes")
    checkpoint_every: int = _f(500, "steps between checkpoints (one is also written at the end and on Ctrl-C)", ge=1)
    keep_last: int = _f(3, "step checkpoints kept on disk (the best one is kept besides them)", ge=1)
    deterministic: bool = _f(
        False, "torch.use_deterministic_algorithms(True): bitwise-reproducible runs and resumes, maybe slower"
    )
    log_every: int = _f(50, "steps between training-metric log lines (metrics.jsonl, TensorBoard)", ge=1)
    num_threads: int = _f(0, "torch intra-op threads (0: torch's default); a resumed run needs the same value to be bitwise equal", ge=0)
    progress: bool = _f(True, "show a progress bar on stderr")


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "model": ModelConfig,
    "algorithm": AlgorithmConfig,
    "optim": OptimConfig,
    "run": RunConfig,
}
_OPEN_SECTIONS = ("model", "algorithm")  # sections whose other keys are the options of `name`


@dataclass(frozen=True)
class Config:
    """A whole run. Build it with :func:`load_config` or :meth:`from_dict`; all sections are frozen."""

    data: DataConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        for name, cls in SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"Config.{name} must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")
        d, t, e = self.data, self.train, self.eval
        regression = d.dataset == "sinusoid"
        if regression:
            for key, v in (("train.ways", t.ways), ("eval.ways", e.ways)):
                if v is not None:
                    raise ConfigError(f"{key}={v} but data.dataset=sinusoid gives regression tasks; set {key}=null")
        elif t.ways is None:
            raise ConfigError(
                f"train.ways is required for data.dataset={d.dataset} (classes per training episode, e.g. train.ways=5)"
            )
        resolved = replace(
            e,
            ways=e.ways if e.ways is not None else t.ways,
            shots=e.shots if e.shots is not None else t.shots,
            queries=e.queries if e.queries is not None else t.queries,
        )
        object.__setattr__(self, "eval", resolved)
        if not regression and d.val_split is None and e.val_episodes > 0:
            raise ConfigError(
                f"data.val_split is null (data.protocol={d.protocol} has no validation split) but "
                f"eval.val_episodes={e.val_episodes}; set eval.val_episodes=0 or name a split with data.val_split"
            )

    @property
    def validates(self) -> bool:
        """Whether the run validates (and so keeps a best checkpoint)."""
        return self.eval.val_episodes > 0

    # -- conversion -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name).to_dict() for name in SECTIONS}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> "Config":
        """Build from nested mappings (as read from YAML); unknown keys are errors with a suggestion."""
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"a config must be a mapping of sections ({', '.join(SECTIONS)}), got {type(raw).__name__}")
        sections: dict[str, Any] = {}
        for name, body in raw.items():
            if name not in SECTIONS:
                raise ConfigError(
                    f"unknown config section {name!r}{_suggest(str(name), list(SECTIONS))}; "
                    f"sections: {', '.join(SECTIONS)}"
                )
            if body is None:
                body = {}
            if not isinstance(body, Mapping):
                raise ConfigError(
                    f"config section {name!r} must be a mapping of keys to values, got {body!r}; "
                    f"write it as `{name}: {{key: value}}` or use {name}.key=value overrides"
                )
            sections[name] = body
        built: dict[str, Any] = {}
        for name, sec_cls in SECTIONS.items():
            body = dict(sections.get(name, {}))
            if name in _OPEN_SECTIONS:
                default_name = {f.name: f for f in fields(sec_cls)}["name"].default
                sec_name = body.pop("name", default_name)
                if "options" in body:
                    raise ConfigError(
                        f"{name}.options is not a key: write the options of the {name} directly in the "
                        f"section, e.g. `{name}.<option>=value`"
                    )
                built[name] = sec_cls(name=sec_name, options=body)
            else:
                valid = [f.name for f in fields(sec_cls)]
                for key in body:
                    if key not in valid:
                        raise ConfigError(
                            f"unknown config key '{name}.{key}'{_suggest(f'{name}.{key}', _all_keys())}; "
                            f"keys of {name}: {', '.join(valid)}"
                        )
                if name == "data" and "root" not in body:
                    body["root"] = None
                built[name] = sec_cls(**body)
        return cls(**built)

    def with_overrides(self, overrides: Sequence[str]) -> "Config":
        """A copy with ``section.key=value`` overrides applied (validated again)."""
        return Config.from_dict(apply_overrides(self.to_dict(), parse_overrides(overrides)))


def _plain(v: Any) -> Any:
    """Plain YAML-able values (tuples -> lists, mappings -> dicts)."""
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _all_keys() -> list[str]:
    keys = []
    for name, cls in SECTIONS.items():
        if name in _OPEN_SECTIONS:
            keys.append(f"{name}.name")
        else:
            keys += [f"{name}.{f.name}" for f in fields(cls)]
    return keys


def _suggest(word: str, candidates: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or ``""``."""
    candidates = list(candidates)
    if "." not in word:  # a bare field name (lr=0.1): the dotted key that ends with it
        same = [c for c in candidates if c.rsplit(".", 1)[-1] == word]
        if len(same) == 1:
            return f" (did you mean {same[0]!r}?)"
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# -- options of registered models and algorithms -------------------------------------------------
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


def _doc_args(obj: Any) -> dict[str, str]:
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
    docs = _doc_args(cls)
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
    try:
        cls = get_algorithm(name)
    except ValueError as e:
        raise ConfigError(f"algorithm.name: {e}") from None
    return _signature_specs(cls, skip=1)


def _model_class(name: str) -> type:
    from .. import models

    registry = getattr(models, "_MODELS")
    if name not in registry:
        avail = sorted(registry)
        raise ConfigError(f"model.name={name!r} is not known{_suggest(name, avail)}; available: {', '.join(avail)}")
    return registry[name]


def model_option_specs(name: str) -> dict[str, OptionSpec]:
    """The config options of the backbone ``name``: the keyword arguments of its class."""
    check_value("model.name", name, str)
    return _signature_specs(_model_class(name), skip=0)


def _check_options(
    section: str, owner: str, options: Mapping[str, Any], specs: Mapping[str, OptionSpec], require: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in options.items():
        if not isinstance(key, str) or key not in specs:
            valid = ", ".join(specs) or "(none)"
            raise ConfigError(
                f"unknown config key '{section}.{key}' for {section} {owner!r}"
                f"{_suggest(f'{section}.{key}', [f'{section}.{k}' for k in specs] + _all_keys())}; "
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


# -- files and overrides -------------------------------------------------------------------------
def parse_overrides(overrides: Sequence[str]) -> list[tuple[str, Any]]:
    """``["optim.lr=3e-4", ...]`` -> ``[("optim.lr", "3e-4" parsed as YAML), ...]``."""
    out = []
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value (e.g. optim.lr=0.001)")
        key, text = item.split("=", 1)
        key = key.strip()
        if key.count(".") != 1 or not all(key.split(".")):
            raise ConfigError(
                f"override key {key!r} must be section.key (e.g. train.steps=100){_suggest(key, _all_keys())}"
            )
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({e.__class__.__name__})") from None
        out.append((key, value))
    return out


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """A copy of the nested ``raw`` mapping with ``(section.key, value)`` pairs set."""
    out: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
    for key, value in overrides:
        section, name = key.split(".", 1)
        if section not in SECTIONS:
            raise ConfigError(f"unknown config key {key!r}{_suggest(key, _all_keys())}; sections: {', '.join(SECTIONS)}")
        body = out.get(section)
        if body is None:
            body = out[section] = {}
        if not isinstance(body, dict):
            raise ConfigError(f"config section {section!r} must be a mapping, got {body!r}")
        if section in _OPEN_SECTIONS and name == "name" and body.get("name") != value:
            # a different model/algorithm: the options of the old one do not apply to it
            body.clear()
        body[name] = value
    return out


def load_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config file and apply ``section.key=value`` overrides."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {str(p)!r} does not exist; give the path of a YAML config (see configs/)")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}") from None
    if raw is not None and not isinstance(raw, Mapping):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of sections, got {type(raw).__name__}")
    return Config.from_dict(apply_overrides(raw or {}, parse_overrides(overrides)))


# -- help ----------------------------------------------------------------------------------------
def _fmt_default(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt_default(x) for x in v) + "]"
    return str(v)


def _entry(key: str, type_text: str, default: str, help: str, indent: int = 2) -> str:
    head = " " * indent + f"{key} = {default}   ({type_text})"
    body = textwrap.fill(help or "(no description)", width=96, initial_indent=" " * (indent + 4),
                         subsequent_indent=" " * (indent + 4))
    return head + "\n" + body


def config_help() -> str:
    """Every config field with its type, default and help (for ``metakit train --help``)."""
    from .. import models
    from ..algorithms import available_algorithms

    out = ["config fields (YAML sections; override any field on the command line with section.key=value):"]
    for name, cls in SECTIONS.items():
        out.append(f"\n{name}: {inspect.getdoc(cls).splitlines()[0]}")
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if f.name == "options":
                continue
            default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
            extra = _range_text(f.metadata)
            type_text = _type_name(hints[f.name]) + (f", {extra}" if extra else "")
            out.append(_entry(f"{name}.{f.name}", type_text, _fmt_default(default), f.metadata.get("help", "")))
    out.append("\nmodel options (model.<option>=value; the keyword arguments of the backbone model.name):")
    for mname in sorted(getattr(models, "_MODELS")):
        out.append(f"  {mname}:")
        for spec in model_option_specs(mname).values():
            out.append(_spec_entry("model", spec))
    out.append("\nalgorithm options (algorithm.<option>=value; the keyword arguments of algorithm.name):")
    for aname in available_algorithms():
        if aname.startswith("_"):
            continue
        out.append(f"  {aname}:")
        specs = algorithm_option_specs(aname).values()
        if not specs:
            out.append("      (no options)")
        for spec in specs:
            out.append(_spec_entry("algorithm", spec))
    return "\n".join(out)


def _spec_entry(section: str, spec: OptionSpec) -> str:
    default = "(required)" if spec.required else _fmt_default(spec.default)
    return _entry(f"{section}.{spec.name}", _type_name(spec.annotation), default, spec.help, indent=4)
