"""Environment distributions (metakit.tasks.rl): seeded tasks, fixed evaluation sets, vector envs,
scoring, the errors, and a whole run (train, checkpoint, resume, ``metakit eval``) of a toy
distribution with a toy policy-gradient algorithm, written here with no change anywhere else."""

import json
from typing import Any, ClassVar

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from metakit.algorithms import Algorithm, BuildContext, register
from metakit.cli.main import main
from metakit.options import ConfigError
from metakit.runtime.config import Config
from metakit.runtime.run import load_run
from metakit.runtime.trainer import train
from metakit.tasks import EnvBatch, EnvFamily, env_family, get_family
from metakit.tasks.rl import EnvTaskSampler, NotAnEnvError, task_rng


class Coins(gymnasium.Env):
    """Two arms; arm 1 pays 1 with probability p, arm 0 with 1 - p; ``horizon`` pulls an episode."""

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self, p: float, horizon: int = 4) -> None:
        self.p, self.horizon = float(p), horizon
        self.observation_space = gymnasium.spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = gymnasium.spaces.Discrete(2)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        pay = self.p if int(action) == 1 else 1.0 - self.p
        reward = float(self.np_random.random() < pay)
        self.t += 1
        return np.full(1, self.t / self.horizon, np.float32), reward, False, self.t >= self.horizon, {}


CoinsFamily = env_family(
    "_coins",
    lambda params, **kw: Coins(params["p"]),
    lambda rng: {"p": float(rng.uniform(0, 1))},
    optimal_return=lambda params, episodes: 4 * episodes * max(params["p"], 1 - params["p"]),
)


@register("_coin_pg")
class CoinPG(Algorithm):
    """A memoryless softmax policy over the two arms trained by REINFORCE (tests only)."""

    task_kinds = ("rl",)

    @classmethod
    def model_defaults(cls, context: BuildContext) -> dict[str, Any]:
        return {"in_features": context.example_shape[0], "out_features": int(context.action_space.n)}

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def _play(self, batch: EnvBatch, episodes: int, seed_offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        envs = batch.vector_env()
        logps, rewards = [], []
        for e in range(episodes):
            obs, _ = envs.reset(seed=[s + 1000 * e + seed_offset for s in batch.seeds])
            for _ in range(4):
                dist = torch.distributions.Categorical(logits=self.model(torch.as_tensor(obs)))
                a = dist.sample()
                obs, r, term, trunc, _ = envs.step(a.numpy())
                logps.append(dist.log_prob(a))
                rewards.append(torch.as_tensor(r, dtype=torch.float32))
        envs.close()
        return torch.stack(logps), torch.stack(rewards)

    def meta_loss(self, batch: EnvBatch):
        logp, r = self._play(batch, batch.shots, 0)
        ret = r.sum(0)
        loss = -(logp.sum(0) * (ret - ret.mean())).mean()
        return loss, {"loss": float(loss.detach()), "return": float(ret.mean())}

    def task_returns(self, batch: EnvBatch) -> torch.Tensor:
        return self._play(batch, batch.queries, 7)[1].sum(0)


def _config(**sections) -> dict:
    raw = {
        "task": {"family": "_coins"},
        "train": {"shots": 2, "queries": 3, "meta_batch": 4, "steps": 4},
        "eval": {"val_episodes": 6, "val_every": 2, "test_episodes": 10},
        "model": {"name": "mlp", "hidden": [8]},
        "algorithm": {"name": "_coin_pg"},
        "optim": {"lr": 0.05},
        "run": {"checkpoint_every": 1, "log_every": 1, "progress": False, "seed": 3},
    }
    raw.update(sections)
    return raw


def test_tasks_are_fixed_by_seed_stream_and_index_and_streams_differ():
    fam = get_family("_coins")(get_family("_coins").Options())
    a, b = fam.task(5, "test", 3), fam.task(5, "test", 3)
    assert a == b and a.params == {"p": float(task_rng(5, "test", 3).uniform(0, 1))}
    assert fam.task(5, "val", 3).params != a.params and fam.task(5, "train", 3).params != a.params
    assert fam.task(6, "test", 3).params != a.params and fam.task(5, "test", 4).params != a.params
    with pytest.raises(ValueError, match=r"stream='dev' must be one of \['test', 'train', 'val'\]"):
        task_rng(0, "dev", 0)


def test_the_sampler_resumes_where_it_stopped_and_refuses_other_settings():
    fam = CoinsFamily(CoinsFamily.Options())
    s = EnvTaskSampler(fam, shots=2, queries=3, seed=1)
    first = s.sample(3)
    state = s.state_dict()
    second = s.sample(2)
    assert [t.index for t in first] == [0, 1, 2] and [t.index for t in second] == [3, 4]
    r = EnvTaskSampler(fam, shots=2, queries=3, seed=1)
    r.load_state_dict(state)
    assert r.sample(2) == second
    with pytest.raises(ValueError, match=r"state was saved with shots=2 but this sampler has shots=5"):
        EnvTaskSampler(fam, shots=5, queries=3, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match=r"meta_batch=0 must be a positive int"):
        s.sample(0)


def test_eval_sets_are_fixed_and_do_not_depend_on_the_chunking():
    fam = CoinsFamily(CoinsFamily.Options())
    one = [t for b in fam.eval_set("val", None, ways=None, shots=1, queries=2, episodes=7, seed=0, batch_size=7) for t in b]
    chunks = list(fam.eval_set("val", None, ways=None, shots=1, queries=2, episodes=7, seed=0, batch_size=3))
    assert [len(b) for b in chunks] == [3, 3, 1] and [t for b in chunks for t in b] == one
    assert all(b.shots == 1 and b.queries == 2 for b in chunks)
    with pytest.raises(ValueError, match=r"ways=5 but task.family=_coins gives environment tasks"):
        fam.eval_set("val", None, ways=5, shots=1, queries=2, episodes=7, seed=0)


def test_envs_pass_check_env_and_the_vector_env_steps_each_task_like_its_own_env():
    fam = CoinsFamily(CoinsFamily.Options())
    tasks = [fam.task(0, "test", j) for j in range(3)]
    check_env(tasks[0].make(), skip_render_check=True)
    vec = EnvBatch(tuple(tasks), 1, 1).vector_env(copies=2)
    assert vec.num_envs == 6
    vec.reset(seed=[t.seed for t in tasks for _ in range(2)])
    singles = [t.make() for t in tasks for _ in range(2)]
    for env, t in zip(singles, [t for t in tasks for _ in range(2)]):
        env.reset(seed=t.seed)
    actions = np.array([0, 1, 1, 0, 1, 1])
    for _ in range(4):
        _, r, _, trunc, _ = vec.step(actions)
        expected = [env.step(a)[1] for env, a in zip(singles, actions)]
        assert r.tolist() == expected
    assert trunc.all()


def test_context_carries_the_spaces_and_sizes_are_checked():
    cfg = Config.from_dict(_config())
    ctx = cfg.family.context(None, None)
    assert ctx.example_shape == (1,) and ctx.action_space == gymnasium.spaces.Discrete(2)
    with pytest.raises(ConfigError, match=r"train.ways=5 but task.family=_coins gives environment tasks, which have no classes"):
        Config.from_dict(_config(train={"ways": 5, "shots": 2, "queries": 3, "meta_batch": 4, "steps": 4}))
    with pytest.raises(ConfigError, match=r"algorithm.name=protonet solves classification tasks, but task.family=_coins gives rl tasks"):
        Config.from_dict(_config(algorithm={"name": "protonet"}))


def test_a_non_gymnasium_env_and_non_finite_returns_are_refused():
    bad = env_family("_not_env", lambda params, **kw: object(), lambda rng: {})
    with pytest.raises(NotAnEnvError, match=r"make_env of task.family=_not_env returned a builtins.object, not a gymnasium.Env"):
        bad(bad.Options()).probe_env()
    fam = CoinsFamily(CoinsFamily.Options())
    batch = EnvBatch((fam.task(0, "test", 0), fam.task(0, "test", 1)), 1, 1)

    class NaNReturns:
        def task_returns(self, batch):
            return torch.tensor([1.0, float("nan")])

    with pytest.raises(ValueError, match=r"NaNReturns.task_returns gave nan for task 1"):
        fam.score(NaNReturns(), batch)

    class NoReturns:
        pass

    with pytest.raises(TypeError, match=r"NoReturns cannot be scored on environment tasks: it has no task_returns"):
        fam.score(NoReturns(), batch)


def test_a_user_distribution_trains_resumes_exactly_and_is_evaluated_by_metakit_eval(tmp_path, capsys):
    run = tmp_path / "run"
    result = train(Config.from_dict(_config()), run)
    assert result.status == "finished" and result.best["metric"] == "return" and result.best["higher_is_better"]
    # resuming from step 2 replays steps 3-4 exactly: the tasks come from the sampler's counter
    again = tmp_path / "again"
    train(Config.from_dict(_config(train={"shots": 2, "queries": 3, "meta_batch": 4, "steps": 2})), again)
    train(Config.from_dict(_config()), again, resume=True)
    a, b = load_run(run, checkpoint="last"), load_run(again, checkpoint="last")
    for (name, x), y in zip(a.algorithm.state_dict().items(), b.algorithm.state_dict().values()):
        assert torch.equal(x, y), name
    assert a.context.action_space == gymnasium.spaces.Discrete(2)
    assert main(["eval", str(run), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["metric"] == "return" and record["episodes"] == 10 and record["task"] == "_coins"
    assert 0 <= record["return"] <= 12


def test_check_rewards_names_the_first_non_finite_reward_among_the_envs_that_count():
    from metakit.tasks.rl import NonFiniteRewardError, check_rewards

    fam = CoinsFamily(CoinsFamily.Options())
    batch = EnvBatch(tuple(fam.task(0, "test", j) for j in range(3)), 1, 1)
    check_rewards([0.0, 1.0, 0.5, 1.0, 0.0, 1.0], batch, step=0, copies=2)
    # env 1 (task 0) is masked out: the first that counts is env 3, the second copy of task 1
    r = [0.0, float("nan"), 0.5, float("inf"), 0.0, 1.0]
    check_rewards(r, batch, step=0, copies=2, mask=[1, 0, 1, 0, 1, 1])
    with pytest.raises(NonFiniteRewardError, match=r"task 1 \(task.family=_coins\) returned the reward inf at step 7 of episode 2;"):
        check_rewards(r, batch, step=[9, 9, 9, 7, 9, 9], episode=[0, 0, 0, 2, 0, 0], copies=2, mask=[1, 0, 1, 1, 1, 1])
    with pytest.raises(NonFiniteRewardError, match=r"task 0 \(task.family=_coins\) returned the reward nan at step 4;"):
        check_rewards(r, batch, step=4, copies=2)


@pytest.mark.parametrize("name", ["bandits", "tabular_mdp", "navigation_2d"])
def test_env_options_a_family_cannot_use_are_refused_not_dropped(name):
    fam = get_family(name)(get_family(name).Options())
    batch = EnvBatch((fam.task(0, "test", 0),), 1, 1)
    with pytest.raises(ValueError, match=rf"task.family={name}'s environments take no options, got render_mode='human'"):
        batch.vector_env(render_mode="human")
    batch.vector_env().close()  # without options: built as before
    if name == "navigation_2d":  # its single env takes none either
        with pytest.raises(ValueError, match=r"take no options, got render_mode='human'"):
            fam.make_env(batch[0].params, render_mode="human")
