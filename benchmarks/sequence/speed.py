"""Training-step and sampling speed of the sequence learners against a baseline commit, in one process.

    python benchmarks/sequence/speed.py [--baseline REV] [--timed 15] [--root ../shared/data/omniglot]
    python benchmarks/sequence/speed.py table     # the docs/model_based.md paragraph, from the newest record

The baseline is the code of ``src/metakit/models/memory.py`` (the memory-augmented LSTM) and of the
episode drawing in ``src/metakit/tasks/sequence.py`` at git revision ``--baseline``, read with
``git show`` and loaded beside the current package. For each of
``configs/{mann,ntm,lstm}_omniglot_sequence.yaml`` (paper-size models, batches of 16 episodes of
50 steps, one thread) the benchmark builds the learner twice from the same seed, the baseline's
network carrying the current network's parameters (the state_dict loads unchanged), and times
``--timed`` training steps (``meta_backward`` + gradient clipping + Adam) of each, alternating
baseline and current on the same batches after one warm-up step each; also a forward pass
without autograd (what evaluation costs). The loss of the first batch is compared between the
two. The sampler: ``--timed`` batches of 16 episodes drawn alternately by the baseline's and the
current episode drawing from the same generator state; the batches are compared bit for bit.

Every ratio is baseline seconds / current seconds of the same batch (above 1: the current code
is faster); the record keeps the medians, all the per-step seconds, run id, command, seconds,
hardware (``metakit.bench.hardware()``), date, sha256 of each config, the baseline commit and the
measured commit. Appends to ``speed.json`` beside this script.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import statistics
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType

import torch

from metakit.bench import hardware
from metakit.runtime.builders import build_algorithm, build_context, build_dataset, build_sampler
from metakit.runtime.config import load_config

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RECORD = HERE / "speed.json"
CONFIGS = {name: REPO / "configs" / f"{name}_omniglot_sequence.yaml" for name in ("mann", "ntm", "lstm")}
#: where the baseline's sequence module stops being episode drawing (its task family would register twice)
FAMILY_SECTION = "# -- the family"


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True, text=True).stdout


def _module(name: str, source: str, package: str) -> ModuleType:
    spec = importlib.util.spec_from_loader(f"{package}.{name}", loader=None)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    module.__package__ = package
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"<{name}>", "exec"), module.__dict__)
    return module


def load_baseline(rev: str) -> tuple[ModuleType, ModuleType]:
    """The baseline's memory module and the episode-drawing part of its sequence module."""
    memory = _module("_baseline_memory", _git("show", f"{rev}:src/metakit/models/memory.py"), "metakit.models")
    source = _git("show", f"{rev}:src/metakit/tasks/sequence.py")
    if FAMILY_SECTION not in source:
        raise ValueError(f"the baseline's sequence.py at {rev} has no {FAMILY_SECTION!r} section; choose a later --baseline")
    sequence = _module("_baseline_sequence", source[: source.index(FAMILY_SECTION)], "metakit.tasks")
    return memory, sequence


def _step(algorithm, optimizer, batch, clip: float) -> dict[str, float]:
    optimizer.zero_grad()
    metrics = algorithm.meta_backward(batch)
    torch.nn.utils.clip_grad_norm_(algorithm.parameters(), clip)
    optimizer.step()
    return metrics


def _timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def _summary(base: list[float], current: list[float]) -> dict:
    return {
        "baseline_seconds_median": statistics.median(base),
        "current_seconds_median": statistics.median(current),
        "ratio_median": statistics.median(b / c for b, c in zip(base, current)),
        "baseline_seconds": base,
        "current_seconds": current,
    }


def measure_model(path: Path, root: str, timed: int, old_memory: ModuleType) -> dict:
    cfg = load_config(path, [f"task.root={root}", "run.num_threads=1"])
    train = build_dataset(cfg, "train")
    context = build_context(cfg, train)
    learners = {}
    for which in ("baseline", "current"):
        torch.manual_seed(cfg.run.seed)
        learners[which] = build_algorithm(cfg, context)
    current_net = learners["current"].network
    a = current_net.memory
    options = {} if a is None else {"slots": a.slots, "width": a.width, "heads": a.heads,
                                    **({"gamma": a.gamma} if a.kind == "lrua" else {"shift_range": a.shift_range})}
    old_net = old_memory.MemoryAugmentedLSTM(
        current_net.controller.input_size - (0 if a is None else a.read_size), current_net.output.out_features,
        current_net.hidden_size, None if a is None else a.kind, **options,
    )
    old_net.load_state_dict(current_net.state_dict())  # strict: the same parameter names and shapes
    learners["baseline"].network = old_net
    optimizers = {k: torch.optim.Adam(v.parameters(), lr=cfg.optim.lr) for k, v in learners.items()}
    sampler = build_sampler(cfg, train)
    batches = [sampler.sample(cfg.train.meta_batch) for _ in range(timed + 1)]
    first = {k: _step(learners[k], optimizers[k], batches[0], cfg.optim.grad_clip)["loss"] for k in learners}
    times: dict[str, list[float]] = {"baseline": [], "current": []}
    forward: dict[str, list[float]] = {"baseline": [], "current": []}
    for batch in batches[1:]:
        for k in ("baseline", "current"):
            times[k].append(_timed(_step, learners[k], optimizers[k], batch, cfg.optim.grad_clip)[0])
            with torch.no_grad():
                forward[k].append(_timed(learners[k].predict, batch)[0])
    return {
        "config": str(path.relative_to(REPO)),
        "config_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "meta_batch": cfg.train.meta_batch,
        "episode_steps": cfg.family.shape.length,
        "first_batch_loss": first,
        "first_batch_loss_abs_difference": abs(first["baseline"] - first["current"]),
        "train_step": _summary(times["baseline"], times["current"]),
        "forward_no_autograd": _summary(forward["baseline"], forward["current"]),
    }


def measure_sampler(path: Path, root: str, timed: int, old_sequence: ModuleType) -> dict:
    from metakit.tasks import sequence as current

    cfg = load_config(path, [f"task.root={root}", "run.num_threads=1"])
    data = build_dataset(cfg, "train")
    shape, b = cfg.family.shape, cfg.train.meta_batch
    old_shape = old_sequence._Shape(**vars(shape))
    gens = {k: torch.Generator().manual_seed(cfg.run.seed) for k in ("baseline", "current")}
    draw = {"baseline": lambda g: old_sequence._draw(data, old_shape, b, g), "current": lambda g: current._draw(data, shape, b, g)}
    times: dict[str, list[float]] = {"baseline": [], "current": []}
    identical = True
    for _ in range(timed):
        out = {}
        for k in ("baseline", "current"):
            seconds, out[k] = _timed(draw[k], gens[k])
            times[k].append(seconds)
        identical &= all(torch.equal(getattr(out["baseline"], f), getattr(out["current"], f)) for f in ("x", "labels", "codes"))
    return {"config": str(path.relative_to(REPO)), "meta_batch": b, "identical_batches": identical,
            **_summary(times["baseline"], times["current"])}


def table(record: Path = RECORD) -> str:
    """The measured paragraph of ``docs/model_based.md`` from the newest record."""
    e = json.loads(record.read_text())[-1]
    hw = e["hardware"]
    lines = [
        f"`{e['command']}` (run {e['run_id']}, {e['date'][:10]}, {e['seconds']:.0f} s in all; {hw['cpu']}, torch "
        f"{hw['torch']}, {hw['threads']} thread on {hw['cores']} shared cores): baseline commit "
        f"`{e['baseline_commit'][:10]}` against `{e['commit'][:10]}`, alternating on the same batches, medians of "
        f"{e['timed']} steps; ratio = baseline seconds / current seconds.",
        "",
        "| | baseline s | current s | ratio | first-batch loss, abs. difference |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, r in e["results"].items():
        t, f = r["train_step"], r["forward_no_autograd"]
        lines.append(f"| {name}: training step | {t['baseline_seconds_median']:.3f} | {t['current_seconds_median']:.3f} | "
                     f"{t['ratio_median']:.2f} | {r['first_batch_loss_abs_difference']:.1e} |")
        lines.append(f"| {name}: forward, no autograd | {f['baseline_seconds_median']:.3f} | "
                     f"{f['current_seconds_median']:.3f} | {f['ratio_median']:.2f} | |")
    s = e["sampler"]
    lines.append(f"| sampler: a batch of {s['meta_batch']} episodes | {s['baseline_seconds_median']:.4f} | "
                 f"{s['current_seconds_median']:.4f} | {s['ratio_median']:.2f} | identical batches: "
                 f"{'yes' if s['identical_batches'] else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", default="57410bd", help="git revision of the baseline code (default: %(default)s)")
    p.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "omniglot"))
    p.add_argument("--timed", type=int, default=15, help="timed steps (and sampled batches) per model")
    p.add_argument("--models", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    if sys.argv[1:2] == ["table"]:
        print(table())
        return
    args = p.parse_args()
    if args.timed < 1:
        p.error(f"--timed={args.timed}: give at least 1 step")
    try:
        baseline_commit = _git("rev-parse", "--verify", "--quiet", f"{args.baseline}^{{commit}}").strip()
    except subprocess.CalledProcessError:
        p.error(f"--baseline {args.baseline!r} names no commit of this repository; give a commit hash, tag or branch")
    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        old_memory, old_sequence = load_baseline(baseline_commit)
    except subprocess.CalledProcessError as err:
        p.error(f"--baseline {args.baseline!r}: `{' '.join(err.cmd)}` found no such file (the commit predates the "
                "sequence learners); choose a later --baseline")
    except ValueError as err:
        p.error(f"--baseline {args.baseline!r}: {err}")
    results = {m: measure_model(CONFIGS[m], args.root, args.timed, old_memory) for m in args.models}
    sampler = measure_sampler(CONFIGS[args.models[0]], args.root, args.timed, old_sequence)
    entry = {
        "run_id": uuid.uuid4().hex[:12],
        "command": " ".join(["python benchmarks/sequence/speed.py", *sys.argv[1:]]),
        "seconds": round(time.perf_counter() - start, 1),
        "hardware": {**hardware(), "threads": 1},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "baseline_commit": baseline_commit,
        "commit": _git("rev-parse", "HEAD").strip(),
        "uncommitted_changes": bool(_git("status", "--porcelain", "--", "src", "benchmarks/sequence/speed.py").strip()),
        "timed": args.timed,
        "results": results,
        "sampler": sampler,
    }
    entries = json.loads(RECORD.read_text()) if RECORD.exists() else []
    entries.append(entry)
    RECORD.write_text(json.dumps(entries, indent=1) + "\n")
    print(table())


if __name__ == "__main__":
    main()
