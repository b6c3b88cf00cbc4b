import argparse
import json
import random
import re
import shutil

import pytest
import torch
from PIL import Image, ImageDraw
from torch import nn

from metakit.algorithms import MAML, Baseline, BuildContext, ProtoNet
from metakit.cli.main import main
from metakit.cli.predict import fixed_ways, predict_images, read_queries, read_support
from metakit.models import Conv4
from metakit.runtime.config import Config
from metakit.runtime.run import load_run
from metakit.runtime.trainer import train

PREP = {"image_size": 8, "channels": 1, "resample": "bilinear", "invert": True}


def _img(path, value: int, size: int = 20) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (size, size), value).save(path)


def _folders(tmp_path):
    sup, qry = tmp_path / "support", tmp_path / "query"
    _img(sup / "ink" / "a.png", 0)  # black: after inversion 255 -> 1.0
    _img(sup / "ink" / "b.png", 20)
    _img(sup / "paper" / "c.png", 255)  # white: after inversion 0.0
    _img(qry / "q1.png", 30)
    _img(qry / "nested" / "q2.png", 240)
    (qry / "notes.txt").write_text("not an image, ignored")
    return sup, qry


def test_read_support_and_queries_preprocess_like_training(tmp_path):
    sup, qry = _folders(tmp_path)
    x, y, classes, files = read_support(sup, PREP)
    assert classes == ["ink", "paper"] and y.tolist() == [0, 0, 1]
    assert x.dtype == torch.uint8 and x.shape == (3, 1, 8, 8)
    assert x[0].unique().tolist() == [255] and x[1].unique().tolist() == [235] and x[2].unique().tolist() == [0]
    assert [f.name for f in files] == ["a.png", "b.png", "c.png"]
    qx, names = read_queries(qry, PREP)
    assert names == ["nested/q2.png", "q1.png"] and qx.shape == (2, 1, 8, 8)
    one, name = read_queries(qry / "q1.png", PREP)
    assert name == ["q1.png"] and torch.equal(one[0], qx[1])


def test_predict_images_hand_checked(tmp_path):
    sup, qry = _folders(tmp_path)
    sx, sy, classes, _ = read_support(sup, PREP)
    qx, names = read_queries(qry, PREP)
    algo = ProtoNet(nn.Identity())
    algo.train()
    preds = predict_images(algo, sx, sy, qx, classes, names)
    assert algo.training  # mode restored
    assert [(p.file, p.cls) for p in preds] == [("nested/q2.png", "paper"), ("q1.png", "ink")]
    # q1 = 225/255 on 64 pixels; prototypes ink = (255+235)/2/255, paper = 0: squared distances by hand
    v, ink = 225 / 255, 245 / 255
    d_ink, d_paper = 64 * (v - ink) ** 2, 64 * v**2
    expected = torch.softmax(torch.tensor([-d_ink, -d_paper]), 0)[0].item()
    assert preds[1].score == pytest.approx(expected, rel=1e-4)
    assert preds[1].to_dict() == {"file": "q1.png", "class": "ink", "score": preds[1].score}


def test_support_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="--support '.*missing' does not exist"):
        read_support(tmp_path / "missing", PREP)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"--support: root='.*empty' has no class folders; expected root/<class>/<image>"):
        read_support(tmp_path / "empty", PREP)
    _img(tmp_path / "loose" / "x.png", 0)
    with pytest.raises(ValueError, match=r"has images directly inside it \(x.png\); put each class's images in a sub-folder"):
        read_support(tmp_path / "loose", PREP)
    _img(tmp_path / "s" / "a" / "x.png", 0)
    (tmp_path / "s" / "b").mkdir()
    (tmp_path / "s" / "b" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"--support: class folder .*b has no images .*add images or remove the folder"):
        read_support(tmp_path / "s", PREP)
    _img(tmp_path / "f.png", 0)
    with pytest.raises(ValueError, match="--support '.*f.png' is a file, not a folder"):
        read_support(tmp_path / "f.png", PREP)


def test_query_and_image_errors(tmp_path):
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="--query '.*q' holds no images"):
        read_queries(tmp_path / "q", PREP)
    with pytest.raises(FileNotFoundError, match="--query '.*nope' does not exist"):
        read_queries(tmp_path / "nope", PREP)
    (tmp_path / "q" / "broken.png").write_bytes(b"definitely not a png")
    with pytest.raises(ValueError, match=r"cannot read image .*broken.png"):
        read_queries(tmp_path / "q", PREP)


def test_predict_images_checks_score_shape(tmp_path):
    class Wrong(ProtoNet):
        def adapt(self, support_x, support_y, ways=None):
            class L:
                def predict(self, q):
                    return torch.zeros(len(q), 5)

            return L()

    with pytest.raises(ValueError, match=r"Wrong returned scores of shape \(1, 5\); expected \[queries, classes\] = \[1, 2\]"):
        predict_images(Wrong(nn.Identity()), torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1]),
                       torch.zeros(1, 1, 2, 2, dtype=torch.uint8), ["a", "b"], ["q.png"])


# -- the command, on a trained run ----------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step ProtoNet run on a folder dataset of 20x20 images resized to 16x16 (lanczos, inverted)."""
    tmp = tmp_path_factory.mktemp("predict")
    rng = random.Random(0)
    for split in ("train", "val", "test"):
        for c in range(4):
            for i in range(3):
                img = Image.new("L", (20, 20), 255)
                x, y = (c * 6 + i) % 14, (c * 5) % 14
                ImageDraw.Draw(img).ellipse([x, y, x + 5 + rng.randint(0, 2), y + 6], fill=rng.randint(0, 60))
                p = tmp / "data" / split / f"class{c}" / f"{i}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                img.save(p)
    config = Config.from_dict(
        {
            "data": {"dataset": "folder", "root": str(tmp / "data"), "image_size": 16},
            "train": {"ways": 2, "shots": 1, "queries": 2, "meta_batch": 2, "steps": 2},
            "eval": {"val_episodes": 2, "val_every": 2},
            "model": {"name": "conv4", "hidden": 8, "image_size": 16},
            "algorithm": {"name": "protonet"},
            "run": {"checkpoint_every": 2, "progress": False},
        }
    )
    train(config, tmp / "run")
    maml = config.to_dict()
    maml["algorithm"] = {"name": "maml", "inner_steps": 1}
    train(Config.from_dict(maml), tmp / "maml")
    return tmp


def test_predict_uses_the_training_preprocessing(trained):
    loaded = load_run(trained / "run")
    assert loaded.preprocessing == {"image_size": 16, "channels": 1, "resample": "lanczos", "invert": True}
    # the folder the test split was loaded from, read the way `predict` reads a support folder
    x, y, classes, _ = read_support(trained / "data" / "test", loaded.preprocessing)
    ds = loaded.dataset("test")
    assert classes == ds.class_names and torch.equal(x, ds.data)
    assert torch.equal(y, torch.repeat_interleave(torch.arange(4), ds.counts))


def test_predict_command_json_and_text(trained, tmp_path, capsys):
    sup, qry = tmp_path / "support", tmp_path / "query"
    for c in ("class1", "class3"):
        shutil.copytree(trained / "data" / "test" / c, sup / c, ignore=shutil.ignore_patterns("2.png"))
    (qry / "deep").mkdir(parents=True)
    shutil.copy(trained / "data" / "test" / "class1" / "2.png", qry / "one.png")
    shutil.copy(trained / "data" / "test" / "class3" / "2.png", qry / "deep" / "three.png")
    assert main(["predict", str(trained / "run"), "--support", str(sup), "--query", str(qry), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [o["file"] for o in out] == ["deep/three.png", "one.png"]
    assert all(set(o) == {"file", "class", "score"} and o["class"] in ("class1", "class3") and 0.5 <= o["score"] <= 1 for o in out)
    # the same numbers computed directly from the loaded run
    loaded = load_run(trained / "run")
    sx, sy, classes, _ = read_support(sup, loaded.preprocessing)
    qx, names = read_queries(qry, loaded.preprocessing)
    direct = predict_images(loaded.algorithm, sx, sy, qx, classes, names)
    assert [p.to_dict() for p in direct] == out
    assert main(["predict", str(trained / "run"), "--support", str(sup), "--query", str(qry)]) == 0
    text = capsys.readouterr().out
    assert "support: 2 classes, 4 images (class1: 2, class3: 2)" in text
    assert "preprocessing: image_size=16, channels=1, resample=lanczos, invert=True" in text
    assert re.search(rf"\none\.png +{out[1]['class']} +{out[1]['score']:.4f}\n", text)


def test_predict_command_errors(trained, tmp_path, capsys):
    (tmp_path / "s" / "a").mkdir(parents=True)
    (tmp_path / "q").mkdir()
    assert main(["predict", str(trained / "run"), "--support", str(tmp_path / "s"), "--query", str(tmp_path / "q")]) == 2
    assert "--support: class folder " in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "norun"), "--support", "s", "--query", "q"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_predict_falls_back_from_a_corrupt_best(trained, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(trained / "run", copy)
    best = copy / "checkpoints" / "best.safetensors"
    best.write_bytes(b"not a checkpoint")
    sup, qry = _folders(tmp_path)
    assert main(["predict", str(copy), "--support", str(sup), "--query", str(qry)]) == 0
    captured = capsys.readouterr()
    assert f"run: {copy} (protonet, checkpoint step-00000002.safetensors)" in captured.out
    assert "best.safetensors' is unusable" in captured.err
    assert "using the newest readable step checkpoint step-00000002.safetensors instead" in captured.err
    assert main(["predict", str(copy), "--support", str(sup), "--query", str(qry), "--checkpoint", str(best)]) == 2
    assert re.search(r"error: checkpoint '.*best.safetensors' is unusable", capsys.readouterr().err)


def test_predict_help_says_checkpoint_is_a_path():
    from metakit.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    checkpoint = next(a for a in sub.choices["predict"]._actions if a.dest == "checkpoint")
    assert checkpoint.help == "'best' (default), 'last', or the path of a checkpoint file"


def test_a_one_class_support_is_refused(tmp_path):
    sup, qry = _folders(tmp_path)
    sx, sy, classes, _ = read_support(sup, PREP)
    qx, names = read_queries(qry, PREP)
    one = sy == 0
    with pytest.raises(ValueError, match=r"the support set \(--support\) has 1 class \('ink'\); classification needs at least 2 classes"):
        predict_images(ProtoNet(nn.Identity()), sx[one], sy[one], qx, ["ink"], names)


def test_fixed_ways_tells_which_models_are_tied_to_the_training_ways():
    ctx = BuildContext(ways=5, example_shape=(1, 28, 28), num_train_classes=20)
    assert fixed_ways(MAML(Conv4(out_features=5, track_running_stats=False)), ctx) == 5
    assert fixed_ways(ProtoNet(Conv4()), ctx) is None
    assert fixed_ways(Baseline(Conv4(), num_classes=20), ctx) is None
    assert fixed_ways(ProtoNet(Conv4()), BuildContext(ways=None, example_shape=(1,))) is None


def test_predict_command_names_the_runs_ways(trained, tmp_path, capsys):
    sup, qry = tmp_path / "support", tmp_path / "query"
    for c in ("class0", "class1", "class2"):
        shutil.copytree(trained / "data" / "test" / c, sup / c)
    qry.mkdir()
    shutil.copy(trained / "data" / "test" / "class1" / "2.png", qry / "one.png")
    run = trained / "maml"
    assert main(["predict", str(run), "--support", str(sup), "--query", str(qry)]) == 2
    err = capsys.readouterr().err
    assert (
        f"--support {str(sup)!r} has 3 classes but run {str(run)!r} (maml) was trained 2-way and its model has 2 "
        "outputs: it predicts among exactly 2 classes; give a support folder with 2 class sub-folders"
    ) in err
    shutil.rmtree(sup / "class2")
    assert main(["predict", str(run), "--support", str(sup), "--query", str(qry), "--json"]) == 0
    (pred,) = json.loads(capsys.readouterr().out)
    assert pred["file"] == "one.png" and pred["class"] in ("class0", "class1")
    shutil.rmtree(sup / "class1")
    assert main(["predict", str(trained / "run"), "--support", str(sup), "--query", str(qry)]) == 2
    assert "the support set (--support) has 1 class ('class0')" in capsys.readouterr().err
