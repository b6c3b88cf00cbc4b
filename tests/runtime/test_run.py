"""Run folders end to end: train from a config, then load_run for evaluation."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from metakit.algorithms import Algorithm, BuildContext, register
from metakit.runtime.checkpoint import CheckpointError, load_checkpoint
from metakit.runtime.config import Config, ConfigError
from metakit.runtime.evaluation import evaluate
from metakit.runtime.run import (
    check_resume_changes,
    context_from_record,
    context_record,
    default_run_dir,
    load_run,
    read_run_config,
)
from metakit.runtime.trainer import train
from metakit.tasks import EpisodeBatch


def make_image_folder(root: Path, classes: int = 5, per_class: int = 4) -> Path:
    """ROOT/{train,val,test}/<class>/<i>.png: a dark square at a class-specific place, plus noise."""
    g = torch.Generator().manual_seed(1)
    for split_i, split in enumerate(("train", "val", "test")):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(per_class):
                img = 255 - (torch.rand(28, 28, generator=g) * 60).to(torch.uint8)
                r, col = 4 * ((c + split_i) % 5), 4 * ((3 * c + 2 * split_i) % 5)
                img[r : r + 8, col : col + 8] = 0
                Image.fromarray(img.numpy()).save(d / f"{i}.png")
    return root


def folder_config(root: Path, *overrides: str) -> Config:
    raw = {
        "data": {"dataset": "folder", "root": str(root)},
        "train": {"ways": 3, "shots": 1, "queries": 2, "meta_batch": 2, "steps": 6},
        "eval": {"val_episodes": 4, "val_every": 3, "test_episodes": 5},
        "model": {"name": "conv4", "hidden": 8},
        "algorithm": {"name": "protonet"},
        "run": {"checkpoint_every": 2, "log_every": 2, "progress": False, "deterministic": True, "num_threads": 1},
    }
    return Config.from_dict(raw).with_overrides(list(overrides))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "protonet"
    result = train(folder_config(folder), run_dir, stream=io.StringIO())
    assert result.status == "finished"
    return run_dir, result


def test_run_folder_layout(trained):
    run_dir, result = trained
    names = sorted(p.name for p in run_dir.iterdir())
    assert names == [".lock", "checkpoints", "config.yaml", "metrics.jsonl", "summary.json", "tb"]
    # the effective config is fully resolved: the backbone's and the algorithm's defaults are explicit
    cfg = read_run_config(run_dir)
    assert cfg.model.options["hidden"] == 8 and cfg.model.options["track_running_stats"] is True
    assert cfg.algorithm.options["distance"] == "euclidean" and "learn_scale" in cfg.algorithm.options
    assert cfg.task.options["root"] == str(Path(cfg.task.options["root"]).resolve())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["algorithm"] == "protonet"


def test_load_run_best_last_and_path(trained):
    run_dir, result = trained
    best = load_run(run_dir)
    assert best.kind == "best" and best.checkpoint.name == "best.safetensors"
    assert best.step == result.best["step"] and best.val["accuracy"] == result.best["accuracy"]
    assert not best.algorithm.training
    state = load_checkpoint(run_dir / "checkpoints" / "best.safetensors")["model"]
    for k, v in best.algorithm.state_dict().items():
        assert torch.equal(v, state[k])
    last = load_run(run_dir, "last")
    assert last.kind == "step" and last.step == 6
    by_path = load_run(run_dir, run_dir / "checkpoints" / "step-00000004.safetensors")
    assert by_path.step == 4
    assert best.context.ways == 3 and best.context.example_shape == (1, 28, 28)
    assert best.preprocessing == {"image_size": 28, "channels": 1, "resample": "lanczos", "invert": True}


def test_load_run_builds_evaluation_episodes_for_any_size(trained):
    run_dir, _ = trained
    loaded = load_run(run_dir)
    eps = loaded.episodes()  # defaults: test split, eval sizes, eval.test_episodes
    batches = list(eps)
    assert sum(b.num_tasks for b in batches) == 5
    assert batches[0].support_x.shape[1:] == (3, 1, 28, 28) and batches[0].query_x.shape[1] == 6
    other = list(loaded.episodes("val", ways=5, shots=2, queries=1, episodes=3, seed=7))
    assert other[0].ways == 5 and other[0].support_x.shape[1] == 10
    assert loaded.dataset("test").num_classes == 5 and loaded.split_name() == "test"
    result = evaluate(loaded.algorithm, loaded.episodes(episodes=5))
    assert result.metric == "accuracy" and result.episodes == 5
    # the same seed gives the same episodes
    a, b = next(iter(loaded.episodes(seed=3))), next(iter(loaded.episodes(seed=3)))
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_y, b.query_y)
    c = next(iter(loaded.episodes(seed=4)))  # and another seed other episodes
    assert not torch.equal(a.support_x, c.support_x)


def test_load_run_leaves_the_callers_rng_alone(trained):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_run(trained[0])
    assert torch.equal(torch.rand(3), expected)


def test_load_run_errors(trained, tmp_path):
    run_dir, _ = trained
    with pytest.raises(FileNotFoundError, match=r"run folder '.*nowhere' does not exist"):
        load_run(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"has no config.yaml; is it a metakit run folder"):
        load_run(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"checkpoint '.*nope.safetensors' does not exist"):
        load_run(run_dir, tmp_path / "nope.safetensors")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match=r"run folder '.*afile' is a file, not a folder; give the folder made by `metakit train`"):
        load_run(tmp_path / "afile")


def test_a_checkpoint_of_another_run_is_named_as_such(trained, folder, tmp_path):
    run_dir, _ = trained
    other = tmp_path / "other"
    train(folder_config(folder, "model.hidden=4", "train.steps=2"), other, stream=io.StringIO())
    with pytest.raises(ValueError, match=r"do not fit the model built from .*config.yaml: it was written by another run \(its config differs in model.hidden\); give a checkpoint of this run") as info:
        load_run(run_dir, other / "checkpoints" / "best.safetensors")
    assert "\n" not in str(info.value)


def test_images_preprocessed_otherwise_than_in_training_are_refused(trained, tmp_path):
    import shutil

    import yaml

    run_dir = tmp_path / "copy"
    shutil.copytree(trained[0], run_dir)
    assert load_run(run_dir).dataset("test").meta["preprocessing"]["resample"] == "lanczos"  # as trained
    raw = yaml.safe_load((run_dir / "config.yaml").read_text())
    raw["task"]["resample"] = "nearest"  # edited after training
    (run_dir / "config.yaml").write_text(yaml.safe_dump(raw))
    loaded = load_run(run_dir)
    with pytest.raises(ValueError, match=r"the 'test' images built from .*config.yaml are not preprocessed as "
                       r"best.safetensors's training images were \(resample='nearest' where training had 'lanczos'\); "
                       r"was the task section edited after training\?"):
        loaded.dataset("test")


def test_a_checkpoint_with_non_finite_running_statistics_is_refused(trained, tmp_path):
    """A diverged model must not be evaluated at chance level without a word."""
    from metakit.runtime.checkpoint import save_checkpoint

    run_dir, _ = trained
    state = load_checkpoint(run_dir / "checkpoints" / "best.safetensors")
    name = next(k for k in state["model"] if k.endswith("running_var"))
    state["model"][name] = torch.full_like(state["model"][name], float("inf"))
    bad = save_checkpoint(tmp_path / "diverged.safetensors", state)
    with pytest.raises(CheckpointError, match=rf"diverged.safetensors' is unusable: '{name}' holds \d+ non-finite value\(s\) \(first: inf\): the run diverged"):
        load_run(run_dir, bad)


def test_one_process_owns_a_run_folder(tmp_path):
    from metakit.runtime.run import RunFolderInUseError, lock_run_dir

    with lock_run_dir(tmp_path / "run") as run_dir:
        owner = json.loads((run_dir / ".lock").read_text())
        assert owner["pid"] == os.getpid()
        with pytest.raises(RunFolderInUseError, match=rf"run folder '.*run' is in use by process {os.getpid()} \(.*\), since .*: one process at a time"):
            with lock_run_dir(run_dir):
                pass
        (run_dir / "config.yaml").write_text("x")
    with lock_run_dir(run_dir):  # released at the end of the block
        pass
    assert (run_dir / ".lock").read_text() == ""  # the owner record is cleared on release


def test_a_start_that_fails_early_leaves_no_folder(tmp_path):
    from metakit.runtime.run import lock_run_dir

    with pytest.raises(RuntimeError):
        with lock_run_dir(tmp_path / "new" / "run"):
            raise RuntimeError("the config is bad")
    assert not (tmp_path / "new" / "run").exists()


def test_lock_held_by_a_killed_process_is_not_stale(tmp_path):
    """The OS releases the lock of a SIGKILLed owner: the next process takes the folder."""
    import signal
    import subprocess
    import sys

    from metakit.runtime.run import RunFolderInUseError, lock_run_dir

    run_dir = tmp_path / "run"
    code = (
        "import sys, time\n"
        "from metakit.runtime.run import lock_run_dir\n"
        f"with lock_run_dir({str(run_dir)!r}):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderInUseError, match=rf"in use by process {proc.pid} "):
            with lock_run_dir(run_dir):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert json.loads((run_dir / ".lock").read_text())["pid"] == proc.pid  # its record is left behind
    with lock_run_dir(run_dir):
        assert json.loads((run_dir / ".lock").read_text())["pid"] == os.getpid()


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda p: p.write_text("x") and p, r"run folder '.*out' is a file, not a folder; choose another --out folder"),
        (lambda p: (p.parent / "parent").write_text("x") and p.parent / "parent" / "run",
         r"cannot use '.*parent/run' as a run folder: a part of the path is a file, not a folder .*; choose a folder you can write to \(--out\)"),
    ],
)
def test_an_unusable_run_folder_is_named_with_the_reason_in_words(tmp_path, make, expected):
    from metakit.runtime.run import lock_run_dir

    target = make(tmp_path / "out")
    with pytest.raises(ValueError, match=expected) as info:
        with lock_run_dir(target):
            pass
    assert "Errno" not in str(info.value)


def test_an_unwritable_run_folder_says_permission_denied(tmp_path, monkeypatch):
    import errno

    from metakit.runtime.run import lock_run_dir

    def refuse(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "ro"))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(ValueError, match=r"cannot use '.*ro' as a run folder: permission denied \(.*ro\); choose a folder you can write to \(--out\)") as info:
        with lock_run_dir(tmp_path / "ro"):
            pass
    assert "Errno" not in str(info.value)


def test_corrupt_best_is_named_and_corrupt_last_falls_back(trained, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(trained[0], run_dir)
    best = run_dir / "checkpoints" / "best.safetensors"
    best.write_bytes(best.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"checkpoint '.*best.safetensors' is unusable: truncated"):
        load_run(run_dir)
    newest = run_dir / "checkpoints" / "step-00000006.safetensors"
    newest.write_bytes(b"garbage!" * 4)
    loaded = load_run(run_dir, "last")
    assert loaded.step == 4
    err = capsys.readouterr().err
    assert "step-00000006.safetensors' is unusable" in err and "falling back to the previous checkpoint" in err


def test_load_run_can_fall_back_from_a_corrupt_best(trained, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(trained[0], run_dir)
    best = run_dir / "checkpoints" / "best.safetensors"
    best.write_bytes(best.read_bytes()[:200])
    loaded = load_run(run_dir, fallback=True)
    assert loaded.kind == "step" and loaded.step == 6 and loaded.checkpoint.name == "step-00000006.safetensors"
    err = capsys.readouterr().err
    assert "best.safetensors' is unusable: truncated" in err
    assert "using the newest readable step checkpoint step-00000006.safetensors instead" in err
    # an explicit path is never replaced by another file
    with pytest.raises(CheckpointError, match=r"checkpoint '.*best.safetensors' is unusable: truncated"):
        load_run(run_dir, best, fallback=True)
    # nothing readable to fall back to: the error names the best checkpoint
    for p in (run_dir / "checkpoints").glob("step-*"):
        p.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"best.safetensors' is unusable: truncated.*no step checkpoint is readable"):
        load_run(run_dir, fallback=True)


def test_a_refused_resume_leaves_the_run_folder_alone(trained, tmp_path):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(trained[0], run_dir)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    with pytest.raises(ValueError, match=r"train.steps=2 but the checkpoint step-00000006.safetensors is at step 6"):
        train(read_run_config(run_dir, ["train.steps=2"]), run_dir, resume=True, stream=io.StringIO())
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before  # config.yaml included


def test_train_refuses_an_existing_run_and_resume_checks_changes(trained, folder):
    run_dir, _ = trained
    with pytest.raises(FileExistsError, match=r"already holds a run \(config.yaml\); continue it with --resume"):
        train(folder_config(folder), run_dir, stream=io.StringIO())
    with pytest.raises(ConfigError, match=r"cannot change optim.lr \(0.001 -> 0.5\) when resuming"):
        train(read_run_config(run_dir, ["optim.lr=0.5"]), run_dir, resume=True, stream=io.StringIO())


def test_resume_extends_a_finished_run_exactly(folder, tmp_path):
    long_dir, short_dir = tmp_path / "long", tmp_path / "short"
    train(folder_config(folder, "train.steps=8"), long_dir, stream=io.StringIO())
    train(folder_config(folder, "train.steps=5"), short_dir, stream=io.StringIO())
    before = (short_dir / "metrics.jsonl").read_text()
    stream = io.StringIO()
    result = train(read_run_config(short_dir, ["train.steps=8"]), short_dir, resume=True, stream=stream)
    assert result.step == 8
    # it continued from step 5: the first five steps were neither trained nor logged again
    assert f"resuming {short_dir} from step-00000005.safetensors (step 5)" in stream.getvalue()
    assert (short_dir / "metrics.jsonl").read_text().startswith(before) and before
    a, b = load_run(long_dir, "last"), load_run(short_dir, "last")
    for k, v in a.algorithm.state_dict().items():
        assert torch.equal(v, b.algorithm.state_dict()[k]), k
    assert read_run_config(short_dir).train.steps == 8  # config.yaml records the new length


def test_check_resume_changes():
    base = Config.from_dict({"data": {"root": "/d"}, "train": {"ways": 5}})
    check_resume_changes(base, base.with_overrides(["train.steps=5000", "run.progress=false", "optim.grad_clip=1"]))
    with pytest.raises(ConfigError, match=r"cannot change train.ways \(5 -> 20\) when resuming.*Keys that may change"):
        check_resume_changes(base, base.with_overrides(["train.ways=20"]))
    cosine = base.with_overrides(["optim.schedule=cosine"])
    with pytest.raises(ConfigError, match=r"cannot change train.steps \(1000 -> 2000\) when resuming a run with optim.schedule=cosine"):
        check_resume_changes(cosine, cosine.with_overrides(["train.steps=2000"]))
    linear = base.with_overrides(["optim.schedule=linear"])
    with pytest.raises(ConfigError, match=r"cannot change train.steps \(1000 -> 2000\) when resuming a run with optim.schedule=linear"):
        check_resume_changes(linear, linear.with_overrides(["train.steps=2000"]))


def test_default_run_dir(tmp_path):
    a = default_run_dir("configs/protonet_omniglot_5w1s.yaml", root=tmp_path)
    assert a.parent == tmp_path and a.name.startswith("protonet_omniglot_5w1s-")
    a.mkdir()
    b = default_run_dir("configs/protonet_omniglot_5w1s.yaml", root=tmp_path)
    assert b != a


class _Fit:
    def __init__(self, model):
        self.model = model

    def predict(self, query_x):
        return self.model(query_x)


@register("_run_test_regressor")
class _Regressor(Algorithm):
    """Plain regression across tasks (no adaptation): enough to exercise the sinusoid path.

    Args:
        model: the regressor.
    """

    task_kinds = ("regression",)

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def meta_loss(self, batch: EpisodeBatch):
        pred = self.model(batch.query_x.flatten(0, 1)).view_as(batch.query_y)
        loss = F.mse_loss(pred, batch.query_y)
        return loss, {"loss": float(loss.detach())}

    def adapt(self, support_x, support_y, ways=None):
        return _Fit(self.model)


def test_sinusoid_runs_need_no_data_and_keep_the_lowest_mse(tmp_path):
    cfg = Config.from_dict(
        {
            "data": {"dataset": "sinusoid"},
            "train": {"shots": 5, "queries": 5, "meta_batch": 4, "steps": 20},
            "eval": {"val_episodes": 20, "val_every": 5, "test_episodes": 30},
            "model": {"name": "mlp", "hidden": [16]},
            "algorithm": {"name": "_run_test_regressor"},
            "optim": {"lr": 0.01},
            "run": {"checkpoint_every": 10, "log_every": 5, "progress": False},
        }
    )
    result = train(cfg, tmp_path / "sine", stream=io.StringIO())
    vals = [r for r in result.run_dir.joinpath("metrics.jsonl").read_text().splitlines() if '"val"' in r]
    mses = [json.loads(r)["mse"] for r in vals]
    assert len(mses) == 4 and result.best["mse"] == min(mses) and result.best["higher_is_better"] is False
    loaded = load_run(result.run_dir)
    assert loaded.dataset() is None and loaded.preprocessing is None and loaded.context.ways is None
    test = loaded.episodes()
    assert sum(b.num_tasks for b in test) == 30
    # validation, test and training tasks come from different seeds
    val_first = next(iter(loaded.episodes("val", episodes=1)))
    test_first = next(iter(loaded.episodes("test", episodes=1)))
    assert not torch.equal(val_first.support_x, test_first.support_x)
    assert evaluate(loaded.algorithm, test).metric == "mse"
    with pytest.raises(ValueError, match=r"ways=5 but sinusoid tasks are regression tasks"):
        loaded.episodes(ways=5)


def test_context_record_round_trip_and_missing_context(tmp_path):
    ctx = BuildContext(ways=5, example_shape=(1, 28, 28), num_train_classes=4112)
    record = context_record(ctx)
    assert record == {"ways": 5, "example_shape": [1, 28, 28], "num_train_classes": 4112}
    assert context_from_record(record, tmp_path / "c.safetensors") == ctx
    with pytest.raises(CheckpointError, match=r"c.safetensors' is unusable: it holds no build context"):
        context_from_record(None, tmp_path / "c.safetensors")


def test_an_owner_that_has_just_locked_is_named_once_it_wrote_its_record(tmp_path):
    """The window between an owner's lock and its record: the second process waits for the record."""
    import threading

    fcntl = pytest.importorskip("fcntl")

    from metakit.runtime.run import RunFolderInUseError, lock_run_dir

    (tmp_path / "run").mkdir()
    fd = os.open(tmp_path / "run" / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # locked, no record yet
        timer = threading.Timer(0.2, lambda: os.write(fd, json.dumps({"pid": os.getpid()}).encode()))
        timer.start()
        with pytest.raises(RunFolderInUseError, match=rf"is in use by process {os.getpid()}:"):
            with lock_run_dir(tmp_path / "run"):
                pass
        timer.join()
    finally:
        os.close(fd)
