"""Real data on disk -> class-indexed tensors in memory."""

from .base import ClassIndexedDataset
from .folder import ImageFolder
from .images import IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS, Preprocessing, load_images, preprocess_image
from .omniglot import Omniglot, download_omniglot, verify_omniglot_archive, vinyals_split

__all__ = [
    "ClassIndexedDataset",
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "ImageFolder",
    "Omniglot",
    "Preprocessing",
    "download_omniglot",
    "load_images",
    "preprocess_image",
    "verify_omniglot_archive",
    "vinyals_split",
]
