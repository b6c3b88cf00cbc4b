"""The generic meta-training loop.

One loop for every algorithm; it never looks at which algorithm it runs::

    for step in 1 .. train.steps:
        batch   = sampler.sample(train.meta_batch)        # an EpisodeBatch
        optimizer.zero_grad()
        metrics = algorithm.meta_backward(batch)          # leaves the meta-gradient in p.grad
        stop if a metric or the gradient norm is NaN/inf  # before the parameters are touched
        clip the gradient norm (optim.grad_clip)          # optional
        optimizer.step(); scheduler.step()
        every run.log_every steps:        log the means of the metrics since the last log line
        every eval.val_every steps (and at the end): evaluate on the fixed validation episodes,
                                          keep the best checkpoint (by the metric's direction);
                                          with train.patience P, stop (checkpointed) once P
                                          validations in a row were no better than the best
        every run.checkpoint_every steps (and at the end, and on Ctrl-C): write a checkpoint

``meta_backward`` is the algorithm's whole say in the update: gradient methods back-propagate
a loss (the default), MAML back-propagates task by task, Reptile writes its update direction
into ``.grad``. Any ``torch.optim`` optimizer then applies it.

Resuming: a step checkpoint holds the model, optimizer, schedule, step, the Python / NumPy /
torch RNG states, the sampler's state, the best validation result, the count of validations
since it (``train.patience``) and the partial log averages. A run resumed from it (in the same
deterministic mode and thread count) replays exactly the steps an uninterrupted run takes: the
final parameters are bitwise equal.

Failures: a non-finite loss (any metric) or gradient norm raises :class:`NonFiniteLossError`
naming the step and the metric, before the optimizer step; an update that makes any state
non-finite -- a parameter, a buffer (BatchNorm running statistics...) or the optimizer's state
(Adam's moments) -- raises it too, naming the tensor, before that step's checkpoint is written;
so do non-finite predictions on the validation episodes. So the checkpoints on disk -- all
written after finite steps with finite state -- stay good, and the error names the newest one.
A new run writes its initial state as ``step-00000000`` before its first step, so there is
always a checkpoint to name and to resume from. A run whose gradient norm stays exactly 0 for
:data:`COLLAPSE_STEPS` steps has stopped learning (collapsed): that is reported on the stream
and in ``summary.json`` (``"warning"``). ``SIGINT`` (Ctrl-C) and ``SIGTERM`` finish the current
step, write a checkpoint and return with ``interrupted=True``; a second Ctrl-C aborts at once.

Resuming a run folder that recorded progress but has no checkpoint left to restore (all
deleted, or set aside as corrupt) is refused with :class:`NoCheckpointError` instead of silently
starting again from step 0; ``restart=True`` (``metakit train --resume RUN_DIR --restart``) allows it.
"""

from __future__ import annotations

import json
import contextlib
import copy
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TextIO

import numpy as np
import torch
from tqdm.auto import tqdm

from ..algorithms import Algorithm, BuildContext
from .builders import build_optimizer, build_scheduler, lr_of, trainable_parameters
from .checkpoint import CheckpointManager
from .config import Config, RunConfig
from .evaluation import NonFiniteOutputError
from .logging import MetricsLogger, read_metrics
from .run import CHECKPOINT_DIR, CONFIG_FILE, METRICS_FILE, context_record, lock_run_dir, write_summary

__all__ = [
    "Trainer",
    "TrainResult",
    "NonFiniteLossError",
    "NoCheckpointError",
    "COLLAPSE_STEPS",
    "train",
    "torch_settings",
    "seed_everything",
    "tune_allocator",
]

#: consecutive steps with a gradient norm of exactly 0 after which a run is reported as collapsed
COLLAPSE_STEPS = 20


class NonFiniteLossError(ArithmeticError):
    """Training diverged: a metric, the gradient norm, the state or the validation predictions became NaN/inf.

    Attributes:
        step: the step at which it happened (no checkpoint of it was written).
        metric: the metric's name (``"loss"``, ``"grad_norm"``...), or with ``in_parameters`` the
            name of the tensor the update made non-finite (``"validation"`` for the predictions).
        value: its value (for a tensor: its first non-finite element).
        checkpoint: the newest checkpoint on disk (all written before this step), or ``None``.
        in_parameters: ``True`` if the update was applied and made the state (or the validation
            predictions) non-finite, ``False`` if a metric or the gradient was non-finite and the
            update was not applied.
        kind: with ``in_parameters``, what became non-finite: ``"parameter"``, ``"buffer"``,
            ``"optimizer state"`` or ``"validation"``.
    """

    def __init__(
        self,
        step: int,
        metric: str,
        value: float,
        checkpoint: Path | None,
        run_dir: Path,
        *,
        in_parameters: bool = False,
        kind: str = "parameter",
        detail: str = "",
    ) -> None:
        self.step, self.metric, self.value, self.checkpoint = step, metric, value, checkpoint
        self.in_parameters, self.kind = in_parameters, kind
        where = (
            f"the last good checkpoint is {checkpoint}"
            if checkpoint is not None
            else "no checkpoint was written before it"
        )
        if kind == "validation":
            what = f"the predictions on the validation episodes are not finite ({detail}); training stopped without saving this step"
        elif in_parameters:
            what = f"the update made {kind} {metric!r} {value} (not finite); training stopped without saving it"
        else:
            what = f"{metric} is {value} (not finite); training stopped before applying this update"
        fix = "Start a new run with a lower optim.lr (for inner-loop methods also a lower algorithm.inner_lr)"
        if checkpoint is not None:
            fix += (
                f"; resuming from that checkpoint with gradient clipping (metakit train --resume {run_dir} "
                "optim.grad_clip=1.0) bounds only the outer update and helps only when the gradient norm grew before this step"
            )
        super().__init__(f"step {step}: {what}, {where}. {fix}")


class NoCheckpointError(ValueError):
    """A resume found no checkpoint to restore in a run folder that recorded progress."""


@dataclass
class TrainResult:
    """What a training run ended with.

    Attributes:
        run_dir: the run folder.
        step: the last completed step.
        steps: the target number of steps (``train.steps``).
        status: ``"finished"``, ``"stopped_early"`` (``train.patience`` validations in a row brought no
            better result; a resume with a larger or no patience continues), ``"interrupted"``
            (Ctrl-C / SIGTERM; resumable) or ``"failed"``.
        best: the best validation record (``step``, ``metric``, its mean under its name,
            ``ci95``, ``episodes``, ``higher_is_better``), or ``None`` without validation.
        last_val: the latest validation record, or ``None``.
        checkpoint: the newest step checkpoint written, or ``None``.
        best_checkpoint: the best checkpoint file, or ``None``.
        elapsed: training wall time in seconds (over all resumes).
        steps_per_s: mean speed of the training steps of this call of ``fit`` (validation
            excluded; a resumed run counts only its own steps).
    """

    run_dir: Path
    step: int
    steps: int
    status: str
    best: dict[str, Any] | None = None
    last_val: dict[str, Any] | None = None
    checkpoint: Path | None = None
    best_checkpoint: Path | None = None
    elapsed: float = 0.0
    steps_per_s: float | None = None

    @property
    def interrupted(self) -> bool:
        return self.status == "interrupted"

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "step": self.step,
            "steps": self.steps,
            "best": self.best,
            "last_val": self.last_val,
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "best_checkpoint": str(self.best_checkpoint) if self.best_checkpoint else None,
            "elapsed": round(self.elapsed, 3),
            "steps_per_s": self.steps_per_s,
        }


# -- global torch settings and RNG -----------------------------------------------------------------
@contextlib.contextmanager
def torch_settings(run: RunConfig) -> Iterator[None]:
    """Apply ``run.num_threads`` and ``run.deterministic`` for the duration of a run, then restore."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        if run.num_threads:
            torch.set_num_threads(run.num_threads)
        if run.deterministic:
            torch.use_deterministic_algorithms(True)
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def tune_allocator() -> bool:
    """Keep freed buffers below 32 MiB in the process heap (glibc ``mallopt``); ``True`` if applied.

    By default glibc returns large freed buffers to the OS and maps them again at the next
    step, so every training step pays hundreds of thousands of page faults for the same
    activation buffers. Raising ``M_MMAP_THRESHOLD`` to 32 MiB and ``M_TRIM_THRESHOLD`` to 2 GiB
    keeps them in the heap (the process keeps its peak memory instead of giving it back).
    Results are unchanged: only where buffers live changes. It applies to the whole process,
    once, so nothing in metakit calls it by default: call it yourself, or pass ``metakit
    --tune-allocator`` (``metakit bench maml`` applies it unless ``--no-tune-allocator``).
    A no-op (``False``) where the C library has no ``mallopt`` (not glibc).

    Measured effect on ProtoNet Conv4 training steps (one thread, 2-core machine with load
    average 4.4-7.5, 3 interleaved runs each): 20-way 1-shot 5-query, CPU 0.17 s per step tuned
    against 0.18 s untuned (page faults 2k against 9k per step); 60-way 1-shot 15-query, 2.05 s
    against 2.06 s (455k against 482k page faults: its activations exceed 32 MiB).
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED is None:
        _ALLOCATOR_TUNED = False
        if sys.platform.startswith("linux"):
            import ctypes

            try:
                libc = ctypes.CDLL("libc.so.6")
            except OSError:  # musl or another C library: nothing to tune
                libc = None
            if libc is not None and hasattr(libc, "mallopt"):
                m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
                _ALLOCATOR_TUNED = bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(
                    libc.mallopt(m_trim_threshold, (1 << 31) - 1)
                )
    return _ALLOCATOR_TUNED


_ALLOCATOR_TUNED: bool | None = None


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch's default generator."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])


# -- Ctrl-C ----------------------------------------------------------------------------------------
class _StopRequests:
    """SIGINT/SIGTERM set a flag checked between steps; a second SIGINT aborts immediately."""

    def __init__(self, stream: TextIO) -> None:
        self.stop = False
        self.signal_name = ""
        self._stream = stream
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.stop and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.stop = True
        self.signal_name = signal.Signals(signum).name
        print(
            f"\nmetakit: {self.signal_name} received: stopping after this step and writing a checkpoint "
            "(Ctrl-C again to abort without one)",
            file=self._stream,
            flush=True,
        )

    def __enter__(self) -> "_StopRequests":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)


# -- the trainer -----------------------------------------------------------------------------------
class Trainer:
    """Meta-trains ``algorithm`` on episodes from ``sampler`` (see the module docstring).

    Args:
        config: the run's (resolved) config; ``train``, ``eval``, ``optim`` and ``run`` are used.
        run_dir: the run folder (checkpoints, metrics and TensorBoard events go there).
        algorithm: any registered :class:`~metakit.algorithms.Algorithm`.
        sampler: the task source: ``sample(meta_batch) -> EpisodeBatch``, ``state_dict()`` and
            ``load_state_dict()``.
        val_episodes: fixed validation episodes (iterable of ``EpisodeBatch``, iterated once per
            validation), or ``None`` to not validate.
        context: the :class:`BuildContext` the model was built with (stored in checkpoints so that
            :func:`~metakit.runtime.load_run` can rebuild it).
        data_meta: plain metadata of the training data stored in checkpoints (e.g. the image
            preprocessing).
        evaluate: the evaluation function (default :func:`metakit.runtime.evaluation.evaluate`).
        stream: where the progress bar and messages go (default stderr).
    """

    def __init__(
        self,
        config: Config,
        run_dir: str | os.PathLike[str],
        algorithm: Algorithm,
        sampler: Any,
        val_episodes: Iterable[Any] | None = None,
        *,
        context: BuildContext | None = None,
        data_meta: dict[str, Any] | None = None,
        evaluate: Callable[..., Any] | None = None,
        stream: TextIO | None = None,
    ) -> None:
        if not isinstance(algorithm, Algorithm):
            raise TypeError(f"algorithm must be a metakit Algorithm, got {type(algorithm).__name__}")
        self.config = config
        self.run_dir = Path(run_dir)
        self.algorithm = algorithm
        self.sampler = sampler
        self.val_episodes = val_episodes if config.validates else None
        self.context = context or BuildContext(ways=config.train.ways, example_shape=())
        self.data_meta = _plain_meta(data_meta or {})
        if evaluate is None:
            from .evaluation import evaluate as evaluate_fn

            evaluate = evaluate_fn
        self._evaluate = evaluate
        self.stream = stream or sys.stderr
        self.params = trainable_parameters(algorithm)
        self._param_names = [n for n, p in algorithm.named_parameters() if p.requires_grad]
        self.optimizer = build_optimizer(config.optim, self.params)
        self.scheduler = build_scheduler(config.optim, self.optimizer, config.train.steps)
        self.checkpoints = CheckpointManager(self.run_dir / CHECKPOINT_DIR, keep_last=config.run.keep_last)
        # state that checkpoints carry besides the model/optimizer/schedule/sampler/RNG
        self.step = 0
        self.best: dict[str, Any] | None = None
        self.last_val: dict[str, Any] | None = None
        self.elapsed = 0.0
        self._sums: dict[str, float] = {}
        self._count = 0
        self._interval_time = 0.0
        self._last_checkpoint: Path | None = None
        self._zero_grad_steps = 0  # consecutive steps whose gradient norm was exactly 0
        self._stale_validations = 0  # validations since the best one (train.patience)
        self._restored = False  # restore() ran (fit(resume=True) does not run it twice)

    # -- checkpoint state ---------------------------------------------------------------------
    def _common_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "config": self.config.to_yaml(),
            "context": context_record(self.context),
            "data_meta": self.data_meta,
            "algorithm": self.config.algorithm.name,
            "versions": {"metakit": _version(), "torch": torch.__version__},
        }

    def state_dict(self) -> dict[str, Any]:
        """The full training state (what a step checkpoint holds)."""
        return {
            "kind": "step",
            **self._common_state(),
            "model": self.algorithm.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "sampler": self.sampler.state_dict(),
            "rng": _rng_state(),
            "trainer": {
                "best": self.best,
                "last_val": self.last_val,
                "elapsed": self.elapsed,
                "sums": dict(self._sums),
                "count": self._count,
                "interval_time": self._interval_time,
                "zero_grad_steps": self._zero_grad_steps,
                "stale_validations": self._stale_validations,
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (model, optimizer, schedule, sampler, RNG, counters)."""
        self.algorithm.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            if state.get("scheduler") is None:
                raise ValueError("the checkpoint has no schedule state but optim.schedule is set")
            self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        t = state["trainer"]
        self.best, self.last_val = t["best"], t["last_val"]
        self.elapsed = float(t["elapsed"])
        self._sums = {k: float(v) for k, v in t["sums"].items()}
        self._count = int(t["count"])
        self._interval_time = float(t["interval_time"])
        self._zero_grad_steps = int(t.get("zero_grad_steps", 0))  # absent in checkpoints of older versions
        self.step = int(state["step"])
        if "stale_validations" in t:
            self._stale_validations = int(t["stale_validations"])
        else:  # a checkpoint of an older version: count them in the log
            self._stale_validations = self._validations_since_best_in_log()
        _set_rng_state(state["rng"])

    @staticmethod
    def _accept(state: dict[str, Any]) -> None:
        """Reject a readable file that is not a full step checkpoint of the trainer."""
        missing = [k for k in ("model", "optimizer", "sampler", "rng", "trainer", "step") if k not in state]
        if state.get("kind") != "step" or missing:
            raise ValueError(f"not a step checkpoint of the metakit trainer (kind={state.get('kind')!r}, missing {missing})")

    def restore(self, *, restart: bool = False) -> Path | None:
        """Continue from the newest step checkpoint that can be restored (``fit(resume=True)`` calls it).

        A checkpoint that is unreadable, not a trainer checkpoint, or that :meth:`load_state_dict`
        fails on is reported on the stream by name, renamed to ``<name>.corrupt`` and the
        previous one is tried; a failed attempt leaves the trainer as it was. Returns the
        checkpoint restored, or ``None`` (the run starts from step 0: a folder that recorded no
        training step, or ``restart=True``).

        Raises:
            NoCheckpointError: no checkpoint can be restored but the folder recorded training
                steps (``metrics.jsonl``) or held checkpoints, and ``restart`` is not set.
            ValueError: ``train.steps`` is below the step of the checkpoint (the trainer is left as it was).
        """
        self.checkpoints.remove_temporary()
        initial = copy.deepcopy(self.state_dict())

        def accept(state: dict[str, Any]) -> None:
            self._accept(state)
            try:
                self.load_state_dict(state)
            except Exception as e:
                self.load_state_dict(initial)
                raise ValueError(f"it cannot be restored ({type(e).__name__}: {e})") from None

        had_checkpoints = bool(self.checkpoints.steps())
        found = self.checkpoints.load_latest(stream=self.stream, accept=accept, set_aside=True)
        if found is None:
            recorded = self._recorded_step()
            set_aside = sorted(self.checkpoints.folder.glob("step-*.corrupt")) if self.checkpoints.folder.is_dir() else []
            if (recorded or had_checkpoints or set_aside) and not restart:
                lost = f"recorded training up to step {recorded} ({METRICS_FILE}) but " if recorded else ""
                aside = f" ({len(set_aside)} set aside as unreadable: {set_aside[-1].name}...)" if set_aside else ""
                raise NoCheckpointError(
                    f"run folder {str(self.run_dir)!r} {lost}has no checkpoint left to resume from{aside}; a resume "
                    f"would start again from step 0. To start it again from step 0 (its metrics are replaced): "
                    f"metakit train --resume {self.run_dir} --restart"
                )
            self._restored = True
            if recorded or had_checkpoints or set_aside:
                print(f"metakit: warning: restarting {self.run_dir} from step 0 (no checkpoint to resume from)", file=self.stream)
            else:
                print(f"metakit: {self.run_dir} has no checkpoint yet; starting from step 0", file=self.stream)
            return None
        self._restored = True
        total = self.config.train.steps
        _, path = found
        if self.step > total:
            step = self.step
            self.load_state_dict(initial)
            self._restored = False
            raise ValueError(
                f"train.steps={total} but the checkpoint {path.name} is at step {step}; "
                f"resume with train.steps >= {step}"
            )
        self._last_checkpoint = path
        print(f"metakit: resuming {self.run_dir} from {path.name} (step {self.step})", file=self.stream)
        return path

    def _validations_since_best_in_log(self) -> int:
        """The validations ``metrics.jsonl`` records after the best one, up to the current step."""
        if self.best is None:
            return 0
        try:
            records = read_metrics(self.run_dir / METRICS_FILE, split="val")
        except FileNotFoundError:
            return 0
        return len({int(r["step"]) for r in records if self.best["step"] < int(r["step"]) <= self.step})

    def _recorded_step(self) -> int:
        """The last training step recorded in the folder's ``metrics.jsonl`` (0 if none)."""
        try:
            records = read_metrics(self.run_dir / METRICS_FILE)
        except FileNotFoundError:
            return 0
        return max((int(r.get("step", 0)) for r in records), default=0)

    def _save(self) -> Path:
        path = self.checkpoints.save(self.step, self.state_dict())
        self._last_checkpoint = path
        return path

    # -- the loop -------------------------------------------------------------------------------
    def fit(self, resume: bool = False, *, restart: bool = False) -> TrainResult:
        """Train to ``train.steps``, or until ``train.patience`` validations in a row are no better than
        the best (continuing from the newest readable checkpoint if ``resume``; ``restart`` as in
        :meth:`restore`)."""
        cfg = self.config
        total = cfg.train.steps
        resume_step: int | None = None
        if resume:
            if not self._restored:
                self.restore(restart=restart)
            resume_step = self.step
        else:
            self.checkpoints.remove_temporary()
        logger = MetricsLogger(self.run_dir, resume_step=resume_step)
        bar = tqdm(
            total=total,
            initial=min(self.step, total),
            disable=not cfg.run.progress,
            unit="step",
            dynamic_ncols=True,
            file=self.stream,
            desc="train",
        )
        status = "finished"
        call_steps, call_time = 0, 0.0
        elapsed0, t_call = self.elapsed, time.perf_counter()
        ema_eps: float | None = None
        try:
            if self.step == 0 and self._last_checkpoint is None:
                self._save()  # the initial state: a run that fails early still has a checkpoint to name
            with torch_settings(cfg.run), _StopRequests(self.stream) as stop:
                self.algorithm.train()
                if self.step < total and self._patience_ran_out():
                    status = "stopped_early"
                    bar.write(f"metakit: {self._stopped_early_text()}; nothing to train (raise train.patience or "
                              "set it to null to continue)", file=self.stream)
                while self.step < total and status != "stopped_early":
                    step = self.step + 1
                    t0 = time.perf_counter()
                    metrics = self._train_step(step)
                    dt = time.perf_counter() - t0
                    self.step = step
                    self.elapsed = elapsed0 + time.perf_counter() - t_call
                    self._interval_time += dt
                    call_steps += 1
                    call_time += dt
                    for k, v in metrics.items():
                        self._sums[k] = self._sums.get(k, 0.0) + v
                    self._count += 1
                    eps = cfg.train.meta_batch / max(dt, 1e-9)
                    ema_eps = eps if ema_eps is None else 0.9 * ema_eps + 0.1 * eps
                    bar.set_postfix(_postfix(self._sums, self._count, ema_eps, cfg.family.metric), refresh=False)
                    bar.update(1)
                    if step % cfg.run.log_every == 0 or step == total:
                        self._log_train(logger, step)
                    if self.val_episodes is not None and (
                        (cfg.eval.val_every and step % cfg.eval.val_every == 0) or step == total
                    ):
                        self._validate(logger, bar, step)
                        self.elapsed = elapsed0 + time.perf_counter() - t_call
                        if step < total and self._patience_ran_out():
                            status = "stopped_early"
                    if step % cfg.run.checkpoint_every == 0 or step == total or stop.stop or status == "stopped_early":
                        self._save()
                        logger.flush()
                    if status == "stopped_early":
                        bar.write(f"metakit: {self._stopped_early_text()}; checkpoint {self._last_checkpoint}",
                                  file=self.stream)
                        break
                    if stop.stop:
                        status = "interrupted"
                        bar.write(
                            f"metakit: stopped at step {step}; checkpoint {self._last_checkpoint}. "
                            f"Continue with: metakit train --resume {self.run_dir}",
                            file=self.stream,
                        )
                        break
        except BaseException as e:
            # NaN/inf, an error of the algorithm, or a second Ctrl-C: the checkpoints on disk stay as they are
            status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
            error = str(e) if isinstance(e, NonFiniteLossError) else f"{type(e).__name__}: {e}"
            self._finish(logger, bar, status, call_steps, call_time, error=error)
            raise
        return self._finish(logger, bar, status, call_steps, call_time)

    def _train_step(self, step: int) -> dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        batch = self.sampler.sample(self.config.train.meta_batch)
        raw = self.algorithm.meta_backward(batch)
        if not isinstance(raw, dict):
            raise TypeError(
                f"{type(self.algorithm).__name__}.meta_backward returned {type(raw).__name__}; it must return "
                "a dict of metric floats (at least 'loss')"
            )
        metrics = {str(k): float(v) for k, v in raw.items()}
        for k, v in metrics.items():
            if not math.isfinite(v):
                raise NonFiniteLossError(step, k, v, self._last_checkpoint, self.run_dir)
        grads = [p.grad for p in self.params if p.grad is not None]
        if grads:
            norm = float(torch.nn.utils.get_total_norm(grads))
            if not math.isfinite(norm):
                raise NonFiniteLossError(step, "grad_norm", norm, self._last_checkpoint, self.run_dir)
            metrics["grad_norm"] = norm
            self._zero_grad_steps = self._zero_grad_steps + 1 if norm == 0.0 else 0
            if self._zero_grad_steps == COLLAPSE_STEPS:
                print(f"metakit: warning: {self._collapse_warning(step)}", file=self.stream, flush=True)
            clip = self.config.optim.grad_clip
            if clip is not None:
                torch.nn.utils.clip_grads_with_norm_(self.params, clip, torch.tensor(norm))
        self.optimizer.step()
        self._check_state(step)
        if self.scheduler is not None:
            self.scheduler.step()
        return metrics

    def _state_tensors(self) -> list[tuple[str, str, torch.Tensor]]:
        """``(kind, name, tensor)`` of everything a step checkpoint carries that an update changes."""
        out = [("parameter", n, p) for n, p in zip(self._param_names, self.params)]
        out += [("buffer", n, b) for n, b in self.algorithm.named_buffers() if b.is_floating_point()]
        for n, p in zip(self._param_names, self.params):
            for k, v in self.optimizer.state.get(p, {}).items():
                if isinstance(v, torch.Tensor) and v.is_floating_point():
                    out.append(("optimizer state", f"{k} of {n}", v))
        return out

    def _check_state(self, step: int) -> None:
        """Stop if the step made a parameter, a buffer or the optimizer's state NaN/inf (before its checkpoint)."""
        tensors = self._state_tensors()
        finite = torch.stack([torch.isfinite(t).all() for _, _, t in tensors])
        if bool(finite.all()):
            return
        kind, name, t = tensors[int((~finite).nonzero()[0])]
        t = t.detach()
        value = float(t[~torch.isfinite(t)][0])
        raise NonFiniteLossError(step, name, value, self._last_checkpoint, self.run_dir, in_parameters=True, kind=kind)

    def _patience_ran_out(self) -> bool:
        patience = self.config.train.patience
        return patience is not None and self._stale_validations >= patience

    def _stopped_early_text(self) -> str:
        best = self.best or {}
        return (
            f"stopped early at step {self.step} of {self.config.train.steps}: no better validation "
            f"{best.get('metric', 'result')} in the {self._stale_validations} validation"
            f"{'' if self._stale_validations == 1 else 's'} since the best, at step {best.get('step')} "
            f"(train.patience={self.config.train.patience})"
        )

    def _collapse_warning(self, last_step: int) -> str:
        return (
            f"the gradient norm has been exactly 0 for {self._zero_grad_steps} steps (steps "
            f"{last_step + 1 - self._zero_grad_steps}-{last_step}): "
            "the model no longer learns (collapsed, e.g. dead ReLUs or saturated outputs after too large a step); "
            "start a new run with a lower optim.lr"
        )

    def _log_train(self, logger: MetricsLogger, step: int) -> None:
        if not self._count:
            return
        rec = {k: v / self._count for k, v in self._sums.items()}
        rec["lr"] = lr_of(self.optimizer)
        if self._interval_time > 0:
            rec["episodes_per_s"] = self._count * self.config.train.meta_batch / self._interval_time
        logger.log(step, "train", rec, elapsed=self.elapsed)
        self._sums, self._count, self._interval_time = {}, 0, 0.0

    def _validate(self, logger: MetricsLogger, bar: Any, step: int) -> None:
        try:
            result = self._evaluate(self.algorithm, self.val_episodes)
        except NonFiniteOutputError as e:
            raise NonFiniteLossError(
                step, "validation", math.nan, self._last_checkpoint, self.run_dir, in_parameters=True, kind="validation",
                detail=str(e).split(";")[0],
            ) from None
        if not math.isfinite(result.mean):
            raise NonFiniteLossError(
                step, "validation", result.mean, self._last_checkpoint, self.run_dir, in_parameters=True, kind="validation",
                detail=f"validation {result.metric} is {result.mean}",
            )
        self.algorithm.train()
        rec = {"step": step, **result.to_dict()}
        better = self.best is None or (
            result.mean > self.best[result.metric] if result.higher_is_better else result.mean < self.best[result.metric]
        )
        rec["is_best"] = bool(better)
        self.last_val = rec
        self._stale_validations = 0 if better else self._stale_validations + 1
        logger.log(step, "val", {k: v for k, v in rec.items() if k != "step"}, elapsed=self.elapsed)
        if better:
            self.best = rec
            self.checkpoints.save_best(
                {"kind": "best", **self._common_state(), "model": self.algorithm.state_dict(), "val": rec}
            )
        if self.config.run.progress:
            mark = " (best)" if better else ""
            bar.write(f"step {step}: val {result}{mark}", file=self.stream)

    def _finish(
        self,
        logger: MetricsLogger,
        bar: Any,
        status: str,
        call_steps: int,
        call_time: float,
        error: str | None = None,
    ) -> TrainResult:
        bar.close()
        logger.close()
        result = TrainResult(
            run_dir=self.run_dir,
            step=self.step,
            steps=self.config.train.steps,
            status=status,
            best=self.best,
            last_val=self.last_val,
            checkpoint=self._last_checkpoint,
            best_checkpoint=self.checkpoints.best_path if self.checkpoints.best_path.exists() else None,
            elapsed=self.elapsed,
            steps_per_s=(call_steps / call_time) if call_time > 0 else None,
        )
        summary = result.to_dict()
        summary["algorithm"] = self.config.algorithm.name
        summary["dataset"] = self.config.family.record()["dataset"]
        summary["episodes_per_s"] = (
            result.steps_per_s * self.config.train.meta_batch if result.steps_per_s is not None else None
        )
        if error:
            summary["error"] = error
        if self._zero_grad_steps >= COLLAPSE_STEPS:
            summary["warning"] = self._collapse_warning(self.step)
        if status == "stopped_early":
            summary["stopped_early"] = {
                "patience": self.config.train.patience,
                "validations_since_best": self._stale_validations,
                "best_step": (self.best or {}).get("step"),
                "message": self._stopped_early_text(),
            }
        write_summary(self.run_dir, summary)
        return result


def _postfix(sums: dict[str, float], count: int, eps: float | None, metric: str = "") -> dict[str, str]:
    out = {}
    if count:
        if "loss" in sums:
            out["loss"] = f"{sums['loss'] / count:.4g}"
        if "accuracy" in sums:
            out["acc"] = f"{100 * sums['accuracy'] / count:.1f}%"
        if metric and metric != "accuracy" and metric in sums:  # the family's metric, when the algorithm reports it (e.g. return)
            out[metric] = f"{sums[metric] / count:.4g}"
    if eps is not None:
        out["ep/s"] = f"{eps:.1f}"
    return out


def _plain_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """Metadata reduced to JSON-able values (what checkpoints may hold)."""
    import json

    return json.loads(json.dumps(meta, default=str))


def _version() -> str:
    from .. import __version__

    return __version__


# -- from a config ---------------------------------------------------------------------------------
def train(
    config: Config,
    run_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    restart: bool = False,
    stream: TextIO | None = None,
) -> TrainResult:
    """Build everything from ``config`` and train in ``run_dir``.

    A new run (``resume=False``) needs a folder without a ``config.yaml``; it writes the
    resolved config there first. ``resume=True`` continues the run in ``run_dir`` (whose
    ``config.yaml`` must match ``config`` except for :data:`~metakit.runtime.run.RESUMABLE_KEYS`);
    ``restart`` lets it start again from step 0 when no checkpoint is left (see :meth:`Trainer.restore`).
    The folder is locked for the whole call (:func:`~metakit.runtime.run.lock_run_dir`): a second
    process training in it gets :class:`~metakit.runtime.run.RunFolderInUseError` naming this one's PID.
    """
    run_dir = Path(run_dir)
    with lock_run_dir(run_dir):
        return _train_locked(config, run_dir, resume=resume, restart=restart, stream=stream or sys.stderr)


def _train_locked(config: Config, run_dir: Path, *, resume: bool, restart: bool, stream: TextIO) -> TrainResult:
    from .builders import build_algorithm, build_context, build_dataset, build_episodes, build_sampler, resolve_config
    from .evaluation import evaluate as evaluate_tasks
    from .run import check_resume_changes, read_run_config

    config_path = run_dir / CONFIG_FILE
    if not resume and config_path.exists():
        raise FileExistsError(
            f"{str(run_dir)!r} already holds a run ({CONFIG_FILE}); continue it with --resume {run_dir} "
            "or choose another --out folder"
        )
    with torch_settings(config.run):
        seed_everything(config.run.seed)
        train_set = build_dataset(config, "train", progress=config.run.progress)
        sampler = build_sampler(config, train_set)
        context = build_context(config, train_set, sampler)
        config = resolve_config(config, context)
        if resume:
            # the saved config is read with the modules of this resume (run.imports may name a moved file)
            imports = "run.imports=" + json.dumps(list(config.run.imports))
            check_resume_changes(resolve_config(read_run_config(run_dir, [imports]), context), config)
        val = None
        if config.validates:
            val = build_episodes(config, "val", episodes=config.eval.val_episodes)
        algorithm = build_algorithm(config, context)
        trainer = Trainer(
            config,
            run_dir,
            algorithm,
            sampler,
            val,
            context=context,
            data_meta=config.family.data_meta(train_set),
            evaluate=partial(evaluate_tasks, family=config.family),
            stream=stream,
        )
        if resume:
            trainer.restore(restart=restart)  # a refused resume (train.steps too low) leaves config.yaml as it was
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_config(config_path, config)
        return trainer.fit(resume=resume)


def _write_config(path: Path, config: Config) -> None:
    from .checkpoint import atomic_write_bytes

    header = "# effective config of this run, written by metakit train (load_run rebuilds the model from it)\n"
    atomic_write_bytes(path, (header + config.to_yaml()).encode())
