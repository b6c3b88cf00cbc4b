"""Reading zip archives and their extracted folders safely.

A dataset archive is read either from the zip itself or from the folder it extracts to. Both
are seen through :class:`ArchiveSource`: a list of member names (``/``-separated, relative) and
a way to read a member's bytes. Member names that would land outside the destination when
extracted (absolute paths, drive letters, ``..`` components) are refused, whether we extract
(:func:`safe_extract`) or only read.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import zipfile
from pathlib import Path, PurePosixPath

__all__ = ["ArchiveSource", "check_member_name", "open_zip", "safe_extract", "sha256_file"]


def check_member_name(name: str, archive: str | os.PathLike) -> str:
    """Return ``name`` if it stays inside the extraction folder; raise ``ValueError`` otherwise."""
    reason = None
    if "\x00" in name:
        reason = "contains a NUL byte"
    elif name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        reason = "is an absolute path"
    elif ".." in name.replace("\\", "/").split("/"):
        reason = "contains a '..' component"
    if reason:
        raise ValueError(
            f"refusing archive {archive}: member {name!r} {reason} and would be extracted outside "
            "the destination folder; the archive is not a genuine copy, delete it and download it again"
        )
    return name


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def open_zip(path: str | os.PathLike) -> zipfile.ZipFile:
    """Open a zip file; a missing, truncated or corrupt file raises an error naming it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"archive not found: {path}")
    if not path.is_file():
        raise ValueError(f"{path} is a folder, not a zip archive; give the .zip file")
    size = path.stat().st_size
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise ValueError(
            f"{path} is not a readable zip archive ({size:,} bytes; {e}): it is truncated or corrupt. "
            "Delete it and download it again"
        ) from e
    except OSError as e:
        raise ValueError(f"cannot read zip archive {path}: {e}") from e
    for name in zf.namelist():
        check_member_name(name, path)
    return zf


class ArchiveSource:
    """Members of a zip archive or of the folder it was extracted to, read the same way.

    ``names`` lists the files (not directories) as ``/``-separated paths relative to the zip
    root or to ``folder.parent`` -- so ``images_background/Latin/character01/0683_01.png``
    names the same file in ``root/images_background.zip`` and in ``root/images_background/``.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.is_zip = self.path.is_file()
        self._zip: zipfile.ZipFile | None = None
        if self.is_zip:
            self._zip = open_zip(self.path)
            self.names = [i.filename for i in self._zip.infolist() if not i.is_dir()]
        elif self.path.is_dir():
            base = self.path.parent
            names = []
            for dirpath, dirnames, filenames in os.walk(self.path):
                dirnames.sort()
                rel = Path(dirpath).relative_to(base).as_posix()
                names.extend(f"{rel}/{f}" for f in sorted(filenames))
            self.names = names
        else:
            raise FileNotFoundError(f"archive not found: {self.path}")

    def read(self, name: str) -> bytes:
        """The bytes of one member; a CRC or decompression error names the archive and member."""
        if self._zip is not None:
            try:
                return self._zip.read(name)
            except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
                raise ValueError(
                    f"archive {self.path} is corrupt: member {name!r} cannot be read ({e}). "
                    "Delete it and download it again"
                ) from e
        return (self.path.parent / name).read_bytes()

    def test_integrity(self) -> None:
        """Check every member's CRC (zip) -- raises ``ValueError`` naming the first bad member."""
        if self._zip is None:
            return
        try:
            bad = self._zip.testzip()
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
            raise ValueError(f"archive {self.path} is corrupt ({e}). Delete it and download it again") from e
        if bad is not None:
            raise ValueError(
                f"archive {self.path} is corrupt: member {bad!r} fails its CRC check. "
                "Delete it and download it again"
            )

    def content_key(self) -> str:
        """A digest identifying the content: sha256 of the zip, or of the folder's listing.

        For a folder the listing holds every file's relative path and the sha256 of its bytes,
        so any change to a file changes the key, even one that keeps its size and modification
        time (``cp -p``, ``rsync -t``); the same files in another place give the same key.
        For the 19,280 files of Omniglot's ``images_background`` it took 0.3-0.5 s, against
        0.2-0.3 s for a listing of sizes and modification times (2 cores, other jobs running).
        """
        if self.is_zip:
            return sha256_file(self.path)
        h = hashlib.sha256()
        base = self.path.parent
        for name in self.names:
            digest = hashlib.sha256((base / name).read_bytes()).hexdigest()
            h.update(f"{name}\t{digest}\n".encode())
        return "listing-" + h.hexdigest()

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def __enter__(self) -> "ArchiveSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike) -> list[Path]:
    """Extract a zip into ``dest``, refusing any member that would land outside it.

    Every member name is checked before anything is written, so a refused archive leaves
    ``dest`` untouched. Returns the extracted file paths.
    """
    dest = Path(dest).resolve()
    with open_zip(archive) as zf:  # open_zip checks every member name
        infos = zf.infolist()
        for info in infos:
            target = (dest / info.filename).resolve()
            if target != dest and dest not in target.parents:
                raise ValueError(
                    f"refusing archive {archive}: member {info.filename!r} would be extracted to "
                    f"{target}, outside {dest}"
                )
        out = []
        for info in infos:
            target = dest / PurePosixPath(info.filename)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            out.append(target)
    return out
