"""Typed run configs: frozen dataclasses, validated on construction, filled from YAML.

A training run is described by one :class:`Config` of seven sections::

    task:      {family: classification, dataset: omniglot, root: ../shared/data/omniglot, protocol: vinyals}
    train:     {ways: 60, shots: 1, queries: 5, meta_batch: 1, steps: 20000}
    eval:      {ways: 5, shots: 1, queries: 15, val_episodes: 200, val_every: 1000}
    model:     {name: conv4}                 # other keys: options of the backbone
    algorithm: {name: protonet, distance: euclidean}   # other keys: the algorithm's options
    optim:     {name: adam, lr: 0.001, schedule: step, step_size: 2000, gamma: 0.5}
    run:       {seed: 0, checkpoint_every: 500, keep_last: 3}

``task.family`` names a registered task family (:mod:`metakit.tasks.family`); the other keys of
``task`` are that family's declared options. The fixed sections declare every field once with
its type, default, range/choices and help text (:func:`metakit.options.option`); validation,
error messages and ``metakit train --help`` all read that one declaration. The options of
``model`` and ``algorithm`` are the keyword arguments of the registered backbone / algorithm
(:mod:`.config_options`), and the backbone is tried on the family's examples on the meta device
when the config is read, so options that cannot work fail before any work starts. The
algorithm must solve the family's kind of tasks (``Algorithm.task_kinds``).

The older spelling of the task section, ``data: {dataset: omniglot|folder|sinusoid, ...}``, still
loads (configs and run folders written before ``task:``): ``data.dataset`` names either a task
family (``task.family``) or a dataset source of the default classification family
(``task.dataset``); keys left at their old defaults (null, ``download: false``) are dropped.

Command-line overrides ``section.key=value`` are parsed as YAML values (``optim.lr=3e-4``,
``task.root=null``, ``model.hidden=[40,40]``). An unknown or misspelt key is an error that
suggests the closest valid key; a YAML file that repeats a key is refused, naming the key and
its lines.

``run.imports`` lists the user's own modules (or ``.py`` files) that register task families,
models or algorithms outside metakit; they are imported before the other sections are read
(:mod:`.imports`).
"""

from __future__ import annotations

import os
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import yaml

from ..options import ConfigError, Options, check_value, option, plain, suggest
from .imports import import_user_modules, is_file_entry
from .config_options import (
    OptionSpec,
    algorithm_option_specs,
    check_model_fits,
    check_options,
    model_option_specs,
)

__all__ = [
    "ConfigError",
    "Config",
    "TaskConfig",
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
    "check_value",
    "SECTIONS",
    "DEFAULT_FAMILY",
]

#: the task family of a config whose task section does not name one
DEFAULT_FAMILY = "classification"


# -- sections ------------------------------------------------------------------------------------
def _freeze(d: Mapping[str, Any]) -> Mapping[str, Any]:
    return types.MappingProxyType(dict(d))


@dataclass(frozen=True)
class TaskConfig:
    """The tasks: a registered task family (task.family) and its options."""

    section: ClassVar[str] = "task"

    family: str = option(DEFAULT_FAMILY, "task family registered in metakit.tasks (classification, sinusoid, ...)")
    options: Mapping[str, Any] = option({}, "the family's options (written as task.<option>)")

    def __post_init__(self) -> None:
        from ..tasks import get_family

        check_value("task.family", self.family, str)
        check_value("task.options", self.options, Mapping)
        built = get_family(self.family).from_options(dict(self.options), _all_keys())
        object.__setattr__(self, "options", _freeze(built.to_dict()))
        object.__setattr__(self, "_built", built)

    @property
    def built(self) -> Any:
        """The :class:`~metakit.tasks.TaskFamily` these options describe."""
        return self._built  # type: ignore[attr-defined]

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, **{k: plain(v) for k, v in self.options.items()}}


@dataclass(frozen=True)
class TrainConfig(Options):
    """The episodes of meta-training and how many outer steps to take."""

    section: ClassVar[str] = "train"

    ways: int | None = option(None, "classes per training episode (required for classification; null for regression)", ge=1)
    shots: int = option(1, "support examples per class (regression: support points per task)", ge=1)
    queries: int = option(15, "query examples per class (regression: query points per task)", ge=1)
    meta_batch: int = option(1, "tasks per outer step (meta-batch size)", ge=1)
    steps: int = option(1000, "outer (meta-)optimizer steps", ge=1)
    patience: int | None = option(
        None,
        "stop before train.steps once this many validations in a row bring no better result than the best "
        "(early stopping; null: train to train.steps); needs eval.val_episodes > 0 and eval.val_every > 0",
        ge=1,
    )


@dataclass(frozen=True)
class EvalConfig(Options):
    """Validation during training and the defaults of `metakit eval`."""

    section: ClassVar[str] = "eval"

    ways: int | None = option(None, "classes per evaluation episode (default: train.ways)", ge=1)
    shots: int | None = option(None, "support examples per class in evaluation (default: train.shots)", ge=1)
    queries: int | None = option(None, "query examples per class in evaluation (default: train.queries)", ge=1)
    val_episodes: int = option(100, "fixed, seeded validation episodes per validation (0 disables validation)", ge=0)
    val_every: int = option(
        500, "steps between validations (0: validate only at the end); the best checkpoint follows them", ge=0
    )
    test_episodes: int = option(1000, "test episodes `metakit eval` uses by default", ge=1)
    seed: int = option(0, "seed of the fixed validation and test episodes (same seed, same episodes)")


@dataclass(frozen=True)
class ModelConfig:
    """The backbone: a name from ``metakit.models`` and its keyword arguments."""

    section: ClassVar[str] = "model"

    name: str = option("conv4", "backbone registered in metakit.models (conv4, mlp, ...)")
    options: Mapping[str, Any] = option({}, "keyword arguments of the backbone (written as model.<option>)")

    def __post_init__(self) -> None:
        check_value("model.name", self.name, str)
        check_value("model.options", self.options, Mapping)
        specs = model_option_specs(self.name)
        opts = check_options("model", self.name, self.options, specs, False, _all_keys())
        object.__setattr__(self, "options", _freeze(opts))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **{k: plain(v) for k, v in self.options.items()}}


@dataclass(frozen=True)
class AlgorithmConfig:
    """The meta-learning algorithm: a registered name and its keyword arguments."""

    section: ClassVar[str] = "algorithm"

    name: str = option("protonet", "algorithm registered in metakit.algorithms (protonet, maml, ...)")
    options: Mapping[str, Any] = option({}, "keyword arguments of the algorithm (written as algorithm.<option>)")

    def __post_init__(self) -> None:
        check_value("algorithm.name", self.name, str)
        check_value("algorithm.options", self.options, Mapping)
        specs = algorithm_option_specs(self.name)
        opts = check_options("algorithm", self.name, self.options, specs, True, _all_keys())
        object.__setattr__(self, "options", _freeze(opts))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **{k: plain(v) for k, v in self.options.items()}}


@dataclass(frozen=True)
class OptimConfig(Options):
    """The outer (meta-)optimizer and its learning-rate schedule."""

    section: ClassVar[str] = "optim"

    name: str = option("adam", "outer optimizer: adam (torch.optim.Adam) or sgd (torch.optim.SGD)", choices=("adam", "sgd"))
    lr: float = option(1e-3, "outer learning rate", gt=0)
    weight_decay: float = option(0.0, "L2 weight decay of the outer optimizer", ge=0)
    momentum: float = option(0.0, "sgd only: momentum", ge=0, lt=1)
    schedule: str = option(
        "none",
        "learning-rate schedule: none, step (multiply by gamma every step_size steps), cosine "
        "(cosine decay to 0 over train.steps) or linear (linear decay to 0 over train.steps)",
        choices=("none", "step", "cosine", "linear"),
    )
    step_size: int = option(2000, "schedule=step: steps between learning-rate decays", ge=1)
    gamma: float = option(0.5, "schedule=step: factor applied every step_size steps", gt=0, le=1)
    grad_clip: float | None = option(None, "clip the global gradient norm to this value (null: no clipping)", gt=0)

    def _resolve(self) -> None:
        if self.name != "sgd" and self.momentum != 0.0:
            raise ConfigError(f"optim.momentum={self.momentum} is used by optim.name=sgd only; remove it or set optim.name=sgd")


@dataclass(frozen=True)
class RunConfig(Options):
    """Seeds, checkpoints, logging and threads."""

    section: ClassVar[str] = "run"

    seed: int = option(0, "seed of model initialisation and of the training episodes")
    checkpoint_every: int = option(500, "steps between checkpoints (one is also written at the end and on Ctrl-C)", ge=1)
    keep_last: int = option(3, "step checkpoints kept on disk (the best one is kept besides them)", ge=1)
    deterministic: bool = option(
        False, "torch.use_deterministic_algorithms(True): bitwise-reproducible runs and resumes, maybe slower"
    )
    log_every: int = option(50, "steps between training-metric log lines (metrics.jsonl, TensorBoard)", ge=1)
    num_threads: int = option(0, "torch intra-op threads (0: torch's default); a resumed run needs the same value to be bitwise equal", ge=0)
    progress: bool = option(True, "show a progress bar on stderr")
    imports: list[str] = option(
        [],
        "Python modules (dotted names) or .py files imported before the config is read, to register your own "
        "task families, models or algorithms (docs/task_families.md); files are resolved against the current "
        "directory and stored absolute",
    )

    def _resolve(self) -> None:
        entries = [e.strip() if isinstance(e, str) else e for e in self.imports]
        self._set("imports", [os.path.abspath(os.path.expanduser(e)) if is_file_entry(e) else e for e in entries])


SECTIONS: dict[str, type] = {
    "task": TaskConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "model": ModelConfig,
    "algorithm": AlgorithmConfig,
    "optim": OptimConfig,
    "run": RunConfig,
}
#: sections whose other keys are the options of the registered thing the selector key names
_OPEN_SECTIONS = {"task": "family", "model": "name", "algorithm": "name"}
#: the older name of the task section (translated by :func:`_translate_data`)
_LEGACY_DATA = "data"


@dataclass(frozen=True)
class Config:
    """A whole run. Build it with :func:`load_config` or :meth:`from_dict`; all sections are frozen."""

    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        from ..algorithms import BuildContext, get_algorithm

        for name, cls in SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"Config.{name} must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")
        family, t, e = self.task.built, self.train, self.eval
        algo = get_algorithm(self.algorithm.name)
        if family.kind not in algo.task_kinds:
            from ..algorithms import available_algorithms

            fit = [a for a in available_algorithms() if not a.startswith("_") and family.kind in get_algorithm(a).task_kinds]
            raise ConfigError(
                f"algorithm.name={self.algorithm.name} solves {' and '.join(algo.task_kinds)} tasks, but "
                f"task.family={family.name} gives {family.kind} tasks; choose an algorithm that solves them "
                f"({', '.join(fit) or 'none is registered'}) or another task family"
            )
        family.check_sizes("train", t.ways, t.shots, t.queries)
        resolved = replace(
            e,
            ways=e.ways if e.ways is not None else t.ways,
            shots=e.shots if e.shots is not None else t.shots,
            queries=e.queries if e.queries is not None else t.queries,
        )
        family.check_sizes("eval", resolved.ways, resolved.shots, resolved.queries)  # type: ignore[arg-type]
        object.__setattr__(self, "eval", resolved)
        family.check_validation(e.val_episodes)
        if t.patience is not None and (e.val_episodes == 0 or e.val_every == 0):
            raise ConfigError(
                f"train.patience={t.patience} counts validations, but eval.val_episodes={e.val_episodes} and "
                f"eval.val_every={e.val_every} give none before the end of training; set both above 0 or set "
                "train.patience=null"
            )
        context = family.config_context(t.ways)
        model_options = {**algo.model_defaults(context), **self.model.options}
        check_model_fits(self.model.name, model_options, family, context)
        algo.check_config(self)

    @property
    def family(self) -> Any:
        """The :class:`~metakit.tasks.TaskFamily` of the ``task`` section."""
        return self.task.built

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
            if name not in SECTIONS and name != _LEGACY_DATA:
                raise ConfigError(
                    f"unknown config section {name!r}{suggest(str(name), list(SECTIONS))}; "
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
        if _LEGACY_DATA in sections:
            if "task" in sections:
                raise ConfigError(
                    "the config has both a task: section and a data: section (data: is the older name of task:); "
                    "move the data keys into task: (data.root -> task.root, data.dataset: sinusoid -> "
                    "task.family: sinusoid, data.dataset: omniglot -> task.family: classification + task.dataset: omniglot)"
                )
            sections["task"] = _translate_data(sections.pop(_LEGACY_DATA))
        # the user's modules register the families, models and algorithms the sections name
        import_user_modules(dict(sections.get("run", {})).get("imports"))
        built: dict[str, Any] = {}
        for name, sec_cls in SECTIONS.items():
            body = dict(sections.get(name, {}))
            selector = _OPEN_SECTIONS.get(name)
            if selector is not None:
                default = {f.name: f for f in fields(sec_cls)}[selector].default
                chosen = body.pop(selector, default)
                if "options" in body:
                    raise ConfigError(
                        f"{name}.options is not a key: write the options of the {name} directly in the "
                        f"section, e.g. `{name}.<option>=value`"
                    )
                built[name] = sec_cls(chosen, options=body)
            else:
                built[name] = sec_cls.from_mapping(body, _all_keys())
        return cls(**built)

    def with_overrides(self, overrides: Sequence[str]) -> "Config":
        """A copy with ``section.key=value`` overrides applied (validated again)."""
        return Config.from_dict(apply_overrides(self.to_dict(), parse_overrides(overrides)))


def _translate_data(body: Mapping[str, Any]) -> dict[str, Any]:
    """The ``task`` section of an older ``data`` section (see the module docstring)."""
    from ..tasks import available_families, available_sources

    old = {k: v for k, v in body.items() if v is not None and not (k == "download" and v is False)}
    dataset = old.pop("dataset", "omniglot")
    if dataset in available_families(private=True):
        return {"family": dataset, **old}
    if dataset in available_sources(private=True):
        return {"family": DEFAULT_FAMILY, "dataset": dataset, **old}
    names = available_families() + available_sources()
    raise ConfigError(
        f"data.dataset={dataset!r} is not a known task family or dataset{suggest(str(dataset), names)}; "
        f"write the section as task: with task.family ({', '.join(available_families())}) and, for "
        f"classification, task.dataset ({', '.join(available_sources())})"
    )


def _all_keys() -> list[str]:
    keys = []
    for name, cls in SECTIONS.items():
        if name in _OPEN_SECTIONS:
            keys.append(f"{name}.{_OPEN_SECTIONS[name]}")
        else:
            keys += [f"{name}.{f.name}" for f in fields(cls)]
    return keys


# -- files and overrides -------------------------------------------------------------------------
class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a mapping repeating a key (PyYAML keeps the last one)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)  # type: ignore[arg-type]
        line = key_node.start_mark.line + 1
        if key in seen:
            raise ConfigError(
                f"the key {key!r} is given twice in the same mapping (lines {seen[key]} and {line}); "
                "YAML would silently keep the last one: delete one of them"
            )
        seen[key] = line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def read_yaml(text: str) -> Any:
    """YAML ``text`` read safely; a repeated key is a :class:`ConfigError` naming it and its lines."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


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
                f"override key {key!r} must be section.key (e.g. train.steps=100){suggest(key, _all_keys())}"
            )
        try:
            value = read_yaml(text) if text.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({e.__class__.__name__})") from None
        except ConfigError as e:
            raise ConfigError(f"override {item!r}: {e}") from None
        out.append((key, value))
    return out


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """A copy of the nested ``raw`` mapping with ``(section.key, value)`` pairs set."""
    out: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
    for key, value in overrides:
        section, name = key.split(".", 1)
        if section == _LEGACY_DATA and _LEGACY_DATA not in out:
            raise ConfigError(
                f"{key!r}: the data section is now called task; write task.{name}=... "
                "(data.dataset=sinusoid is task.family=sinusoid; omniglot and folder are task.dataset)"
            )
        if section not in SECTIONS and section != _LEGACY_DATA:
            raise ConfigError(f"unknown config key {key!r}{suggest(key, _all_keys())}; sections: {', '.join(SECTIONS)}")
        body = out.get(section)
        if body is None:
            body = out[section] = {}
        if not isinstance(body, dict):
            raise ConfigError(f"config section {section!r} must be a mapping, got {body!r}")
        selector = _OPEN_SECTIONS.get(section)
        if selector is not None and name == selector and body.get(selector) != value:
            # another model/algorithm/family: the options of the old one do not apply to it
            body.clear()
        body[name] = value
    return out


def load_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config file and apply ``section.key=value`` overrides."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {str(p)!r} does not exist; give the path of a YAML config (see configs/)")
    try:
        raw = read_yaml(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"config file {str(p)!r} is not a UTF-8 text file (byte {e.object[e.start]:#04x} at offset {e.start}); "
            "give the path of a YAML config (see configs/)"
        ) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}") from None
    except ConfigError as e:
        raise ConfigError(f"config file {str(p)!r}: {e}") from None
    if raw is not None and not isinstance(raw, Mapping):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of sections, got {type(raw).__name__}")
    return Config.from_dict(apply_overrides(raw or {}, parse_overrides(overrides)))


def config_help() -> str:
    """Every config field with its type, default and help (for ``metakit train --help``)."""
    from .config_help import config_help as _help

    return _help()
