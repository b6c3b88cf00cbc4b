import random
from pathlib import Path

import pytest
from PIL import Image, ImageDraw


def _write_image_folder(root: Path, classes: dict[str, int]) -> Path:
    """ROOT/<split>/classN/i.png, 4 images of 20x20 per class: a dark square at a class-specific
    place (shifted on the test split), with a pixel of random jitter."""
    rng = random.Random(0)
    for split, n in classes.items():
        for c in range(n):
            for i in range(4):
                img = Image.new("L", (20, 20), 255)
                x, y = (c * 6 + 3 * (split == "test")) % 14, (c * 8) % 14
                ImageDraw.Draw(img).rectangle([x + rng.randint(0, 1), y, x + 5, y + 5 + rng.randint(0, 1)], fill=0)
                p = root / split / f"class{c}" / f"{i}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                img.save(p)
    return root


@pytest.fixture(scope="session")
def write_image_folder():
    """A function ``(root, {split: classes}) -> root`` writing a tiny image-folder dataset."""
    return _write_image_folder
