"""Downloading dataset files atomically with the standard library.

:func:`download_file` streams a URL into a temporary file beside the destination, checks the
number of bytes against the server's ``Content-Length``, runs an optional validation on the
complete file, and only then renames it into place. An interrupted or refused download never
leaves a partial file under the final name.
"""

from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

__all__ = ["download_file"]

_CHUNK = 1 << 16


def download_file(
    url: str,
    dest: str | os.PathLike,
    *,
    validate: Callable[[Path], None] | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Fetch ``url`` into ``dest`` atomically.

    Args:
        url: ``http(s)://`` (or ``file://``) address.
        dest: final path; its folder is created if needed.
        validate: called with the temporary file once it is complete; raise to refuse it.
        progress: show a tqdm progress bar on stderr.
        timeout: seconds without data before giving up.

    Raises:
        OSError: the server cannot be reached or answers with an error status.
        ValueError: the body is shorter or longer than ``Content-Length``, or ``validate``
            refused the file. Nothing is left at ``dest`` in either case.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            received, expected = _stream(url, out, dest.name, progress, timeout)
            out.flush()
            os.fsync(out.fileno())
        if expected is not None and received != expected:
            raise ValueError(
                f"download of {url} is truncated: received {received:,} bytes but the server announced "
                f"{expected:,}; try again"
            )
        if validate is not None:
            validate(tmp)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def _stream(url: str, out, label: str, progress: bool, timeout: float) -> tuple[int, int | None]:
    """Copy the body of ``url`` into ``out``; return (bytes received, Content-Length or None)."""
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as e:
        raise OSError(f"cannot download {url}: HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        raise OSError(f"cannot download {url}: {e.reason} (no network? point the URL at a reachable mirror)") from e
    with response:
        length = response.headers.get("Content-Length")
        expected = int(length) if length is not None and length.isdigit() else None
        received = 0
        with tqdm(
            total=expected, unit="B", unit_scale=True, unit_divisor=1024, desc=f"download {label}",
            disable=not progress, leave=False,
        ) as bar:
            while True:
                try:
                    block = response.read(_CHUNK)
                except Exception as e:  # http.client.IncompleteRead, timeouts, resets
                    raise ValueError(
                        f"download of {url} broke off after {received:,} of "
                        f"{expected if expected is not None else '?'} bytes ({type(e).__name__}: {e}); try again"
                    ) from e
                if not block:
                    break
                out.write(block)
                received += len(block)
                bar.update(len(block))
    return received, expected
