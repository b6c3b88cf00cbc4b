"""Speed, FLOPs and memory of one MAML meta-iteration on the Omniglot Conv4.

Work: ``Conv4(out_features=5, track_running_stats=False)`` on 1x28x28 inputs,
5-way 1-shot with 15 queries per class (5 support + 75 query images per task), meta-batch 32,
inner learning rate 0.4, then one Adam step on the meta-gradient. Settings: second-order with
1 inner step (``so1``), first-order with 1 step (``fo1``), second-order with 5 steps (``so5``),
and ``so5`` with the inner steps recomputed in the backward pass (``so5ck``, metakit only).
Memory of the recompute option where the support set is large: ONE 20-way 5-shot task (100
support images, 5 queries per class, inner lr 0.1) with 10 second-order steps, without and with
recomputation (``so10-20w5s``, ``so10ck-20w5s``; metakit only, at most 3 timed iterations).
Ten second-order steps of 0.1 on random images are chaotic in float32: metakit's meta-gradient
is then far from the float64 one (measured 0.38 relative; the float64 reference is the plain
loop's, and the float32 loop and higher are not run in these settings), so read those rows for
time and memory only.

Implementations, all from the same initial weights on the same (random, fixed-seed) batch:

* ``metakit``: :class:`metakit.algorithms.MAML` ``.meta_backward`` (per-task backward, NCHW,
  the default) -- what ``metakit train`` runs;
* ``metakit-cl``: the same with ``channels_last=True`` (faster in some settings, with a far less
  accurate float32 meta-gradient: ``metakit bench precision``);
* ``metakit-classic``: the same engine on the Conv4 with the classic block order (shows the
  model's lever, below);
* ``loop``: a plain per-task ``torch.autograd.grad(create_graph=True)`` loop with
  ``torch.func.functional_call`` (what most hand-written MAML code does);
* ``higher``: ``higher.innerloop_ctx`` with an SGD inner optimizer (when ``higher`` is
  installed: ``pip install higher``).

The model: metakit's :class:`~metakit.models.Conv4` pools before the ReLU, which computes the
same function with the same gradients as the classic conv-BatchNorm-ReLU-pool block with less
work (see its docstring). The peers (``loop``, ``higher``) and ``metakit-classic`` run the
classic order, as their users write the Conv4: the same parameters under the same names, the
same weights, only the two parameter-free layers of each block swapped.

Method: every implementation is built in one process and timed *interleaved* (iteration ``r``
of each in turn), so a change of machine load hits all of them alike; the median over
``--iters`` iterations after ``--warmup`` discarded ones is reported, with the process CPU time
per iteration. Ratios are of medians measured in the same run. The meta-gradients of the first
iteration (identical weights and batch) are compared with a float64 computation of the same
meta-gradient and with metakit's (max absolute difference over all parameters, relative to the
largest entry of the float64 gradient): every float32 implementation differs from the exact
value by rounding, amplified by the BatchNorm over five support images, so ``err vs f64`` is
the yardstick. FLOPs of one iteration are
counted with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix products
only; it ignores ``groups`` in conv backward, which Conv4 does not use). Achieved GFLOP/s is
compared with two peaks measured in the same run: a 2048x2048 fp32 matmul and the fastest
Conv4 convolution (forward, 75 images, both memory formats). Peak memory: each implementation
and setting runs two iterations in a fresh subprocess; its peak resident set (``VmHWM``) is
reported, with its increase over the peak after building the model and batch.

The benchmark keeps freed buffers in the heap (glibc ``mallopt``,
:func:`metakit.runtime.trainer.tune_allocator`) for every implementation alike; pass
``--no-tune-allocator`` to measure without it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DESCRIPTION = "seconds, FLOPs and peak memory of a MAML meta-iteration (Conv4, 5-way 1-shot, meta-batch 32) vs a plain loop and higher"

_MAIN = {"ways": 5, "shots": 1, "queries": 15, "inner_lr": 0.4, "meta_batch": None, "impls": None}
# the memory settings: one 20-way 5-shot task (100 support images) with 10 second-order steps;
# memory grows with the support graph of every step unless the steps are recomputed
_BIG_SUPPORT = {"ways": 20, "shots": 5, "queries": 5, "inner_lr": 0.1, "meta_batch": 1, "impls": ("metakit",)}
SETTINGS: dict[str, dict[str, Any]] = {
    "so1": {**_MAIN, "steps": 1, "first_order": False, "checkpoint": False, "label": "2nd order, 1 step"},
    "fo1": {**_MAIN, "steps": 1, "first_order": True, "checkpoint": False, "label": "1st order, 1 step"},
    "so5": {**_MAIN, "steps": 5, "first_order": False, "checkpoint": False, "label": "2nd order, 5 steps"},
    "so5ck": {**_MAIN, "steps": 5, "first_order": False, "checkpoint": True, "impls": ("metakit", "metakit-cl"),
              "label": "2nd order, 5 steps, recompute"},
    "so10-20w5s": {**_BIG_SUPPORT, "steps": 10, "first_order": False, "checkpoint": False,
                   "label": "2nd order, 10 steps, ONE 20-way 5-shot task (5 queries/class)"},
    "so10ck-20w5s": {**_BIG_SUPPORT, "steps": 10, "first_order": False, "checkpoint": True,
                     "label": "2nd order, 10 steps, ONE 20-way 5-shot task, recompute"},
}
IMPLS = ("metakit", "metakit-cl", "metakit-classic", "loop", "higher")
WAYS, SHOTS, QUERIES, INNER_LR = 5, 1, 15, 0.4  # the main settings' work


def _have_higher() -> bool:
    try:
        import higher  # noqa: F401
    except ImportError:
        return False
    return True


def make_batch(
    meta_batch: int, seed: int = 0, ways: int = WAYS, shots: int = SHOTS, queries: int = QUERIES
) -> Any:
    """A fixed random batch of 1x28x28 'images' (5-way 1-shot 15-query by default; timing does not depend on values)."""
    from ..tasks.episode import EpisodeBatch

    g = torch.Generator().manual_seed(seed)
    sy = torch.arange(ways).repeat_interleave(shots).expand(meta_batch, -1).contiguous()
    qy = torch.arange(ways).repeat_interleave(queries).expand(meta_batch, -1).contiguous()
    return EpisodeBatch(
        torch.rand(meta_batch, ways * shots, 1, 28, 28, generator=g),
        sy,
        torch.rand(meta_batch, ways * queries, 1, 28, 28, generator=g),
        qy,
        ways,
    )


def setting_batch(setting: dict[str, Any], meta_batch: int) -> Any:
    """The batch of a setting (its own meta-batch size when it fixes one)."""
    mb = setting.get("meta_batch") or meta_batch
    return make_batch(mb, ways=setting.get("ways", WAYS), shots=setting.get("shots", SHOTS),
                      queries=setting.get("queries", QUERIES))


def make_model(seed: int = 0, hidden: int = 64, ways: int = WAYS, classic: bool = False) -> nn.Module:
    """The benchmark's Conv4; ``classic``: the same weights with each block in the classic order
    conv, BatchNorm, ReLU, max-pool (metakit's Conv4 pools before the ReLU)."""
    from ..models import Conv4

    torch.manual_seed(seed)
    model = Conv4(out_features=ways, hidden=hidden, track_running_stats=False)
    if classic:
        layers = list(model.features)
        for i in range(0, len(layers), 4):
            conv, bn, pool, relu = layers[i : i + 4]
            if not (isinstance(pool, nn.MaxPool2d) and isinstance(relu, nn.ReLU)):
                raise RuntimeError(f"Conv4's block {i // 4} is not conv, BatchNorm, max-pool, ReLU; update make_model")
            layers[i + 2], layers[i + 3] = relu, pool
        model.features = nn.Sequential(*layers)  # parameter names unchanged: features.{0,1,4,5,...}
    return model


# -- the implementations: each returns (module whose parameters are meta-learned, meta_grad(batch)) --
def _impl_metakit(model: nn.Module, setting: dict[str, Any], channels_last: bool) -> tuple[nn.Module, Callable]:
    from ..algorithms import MAML

    algo = MAML(
        model,
        inner_lr=setting.get("inner_lr", INNER_LR),
        inner_steps=setting["steps"],
        first_order=setting["first_order"],
        checkpoint=setting["checkpoint"],
        channels_last=channels_last,
    )
    return model, algo.meta_backward


def _impl_loop(model: nn.Module, setting: dict[str, Any]) -> tuple[nn.Module, Callable]:
    from torch.func import functional_call

    steps, second, lr = setting["steps"], not setting["first_order"], setting.get("inner_lr", INNER_LR)

    def meta_grad(batch: Any) -> None:
        params = dict(model.named_parameters())
        b = batch.num_tasks
        for i in range(b):
            p = params
            for _ in range(steps):
                loss = F.cross_entropy(functional_call(model, p, (batch.support_x[i],)), batch.support_y[i])
                grads = torch.autograd.grad(loss, list(p.values()), create_graph=second)
                p = {n: v - lr * g for (n, v), g in zip(p.items(), grads)}
            (F.cross_entropy(functional_call(model, p, (batch.query_x[i],)), batch.query_y[i]) / b).backward()

    return model, meta_grad


def _impl_higher(model: nn.Module, setting: dict[str, Any]) -> tuple[nn.Module, Callable]:
    import higher

    inner_opt = torch.optim.SGD(model.parameters(), lr=setting.get("inner_lr", INNER_LR))
    steps = setting["steps"]
    # first order the way higher documents it: keep tracking the fast weights, detach the inner
    # gradients (track_higher_grads=False would cut the query loss off from the initial weights)
    detach = (lambda grads: [g.detach() for g in grads]) if setting["first_order"] else None

    def meta_grad(batch: Any) -> None:
        b = batch.num_tasks
        for i in range(b):
            with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (fmodel, diffopt):
                for _ in range(steps):
                    loss = F.cross_entropy(fmodel(batch.support_x[i]), batch.support_y[i])
                    diffopt.step(loss, grad_callback=detach)
                (F.cross_entropy(fmodel(batch.query_x[i]), batch.query_y[i]) / b).backward()

    return model, meta_grad


def build(impl: str, setting: dict[str, Any], seed: int = 0, hidden: int = 64) -> tuple[nn.Module, Callable, torch.optim.Optimizer]:
    """The model, its meta-gradient function and its Adam outer optimizer."""
    classic = impl in ("metakit-classic", "loop", "higher")
    model = make_model(seed, hidden, setting.get("ways", WAYS), classic=classic)
    if impl in ("metakit", "metakit-classic"):
        model, fn = _impl_metakit(model, setting, False)
    elif impl == "metakit-cl":
        model, fn = _impl_metakit(model, setting, True)
    elif impl == "loop":
        model, fn = _impl_loop(model, setting)
    elif impl == "higher":
        model, fn = _impl_higher(model, setting)
    else:
        raise ValueError(f"impl={impl!r} is not known; use one of {', '.join(IMPLS)}")
    return model, fn, torch.optim.Adam(model.parameters(), lr=1e-3)


def meta_iteration(model: nn.Module, fn: Callable, opt: torch.optim.Optimizer, batch: Any) -> None:
    opt.zero_grad(set_to_none=True)
    fn(batch)
    opt.step()


def first_gradient(model: nn.Module, fn: Callable, batch: Any) -> list[Tensor]:
    model.zero_grad(set_to_none=True)
    fn(batch)
    grads = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return grads


def reference_gradient(setting: dict[str, Any], batch: Any, hidden: int) -> list[Tensor]:
    """The meta-gradient in float64 (plain loop; checkpointing changes nothing): the yardstick
    for every float32 implementation's rounding error."""
    model, fn, _ = build("loop", {**setting, "checkpoint": False}, hidden=hidden)
    model.double()
    return first_gradient(model, fn, batch.to(dtype=torch.float64))


def count_flops(model: nn.Module, fn: Callable, batch: Any) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        model.zero_grad(set_to_none=True)
        fn(batch)
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


# -- peaks --------------------------------------------------------------------------------------
def _best_time(fn: Callable[[], Any], reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def matmul_gflops(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / _best_time(lambda: a @ b, reps) / 1e9


def conv_peak_gflops(images: int = WAYS * QUERIES, hidden: int = 64, reps: int = 10) -> tuple[float, str]:
    """Fastest forward conv of Conv4's four layers on ``images`` inputs (GFLOP/s, which one)."""
    best, which = 0.0, ""
    for layer, (cin, side) in enumerate([(1, 28), (hidden, 14), (hidden, 7), (hidden, 3)], start=1):
        w = torch.randn(hidden, cin, 3, 3)
        flops = 2 * images * hidden * cin * 9 * side * side
        for fmt in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(images, cin, side, side).contiguous(memory_format=fmt)
            wf = w.contiguous(memory_format=fmt)
            rate = flops / _best_time(lambda: F.conv2d(x, wf, padding=1), reps) / 1e9
            if rate > best:
                name = "channels_last" if fmt == torch.channels_last else "NCHW"
                best, which = rate, f"conv{layer} {cin}->{hidden} at {side}x{side}, {images} images, {name}"
    return best, which


# -- memory (fresh subprocess) ---------------------------------------------------------------------
def _peak_rss_mb() -> float:
    """This process's peak resident set (MiB): ``VmHWM`` of /proc/self/status, which starts afresh
    at ``exec`` (``ru_maxrss`` does not: it carries the parent's peak over into a subprocess)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # other systems


def child(impl: str, setting_name: str, meta_batch: int, hidden: int, tune: bool, threads: int | None) -> dict[str, Any]:
    """Run two iterations in this (fresh) process; report peak RSS before and after."""
    if threads:
        torch.set_num_threads(threads)
    if tune:
        from ..runtime.trainer import tune_allocator

        tune_allocator()
    batch = setting_batch(SETTINGS[setting_name], meta_batch)
    model, fn, opt = build(impl, SETTINGS[setting_name], hidden=hidden)
    base = _peak_rss_mb()
    for _ in range(2):
        meta_iteration(model, fn, opt, batch)
    return {"baseline_mb": base, "peak_mb": _peak_rss_mb()}


def measure_memory(impl: str, setting_name: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "metakit.bench.maml", "--_child", impl, setting_name,
        str(args.meta_batch), str(args.hidden), "1" if args.tune_allocator else "0", str(args.threads or 0),
    ]
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the benchmark ---------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--settings", default=",".join(SETTINGS), help=f"comma list of {', '.join(SETTINGS)} (default: all)"
    )
    parser.add_argument(
        "--impls", default=",".join(IMPLS),
        help=f"comma list of {', '.join(IMPLS)} (higher is skipped when not installed)",
    )
    parser.add_argument("--iters", type=int, default=20, help="timed iterations per implementation (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="discarded iterations first (default 3)")
    parser.add_argument("--meta-batch", type=int, default=32, help="tasks per meta-iteration (default 32)")
    parser.add_argument("--hidden", type=int, default=64, help="Conv4 filters (default 64)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--no-peaks", action="store_true", help="skip measuring the matmul and conv peak rates")
    parser.add_argument("--no-tune-allocator", dest="tune_allocator", action="store_false",
                        help="do not keep freed buffers in the heap (glibc mallopt) -- metakit train does")
    parser.add_argument("--json", action="store_true", help="print one JSON record instead of the table")
    parser.add_argument("--_child", nargs=6, help=argparse.SUPPRESS)


def _check(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    for s in settings:
        if s not in SETTINGS:
            raise ValueError(f"--settings: {s!r} is not known; use a comma list of {', '.join(SETTINGS)}")
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    for i in impls:
        if i not in IMPLS:
            raise ValueError(f"--impls: {i!r} is not known; use a comma list of {', '.join(IMPLS)}")
    if "higher" in impls and not _have_higher():
        impls.remove("higher")
    for name in ("iters", "meta_batch", "hidden"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    if args.warmup < 0:
        raise ValueError(f"--warmup={args.warmup} must be >= 0")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads={args.threads} must be >= 1")
    return settings, impls


def bench_setting(name: str, impls: list[str], args: argparse.Namespace) -> dict[str, Any]:
    setting = SETTINGS[name]
    batch = setting_batch(setting, args.meta_batch)
    if setting["impls"] is not None:
        impls = [i for i in impls if i in setting["impls"]]
    iters = args.iters if setting["meta_batch"] is None else min(args.iters, 3)
    built = {i: build(i, setting, hidden=args.hidden) for i in impls}
    exact = reference_gradient(setting, batch, args.hidden)
    scale = max(float(g.abs().max()) for g in exact)
    ref = first_gradient(built[impls[0]][0], built[impls[0]][1], batch)
    rows: dict[str, dict[str, Any]] = {}
    for i in impls:
        model, fn, _ = built[i]
        g = ref if i == impls[0] else first_gradient(model, fn, batch)
        rows[i] = {
            "grad_diff_rel": max(float((a - b).abs().max()) for a, b in zip(g, ref)) / scale,
            "grad_err_f64_rel": max(float((a.double() - b).abs().max()) for a, b in zip(g, exact)) / scale,
            "wall": [],
            "cpu": [],
        }
    flops = count_flops(built[impls[0]][0], built[impls[0]][1], batch)
    for _ in range(args.warmup):
        for i in impls:
            meta_iteration(*built[i], batch)
    for _ in range(iters):
        for i in impls:
            t, c = time.perf_counter(), time.process_time()
            meta_iteration(*built[i], batch)
            rows[i]["wall"].append(time.perf_counter() - t)
            rows[i]["cpu"].append(time.process_time() - c)
    for i in impls:
        r = rows[i]
        r["median_s"] = statistics.median(r["wall"])
        r["min_s"] = min(r["wall"])
        r["cpu_s"] = statistics.median(r["cpu"])
        r["gflops_per_s"] = flops / r["median_s"] / 1e9
        if not args.no_memory:
            r["memory"] = measure_memory(i, name, args)
    return {"setting": name, "label": setting["label"], "flops": flops, "meta_batch": batch.num_tasks,
            "iters": iters, "impls": rows}


def run(args: argparse.Namespace) -> int:
    if args._child:
        impl, setting, mb, hidden, tune, threads = args._child
        print(json.dumps(child(impl, setting, int(mb), int(hidden), tune == "1", int(threads) or None)))
        return 0
    settings, impls = _check(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tune_allocator:
        from ..runtime.trainer import tune_allocator

        tune_allocator()
    t0 = time.time()
    peaks = not args.no_peaks
    mm0 = matmul_gflops() if peaks else math.nan
    conv0, conv_which = conv_peak_gflops(hidden=args.hidden) if peaks else (math.nan, "")
    results = [bench_setting(s, impls, args) for s in settings]
    mm1 = matmul_gflops() if peaks else math.nan
    conv1, conv_which1 = conv_peak_gflops(hidden=args.hidden) if peaks else (math.nan, "")
    record = {
        "benchmark": "maml",
        "work": f"Conv4 1x28x28, {WAYS}-way {SHOTS}-shot {QUERIES} queries, meta-batch {args.meta_batch}, inner lr {INNER_LR}, Adam step",
        "iters": args.iters,
        "warmup": args.warmup,
        "meta_batch": args.meta_batch,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "tune_allocator": args.tune_allocator,
        "matmul_gflops": max(mm0, mm1) if peaks else None,
        "conv_peak_gflops": max(conv0, conv1) if peaks else None,
        "conv_peak": (conv_which if conv0 >= conv1 else conv_which1) if peaks else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
        "seconds": round(time.time() - t0, 1),
        "settings": results,
    }
    if args.json:
        print(json.dumps(record, indent=2, default=float))
        return 0
    _print_table(record)
    return 0


def _print_table(rec: dict[str, Any]) -> None:
    print(f"MAML meta-iteration: {rec['work']}")
    print(
        f"torch {rec['torch']}, {rec['threads']} threads, OMP_WAIT_POLICY={rec['omp_wait_policy']}, "
        f"allocator tuned: {rec['tune_allocator']}, load average {', '.join(f'{v:.1f}' for v in rec['load_average'])}"
    )
    mm, cp = rec["matmul_gflops"] or math.nan, rec["conv_peak_gflops"] or math.nan
    if rec["matmul_gflops"] is not None:
        print(
            f"peaks measured in this run (best of 10, at the start and the end): 2048x2048 fp32 matmul {mm:.0f} "
            f"GFLOP/s; best Conv4 conv {cp:.0f} GFLOP/s ({rec['conv_peak']})"
        )
    print(f"median of {rec['iters']} interleaved iterations after {rec['warmup']} warm-up ones")
    for s in rec["settings"]:
        extra = "" if s["meta_batch"] == rec["meta_batch"] else f", meta-batch {s['meta_batch']}, {s['iters']} timed iterations"
        print(f"\n{s['label']} ({s['setting']}{extra}): {s['flops'] / 1e9:.1f} GFLOP per iteration")
        rows = s["impls"]
        base = {k: rows[k]["median_s"] for k in ("higher", "loop") if k in rows}
        head = f"  {'implementation':<16} {'s/iter':>7} {'CPU s':>6} {'GFLOP/s':>8} {'%matmul':>8} {'%conv':>6}"
        head += "".join(f" {'x vs ' + k:>10}" for k in base) + f" {'err vs f64':>10} {'vs metakit':>10} {'peak MB':>8} {'+MB':>6}"
        print(head)
        for name, r in rows.items():
            line = (
                f"  {name:<16} {r['median_s']:>7.3f} {r['cpu_s']:>6.2f} {r['gflops_per_s']:>8.1f} "
                f"{100 * r['gflops_per_s'] / mm:>7.0f}% {100 * r['gflops_per_s'] / cp:>5.0f}%"
            )
            line += "".join(f" {v / r['median_s']:>10.2f}" for v in base.values())
            line += f" {r['grad_err_f64_rel']:>10.1e} {r['grad_diff_rel']:>10.1e}"
            mem = r.get("memory")
            if mem and "peak_mb" in mem:
                line += f" {mem['peak_mb']:>8.0f} {mem['peak_mb'] - mem['baseline_mb']:>6.0f}"
            elif mem:
                line += f"  memory: {mem.get('error')}"
            print(line)
    print(
        "\n(x vs P: P's median time / this one's, >1 = faster than P. err vs f64: max |g - g_float64| over all "
        "parameters / max |g_float64|; vs metakit: the same against metakit's float32 gradient. +MB: peak RSS "
        f"minus RSS before the first iteration.) Took {rec['seconds']:.0f} s."
    )


if __name__ == "__main__":  # the peak-memory subprocess: python -m metakit.bench.maml --_child ...
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
