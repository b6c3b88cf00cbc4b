"""Float32 fidelity of the optimization-based methods' meta-gradients, per memory format.

For each method and setting, one meta-batch of real Omniglot tasks (vinyals ``train`` split;
synthetic near-binary images when the archives are not found, and the output says so) goes
through ``meta_backward`` three times from the same initial weights:

* ``float64`` in NCHW -- the reference;
* ``float32`` in NCHW (``channels_last=False``);
* ``float32`` in channels_last (``channels_last=True``).

Reported per float32 path: the relative error ``||g32 - g64|| / ||g64||`` of the whole
meta-gradient (all parameters, learned inner rates included), and the seconds per
meta-iteration (median of ``--iters`` timed repetitions after one warm-up, the two float32
paths interleaved so that a shared machine slows both alike). A second table gives the same
error for PyTorch's BatchNorm forward alone on ``[N, 64, 28, 28]`` activations of Omniglot-like
statistics, per batch size, which shows where the channels_last error comes from: the
error of its per-channel statistics grows with the number of elements per channel, while the
NCHW kernel's stays at float32 rounding.

The relative error is a property of the arithmetic, not of the machine: the same numbers
come back on any CPU with the same PyTorch build (up to the last digit or two, as summation
order follows the thread count).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import hardware
from ..tasks.episode import EpisodeBatch

DESCRIPTION = "float32 meta-gradient error vs float64 (NCHW vs channels_last) and time per meta-iteration"

#: name -> (algorithm, options, ways, shots, queries). The 5-way settings are the training protocol
#: of the shipped configs (configs/*_omniglot_5w*s.yaml); the 20-way ones apply the same options
#: to 20-way tasks (no 20-way config of the MAML family ships).
_ONE_STEP = {"inner_lr": 0.4, "inner_steps": 1}
SETTINGS: dict[str, tuple[str, dict[str, Any], int, int, int]] = {
    "fomaml-5w1s": ("maml", {**_ONE_STEP, "first_order": True}, 5, 1, 1),
    "fomaml-5w5s": ("maml", {**_ONE_STEP, "first_order": True}, 5, 5, 5),
    "fomaml-20w1s": ("maml", {**_ONE_STEP, "first_order": True}, 20, 1, 1),
    "fomaml-20w5s": ("maml", {**_ONE_STEP, "first_order": True}, 20, 5, 5),
    "maml-5w1s": ("maml", dict(_ONE_STEP), 5, 1, 1),
    "maml-5w5s": ("maml", dict(_ONE_STEP), 5, 5, 5),
    "maml-20w1s": ("maml", dict(_ONE_STEP), 20, 1, 1),
    "metasgd-5w1s": ("metasgd", dict(_ONE_STEP), 5, 1, 1),
    "metasgd-5w5s": ("metasgd", dict(_ONE_STEP), 5, 5, 5),
    "anil-5w1s": ("anil", dict(_ONE_STEP), 5, 1, 1),
    "anil-5w5s": ("anil", dict(_ONE_STEP), 5, 5, 5),
    "reptile-5w10s": ("reptile", {"inner_lr": 0.1, "inner_steps": 5, "inner_batch": 10}, 5, 10, 5),
}
BN_BATCHES = (5, 25, 75, 100, 300)
ROOT_ENV = "METAKIT_OMNIGLOT_ROOT"
DEFAULT_ROOT = Path("..") / "shared" / "data" / "omniglot"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help=f"comma list of {', '.join(SETTINGS)} (default: all)")
    parser.add_argument("--tasks", type=int, default=4, help="tasks per meta-batch (default 4)")
    parser.add_argument("--iters", type=int, default=3, help="timed meta-iterations per float32 path (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--root", default=None, help="Omniglot archives (default: $METAKIT_OMNIGLOT_ROOT, else ../shared/data/omniglot)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and of the tasks (default 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON record instead of the tables")


def _tasks(root: Path | None, ways: int, shots: int, queries: int, n: int, seed: int) -> tuple[EpisodeBatch, str]:
    if root is not None:
        from ..datasets import Omniglot
        from ..tasks.sampler import EpisodeSampler

        ds = Omniglot(root, protocol="vinyals", split="train")
        return EpisodeSampler(ds, ways, shots, queries, seed=seed).sample(n), "omniglot vinyals train"
    g = torch.Generator().manual_seed(seed)

    def images(k: int) -> torch.Tensor:  # sparse strokes, ink on about 15% of the pixels
        return (torch.rand(n, k, 1, 28, 28, generator=g) < 0.15).float()

    labels = lambda k: torch.arange(ways).repeat_interleave(k).repeat(n, 1)  # noqa: E731
    batch = EpisodeBatch(images(ways * shots), labels(shots), images(ways * queries), labels(queries), ways=ways)
    return batch, "synthetic near-binary 28x28 images"


def _meta_gradient(algorithm: torch.nn.Module, batch: EpisodeBatch, seed: int) -> tuple[torch.Tensor, float]:
    torch.manual_seed(seed)  # methods that draw from the global RNG (Reptile's minibatches) see the same draws
    algorithm.zero_grad(set_to_none=True)
    start = time.perf_counter()
    algorithm.meta_backward(batch)  # type: ignore[operator]
    seconds = time.perf_counter() - start
    grads = [p.grad.flatten().double() for p in algorithm.parameters() if p.grad is not None]
    if not grads:
        raise RuntimeError(f"{type(algorithm).__name__}.meta_backward left no gradient to compare")
    return torch.cat(grads), seconds


def measure_setting(name: str, root: Path | None, tasks: int, iters: int, seed: int) -> dict[str, Any]:
    """Relative meta-gradient errors and seconds per meta-iteration of one setting."""
    from ..algorithms import get_algorithm
    from ..models import Conv4

    algo, options, ways, shots, queries = SETTINGS[name]
    batch, source = _tasks(root, ways, shots, queries, tasks, seed)
    torch.manual_seed(seed)
    model = Conv4(out_features=ways, track_running_stats=False)
    cls = get_algorithm(algo)

    def build(channels_last: bool, dtype: torch.dtype) -> torch.nn.Module:
        return cls(copy.deepcopy(model).to(dtype), channels_last=channels_last, **options).to(dtype)

    reference, _ = _meta_gradient(build(False, torch.float64), batch.to(dtype=torch.float64), seed)
    paths = {"nchw": build(False, torch.float32), "channels_last": build(True, torch.float32)}
    errors, times = {}, {k: [] for k in paths}
    for key, alg in paths.items():  # warm-up; its gradient is the one compared (same weights every time)
        g, _ = _meta_gradient(alg, batch, seed)
        errors[key] = ((g - reference).norm() / reference.norm()).item()
    for _ in range(iters):
        for key, alg in paths.items():
            times[key].append(_meta_gradient(alg, batch, seed)[1])
    return {
        "setting": name, "algorithm": algo, "options": options, "ways": ways, "shots": shots, "queries": queries,
        "tasks": tasks, "data": source,
        "rel_error": errors,
        "seconds": {k: statistics.median(v) for k, v in times.items()},
    }


def batchnorm_errors(seed: int) -> list[dict[str, Any]]:
    """Relative error of float32 BatchNorm forward (training mode) vs float64, per batch size."""
    rows = []
    g = torch.Generator().manual_seed(seed)
    for n in BN_BATCHES:
        # conv outputs over near-binary images: a per-channel level plus a per-channel response on ink
        ink = (torch.rand(n, 64, 28, 28, generator=g, dtype=torch.float64) < 0.15).double()
        x64 = 0.3 * torch.randn(1, 64, 1, 1, generator=g, dtype=torch.float64) + ink * torch.randn(
            1, 64, 1, 1, generator=g, dtype=torch.float64)
        x64 = x64 + 0.05 * torch.randn(x64.shape, generator=g, dtype=torch.float64)
        ref = F.batch_norm(x64, None, None, training=True)
        row: dict[str, Any] = {"images": n}
        for key, fmt in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
            y = F.batch_norm(x64.float().contiguous(memory_format=fmt), None, None, training=True)
            row[key] = ((y.double() - ref).norm() / ref.norm()).item()
        rows.append(row)
    return rows


def run(args: argparse.Namespace) -> int:
    names = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in names if s not in SETTINGS]
    if unknown:
        print(f"metakit bench precision: --settings names unknown setting(s) {unknown}; choose from {', '.join(SETTINGS)}",
              file=sys.stderr)
        return 2
    for flag in ("tasks", "iters", "threads"):
        if getattr(args, flag) < 1:
            print(f"metakit bench precision: --{flag}={getattr(args, flag)} must be >= 1", file=sys.stderr)
            return 2
    torch.set_num_threads(args.threads)
    root = Path(args.root) if args.root else Path(os.environ.get(ROOT_ENV, DEFAULT_ROOT))
    if not (root / "images_background.zip").exists() and not (root / "images_background").is_dir():
        if args.root:
            print(f"metakit bench precision: --root {root} holds no Omniglot archives", file=sys.stderr)
            return 2
        root = None  # type: ignore[assignment]
    started = time.time()
    rows = [measure_setting(n, root, args.tasks, args.iters, args.seed) for n in names]
    record = {
        "benchmark": "precision",
        "command": "metakit bench precision " + " ".join(sys.argv[3:]) if sys.argv[1:3] == ["bench", "precision"] else None,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hardware": hardware(), "threads": args.threads, "seed": args.seed,
        "settings": rows, "batchnorm": batchnorm_errors(args.seed),
        "seconds": round(time.time() - started, 1),
    }
    if args.json:
        print(json.dumps(record))
        return 0
    print(f"float32 meta-gradient vs float64 (relative L2 error), {args.tasks} tasks per meta-batch, "
          f"{args.threads} thread(s), data: {rows[0]['data'] if rows else '-'}")
    print(f"{'setting':<14} {'NCHW error':>11} {'CL error':>10} {'NCHW s/it':>10} {'CL s/it':>9} {'CL speed-up':>12}")
    for r in rows:
        e, s = r["rel_error"], r["seconds"]
        print(f"{r['setting']:<14} {e['nchw']:>11.1e} {e['channels_last']:>10.1e} {s['nchw']:>10.3f} "
              f"{s['channels_last']:>9.3f} {s['nchw'] / s['channels_last']:>11.2f}x")
    print("\nBatchNorm forward (training mode), float32 vs float64, [N, 64, 28, 28]:")
    print(f"{'images':>6} {'NCHW error':>11} {'CL error':>10}")
    for r in record["batchnorm"]:
        print(f"{r['images']:>6} {r['nchw']:>11.1e} {r['channels_last']:>10.1e}")
    hw = record["hardware"]
    print(f"\n{hw['cpu']}, {hw['cores']} cores, torch {hw['torch']}; {record['date']}; {record['seconds']} s")
    return 0
