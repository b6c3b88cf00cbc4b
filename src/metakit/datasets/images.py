"""How a raw image file becomes model input: one function used everywhere.

:func:`preprocess_image` is the single definition of the image pipeline. The Omniglot loader,
:class:`~metakit.datasets.ImageFolder` and ``metakit predict`` all call it with the parameters
stored in a dataset's ``meta["preprocessing"]``, so a user's raw image is treated exactly as
the training images were.

The pipeline, in order:

1. decode the file with Pillow; an image with transparency is composited onto white first;
2. convert to 8-bit grayscale (``channels=1``, Pillow mode ``"L"``) or RGB (``channels=3``).
   Converting *before* resizing matters for 1-bit images such as Omniglot's: Pillow resizes
   mode ``"1"`` images with nearest-neighbour whatever filter is asked for;
3. resize to ``image_size x image_size`` with the named Pillow filter (default LANCZOS: grey
   levels; on Omniglot's 1-bit scans ``"nearest"`` gives the binary images of the published
   code). The aspect ratio is not preserved; Omniglot is square;
4. if ``invert``, replace every value ``v`` by ``255 - v``: dark strokes on a light background
   (Omniglot's PNGs: black on white) become bright strokes on a dark background, so that
   ``ClassIndexedDataset.to_float`` gives strokes near 1.0 and background 0.0;
5. return a ``uint8`` tensor ``[channels, image_size, image_size]``.

Size limit: a file whose header announces more than :data:`MAX_IMAGE_PIXELS` pixels (8192 x 8192)
is refused before it is decoded, with an error naming it: a small file can announce a huge
image (a "decompression bomb", e.g. a 30000 x 30000 PNG under 1 MB) that would take gigabytes
to decode. Pillow's own warning for large images is silenced, this limit replaces it.
"""

from __future__ import annotations

import io
import math
import os
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

__all__ = [
    "IMAGE_EXTENSIONS",
    "RESAMPLE_FILTERS",
    "Preprocessing",
    "preprocess_image",
    "open_image",
    "MAX_IMAGE_PIXELS",
    "load_images",
    "list_images",
]

#: File name endings read as images (compared case-insensitively).
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

#: Names accepted for ``resample`` and the Pillow filter each one means.
RESAMPLE_FILTERS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

ImageSource = Union[str, os.PathLike, bytes, Image.Image]

_MAX_IMAGE_SIZE = 4096

#: The largest image (width x height, in pixels) that is decoded: 8192 x 8192. Larger ones are refused.
MAX_IMAGE_PIXELS = 8192 * 8192


@dataclass(frozen=True)
class Preprocessing:
    """The parameters of :func:`preprocess_image`, validated.

    ``asdict(p)`` (or :meth:`as_dict`) is what datasets store in ``meta["preprocessing"]``;
    ``Preprocessing(**meta["preprocessing"])`` rebuilds it.
    """

    image_size: int
    channels: int = 1
    resample: str = "lanczos"
    invert: bool = True

    def __post_init__(self) -> None:
        s = self.image_size
        if isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= _MAX_IMAGE_SIZE:
            raise ValueError(
                f"image_size={s!r} is invalid; give an integer between 1 and {_MAX_IMAGE_SIZE} "
                "(the side of the square model input in pixels, e.g. 28 for Omniglot)"
            )
        if self.channels not in (1, 3) or isinstance(self.channels, bool):
            raise ValueError(f"channels={self.channels!r} is invalid; use 1 (grayscale) or 3 (RGB)")
        if self.resample not in RESAMPLE_FILTERS:
            raise ValueError(
                f"resample={self.resample!r} is not a known filter; use one of {sorted(RESAMPLE_FILTERS)}"
            )
        if not isinstance(self.invert, bool):
            raise TypeError(f"invert={self.invert!r} must be True or False")

    def as_dict(self) -> dict:
        return asdict(self)

    def __call__(self, image: ImageSource) -> Tensor:
        return _apply(image, self)


def preprocess_image(
    image: ImageSource,
    *,
    image_size: int,
    channels: int = 1,
    resample: str = "lanczos",
    invert: bool = True,
) -> Tensor:
    """Turn one raw image into a ``uint8`` tensor ``[channels, image_size, image_size]``.

    Args:
        image: a file path, the encoded bytes of an image file, or a ``PIL.Image``.
        image_size: side of the square output in pixels.
        channels: 1 (grayscale) or 3 (RGB).
        resample: Pillow filter name, one of :data:`RESAMPLE_FILTERS` (default ``"lanczos"``).
        invert: map ``v -> 255 - v`` after resizing (default ``True``: the Omniglot convention,
            dark strokes on white become bright strokes on black). Use ``False`` for natural
            images.

    The steps are listed in the module docstring. Raises ``FileNotFoundError`` for a missing
    path and ``ValueError`` naming the file for data Pillow cannot decode.
    """
    return _apply(image, Preprocessing(image_size, channels, resample, invert))


def _describe(image: ImageSource) -> str:
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    if isinstance(image, bytes):
        return f"<{len(image)} bytes>"
    return repr(image)


def _too_large(label: str, pixels: str) -> ValueError:
    side = math.isqrt(MAX_IMAGE_PIXELS)
    square = f" ({side} x {side})" if side * side == MAX_IMAGE_PIXELS else ""
    return ValueError(
        f"image {label} is {pixels}, over the limit of {MAX_IMAGE_PIXELS:,} pixels{square}: refused "
        "without decoding it (a possible decompression bomb); scale it down first"
    )


def open_image(image: str | os.PathLike | bytes, name: str | None = None) -> Image.Image:
    """Decode an image file (a path or its bytes) with Pillow, refusing images over :data:`MAX_IMAGE_PIXELS`.

    Raises ``FileNotFoundError`` for a missing path and ``ValueError`` naming the file (or ``name``)
    for a folder, an undecodable file or an image over the limit.
    """
    label = name or _describe(image)
    if isinstance(image, bytes):
        source: object = io.BytesIO(image)
    else:
        path = Path(image)
        if not path.exists():
            raise FileNotFoundError(f"image file not found: {path}")
        if not path.is_file():
            raise ValueError(f"{path} is a folder, not an image file; give an image file (or its folder where a folder is expected)")
        source = path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(source)  # type: ignore[arg-type]  # reads the header only
        except Image.DecompressionBombError as e:
            m = re.search(r"\((\d+) pixels\)", str(e))
            raise _too_large(label, f"{int(m.group(1)):,} pixels" if m else "too large") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise ValueError(f"cannot read image {label}: {e} (is it a valid image file?)") from e
        w, h = img.size
        if w * h > MAX_IMAGE_PIXELS:
            raise _too_large(label, f"{w} x {h} = {w * h:,} pixels")
        try:
            img.load()
        except (OSError, SyntaxError, ValueError) as e:
            raise ValueError(f"cannot read image {label}: {e} (is it a valid image file?)") from e
    return img


def _apply(image: ImageSource, p: Preprocessing, name: str | None = None) -> Tensor:
    if isinstance(image, Image.Image):
        img = image
    elif isinstance(image, (str, os.PathLike, bytes)):
        img = open_image(image, name)
    else:
        raise TypeError(
            f"image must be a file path, bytes or a PIL.Image, got {type(image).__name__}"
        )
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    img = img.convert("L" if p.channels == 1 else "RGB")
    if img.size != (p.image_size, p.image_size):
        img = img.resize((p.image_size, p.image_size), RESAMPLE_FILTERS[p.resample])
    arr = np.array(img, dtype=np.uint8)  # a writable copy
    if p.invert:
        arr = 255 - arr
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


def list_images(folder: str | os.PathLike, extensions: Iterable[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files directly inside ``folder`` (not recursive), sorted by name.

    Hidden files (names starting with ``.``) are skipped; extensions compare case-insensitively.
    """
    exts = tuple(e.lower() for e in extensions)
    folder = Path(folder)
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in exts
    )


def load_images(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    image_size: int,
    channels: int = 1,
    resample: str = "lanczos",
    invert: bool = True,
) -> list[tuple[Path, Tensor]]:
    """Preprocess several image files, e.g. the user's images for ``metakit predict``.

    Args:
        paths: a folder (its images, sorted by name, not recursive) or a list of image files.
        image_size, channels, resample, invert: as in :func:`preprocess_image`; pass a trained
            dataset's ``**meta["preprocessing"]`` to match the training images exactly.

    Returns:
        ``[(path, uint8 tensor [channels, image_size, image_size]), ...]`` in input order.
    """
    p = Preprocessing(image_size, channels, resample, invert)
    if isinstance(paths, (str, os.PathLike)):
        root = Path(paths)
        if root.is_dir():
            files = list_images(root)
            if not files:
                raise ValueError(
                    f"paths={str(root)!r} is a folder with no images (looked for {', '.join(IMAGE_EXTENSIONS)})"
                )
        else:
            files = [root]
    else:
        files = [Path(x) for x in paths]
        if not files:
            raise ValueError("paths is empty; give a folder or at least one image file")
    return [(f, _apply(f, p)) for f in files]
