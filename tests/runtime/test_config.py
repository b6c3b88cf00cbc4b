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
        (base(algorithm={"name": "protonett"}), r"algorithm.name='protonett' is not a known algorithm \(did you mean 'protonet'\?\); available: anil, baseline"),
        (base(model={"name": "conv5"}), r"model.name='conv5' is not a known model \(did you mean 'conv4'\?\)"),
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
        (base(task={"dataset": "omniglott"}), r"task.dataset='omniglott' is not a known dataset source \(did you mean 'omniglot'\?\); available: folder, omniglot"),
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
        ({"task": {"dataset": "folder", "root": "/d", "protocol": "lake"}, "train": {"ways": 5}}, r"unknown config key 'task.protocol' for task.dataset=folder \(did you mean 'task.root'\?\); keys of the task section for this dataset: family, dataset, image_size, resample, root, test_split, train_split, val_split, channels, invert"),
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


def test_parse_overrides_keeps_strings_and_null():
    assert parse_overrides(["task.root=/x y", "task.cache_dir=null", "task.cache_dir="]) == [
        ("task.root", "/x y"),
        ("task.cache_dir", None),
        ("task.cache_dir", None),
    ]


# -- the task section and the older data section -------------------------------------------------
OLD_RUN_SECTIONS = {
    # data sections exactly as config.yaml of run folders had them before task: (every key written)
    "omniglot": {"dataset": "omniglot", "root": "/d/omniglot", "protocol": "vinyals", "train_split": "train",
                 "val_split": "val", "test_split": "test", "image_size": 28, "channels": None, "invert": None,
                 "cache_dir": None, "download": False},
    "folder": {"dataset": "folder", "root": "/d/folder", "protocol": None, "train_split": "train", "val_split": "val",
               "test_split": "test", "image_size": 16, "channels": 3, "invert": False, "cache_dir": None,
               "download": False},
    "sinusoid": {"dataset": "sinusoid", "root": None, "protocol": None, "train_split": None, "val_split": None,
                 "test_split": None, "image_size": None, "channels": None, "invert": None, "cache_dir": None,
                 "download": False},
}
NEW_SECTIONS = {
    "omniglot": {"family": "classification", "dataset": "omniglot", "root": "/d/omniglot"},
    "folder": {"family": "classification", "dataset": "folder", "root": "/d/folder", "image_size": 16,
               "channels": 3, "invert": False},
    "sinusoid": {"family": "sinusoid"},
}


@pytest.mark.parametrize("kind", sorted(OLD_RUN_SECTIONS))
def test_old_data_sections_load_as_the_same_task(tmp_path, kind):
    rest = {"train": {"ways": 5}} if kind != "sinusoid" else MAML_MLP
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(yaml.safe_dump({"data": OLD_RUN_SECTIONS[kind], **rest}))
    new.write_text(yaml.safe_dump({"task": NEW_SECTIONS[kind], **rest}))
    assert load_config(old) == load_config(new)
    assert "data" not in load_config(old).to_dict() and load_config(old).to_dict()["task"]["family"] == NEW_SECTIONS[kind]["family"]
    if kind != "sinusoid":  # overrides in the spelling of the file they apply to
        assert load_config(old, ["data.root=/e"]).task.options["root"] == "/e"


def test_mixed_or_unknown_data_sections_say_how_to_write_them(tmp_path):
    with pytest.raises(ConfigError, match=r"the config has both a task: section and a data: section .*data.root -> task.root"):
        Config.from_dict({"task": {"root": "/d"}, "data": {"root": "/d"}, "train": {"ways": 5}})
    with pytest.raises(ConfigError, match=r"data.dataset='omniglott' is not a known task family or dataset \(did you mean "
                                          r"'omniglot'\?\); write the section as task: with task.family"):
        Config.from_dict({"data": {"dataset": "omniglott", "root": "/d"}, "train": {"ways": 5}})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base()))
    with pytest.raises(ConfigError, match=r"'data.root': the data section is now called task; write task.root=..."):
        load_config(path, ["data.root=/e"])
    with pytest.raises(ConfigError, match=r"unknown config key 'task.channels' for task.dataset=omniglot"):
        Config.from_dict({"data": {"root": "/d", "channels": 3}, "train": {"ways": 5}})


def test_changing_the_family_drops_the_old_options(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base()))
    cfg = load_config(path, ["task.family=sinusoid", "train.ways=null", "model.name=mlp", "algorithm.name=maml"])
    assert cfg.task.to_dict()["family"] == "sinusoid" and "root" not in cfg.task.options


# -- the algorithm must solve the family's tasks -------------------------------------------------
def test_an_algorithm_for_another_kind_of_task_is_refused():
    with pytest.raises(ConfigError, match=r"algorithm.name=protonet solves classification tasks, but task.family=sinusoid "
                                          r"gives regression tasks; choose an algorithm that solves them \(anil, maml, "
                                          r"metasgd, reptile\) or another task family"):
        Config.from_dict({"task": {"family": "sinusoid"}, "model": {"name": "mlp"}})


# -- model options are tried when the config is read ---------------------------------------------
@pytest.mark.parametrize(
    "override, message",
    [
        ("model.hidden=[-4]", r"model 'mlp' with in_features=1, hidden=\[-4\], out_features=1 cannot run on the examples "
                              r"of task.family=sinusoid \(one example is \[1\]\): .*negative dimension -4"),
        ("model.out_features=0", r"model 'mlp' with in_features=1, hidden=\[40, 40\], out_features=0 gives outputs of shape "
                                 r"\[2, 0\] for 2 examples of shape \[1\]: no features per example"),
        ("model.in_features=2", r"model 'mlp' with in_features=2, hidden=\[40, 40\], out_features=1 cannot run on the "
                                r"examples of task.family=sinusoid \(one example is \[1\]\)"),
        ("model.out_features=3", r"model 'mlp' .* gives outputs of shape \[3\] per example, but a sinusoid task has one "
                                 r"target per input, so the model must give 1 output per example, not 3; fix model.out_features"),
    ],
)
def test_model_options_that_cannot_run_are_refused_when_read(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(REPO / "configs" / "maml_sinusoid_k5.yaml", [override])


def test_image_model_options_are_tried_on_the_task_images():
    with pytest.raises(ConfigError, match=r"model 'conv4' with in_channels=3, image_size=28, out_features=5, track_running_stats=False "
                                          r"cannot run on the examples of task.family=classification \(one example is "
                                          r"\[1, 28, 28\]\): Invalid channel dimensions"):
        Config.from_dict(base(model={"in_channels": 3}, algorithm={"name": "maml"}))
    assert Config.from_dict(base(task={"dataset": "folder", "channels": 3}, model={"in_channels": 3}))


# -- YAML files that repeat a key ----------------------------------------------------------------
@pytest.mark.parametrize(
    "text, message",
    [
        ("train:\n  ways: 5\n  steps: 3\n  ways: 20\n", r"the key 'ways' is given twice in the same mapping \(lines 2 and 4\)"),
        ("train: {ways: 5}\ntask: {root: /d}\ntrain: {steps: 2}\n", r"the key 'train' is given twice .* \(lines 1 and 3\)"),
    ],
)
def test_a_repeated_key_is_refused_with_its_lines(tmp_path, text, message):
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"config file '.*dup.yaml': " + message + r"; YAML would silently keep the last one"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"override 'model.hidden=\{a: 1, a: 2\}': the key 'a' is given twice"):
        parse_overrides(["model.hidden={a: 1, a: 2}"])
