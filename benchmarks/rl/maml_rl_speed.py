"""Seconds of one MAML-RL meta-iteration against a baseline commit, in one process, and where they go.

    nice -n 10 python benchmarks/rl/maml_rl_speed.py [--baseline REV] [--reps 3] [--tasks 5] [--rollouts 5] [--full 1]

The baseline is ``src/metakit/algorithms/maml_rl.py`` at git revision ``--baseline``, read with
``git show`` and loaded beside the current package (its registration is left out). Three variants
run ``meta_backward`` on ``configs/maml_rl_navigation.yaml``: the baseline (its ``kl_hessian``
default, exact), the current code with ``kl_hessian=exact`` and with ``kl_hessian=gauss_newton``;
a fourth, ``current_exact_perturbed``, is the exact product with each result multiplied by
``1 + u z`` (``u`` the unit roundoff, ``z`` standard normal): its step's difference to the
baseline's is what rounding in the products alone does to the step.
Each variant is built from the same seed and draws the same roll-outs (the global generator is
reseeded before each meta-iteration), so their steps are compared: the relative difference of the
step (``-grad`` after ``meta_backward``) to the baseline's. The variants alternate: ``--reps``
rounds at a reduced size (``--tasks`` tasks per meta-batch, ``--rollouts`` inner and query
roll-outs per task; the paper's horizon and policy), then ``--full`` rounds at the config's size
(20 tasks, 20 + 20 roll-outs); ``--float64`` rounds at the reduced size run the three in float64,
where the steps show how close the two products are beyond float32 rounding. One torch thread.
The steps differ more than the products: ten CG iterations with the default damping of 1e-5
amplify a relative perturbation of the products (rounding) by orders of magnitude.

Each meta-iteration is split into: the roll-outs (policy forward passes and environment steps),
the advantages (returns and linear baseline fits), the products of the CG solve with the KL
Hessian (the 10 CG products and the one of the step size), the line search's loss/KL evaluations,
and the rest (the inner step and outer forward with their graph, the gradient of the surrogate,
building the product's graph). Every ratio is baseline seconds / current seconds (above 1: the
current code is faster). The record (``maml_rl_speed.json`` beside this script, one entry per run)
holds the run id, command, seconds, hardware (``metakit.bench.hardware()``), date, the config's
sha256, the baseline and the measured commit.
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
from metakit.runtime.builders import build_algorithm
from metakit.runtime.config import load_config

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RECORD = HERE / "maml_rl_speed.json"
CONFIG = REPO / "configs" / "maml_rl_navigation.yaml"
VARIANTS = ("baseline_exact", "current_exact", "current_gauss_newton", "current_exact_perturbed")
_REGISTRATION = '@register("maml_rl")\n'


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True, text=True).stdout


def load_baseline(rev: str) -> ModuleType:
    """The baseline's maml_rl module, without its registration (the name is the current code's)."""
    source = _git("show", f"{rev}:src/metakit/algorithms/maml_rl.py")
    if _REGISTRATION not in source:
        raise ValueError(f"the baseline's maml_rl.py at {rev} has no {_REGISTRATION.strip()!r} line; choose another --baseline")
    spec = importlib.util.spec_from_loader("metakit.algorithms._baseline_maml_rl", loader=None)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    module.__package__ = "metakit.algorithms"
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source.replace(_REGISTRATION, ""), "<baseline maml_rl>", "exec"), module.__dict__)
    return module


def _perturbed(product):
    """``product`` with every result multiplied by ``1 + u * z`` (``u`` the unit roundoff of its dtype, ``z``
    standard normal from a fixed generator): how much rounding in the products alone moves the step."""
    gen = torch.Generator().manual_seed(0)

    def run(v):
        out = product(v)
        z = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype)
        return out * (1 + torch.finfo(out.dtype).eps / 2 * z)
    return run


def _instrument(algo, perturb: bool = False) -> dict[str, float]:
    """Wrap the algorithm's pieces to add their seconds into the returned dict (per meta-iteration);
    with ``perturb``, the KL products are :func:`_perturbed`."""
    split = {"rollouts": 0.0, "advantages": 0.0, "kl_products": 0.0, "line_search": 0.0}

    def timed(fn, key):
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                split[key] += time.perf_counter() - start
        return run

    algo.rollout = timed(algo.rollout, "rollouts")
    algo._samples = timed(algo._samples, "advantages")
    for name in ("kl_hessian_product", "kl_fisher_product"):
        build = getattr(algo, name)
        wrap = _perturbed if perturb else (lambda f: f)
        setattr(algo, name, lambda *a, _build=build, _wrap=wrap, **k: timed(_wrap(_build(*a, **k)), "kl_products"))
    objective = algo.outer_objective

    def outer_objective(*args, **kwargs):
        return (timed(objective, "line_search") if not kwargs.get("train") else objective)(*args, **kwargs)

    algo.outer_objective = outer_objective
    return split


def _build(variant: str, config, context, baseline: ModuleType):
    torch.manual_seed(config.run.seed)
    algo = build_algorithm(config, context)
    options = dict(config.algorithm.options)
    options.pop("kl_hessian", None)  # the variant names the product; the baseline's default is the exact one
    if variant == "baseline_exact":
        algo = baseline.MAMLRL.from_config(algo.model, context, **options)
    else:
        algo.kl_hessian = variant.removeprefix("current_").removesuffix("_perturbed")
    return algo


def measure(size: str, tasks: int, rollouts: int, rounds: int, baseline: ModuleType, dtype: torch.dtype = torch.float32) -> dict:
    overrides = [f"train.meta_batch={tasks}", f"train.shots={rollouts}", f"train.queries={rollouts}", "run.num_threads=1"]
    config = load_config(CONFIG, overrides)
    context = config.family.context(None, None)
    sampler = config.family.train_sampler(None, ways=None, shots=config.train.shots, queries=config.train.queries, seed=0)
    batches = [sampler.sample(config.train.meta_batch) for _ in range(rounds)]
    algos = {v: _build(v, config, context, baseline).to(dtype) for v in VARIANTS}
    splits = {v: _instrument(a, perturb=v.endswith("_perturbed")) for v, a in algos.items()}
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for r, batch in enumerate(batches):
        steps = {}
        for v in VARIANTS:
            algo = algos[v]
            for p in algo.parameters():
                p.grad = None
            for key in splits[v]:
                splits[v][key] = 0.0
            torch.manual_seed(1000 + r)  # the same roll-outs for every variant
            start = time.perf_counter()
            metrics = algo.meta_backward(batch)
            seconds = time.perf_counter() - start
            steps[v] = torch.cat([p.grad.reshape(-1) for p in algo.parameters()]).double()
            split = dict(splits[v])
            split["rest"] = seconds - sum(split.values())
            runs[v].append({"seconds": seconds, "split": split, "step_fraction": metrics["step_fraction"],
                            "kl": metrics["kl"]})
        ref = steps["baseline_exact"]
        for v in VARIANTS[1:]:
            runs[v][-1]["step_relative_difference"] = float((steps[v] - ref).norm() / ref.norm().clamp(min=1e-30))
    out = {"size": size, "dtype": str(dtype).removeprefix("torch."), "tasks": tasks, "rollouts": rollouts, "rounds": rounds, "runs": runs}
    base = [x["seconds"] for x in runs["baseline_exact"]]
    for v in VARIANTS[1:3]:
        out[f"ratio_median_{v}"] = statistics.median(b / x["seconds"] for b, x in zip(base, runs[v]))
    out["seconds_median"] = {v: statistics.median(x["seconds"] for x in runs[v]) for v in VARIANTS}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", default="0532ac1", help="git revision of the baseline code (default: %(default)s)")
    p.add_argument("--reps", type=int, default=3, help="rounds at the reduced size")
    p.add_argument("--tasks", type=int, default=5, help="tasks per meta-batch at the reduced size")
    p.add_argument("--rollouts", type=int, default=5, help="inner and query roll-outs per task at the reduced size")
    p.add_argument("--float64", type=int, default=1, help="rounds at the reduced size in float64 (how close the steps are)")
    p.add_argument("--full", type=int, default=1, help="rounds at the config's full size")
    args = p.parse_args()
    for name in ("reps", "tasks", "rollouts"):
        if getattr(args, name) < 1:
            p.error(f"--{name}={getattr(args, name)}: give at least 1")
    for name in ("full", "float64"):
        if getattr(args, name) < 0:
            p.error(f"--{name}={getattr(args, name)}: give 0 or more rounds")
    try:
        baseline_commit = _git("rev-parse", "--verify", "--quiet", f"{args.baseline}^{{commit}}").strip()
        baseline = load_baseline(baseline_commit)
    except subprocess.CalledProcessError:
        p.error(f"--baseline {args.baseline!r} names no commit with src/metakit/algorithms/maml_rl.py; give a later commit")
    except ValueError as err:
        p.error(f"--baseline {args.baseline!r}: {err}")
    torch.set_num_threads(1)
    start = time.perf_counter()
    results = [measure("reduced", args.tasks, args.rollouts, args.reps, baseline)]
    if args.float64:
        results.append(measure("reduced", args.tasks, args.rollouts, args.float64, baseline, torch.float64))
    if args.full:
        full = load_config(CONFIG)
        results.append(measure("full", full.train.meta_batch, full.train.shots, args.full, baseline))
    entry = {
        "run_id": uuid.uuid4().hex[:12],
        "command": " ".join(["python benchmarks/rl/maml_rl_speed.py", *sys.argv[1:]]),
        "seconds": round(time.perf_counter() - start, 1),
        "hardware": {**hardware(), "threads": 1},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": str(CONFIG.relative_to(REPO)),
        "config_sha256": hashlib.sha256(CONFIG.read_bytes()).hexdigest(),
        "baseline_commit": baseline_commit,
        "commit": _git("rev-parse", "HEAD").strip(),
        "uncommitted_changes": bool(_git("status", "--porcelain", "--", "src", "benchmarks/rl/maml_rl_speed.py").strip()),
        "results": results,
    }
    entries = json.loads(RECORD.read_text()) if RECORD.exists() else []
    entries.append(entry)
    RECORD.write_text(json.dumps(entries, indent=1) + "\n")
    print(json.dumps({k: entry[k] for k in ("run_id", "seconds")}))
    for r in results:
        print(r["size"], r["dtype"], r["seconds_median"],
              {v: [x.get("step_relative_difference") for x in r["runs"][v]] for v in VARIANTS[2:]}, {k: v for k, v in r.items() if k.startswith("ratio")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
