"""Manifests of official dataset files: a digest of every image's pixels.

What "verified" means for a dataset's content: every image file the manifest lists is present
under the same path, and its decoded pixels are the official ones. The digest of an image is
the first 16 hex digits (64 bits) of the SHA-256 of ``b"<width>x<height>\\n"`` followed by its
pixels as 8-bit grayscale (Pillow mode ``"L"``), row by row. It depends on the pixels only, not
on how they are stored: a re-zipped archive, or a PNG saved again losslessly (another
compression level, 1-bit or 8-bit), passes; a changed pixel, a swapped image or a renamed file
fails. (64 bits make an accidental match of a changed image a 1 in 10^19 chance.)

File format (xz-compressed UTF-8 text): ``#`` lines are comments (provenance); every other
line is one folder, a tab, then ``<file name>:<digest>`` entries separated by spaces::

    images_background/Latin/character01<TAB>0683_01.png:3f2a...e1 0683_02.png:...
"""

from __future__ import annotations

import hashlib
import lzma
import os
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable

from .images import open_image

__all__ = ["pixel_digest", "read_manifest", "write_manifest", "check_against_manifest"]

DIGEST_HEX = 16


def pixel_digest(data: bytes, name: str | None = None) -> str:
    """The manifest digest of one encoded image (see the module docstring)."""
    img = open_image(data, name).convert("L")
    w, h = img.size
    return hashlib.sha256(f"{w}x{h}\n".encode() + img.tobytes()).hexdigest()[:DIGEST_HEX]


def read_manifest(resource: str) -> dict[str, str]:
    """``{member path: digest}`` of a manifest shipped in ``metakit/datasets/_manifests/``."""
    raw = resources.files("metakit.datasets").joinpath(f"_manifests/{resource}").read_bytes()
    out: dict[str, str] = {}
    for line in lzma.decompress(raw).decode("utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        folder, entries = line.split("\t")
        for entry in entries.split(" "):
            file, digest = entry.rsplit(":", 1)
            out[f"{folder}/{file}"] = digest
    return out


def write_manifest(path: str | os.PathLike, digests: dict[str, str], header: Iterable[str] = ()) -> None:
    """Write ``{member path: digest}`` in the manifest format (``header`` lines become comments)."""
    folders: dict[str, list[str]] = {}
    for member in sorted(digests):
        folder, file = member.rsplit("/", 1)
        folders.setdefault(folder, []).append(f"{file}:{digests[member]}")
    text = "".join(f"# {h}\n" for h in header)
    text += "".join(f"{folder}\t{' '.join(entries)}\n" for folder, entries in folders.items())
    Path(path).write_bytes(lzma.compress(text.encode("utf-8"), preset=9 | lzma.PRESET_EXTREME))


def check_against_manifest(
    members: list[str],
    read: Callable[[str], bytes],
    expected: dict[str, str],
    where: str,
    *,
    on_image: Callable[[], None] | None = None,
) -> int:
    """Check that ``members`` are exactly the manifest's files and each has its official pixels.

    Args:
        members: the image members found (paths as in the manifest).
        read: returns the bytes of a member.
        expected: the manifest entries these members must match.
        where: the archive or folder, for error messages.
        on_image: called after each image (progress).

    Returns the number of images verified. Raises ``ValueError`` naming the first files that
    differ (and how many), or those missing or unexpected.
    """
    found = set(members)
    missing, extra = sorted(set(expected) - found), sorted(found - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} official file(s) missing (e.g. {missing[0]})")
        if extra:
            parts.append(f"{len(extra)} file(s) not in the official set (e.g. {extra[0]})")
        raise ValueError(f"{where} is not the official content: {'; '.join(parts)}. Delete it and download it again")
    differ = []
    for m in members:
        if pixel_digest(read(m), f"{m} in {where}") != expected[m]:
            differ.append(m)
        if on_image is not None:
            on_image()
    if differ:
        shown = ", ".join(differ[:3]) + (", ..." if len(differ) > 3 else "")
        raise ValueError(
            f"{where}: {len(differ)} image(s) differ from the official ones pixel for pixel ({shown}). "
            "Delete it and download it again"
        )
    return len(members)
