"""Throughput, evaluation cost and a short learning check of the sequence learners; writes a record.

    python benchmarks/sequence/record.py [--steps 240] [--root ../shared/data/omniglot]
    python benchmarks/sequence/record.py table     # the docs/model_based.md section, from the newest record

For each of ``configs/{mann,ntm,lstm}_omniglot_sequence.yaml`` (the paper-size models, batches
of 16 episodes of 50 steps, one thread): the median seconds of a training step (``meta_backward``
+ gradient clipping + Adam step) over ``--timed`` steps after one warm-up step, as episodes per
second; the seconds to evaluate ``--eval-episodes`` fixed validation episodes (no autograd,
batches of 50). Then ``--steps`` training steps of each model from the same seed, logging the
mean loss and accuracy of every block of ``--block`` steps: the learning check (how far such a
short run gets is in the record, not a claim about the full budget).

Appends one entry to ``results.json`` beside this script: run id, command, seconds, sha256 of
each config, hardware (``metakit.bench.hardware()``), date and the measurements.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import torch

from metakit.bench import hardware
from metakit.runtime.builders import build_algorithm, build_context, build_dataset, build_episodes, build_sampler
from metakit.runtime.config import load_config
from metakit.runtime.evaluation import evaluate

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RECORD = HERE / "results.json"
CONFIGS = {name: REPO / "configs" / f"{name}_omniglot_sequence.yaml" for name in ("mann", "ntm", "lstm")}


def _step(algorithm, optimizer, batch, clip: float) -> dict[str, float]:
    optimizer.zero_grad()
    metrics = algorithm.meta_backward(batch)
    torch.nn.utils.clip_grad_norm_(algorithm.parameters(), clip)
    optimizer.step()
    return metrics


def measure(name: str, path: Path, root: str, steps: int, block: int, timed: int, eval_episodes: int) -> dict:
    cfg = load_config(path, [f"task.root={root}", "run.num_threads=1"])
    train = build_dataset(cfg, "train")
    context = build_context(cfg, train)
    torch.manual_seed(cfg.run.seed)
    algorithm = build_algorithm(cfg, context)
    optimizer = torch.optim.Adam(algorithm.parameters(), lr=cfg.optim.lr)
    sampler = build_sampler(cfg, train)
    b = cfg.train.meta_batch
    # throughput: a fresh copy of the model, so that the learning check starts from the seed's weights
    probe = build_algorithm(cfg, context)
    probe_opt = torch.optim.Adam(probe.parameters(), lr=cfg.optim.lr)
    batches = [sampler.sample(b) for _ in range(timed + 1)]
    _step(probe, probe_opt, batches[0], cfg.optim.grad_clip)
    times = []
    for batch in batches[1:]:
        t = time.perf_counter()
        _step(probe, probe_opt, batch, cfg.optim.grad_clip)
        times.append(time.perf_counter() - t)
    step_s = statistics.median(times)
    val = build_dataset(cfg, "val")
    episodes = build_episodes(cfg, "val", episodes=eval_episodes, dataset=val)
    t = time.perf_counter()
    result = evaluate(probe, episodes, family=cfg.family)
    eval_s = time.perf_counter() - t
    # learning check
    sampler = build_sampler(cfg, train)
    blocks, losses, accs = [], [], []
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        m = _step(algorithm, optimizer, sampler.sample(b), cfg.optim.grad_clip)
        losses.append(m["loss"])
        accs.append(m["accuracy"])
        if step % block == 0:
            blocks.append({"step": step, "loss": statistics.fmean(losses), "accuracy": statistics.fmean(accs)})
            losses, accs = [], []
            print(f"{name} step {step}: {blocks[-1]}", file=sys.stderr, flush=True)
    train_s = time.perf_counter() - t0
    return {
        "config": str(path.relative_to(REPO)),
        "config_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "meta_batch": b,
        "episode_steps": cfg.family.shape.length,
        "parameters": sum(p.numel() for p in algorithm.parameters()),
        "train_step_seconds_median": step_s,
        "train_step_seconds": times,
        "train_episodes_per_s": b / step_s,
        "eval_episodes": eval_episodes,
        "eval_seconds": eval_s,
        "eval_episodes_per_s": eval_episodes / eval_s,
        "eval_accuracy_untrained_probe_after_timed_steps": result.mean,
        "learning": {"steps": steps, "block": block, "seconds": train_s, "blocks": blocks},
    }


def table(record: Path = RECORD) -> str:
    """The measured section of ``docs/model_based.md`` from the newest record."""
    e = json.loads(record.read_text())[-1]
    hw = e["hardware"]
    lines = [
        f"`{e['command']}` (run {e['run_id']}, {e['date'][:10]}, {e['seconds']:.0f} s in all; {hw['cpu']}, "
        f"torch {hw['torch']}, {hw['threads']} thread on {hw['cores']} shared cores, so read the seconds as "
        "ratios). Training step: `meta_backward` + clipping + Adam on 16 episodes of 50 steps, median of "
        f"{len(next(iter(e['results'].values()))['train_step_seconds'])} steps; evaluation: fixed validation episodes, "
        "batches of 50, no autograd.",
        "",
        "| model | parameters | training: s / step | training episodes / s | evaluation episodes / s | "
        "learning check: loss (accuracy) over the first block | over the last block |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in e["results"].items():
        first, last = r["learning"]["blocks"][0], r["learning"]["blocks"][-1]
        lines.append(
            f"| {name} (`{r['config']}`) | {r['parameters']:,} | {r['train_step_seconds_median']:.3f} | "
            f"{r['train_episodes_per_s']:.1f} | {r['eval_episodes_per_s']:.1f} | "
            f"{first['loss']:.3f} ({100 * first['accuracy']:.1f}%), steps 1-{first['step']} | "
            f"{last['loss']:.3f} ({100 * last['accuracy']:.1f}%), steps {last['step'] - r['learning']['block'] + 1}-{last['step']} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "omniglot"))
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--block", type=int, default=20)
    p.add_argument("--timed", type=int, default=10)
    p.add_argument("--eval-episodes", type=int, default=200)
    p.add_argument("--models", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    if sys.argv[1:2] == ["table"]:
        print(table())
        return
    args = p.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    results = {m: measure(m, CONFIGS[m], args.root, args.steps, args.block, args.timed, args.eval_episodes) for m in args.models}
    entry = {
        "run_id": uuid.uuid4().hex[:12],
        "command": "python benchmarks/sequence/record.py " + " ".join(sys.argv[1:]),
        "seconds": round(time.perf_counter() - start, 1),
        "hardware": {**hardware(), "threads": 1},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "results": results,
    }
    entries = json.loads(RECORD.read_text()) if RECORD.exists() else []
    entries.append(entry)
    RECORD.write_text(json.dumps(entries, indent=1) + "\n")
    for m, r in results.items():
        first, last = r["learning"]["blocks"][0], r["learning"]["blocks"][-1]
        print(f"{m}: {r['train_episodes_per_s']:.1f} train episodes/s, {r['eval_episodes_per_s']:.1f} eval episodes/s; "
              f"loss {first['loss']:.3f} (steps 1-{first['step']}) -> {last['loss']:.3f} (to step {last['step']}), "
              f"accuracy {100 * first['accuracy']:.1f}% -> {100 * last['accuracy']:.1f}%")


if __name__ == "__main__":
    main()
