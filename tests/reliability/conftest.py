"""Shared run folders and configs of the reliability suite (tiny models: seconds, not minutes)."""

from __future__ import annotations

import io
import random
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

IMAGE_CONFIG = """\
data: {{dataset: folder, root: {root}, image_size: 16}}
train: {{ways: 3, shots: 1, queries: 2, meta_batch: 2, steps: 4}}
eval: {{val_episodes: 4, val_every: 2, test_episodes: 4}}
model: {{name: conv4, hidden: 8}}
algorithm: {{name: protonet}}
run: {{checkpoint_every: 2, log_every: 2, progress: false, deterministic: true, num_threads: 1}}
"""

#: MAML on sinusoids with a tiny MLP: no data on disk, a few milliseconds per step, deterministic.
SINUSOID_CONFIG = """\
data: {{dataset: sinusoid}}
train: {{shots: 5, queries: 5, meta_batch: 4, steps: {steps}}}
eval: {{val_episodes: 0}}
model: {{name: mlp, in_features: 1, hidden: [16], out_features: 1}}
algorithm: {{name: maml, inner_lr: 0.01, inner_steps: 1}}
optim: {{name: adam, lr: 0.001}}
run: {{seed: {seed}, checkpoint_every: {every}, keep_last: 2, log_every: 5, progress: false, deterministic: true, num_threads: 1}}
"""


def write_images(root: Path, classes: int = 4, per_class: int = 3) -> Path:
    """ROOT/{train,val,test}/classN/i.png: a dark square at a class-specific place."""
    rng = random.Random(0)
    for split in ("train", "val", "test"):
        for c in range(classes):
            for i in range(per_class):
                img = Image.new("L", (20, 20), 255)
                x, y = (c * 5) % 14, (c * 7) % 14
                ImageDraw.Draw(img).rectangle([x + rng.randint(0, 1), y, x + 5, y + 5], fill=0)
                p = root / split / f"class{c}" / f"{i}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                img.save(p)
    return root


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> Path:
    return write_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def image_config(images, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("configs") / "protonet_tiny.yaml"
    path.write_text(IMAGE_CONFIG.format(root=images))
    return path


@pytest.fixture(scope="session")
def trained_run(image_config, tmp_path_factory) -> Path:
    """A finished 4-step ProtoNet/Conv4 run (BatchNorm with running statistics) on the tiny image folder."""
    from metakit.runtime.config import load_config
    from metakit.runtime.trainer import train

    run_dir = tmp_path_factory.mktemp("runs") / "proto"
    assert train(load_config(image_config), run_dir, stream=io.StringIO()).status == "finished"
    return run_dir


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """``run_copy()`` -> a private copy of the trained run folder (cases may damage it)."""

    def copy() -> Path:
        dest = tmp_path / "run"
        if not dest.exists():
            shutil.copytree(trained_run, dest)
        return dest

    return copy
