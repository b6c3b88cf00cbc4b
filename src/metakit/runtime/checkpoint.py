"""Checkpoints: tensors and plain metadata in one safetensors file, written atomically.

A checkpoint is a nested structure of dicts, lists, tuples, tensors and JSON primitives (a
model ``state_dict``, an optimizer ``state_dict``, RNG states, step counters...). It is stored
as one ``.safetensors`` file: every tensor becomes a named tensor of the file, and the rest of
the structure is JSON in the file's metadata (``"metakit"``), where each tensor is replaced by
a reference to its name. Loading never unpickles anything.

Integrity: the metadata holds a SHA-256 digest of the JSON structure (the non-tensor state: step
counters, RNG states, config...) and of every tensor's name, dtype, shape and bytes, checked on
load, so a truncated file, a file whose tensor bytes were damaged *and* one whose metadata was
edited are all reported (:class:`CheckpointError`, naming the file and the reason) instead of
loading garbage. Files of the previous format (``metakit-checkpoint/1``, whose digest covers the
tensors only) are still read.

Atomicity: :func:`save_checkpoint` writes a temporary file in the same folder, ``fsync`` s it,
renames it over the destination (``os.replace``) and ``fsync`` s the folder, so a crash or a
``SIGKILL`` leaves either the old file or the new one, never a partial one under the real name.

:class:`CheckpointManager` names step checkpoints ``step-00001000.safetensors``, keeps the last
``keep_last`` of them (up to the step just written) plus ``best.safetensors``, and finds the
newest readable one, warning on stderr about every unreadable one it skips (and, for a resume,
renaming it to ``<name>.corrupt`` so that it no longer counts as a step checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import sys
from pathlib import Path
from typing import Any, Callable, TextIO

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

__all__ = [
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "CheckpointManager",
    "FORMAT",
]

FORMAT = "metakit-checkpoint/2"
#: the previous format, still read: its digest covers the tensors but not the JSON structure
_FORMAT_1 = "metakit-checkpoint/1"
_META_KEY = "metakit"
_STEP_RE = re.compile(r"^step-(\d+)\.safetensors$")


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"checkpoint {str(self.path)!r} is unusable: {reason}")


# -- encoding ------------------------------------------------------------------------------------
def _encode(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace tensors by ``{"__tensor__": name}`` and make the rest JSON-representable."""
    if isinstance(obj, torch.Tensor):
        name = path or "tensor"
        base, i = name, 1
        while name in tensors:
            i += 1
            name = f"{base}#{i}"
        # a private contiguous copy: safetensors refuses shared storage (tied weights)
        tensors[name] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": name}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not any(k.startswith("__") and k.endswith("__") for k in obj):
            return {k: _encode(v, f"{path}/{k}" if path else k, tensors) for k, v in obj.items()}
        for k in obj:
            if not (k is None or isinstance(k, (bool, int, float, str))):
                raise TypeError(f"checkpoint dict keys must be plain values, got {type(k).__name__} at {path!r}")
        return {"__items__": [[k, _encode(v, f"{path}/{k}", tensors)] for k, v in obj.items()]}
    raise TypeError(
        f"cannot store a {type(obj).__name__} at {path!r} in a checkpoint: only tensors, dicts, lists, "
        "tuples and plain values (None, bool, int, float, str) are allowed"
    )


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__tuple__"}:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        if set(obj) == {"__items__"}:
            return {k: _decode(v, tensors) for k, v in obj["__items__"]}
        return {k: _decode(v, tensors) for k, v in obj.items()}
    return obj


def _digest(tensors: dict[str, torch.Tensor], state: Any = None, *, with_state: bool = False) -> str:
    """SHA-256 of the tensors and, ``with_state``, of the JSON ``state`` skeleton (format 2)."""
    h = hashlib.sha256()
    if with_state:
        text = json.dumps(state).encode()
        h.update(len(text).to_bytes(8, "little") + text)
    for name in sorted(tensors):
        t = tensors[name]
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        if t.numel():
            h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _tensor_refs(obj: Any, out: set[str]) -> set[str]:
    if isinstance(obj, list):
        for v in obj:
            _tensor_refs(v, out)
    elif isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            out.add(obj["__tensor__"])
        else:
            for v in obj.values():
                _tensor_refs(v, out)
    return out


# -- files ---------------------------------------------------------------------------------------
def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temporary file, fsync, rename, fsync the folder."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` (nested tensors and plain values) to ``path`` atomically."""
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(state, "", tensors)
    header = {"format": FORMAT, "sha256": _digest(tensors, skeleton, with_state=True), "state": skeleton}
    data = st_save(tensors, metadata={_META_KEY: json.dumps(header)})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointError: the file is truncated, corrupt or not a metakit checkpoint (the
            message names the file and the reason).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if not path.is_file():
        raise CheckpointError(path, "it is a folder, not a checkpoint file (e.g. RUN_DIR/checkpoints/best.safetensors)")
    data = path.read_bytes()
    if len(data) < 8:
        raise CheckpointError(path, f"truncated: {len(data)} bytes, too short for a safetensors header")
    if len(data) > 8 and data[8:9] != b"{":
        # a safetensors file is an 8-byte header length, then the JSON header
        raise CheckpointError(path, f"not a safetensors file ({_kind_of(data)}); metakit checkpoints are .safetensors files written by metakit train")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise CheckpointError(path, f"truncated: the header announces {n} bytes but the file has {len(data) - 8}")
    try:
        head = json.loads(data[8 : 8 + n])
        header = json.loads(head["__metadata__"][_META_KEY])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(path, f"not a metakit checkpoint or a damaged header ({type(e).__name__}: {e})") from None
    if not isinstance(header, dict) or header.get("format") not in (FORMAT, _FORMAT_1):
        fmt = header.get("format") if isinstance(header, dict) else None
        raise CheckpointError(path, f"unknown checkpoint format {fmt!r} (expected {FORMAT!r})")
    try:
        tensors = st_load(data)
    except Exception as e:  # safetensors raises its own error type for truncated/bad files
        raise CheckpointError(path, f"the tensor data cannot be read ({type(e).__name__}: {e})") from None
    if _digest(tensors, header.get("state"), with_state=header["format"] == FORMAT) != header.get("sha256"):
        raise CheckpointError(path, "checksum mismatch: the tensor data is damaged or the metadata was edited")
    missing = _tensor_refs(header.get("state"), set()) - set(tensors)
    if missing:
        raise CheckpointError(path, f"tensors missing from the file: {sorted(missing)[:5]}")
    return _decode(header["state"], tensors)


def _kind_of(data: bytes) -> str:
    """What a file that is not a safetensors file looks like, from its first bytes."""
    if data.startswith(b"PK\x03\x04"):
        return "it is a zip archive, e.g. a torch.save pickle; metakit never unpickles files"
    if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "it is a Python pickle; metakit never unpickles files"
    return f"it starts with {data[:8]!r}"


# -- a folder of checkpoints ---------------------------------------------------------------------
def _warn(msg: str, stream: TextIO | None = None) -> None:
    print(f"metakit: warning: {msg}", file=stream or sys.stderr, flush=True)


class CheckpointManager:
    """Step checkpoints ``step-XXXXXXXX.safetensors`` plus ``best.safetensors`` in one folder.

    Args:
        folder: where the checkpoints live (created on first save).
        keep_last: how many step checkpoints to keep; after a save, older ones (by step) are
            deleted. Step files beyond the step just written are left alone, so a leftover from
            another attempt never causes a fresh checkpoint to be deleted.
    """

    BEST = "best.safetensors"

    def __init__(self, folder: str | os.PathLike[str], keep_last: int = 3) -> None:
        if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
            raise ValueError(f"keep_last={keep_last!r} must be an int >= 1")
        self.folder = Path(folder)
        self.keep_last = keep_last

    def step_path(self, step: int) -> Path:
        return self.folder / f"step-{step:08d}.safetensors"

    @property
    def best_path(self) -> Path:
        return self.folder / self.BEST

    def steps(self) -> list[tuple[int, Path]]:
        """Step checkpoints on disk, oldest first."""
        if not self.folder.is_dir():
            return []
        found = []
        for p in self.folder.iterdir():
            m = _STEP_RE.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
        return sorted(found)

    def save(self, step: int, state: dict[str, Any]) -> Path:
        """Write the checkpoint of ``step`` and delete step checkpoints beyond ``keep_last``."""
        path = save_checkpoint(self.step_path(step), state)
        upto = [p for s, p in self.steps() if s <= step]
        for old in upto[: -self.keep_last]:
            old.unlink(missing_ok=True)
        return path

    def save_best(self, state: dict[str, Any]) -> Path:
        return save_checkpoint(self.best_path, state)

    def remove_temporary(self) -> None:
        """Delete temporary files left by a write that was killed midway."""
        if self.folder.is_dir():
            for p in self.folder.glob(".*.tmp-*"):
                p.unlink(missing_ok=True)

    def load_latest(
        self,
        *,
        stream: TextIO | None = None,
        accept: Callable[[dict[str, Any]], None] | None = None,
        set_aside: bool = False,
    ) -> tuple[dict[str, Any], Path] | None:
        """The newest readable step checkpoint and its path, or ``None`` if there is none.

        Every unreadable checkpoint skipped on the way is reported on ``stream`` (stderr) with
        its name and the reason. ``accept`` may reject a
        readable checkpoint whose content does not fit, by raising ``ValueError`` with the reason
        (it is then reported and skipped the same way). With ``set_aside`` (a resume, which
        writes new checkpoints), every skipped file is renamed to ``<name>.corrupt``: it no
        longer counts among the step checkpoints, and stays on disk for inspection.
        """
        for step, path in reversed(self.steps()):
            try:
                state = load_checkpoint(path)
                if accept is not None:
                    try:
                        accept(state)
                    except ValueError as e:
                        raise CheckpointError(path, str(e)) from None
            except CheckpointError as e:
                renamed = ""
                if set_aside:
                    aside = path.with_name(path.name + ".corrupt")
                    os.replace(path, aside)
                    renamed = f"renamed it to {aside.name} and "
                _warn(f"{e}; {renamed}falling back to the previous checkpoint", stream)
                continue
            return state, path
        return None
