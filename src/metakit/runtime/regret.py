"""Regret curves of meta-RL runs: cumulative regret against the episode of a trial.

For a task family that knows its optimum (:meth:`~metakit.tasks.EnvFamily.optimal_return`), the
regret of a learner after ``e`` episodes of a trial is ``e * optimal_return(task, 1)`` minus the
reward it collected in those episodes. Duan et al. 2016 compare RL² with the classical bandit
algorithms this way; for bandits an episode is one pull, so the curve is the familiar
cumulative regret against pulls.

:func:`regret_curves` plays the trained run's algorithm and any number of **references** on the
same fixed, seeded test tasks. A reference is a registered algorithm named on the command line
(``metakit plot RUN --regret ucb1 thompson``, or with constants other than the defaults,
``--regret ucb1:c=0.2 epsilon_greedy:epsilon=0.05``); it needs no training run: its class builds it
for the task at hand with ``reference(context, **constants)``, and like every algorithm plotted here it gives the
per-episode returns of one trial per task with ``episode_returns(batch) -> [B, shots]``.
:func:`plot_regret` draws the mean cumulative regret of each with its 95% band
(``1.96 * sample std / sqrt(tasks)`` at every episode).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .evaluation import Z95

__all__ = ["REGRET_PNG", "regret_curves", "plot_regret", "build_reference", "parse_reference"]

#: file name of the regret figure written into the run folder
REGRET_PNG = "regret.png"


def parse_reference(spec: str) -> tuple[str, dict[str, Any]]:
    """``"ucb1:c=0.2"`` -> ``("ucb1", {"c": 0.2})``: a reference's name and its constants (values
    read as YAML); a bare name has none."""
    from ..options import ConfigError
    from .config import read_yaml

    form = f"--regret {spec!r}: write a reference as NAME or NAME:KEY=VALUE[,KEY=VALUE] (e.g. ucb1:c=0.2)"
    name, colon, rest = spec.partition(":")
    if not name or (colon and not rest.strip(", ")):
        raise ConfigError(form)
    constants: dict[str, Any] = {}
    for item in rest.split(",") if colon else []:
        key, eq, text = item.partition("=")
        if not eq or not key.strip() or not text.strip():
            raise ConfigError(f"{form}, got {item!r}")
        if key.strip() in constants:
            raise ConfigError(f"{form}; {key.strip()} is given twice")
        constants[key.strip()] = read_yaml(text)
    return name, constants


def build_reference(spec: str, context: Any) -> Any:
    """The registered algorithm of ``spec`` (``NAME`` or ``NAME:KEY=VALUE,...``, :func:`parse_reference`)
    built as a reference for ``context`` (``cls.reference(context, **constants)``)."""
    import inspect

    from ..algorithms import available_algorithms, get_algorithm

    name, constants = parse_reference(spec)
    able = [n for n in available_algorithms() if not n.startswith("_") and callable(getattr(get_algorithm(n), "reference", None))]
    if name not in available_algorithms():
        raise ValueError(f"--regret {spec}: {name!r} is not a registered reference; references: {', '.join(able) or 'none registered'}")
    cls = get_algorithm(name)
    make = getattr(cls, "reference", None)
    if make is None or not callable(getattr(cls, "episode_returns", None)):
        raise ValueError(
            f"--regret {name}: algorithm {name!r} is not a reference that plays without training (it has no "
            f"reference(context) and episode_returns(batch)); references: {', '.join(able) or 'none registered'}"
        )
    if constants:
        takes = [p for p in inspect.signature(cls).parameters if p not in ("model", "self")]
        unknown = sorted(set(constants) - set(takes))
        if unknown:
            fix = f"its constants: {', '.join(takes)}" if takes else f"it has none: give it as {name}, without :KEY=VALUE"
            raise ValueError(f"--regret {spec}: {name} has no constant {', '.join(unknown)}; {fix}")
        try:
            return make(context, **constants)
        except (TypeError, ValueError) as e:
            raise ValueError(f"--regret {spec}: {e}") from None
    return make(context)


def regret_curves(players: dict[str, Any], family: Any, batches: Any) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{name: (mean, ci95)}``: the cumulative regret ``[shots]`` after each episode of a trial,
    averaged over the tasks of ``batches`` (each player's ``episode_returns(batch)`` against the
    family's ``optimal_return(task, 1)`` per episode)."""
    per: dict[str, list[torch.Tensor]] = {name: [] for name in players}
    with torch.no_grad():
        for batch in batches:
            best = []
            for task in batch.tasks:
                value = family.optimal_return(task, 1)
                if value is None:
                    raise ValueError(
                        f"task.family={family.name} gives no optimal_return for task {task.index}; the regret curve "
                        "needs the family's optimal reference"
                    )
                best.append(float(value))
            optimum = torch.tensor(best, dtype=torch.float64)[:, None]
            for name, player in players.items():
                returns = torch.as_tensor(player.episode_returns(batch), dtype=torch.float64)
                if returns.shape != (len(batch), batch.shots):
                    raise ValueError(
                        f"{name}.episode_returns gave shape {list(returns.shape)} for {len(batch)} tasks of "
                        f"{batch.shots} episodes; give [tasks, episodes]"
                    )
                per[name].append((optimum - returns).cumsum(1))
    out = {}
    for name, chunks in per.items():
        r = torch.cat(chunks)
        ci = Z95 * r.std(0, correction=1) / r.shape[0] ** 0.5 if r.shape[0] > 1 else torch.full((r.shape[1],), float("nan"))
        out[name] = (r.mean(0), ci)
    return out


def plot_regret(run_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None, *,
                references: tuple[str, ...] = (), tasks: int = 100, seed: int | None = None,
                checkpoint: str = "best") -> Path:
    """``OUT_DIR/regret.png``: the run's algorithm and ``references`` on ``tasks`` fixed test tasks."""
    from .plots import save_figure
    from .run import load_run

    loaded = load_run(run_dir, checkpoint=checkpoint, fallback=True)
    cfg = loaded.config
    family = cfg.family
    if family.kind != "rl" or not callable(getattr(loaded.algorithm, "episode_returns", None)):
        raise ValueError(
            f"--regret: run {str(run_dir)!r} trains {cfg.algorithm.name} on task.family={family.name}; regret curves are "
            "for meta-RL runs whose algorithm plays trials (episode_returns)"
        )
    players = {cfg.algorithm.name: loaded.algorithm}
    for spec in references:
        reference = build_reference(spec, loaded.context)
        described = reference.describe() if callable(getattr(reference, "describe", None)) else {}
        constants = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                              for k, v in described.items() if k != "method")
        label = f"{parse_reference(spec)[0]} ({constants})" if constants else spec
        if label in players:
            raise ValueError(f"--regret {spec}: {label} is already drawn; name each reference once")
        players[label] = reference
    batches = loaded.episodes("test", episodes=tasks, seed=seed)
    curves = regret_curves(players, family, batches)
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for name, (mean, ci) in curves.items():
        x = torch.arange(1, mean.numel() + 1).numpy()
        line = ax.plot(x, mean.numpy(), label=name)[0]
        if not bool(torch.isnan(ci).any()):
            ax.fill_between(x, (mean - ci).numpy(), (mean + ci).numpy(), color=line.get_color(), alpha=0.2, linewidth=0)
    shots = next(iter(curves.values()))[0].numel()
    ax.set_xlabel("episode of the trial")
    ax.set_ylabel("cumulative regret (mean ± 95% CI)")
    ax.set_title(f"{family.describe()}: {tasks} test tasks, trials of {shots} episodes, seed "
                 f"{cfg.eval.seed if seed is None else seed}", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, Path(out_dir or run_dir) / REGRET_PNG)
