"""The task-family registry, and a new family added as one class: configured, trained and
evaluated by ``metakit eval`` with its own metric, with no change anywhere else."""

import json
import math
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from metakit.cli.main import main
from metakit.options import ConfigError, Options, option
from metakit.runtime.config import Config
from metakit.runtime.trainer import train
from metakit.tasks import EpisodeBatch, TaskFamily, available_families, get_family, register_family
from metakit.tasks.family import checked_predictions


@dataclass(frozen=True)
class LineOptions(Options):
    section: ClassVar[str] = "task"

    slope: float = option(2.0, "slope of every line", gt=0)


@register_family("_lines")
class Lines(TaskFamily):
    """Regression of y = slope * x + b with b ~ U[-1, 1], scored by the mean absolute error."""

    kind = "regression"
    metric = "mae"
    higher_is_better = False
    Options = LineOptions

    def example_shape(self):
        return (1,)

    def _tasks(self, n, shots, queries, seed):
        g = torch.Generator().manual_seed(seed)
        b = torch.rand(n, 1, 1, generator=g) * 2 - 1
        x = torch.rand(n, shots + queries, 1, generator=g) * 2 - 1
        y = self.options.slope * x + b
        return EpisodeBatch(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:], None)

    def train_sampler(self, data, *, ways, shots, queries, seed):
        family = self

        class Sampler:
            count = 0

            def sample(self, n):
                self.count += 1
                return family._tasks(n, shots, queries, seed * 1000 + self.count)

            def state_dict(self):
                return {"count": self.count}

            def load_state_dict(self, state):
                self.count = state["count"]

        return Sampler()

    def eval_set(self, split, data, *, ways, shots, queries, episodes, seed, batch_size=50):
        return [self._tasks(episodes, shots, queries, seed + 7)]

    def score(self, algorithm, batch):
        out = checked_predictions(algorithm, batch)
        return (out - batch.query_y).abs().to(torch.float64).mean((1, 2))


def test_get_family_suggests_and_lists_the_public_ones():
    assert get_family("sinusoid").kind == "regression" and get_family("classification").metric == "accuracy"
    assert "_lines" not in available_families() and "_lines" in available_families(private=True)
    with pytest.raises(ConfigError, match=r"task.family='clasification' is not a known task family \(did you mean "
                                          r"'classification'\?\); available: bandits, classification, half_cheetah_direction, "
                                          r"half_cheetah_velocity, navigation_2d, sequence, sinusoid, tabular_mdp"):
        get_family("clasification")


def test_register_family_refuses_a_taken_name_and_a_family_without_kind():
    with pytest.raises(ValueError, match=r"task family name 'sinusoid' is already registered by SinusoidFamily"):
        register_family("sinusoid")(type("Other", (TaskFamily,), {"kind": "regression", "metric": "mse"}))
    with pytest.raises(ValueError, match=r"must set the class attribute 'kind'"):
        register_family("_kindless")(type("Kindless", (TaskFamily,), {"metric": "x"}))
    with pytest.raises(ValueError, match=r"must set the class attribute 'metric'"):
        register_family("_metricless")(type("Metricless", (TaskFamily,), {"kind": "regression"}))
    assert "_kindless" not in available_families(private=True)


def test_checked_predictions_refuses_non_finite_outputs():
    class NaN:
        def predict(self, batch):
            out = torch.zeros(2, 3)
            out[1, 2] = math.nan
            return out

    with pytest.raises(ValueError, match=r"NaN.predict returned 1 non-finite value \(of 6\), first in task 1: nan"):
        checked_predictions(NaN(), None)


def _lines_config(**sections) -> dict:
    raw = {
        "task": {"family": "_lines", "slope": 3.0},
        "train": {"shots": 4, "queries": 4, "meta_batch": 2, "steps": 2},
        "eval": {"val_episodes": 3, "val_every": 1, "test_episodes": 5},
        "model": {"name": "mlp", "hidden": [8]},
        "algorithm": {"name": "maml", "inner_lr": 0.01},
        "run": {"checkpoint_every": 1, "log_every": 1, "progress": False},
    }
    raw.update(sections)
    return raw


def test_a_new_family_is_configured_by_its_declared_options():
    cfg = Config.from_dict(_lines_config())
    assert cfg.task.to_dict() == {"family": "_lines", "slope": 3.0}
    assert isinstance(cfg.family, Lines) and cfg.family.options.slope == 3.0
    with pytest.raises(ConfigError, match=r"task.slope=-1.0 is out of range: it must be > 0"):
        Config.from_dict(_lines_config(task={"family": "_lines", "slope": -1}))
    with pytest.raises(ConfigError, match=r"unknown config key 'task.slop' for task.family=_lines \(did you mean 'task.slope'\?\)"):
        Config.from_dict(_lines_config(task={"family": "_lines", "slop": 1}))
    with pytest.raises(ConfigError, match=r"algorithm.name=protonet solves classification tasks, but task.family=_lines "
                                          r"gives regression tasks; choose an algorithm that solves them \(anil, maml, "
                                          r"metasgd, reptile\)"):
        Config.from_dict(_lines_config(algorithm={"name": "protonet"}))


def test_a_new_family_trains_and_metakit_eval_reports_its_metric(tmp_path, capsys):
    run_dir = tmp_path / "run"
    result = train(Config.from_dict(_lines_config()), run_dir)
    assert result.best is not None and result.best["metric"] == "mae"
    assert main(["eval", str(run_dir), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["metric"] == "mae" and record["higher_is_better"] is False and record["task"] == "_lines"
    assert record["episodes"] == 5 and record["ci95"] > 0
    # the number is the family's score of the saved model on its fixed evaluation set
    from metakit.runtime.run import load_run

    loaded = load_run(run_dir)
    batch = loaded.config.family.eval_set("test", None, ways=None, shots=4, queries=4, episodes=5, seed=0)[0]
    with torch.no_grad():
        expected = (loaded.algorithm.predict(batch) - batch.query_y).abs().mean().item()
    assert record["mae"] == pytest.approx(expected, rel=1e-5)
    assert main(["eval", str(run_dir)]) == 0
    text = capsys.readouterr().out
    assert "mae " in text and "lower is better" in text and f"{expected:.4g}" in text
