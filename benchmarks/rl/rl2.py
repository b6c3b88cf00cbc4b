"""RL² measurements on a two-armed Bernoulli bandit family defined here: throughput and a learning check.

    python benchmarks/rl/rl2.py throughput [--tasks 64 --pulls 100 --hidden 256]
    python benchmarks/rl/rl2.py learning   [--pulls 10 --iterations 60 ...]
    python benchmarks/rl/rl2.py table      # the table of docs/meta_rl.md, from the newest records

``throughput`` times the trials of one PPO iteration (environment steps per second, the policy
acting step by step on a ``SyncVectorEnv`` of the batch's tasks) and the PPO minibatch updates
(updates per second, the GRU re-run over whole trials). ``learning`` trains RL² with
``metakit.runtime.train`` on the family and compares its return on fixed test tasks with a
uniformly random policy's and with the optimum (the best arm's mean every pull), each with its 95%
interval. Both append a record to ``results.json`` beside this script: the result, the command,
the run id and config digest, wall-clock seconds, the hardware and the date.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import ClassVar

import gymnasium
import numpy as np
import torch

from metakit.algorithms import RL2
from metakit.algorithms._rl import rollout
from metakit.bench import hardware
from metakit.models import RecurrentPolicy
from metakit.runtime.config import Config
from metakit.runtime.evaluation import evaluate, mean_ci95
from metakit.runtime.run import load_run
from metakit.runtime.trainer import train
from metakit.tasks import EnvBatch, env_family

HERE = Path(__file__).resolve().parent
RECORD = HERE / "results.json"
FAMILY = "_bench_two_arms"


class TwoArms(gymnasium.Env):
    """A Bernoulli bandit (arm means drawn uniform on [0, 1]); one pull an episode."""

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self, means) -> None:
        self.means = np.asarray(means, dtype=np.float64)
        self.observation_space = gymnasium.spaces.Box(0.0, 0.0, (1,), np.float32)
        self.action_space = gymnasium.spaces.Discrete(len(self.means))

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        return np.zeros(1, np.float32), float(self.np_random.random() < self.means[int(action)]), True, False, {}


env_family(FAMILY, lambda p, **kw: TwoArms(p["means"]), lambda rng: {"means": rng.uniform(0, 1, size=2).tolist()},
           optimal_return=lambda p, episodes: episodes * max(p["means"]))


def _config(args: argparse.Namespace) -> dict:
    updates = args.epochs * args.minibatches
    return {
        "task": {"family": FAMILY},
        "train": {"shots": args.pulls, "queries": args.pulls, "meta_batch": args.tasks, "steps": args.iterations * updates},
        "eval": {"val_episodes": 100, "val_every": max(updates, (args.iterations // 4) * updates), "test_episodes": args.test_tasks},
        "model": {"name": "recurrent_policy", "hidden": args.hidden},
        "algorithm": {"name": "rl2", "epochs": args.epochs, "minibatches": args.minibatches, "entropy_coef": args.entropy_coef},
        "optim": {"lr": args.lr},
        "run": {"seed": args.seed, "progress": False, "num_threads": 1, "checkpoint_every": 10**6, "log_every": updates},
    }


def _record(kind: str, result: dict, config: dict | None, seconds: float) -> dict:
    entry = {
        "run_id": uuid.uuid4().hex[:12],
        "kind": kind,
        "result": result,
        "config_sha256": hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest() if config else None,
        "config": config,
        "command": "python benchmarks/rl/rl2.py " + " ".join(sys.argv[1:]),
        "seconds": round(seconds, 2),
        "hardware": hardware(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    entries = json.loads(RECORD.read_text()) if RECORD.exists() else []
    entries.append(entry)
    RECORD.write_text(json.dumps(entries, indent=1) + "\n")
    return entry


def throughput(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    fam_cls = __import__("metakit.tasks", fromlist=["get_family"]).get_family(FAMILY)
    fam = fam_cls(fam_cls.Options())
    batch = EnvBatch(tuple(fam.task(args.seed, "train", i) for i in range(args.tasks)), args.pulls, args.pulls)
    algo = RL2(RecurrentPolicy(observation_dim=1, action_dim=2, hidden=args.hidden), epochs=args.epochs, minibatches=args.minibatches)
    opt = torch.optim.Adam(algo.parameters(), lr=args.lr)
    t0 = time.perf_counter()
    algo.collect(batch)
    collect = time.perf_counter() - t0
    steps = int(algo.rollout_valid.sum())
    updates = algo.updates_per_iteration - 1
    algo.meta_backward(batch)  # position 0 collects again: time only the following updates
    t0 = time.perf_counter()
    for _ in range(updates):
        opt.zero_grad()
        algo.meta_backward(batch)
        opt.step()
    update = time.perf_counter() - t0
    return {"family": FAMILY + " (SyncVectorEnv of gymnasium envs)", "tasks": args.tasks, "pulls": args.pulls,
            "hidden": args.hidden, "env_steps": steps, "collect_seconds": round(collect, 3),
            "env_steps_per_s": round(steps / collect, 1), "updates": updates,
            "trials_per_minibatch": args.tasks // args.minibatches, "updates_per_s": round(updates / update, 2)}


def learning(args: argparse.Namespace) -> tuple[dict, dict]:
    raw = _config(args)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        result = train(Config.from_dict(raw), run)
        loaded = load_run(run, checkpoint="last")
        fam = loaded.config.family
        rl2 = evaluate(loaded.algorithm, loaded.episodes("test"), family=fam)
        uniform, optimum = [], []
        for batch in loaded.episodes("test"):
            def act(step, state):
                dist = torch.distributions.Categorical(logits=torch.zeros(len(step.obs), 2))
                a = (step.noise[:, 0] > 0.5).long()
                return a, dist.log_prob(a), None, state
            uniform.append(rollout(batch, act, episodes=batch.shots, stream=1).trial_returns())
            optimum += [fam.optimal_return(t, batch.shots) for t in batch]
        u = mean_ci95(torch.cat(uniform))
        o = mean_ci95(torch.tensor(optimum))
        curve = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    out = {
        "family": FAMILY, "pulls": args.pulls, "test_tasks": rl2.episodes, "iterations": args.iterations,
        "env_steps": args.iterations * args.tasks * args.pulls, "train_seconds": round(result.elapsed, 1),
        "rl2": {"return": rl2.mean, "ci95": rl2.ci95, "regret": rl2.regret[0] if rl2.regret else None},
        "uniform_random": {"return": u[0], "ci95": u[1]},
        "optimal": {"return": o[0], "ci95": o[1]},
        "validation": [{"step": r["step"], "return": r["return"], "ci95": r["ci95"]} for r in curve if r.get("split") == "val"],
    }
    return out, raw


def table(record: Path = RECORD) -> str:
    """The measurements table of docs/meta_rl.md from the newest record of each kind."""
    newest = {e["kind"]: e for e in json.loads(record.read_text())}
    lines = ["| measurement | setting | result | record |", "| --- | --- | --- | --- |"]
    if "throughput" in newest:
        e = newest["throughput"]
        r = e["result"]
        lines.append(f"| trials | {r['tasks']} tasks × {r['pulls']} pulls, GRU {r['hidden']} | {r['env_steps_per_s']:g} "
                     f"environment steps/s | `{e['run_id']}` ({e['date'][:10]}) |")
        lines.append(f"| PPO updates | minibatches of {r['trials_per_minibatch']} trials × {r['pulls']} steps, GRU {r['hidden']} | "
                     f"{r['updates_per_s']:g} updates/s | `{e['run_id']}` ({e['date'][:10]}) |")
    if "learning" in newest:
        e = newest["learning"]
        r = e["result"]
        c = e["config"]
        lines.append(
            f"| learning check | trials of {r['pulls']} pulls, {r['iterations']} iterations × {c['train']['meta_batch']} trials "
            f"({r['env_steps']:,} steps, {r['train_seconds']:.0f} s of training) | RL² {r['rl2']['return']:.2f} ± "
            f"{r['rl2']['ci95']:.2f}; uniformly random policy {r['uniform_random']['return']:.2f} ± "
            f"{r['uniform_random']['ci95']:.2f}; optimum {r['optimal']['return']:.2f} ± {r['optimal']['ci95']:.2f} (total "
            f"reward, {r['test_tasks']} test tasks, 95% CI) | `{e['run_id']}` ({e['date'][:10]}) |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("throughput", "learning", "table"))
    p.add_argument("--tasks", type=int, default=64, help="trials per PPO iteration (train.meta_batch)")
    p.add_argument("--pulls", type=int, default=10, help="pulls (one-step episodes) per trial")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--minibatches", type=int, default=4)
    p.add_argument("--iterations", type=int, default=60)
    p.add_argument("--test-tasks", type=int, default=500)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--entropy-coef", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.what == "table":
        print(table())
        return
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    if args.what == "throughput":
        result, config = throughput(args), None
    else:
        result, config = learning(args)
    entry = _record(args.what, result, config, time.perf_counter() - t0)
    print(json.dumps(entry["result"], indent=1))


if __name__ == "__main__":
    main()
