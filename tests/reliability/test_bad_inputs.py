"""Bad input on every command: one table of cases, one test.

Each case states a command line (and the files or environment it needs) and the one-line error
it must end with. The test fails on a Python traceback (any exception out of ``main``), on exit
code 0, on an error of more than one line, and on an error that does not name the offending
argument (``names``: the option, key or path the user has to change).

Adding a family or a command: append its cases to ``CASES`` (see the last section). Placeholders
in ``argv``, ``names`` and ``env``: ``{tmp}`` (an empty folder of the case), ``{run}`` (a private
copy of a finished 4-step ProtoNet/Conv4 run folder), ``{cfg}`` (its config file), ``{images}``
(its image folder, ``train``/``val``/``test``), ``{omniglot}`` (the Omniglot archives). ``setup``
gets a :class:`Ctx` and prepares damaged files before the command runs.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

import gymnasium
import numpy as np
import pytest
import torch
import yaml

from metakit.cli.main import main
from metakit.tasks import env_family

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Ctx:
    tmp: Path
    cfg: Path
    images: Path
    omniglot: Path | None
    bomb: bytes
    make_run: Callable[[], Path]
    stack: contextlib.ExitStack

    @property
    def run(self) -> Path:
        return self.make_run()

    def fields(self) -> dict[str, str]:
        return {"tmp": str(self.tmp), "cfg": str(self.cfg), "images": str(self.images),
                "omniglot": str(self.omniglot), "run": str(self.tmp / "run")}


@dataclass(frozen=True)
class Case:
    id: str
    argv: list[str]
    names: str  # what the error line must name: the offending option, key or path
    error: str  # a regex the error line must match (after "metakit <command>: error: ")
    setup: Callable[[Ctx], None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    omniglot: bool = False  # needs the Omniglot archives


# -- setups ------------------------------------------------------------------------------------
def a_file(ctx: Ctx) -> None:
    (ctx.tmp / "afile").write_text("not a folder")


def checkpoints_deleted(ctx: Ctx) -> None:
    for p in (ctx.run / "checkpoints").glob("step-*.safetensors"):
        p.unlink()


def run_in_use(ctx: Ctx) -> None:
    from metakit.runtime.run import lock_run_dir

    ctx.stack.enter_context(lock_run_dir(ctx.run))


def pickle_checkpoint(ctx: Ctx) -> None:
    torch.save({"w": torch.zeros(2)}, ctx.tmp / "model.pt")


def checkpoint_of_another_run(ctx: Ctx) -> None:
    from metakit.runtime.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(ctx.run / "checkpoints" / "best.safetensors")
    state["config"] = state["config"].replace("hidden: 8", "hidden: 4")
    first = next(iter(state["model"]))
    state["model"][first] = torch.zeros(4, *state["model"][first].shape[1:])
    save_checkpoint(ctx.tmp / "other.safetensors", state)


def diverged_run(ctx: Ctx) -> None:
    """Every checkpoint's BatchNorm running variances are inf (what a huge learning rate left)."""
    from metakit.runtime.checkpoint import load_checkpoint, save_checkpoint

    for p in (ctx.run / "checkpoints").glob("*.safetensors"):
        state = load_checkpoint(p)
        for k in state["model"]:
            if k.endswith("running_var"):
                state["model"][k] = torch.full_like(state["model"][k], float("inf"))
        save_checkpoint(p, state)


def bomb_in_query(ctx: Ctx) -> None:
    (ctx.tmp / "query").mkdir()
    (ctx.tmp / "query" / "bomb.png").write_bytes(ctx.bomb)


def bomb_in_folder(ctx: Ctx) -> None:
    shutil.copytree(ctx.images / "train", ctx.tmp / "mine")
    (ctx.tmp / "mine" / "class0" / "bomb.png").write_bytes(ctx.bomb)


def zip_slip(ctx: Ctx) -> None:
    (ctx.tmp / "z").mkdir()
    with zipfile.ZipFile(ctx.tmp / "z" / "images_background.zip", "w") as zf:
        zf.writestr("images_background/A/character01/1.png", b"x")
        zf.writestr("../../evil.png", b"x")
    shutil.copy(ctx.omniglot / "images_evaluation.zip", ctx.tmp / "z")


def truncated_zip(ctx: Ctx) -> None:
    (ctx.tmp / "z").mkdir()
    (ctx.tmp / "z" / "images_background.zip").write_bytes(b"PK\x03\x04 truncated")
    (ctx.tmp / "z" / "images_evaluation.zip").write_bytes(b"PK\x03\x04 truncated")


def repeated_key(ctx: Ctx) -> None:
    (ctx.tmp / "dup.yaml").write_text(ctx.cfg.read_text() + "train:\n  steps: 3\n")


def binary_config(ctx: Ctx) -> None:
    (ctx.tmp / "bin.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe binary")


def sequence_config(ctx: Ctx) -> None:
    """{tmp}/seq.yaml: a tiny MANN on sequences of the image folder's classes."""
    (ctx.tmp / "seq.yaml").write_text(
        f"task: {{family: sequence, dataset: folder, root: {ctx.images}, image_size: 12, classes_per_episode: 3, "
        "instances_per_class: 3}\ntrain: {meta_batch: 2, steps: 2}\neval: {val_episodes: 2, val_every: 2}\n"
        "model: {name: flatten}\nalgorithm: {name: mann, hidden_size: 8, slots: 8, width: 4, heads: 2}\n"
        "run: {progress: false, num_threads: 1}\n"
    )


def snail_run(ctx: Ctx) -> None:
    """A 1-step SNAIL run (3-way 1-shot, a small network) in ``{tmp}/snail``."""
    from metakit.runtime.config import load_config
    from metakit.runtime.trainer import train

    config = load_config(ctx.cfg, ["algorithm.name=snail", "algorithm.filters=4", "algorithm.key_sizes=[4,4,4]",
                                   "algorithm.value_sizes=[2,2,2]", "train.steps=1"])
    train(config, ctx.tmp / "snail", stream=io.StringIO())


def one_class_support(ctx: Ctx) -> None:
    first = sorted(p for p in (ctx.images / "test").iterdir() if p.is_dir())[0]
    shutil.copytree(first, ctx.tmp / "support" / first.name)
    shutil.copytree(first, ctx.tmp / "query")


def rl_configs(ctx: Ctx) -> None:
    sizes = "train: {shots: 3, queries: 1, meta_batch: 2, steps: 2}\neval: {val_episodes: 0, test_episodes: 4}\n"
    sizes += "algorithm: {name: random}\n"
    (ctx.tmp / "bandits.yaml").write_text("task: {family: bandits, arms: 2}\n" + sizes +
                                          "model: {name: mlp, in_features: 1, out_features: 2}\n")
    (ctx.tmp / "mdp.yaml").write_text("task: {family: tabular_mdp, states: 3, actions: 2}\n" + sizes +
                                      "model: {name: mlp, in_features: 3, out_features: 2}\n")


# -- the table -----------------------------------------------------------------------------------
# -- meta-RL: environment families of these cases, and an RL² config on them --------------------------
class _Coin(gymnasium.Env):
    """One pull an episode; ``reward`` every pull (NaN for the broken family)."""

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self, reward: float, action_space) -> None:
        self.reward = reward
        self.observation_space = gymnasium.spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = action_space

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        return np.zeros(1, np.float32), self.reward, True, False, {}


env_family("_bad_input_coin", lambda p, **kw: _Coin(1.0, gymnasium.spaces.Discrete(2)), lambda rng: {})
env_family("_nan_reward_coin", lambda p, **kw: _Coin(float("nan"), gymnasium.spaces.Discrete(2)), lambda rng: {})
env_family("_multi_discrete_coin", lambda p, **kw: _Coin(1.0, gymnasium.spaces.MultiDiscrete([2, 2])), lambda rng: {})


def rl2_config(family: str, **train: int) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        sizes = {"shots": 3, "queries": 3, "meta_batch": 2, "steps": 2, **train}
        (ctx.tmp / "rl2.yaml").write_text(yaml.safe_dump({
            "task": {"family": family}, "train": sizes, "eval": {"val_episodes": 0},
            "model": {"name": "recurrent_policy", "hidden": 4},
            "algorithm": {"name": "rl2", "epochs": 1, "minibatches": 1}, "run": {"progress": False},
        }))
    return setup


CASES = [
    # train: config, run folder, resume
    Case("train/no-config", ["train"], "config", r"give a config file \(e\.g\. .*\) or --resume RUN_DIR"),
    Case("train/unknown-key", ["train", "{cfg}", "optim.lrr=1", "--out", "{tmp}/r"], "optim.lrr", r"optim\.lrr"),
    Case("train/out-is-a-file", ["train", "{cfg}", "--out", "{tmp}/afile"], "{tmp}/afile",
         r"run folder '.*' is a file, not a folder; choose another --out folder", a_file),
    Case("train/out-under-a-file", ["train", "{cfg}", "--out", "{tmp}/afile/run"], "{tmp}/afile/run",
         r"cannot use '.*' as a run folder: a part of the path is a file, not a folder .*\(--out\)", a_file),
    Case("train/out-holds-a-run", ["train", "{cfg}", "--out", "{run}"], "{run}",
         r"already holds a run \(config\.yaml\); continue it with --resume"),
    Case("train/restart-without-resume", ["train", "{cfg}", "--restart", "--out", "{tmp}/r"], "--restart",
         r"--restart goes with --resume RUN_DIR"),
    Case("train/resume-nowhere", ["train", "--resume", "{tmp}/nowhere"], "{tmp}/nowhere", r"run folder '.*' does not exist"),
    Case("train/resume-a-file", ["train", "--resume", "{tmp}/afile"], "{tmp}/afile",
         r"run folder '.*' is a file, not a folder", a_file),
    Case("train/resume-changes-a-key", ["train", "--resume", "{run}", "optim.lr=0.5"], "optim.lr",
         r"cannot change optim\.lr \(0\.001 -> 0\.5\) when resuming"),
    Case("train/resume-fewer-steps", ["train", "--resume", "{run}", "train.steps=1"], "train.steps",
         r"train\.steps=1 but the checkpoint step-00000004\.safetensors is at step 4"),
    Case("train/resume-without-checkpoints", ["train", "--resume", "{run}"], "--restart",
         r"run folder '.*' recorded training up to step 4 .* has no checkpoint left to resume from", checkpoints_deleted),
    Case("train/resume-a-run-in-use", ["train", "--resume", "{run}", "train.steps=6"], "{run}",
         r"run folder '.*' is in use by process \d+ .*: one process at a time trains in a run folder", run_in_use),
    # eval: run folders and checkpoints
    Case("eval/nowhere", ["eval", "{tmp}/nowhere"], "{tmp}/nowhere", r"run folder '.*' does not exist"),
    Case("eval/a-file", ["eval", "{tmp}/afile"], "{tmp}/afile", r"is a file, not a folder", a_file),
    Case("eval/checkpoint-missing", ["eval", "{run}", "--checkpoint", "{tmp}/none.safetensors"], "{tmp}/none.safetensors",
         r"checkpoint '.*' does not exist"),
    Case("eval/checkpoint-is-a-folder", ["eval", "{run}", "--checkpoint", "{tmp}"], "{tmp}",
         r"is unusable: it is a folder, not a checkpoint file"),
    Case("eval/checkpoint-is-a-pickle", ["eval", "{run}", "--checkpoint", "{tmp}/model.pt"], "{tmp}/model.pt",
         r"is unusable: not a safetensors file \(it is a zip archive, e\.g\. a torch\.save pickle", pickle_checkpoint),
    Case("eval/checkpoint-of-another-run", ["eval", "{run}", "--checkpoint", "{tmp}/other.safetensors"], "model.hidden",
         r"it was written by another run \(its config differs in model\.hidden\)", checkpoint_of_another_run),
    Case("eval/diverged-run", ["eval", "{run}"], "running_var",
         r"holds \d+ non-finite value\(s\) \(first: inf\): the run diverged before this checkpoint was written", diverged_run),
    # predict: the user's images
    Case("predict/decompression-bomb", ["predict", "{run}", "--support", "{images}/test", "--query", "{tmp}/query"],
         "{tmp}/query/bomb.png", r"is 900,000,000 pixels, over the limit of 67,108,864 pixels \(8192 x 8192\)", bomb_in_query),
    # data: roots, caches, archives, image folders
    Case("data/root-is-a-file", ["data", "check", "omniglot", "--root", "{tmp}/afile"], "--root",
         r"--root '.*' is a file, not a folder", a_file),
    Case("data/root-missing", ["data", "check", "omniglot", "--root", "{tmp}/nowhere"], "--root",
         r"--root '.*' is not a folder; .* add --download"),
    Case("data/cache-dir-is-a-file", ["data", "check", "omniglot", "--root", "{omniglot}", "--cache-dir", "{tmp}/afile"],
         "--cache-dir", r"cache_dir='.*afile' is a file, not a folder", a_file, omniglot=True),
    Case("data/METAKIT_CACHE-is-a-file", ["data", "show", "omniglot", "--root", "{omniglot}", "--ways", "2", "--shots", "1",
         "--out", "{tmp}/e.png"], "METAKIT_CACHE", r"METAKIT_CACHE='.*afile' is a file, not a folder", a_file,
         env={"METAKIT_CACHE": "{tmp}/afile"}, omniglot=True),
    Case("data/zip-slip", ["data", "check", "omniglot", "--root", "{tmp}/z"], "../../evil.png",
         r"refusing archive .*: member '\.\./\.\./evil\.png' contains a '\.\.' component", zip_slip, omniglot=True),
    Case("data/truncated-zip", ["data", "check", "omniglot", "--root", "{tmp}/z"], "images_background.zip",
         r"is not a readable zip archive .*: it is truncated or corrupt", truncated_zip),
    Case("data/folder-root-is-a-file", ["data", "check", "folder", "--root", "{tmp}/afile"], "{tmp}/afile",
         r"root='.*' is a file, not a folder", a_file),
    Case("data/folder-decompression-bomb", ["data", "check", "folder", "--root", "{tmp}/mine"], "bomb.png",
         r"is 900,000,000 pixels, over the limit", bomb_in_folder),
    # config files
    Case("train/config-repeats-a-key", ["train", "{tmp}/dup.yaml", "--out", "{tmp}/r"], "'train'",
         r"the key 'train' is given twice .*YAML would silently keep the last one", repeated_key),
    Case("train/binary-config", ["train", "{tmp}/bin.yaml", "--out", "{tmp}/r"], "{tmp}/bin.yaml",
         r"config file '.*' is not a UTF-8 text file \(byte 0x89 at offset 0\)", binary_config),
    Case("train/model-option-that-cannot-run", ["train", str(REPO / "configs" / "maml_sinusoid_k5.yaml"),
         "model.hidden=[-4]", "--out", "{tmp}/r"], "hidden", r"model 'mlp' with .* cannot"),
    # predict: support sets the run cannot use
    Case("predict/one-class-support", ["predict", "{run}", "--support", "{tmp}/support", "--query", "{tmp}/query"],
         "--support", r"the support set \(--support\) has 1 class .* needs at least 2 classes", one_class_support),
    # plot and demo: output paths
    Case("plot/tasks-without-regret", ["plot", "{run}", "--tasks", "5"], "--tasks",
         r"--tasks 5 sets the test tasks of the regret curves; give it with --regret"),
    Case("plot/out-is-a-file", ["plot", "{run}", "--out", "{tmp}/afile"], "{tmp}/afile", r"is a file", a_file),
    Case("demo/out-is-a-file", ["demo", "--steps", "1", "--out", "{tmp}/afile"], "{tmp}/afile", r"is a file", a_file),
    Case("demo/out-holds-a-run", ["demo", "--steps", "1", "--out", "{run}"], "{run}", r"holds a run"),
    # model-based learners on Santoro et al.'s sequence protocol
    Case("train/sequence-with-ways", ["train", str(REPO / "configs" / "mann_omniglot_sequence.yaml"), "train.ways=5", "--out",
         "{tmp}/r"], "train.ways", r"task.family=sequence sets the classes of an episode with task.classes_per_episode"),
    Case("train/sequence-episode-too-long", ["train", str(REPO / "configs" / "lstm_omniglot_sequence.yaml"),
         "task.episode_length=80", "--out", "{tmp}/r"], "task.episode_length", r"holds only .* = 50 examples"),
    Case("train/mann-memory-too-small", ["train", "{tmp}/seq.yaml", "algorithm.slots=2", "--out", "{tmp}/r"], "algorithm.slots",
         r"algorithm.slots=2 but the episodes hold 3 classes", sequence_config),
    Case("train/mann-gamma-with-ntm", ["train", "{tmp}/seq.yaml", "algorithm.memory=ntm", "algorithm.gamma=0.9", "--out",
         "{tmp}/r"], "gamma", r"gamma=0.9 \(usage decay\) is an option of memory=lrua", sequence_config),
    Case("train/sequence-more-instances-than-examples", ["train", "{tmp}/seq.yaml", "task.instances_per_class=5", "--out",
         "{tmp}/r"], "task.instances_per_class", r"a class of the split .* has only 3 examples", sequence_config),
    # SNAIL: tasks longer or wider than the network's context
    Case("train/snail-support-longer-than-its-context", ["train", "{cfg}", "algorithm.name=snail", "train.shots=2", "train.queries=1",
         "--out", "{tmp}/r"], "algorithm.shots",
         r"the support set has 6 examples but this SNAIL network's context holds 3 \(3-way x 1-shot, algorithm\.shots=1\)"),
    Case("train/snail-eval-shots-over-its-context", ["train", "{cfg}", "algorithm.name=snail", "eval.shots=2", "eval.queries=1",
         "--out", "{tmp}/r"], "eval.shots=2",
         r"eval\.shots=2: the support set has 6 examples but this SNAIL network's context holds 3"),
    Case("train/snail-eval-other-ways", ["train", "{cfg}", "algorithm.name=snail", "eval.ways=4", "--out", "{tmp}/r"],
         "eval.ways=4", r"eval\.ways=4 but the SNAIL network is built for 3-way tasks"),
    Case("eval/snail-other-ways", ["eval", "{tmp}/snail", "--ways", "4"], "4-way",
         r"the task is 4-way but this SNAIL network was built for 3-way tasks .*train\.ways=4", snail_run),
    Case("eval/snail-more-shots", ["eval", "{tmp}/snail", "--shots", "2", "--queries", "1"], "algorithm.shots",
         r"the support set has 6 examples but this SNAIL network's context holds 3", snail_run),
    Case("predict/snail-support-of-other-ways", ["predict", "{tmp}/snail", "--support", "{images}/test", "--query",
         "{images}/test/class0"], "4-way", r"the task is 4-way but this SNAIL network was built for 3-way tasks", snail_run),
    # bandits and tabular MDPs, and their classical references
    Case("train/bandits-one-arm", ["train", "{tmp}/bandits.yaml", "task.arms=1", "--out", "{tmp}/r"], "task.arms",
         r"task\.arms=1 .*>= 2", rl_configs),
    Case("train/tabular-mdp-horizon-0", ["train", "{tmp}/mdp.yaml", "task.horizon=0", "--out", "{tmp}/r"], "task.horizon",
         r"task\.horizon=0 .*>= 1", rl_configs),
    Case("eval/reference-unknown", ["eval", "{tmp}/bandits.yaml", "--reference", "ucb2"], "--reference",
         r"--reference 'ucb2' is not a classical reference; choose one of", rl_configs),
    Case("eval/reference-bad-constant", ["eval", "{tmp}/bandits.yaml", "--reference", "epsilon_greedy", "--option",
         "epsilon=2"], "epsilon", r"epsilon=2\.0 must be a number in \[0\.0, 1\.0\]", rl_configs),
    Case("eval/reference-with-steps", ["eval", "{tmp}/bandits.yaml", "--reference", "ucb1", "--steps", "2"], "--steps",
         r"--steps 2 does not apply to --reference: a classical reference has no inner loop", rl_configs),
    Case("eval/reference-of-another-family", ["eval", "{tmp}/mdp.yaml", "--reference", "gittins"], "task.family=bandits",
         r"algorithm\.name=gittins plays task\.family=bandits, not task\.family=tabular_mdp", rl_configs),
    # meta-RL (RL²): rewards, spaces and trial sizes
    Case("train/rl-nan-reward", ["train", "{tmp}/rl2.yaml", "--out", "{tmp}/r"], "task.family=_nan_reward_coin",
         r"the environment of task 0 \(task.family=_nan_reward_coin\) returned the reward nan at step 0 of episode 0; "
         r"rewards must be finite", rl2_config("_nan_reward_coin")),
    Case("train/rl-policy-does-not-fit-the-spaces", ["train", "{tmp}/rl2.yaml", "model.action_dim=3", "--out", "{tmp}/r"],
         "model.action_dim=3", r"spaces \(observation Box.*, action Discrete\(2\)\) do not fit the policy",
         rl2_config("_bad_input_coin")),
    Case("train/rl-unsupported-action-space", ["train", "{tmp}/rl2.yaml", "--out", "{tmp}/r"], "action_space",
         r"action_space=MultiDiscrete\(\[2 2\]\) is not supported: the recurrent policy acts in Discrete",
         rl2_config("_multi_discrete_coin")),
    Case("train/rl2-queries-over-shots", ["train", "{tmp}/rl2.yaml", "--out", "{tmp}/r"], "train.queries=4",
         r"train.queries=4 but a trial has train.shots=3 episodes", rl2_config("_bad_input_coin", queries=4)),
    # meta-RL: MAML-RL and the navigation / locomotion families
    Case("train/maml-rl-trpo-with-adam", ["train", str(REPO / "configs" / "maml_rl_navigation.yaml"), "optim.name=adam",
         "optim.lr=0.001", "--out", "{tmp}/r"], "optim.name", r"algorithm.outer=trpo writes its line-searched step"),
    Case("train/maml-rl-policy-of-another-action-size", ["train", str(REPO / "configs" / "maml_rl_navigation.yaml"),
         "model.action_dim=3", "--out", "{tmp}/r"], "model.name=gaussian_mlp", r"maml_rl reads \[mean, log_std\]"),
    Case("train/navigation-empty-goal-range", ["train", str(REPO / "configs" / "maml_rl_navigation.yaml"),
         "task.goal_range=[0.5,-0.5]", "--out", "{tmp}/r"], "task.goal_range", r"must be \(low, high\) with low < high"),
    Case("eval/steps-without-an-inner-loop", ["eval", "{run}", "--steps", "2"], "--steps", r"has no inner loop"),
    Case("plot/trajectories-of-a-classifier", ["plot", "{run}", "--trajectories"], "--trajectories",
         r"cannot draw trajectories"),
    # -- add cases here: each new command, config field and family (memory models, RL, learned
    # optimizers...) states its bad inputs in this table.
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_ends_in_one_named_line(case, tmp_path, image_config, images, run_copy, bomb_png, request, capsys, monkeypatch):
    omniglot = None
    if case.omniglot:
        omniglot = request.getfixturevalue("omniglot_root")
    with contextlib.ExitStack() as stack:
        c = Ctx(tmp_path, image_config, images, omniglot, bomb_png, run_copy, stack)
        if "{run}" in " ".join(case.argv) or case.names == "{run}":
            c.make_run()
        if case.setup is not None:
            case.setup(c)
        fields = c.fields()
        for k, v in case.env.items():
            monkeypatch.setenv(k, v.format(**fields))
        argv = [a.format(**fields) for a in case.argv]
        try:
            code = main(argv)
        except SystemExit as e:  # argparse usage errors
            code = e.code
        except BaseException as e:  # noqa: BLE001 - a traceback is the failure this suite exists for
            pytest.fail(f"{case.id}: a traceback instead of an error line: {type(e).__name__}: {e}")
    err = capsys.readouterr().err
    assert code not in (0, None), f"{case.id}: exit code 0 where an error was expected (stderr: {err!r})"
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1, f"{case.id}: expected one error line, got {err!r}"
    line = lines[0]
    assert line.startswith(f"metakit {argv[0]}: error: "), line
    names = case.names.format(**fields)
    assert names in line, f"{case.id}: the error does not name {names!r}: {line}"
    assert re.search(case.error, line), f"{case.id}: {line!r} does not match {case.error!r}"
