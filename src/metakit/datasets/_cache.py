"""A cache of decoded datasets: safetensors files written atomically and checked on load.

A cache file holds named uint8/int64 tensors and string metadata. The metadata records the
sha256 of every tensor's bytes, so a file damaged on disk (truncated, bits flipped) is
detected on load, reported with a warning, and rebuilt -- never trusted. Loading uses
safetensors, which reads raw arrays and never unpickles objects.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

__all__ = ["default_cache_dir", "resolve_cache_dir", "ensure_writable_cache_dir", "save_cached", "load_cached"]

_DIGESTS = "__tensor_sha256__"


def default_cache_dir() -> Path:
    """``$METAKIT_CACHE`` if set, else ``~/.cache/metakit``."""
    env = os.environ.get("METAKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "metakit"


def _cache_dir_label(cache_dir: str | os.PathLike | None, path: Path) -> tuple[str, str]:
    """How the user set the cache folder (for errors), and how to change it."""
    if cache_dir is not None:
        return f"cache_dir={str(path)!r}", "give a folder as cache_dir (--cache-dir, data.cache_dir)"
    if os.environ.get("METAKIT_CACHE"):
        return f"METAKIT_CACHE={str(path)!r}", "set METAKIT_CACHE to a folder (or unset it for ~/.cache/metakit)"
    return f"the default cache folder {str(path)!r}", "set METAKIT_CACHE or cache_dir (--cache-dir) to a folder you can write to"


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    """The cache folder: ``cache_dir`` if given, else :func:`default_cache_dir`.

    Raises ``ValueError`` naming the setting (``cache_dir`` or ``METAKIT_CACHE``) if the path, or
    one of its parents, is an existing file: it is found out before any data is decoded.
    """
    path = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                label, fix = _cache_dir_label(cache_dir, path)
                what = "is a file" if p == path else f"lies inside {str(p)!r}, which is a file"
                raise ValueError(f"{label} {what}, not a folder; {fix}")
            break
    return path


def ensure_writable_cache_dir(path: Path, cache_dir: str | os.PathLike | None = None) -> None:
    """Create the cache folder ``path`` if needed and check it is writable (``ValueError`` naming the setting)."""
    label, fix = _cache_dir_label(cache_dir, path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{label} cannot be created ({(e.strerror or str(e)).lower()}); {fix}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{label} is not writable (permission denied); {fix}")


def _digest(t: Tensor) -> str:
    return hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def save_cached(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    """Write ``tensors`` + ``metadata`` to ``path`` atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(metadata)
    meta[_DIGESTS] = json.dumps({k: _digest(v) for k, v in tensors.items()}, sort_keys=True)
    payload = st_save({k: v.contiguous() for k, v in tensors.items()}, metadata=meta)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache may be shared (METAKIT_CACHE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_cached(path: Path, expect: dict[str, str]) -> tuple[dict[str, Tensor], dict[str, str]] | None:
    """Load a cache file, or ``None`` if it is absent or fails a check.

    ``expect`` maps metadata keys to the values they must have. A file that exists but cannot
    be parsed, lacks a tensor digest, has a digest mismatch or unexpected metadata is reported
    with a ``RuntimeWarning`` and removed so that the caller rebuilds it.
    """
    if not path.is_file():
        return None
    problem = None
    try:
        raw = path.read_bytes()
        tensors = st_load(raw)
        meta = _read_metadata(raw)
    except Exception as e:  # safetensors raises its own error type for malformed files
        problem = f"unreadable ({type(e).__name__}: {e})"
    else:
        for key, value in expect.items():
            if meta.get(key) != value:
                problem = f"metadata {key!r} is {meta.get(key)!r}, expected {value!r}"
                break
        if problem is None:
            try:
                digests = json.loads(meta[_DIGESTS])
            except (KeyError, ValueError):
                problem = "tensor checksums missing"
            else:
                if set(digests) != set(tensors):
                    problem = f"tensors {sorted(tensors)} do not match checksums for {sorted(digests)}"
                else:
                    for k, t in tensors.items():
                        if _digest(t) != digests[k]:
                            problem = f"tensor {k!r} fails its sha256 check"
                            break
    if problem is not None:
        warnings.warn(f"cache file {path} is corrupt ({problem}); rebuilding it", RuntimeWarning, stacklevel=3)
        path.unlink(missing_ok=True)
        return None
    return tensors, meta


def _read_metadata(raw: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors payload (header = 8-byte length + JSON)."""
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise ValueError("metadata is not a mapping")
    return meta
