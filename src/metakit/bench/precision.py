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

How large an error the setting itself makes of rounding is reported beside it: the
``sensitivity`` is the relative change of the float64 meta-gradient when every weight is
multiplied by ``1 + 2**-24 * n`` (``n`` standard normal, one draw per weight: a perturbation of
the size of float32 rounding). Where it is large, the meta-gradient is ill-conditioned in exact
arithmetic (many second-order steps with a large inner step), and no float32 implementation can
be much closer to float64 than it.

The errors depend on the CPU as well as on the PyTorch build: its vector kernels sum in
different orders (the record names the CPU), and on one machine the summation order also follows
the thread count.
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

#: name -> (algorithm, options, ways, shots, queries, model). The settings without a suffix run
#: the max-pooling Conv4 (one inner step of 0.4; Reptile its own five); the ``-published`` ones
#: are the protocol of the shipped MAML configs (configs/{maml,fomaml}_omniglot_*.yaml): the
#: published code's stride-2 network (``conv4_strided``), inner step (2.0 on the mean loss),
#: adapted parameters and number of inner steps (1 in 5-way, 5 in 20-way).
_ONE_STEP = {"inner_lr": 0.4, "inner_steps": 1}
_PUBLISHED = {"inner_lr": 2.0, "adapt": ".*(weight|bias)"}
SETTINGS: dict[str, tuple[str, dict[str, Any], int, int, int, str]] = {
    "fomaml-5w1s": ("maml", {**_ONE_STEP, "first_order": True}, 5, 1, 1, "conv4"),
    "fomaml-5w5s": ("maml", {**_ONE_STEP, "first_order": True}, 5, 5, 5, "conv4"),
    "fomaml-20w1s": ("maml", {**_ONE_STEP, "first_order": True}, 20, 1, 1, "conv4"),
    "fomaml-20w5s": ("maml", {**_ONE_STEP, "first_order": True}, 20, 5, 5, "conv4"),
    "maml-5w1s": ("maml", dict(_ONE_STEP), 5, 1, 1, "conv4"),
    "maml-5w5s": ("maml", dict(_ONE_STEP), 5, 5, 5, "conv4"),
    "maml-20w1s": ("maml", dict(_ONE_STEP), 20, 1, 1, "conv4"),
    "metasgd-5w1s": ("metasgd", dict(_ONE_STEP), 5, 1, 1, "conv4"),
    "metasgd-5w5s": ("metasgd", dict(_ONE_STEP), 5, 5, 5, "conv4"),
    "anil-5w1s": ("anil", dict(_ONE_STEP), 5, 1, 1, "conv4"),
    "anil-5w5s": ("anil", dict(_ONE_STEP), 5, 5, 5, "conv4"),
    "reptile-5w10s": ("reptile", {"inner_lr": 0.1, "inner_steps": 5, "inner_batch": 10}, 5, 10, 5, "conv4"),
    "maml-5w1s-published": ("maml", {**_PUBLISHED, "inner_steps": 1}, 5, 1, 1, "conv4_strided"),
    "maml-5w5s-published": ("maml", {**_PUBLISHED, "inner_steps": 1}, 5, 5, 5, "conv4_strided"),
    "maml-20w1s-published": ("maml", {**_PUBLISHED, "inner_steps": 5}, 20, 1, 1, "conv4_strided"),
    "maml-20w5s-published": ("maml", {**_PUBLISHED, "inner_steps": 5}, 20, 5, 5, "conv4_strided"),
    "fomaml-20w1s-published": ("maml", {**_PUBLISHED, "inner_steps": 5, "first_order": True}, 20, 1, 1, "conv4_strided"),
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
    """Relative meta-gradient errors, float64 sensitivity and seconds per meta-iteration of one setting."""
    from ..algorithms import get_algorithm
    from ..models import build_model

    algo, options, ways, shots, queries, model_name = SETTINGS[name]
    batch, source = _tasks(root, ways, shots, queries, tasks, seed)
    torch.manual_seed(seed)
    model = build_model(model_name, out_features=ways, track_running_stats=False)
    cls = get_algorithm(algo)

    def build(channels_last: bool, dtype: torch.dtype) -> torch.nn.Module:
        return cls(copy.deepcopy(model).to(dtype), channels_last=channels_last, **options).to(dtype)

    exact = build(False, torch.float64)
    batch64 = batch.to(dtype=torch.float64)
    reference, _ = _meta_gradient(exact, batch64, seed)
    noise = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in exact.parameters():
            p.mul_(1 + 2.0**-24 * torch.randn(p.shape, generator=noise, dtype=p.dtype))
    perturbed, _ = _meta_gradient(exact, batch64, seed)
    sensitivity = ((perturbed - reference).norm() / reference.norm()).item()
    paths = {"nchw": build(False, torch.float32), "channels_last": build(True, torch.float32)}
    errors, times = {}, {k: [] for k in paths}
    for key, alg in paths.items():  # warm-up; its gradient is the one compared (same weights every time)
        g, _ = _meta_gradient(alg, batch, seed)
        errors[key] = ((g - reference).norm() / reference.norm()).item()
    for _ in range(iters):
        for key, alg in paths.items():
            times[key].append(_meta_gradient(alg, batch, seed)[1])
    return {
        "setting": name, "algorithm": algo, "options": options, "model": model_name, "ways": ways, "shots": shots, "queries": queries,
        "tasks": tasks, "data": source,
        "rel_error": errors, "sensitivity": sensitivity,
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
    print(f"{'setting':<22} {'NCHW error':>11} {'CL error':>10} {'f64 sens.':>10} {'NCHW s/it':>10} {'CL s/it':>9} {'CL speed-up':>12}")
    for r in rows:
        e, s = r["rel_error"], r["seconds"]
        print(f"{r['setting']:<22} {e['nchw']:>11.1e} {e['channels_last']:>10.1e} {r['sensitivity']:>10.1e} {s['nchw']:>10.3f} "
              f"{s['channels_last']:>9.3f} {s['nchw'] / s['channels_last']:>11.2f}x")
    print("\nBatchNorm forward (training mode), float32 vs float64, [N, 64, 28, 28]:")
    print(f"{'images':>6} {'NCHW error':>11} {'CL error':>10}")
    for r in record["batchnorm"]:
        print(f"{r['images']:>6} {r['nchw']:>11.1e} {r['channels_last']:>10.1e}")
    hw = record["hardware"]
    print(f"\n{hw['cpu']}, {hw['cores']} cores, torch {hw['torch']}; {record['date']}; {record['seconds']} s")
    return 0
