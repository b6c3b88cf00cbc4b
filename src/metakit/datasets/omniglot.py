"""Omniglot (Lake, Salakhutdinov & Tenenbaum 2015): 1,623 handwritten characters from 50
alphabets, 20 drawings each, as 105x105 black-on-white PNGs.

Two protocols:

``lake``
    The official split of the two archives: ``background`` (``images_background.zip``: 30
    alphabets, 964 characters, 19,280 images) and ``evaluation`` (``images_evaluation.zip``: 20
    alphabets, 659 characters, 13,180 images). One class per character, named
    ``Alphabet/characterNN``.

``vinyals``
    The split of Vinyals et al. (2016), used by Matching and Prototypical Networks: 1,028
    ``train``, 172 ``val`` (1,200 ``trainval``) and 423 ``test`` characters drawn from both
    archives, each rotated by 0, 90, 180 and 270 degrees into four classes (4,112 / 688 /
    4,800 / 1,692 classes), named ``Alphabet/characterNN/rotDDD`` in the order of the lists
    published with Prototypical Networks. The package carries those lists in compact form
    (``_splits/omniglot_vinyals.txt``).

    Rotation convention: ``rotDDD`` is the character turned **counter-clockwise** by DDD
    degrees. The published lists come from the Prototypical Networks loader, which applies
    ``PIL.Image.rotate(DDD)`` -- counter-clockwise -- to each image; here the rotation is
    ``torch.rot90(image, DDD // 90, dims=(-2, -1))`` on the resized image, also
    counter-clockwise (tested against PIL). Rotating after resizing is cheap and exact; it
    differs from rotating the raw image first only by the rounding of Pillow's two-pass
    resize (at most a few grey levels). That loader also transposes its tensors (a mirror
    image of every class); we do not, which changes no classification task.

Preprocessing (``meta["preprocessing"]``, see :func:`~metakit.datasets.preprocess_image`):
each PNG is converted to 8-bit grayscale, resized to ``image_size`` with a Pillow filter, and
**inverted** so strokes are bright: stored ``uint8`` values are 255 on strokes and 0 on
background, so ``to_float`` gives strokes ~1.0 and background 0.0. The filter is ``resample``:
``"lanczos"`` (default) gives anti-aliased grey levels; ``"nearest"`` keeps the 1-bit scans binary
(0 or 255), the images of the published Omniglot code (Prototypical Networks, MAML, Relation
Networks, Reptile): Pillow resizes a 1-bit image by nearest neighbour whatever filter is asked for,
and those loaders resize the 1-bit PNGs as they are.

Reading and verification: each archive is read from the zip in ``root`` or, if there is no
zip, from the folder it extracts to (``root/images_background/...``). Before decoding, the
member names are checked (none may point outside ``root``), and the counts of alphabets,
characters and images and the 20 images per character are verified; every PNG must decode.
A missing, truncated or corrupt archive raises an error naming the file and the problem.
:func:`verify_omniglot_archive` (``metakit data check``, and every download) also checks the
content: every one of the 32,460 official images is there under its official path with its
official pixels, against the manifest shipped with the package (``_manifests/omniglot.txt.xz``:
a 64-bit digest of each image's decoded pixels, see :mod:`metakit.datasets._manifest`). So a
faithful re-packing (another zip, extracted files, PNGs saved again losslessly) passes and a
changed or swapped image fails, named.

Caching: decoding 32,460 PNGs takes seconds, so the decoded, resized, unrotated characters of
each archive are stored once as a uint8 safetensors file in the cache folder (``cache_dir``,
default ``$METAKIT_CACHE`` or ``~/.cache/metakit``), keyed by the sha256 of the zip (or a
digest of the extracted folder's file names and contents) and by the preprocessing. Later
loads read that file (its tensors are checksummed; a damaged file is rebuilt) and apply the
rotations in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ._archive import ArchiveSource, sha256_file
from ._cache import ensure_writable_cache_dir, load_cached, resolve_cache_dir, save_cached
from ._manifest import check_against_manifest, pixel_digest, read_manifest, write_manifest
from .base import ClassIndexedDataset
from .download import download_file
from .images import Preprocessing, _apply

__all__ = [
    "Omniglot",
    "OMNIGLOT_URL",
    "PROTOCOLS",
    "download_omniglot",
    "locate_archive",
    "verify_omniglot_archive",
    "vinyals_split",
    "omniglot_manifest",
    "write_omniglot_manifest",
]

#: Where ``download=True`` fetches the archives (``<url>/images_background.zip``...).
#: Overridden by the ``base_url`` argument or the environment variable ``METAKIT_OMNIGLOT_URL``.
OMNIGLOT_URL = "https://github.com/brendenlake/omniglot/raw/master/python"

#: protocol -> its splits (the first one is the default).
PROTOCOLS: dict[str, tuple[str, ...]] = {
    "lake": ("background", "evaluation"),
    "vinyals": ("train", "val", "trainval", "test"),
}

ARCHIVES = ("background", "evaluation")

#: archive -> (alphabets, characters, images) of the official zips.
EXPECTED_COUNTS: dict[str, tuple[int, int, int]] = {
    "background": (30, 964, 19_280),
    "evaluation": (20, 659, 13_180),
}
IMAGES_PER_CHARACTER = 20
RAW_SIZE = 105

#: Digests of archives known to be genuine: the official zips (MD5s as checked by torchvision)
#: and the offline copies rebuilt from the same PNGs (sha256, see ``../shared/data/omniglot``).
KNOWN_DIGESTS: dict[str, dict[str, frozenset[str]]] = {
    "background": {
        "md5": frozenset({"68d2efa1b9178cc56df9314c21c6e718"}),
        "sha256": frozenset({"05996f06d62f6466b2ca0d04563bb77afc3a5ab20dfac70b14008d7bd6fa49f7"}),
    },
    "evaluation": {
        "md5": frozenset({"6b91aef0f799c5bb55b94e3f2daec811"}),
        "sha256": frozenset({"834b75e9de571fd054b5ee73725c34d52b822e226ecfccc8c25d77b1a54c635c"}),
    },
}

_CACHE_FORMAT = "metakit-omniglot-1"
_CHARACTER_RE = re.compile(r"character\d{2}")
_ROTATIONS = (0, 90, 180, 270)
_MIN_SIZE = 8


def _zip_name(archive: str) -> str:
    return f"images_{archive}.zip"


def _folder_name(archive: str) -> str:
    return f"images_{archive}"


# -- the Vinyals split ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Run:
    split: str
    archive: str
    alphabet: str
    first: int
    last: int


def _read_split_runs() -> list[_Run]:
    text = resources.files("metakit.datasets").joinpath("_splits/omniglot_vinyals.txt").read_text("utf-8")
    runs = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        split, archive, alphabet, first, last = line.split()
        runs.append(_Run(split, archive, alphabet, int(first), int(last)))
    return runs


def _split_characters(split: str) -> list[tuple[str, str]]:
    """``[(archive, "Alphabet/characterNN"), ...]`` of a Vinyals split, in the published order."""
    parts = ("train", "val") if split == "trainval" else (split,)
    out = []
    for part in parts:
        for r in _read_split_runs():
            if r.split == part:
                out.extend((r.archive, f"{r.alphabet}/character{n:02d}") for n in range(r.first, r.last + 1))
    return out


def vinyals_split(split: str) -> list[str]:
    """The class names of a Vinyals split, ``Alphabet/characterNN/rotDDD``, in published order."""
    _check_split("vinyals", split)
    return [f"{c}/rot{d:03d}" for _, c in _split_characters(split) for d in _ROTATIONS]


# -- argument checks -------------------------------------------------------------------------------
def _check_protocol(protocol: object) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r} is not an Omniglot protocol; use one of {', '.join(map(repr, PROTOCOLS))}")
    return protocol  # type: ignore[return-value]


def _check_split(protocol: str, split: object) -> str:
    if split not in PROTOCOLS[protocol]:
        raise ValueError(
            f"split={split!r} is not a split of protocol={protocol!r}; use one of "
            f"{', '.join(map(repr, PROTOCOLS[protocol]))}"
        )
    return split  # type: ignore[return-value]


def _check_image_size(image_size: object) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or not _MIN_SIZE <= image_size <= RAW_SIZE:
        raise ValueError(
            f"image_size={image_size!r} is invalid; give an integer between {_MIN_SIZE} and {RAW_SIZE} "
            f"(the raw images are {RAW_SIZE}x{RAW_SIZE}; 28 is the standard few-shot size)"
        )
    return image_size


# -- archives ------------------------------------------------------------------------------------
def locate_archive(root: str | os.PathLike, archive: str) -> Path | None:
    """The zip of ``archive`` (``"background"``/``"evaluation"``) in ``root`` if present, else its
    extracted folder, else None."""
    root = Path(root)
    z = root / _zip_name(archive)
    if z.is_file():
        return z
    d = root / _folder_name(archive)
    if d.is_dir():
        return d
    return None


def _scan(source: ArchiveSource, archive: str) -> list[tuple[str, list[str]]]:
    """Check the layout and counts of an archive; return ``[(character, [members])...]`` sorted.

    Members that are not ``.png`` files (``.DS_Store``, ``__MACOSX/`` ...) are ignored.
    """
    top = _folder_name(archive)
    chars: dict[str, list[str]] = {}
    for name in source.names:
        parts = name.split("/")
        if not name.lower().endswith(".png") or parts[0] == "__MACOSX" or parts[-1].startswith("."):
            continue
        if len(parts) != 4 or parts[0] != top or not _CHARACTER_RE.fullmatch(parts[2]):
            raise ValueError(
                f"archive {source.path} has an unexpected member {name!r}; Omniglot images are "
                f"{top}/<Alphabet>/characterNN/<file>.png. Is this the official {_zip_name(archive)}?"
            )
        chars.setdefault(f"{parts[1]}/{parts[2]}", []).append(name)
    alphabets = {c.split("/")[0] for c in chars}
    got = (len(alphabets), len(chars), sum(len(v) for v in chars.values()))
    want = EXPECTED_COUNTS[archive]
    if got != want:
        raise ValueError(
            f"archive {source.path} holds {got[0]} alphabets, {got[1]} characters and {got[2]:,} images; "
            f"the official {_zip_name(archive)} has {want[0]}, {want[1]} and {want[2]:,}. "
            "It is incomplete or not the right file: delete it and download it again"
        )
    for c, members in chars.items():
        if len(members) != IMAGES_PER_CHARACTER:
            raise ValueError(
                f"archive {source.path}: character {c} has {len(members)} images, expected "
                f"{IMAGES_PER_CHARACTER}; delete the archive and download it again"
            )
    return [(c, sorted(chars[c])) for c in sorted(chars)]


_MANIFEST = "omniglot.txt.xz"
_manifest_cache: dict[str, str] | None = None


def omniglot_manifest() -> dict[str, str]:
    """``{member path: pixel digest}`` of the 32,460 official Omniglot images (shipped with the package)."""
    global _manifest_cache
    if _manifest_cache is None:
        _manifest_cache = read_manifest(_MANIFEST)
    return _manifest_cache


def write_omniglot_manifest(root: str | os.PathLike, path: str | os.PathLike) -> int:
    """Write the manifest of the two archives in ``root`` to ``path`` (how the shipped one was made).

    The shipped manifest was built from archives whose every PNG is the official file (see the
    provenance lines at its top). Returns the number of images.
    """
    digests: dict[str, str] = {}
    sources = []
    for archive in ARCHIVES:
        located = locate_archive(root, archive)
        if located is None:
            raise FileNotFoundError(f"Omniglot archive not found in {root}: {_zip_name(archive)}")
        with ArchiveSource(located) as source:
            for _, members in _scan(source, archive):
                for m in members:
                    digests[m] = pixel_digest(source.read(m), m)
        sources.append(f"{located.name} sha256 {sha256_file(located) if located.is_file() else 'folder'}")
    header = [
        "Omniglot (Lake et al. 2015), official images_background.zip and images_evaluation.zip: 32,460 images",
        "per image: first 16 hex digits of sha256(b'<width>x<height>\\n' + pixels as 8-bit grayscale, row-major)",
        *(f"built from {s}" for s in sources),
    ]
    write_manifest(path, digests, header)
    return len(digests)


def verify_omniglot_archive(
    path: str | os.PathLike, archive: str | None = None, *, content: bool = True, progress: bool = False
) -> dict[str, object]:
    """Check an Omniglot zip (or extracted folder): member names, layout, counts, 20 images per
    character, (for a zip) every member's CRC and, with ``content``, every image's pixels
    against the official manifest (see the module docstring).

    Args:
        path: ``.../images_background.zip``, ``.../images_evaluation.zip`` or their folders.
        archive: ``"background"`` or ``"evaluation"``; inferred from the file name if omitted.
        content: decode every image and compare its pixels with the manifest (a few seconds).
        progress: show a progress bar while checking the content.

    Returns:
        ``{"alphabets": ..., "characters": ..., "images": ..., "checks": [...]}``: ``checks`` names
        the checks passed: ``"layout"`` (names and counts), ``"crc"`` (zip CRCs), and for the
        content either ``"digest"`` (the zip's sha256 or md5 is one of :data:`KNOWN_DIGESTS`,
        whose images the manifest was built from or matches: nothing to decode) or ``"content"``
        (every image decoded and compared with the manifest).
    """
    path = Path(path)
    if archive is None:
        stem = path.name.removesuffix(".zip").removesuffix(".part")
        archive = next((a for a in ARCHIVES if stem.startswith(_folder_name(a))), None)
        if archive is None:
            raise ValueError(
                f"cannot tell which Omniglot archive {path} is; name it images_background.zip or "
                "images_evaluation.zip, or pass archive='background'/'evaluation'"
            )
    if archive not in ARCHIVES:
        raise ValueError(f"archive={archive!r} is invalid; use 'background' or 'evaluation'")
    checks = ["layout"]
    with ArchiveSource(path) as source:
        chars = _scan(source, archive)
        if source.is_zip:
            source.test_integrity()
            checks.append("crc")
        if content and source.is_zip and _is_known(path, archive):
            checks.append("digest")
        elif content:
            manifest = omniglot_manifest()
            top = _folder_name(archive) + "/"
            expected = {k: v for k, v in manifest.items() if k.startswith(top)}
            members = [m for _, ms in chars for m in ms]
            with tqdm(total=len(members), desc=f"verify {path.name}", unit="img", disable=not progress, leave=False) as bar:
                check_against_manifest(members, source.read, expected, str(path), on_image=lambda: bar.update(1))
            checks.append("content")
    return {
        "alphabets": len({c.split("/")[0] for c, _ in chars}),
        "characters": len(chars),
        "images": sum(len(m) for _, m in chars),
        "checks": checks,
    }


def _is_known(path: Path, archive: str) -> bool:
    md5, sha = _digests(path)
    return md5 in KNOWN_DIGESTS[archive]["md5"] or sha in KNOWN_DIGESTS[archive]["sha256"]


def _digests(path: Path) -> tuple[str, str]:
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            md5.update(block)
            sha.update(block)
    return md5.hexdigest(), sha.hexdigest()


def download_omniglot(
    root: str | os.PathLike,
    archives: tuple[str, ...] | list[str] = ARCHIVES,
    *,
    base_url: str | None = None,
    checksum: bool = True,
    progress: bool = True,
) -> list[Path]:
    """Download the official Omniglot zips into ``root`` (skipping those already there).

    Each file is fetched to a temporary name, then refused unless its size matches the server's
    ``Content-Length``, its digest is one of :data:`KNOWN_DIGESTS` (skip with
    ``checksum=False``, e.g. for a mirror that re-zipped the same PNGs), and
    :func:`verify_omniglot_archive` accepts it (layout, counts, CRCs, content). Only then is it renamed
    to ``root/images_<archive>.zip``.

    Args:
        root: destination folder (created if needed).
        archives: which of ``"background"``, ``"evaluation"`` to fetch.
        base_url: folder URL holding the zips; default ``$METAKIT_OMNIGLOT_URL`` or
            :data:`OMNIGLOT_URL`.
    """
    root = Path(root)
    url = (base_url or os.environ.get("METAKIT_OMNIGLOT_URL") or OMNIGLOT_URL).rstrip("/")
    out = []
    for archive in archives:
        if archive not in ARCHIVES:
            raise ValueError(f"archives contains {archive!r}; use 'background' and/or 'evaluation'")
        dest = root / _zip_name(archive)
        if not dest.is_file():

            def validate(tmp: Path, archive: str = archive, source: str = f"{url}/{_zip_name(archive)}") -> None:
                if checksum:
                    md5, sha = _digests(tmp)
                    known = KNOWN_DIGESTS[archive]
                    if md5 not in known["md5"] and sha not in known["sha256"]:
                        raise ValueError(
                            f"refusing {source}: its checksum (md5 {md5}, sha256 {sha}, {tmp.stat().st_size:,} bytes) "
                            f"matches no known {_zip_name(archive)}; pass checksum=False only if you trust "
                            "this mirror (the layout and counts are still verified)"
                        )
                try:
                    verify_omniglot_archive(tmp, archive)
                except ValueError as e:
                    raise ValueError(f"refusing {source}: {e}") from e

            download_file(f"{url}/{_zip_name(archive)}", dest, validate=validate, progress=progress)
        out.append(dest)
    return out


# -- decoding and caching ------------------------------------------------------------------------
def _load_archive(
    root: Path,
    archive: str,
    prep: Preprocessing,
    cache_dir: Path,
    download: bool,
    progress: bool,
    cache_arg: str | os.PathLike | None = None,
) -> tuple[Tensor, list[str], str]:
    """Decoded images ``[characters * 20, 1, S, S]`` of one archive, its sorted character
    names and its content key; from the cache when possible."""
    path = locate_archive(root, archive)
    if path is None:
        if download:
            download_omniglot(root, (archive,), progress=progress)
            path = root / _zip_name(archive)
        else:
            raise FileNotFoundError(
                f"Omniglot archive not found: {root / _zip_name(archive)} (nor the extracted folder "
                f"{root / _folder_name(archive)}/). Point root at the folder holding images_background.zip "
                "and images_evaluation.zip, or pass download=True to fetch them"
            )
    if path.is_file() and path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes): delete it and download it again")
    if path.is_file():
        key = sha256_file(path)
        source = None
    else:
        source = ArchiveSource(path)
        key = source.content_key()
    p = prep.as_dict()
    tag = f"s{prep.image_size}-c{prep.channels}-{prep.resample}-{'inv' if prep.invert else 'raw'}"
    cache_file = cache_dir / "omniglot" / f"{archive}-{key.removeprefix('listing-')[:16]}-{tag}.safetensors"
    expect = {
        "format": _CACHE_FORMAT,
        "archive": archive,
        "content_key": key,
        "preprocessing": json.dumps(p, sort_keys=True),
    }
    cached = load_cached(cache_file, expect)
    if cached is not None:
        tensors, meta = cached
        images, counts = tensors["images"], tensors["counts"]
        characters = json.loads(meta["characters"])
        if (
            len(characters) == EXPECTED_COUNTS[archive][1]
            and counts.numel() == len(characters)
            and bool((counts == IMAGES_PER_CHARACTER).all())
            and tuple(images.shape) == (len(characters) * IMAGES_PER_CHARACTER, 1, prep.image_size, prep.image_size)
        ):
            return images, characters, key
        cache_file.unlink(missing_ok=True)  # consistent checksums but wrong shape: stale format

    ensure_writable_cache_dir(cache_file.parent, cache_arg)  # before seconds of decoding, not after
    if source is None:
        source = ArchiveSource(path)
    with source:
        chars = _scan(source, archive)
        n = sum(len(m) for _, m in chars)
        images = torch.empty(n, 1, prep.image_size, prep.image_size, dtype=torch.uint8)
        i = 0
        with tqdm(total=n, desc=f"decode {path.name}", unit="img", disable=not progress, leave=False) as bar:
            for _, members in chars:
                for m in members:
                    images[i] = _apply(source.read(m), prep, name=f"{m} in {path}")
                    i += 1
                bar.update(len(members))
    characters = [c for c, _ in chars]
    counts = torch.tensor([len(m) for _, m in chars], dtype=torch.int64)
    save_cached(cache_file, {"images": images, "counts": counts}, {**expect, "characters": json.dumps(characters)})
    return images, characters, key


class Omniglot(ClassIndexedDataset):
    """Omniglot as a :class:`ClassIndexedDataset` (see the module docstring for details).

    Args:
        root: folder holding ``images_background.zip`` and ``images_evaluation.zip`` (or the
            folders they extract to).
        protocol: ``"vinyals"`` (default) or ``"lake"``.
        split: vinyals: ``"train"`` (default), ``"val"``, ``"trainval"``, ``"test"``;
            lake: ``"background"`` (default) or ``"evaluation"``.
        image_size: side of the square images, 8..105 (default 28).
        resample: the Pillow filter that resizes the 105x105 scans, a name of
            :data:`~metakit.datasets.images.RESAMPLE_FILTERS` (default ``"lanczos"``;
            ``"nearest"`` keeps the images binary).
        download: fetch missing archives from :data:`OMNIGLOT_URL` (or
            ``$METAKIT_OMNIGLOT_URL``) into ``root`` first.
        cache_dir: folder for decoded tensors (default ``$METAKIT_CACHE`` or ``~/.cache/metakit``).
        progress: show tqdm bars while downloading or decoding.

    Attributes (besides those of :class:`ClassIndexedDataset`):
        data: ``uint8 [classes * 20, 1, image_size, image_size]``, strokes 255, background 0.
        class_names: ``Alphabet/characterNN`` (lake) or ``Alphabet/characterNN/rotDDD`` (vinyals).
        meta: ``dataset``, ``protocol``, ``split``, ``image_size``, ``preprocessing`` (the
            arguments of :func:`~metakit.datasets.preprocess_image`), ``archives`` (content
            key of each archive read) and, for vinyals, ``rotation``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        protocol: str = "vinyals",
        split: str | None = None,
        image_size: int = 28,
        download: bool = False,
        cache_dir: str | os.PathLike | None = None,
        *,
        progress: bool = True,
        resample: str = "lanczos",
    ) -> None:
        protocol = _check_protocol(protocol)
        split = _check_split(protocol, PROTOCOLS[protocol][0] if split is None else split)
        image_size = _check_image_size(image_size)
        prep = Preprocessing(image_size=image_size, channels=1, resample=resample, invert=True)
        root = Path(root).expanduser()
        if root.exists() and not root.is_dir():
            raise FileNotFoundError(
                f"root={str(root)!r} is a file, not a folder; point it at the folder holding images_background.zip "
                "and images_evaluation.zip"
            )
        if not root.is_dir() and not download:
            raise FileNotFoundError(
                f"root={str(root)!r} is not a folder; point it at the folder holding images_background.zip "
                "and images_evaluation.zip, or pass download=True to fetch them there"
            )
        cdir = resolve_cache_dir(cache_dir)

        loaded: dict[str, tuple[Tensor, list[str], str]] = {}

        def archive_data(archive: str) -> tuple[Tensor, list[str], str]:
            if archive not in loaded:
                loaded[archive] = _load_archive(root, archive, prep, cdir, download, progress, cache_dir)
            return loaded[archive]

        per = IMAGES_PER_CHARACTER
        meta: dict = {
            "dataset": "omniglot",
            "protocol": protocol,
            "split": split,
            "image_size": image_size,
            "preprocessing": prep.as_dict(),
        }
        if protocol == "lake":
            images, characters, _ = archive_data(split)
            data, names = images, list(characters)
        else:
            wanted = _split_characters(split)
            groups, index = [], {}  # archive characters stacked; (archive, character) -> row
            for archive in ARCHIVES:
                if not any(a == archive for a, _ in wanted):
                    continue
                images, characters, _ = archive_data(archive)
                start = sum(g.shape[0] for g in groups)
                index.update({(archive, c): start + i for i, c in enumerate(characters)})
                missing = [c for a, c in wanted if a == archive and (a, c) not in index]
                if missing:
                    raise ValueError(
                        f"the {_zip_name(archive)} in {root} lacks {len(missing)} characters of the vinyals "
                        f"split (e.g. {missing[0]}); it is not the official archive"
                    )
                groups.append(images.view(-1, per, *images.shape[1:]))
            rows = torch.tensor([index[a, c] for a, c in wanted], dtype=torch.int64)
            grouped = groups[0] if len(groups) == 1 else torch.cat(groups)
            base = grouped.index_select(0, rows)  # [chars, 20, 1, S, S] in published order
            # [chars, 4 rotations, 20, 1, S, S]; rot90 with dims (H, W) turns counter-clockwise
            rotated = torch.empty(base.shape[0], len(_ROTATIONS), *base.shape[1:], dtype=base.dtype)
            for k, d in enumerate(_ROTATIONS):
                rotated[:, k] = torch.rot90(base, d // 90, dims=(-2, -1))
            data = rotated.view(-1, 1, image_size, image_size)
            names = [f"{c}/rot{d:03d}" for _, c in wanted for d in _ROTATIONS]
            meta["rotation"] = "counter-clockwise by DDD degrees (torch.rot90 after resizing), as PIL Image.rotate(DDD)"
        meta["archives"] = {_zip_name(a): v[2] for a, v in loaded.items()}
        offsets = torch.arange(0, len(names) + 1, dtype=torch.int64) * per
        super().__init__(data, offsets, names, name="omniglot", meta=meta)

    @property
    def alphabets(self) -> list[str]:
        """Alphabets of this split, in class order."""
        return list(dict.fromkeys(n.split("/")[0] for n in self.class_names))

    @property
    def characters(self) -> list[str]:
        """``Alphabet/characterNN`` of this split, in class order (one per 4 classes for vinyals)."""
        return list(dict.fromkeys("/".join(n.split("/")[:2]) for n in self.class_names))
