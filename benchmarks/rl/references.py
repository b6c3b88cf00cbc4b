"""The classical references of the bandit and tabular-MDP families, measured beside Duan et al. 2016.

    python benchmarks/rl/references.py run [SETTING ...] [--tasks 1000] [--tune-tasks 200]
    python benchmarks/rl/references.py throughput [--envs 100] [--steps 2000]
    python benchmarks/rl/references.py table

``run`` evaluates every reference of a setting on its fixed test tasks (tasks ``0 .. tasks-1`` of
the test stream with ``eval.seed`` 0: the tasks ``metakit eval`` scores a trained run of the same
family options and trial length on) and appends one record per setting to ``references.json``
beside this script: per method its mean return with the 95% interval ``1.96 * sample std /
sqrt(tasks)``, its regret against the family's optimum, its constants (UCB1's ``c``, epsilon-greedy's
``epsilon`` and the Gittins discount are tuned by a grid search on ``--tune-tasks`` training tasks
of run seed 0, as Duan et al. tuned theirs; the grid and the chosen value are recorded) and its
seconds; and for the setting the run id, a digest of the setting's protocol, the command, the
hardware, the date and the git commit. Settings: ``bandits-k{5,10,50}-n{10,100,500}`` (Table 1)
and ``mdp-n{10,25,50,75,100}`` (Table 2); none given runs all of them.

``throughput`` measures environment steps per second (per second of the process's CPU time, which
other jobs on a shared machine do not inflate) of each family's batched vector env against
gymnasium's ``SyncVectorEnv`` over the same single envs, into ``throughput.json``.

``table`` prints the tables of the newest record per setting next to the papers' numbers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from metakit.bench import hardware
from metakit.references import (
    EpsilonGreedy,
    Gittins,
    OptimalMDP,
    PSRL,
    RandomArms,
    RandomMDP,
    Thompson,
    UCB1,
    play_bandit_trials,
    play_mdp_trials,
    tune,
)
from metakit.runtime.evaluation import mean_ci95
from metakit.tasks import EnvBatch
from metakit.tasks.bandits import BanditFamily
from metakit.tasks.tabular_mdp import TabularMDPFamily

HERE = Path(__file__).resolve().parent
RECORD = HERE / "references.json"
THROUGHPUT = HERE / "throughput.json"

#: grids of the tuned constants (Duan et al. do not publish theirs)
GRIDS = {
    "ucb1": [0.05, 0.1, 0.2, 0.3, 0.5, 1.0],
    "epsilon_greedy": [0.01, 0.02, 0.05, 0.1, 0.2],
    "gittins": [0.8, 0.9, 0.95, 0.99, 0.995],
}

#: Duan et al. 2016 (arXiv:1611.02779v2), Table 1 "MAB Results" (total reward averaged over 1000 bandit
#: problems): (k, n) -> method -> value
PAPER_BANDITS = {
    (5, 10): {"random": 5.0, "gittins": 6.6, "thompson": 5.7, "ucb1": 6.7, "epsilon_greedy": 6.6, "greedy": 6.6, "rl2": 6.7},
    (10, 10): {"random": 5.0, "gittins": 6.6, "thompson": 5.5, "ucb1": 6.7, "epsilon_greedy": 6.6, "greedy": 6.6, "rl2": 6.7},
    (50, 10): {"random": 5.1, "gittins": 6.5, "thompson": 5.2, "ucb1": 6.6, "epsilon_greedy": 6.5, "greedy": 6.5, "rl2": 6.8},
    (5, 100): {"random": 49.9, "gittins": 78.3, "thompson": 74.7, "ucb1": 78.0, "epsilon_greedy": 75.4, "greedy": 74.8, "rl2": 78.7},
    (10, 100): {"random": 49.9, "gittins": 82.8, "thompson": 76.7, "ucb1": 82.4, "epsilon_greedy": 77.4, "greedy": 77.1, "rl2": 83.5},
    (50, 100): {"random": 49.8, "gittins": 85.2, "thompson": 64.5, "ucb1": 84.3, "epsilon_greedy": 78.3, "greedy": 78.0, "rl2": 84.9},
    (5, 500): {"random": 249.8, "gittins": 405.8, "thompson": 402.0, "ucb1": 405.8, "epsilon_greedy": 388.2, "greedy": 380.6, "rl2": 401.6},
    (10, 500): {"random": 249.0, "gittins": 437.8, "thompson": 429.5, "ucb1": 437.1, "epsilon_greedy": 408.0, "greedy": 395.0, "rl2": 432.5},
    (50, 500): {"random": 249.6, "gittins": 463.7, "thompson": 427.2, "ucb1": 457.6, "epsilon_greedy": 413.6, "greedy": 402.8, "rl2": 438.9},
}
#: Duan et al. 2016, Table 2 "Random MDP Results": n -> method -> value
PAPER_MDP = {
    10: {"random": 100.1, "psrl": 138.1, "rl2": 156.2},
    25: {"random": 250.2, "psrl": 408.8, "rl2": 445.7},
    50: {"random": 499.7, "psrl": 904.4, "rl2": 936.1},
    75: {"random": 749.9, "psrl": 1417.1, "rl2": 1428.8},
    100: {"random": 999.4, "psrl": 1939.5, "rl2": 1913.7},
}

BANDIT_METHODS = ["random", "gittins", "thompson", "ucb1", "epsilon_greedy", "greedy"]
MDP_METHODS = ["random", "psrl", "optimal"]


def settings() -> dict[str, dict[str, Any]]:
    out = {f"bandits-k{k}-n{n}": {"family": "bandits", "arms": k, "shots": n} for (k, n) in PAPER_BANDITS}
    out.update({f"mdp-n{n}": {"family": "tabular_mdp", "shots": n} for n in PAPER_MDP})
    return out


def _batches(family: Any, stream: str, seed: int, tasks: int, shots: int, size: int = 100) -> list[EnvBatch]:
    all_tasks = [family.task(seed, stream, j) for j in range(tasks)]
    return [EnvBatch(tuple(all_tasks[i:i + size]), shots, 1) for i in range(0, tasks, size)]


def _measure(play: Callable, policy: Any, batches: list[EnvBatch], optimal: np.ndarray) -> dict[str, Any]:
    start = time.perf_counter()
    returns = np.concatenate([play(policy, b) for b in batches])
    seconds = time.perf_counter() - start
    mean, ci = mean_ci95(returns)
    regret, regret_ci = mean_ci95(optimal - returns)
    return {"return": mean, "ci95": ci, "regret": regret, "regret_ci95": regret_ci, "constants": policy.describe(),
            "seconds": round(seconds, 3)}


def run_setting(name: str, spec: dict[str, Any], tasks: int, tune_tasks: int) -> dict[str, Any]:
    shots = spec["shots"]
    results: dict[str, Any] = {}
    tuning: dict[str, Any] = {}
    if spec["family"] == "bandits":
        family = BanditFamily(BanditFamily.Options(arms=spec["arms"]))
        play = play_bandit_trials
        makers: dict[str, Callable[[Any], Any]] = {"ucb1": UCB1, "epsilon_greedy": EpsilonGreedy, "gittins": Gittins}
        for method, make in makers.items():
            start = time.perf_counter()
            tuning[method] = tune(play, make, GRIDS[method], family, shots=shots, tasks=tune_tasks, seed=0)
            tuning[method]["seconds"] = round(time.perf_counter() - start, 3)
        policies = {
            "random": RandomArms(),
            "gittins": Gittins(tuning["gittins"]["chosen"]),
            "thompson": Thompson(),
            "ucb1": UCB1(tuning["ucb1"]["chosen"]),
            "epsilon_greedy": EpsilonGreedy(tuning["epsilon_greedy"]["chosen"]),
            "greedy": EpsilonGreedy(0.0),
        }
    else:
        family = TabularMDPFamily(TabularMDPFamily.Options())
        play = play_mdp_trials
        policies = {"random": RandomMDP(), "psrl": PSRL(), "optimal": OptimalMDP()}
    batches = _batches(family, "test", 0, tasks, shots)
    optimal = np.array([family.optimal_return(t, shots) for b in batches for t in b])
    for method, policy in policies.items():
        results[method] = _measure(play, policy, batches, optimal)
        print(f"{name} {method}: {results[method]['return']:.2f} ± {results[method]['ci95']:.2f} "
              f"({results[method]['seconds']} s)", file=sys.stderr, flush=True)
    protocol = {"setting": name, "family": spec["family"], "options": family.to_dict(), "shots": shots,
                "tasks": tasks, "eval_seed": 0, "tune_tasks": tune_tasks, "tune_seed": 0,
                "grids": GRIDS if spec["family"] == "bandits" else {}}
    return {"setting": name, "protocol": protocol, "optimal_return": float(optimal.mean()), "results": results,
            "tuning": tuning}


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _stamp(entry: dict[str, Any], command: str, seconds: float) -> dict[str, Any]:
    digest = hashlib.sha256(json.dumps(entry.get("protocol", {}), sort_keys=True).encode()).hexdigest()
    return {"run_id": uuid.uuid4().hex[:12], **entry, "protocol_sha256": digest, "command": command,
            "seconds": round(seconds, 3), "hardware": hardware(), "threads": os.environ.get("OMP_NUM_THREADS"),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "git_commit": _git_commit()}


def _append(path: Path, entry: dict[str, Any]) -> None:
    entries = json.loads(path.read_text()) if path.exists() else []
    entries.append(entry)
    path.write_text(json.dumps(entries, indent=1) + "\n")


def throughput(envs: int, steps: int) -> dict[str, Any]:
    from gymnasium.vector import AutoresetMode, SyncVectorEnv

    out: dict[str, Any] = {"envs": envs, "steps": steps, "families": {}}
    for name, family in (("bandits", BanditFamily(BanditFamily.Options(arms=10))),
                         ("tabular_mdp", TabularMDPFamily(TabularMDPFamily.Options()))):
        tasks = [family.task(0, "test", j) for j in range(envs)]
        n_actions = 10 if name == "bandits" else 5
        actions = np.random.default_rng(0).integers(0, n_actions, (steps, envs))
        horizon = 1 if name == "bandits" else 10
        row = {}
        for kind in ("batched", "sync"):
            if kind == "batched":
                env = family.make_vector_env(tasks)
            else:
                env = SyncVectorEnv([(lambda t=t: t.make()) for t in tasks], autoreset_mode=AutoresetMode.DISABLED)
            env.reset(seed=[t.seed for t in tasks])
            start, cpu = time.perf_counter(), time.process_time()
            for i in range(steps):
                if i and i % horizon == 0:
                    env.reset()
                env.step(actions[i])
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
            env.close()
            # steps per second of this process's CPU time: on a shared machine, wall-clock time also counts
            # the time other processes held the cores
            row[kind] = {"seconds": round(seconds, 4), "cpu_seconds": round(cpu, 4),
                         "env_steps_per_s": round(envs * steps / cpu)}
        row["speedup"] = round(row["batched"]["env_steps_per_s"] / row["sync"]["env_steps_per_s"], 2)
        out["families"][name] = row
        print(name, row, file=sys.stderr, flush=True)
    return out


def _newest(record: Path) -> dict[str, dict[str, Any]]:
    newest: dict[str, dict[str, Any]] = {}
    for e in json.loads(record.read_text()):
        newest[e["setting"]] = e
    return newest


def _cell(result: dict[str, Any] | None, paper: float | None) -> str:
    measured = "not run" if result is None else f"{result['return']:.1f} ± {result['ci95']:.1f}"
    return measured + (f" ({paper})" if paper is not None else "")


def table(record: Path = RECORD) -> str:
    """The Markdown tables of the newest record per setting, each cell "measured ± 95% CI (paper)"."""
    newest = _newest(record)
    names = {"random": "Random", "gittins": "Gittins", "thompson": "TS", "ucb1": "UCB1",
             "epsilon_greedy": "ε-greedy", "greedy": "Greedy", "psrl": "PSRL", "optimal": "optimal (true MDP)"}
    lines = ["Bernoulli bandits: total reward over n pulls, mean ± 95% CI over the test tasks (Duan et al. 2016, "
             "Table 1, in parentheses):", "",
             "| k | n | tasks | " + " | ".join(names[m] for m in BANDIT_METHODS) + " | optimum | RL² (paper) | tuned (c / ε / γ) |",
             "| --- | --- | --- | " + " | ".join("---" for _ in BANDIT_METHODS) + " | --- | --- | --- |"]
    for (k, n), paper in sorted(PAPER_BANDITS.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        e = newest.get(f"bandits-k{k}-n{n}")
        if e is None:
            continue
        r = e["results"]
        tuned = " / ".join(str(e["tuning"][m]["chosen"]) for m in ("ucb1", "epsilon_greedy", "gittins"))
        lines.append(f"| {k} | {n} | {e['protocol']['tasks']} | " + " | ".join(_cell(r.get(m), paper.get(m)) for m in BANDIT_METHODS)
                     + f" | {e['optimal_return']:.1f} | {paper['rl2']} | {tuned} |")
    lines += ["", "Random tabular MDPs (10 states, 5 actions, episodes of 10 steps): total reward over n episodes "
              "(Duan et al. 2016, Table 2, in parentheses):", "",
              "| n | tasks | " + " | ".join(names[m] for m in MDP_METHODS) + " | RL² (paper) |",
              "| --- | --- | " + " | ".join("---" for _ in MDP_METHODS) + " | --- |"]
    for n, paper in sorted(PAPER_MDP.items()):
        e = newest.get(f"mdp-n{n}")
        if e is None:
            continue
        r = e["results"]
        lines.append(f"| {n} | {e['protocol']['tasks']} | " + " | ".join(_cell(r.get(m), paper.get(m)) for m in MDP_METHODS)
                     + f" | {paper['rl2']} |")
    return "\n".join(lines)


def throughput_table(record: Path = THROUGHPUT) -> str:
    e = json.loads(record.read_text())[-1]
    lines = [f"Environment steps per CPU second, {e['envs']} envs x {e['steps']} steps, random actions "
             f"({e['date'][:10]}, {e['hardware']['cpu']}, one thread):", "",
             "| family | batched vector env | SyncVectorEnv | speed-up |", "| --- | --- | --- | --- |"]
    for name, row in e["families"].items():
        lines.append(f"| {name} | {row['batched']['env_steps_per_s']:,} | {row['sync']['env_steps_per_s']:,} | {row['speedup']}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="evaluate the references of settings and append their records")
    p.add_argument("settings", nargs="*", help=f"settings (default: all): {', '.join(settings())}")
    p.add_argument("--tasks", type=int, default=1000)
    p.add_argument("--tune-tasks", type=int, default=200)
    p.add_argument("--record", type=Path, default=RECORD)
    t = sub.add_parser("throughput", help="env steps per second, batched vs SyncVectorEnv")
    t.add_argument("--envs", type=int, default=100)
    t.add_argument("--steps", type=int, default=2000)
    t.add_argument("--record", type=Path, default=THROUGHPUT)
    sub.add_parser("table", help="print the tables from the records")
    args = parser.parse_args(argv)
    command = "python benchmarks/rl/references.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.command == "run":
        known = settings()
        chosen = args.settings or list(known)
        for name in chosen:
            if name not in known:
                parser.error(f"unknown setting {name!r}; choose from {', '.join(known)}")
        for name in chosen:
            start = time.perf_counter()
            entry = run_setting(name, known[name], args.tasks, args.tune_tasks)
            _append(args.record, _stamp(entry, command, time.perf_counter() - start))
    elif args.command == "throughput":
        start = time.perf_counter()
        entry = throughput(args.envs, args.steps)
        _append(args.record, _stamp(entry, command, time.perf_counter() - start))
    else:
        print(table())
        if THROUGHPUT.exists():
            print()
            print(throughput_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
