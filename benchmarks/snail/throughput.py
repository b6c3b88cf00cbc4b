"""Measure SNAIL's training throughput and evaluation cost on a shipped config; append a record.

    python benchmarks/snail/throughput.py configs/snail_omniglot_5w1s.yaml --steps 20 --eval-episodes 200
    python benchmarks/snail/throughput.py --table      # the table of docs/snail.md, from the record

Training: ``--steps`` outer steps of the config (sample a meta-batch, ``meta_backward``, gradient
clipping, optimizer step) after ``--warmup`` untimed ones, from a fresh initialisation with the
config's seed. Evaluation: ``--eval-episodes`` fixed test episodes of the config's ``eval``
sizes, scored in batches of 50 in ``eval()`` mode without autograd, as ``metakit eval`` does.
Threads: the config's ``run.num_threads``. Wall-clock and process CPU seconds are both kept (on a
shared host the wall clock includes time spent waiting for a core). One record is appended to ``throughput.json`` beside
this script: run id, the config's path and sha256, the command, seconds, episodes per second,
hardware (:func:`metakit.bench.hardware`), date and git commit.
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

import torch

from metakit.bench import hardware
from metakit.runtime.builders import (
    build_algorithm,
    build_context,
    build_dataset,
    build_episodes,
    build_optimizer,
    build_sampler,
    resolve_config,
    trainable_parameters,
)
from metakit.runtime.config import load_config

HERE = Path(__file__).resolve().parent
RECORD = HERE / "throughput.json"


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def measure(config_path: Path, steps: int, warmup: int, eval_episodes: int) -> dict:
    config = load_config(config_path)
    if config.run.num_threads:
        torch.set_num_threads(config.run.num_threads)
    torch.manual_seed(config.run.seed)
    train_data = build_dataset(config, "train")
    sampler = build_sampler(config, train_data)
    context = build_context(config, train_data, sampler)
    config = resolve_config(config, context)
    algorithm = build_algorithm(config, context)
    params = trainable_parameters(algorithm)
    optimizer = build_optimizer(config.optim, params)
    algorithm.train()

    def step() -> None:
        batch = sampler.sample(config.train.meta_batch)
        optimizer.zero_grad(set_to_none=True)
        algorithm.meta_backward(batch)
        if config.optim.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, config.optim.grad_clip)
        optimizer.step()

    for _ in range(warmup):
        step()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    train_seconds, train_cpu = time.perf_counter() - start, time.process_time() - cpu

    test_data = build_dataset(config, "test")
    episodes = build_episodes(config, "test", episodes=eval_episodes, dataset=test_data)
    algorithm.eval()
    correct = []
    start, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        for batch in episodes:
            correct.append(config.family.score(algorithm, batch))
    eval_seconds, eval_cpu = time.perf_counter() - start, time.process_time() - cpu
    e = config.eval
    return {
        "train": {
            "ways": config.train.ways, "shots": config.train.shots, "queries": config.train.queries,
            "meta_batch": config.train.meta_batch, "steps": steps, "warmup_steps": warmup,
            "seconds": round(train_seconds, 3), "cpu_seconds": round(train_cpu, 3),
            "seconds_per_step": round(train_seconds / steps, 4),
            "episodes_per_s": round(steps * config.train.meta_batch / train_seconds, 2),
            "episodes_per_cpu_s": round(steps * config.train.meta_batch / train_cpu, 2),
        },
        "eval": {
            "ways": e.ways, "shots": e.shots, "queries": e.queries, "episodes": eval_episodes, "batch_size": 50,
            "seconds": round(eval_seconds, 3), "cpu_seconds": round(eval_cpu, 3),
            "episodes_per_s": round(eval_episodes / eval_seconds, 2),
            "episodes_per_cpu_s": round(eval_episodes / eval_cpu, 2),
            "accuracy_untrained": round(float(torch.cat(correct).mean()), 4),
        },
        "threads": torch.get_num_threads(),
    }


def table(record: Path = RECORD) -> str:
    """The markdown table of every record, oldest first."""
    lines = [
        "| config | training episodes (timed steps) | training: episodes/s (per CPU-second) | CPU s/step "
        "| evaluation (episodes, queries/class) | evaluation: episodes/s (per CPU-second) | host, threads, load | date |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in json.loads(record.read_text()):
        t, v, hw = e["train"], e["eval"], e["hardware"]
        lines.append(
            f"| `{Path(e['config']).name}` | {t['ways']}-way {t['shots']}-shot {t['queries']}-query x {t['meta_batch']}, "
            f"{t['steps']} steps | {t['episodes_per_s']} ({t['episodes_per_cpu_s']}) | {t['cpu_seconds'] / t['steps']:.2f} "
            f"| {v['ways']}-way {v['shots']}-shot, {v['episodes']} episodes, {v['queries']} | {v['episodes_per_s']} "
            f"({v['episodes_per_cpu_s']}) | {hw['cpu']}, {hw['torch']}, {e['threads']} thread(s), load "
            f"{e['load_average'][0]}-{e['load_average'][1]} | {e['date'][:10]} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", type=Path, nargs="?", help="a SNAIL config (configs/snail_omniglot_*.yaml)")
    p.add_argument("--table", action="store_true", help="print the table of the record and exit")
    p.add_argument("--steps", type=int, default=20, help="timed training steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed training steps first")
    p.add_argument("--eval-episodes", type=int, default=200, help="timed test episodes")
    p.add_argument("--record", type=Path, default=RECORD, help="the JSON list the record is appended to")
    args = p.parse_args()
    if args.table:
        print(table(args.record))
        return
    if args.config is None:
        p.error("give a config to measure, or --table")
    for name in ("steps", "eval_episodes"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    if args.warmup < 0:
        p.error(f"--warmup={args.warmup} must be >= 0")
    load_before = os.getloadavg()
    start = time.perf_counter()
    result = measure(args.config, args.steps, args.warmup, args.eval_episodes)
    entry = {
        "run_id": uuid.uuid4().hex[:12],
        "config": str(args.config),
        "config_sha256": hashlib.sha256(args.config.read_bytes()).hexdigest(),
        "command": " ".join(["python", "benchmarks/snail/throughput.py", *sys.argv[1:]]),
        **result,
        "seconds": round(time.perf_counter() - start, 1),
        "hardware": hardware(),
        # 1-minute load average of the host before and after: other processes share its cores
        "load_average": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _commit(),
    }
    entries = json.loads(args.record.read_text()) if args.record.exists() else []
    entries.append(entry)
    args.record.write_text(json.dumps(entries, indent=1) + "\n")
    print(json.dumps(entry, indent=1))


if __name__ == "__main__":
    main()
