"""Users' own images: ``root/<class>/<image>`` as a :class:`ClassIndexedDataset`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import torch

from .base import ClassIndexedDataset
from .images import IMAGE_EXTENSIONS, Preprocessing, _apply, list_images

__all__ = ["ImageFolder"]


class ImageFolder(ClassIndexedDataset):
    """A class-indexed dataset from a folder of class folders.

    ``root/<class>/<image>``: one sub-folder per class (classes sorted by folder name), the
    image files directly inside it (sorted by name; extensions in :data:`IMAGE_EXTENSIONS`,
    case-insensitive). Hidden files and folders (``.name``) are skipped; other files are ignored.
    Every image goes through :func:`~metakit.datasets.preprocess_image` with the arguments
    below, which are stored in ``meta["preprocessing"]``.

    The defaults follow the Omniglot convention (28x28 grayscale, LANCZOS, inverted: dark strokes
    on a light background become bright on dark). For photographs use e.g.
    ``channels=3, invert=False, image_size=84``.

    Args:
        root: the folder holding one folder per class.
        image_size: side of the square images in pixels.
        channels: 1 (grayscale) or 3 (RGB).
        invert: map ``v -> 255 - v`` after resizing.
        resample: Pillow filter name (default ``"lanczos"``).
        extensions: file endings read as images.

    Raises:
        FileNotFoundError: ``root`` does not exist or is not a folder.
        ValueError: no class folders, a class folder without images, or an image that cannot
            be decoded (the message names the file).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int = 28,
        channels: int = 1,
        invert: bool = True,
        resample: str = "lanczos",
        extensions: Iterable[str] = IMAGE_EXTENSIONS,
    ) -> None:
        prep = Preprocessing(image_size, channels, resample, invert)
        root = Path(root).expanduser()
        if not root.is_dir():
            what = "is a file, not a folder" if root.exists() else "is not a folder"
            raise FileNotFoundError(f"root={str(root)!r} {what}; expected root/<class>/<image> with one folder per class")
        exts = tuple(e.lower() for e in extensions)
        class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not class_dirs:
            loose = list_images(root, exts)
            hint = (
                f" (found {len(loose)} images directly in it: move them into one folder per class)" if loose else ""
            )
            raise ValueError(
                f"root={str(root)!r} has no class folders{hint}; expected root/<class>/<image>"
            )
        files: list[list[Path]] = []
        for d in class_dirs:
            imgs = list_images(d, exts)
            if not imgs:
                raise ValueError(
                    f"class folder {d} has no images (looked for {', '.join(exts)}); add images or remove the folder"
                )
            files.append(imgs)
        total = sum(len(f) for f in files)
        data = torch.empty(total, channels, image_size, image_size, dtype=torch.uint8)
        i = 0
        for imgs in files:
            for f in imgs:
                data[i] = _apply(f, prep)
                i += 1
        offsets = torch.zeros(len(files) + 1, dtype=torch.int64)
        offsets[1:] = torch.cumsum(torch.tensor([len(f) for f in files]), 0)
        meta = {
            "dataset": "folder",
            "root": str(root),
            "image_size": image_size,
            "preprocessing": prep.as_dict(),
        }
        super().__init__(data, offsets, [d.name for d in class_dirs], name="folder", meta=meta)
        self.files = [f for imgs in files for f in imgs]
