"""Shared test fixtures.

The real Omniglot archives are read from ``../shared/data/omniglot`` beside the checkout (or
``$METAKIT_OMNIGLOT_ROOT``). Tests that need them are skipped with a clear reason when the
folder is absent; CI always has it.
"""

from __future__ import annotations

import functools
import http.server
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

REPO = Path(__file__).resolve().parents[1]
OMNIGLOT_ROOT = Path(os.environ.get("METAKIT_OMNIGLOT_ROOT", REPO.parent / "shared" / "data" / "omniglot"))

# Each test process keeps to one thread, so that parallel workers (pytest -n 2) do not
# oversubscribe the cores.
torch.set_num_threads(1)


def _finite_differences(
    fn: Callable[..., Any], wrt: Sequence[Tensor] | Mapping[str, Tensor], eps: float = 1e-6,
    names: Sequence[str] | None = None,
) -> Tensor:
    """Central differences ``(f(x + eps e_i) - f(x - eps e_i)) / (2 eps)`` of a scalar function
    with respect to every entry of some float64 tensors, as one flat float64 vector (tensor by
    tensor in the order given, each in ``view(-1)`` order), to compare with an autograd gradient
    flattened the same way.

    ``wrt`` is either a sequence of tensors, which are moved in place (under ``no_grad``) and put
    back exactly, ``fn()`` taking no argument (a model's parameters, read by ``fn`` through the
    model); or a mapping ``name -> tensor``, of which ``fn(params)`` receives a copy (detached
    clones that require grad as the originals do) with the entries ``names`` (default: all)
    moved one at a time. ``fn`` runs under ``no_grad`` and returns a number or a one-element
    tensor.
    """
    if isinstance(wrt, Mapping):
        params = {n: t.detach().clone().requires_grad_(t.requires_grad) for n, t in wrt.items()}
        moved = [params[n] for n in (list(params) if names is None else names)]
        return _finite_differences(lambda: fn(params), moved, eps)
    if names is not None:
        raise TypeError("names selects entries of a mapping; wrt is a sequence of tensors")
    wrong = [tuple(t.shape) for t in wrt if t.dtype != torch.float64]
    if wrong:
        raise TypeError(f"finite differences need float64 tensors (eps={eps}); got other dtypes for shapes {wrong}")
    out = []
    with torch.no_grad():
        for t in wrt:
            flat = t.view(-1)
            for i in range(flat.numel()):
                old = float(flat[i])
                flat[i] = old + eps
                hi = float(fn())
                flat[i] = old - eps
                lo = float(fn())
                flat[i] = old
                out.append((hi - lo) / (2 * eps))
    return torch.tensor(out, dtype=torch.float64)


@pytest.fixture
def finite_differences() -> Callable[..., Tensor]:
    """``finite_differences(fn, wrt, eps=1e-6, names=None)``: central differences in float64 of a
    scalar ``fn`` w.r.t. every entry of ``wrt`` (see :func:`_finite_differences`), for gradient
    tests of first- and second-order paths alike."""
    return _finite_differences


@pytest.fixture(scope="session")
def omniglot_root() -> Path:
    if not (OMNIGLOT_ROOT / "images_background.zip").exists():
        if os.environ.get("CI"):
            pytest.fail(f"Omniglot archives not found under {OMNIGLOT_ROOT}; CI must have ../shared/data/omniglot")
        pytest.skip(f"Omniglot archives not found under {OMNIGLOT_ROOT}")
    return OMNIGLOT_ROOT


@pytest.fixture
def saved_figures(monkeypatch) -> list:
    """The matplotlib figures saved during a test, as ``(figure, path)`` in order of saving.

    Records every ``Figure.savefig`` and still writes the file, so a test can read what a plot
    shows (axes, lines, bands, titles) besides checking the file. The path is where the figure
    ends up: ``save_figure`` writes ``NAME.tmp.png`` and renames it to ``NAME``.
    """
    from matplotlib.figure import Figure

    saved = []
    original = Figure.savefig

    def savefig(self, fname, *args, **kwargs):
        path = Path(fname)
        saved.append((self, path.with_name(path.name.removesuffix(".tmp.png"))))
        return original(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One decoded-dataset cache folder for the whole test session."""
    return tmp_path_factory.mktemp("metakit-cache")


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; ``/short/<file>`` announces the full length but sends half the bytes."""

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/short/"):
            data = (Path(self.directory) / self.path.removeprefix("/short/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def serve(tmp_path):
    """``serve(folder) -> base URL`` of a server on 127.0.0.1 (shut down after the test)."""
    servers = []

    def start(folder: Path) -> str:
        handler = functools.partial(_Handler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        assert not thread.is_alive()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@pytest.fixture(scope="session")
def bomb_png() -> bytes:
    """A valid 30000 x 30000 1-bit PNG of ~110 kB: decoding it would take 112 MB (a decompression bomb)."""
    import struct
    import zlib

    w = h = 30_000
    z = zlib.compressobj(9)
    row = b"\x00" * (1 + (w + 7) // 8)  # filter byte + packed bits
    body = b"".join(z.compress(row * 1000) for _ in range(h // 1000)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)  # bit depth 1, grayscale
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")


#: How long a test waits for a subprocess to reach a point it polls for (its first checkpoint, say)
#: before failing. A guard against a hang, not a speed target: a ``metakit train`` start takes a few
#: seconds, but on a loaded shared machine importing torch from a cold disk has taken minutes.
HANG_GUARD_S = 600.0


def _wait_until(done: Callable[[], bool], proc: Any, what: str, poll: float = 0.01) -> None:
    """Poll ``done()`` until it is true; fail if ``proc`` (a ``subprocess.Popen``) ends first, with its
    output when it was piped, or if ``HANG_GUARD_S`` pass (``what`` names the awaited point)."""
    import time

    deadline = time.monotonic() + HANG_GUARD_S
    while not done():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the process ended (exit {proc.returncode}) before {what}: {err or out or ''}")
        assert time.monotonic() < deadline, f"no {what} within {HANG_GUARD_S:.0f} s"
        time.sleep(poll)


@pytest.fixture
def wait_until() -> Callable[..., None]:
    """``wait_until(done, proc, what)``: poll ``done()`` while the subprocess ``proc`` lives (see ``_wait_until``)."""
    return _wait_until


def newest_checkpoint_step(run: Path) -> int:
    """The highest step among ``RUN/checkpoints/step-*.safetensors``; -1 when there is none yet.

    Tests that wait for a run's progress poll this rather than one named file: ``keep_last`` rotates
    old step checkpoints away, so on a loaded machine a poll can miss a file that existed briefly."""
    from metakit.runtime.checkpoint import CheckpointManager

    return max((step for step, _ in CheckpointManager(run / "checkpoints").steps()), default=-1)


def _kill_train_at(config: Path, run: Path, step: int, poll: float = 0.005) -> None:
    """Start ``metakit train CONFIG --out RUN`` in a subprocess and SIGKILL it once it has written a
    step checkpoint at ``step`` or later (the run must still be going then)."""
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([str(Path(sys.executable).parent / "metakit"), "train", str(config), "--out", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_until(lambda: newest_checkpoint_step(run) >= step, proc, f"a checkpoint at step {step} or later", poll)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before the kill"


@pytest.fixture
def newest_checkpoint() -> Callable[[Path], int]:
    """``newest_checkpoint(run_dir)``: the highest step checkpoint on disk, -1 before the first."""
    return newest_checkpoint_step


@pytest.fixture
def kill_train_at() -> Callable[..., None]:
    """``kill_train_at(config, run_dir, step)``: a ``metakit train`` run killed with SIGKILL after a checkpoint."""
    return _kill_train_at
