"""Environment steps per second of the MAML-RL task families, and where a MAML-RL meta-iteration spends its time.

    nice -n 10 python benchmarks/rl/throughput.py [--out benchmarks/rl/maml_rl_throughput.json]

Measured, on one torch thread, with random actions (the environment alone):

* ``navigation_2d``: the batched NumPy vector env of a meta-batch (20 tasks x 20 roll-outs = 400
  agents) against the single environments stepped one by one;
* ``half_cheetah_direction``: gymnasium's ``SyncVectorEnv`` of 20 environments against one environment;

and one meta-iteration of ``configs/maml_rl_navigation.yaml`` (20 tasks, 20 + 20 roll-outs of 100
steps, TRPO), split into the roll-outs (policy forward passes and environment steps) and the rest
(advantages, the inner steps, the TRPO update). The record (JSON) holds the settings and their
digest, the command, the seconds, the hardware and the date; each run appends one entry.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from metakit.bench import hardware
from metakit.runtime.builders import build_algorithm
from metakit.runtime.config import load_config
from metakit.tasks import EnvBatch, get_family

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _steps_per_s(env, actions_fn, steps: int, n: int) -> float:
    env.reset(seed=list(range(n)) if n > 1 else 0)
    start = time.perf_counter()
    for _ in range(steps):
        env.step(actions_fn())
    return steps * n / (time.perf_counter() - start)


def _singles(envs, actions_fn, steps: int) -> float:
    for i, env in enumerate(envs):
        env.reset(seed=i)
    start = time.perf_counter()
    for _ in range(steps):
        for env, a in zip(envs, actions_fn()):
            env.step(a)
    return steps * len(envs) / (time.perf_counter() - start)


def measure(settings: dict) -> dict:
    rng = np.random.default_rng(0)
    out: dict = {}
    nav = get_family("navigation_2d")(get_family("navigation_2d").Options())
    tasks = tuple(nav.task(0, "train", i) for i in range(settings["nav_tasks"]))
    copies = settings["nav_copies"]
    n = len(tasks) * copies
    vec = EnvBatch(tasks, copies, 1).vector_env(copies=copies)
    out["navigation_2d"] = {
        "envs": n,
        "vector_steps_per_s": _steps_per_s(vec, lambda: rng.uniform(-0.1, 0.1, (n, 2)), 100, n),
        "single_steps_per_s": _singles([t.make() for t in tasks for _ in range(copies)][:40],
                                       lambda: rng.uniform(-0.1, 0.1, (40, 2)), 100),
    }
    cheetah = get_family("half_cheetah_direction")(get_family("half_cheetah_direction").Options())
    ctasks = tuple(cheetah.task(0, "train", i) for i in range(settings["cheetah_envs"]))
    m = len(ctasks)
    cvec = EnvBatch(ctasks, 1, 1).vector_env()
    out["half_cheetah_direction"] = {
        "envs": m,
        "vector_steps_per_s": _steps_per_s(cvec, lambda: rng.uniform(-1, 1, (m, 6)), 200, m),
        "single_steps_per_s": _steps_per_s(ctasks[0].make(), lambda: rng.uniform(-1, 1, 6), 2000, 1),
    }
    # one MAML-RL meta-iteration of the shipped navigation config: roll-outs against the rest
    config = load_config(REPO / "configs" / "maml_rl_navigation.yaml")
    torch.manual_seed(0)
    algo = build_algorithm(config, config.family.context(None, None))
    sampler = config.family.train_sampler(None, ways=None, shots=config.train.shots, queries=config.train.queries, seed=0)
    rollout_seconds = []
    original = algo.rollout

    def timed(*args, **kwargs):
        start = time.perf_counter()
        result = original(*args, **kwargs)
        rollout_seconds.append(time.perf_counter() - start)
        return result

    algo.rollout = timed  # type: ignore[method-assign]
    iterations = []
    for _ in range(settings["iterations"]):
        rollout_seconds.clear()
        start = time.perf_counter()
        algo.meta_backward(sampler.sample(config.train.meta_batch))
        total = time.perf_counter() - start
        iterations.append({"seconds": total, "rollout_seconds": sum(rollout_seconds),
                           "env_steps": 2 * config.train.meta_batch * config.train.shots * 100})
    out["maml_rl_navigation_iteration"] = iterations
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=HERE / "maml_rl_throughput.json")
    p.add_argument("--iterations", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(1)
    settings = {"nav_tasks": 20, "nav_copies": 20, "cheetah_envs": 20, "iterations": args.iterations, "threads": 1}
    start = time.perf_counter()
    result = measure(settings)
    entry = {
        "run_id": uuid.uuid4().hex[:12],
        "command": "python " + " ".join([str(Path(sys.argv[0]).relative_to(REPO)) if Path(sys.argv[0]).is_absolute() else sys.argv[0], *sys.argv[1:]]),
        "settings": settings,
        "config_sha256": hashlib.sha256(json.dumps(settings, sort_keys=True).encode()
                                        + (REPO / "configs" / "maml_rl_navigation.yaml").read_bytes()).hexdigest(),
        "result": result,
        "seconds": round(time.perf_counter() - start, 2),
        "hardware": hardware(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    entries = json.loads(args.out.read_text()) if args.out.exists() else []
    entries.append(entry)
    args.out.write_text(json.dumps(entries, indent=1) + "\n")
    print(json.dumps(entry, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
