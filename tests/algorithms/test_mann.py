"""MANN and the LSTM meta-learner: the sequence fed to the network, few-shot use through
``adapt``, bad input, and a tiny train / eval / predict / plot run through the command line."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from metakit.algorithms import LSTMMetaLearner, MANN
from metakit.algorithms.base import BuildContext
from metakit.cli.main import main
from metakit.models import Flatten
from metakit.tasks.sequence import SequenceBatch, label_inputs

CTX = BuildContext(ways=3, example_shape=(1, 4, 4), label_code=(1, 3))


def _mann(**kw):
    torch.manual_seed(0)
    opts = dict(hidden_size=8, slots=6, width=4, heads=2)
    opts.update(kw)
    return MANN.from_config(Flatten(), CTX, **opts).double()


def _batch(b=2, t=6, ways=3):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(b, t, 1, 4, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, ways, (b, t), generator=g)
    return SequenceBatch(x, y, torch.arange(ways).view(1, ways, 1).expand(b, -1, -1), ways, ways)


@pytest.mark.parametrize("build", [lambda: _mann(), lambda: _mann(memory="ntm"),
                                   lambda: LSTMMetaLearner.from_config(Flatten(), CTX, hidden_size=8).double()])
def test_network_input_is_the_image_and_the_previous_label(build):
    alg = build()
    batch = _batch()
    seen = {}
    alg.network.register_forward_pre_hook(lambda m, args: seen.setdefault("inputs", args[0]))
    alg.predict(batch)
    inputs = seen["inputs"]
    assert torch.equal(inputs[..., :16], batch.x.flatten(2))
    assert torch.equal(inputs[..., 16:], label_inputs(batch).double())


@pytest.mark.parametrize("build", [lambda: _mann(), lambda: _mann(memory="ntm"),
                                   lambda: LSTMMetaLearner.from_config(Flatten(), CTX, hidden_size=8).double()])
@pytest.mark.parametrize("t", [0, 3, 5])
def test_predictions_are_causal_and_never_see_their_own_label(build, t):
    """Changing step t's image changes no prediction before t; changing step t's label changes no
    prediction up to and including t (the label is the answer to step t), and both change later ones."""
    alg = build()
    batch = _batch()
    before = alg.predict(batch)
    x = batch.x.clone()
    x[:, t] = torch.rand_like(x[:, t])
    moved = alg.predict(dataclasses.replace(batch, x=x))
    assert torch.equal(moved[:, :t], before[:, :t])
    assert not torch.allclose(moved[:, t], before[:, t])
    labels = batch.labels.clone()
    labels[:, t] = (labels[:, t] + 1) % 3
    relabelled = alg.predict(dataclasses.replace(batch, labels=labels))
    assert torch.equal(relabelled[:, : t + 1], before[:, : t + 1])
    if t + 1 < batch.labels.shape[1]:
        assert not torch.allclose(relabelled[:, t + 1], before[:, t + 1])


def test_meta_loss_is_the_summed_code_cross_entropy_and_gives_gradients():
    alg = _mann()
    batch = _batch()
    loss, metrics = alg.meta_loss(batch)
    logits = alg.predict(batch)
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 2), batch.targets().flatten())
    assert float(loss.detach()) == pytest.approx(float(expected.detach()))
    loss.backward()
    assert all(p.grad is not None for p in alg.network.parameters())
    assert 0.0 <= metrics["accuracy"] <= 1.0


def test_adapt_then_predict_equals_the_last_step_of_the_fed_sequence():
    """A query after the support gives the scores the network gives at a step appended to the sequence."""
    alg = _mann()
    support_x = torch.rand(5, 1, 4, 4, dtype=torch.float64)
    support_y = torch.tensor([0, 1, 2, 0, 1])
    query = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    scores = alg.adapt(support_x, support_y, 3).predict(query)
    assert scores.shape == (2, 3)
    order = torch.randperm(5, generator=torch.Generator().manual_seed(0))
    for q in range(2):
        x = torch.cat([support_x[order], query[q : q + 1]]).unsqueeze(0)
        y = torch.cat([support_y[order], torch.tensor([0])]).unsqueeze(0)
        logits = alg.predict(SequenceBatch(x, y, torch.arange(3).view(1, 3, 1), 3, 3))[0, -1, 0]
        assert torch.allclose(scores[q], logits.log_softmax(-1), atol=1e-10)


def test_string_labels_score_each_class_by_its_code():
    ctx = BuildContext(ways=3, example_shape=(1, 4, 4), label_code=(5, 5))
    torch.manual_seed(0)
    alg = MANN.from_config(Flatten(), ctx, hidden_size=8, slots=6, width=4, heads=2).double()
    scores = alg.adapt(torch.rand(4, 1, 4, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0]), 3).predict(
        torch.rand(2, 1, 4, 4, dtype=torch.float64))
    assert scores.shape == (2, 3)
    assert alg.codes_for(3).tolist() == [[0, 0, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 2]]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda a: a.adapt(torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 3]), 4),
         r"ways=4 classes but the model was trained with one-hot labels of width 3; give at most 3 classes"),
        (lambda a: a.adapt(torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 5, 0]), 3), r"support_y holds labels 0..5; they must be 0..2"),
        (lambda a: a.adapt(torch.rand(4, 1, 5, 5), torch.tensor([0, 1, 2, 0]), 3),
         r"images have shape \[1, 5, 5\] but the model was built for \[1, 4, 4\]"),
        (lambda a: a.meta_loss(_batch(ways=2)), r"labels are coded as 1 x 2 .* but the model reads and writes 1 x 3"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call(_mann().float())


@pytest.mark.parametrize(
    "opts, message",
    [
        (dict(slots=2), r"algorithm.slots=2 but the episodes hold 3 classes .* raise algorithm.slots"),
        (dict(memory="ntm", gamma=0.9), r"gamma=0.9 \(usage decay\) is an option of memory=lrua"),
        (dict(shift_range=1), r"shift_range=1 is an option of memory=ntm"),
    ],
)
def test_options_that_do_not_fit_are_refused(opts, message):
    with pytest.raises(ValueError, match=message):
        _mann(**opts)


def test_lstm_has_no_memory_to_trace():
    alg = LSTMMetaLearner.from_config(Flatten(), CTX, hidden_size=8)
    with pytest.raises(ValueError, match="has no external memory"):
        alg.memory_trace(_batch())


def _image_folder(root, classes):
    """ROOT/<split>/classN/i.png: 4 images of 20x20 per class, a dark square at a class-specific place."""
    from PIL import Image, ImageDraw

    for split, n in classes.items():
        for c in range(n):
            for i in range(4):
                img = Image.new("L", (20, 20), 255)
                ImageDraw.Draw(img).rectangle([(c * 6) % 14 + i % 2, (c * 8) % 14, (c * 6) % 14 + 5, (c * 8) % 14 + 5], fill=0)
                p = root / split / f"class{c}" / f"{i}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                img.save(p)
    return root


TINY = """\
task: {{family: sequence, dataset: folder, root: {root}, image_size: 12, classes_per_episode: 3, instances_per_class: 3}}
train: {{meta_batch: 4, steps: 4}}
eval: {{val_episodes: 6, val_every: 2, test_episodes: 8}}
model: {{name: flatten}}
algorithm: {{name: {algo}, hidden_size: 12{extra}}}
run: {{checkpoint_every: 2, log_every: 2, progress: false, deterministic: true, num_threads: 1}}
"""


@pytest.mark.parametrize("algo, extra", [("mann", ", slots: 8, width: 5, heads: 2"), ("mann", ", memory: ntm, slots: 8, width: 5, heads: 2"),
                                         ("lstm", "")])
def test_train_eval_predict_and_plot_through_the_cli(algo, extra, tmp_path, capsys):
    root = _image_folder(tmp_path / "data", {"train": 4, "val": 3, "test": 3})
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY.format(root=root, algo=algo, extra=extra))
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["episodes"] == 8 and record["episode_length"] == 9 and record["labels"] == "one_hot"
    assert list(record["details"]) == ["instance_1", "instance_2", "instance_3"]
    assert main(["eval", str(run)]) == 0
    text = capsys.readouterr().out
    assert "instance_3" in text and "sequences of 9 steps, 3 classes x 3 instances" in text
    assert main(["predict", str(run), "--support", str(root / "test"), "--query", str(root / "val"), "--json"]) == 0
    preds = json.loads(capsys.readouterr().out)
    assert len(preds) == 12 and {p["class"] for p in preds} <= {"class0", "class1", "class2"}
    if algo == "mann":
        assert main(["plot", str(run), "--memory"]) == 0
        assert (run / "memory.png").is_file()
    else:
        assert main(["plot", str(run), "--memory"]) != 0
        assert "has no external memory" in capsys.readouterr().err
    assert (run / "instance_curves.png").is_file()


def test_string_label_loss_sums_the_five_positions():
    ctx = BuildContext(ways=3, example_shape=(1, 4, 4), label_code=(5, 5))
    torch.manual_seed(0)
    alg = MANN.from_config(Flatten(), ctx, hidden_size=8, slots=6, width=4, heads=2).double()
    b = _batch()
    codes = torch.tensor([[[0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [1, 1, 1, 1, 1]]]).expand(2, -1, -1)
    batch = SequenceBatch(b.x, b.labels, codes, 5, 3)
    loss, _ = alg.meta_loss(batch)
    logits = alg.predict(batch)
    per_position = torch.nn.functional.cross_entropy(logits.flatten(0, 2), batch.targets().flatten(), reduction="none")
    assert float(loss.detach()) == pytest.approx(5 * float(per_position.mean().detach()))


def test_a_resumed_sequence_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    from safetensors.torch import load_file

    root = _image_folder(tmp_path / "data", {"train": 4, "val": 3, "test": 3})
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY.format(root=root, algo="mann", extra=", slots: 8, width: 5, heads: 2").replace("steps: 4", "steps: 6"))
    assert main(["train", str(cfg), "--out", str(tmp_path / "whole")]) == 0
    assert main(["train", str(cfg), "train.steps=2", "--out", str(tmp_path / "parts")]) == 0
    assert main(["train", "--resume", str(tmp_path / "parts"), "train.steps=6"]) == 0
    a = load_file(str(tmp_path / "whole" / "checkpoints" / "step-00000006.safetensors"))
    b = load_file(str(tmp_path / "parts" / "checkpoints" / "step-00000006.safetensors"))
    weights = [k for k in a if k.startswith("model/")]
    assert weights and all(torch.equal(a[k], b[k]) for k in weights)


@pytest.mark.slow
def test_a_sequence_run_killed_with_sigkill_resumes_to_the_uninterrupted_weights(tmp_path, capsys, kill_train_at):
    from safetensors.torch import load_file

    root = _image_folder(tmp_path / "data", {"train": 4, "val": 3, "test": 3})
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY.format(root=root, algo="mann", extra=", slots: 8, width: 5, heads: 2")
                   .replace("steps: 4", "steps: 30").replace("checkpoint_every: 2", "checkpoint_every: 1"))
    assert main(["train", str(cfg), "--out", str(tmp_path / "reference")]) == 0
    run = tmp_path / "killed"
    kill_train_at(cfg, run, 3)
    assert main(["train", "--resume", str(run)]) == 0
    a = load_file(str(tmp_path / "reference" / "checkpoints" / "step-00000030.safetensors"))
    b = load_file(str(run / "checkpoints" / "step-00000030.safetensors"))
    weights = [k for k in a if k.startswith("model/")]
    assert weights and all(torch.equal(a[k], b[k]) for k in weights)
