"""The sequence protocol: labels one step late, instance counts, fixed evaluation sets, scores,
and the errors of configs that do not fit."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from metakit.datasets.base import ClassIndexedDataset
from metakit.options import ConfigError
from metakit.runtime.config import Config
from metakit.tasks.sequence import (
    FixedSequences,
    _draw,
    SequenceBatch,
    SequenceFamily,
    SequenceSampler,
    _Shape,
    code_correct,
    instance_index,
    label_code_shape,
    label_inputs,
)


def _data(classes=8, per_class=6, size=8):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (classes * per_class, 1, size, size), generator=g, dtype=torch.uint8)
    return ClassIndexedDataset.from_tensors(x, torch.arange(classes).repeat_interleave(per_class), name="toy")


def _shape(**kw):
    base = dict(classes=3, instances=4, length=12, labels="one_hot", augment=True, max_rotation=10.0, max_shift=1.0)
    base.update(kw)
    return _Shape(**base)


def test_the_label_is_shown_one_step_late_and_the_first_step_has_none():
    batch = SequenceSampler(_data(), _shape(), seed=1).sample(2)
    inputs = label_inputs(batch)
    assert inputs.shape == (2, 12, 3)
    assert torch.equal(inputs[:, 0], torch.zeros(2, 3))
    assert torch.equal(inputs[:, 1:].argmax(-1), batch.labels[:, :-1])
    assert torch.equal(inputs.sum(-1)[:, 1:], torch.ones(2, 11))


def test_string_labels_are_five_distinct_characters_per_class():
    batch = SequenceSampler(_data(), _shape(labels="string"), seed=1).sample(4)
    assert batch.codes.shape == (4, 3, 5) and batch.alphabet == 5
    for codes in batch.codes:
        assert len({tuple(c.tolist()) for c in codes}) == 3
    inputs = label_inputs(batch)
    assert inputs.shape == (4, 12, 25)
    assert torch.equal(inputs[:, 1:].view(4, 11, 5, 5).argmax(-1), batch.targets()[:, :-1])


def test_every_class_appears_instances_per_class_times_in_a_full_episode():
    batch = SequenceSampler(_data(), _shape(), seed=2).sample(3)
    for y in batch.labels:
        assert torch.bincount(y, minlength=3).tolist() == [4, 4, 4]


def test_instance_index_by_hand():
    labels = torch.tensor([[0, 1, 0, 0, 2, 1]])
    assert instance_index(labels).tolist() == [[0, 0, 1, 2, 0, 1]]


def test_eval_set_is_fixed_by_its_seed_and_not_by_its_batch_size():
    data = _data()
    a = torch.cat([b.x for b in FixedSequences(data, _shape(), 20, seed=3, batch_size=7)])
    b = torch.cat([b.x for b in FixedSequences(data, _shape(), 20, seed=3, batch_size=20)])
    c = torch.cat([b.x for b in FixedSequences(data, _shape(), 20, seed=4, batch_size=20)])
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_sampler_resumes_from_its_state():
    s = SequenceSampler(_data(), _shape(), seed=5)
    s.sample(2)
    state = s.state_dict()
    expected = s.sample(2)
    t = SequenceSampler(_data(), _shape(), seed=5)
    t.load_state_dict(state)
    got = t.sample(2)
    assert torch.equal(got.x, expected.x) and torch.equal(got.labels, expected.labels)


def test_augmentation_changes_images_and_off_keeps_them():
    data = _data()
    plain = SequenceSampler(data, _shape(augment=False), seed=6).sample(1)
    flat = plain.x.flatten(2)
    pool = data.to_float(data.data).flatten(1)
    assert all(any(torch.equal(f, p) for p in pool) for f in flat[0])
    aug = SequenceSampler(data, _shape(augment=True), seed=6).sample(1)
    assert not torch.equal(aug.x, plain.x)


class _Fixed(torch.nn.Module):
    """Predicts the code of a fixed label sequence (for scoring by hand)."""

    def __init__(self, guess):
        super().__init__()
        self.guess = guess

    def predict(self, batch):
        return torch.nn.functional.one_hot(self.guess, batch.alphabet).float().unsqueeze(-2) * 5


def test_score_and_per_instance_accuracy_by_hand():
    labels = torch.tensor([[0, 1, 0, 1, 0, 1]])
    batch = SequenceBatch(torch.zeros(1, 6, 1, 2, 2), labels, torch.arange(2).view(1, 2, 1), 2, 2)
    guess = torch.tensor([[1, 1, 0, 0, 0, 1]])  # right at steps 1, 2, 4, 5
    fam = SequenceFamily.from_options({"root": ".", "classes_per_episode": 2, "instances_per_class": 3})
    acc, details = fam.score_details(_Fixed(guess), batch)
    assert acc.tolist() == [pytest.approx(4 / 6)]
    # instance 1: steps 0 (wrong), 1 (right); instance 2: steps 2, 3 (right, wrong); instance 3: 4, 5 (both right)
    assert [float(details[f"instance_{k}"][0]) for k in (1, 2, 3)] == [0.5, 0.5, 1.0]
    assert torch.equal(code_correct(_Fixed(guess).predict(batch), batch), guess == labels)


def test_the_papers_15_class_100_step_episodes_score_per_instance_where_classes_reach_it():
    """Santoro's 15-class setting: 100 of the 15 x 10 examples, so a class has at most 10 instances
    and the k-th-instance accuracy covers the classes that reach k (nan where none does)."""
    shape = _shape(classes=15, instances=10, length=100)
    batch = SequenceSampler(_data(classes=20, per_class=12), shape, seed=3).sample(4)
    assert batch.labels.shape == (4, 100)
    counts = torch.stack([torch.bincount(y, minlength=15) for y in batch.labels])
    assert counts.max() <= 10 and counts.sum(1).tolist() == [100] * 4 and (counts > 0).all()
    fam = SequenceFamily.from_options({"root": ".", "classes_per_episode": 15, "instances_per_class": 10, "episode_length": 100})
    inst = instance_index(batch.labels)
    guess = torch.where(inst % 2 == 0, batch.labels, (batch.labels + 1) % 15)  # right at odd instances 1, 3, ...
    acc, details = fam.score_details(_Fixed(guess), batch)
    assert acc.tolist() == pytest.approx(((inst % 2) == 0).double().mean(1).tolist())
    for k in range(1, 11):
        reached = (inst == k - 1).any(1)
        got = details[f"instance_{k}"]
        assert torch.isnan(got[~reached]).all()
        assert got[reached].tolist() == [1.0 if k % 2 == 1 else 0.0] * int(reached.sum())
    # an episode where no class reaches its 3rd instance has no 3rd-instance accuracy
    labels = torch.tensor([[0, 1, 0, 1]])
    short = SequenceBatch(torch.zeros(1, 4, 1, 2, 2), labels, torch.arange(2).view(1, 2, 1), 2, 2)
    two = SequenceFamily.from_options({"root": ".", "classes_per_episode": 2, "instances_per_class": 3, "episode_length": 4})
    _, details = two.score_details(_Fixed(labels), short)
    assert details["instance_2"].tolist() == [1.0] and torch.isnan(details["instance_3"]).all()


def test_a_string_label_counts_only_when_all_characters_are_right():
    codes = torch.tensor([[[0, 1, 2, 3, 4], [4, 3, 2, 1, 0]]])
    batch = SequenceBatch(torch.zeros(1, 2, 1, 2, 2), torch.tensor([[0, 1]]), codes, 5, 2)
    logits = torch.nn.functional.one_hot(codes[0], 5).float().unsqueeze(0).clone()  # [1, 2 steps, 5, 5]
    logits[0, 1, 4] = torch.nn.functional.one_hot(torch.tensor(1), 5).float()  # last character wrong at step 1
    assert code_correct(logits, batch).tolist() == [[True, False]]


def _config(**task):
    return Config.from_dict({"task": {"family": "sequence", "root": ".", **task}, "model": {"name": "flatten"},
                             "algorithm": {"name": "mann"}})


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"train": {"ways": 5}}, r"train.ways=5 but task.family=sequence sets the classes .* set train.ways=null"),
        ({"train": {"shots": 5}}, r"train.shots=5 does not apply to task.family=sequence"),
        ({"eval": {"queries": 3}}, r"eval.queries=3 does not apply to task.family=sequence"),
        ({"task": {"episode_length": 60}}, r"task.episode_length=60 but an episode holds only .* = 50 examples"),
        ({"task": {"clases_per_episode": 5}}, r"unknown config key 'task.clases_per_episode' .*did you mean 'task.classes_per_episode'"),
        ({"task": {"labels": "strings"}}, r"task.labels='strings' is not a valid choice \(did you mean 'string'\?\)"),
    ],
)
def test_configs_that_do_not_fit_are_refused(raw, message):
    body = {"task": {"family": "sequence", "root": "."}, "model": {"name": "flatten"}, "algorithm": {"name": "mann"}}
    for k, v in raw.items():
        body.setdefault(k, {}).update(v)
    with pytest.raises(ConfigError, match=message):
        Config.from_dict(body)


def test_a_split_too_small_for_the_episode_is_refused():
    with pytest.raises(ValueError, match=r"task.classes_per_episode=9 but the split 'toy' has only 8 classes"):
        SequenceSampler(_data(), _shape(classes=9), seed=0)
    with pytest.raises(ValueError, match=r"task.instances_per_class=7 but a class of the split 'toy' has only 6"):
        FixedSequences(_data(), _shape(instances=7, length=21), 4)


def test_image_size_defaults_to_the_papers_20():
    assert _config().family.example_shape() == (1, 20, 20)
    assert _config(image_size=28).family.example_shape() == (1, 28, 28)


def test_the_resize_filter_reaches_the_image_source():
    assert _config().family.images.options.resample == "lanczos"
    fam = _config(resample="nearest").family
    assert fam.images.options.resample == "nearest" and fam.to_dict()["resample"] == "nearest"


@pytest.mark.parametrize("sizes, message", [
    (dict(ways=5), r"ways=5 but sequence episodes take their classes from task.classes_per_episode"),
    (dict(shots=5), r"shots=5 does not apply to sequence episodes"),
    (dict(queries=3), r"queries=3 does not apply to sequence episodes"),
])
def test_eval_sizes_that_do_not_apply_are_refused(sizes, message):
    fam = SequenceFamily.from_options({"root": ".", "classes_per_episode": 3, "instances_per_class": 4})
    args = dict(ways=None, shots=1, queries=15, episodes=2, seed=0)
    args.update(sizes)
    with pytest.raises(ValueError, match=message):
        fam.eval_set("test", _data(), **args)


def _reference_draw(data, shape, batch, g):
    """One episode at a time, one image at a time: the draws in the order the sampler makes them."""
    positions, alphabet = label_code_shape(shape.labels, shape.classes)
    xs, ys, codes = [], [], []
    for _ in range(batch):
        classes = torch.randperm(data.num_classes, generator=g)[: shape.classes]
        picks = [torch.randperm(int(data.counts[c]), generator=g)[: shape.instances] + data.offsets[c] for c in classes]
        index = torch.stack(picks)
        order = torch.randperm(index.numel(), generator=g)[: shape.length]
        x = data.to_float(data.data[index.flatten()[order]])
        y = torch.arange(shape.classes).unsqueeze(1).expand_as(index).flatten()[order]
        if shape.augment:
            quarter = torch.randint(0, 4, (shape.classes,), generator=g)[y]
            x = torch.stack([torch.rot90(img, int(k), dims=(-2, -1)) for img, k in zip(x, quarter)])
            n, size = x.shape[0], x.shape[-1]
            angle = (torch.rand(n, generator=g) * 2 - 1) * math.radians(shape.max_rotation)
            shift = (torch.rand(n, 2, generator=g) * 2 - 1) * (2 * shape.max_shift / size)
            cos, sin = torch.cos(angle), torch.sin(angle)
            theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], -1), torch.stack([sin, cos, shift[:, 1]], -1)], 1)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if shape.labels == "string":
            words = torch.randperm(alphabet**positions, generator=g)[: shape.classes]
            code = (words.unsqueeze(1) // alphabet ** torch.arange(positions - 1, -1, -1)) % alphabet
        else:
            code = torch.arange(shape.classes).unsqueeze(1)
        xs.append(x)
        ys.append(y)
        codes.append(code)
    return torch.stack(xs), torch.stack(ys), torch.stack(codes)


@pytest.mark.parametrize("labels", ["one_hot", "string"])
@pytest.mark.parametrize("augment", [True, False])
def test_a_batch_is_drawn_exactly_as_episode_by_episode(labels, augment):
    """Same generator state, same episodes, bit for bit, and the generator ends in the same state
    (a resumed run draws the tasks it would have drawn)."""
    data, shape = _data(), _shape(labels=labels, augment=augment, length=10, max_rotation=30.0)
    g_new, g_ref = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for batch in (1, 5):
        new = _draw(data, shape, batch, g_new)
        x, y, codes = _reference_draw(data, shape, batch, g_ref)
        assert torch.equal(new.x, x) and torch.equal(new.labels, y) and torch.equal(new.codes, codes)
    assert torch.equal(g_new.get_state(), g_ref.get_state())
