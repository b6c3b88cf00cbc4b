"""Episode-sampling throughput and dataset load times.

Measures how many episodes per second :class:`~metakit.tasks.EpisodeSampler` produces
(``sample(batch)`` end to end: class and example choice, gather, ``uint8 -> float32``) for
the standard Omniglot settings (5-way 1-shot and 20-way 5-shot, 15 queries per class) on the
vinyals ``train`` split, and how long loading that split takes with an empty cache folder
(cold: decode and resize every PNG) and with the cache filled (warm).

Method: per setting, ``warmup`` seconds of sampling are discarded, then ``repeats`` timed runs
of about ``seconds / repeats`` each; a run's rate is (batches x batch size) / wall time, and the
median run is reported with the min and max. When the Omniglot archives are not available the
sampling is measured on synthetic ``uint8`` data of the same shape (4,112 classes x 20 images
of 1x28x28), and the output says so. The archives are looked for in ``--root``, else
``$METAKIT_OMNIGLOT_ROOT``, else ``../shared/data/omniglot`` relative to the current folder.

Intra-op threads matter on small shared machines: see ``--threads`` and the ``OMP_WAIT_POLICY``
note in ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch

from ..datasets.base import ClassIndexedDataset
from ..tasks.sampler import EpisodeSampler

DESCRIPTION = "episodes/s of EpisodeSampler (Omniglot 5-way 1-shot, 20-way 5-shot) and cold/warm dataset load times"

ROOT_ENV = "METAKIT_OMNIGLOT_ROOT"
DEFAULT_ROOT = Path("..") / "shared" / "data" / "omniglot"  # relative to the current folder
DEFAULT_SETTINGS = [(5, 1, 15), (20, 5, 15)]
TARGET_EPISODES_PER_S = 5000.0
# shape of the Omniglot vinyals train split: 1,028 characters x 4 rotations, 20 images each
SYNTHETIC_CLASSES, SYNTHETIC_PER_CLASS, SYNTHETIC_SIZE = 4112, 20, 28


def synthetic_dataset(
    classes: int = SYNTHETIC_CLASSES, per_class: int = SYNTHETIC_PER_CLASS, size: int = SYNTHETIC_SIZE, seed: int = 0
) -> ClassIndexedDataset:
    """Random ``uint8 [classes * per_class, 1, size, size]`` images, ``per_class`` per class."""
    g = torch.Generator().manual_seed(seed)
    data = torch.empty(classes * per_class, 1, size, size, dtype=torch.uint8).random_(0, 256, generator=g)
    offsets = torch.arange(classes + 1, dtype=torch.int64) * per_class
    return ClassIndexedDataset(data, offsets, name="synthetic", meta={"synthetic": True})


def measure_sampler(
    dataset: ClassIndexedDataset,
    ways: int,
    shots: int,
    queries: int,
    batch: int = 32,
    seconds: float = 5.0,
    repeats: int = 5,
    warmup: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Episodes per second of ``EpisodeSampler(dataset, ways, shots, queries).sample(batch)``.

    Like a training loop, each new batch is drawn while the previous one is still alive (so the
    allocator cannot simply hand back the buffers it just freed). Besides wall-clock rates, the
    process CPU time per batch is recorded: on a busy machine the wall-clock rate falls while
    the CPU time per batch stays put.
    """
    sampler = EpisodeSampler(dataset, ways, shots, queries, seed=seed)
    clock, cpu = time.perf_counter, time.process_time
    start = clock()
    previous = None
    while True:  # warm-up (at least one batch)
        previous = sampler.sample(batch)
        if clock() - start >= warmup:
            break
    rates, ms, cpu_ms = [], [], []
    per_repeat = seconds / repeats
    for _ in range(repeats):
        n = 0
        start, cpu_start = clock(), cpu()
        while True:
            current = sampler.sample(batch)
            previous = current  # the old batch is freed only now, as in `batch = sampler.sample(...)`
            n += 1
            elapsed = clock() - start
            if elapsed >= per_repeat:
                break
        cpu_elapsed = cpu() - cpu_start
        rates.append(n * batch / elapsed)
        ms.append(1000.0 * elapsed / n)
        cpu_ms.append(1000.0 * cpu_elapsed / n)
    del previous
    return {
        "ways": ways,
        "shots": shots,
        "queries": queries,
        "batch": batch,
        "episodes_per_s": statistics.median(rates),
        "episodes_per_s_min": min(rates),
        "episodes_per_s_max": max(rates),
        "ms_per_batch": statistics.median(ms),
        "cpu_ms_per_batch": statistics.median(cpu_ms),
        "repeats": rates,
    }


def time_loads(
    load: Callable[[Path], ClassIndexedDataset], warm_repeats: int = 3
) -> tuple[dict[str, Any], ClassIndexedDataset]:
    """Cold and warm load times of ``load(cache_dir)``.

    Cold: one load into a fresh, empty cache folder. Warm: the median of ``warm_repeats``
    loads from the folder the cold load filled. The folder is deleted afterwards. Returns the
    timings and the last dataset loaded.
    """
    cache = Path(tempfile.mkdtemp(prefix="metakit-bench-cache-"))
    try:
        start = time.perf_counter()
        dataset = load(cache)
        cold = time.perf_counter() - start
        warm = []
        for _ in range(warm_repeats):
            start = time.perf_counter()
            dataset = load(cache)
            warm.append(time.perf_counter() - start)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return {"cold_s": cold, "warm_s": statistics.median(warm), "warm_s_all": warm}, dataset


def _omniglot_loader(root: Path) -> Callable[[Path], ClassIndexedDataset]:
    from ..datasets.omniglot import Omniglot

    def load(cache_dir: Path) -> ClassIndexedDataset:
        return Omniglot(root, protocol="vinyals", split="train", cache_dir=cache_dir, progress=False)

    return load


def default_root() -> Path:
    """Where the Omniglot archives are looked for without ``--root``: ``$METAKIT_OMNIGLOT_ROOT``
    if set (as in the test suite), else :data:`DEFAULT_ROOT`."""
    env = os.environ.get(ROOT_ENV)
    return Path(env) if env else DEFAULT_ROOT


def _has_archives(root: Path) -> bool:
    return all(
        (root / f"{a}.zip").is_file() or (root / a).is_dir() for a in ("images_background", "images_evaluation")
    )


def _parse_setting(text: str) -> tuple[int, int, int]:
    try:
        ways, shots, queries = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--setting {text!r} must be WAYS,SHOTS,QUERIES, e.g. 5,1,15"
        ) from None
    return ways, shots, queries


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=_positive_int, default=32, help="episodes per sample() call (default 32)")
    parser.add_argument(
        "--seconds",
        type=_positive_float,
        default=5.0,
        help="timed seconds per setting, split over the repeats (default 5)",
    )
    parser.add_argument(
        "--repeats", type=_positive_int, default=5, help="timed runs per setting; the median is reported (default 5)"
    )
    parser.add_argument(
        "--warmup", type=_positive_float, default=1.0, help="untimed seconds per setting first (default 1)"
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help=(
            f"Omniglot archives folder (default: ${ROOT_ENV} if set, else {DEFAULT_ROOT} relative to the current "
            "folder; synthetic data of the same shape if the archives are absent there)"
        ),
    )
    parser.add_argument("--synthetic", action="store_true", help="use synthetic uint8 data, never Omniglot")
    parser.add_argument("--no-load", action="store_true", help="skip the cold/warm load timing")
    parser.add_argument(
        "--setting",
        type=_parse_setting,
        action="append",
        metavar="W,S,Q",
        help="ways,shots,queries to measure (repeatable; default 5,1,15 and 20,5,15)",
    )
    parser.add_argument("--threads", type=_positive_int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    settings = args.setting or DEFAULT_SETTINGS
    report: dict[str, Any] = {
        "benchmark": "sampler",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "metakit " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("metakit") else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "loadavg_before": list(os.getloadavg()),
    }

    dataset: ClassIndexedDataset | None = None
    load_times: dict[str, Any] | None = None
    reason = None
    if args.synthetic:
        reason = "--synthetic was given"
    else:
        root = args.root if args.root is not None else default_root()
        if not _has_archives(root):
            if args.root is not None:
                raise FileNotFoundError(
                    f"--root {str(root)!r} holds neither images_background.zip/images_evaluation.zip nor their "
                    "folders; point it at the Omniglot archives or pass --synthetic"
                )
            reason = f"no Omniglot archives under {root} (pass --root DIR or set ${ROOT_ENV})"
        else:
            load = _omniglot_loader(root)
            if args.no_load:
                dataset = load(Path(tempfile.gettempdir()) / "metakit-bench-cache")
            else:
                load_times, dataset = time_loads(load)
    if dataset is None:
        dataset = synthetic_dataset()
        report["data"] = {
            "source": "synthetic",
            "reason": reason,
            "classes": dataset.num_classes,
            "images": len(dataset),
            "shape": list(dataset.example_shape),
            "dtype": str(dataset.data.dtype).removeprefix("torch."),
        }
    else:
        report["data"] = {
            "source": "omniglot vinyals train",
            "root": str(root),
            "classes": dataset.num_classes,
            "images": len(dataset),
            "shape": list(dataset.example_shape),
            "dtype": str(dataset.data.dtype).removeprefix("torch."),
        }
    report["load"] = load_times
    report["method"] = {
        "batch": args.batch,
        "seconds": args.seconds,
        "repeats": args.repeats,
        "warmup": args.warmup,
    }

    results = []
    for ways, shots, queries in settings:
        results.append(
            measure_sampler(dataset, ways, shots, queries, args.batch, args.seconds, args.repeats, args.warmup)
        )
    report["results"] = results
    report["loadavg_after"] = list(os.getloadavg())
    report["target_episodes_per_s"] = TARGET_EPISODES_PER_S
    report["target_met"] = all(r["episodes_per_s"] >= TARGET_EPISODES_PER_S for r in results)

    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_format(report))
    return 0


def _format(report: dict[str, Any]) -> str:
    d = report["data"]
    m = report["method"]
    lines = [
        f"metakit bench sampler  {report['date']}  torch {report['torch']}, {report['threads']} intra-op thread(s) "
        f"of {report['cpus']} CPUs, OMP_WAIT_POLICY={report['omp_wait_policy'] or 'unset'}, "
        f"load average {report['loadavg_before'][0]:.2f}",
    ]
    if d["source"] == "synthetic":
        lines.append(
            f"data: SYNTHETIC {d['dtype']} {d['images']} x {d['shape']} ({d['classes']} classes) because "
            f"{d['reason']}"
        )
    else:
        lines.append(
            f"data: {d['source']} ({d['root']}): {d['classes']} classes, {d['images']} {d['dtype']} images {d['shape']}"
        )
    if report["load"] is not None:
        ld = report["load"]
        lines.append(
            f"load: cold {ld['cold_s']:.2f} s (empty cache folder), warm {ld['warm_s']:.3f} s "
            f"(median of {len(ld['warm_s_all'])})"
        )
    lines.append(
        f"sampling: batches of {m['batch']} episodes, median of {m['repeats']} runs over {m['seconds']:g} s "
        f"after {m['warmup']:g} s warm-up"
    )
    for r in report["results"]:
        name = f"{r['ways']}-way {r['shots']}-shot {r['queries']}-query"
        lines.append(
            f"  {name:<24} {r['episodes_per_s']:>10,.0f} episodes/s  (min {r['episodes_per_s_min']:,.0f}, "
            f"max {r['episodes_per_s_max']:,.0f}; {r['ms_per_batch']:.2f} ms per batch, "
            f"{r['cpu_ms_per_batch']:.2f} ms CPU)"
        )
    target = report["target_episodes_per_s"]
    lines.append(f"target {target:,.0f} episodes/s: {'met' if report['target_met'] else 'NOT met'} by every setting")
    return "\n".join(lines)
