"""Evaluating a classical reference (``metakit eval --reference NAME CONFIG_OR_RUN``).

A reference (:mod:`metakit.algorithms.references`: Gittins, UCB1, PSRL...) has nothing to train,
so it has no run folder of its own. It is evaluated on the tasks a config defines: those of a
config file, or those of a trained run's ``config.yaml`` -- then on exactly the fixed, seeded
test tasks ``metakit eval RUN`` scores the trained agent on (same family options, ``eval.seed``,
``eval.shots``, ``eval.test_episodes``), so the two numbers are comparable task for task. The
reference's constants come from ``--option KEY=VALUE`` (checked like the keys of an
``algorithm:`` section).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence


from .config import Config, ConfigError, apply_overrides, load_config, parse_overrides

__all__ = ["evaluate_reference", "reference_names"]


def reference_names() -> list[str]:
    """The registered references."""
    from ..algorithms import available_algorithms, get_algorithm
    from ..algorithms.references import Reference

    return [n for n in available_algorithms() if not n.startswith("_") and issubclass(get_algorithm(n), Reference)]


def _config_of(target: str) -> Config:
    from .run import read_run_config

    path = Path(target)
    if path.is_dir():
        return read_run_config(path)
    if not path.exists():
        raise FileNotFoundError(f"{target!r} does not exist; give a config file or a run folder made by `metakit train`")
    return load_config(path)


def evaluate_reference(
    target: str,
    name: str,
    options: Sequence[str] = (),
    *,
    split: str = "test",
    shots: int | None = None,
    episodes: int | None = None,
    seed: int | None = None,
    batch: int = 50,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate the reference ``name`` on the tasks of ``target`` (a config file or a run folder).

    Returns the JSON-ready record ``metakit eval --reference --json`` prints: the mean return with
    its 95% interval and, for families that know the optimum, the mean optimal return and the
    regret (optimal minus achieved, per task) with its interval.
    """
    from ..algorithms import get_algorithm
    from ..algorithms.references import Reference
    from .builders import build_episodes
    from .evaluation import evaluate

    names = reference_names()
    if name not in names:
        raise ValueError(f"--reference {name!r} is not a classical reference; choose one of {', '.join(names)}")
    config = _config_of(target)
    overrides = []
    for item in options:
        if not isinstance(item, str) or "=" not in item or "." in item.split("=", 1)[0]:
            raise ConfigError(f"--option {item!r} must look like KEY=VALUE (e.g. --option c=0.2)")
        overrides.append(f"algorithm.{item}")
    raw = config.to_dict()
    raw["algorithm"] = {"name": name}
    try:
        config = Config.from_dict(apply_overrides(raw, parse_overrides(overrides)))
    except ConfigError as e:
        raise ConfigError(f"--reference {name}: {e}") from None
    cls = get_algorithm(name)
    assert issubclass(cls, Reference)
    try:
        reference = cls(None, **dict(config.algorithm.options))
    except ValueError as e:
        raise ValueError(f"--reference {name} --option: {e}") from None
    family = config.family
    seed = config.eval.seed if seed is None else seed
    source = build_episodes(config, split, shots=shots, episodes=episodes, seed=seed, batch_size=batch)
    start = time.perf_counter()
    result = evaluate(reference, source, family=family, progress=progress, desc=f"{name} {split}")
    seconds = time.perf_counter() - start
    trial = config.eval.shots if shots is None else shots
    record: dict[str, Any] = {
        "algorithm": name,
        "reference": reference.describe(),
        "task": family.name,
        **family.record(),
        "split": family.split_name(split),
        "shots": trial,
        "seed": seed,
        **result.to_dict(),  # metric, its mean, ci95, episodes, higher_is_better (and the regret over the trial)
        "source": str(target),
        "seconds": round(seconds, 6),
    }
    return record


def reference_text(r: dict[str, Any]) -> str:
    """The human-readable form of a :func:`evaluate_reference` record."""
    constants = ", ".join(f"{k}={v}" for k, v in r["reference"].items() if k != "method") or "no constants"
    lines = [
        f"{r['algorithm']} ({constants}) on {r['task']}, split {r['split']}, tasks of {r['source']}",
        f"  tasks       {r['episodes']} x a trial of {r['shots']} episodes, seed {r['seed']}",
        f"  time        {r['seconds']:.1f} s",
        f"  return      {r['return']:.4g} ± {r['ci95']:.4g}   (mean ± 95% CI = 1.96 * sample std / sqrt({r['episodes']}))",
    ]
    if "regret" in r:
        lines.append(f"  regret      {r['regret']:.4g} ± {r['regret_ci95']:.4g}   (optimal return {r['optimal_return']:.4g})")
    return "\n".join(lines)
