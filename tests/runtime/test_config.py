from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import pytest
import yaml

from metakit.algorithms import Algorithm, register
from metakit.tasks.classification import ClassificationOptions, FolderOptions, OmniglotOptions
from metakit.tasks.sinusoid import SinusoidOptions
from metakit.runtime.config import (
    AlgorithmConfig,
    Config,
    ConfigError,
    OptimConfig,
    RunConfig,
    TrainConfig,
    algorithm_option_specs,
    config_help,
    load_config,
    parse_overrides,
)

REPO = Path(__file__).resolve().parents[2]
MAML_MLP = {"model": {"name": "mlp"}, "algorithm": {"name": "maml"}}


def base(**sections) -> dict:
    raw = {"task": {"family": "classification", "dataset": "omniglot", "root": "/data/omniglot"}, "train": {"ways": 5}}
    for name, body in sections.items():
        raw.setdefault(name, {}).update(body)
    return raw


def test_defaults_are_resolved_and_written_back(tmp_path):
    cfg = Config.from_dict(base(train={"shots": 5, "queries": 3}))
    task = cfg.task.options
    assert task["protocol"] == "vinyals"
    assert (task["train_split"], task["val_split"], task["test_split"]) == ("train", "val", "test")
    assert task["image_size"] == 28 and cfg.family.example_shape() == (1, 28, 28)
    # eval sizes default to the training ones
    assert (cfg.eval.ways, cfg.eval.shots, cfg.eval.queries) == (5, 5, 3)
    # the YAML written into run folders reads back to an equal config
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg


def test_sections_are_frozen():
    cfg = Config.from_dict(base())
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.optim.lr = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.algorithm.options["distance"] = "cosine"  # type: ignore[index]


def test_relative_root_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = Config.from_dict({"task": {"root": "data/omni"}, "train": {"ways": 5}})
    assert cfg.task.options["root"] == os.path.join(str(tmp_path), "data", "omni")


def test_overrides_are_yaml_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base()))
    cfg = load_config(
        path, ["optim.lr=3e-4", "train.steps=7", "run.deterministic=true", "algorithm.distance=cosine", "eval.ways=20"]
    )
    assert cfg.optim.lr == pytest.approx(3e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.train.steps == 7
    assert cfg.run.deterministic is True
    assert cfg.algorithm.options["distance"] == "cosine"
    assert cfg.eval.ways == 20


def test_int_is_accepted_for_float_fields():
    assert OptimConfig(lr=1).lr == 1.0
    assert isinstance(OptimConfig(lr=1).lr, float)


@pytest.mark.parametrize(
    "raw, message",
    [
        (base(optim={"learning_rat": 0.1}), r"unknown config key 'optim.learning_rat'"),
        (base(optim={"grad_clp": 1.0}), r"unknown config key 'optim.grad_clp' \(did you mean 'optim.grad_clip'\?\)"),
        (base(trian={"ways": 5}), r"unknown config section 'trian' \(did you mean 'train'\?\)"),
        (base(run={"keep_lst": 2}), r"did you mean 'run.keep_last'\?"),
        (base(algorithm={"distanse": "cosine"}), r"unknown config key 'algorithm.distanse' for algorithm 'protonet' \(did you mean 'algorithm.distance'\?\)"),
        (base(model={"hiden": 32}), r"unknown config key 'model.hiden' for model 'conv4' \(did you mean 'model.hidden'\?\)"),
        (base(algorithm={"name": "protonett"}), r"algorithm.name: algorithm='protonett' is not known; did you mean 'protonet'"),
        (base(model={"name": "conv5"}), r"model.name='conv5' is not known \(did you mean 'conv4'\?\)"),
    ],
)
def test_unknown_keys_suggest_the_closest(raw, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_dict(raw)


@pytest.mark.parametrize(
    "raw, message",
    [
        (base(optim={"lr": -0.1}), r"optim.lr=-0.1 is out of range: it must be > 0"),
        (base(optim={"lr": "fast"}), r"optim.lr='fast' has the wrong type: expected float, got str"),
        (base(optim={"name": "adamw"}), r"optim.name='adamw' is not a valid choice \(did you mean 'adam'\?\); use one of: adam, sgd"),
        (base(optim={"momentum": 0.9}), r"optim.momentum=0.9 is used by optim.name=sgd only"),
        (base(optim={"gamma": 1.5}), r"optim.gamma=1.5 is out of range: it must be <= 1"),
        (base(train={"ways": 5.0}), r"train.ways=5.0 has the wrong type: expected int or null, got float"),
        (base(train={"shots": 0}), r"train.shots=0 is out of range: it must be >= 1"),
        (base(train={"steps": True}), r"train.steps=True has the wrong type: expected int"),
        (base(run={"deterministic": "yes"}), r"run.deterministic='yes' has the wrong type: expected bool"),
        (base(eval={"val_episodes": -1}), r"eval.val_episodes=-1 is out of range: it must be >= 0"),
        (base(task={"protocol": "vinyal"}), r"task.protocol='vinyal' is not a valid choice \(did you mean 'vinyals'\?\)"),
        (base(task={"dataset": "omniglott"}), r"task.dataset='omniglott' is not a known dataset source \(did you mean 'omniglot'\?\); use one of: folder, omniglot"),
        (base(task={"family": "sinusiod"}), r"task.family='sinusiod' is not a known task family \(did you mean 'sinusoid'\?\)"),
        (base(task={"protcol": "lake"}), r"unknown config key 'task.protcol' for task.dataset=omniglot \(did you mean 'task.protocol'\?\)"),
        (base(algorithm={"distance": 3}), r"algorithm.distance=3 has the wrong type: expected one of euclidean\|cosine, got int"),
        (base(algorithm={"distance": "cosin"}), r"algorithm.distance='cosin' is not a valid choice \(did you mean 'cosine'\?\); use one of: euclidean, cosine"),
        (base(algorithm={"name": "relation", "class_pool": "max"}), r"algorithm.class_pool='max' is not a valid choice; use one of: sum, mean"),
        (base(algorithm={"learn_scale": "no"}), r"algorithm.learn_scale='no' has the wrong type: expected bool"),
        (base(model={"hidden": [64]}), r"model.hidden=\[64\] has the wrong type: expected int, got list"),
        (base(optim={"grad_clip": float("nan")}), r"optim.grad_clip=nan is not a number"),
        (base(algorithm={"options": {"distance": "cosine"}}), r"algorithm.options is not a key"),
        ({"task": {"dataset": "omniglot"}, "train": {"ways": 5}}, r"task.root is required for task.dataset=omniglot"),
        ({"task": {"root": "/d"}}, r"train.ways is required for task.family=classification"),
        (base(eval={"ways": None}, train={"ways": None}), r"train.ways is required for task.family=classification"),
        ({"task": {"family": "sinusoid"}, "train": {"ways": 5}, **MAML_MLP}, r"train.ways=5 but task.family=sinusoid gives regression tasks, which have no classes; set train.ways=null"),
        ({"task": {"family": "sinusoid"}, "eval": {"ways": 5}, **MAML_MLP}, r"eval.ways=5 but task.family=sinusoid gives regression"),
        ({"task": {"family": "sinusoid", "root": "/d"}}, r"unknown config key 'task.root' for task.family=sinusoid; keys of task: amplitude, phase, x_range"),
        ({"task": {"family": "sinusoid", "amplitude": [5, 1]}}, r"task.amplitude=\[5.0, 1.0\] must be a \(low, high\) pair of finite numbers with low <= high"),
        (base(task={"protocol": "lake"}), r"task.val_split is null \(omniglot \(lake\) has no validation split\) but eval.val_episodes=100; set eval.val_episodes=0"),
        ({"task": {"dataset": "folder", "root": "/d", "protocol": "lake"}, "train": {"ways": 5}}, r"unknown config key 'task.protocol' for task.dataset=folder \(did you mean 'task.root'\?\); keys of the task section for this dataset: family, dataset, image_size, root, test_split, train_split, val_split, channels, invert"),
        (base(task={"channels": 3}), r"unknown config key 'task.channels' for task.dataset=omniglot"),
        ({"task": "omniglot"}, r"config section 'task' must be a mapping"),
        ({"data": "omniglot"}, r"config section 'data' must be a mapping"),
        ([1, 2], r"a config must be a mapping of sections"),
    ],
)
def test_bad_values_are_named(raw, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_dict(raw)


def test_lake_protocol_without_validation_is_fine():
    cfg = Config.from_dict(base(task={"protocol": "lake"}, eval={"val_episodes": 0}))
    task = cfg.task.options
    assert (task["train_split"], task["val_split"], task["test_split"]) == ("background", None, "evaluation")
    assert not cfg.validates


def test_sinusoid_config_needs_no_data():
    cfg = Config.from_dict(
        {"task": {"family": "sinusoid"}, "train": {"shots": 10, "queries": 10}, **MAML_MLP}
    )
    assert dict(cfg.task.options) == {"amplitude": [0.1, 5.0], "phase": [0.0, math.pi], "x_range": [-5.0, 5.0]}
    assert cfg.train.ways is None and cfg.eval.ways is None
    assert cfg.eval.shots == 10


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lr", r"override 'optim.lr' must look like section.key=value"),
        ("lr=0.1", r"override key 'lr' must be section.key \(e.g. train.steps=100\) \(did you mean 'optim.lr'\?\)"),
        ("optim.lr.x=1", r"override key 'optim.lr.x' must be section.key"),
        ("optim.lr=[1", r"override 'optim.lr=\[1': the value is not valid YAML"),
        ("optm.lr=0.1", r"unknown config key 'optm.lr' \(did you mean 'optim.lr'\?\)"),
    ],
)
def test_bad_overrides(tmp_path, override, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base()))
    with pytest.raises(ConfigError, match=message):
        load_config(path, [override])


@register("_cfg_test_algo")
class _OptionsAlgo(Algorithm):
    """A test algorithm.

    Args:
        model: the backbone.
        inner_lr: step size of the inner loop.
        steps: how many steps.
    """

    def __init__(self, model, inner_lr: float = 0.4, steps: int = 1) -> None:
        super().__init__()
        self.model = model


@register("_cfg_test_required")
class _RequiredAlgo(Algorithm):
    def __init__(self, model, width: int) -> None:
        super().__init__()


def test_changing_the_algorithm_drops_the_old_options(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base(algorithm={"distance": "cosine"})))
    cfg = load_config(path, ["algorithm.name=_cfg_test_algo", "algorithm.inner_lr=0.1"])
    assert dict(cfg.algorithm.options) == {"inner_lr": 0.1}
    specs = algorithm_option_specs("_cfg_test_algo")
    assert list(specs) == ["inner_lr", "steps"]
    assert specs["inner_lr"].help == "step size of the inner loop."


def test_required_algorithm_option():
    with pytest.raises(ConfigError, match=r"algorithm '_cfg_test_required' needs algorithm.width \(no default\)"):
        AlgorithmConfig("_cfg_test_required", {})
    assert AlgorithmConfig("_cfg_test_required", {"width": 3}).options["width"] == 3


def test_missing_or_bad_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config file '.*nope.yaml' does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [1, 2\n")
    with pytest.raises(ConfigError, match=r"config file '.*bad.yaml' is not valid YAML"):
        load_config(bad)
    notmap = tmp_path / "list.yaml"
    notmap.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"must hold a mapping of sections, got list"):
        load_config(notmap)


def test_with_overrides_revalidates():
    cfg = Config.from_dict(base())
    assert cfg.with_overrides(["train.steps=3"]).train.steps == 3
    with pytest.raises(ConfigError, match="train.steps=0 is out of range"):
        cfg.with_overrides(["train.steps=0"])


def test_help_documents_every_field():
    text = config_help()
    for section in (TrainConfig, OptimConfig, RunConfig, ClassificationOptions, OmniglotOptions, FolderOptions, SinusoidOptions):
        for f in dataclasses.fields(section):
            assert f"{section.section}.{f.name} = " in text
            assert f.metadata["help"].split()[0] in text
    assert "task.family = classification" in text
    assert "sinusoid: regression tasks, scored by mse (lower is better)" in text
    assert "maml: solves classification and regression tasks" in text
    assert "algorithm.distance = euclidean" in text  # from ProtoNet's signature
    assert "model.hidden = 64" in text  # from Conv4's signature


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.train.steps >= 1
    text = path.read_text()
    assert "BUDGET" in text.upper(), "every shipped config states its budget in a comment"


def test_parse_overrides_keeps_strings_and_null():
    assert parse_overrides(["task.root=/x y", "task.cache_dir=null", "task.cache_dir="]) == [
        ("task.root", "/x y"),
        ("task.cache_dir", None),
        ("task.cache_dir", None),
    ]
