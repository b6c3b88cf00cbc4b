from __future__ import annotations

import pytest
import torch
from torch import nn

from metakit.algorithms import Algorithm, BuildContext, register
from metakit.runtime.builders import (
    build_algorithm,
    build_dataset,
    build_episodes,
    build_optimizer,
    build_sampler,
    build_scheduler,
    resolve_config,
)
from metakit.runtime.config import Config


@register("_builders_test_head")
class _Head(Algorithm):
    """Asks for a head of ``ways`` outputs, like the MAML family.

    Args:
        model: the backbone.
        inner_lr: a number.
    """

    def __init__(self, model: nn.Module, inner_lr: float = 0.4) -> None:
        super().__init__()
        self.model = model
        self.inner_lr = inner_lr

    @classmethod
    def model_defaults(cls, context: BuildContext):
        return {"out_features": context.ways, "track_running_stats": False}


CTX = BuildContext(ways=5, example_shape=(1, 28, 28), num_train_classes=100)


def cfg(*overrides: str) -> Config:
    base = {"data": {"root": "/d"}, "train": {"ways": 5}, "algorithm": {"name": "_builders_test_head"}}
    return Config.from_dict(base).with_overrides(list(overrides))


def test_resolution_order_signature_then_algorithm_then_user():
    resolved = resolve_config(cfg("model.track_running_stats=true"), CTX)
    opts = dict(resolved.model.options)
    assert opts["out_features"] == 5  # from model_defaults
    assert opts["track_running_stats"] is True  # the user's option wins
    assert opts["hidden"] == 64 and opts["in_channels"] == 1  # Conv4's own defaults, made explicit
    assert dict(resolved.algorithm.options) == {"inner_lr": 0.4}
    assert resolve_config(resolved, CTX) == resolved  # idempotent: the written config rebuilds the same
    algo = build_algorithm(resolved, CTX)
    assert isinstance(algo, _Head) and algo.model.head.out_features == 5
    assert algo.model.features[1].track_running_stats is True


def test_build_algorithm_applies_model_defaults_without_resolution():
    algo = build_algorithm(cfg(), CTX)
    assert algo.model.head.out_features == 5 and algo.model.features[1].track_running_stats is False


def test_optimizers_and_schedules():
    params = [nn.Parameter(torch.zeros(2))]
    adam = build_optimizer(cfg("optim.lr=0.01", "optim.weight_decay=0.1").optim, params)
    assert isinstance(adam, torch.optim.Adam) and adam.param_groups[0]["weight_decay"] == 0.1
    sgd = build_optimizer(cfg("optim.name=sgd", "optim.momentum=0.9").optim, params)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.9
    step = build_scheduler(cfg("optim.schedule=step", "optim.step_size=3", "optim.gamma=0.1").optim, sgd, 10)
    for _ in range(3):
        sgd.step()
        step.step()
    assert sgd.param_groups[0]["lr"] == pytest.approx(1e-4)
    cos_opt = build_optimizer(cfg().optim, params)
    cos = build_scheduler(cfg("optim.schedule=cosine").optim, cos_opt, 4)
    for _ in range(4):
        cos_opt.step()
        cos.step()
    assert cos_opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    lin_opt = build_optimizer(cfg("optim.name=sgd", "optim.lr=1.0").optim, params)
    lin = build_scheduler(cfg("optim.schedule=linear").optim, lin_opt, 4)
    seen = []
    for _ in range(4):
        seen.append(lin_opt.param_groups[0]["lr"])
        lin_opt.step()
        lin.step()
    assert seen == pytest.approx([1.0, 0.75, 0.5, 0.25]) and lin_opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert build_scheduler(cfg().optim, cos_opt, 4) is None
    with pytest.raises(ValueError, match=r"the algorithm has no trainable parameters"):
        build_optimizer(cfg().optim, [])


def test_folder_dataset_missing_split_is_named(tmp_path):
    (tmp_path / "train").mkdir()
    c = Config.from_dict({"data": {"dataset": "folder", "root": str(tmp_path)}, "train": {"ways": 2}})
    with pytest.raises(FileNotFoundError, match=r"has no folder 'val'; a folder dataset is ROOT/<split>/<class>/<image>"):
        build_dataset(c, "val")


def test_lake_has_no_validation_split():
    c = Config.from_dict({"data": {"root": "/d", "protocol": "lake"}, "train": {"ways": 5}, "eval": {"val_episodes": 0}})
    with pytest.raises(ValueError, match=r"task.val_split is null \(omniglot \(lake\) has no val split\)"):
        build_dataset(c, "val")


def test_sinusoid_episode_seeds_differ_per_split():
    c = Config.from_dict({"task": {"family": "sinusoid"}, "model": {"name": "mlp"}, "algorithm": {"name": "maml"}})
    assert c.run.seed == c.eval.seed == 0  # the same seed, yet training, val and test tasks differ
    val = next(iter(build_episodes(c, "val", episodes=2)))
    test = next(iter(build_episodes(c, "test", episodes=2)))
    train = build_sampler(c, None).sample(2)
    assert val.support_x.shape == (2, 1, 1) and not torch.equal(val.support_x, test.support_x)
    assert not torch.equal(train.support_x, val.support_x) and not torch.equal(train.support_x, test.support_x)
    with pytest.raises(ValueError, match=r"split='dev' is not known for task.family=sinusoid; use train, val or test"):
        build_dataset(c, "dev")
