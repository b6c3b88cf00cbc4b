"""Metric logs of a run: one JSON object per line (``metrics.jsonl``) and TensorBoard events.

Every line of ``metrics.jsonl`` is a JSON object with at least::

    {"step": 500, "split": "train", "time": 1718000000.0, "elapsed": 81.2, ...metrics}

``time`` is the Unix wall-clock time of the line, ``elapsed`` the training seconds since the run
started (summed over resumes). Training lines (``split="train"``) hold the means of the step
metrics since the previous line (``loss``, ``accuracy``...) plus ``lr`` and ``episodes_per_s``;
validation lines (``split="val"``) hold ``metric`` (the name of the validation metric), that
metric's mean under its own name, ``ci95``, ``episodes``, ``higher_is_better`` and ``is_best``.
The same numbers go to TensorBoard as ``<split>/<name>`` scalars (``tb/`` in the run folder).

On resume, :class:`MetricsLogger` drops the lines written after the checkpoint it resumes from
(they are logged again as the steps are replayed) and tells TensorBoard to purge them too.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping

from .checkpoint import atomic_write_bytes

__all__ = ["MetricsLogger", "read_metrics"]


def read_metrics(path: str | os.PathLike[str], split: str | None = None) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (or of ``RUN_DIR/metrics.jsonl``), optionally of one split.

    A last line cut short by a crash is ignored.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.jsonl"
    if not p.is_file():
        raise FileNotFoundError(f"metrics file {str(p)!r} does not exist; is this a metakit run folder?")
    out = []
    for line in p.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a partial last line of a killed run
        if isinstance(rec, dict) and (split is None or rec.get("split") == split):
            out.append(rec)
    return out


def _finite_or_none(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN/inf; a non-finite value is logged as null
    return v


def _wait_past_event_files(tb_dir: Path) -> None:
    """Returns once the clock's second is past every event file's in ``tb_dir``.

    TensorBoard reads a folder's event files in name order, and a name starts with the second its
    writer was opened; within one second the names order by host, process id and a per-process
    counter compared as text, so a resumed writer could sort before the file it continues and its
    purge of the replayed steps would be undone. Waits at most one second, and only then (a file
    dated later than that, by a clock set back, is not waited for).
    """
    seconds = [p.name.split(".")[3] for p in tb_dir.glob("events.out.tfevents.*")]
    newest = max((int(t) for t in seconds if t.isdigit()), default=None)
    if newest is not None:
        wait = newest + 1 - time.time()  # one reading: the second may turn between two
        if wait > 0:
            time.sleep(min(wait, 1.0))


class MetricsLogger:
    """Appends metric records to ``metrics.jsonl`` and TensorBoard event files of a run folder.

    Args:
        run_dir: the run folder.
        resume_step: when resuming from the checkpoint of this step, records with a larger step
            are removed from ``metrics.jsonl`` and purged from TensorBoard.
        tensorboard: also write TensorBoard events (``run_dir/tb``).
    """

    def __init__(self, run_dir: str | os.PathLike[str], resume_step: int | None = None, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            keep = [r for r in read_metrics(self.path) if int(r.get("step", 0)) <= resume_step]
            # fsync'd before it replaces the old file: a crash leaves one of the two, whole
            atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in keep).encode())
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self._file = open(self.path, "a", buffering=1)  # line-buffered: every record reaches the OS
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            _wait_past_event_files(self.run_dir / "tb")
            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tb"), purge_step=purge)

    def log(self, step: int, split: str, metrics: Mapping[str, Any], elapsed: float | None = None) -> dict[str, Any]:
        """Write one record; numbers also go to TensorBoard as ``split/name``. Returns the record."""
        rec: dict[str, Any] = {"step": int(step), "split": split, "time": time.time()}
        if elapsed is not None:
            rec["elapsed"] = round(float(elapsed), 3)
        for k, v in metrics.items():
            rec[k] = _finite_or_none(v)
        self._file.write(json.dumps(rec) + "\n")
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self._tb.add_scalar(f"{split}/{k}", v, global_step=int(step))
        return rec

    def flush(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if not self._file.closed:
            self.flush()
            self._file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
