"""Run folders: their layout, and loading a trained run back for evaluation and prediction.

A run folder (``metakit train ... --out RUN_DIR``; default ``runs/<config-name>-<timestamp>``)::

    RUN_DIR/
      config.yaml                 the effective, fully resolved config (what load_run rebuilds from)
      metrics.jsonl               one JSON object per log line (see metakit.runtime.logging)
      tb/                         TensorBoard event files (tensorboard --logdir RUN_DIR/tb)
      checkpoints/
        step-00001000.safetensors the last run.keep_last step checkpoints (full training state)
        best.safetensors          the weights with the best validation metric
      summary.json                status, steps, best validation result, wall time, speed
      .lock                       held (an OS lock) by the one process training in the folder

:func:`load_run` rebuilds the algorithm from ``config.yaml``, loads the weights of the best (or
last, or a given) checkpoint, and returns a :class:`LoadedRun` that also builds evaluation
episodes for any split, ways, shots and queries.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from ..algorithms import Algorithm, BuildContext
from ..datasets.base import ClassIndexedDataset
from .checkpoint import CheckpointError, CheckpointManager, atomic_write_bytes, load_checkpoint
from .config import Config, ConfigError, load_config

__all__ = [
    "CONFIG_FILE",
    "METRICS_FILE",
    "SUMMARY_FILE",
    "CHECKPOINT_DIR",
    "LOCK_FILE",
    "RunFolderInUseError",
    "lock_run_dir",
    "describe_os_error",
    "RESUMABLE_KEYS",
    "LoadedRun",
    "load_run",
    "read_run_config",
    "default_run_dir",
    "checkpoint_manager",
    "check_resume_changes",
    "context_record",
    "context_from_record",
    "write_summary",
]

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoints"
LOCK_FILE = ".lock"

#: config keys that may change when a run is resumed (the others would make the resumed run a
#: different experiment). ``optim.grad_clip`` changes the parameters from then on (a way out of
#: a non-finite loss); ``run.imports`` may point at a moved file of the user's own; the others change
#: only the length of the run and its bookkeeping.
RESUMABLE_KEYS = (
    "train.steps",
    "train.patience",
    "eval.val_every",
    "optim.grad_clip",
    "run.checkpoint_every",
    "run.keep_last",
    "run.log_every",
    "run.num_threads",
    "run.progress",
    "run.imports",
)


def default_run_dir(config_path: str | os.PathLike[str] | None, root: str | os.PathLike[str] = "runs") -> Path:
    """``runs/<config-name>-<YYYYmmdd-HHMMSS>`` (a numeric suffix avoids an existing folder)."""
    stem = Path(config_path).stem if config_path else "run"
    base = Path(root) / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


# -- one process per run folder ---------------------------------------------------------------------
_ERRNO_WORDS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "the file system is read-only",
    errno.ENOSPC: "the disk is full",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.ENAMETOOLONG: "the name is too long",
}


def describe_os_error(e: OSError) -> str:
    """The reason of an ``OSError`` in words (no errno number), e.g. ``"permission denied"``."""
    return _ERRNO_WORDS.get(e.errno or 0, (e.strerror or type(e).__name__).lower())


class RunFolderInUseError(FileExistsError):
    """Another live process holds the run folder's lock; ``owner`` is its record (``pid``, ``host``...)."""

    def __init__(self, run_dir: Path, owner: dict[str, Any]) -> None:
        self.run_dir, self.owner = run_dir, owner
        who = f"process {owner['pid']}" if owner.get("pid") else "another process"
        if owner.get("host") and owner.get("host") != socket.gethostname():
            who += f" on {owner['host']}"
        since = f", since {owner['started']}" if owner.get("started") else ""
        cmd = f" ({owner['command']})" if owner.get("command") else ""
        super().__init__(
            f"run folder {str(run_dir)!r} is in use by {who}{cmd}{since}: one process at a time trains in a run "
            f"folder. Wait for it to end (or stop it), or choose another --out folder"
        )


def _read_owner(fd: int, wait: float = 1.0) -> dict[str, Any]:
    """The owner record of a locked file; waits up to ``wait`` s for an owner that has just locked
    it to write its record (a record naming a process that no longer runs is from an earlier owner)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            owner = json.loads(os.read(fd, 4096).decode() or "{}")
        except (OSError, ValueError):
            owner = {}
        owner = owner if isinstance(owner, dict) else {}
        if _alive(owner.get("pid")) or time.monotonic() > deadline:
            return owner
        time.sleep(0.02)


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by another user
        return True
    return True


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def lock_run_dir(run_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Own ``run_dir`` for the duration of the ``with`` block: at most one process trains in a folder.

    The folder is created if needed, and ``RUN_DIR/.lock`` is locked with an OS lock (``flock``)
    that the kernel releases when the process ends in any way, SIGKILL included: a lock left by a
    killed process never blocks the next one. The file records the owner (PID, host, command,
    start time) for the error a second process gets. A folder this call created and that holds
    nothing else when the block ends (a start that failed early) is removed again.

    Raises:
        RunFolderInUseError: a live process holds the folder (the message names its PID).
        ValueError: ``run_dir`` is a file, or the folder cannot be created or written (the reason in words).
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"run folder {str(run_dir)!r} is a file, not a folder; choose another --out folder")
    created = not run_dir.exists()
    lock = run_dir / LOCK_FILE
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(10):
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            if not _try_lock(fd):
                owner = _read_owner(fd)
                os.close(fd)
                raise RunFolderInUseError(run_dir, owner)
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(lock))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the previous owner removed the file after we opened it: lock the new one
        else:  # pragma: no cover - only under a storm of competing starts
            raise RunFolderInUseError(run_dir, {})
    except RunFolderInUseError:
        raise
    except OSError as e:
        raise ValueError(
            f"cannot use {str(run_dir)!r} as a run folder: {describe_os_error(e)} ({e.filename or run_dir}); "
            "choose a folder you can write to (--out)"
        ) from None
    try:
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv))[:300],
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        data = json.dumps(record).encode()
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, data)  # then cut what is left of an earlier, longer record
        os.ftruncate(fd, len(data))
        yield run_dir
    finally:
        try:
            if created and {p.name for p in run_dir.iterdir()} <= {LOCK_FILE}:
                lock.unlink(missing_ok=True)  # removed while still locked: a waiting opener re-checks the inode
                run_dir.rmdir()
            else:
                os.ftruncate(fd, 0)
        except OSError:
            pass
        os.close(fd)  # releases the lock


def read_run_config(run_dir: str | os.PathLike[str], overrides: Iterable[str] = ()) -> Config:
    """The config of a run folder (``RUN_DIR/config.yaml``)."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not run_dir.exists():
        raise FileNotFoundError(f"run folder {str(run_dir)!r} does not exist")
    if not run_dir.is_dir():
        raise ValueError(
            f"run folder {str(run_dir)!r} is a file, not a folder; give the folder made by `metakit train` (--out)"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(run_dir)!r} has no {CONFIG_FILE}; is it a metakit run folder (made by `metakit train`)?"
        )
    return load_config(path, list(overrides))


def checkpoint_manager(run_dir: str | os.PathLike[str], config: Config) -> CheckpointManager:
    return CheckpointManager(Path(run_dir) / CHECKPOINT_DIR, keep_last=config.run.keep_last)


def _flat(d: dict[str, Any]) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, body in d.items() for k, v in body.items()}


def check_resume_changes(saved: Config, new: Config) -> None:
    """Raise :class:`ConfigError` if ``new`` changes a key a resumed run may not change."""
    a, b = _flat(saved.to_dict()), _flat(new.to_dict())
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUMABLE_KEYS)
    if changed:
        shown = ", ".join(f"{k} ({a.get(k)!r} -> {b.get(k)!r})" for k in changed[:5])
        raise ConfigError(
            f"cannot change {shown} when resuming: a resumed run must be the same experiment. "
            f"Keys that may change on resume: {', '.join(RESUMABLE_KEYS)}; start a new run for other changes"
        )
    if new.optim.schedule in ("cosine", "linear") and new.train.steps != saved.train.steps:
        raise ConfigError(
            f"cannot change train.steps ({saved.train.steps} -> {new.train.steps}) when resuming a run with "
            f"optim.schedule={new.optim.schedule}: the schedule's length is train.steps; start a new run instead"
        )


def write_summary(run_dir: str | os.PathLike[str], summary: dict[str, Any]) -> Path:
    path = Path(run_dir) / SUMMARY_FILE
    atomic_write_bytes(path, (json.dumps(summary, indent=2, default=str) + "\n").encode())
    return path


@dataclass
class LoadedRun:
    """A trained run, ready for evaluation and prediction.

    Attributes:
        run_dir: the run folder.
        config: its effective config.
        algorithm: the algorithm with the checkpoint's weights, in ``eval()`` mode.
        checkpoint: the checkpoint file the weights come from.
        kind: ``"best"`` or ``"step"``.
        step: the training step of the checkpoint.
        context: the :class:`~metakit.algorithms.BuildContext` the model was built with.
        val: the validation record of a best checkpoint (``metric``, its mean, ``ci95``...), else ``None``.
        data_meta: ``meta`` of the training dataset (e.g. ``preprocessing``: the arguments of
            :func:`metakit.datasets.preprocess_image` the model was trained with); ``{}`` for sinusoid.
    """

    run_dir: Path
    config: Config
    algorithm: Algorithm
    checkpoint: Path
    kind: str
    step: int
    context: BuildContext
    val: dict[str, Any] | None = None
    data_meta: dict[str, Any] = field(default_factory=dict)
    _datasets: dict[str, ClassIndexedDataset | None] = field(default_factory=dict, repr=False)

    @property
    def preprocessing(self) -> dict[str, Any] | None:
        """Arguments of :func:`metakit.datasets.preprocess_image` used in training (``None`` if not images)."""
        prep = self.data_meta.get("preprocessing")
        return dict(prep) if isinstance(prep, dict) else None

    def split_name(self, split: str | None = None) -> str:
        """The dataset split name of ``split`` (default: the config's test split)."""
        from .builders import _split_name

        return _split_name(self.config, split or "test")

    def dataset(self, split: str | None = None, *, progress: bool = False) -> ClassIndexedDataset | None:
        """The dataset of ``split`` (``train``/``val``/``test`` or a split name; default test), cached.

        ``None`` for sinusoid tasks.

        Raises:
            ValueError: its images are not preprocessed as the checkpoint's training images were
                (:attr:`preprocessing`): the run's config was edited after training.
        """
        from .builders import build_dataset

        split = split or "test"
        if split not in self._datasets:
            data = build_dataset(self.config, split, progress=progress)
            _check_preprocessing(self, split, data)
            self._datasets[split] = data
        return self._datasets[split]

    def episodes(self, split: str | None = None, **options: Any) -> Iterable[Any]:
        """Fixed, seeded evaluation episodes (iterable of ``EpisodeBatch``) of ``split`` (default test).

        ``options`` are those of :func:`~metakit.runtime.builders.build_episodes` (``ways``,
        ``shots``, ``queries``, ``episodes``, ``seed``, ``batch_size``): ``ways``/``shots``/``queries``
        default to the config's ``eval`` section, ``episodes`` to ``eval.test_episodes``
        (``eval.val_episodes`` for ``split="val"``), ``seed`` to ``eval.seed``. Other ways or
        shots than in training are allowed (e.g. train 20-way, test 5-way) when the algorithm
        supports them. The split's dataset is loaded once and cached.
        """
        from .builders import build_episodes

        split = split or "test"
        return build_episodes(self.config, split, dataset=self.dataset(split), **options)


def _check_preprocessing(run: LoadedRun, split: str, data: Any) -> None:
    """Refuse a dataset whose images are not preprocessed as the checkpoint's training images were (the
    arguments of :func:`metakit.datasets.preprocess_image` the checkpoint records), naming the keys."""
    trained = run.preprocessing
    given = (getattr(data, "meta", None) or {}).get("preprocessing")
    if trained is None or not isinstance(given, dict) or dict(given) == trained:
        return
    keys = sorted(set(trained) | set(given), key=str)
    differ = ", ".join(f"{k}={given.get(k)!r} where training had {trained.get(k)!r}" for k in keys if given.get(k) != trained.get(k))
    raise ValueError(
        f"the {split!r} images built from {run.run_dir / CONFIG_FILE} are not preprocessed as {run.checkpoint.name}'s "
        f"training images were ({differ}); was the task section edited after training? Set those task keys back "
        "(e.g. task.resample, task.image_size)"
    )


def context_record(context: BuildContext) -> dict[str, Any]:
    """The :class:`~metakit.algorithms.BuildContext` as the plain dict checkpoints store under
    ``"context"`` (read back by :func:`context_from_record`)."""
    return {
        "ways": context.ways,
        "example_shape": list(context.example_shape),
        "num_train_classes": context.num_train_classes,
        **({"label_code": list(context.label_code)} if context.label_code is not None else {}),
    }


def context_from_record(record: object, path: Path) -> BuildContext:
    """The build context stored by :func:`context_record` in the checkpoint ``path``."""
    if not isinstance(record, dict):
        raise CheckpointError(path, "it holds no build context (not written by the metakit trainer)")
    return BuildContext(
        ways=record.get("ways"),
        example_shape=tuple(record.get("example_shape") or ()),
        num_train_classes=record.get("num_train_classes"),
        label_code=tuple(record["label_code"]) if record.get("label_code") is not None else None,  # type: ignore[arg-type]
    )


def _config_differences(state: dict[str, Any], config: Config) -> list[str]:
    """Keys (other than :data:`RESUMABLE_KEYS`) in which a checkpoint's recorded config differs from ``config``."""
    import yaml

    try:
        saved = yaml.safe_load(state.get("config") or "")
    except yaml.YAMLError:
        return []
    if not isinstance(saved, dict) or not all(isinstance(v, dict) for v in saved.values()):
        return []
    a, b = _flat(saved), _flat(config.to_dict())
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUMABLE_KEYS)


def _check_finite_state(algorithm: Algorithm, path: Path) -> None:
    """Refuse weights or buffers (running statistics...) holding NaN or inf: a diverged model scores at chance."""
    for name, t in algorithm.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = t[~torch.isfinite(t)]
            raise CheckpointError(
                path,
                f"{name!r} holds {bad.numel()} non-finite value(s) (first: {float(bad[0])}): the run diverged before "
                "this checkpoint was written. Use an earlier checkpoint (--checkpoint) or retrain with a lower optim.lr",
            )


def load_run(
    run_dir: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str] = "best",
    *,
    map_location: str | torch.device = "cpu",
    fallback: bool = False,
) -> LoadedRun:
    """Rebuild a trained run from its folder.

    Args:
        run_dir: a folder written by ``metakit train``.
        checkpoint: ``"best"`` (best validation metric; the last checkpoint when the run does
            not validate), ``"last"`` (newest readable step checkpoint; unreadable newer ones
            are reported on stderr and skipped) or the path of a checkpoint file.
        map_location: device of the loaded algorithm.
        fallback: with ``checkpoint="best"``, an unreadable best checkpoint is reported on
            stderr and the newest readable step checkpoint is used instead (what ``metakit
            eval`` and ``predict`` do; :attr:`LoadedRun.checkpoint` says which file was used).
            A checkpoint given by its path is never replaced by another.

    Raises:
        FileNotFoundError: no such run folder, config or checkpoint.
        CheckpointError: the chosen checkpoint is truncated or corrupt (named in the message).
    """
    from .builders import build_algorithm

    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    mgr = checkpoint_manager(run_dir, config)
    choice = str(checkpoint)
    if choice == "best" and not config.validates and not mgr.best_path.exists():
        choice = "last"  # a run without validation has no best checkpoint; its result is its last
    if choice == "best":
        path = mgr.best_path
        if not path.exists():
            raise FileNotFoundError(
                f"{str(run_dir)!r} has no best checkpoint yet ({path.name}: written at the first validation); "
                "use checkpoint='last' (--checkpoint last) for the newest step checkpoint"
            )
        try:
            state = load_checkpoint(path)
        except CheckpointError as e:
            found = mgr.load_latest() if fallback else None
            if found is None:
                if fallback:
                    raise CheckpointError(path, f"{e.reason}; and no step checkpoint is readable to fall back to") from None
                raise
            state, used = found
            print(
                f"metakit: warning: {e}; using the newest readable step checkpoint {used.name} instead",
                file=sys.stderr,
                flush=True,
            )
            path = used
    elif choice == "last":
        found = mgr.load_latest()
        if found is None:
            raise FileNotFoundError(f"{str(run_dir)!r} has no readable checkpoint in {mgr.folder}")
        state, path = found
    else:
        path = Path(checkpoint)
        state = load_checkpoint(path)
    context = config.family.restore_context(context_from_record(state.get("context"), path))
    if "model" not in state or not isinstance(state["model"], dict):
        raise CheckpointError(path, "it holds no model weights")
    with torch.random.fork_rng(devices=[]):  # building initialises weights; leave the caller's RNG alone
        algorithm = build_algorithm(config, context)
    try:
        algorithm.load_state_dict(state["model"])
    except RuntimeError as e:
        detail = " ".join(str(e).split())
        detail = detail if len(detail) <= 300 else detail[:297] + "..."
        differs = _config_differences(state, config)
        if differs:
            hint = (
                f"it was written by another run (its config differs in {', '.join(differs[:5])}); give a checkpoint "
                f"of this run (in {run_dir / CHECKPOINT_DIR}) or the run folder that checkpoint belongs to"
            )
        else:
            hint = f"was {run_dir / CONFIG_FILE} edited after training?"
        raise ValueError(f"the weights in {str(path)!r} do not fit the model built from {run_dir / CONFIG_FILE}: {hint} ({detail})") from None
    _check_finite_state(algorithm, path)
    algorithm.to(map_location)
    algorithm.eval()
    return LoadedRun(
        run_dir=run_dir,
        config=config,
        algorithm=algorithm,
        checkpoint=path,
        kind=str(state.get("kind", "step")),
        step=int(state.get("step", 0)),
        context=context,
        val=state.get("val"),
        data_meta=dict(state.get("data_meta") or {}),
    )
