"""The N-way K-shot classification family and its dataset sources."""

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from metakit.datasets import ClassIndexedDataset
from metakit.options import ConfigError, Options, option
from metakit.runtime.config import Config
from metakit.tasks import EpisodeBatch, EpisodeSampler, FixedEpisodes
from metakit.tasks.classification import (
    ClassificationFamily,
    DatasetSource,
    accuracy_scores,
    available_sources,
    register_source,
)


def blobs(classes: int = 9, per_class: int = 6, dim: int = 5) -> ClassIndexedDataset:
    g = torch.Generator().manual_seed(classes)
    x = torch.randn(classes * per_class, dim, generator=g)
    return ClassIndexedDataset.from_tensors(x, torch.arange(classes).repeat_interleave(per_class))


@dataclass(frozen=True)
class BlobOptions(Options):
    section: ClassVar[str] = "task"

    dim: int = option(5, "blobs: features per example", ge=1)


@register_source("_blobs")
class Blobs(DatasetSource):
    """A new dataset source in a few lines: Gaussian vectors, one split per class count."""

    Options = BlobOptions
    loaded: ClassVar[list[str]] = []

    @classmethod
    def example_shape(cls, common, options):
        return (options.dim,)

    @classmethod
    def load(cls, common, options, split, *, progress):
        cls.loaded.append(split)
        return blobs(classes={"train": 9, "val": 6, "test": 7}[split], dim=options.dim)


def family(**options) -> ClassificationFamily:
    raw = {"dataset": "_blobs", "root": "/nowhere", **options}
    return ClassificationFamily.from_options(raw)


def test_a_registered_source_is_selected_by_task_dataset():
    f = family(dim=3, val_split="test")
    assert f.example_shape() == (3,) and f.describe() == "_blobs"
    assert f.record() == {"dataset": "_blobs", "protocol": None}
    assert f.split_name("train") == "train" and f.split_name("val") == "test" and f.split_name("other") == "other"
    assert f.to_dict()["dim"] == 3 and f.to_dict()["val_split"] == "test"
    assert "_blobs" not in available_sources() and "_blobs" in available_sources(private=True)
    data = f.load("val")
    assert Blobs.loaded[-1] == "test" and data.num_classes == 7
    context = f.context(4, f.load("train"))
    assert (context.ways, context.example_shape, context.num_train_classes) == (4, (3,), 9)


def test_source_options_are_checked_and_unknown_keys_named():
    with pytest.raises(ConfigError, match=r"task.dim=0 is out of range: it must be >= 1"):
        family(dim=0)
    with pytest.raises(ConfigError, match=r"unknown config key 'task.protocol' for task.dataset=_blobs"):
        family(protocol="lake")
    with pytest.raises(ValueError, match=r"already registered by Blobs"):
        register_source("_blobs")(type("Other", (DatasetSource,), {}))


def test_omniglot_and_folder_defaults_need_no_data():
    omni = ClassificationFamily.from_options({"dataset": "omniglot", "root": "/d", "protocol": "lake"})
    assert [omni.split_name(s) for s in ("train", "test")] == ["background", "evaluation"]
    with pytest.raises(ValueError, match=r"split='val': task.val_split is null \(omniglot \(lake\) has no val split\)"):
        omni.split_name("val")
    assert omni.example_shape() == (1, 28, 28) and omni.record() == {"dataset": "omniglot", "protocol": "lake"}
    folder = ClassificationFamily.from_options({"dataset": "folder", "root": "/d", "channels": 3, "image_size": 12})
    assert folder.example_shape() == (3, 12, 12) and folder.to_dict()["invert"] is True
    assert folder.record() == {"dataset": "folder", "protocol": None}


def test_task_resample_reaches_the_images(tmp_path, omniglot_root, cache_dir):
    # task.resample is passed to both shipped sources: a folder of one grey-level gradient image, and
    # Omniglot's evaluation archive, binary under nearest.
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "train" / c).mkdir(parents=True)
        Image.fromarray((torch.arange(64).repeat(64, 1) * 4).to(torch.uint8).numpy(), mode="L").save(tmp_path / "train" / c / "0.png")
    shrink = {"dataset": "folder", "root": str(tmp_path), "image_size": 5, "invert": False}
    near = ClassificationFamily.from_options({**shrink, "resample": "nearest"}).load("train")
    smooth = ClassificationFamily.from_options(shrink).load("train")
    assert near.meta["preprocessing"]["resample"] == "nearest" and smooth.meta["preprocessing"]["resample"] == "lanczos"
    assert not torch.equal(near.data, smooth.data)
    assert set(near.data.unique().tolist()) <= set(range(0, 256, 4))  # picked pixels, not blended ones
    omni = ClassificationFamily.from_options(
        {"root": str(omniglot_root), "protocol": "lake", "cache_dir": str(cache_dir), "resample": "nearest"}
    ).load("test")
    assert set(omni.data.unique().tolist()) == {0, 255} and omni.meta["preprocessing"]["resample"] == "nearest"
    with pytest.raises(ConfigError, match=r"task.resample='area' is not a valid choice; use one of: nearest, box, "):
        ClassificationFamily.from_options({**shrink, "resample": "area"})


def test_sampler_and_eval_set_are_the_seeded_episode_samplers():
    f = family()
    data = f.load("train")
    mine = f.train_sampler(data, ways=3, shots=2, queries=1, seed=5).sample(4)
    ref = EpisodeSampler(data, 3, 2, 1, seed=5).sample(4)
    assert torch.equal(mine.support_x, ref.support_x) and torch.equal(mine.query_y, ref.query_y)
    fixed = f.eval_set("test", None, ways=3, shots=1, queries=2, episodes=5, seed=2, batch_size=2)
    ref_fixed = FixedEpisodes(f.load("test"), 3, 1, 2, 5, seed=2, batch_size=2)
    assert [b.num_tasks for b in fixed] == [2, 2, 1]
    for a, b in zip(fixed, ref_fixed):
        assert torch.equal(a.query_x, b.query_x) and torch.equal(a.classes, b.classes)
    with pytest.raises(ValueError, match=r"ways is required for task.family=classification"):
        f.eval_set("test", None, ways=None, shots=1, queries=1, episodes=1, seed=0)


class Fixed:
    """Scores chosen by hand: task 0 answers (0, 1, 1), task 1 answers (2, 2, 2)."""

    def predict(self, batch):
        scores = torch.zeros(2, 3, 3)
        for t, answers in enumerate([(0, 1, 1), (2, 2, 2)]):
            for q, a in enumerate(answers):
                scores[t, q, a] = 1.0
        return scores


def test_score_is_the_accuracy_per_task_by_hand():
    batch = EpisodeBatch(torch.zeros(2, 3, 1), torch.tensor([[0, 1, 2]] * 2), torch.zeros(2, 3, 1),
                         torch.tensor([[0, 1, 2], [0, 1, 2]]), 3)
    values = family().score(Fixed(), batch)
    assert values.dtype == torch.float64 and values.tolist() == pytest.approx([2 / 3, 1 / 3])
    assert accuracy_scores(Fixed(), batch).tolist() == values.tolist()
    wrong = EpisodeBatch(torch.zeros(2, 4, 1), torch.tensor([[0, 1, 2, 3]] * 2), torch.zeros(2, 3, 1),
                         torch.tensor([[0, 1, 2]] * 2), 4)
    with pytest.raises(ValueError, match=r"Fixed.predict returned shape \(2, 3, 3\); expected scores \[tasks, queries, ways\] = \[2, 3, 4\]"):
        family().score(Fixed(), wrong)


def test_a_config_with_a_new_source_builds_without_data_on_disk():
    cfg = Config.from_dict({"task": {"dataset": "_blobs", "root": "/nowhere", "dim": 4}, "train": {"ways": 3},
                            "model": {"name": "mlp", "in_features": 4, "out_features": 3}, "algorithm": {"name": "protonet"}})
    assert cfg.family.example_shape() == (4,) and cfg.task.to_dict()["dim"] == 4
    with pytest.raises(ConfigError, match=r"model 'mlp' with in_features=5 cannot run on the examples of "
                                          r"task.family=classification \(one example is \[4\]\): .*Fix the model options"):
        Config.from_dict({"task": {"dataset": "_blobs", "root": "/nowhere", "dim": 4}, "train": {"ways": 3},
                          "model": {"name": "mlp", "in_features": 5}, "algorithm": {"name": "protonet"}})
    # MAML asks for BatchNorm options an MLP does not have: refused when read, not when run
    with pytest.raises(ConfigError, match=r"model 'mlp' with out_features=3, track_running_stats=False, in_features=4 "
                                          r"cannot run .* unexpected keyword argument 'track_running_stats'"):
        Config.from_dict({"task": {"dataset": "_blobs", "root": "/nowhere", "dim": 4}, "train": {"ways": 3},
                          "model": {"name": "mlp", "in_features": 4}, "algorithm": {"name": "maml"}})
