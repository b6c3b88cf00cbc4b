import math

import pytest
import torch
from torch import nn

from metakit.algorithms import Algorithm, ProtoNet
from metakit.runtime.evaluation import EvalResult, batch_norm_statistics, evaluate, mean_ci95
from metakit.tasks import EpisodeBatch


def test_mean_ci95_hand_computed():
    # values 0.5, 0.75, 1.0: mean 0.75; sample variance ((-.25)^2 + 0 + .25^2) / (3 - 1) = 0.0625,
    # std 0.25; ci95 = 1.96 * 0.25 / sqrt(3) = 0.282901...
    mean, ci = mean_ci95([0.5, 0.75, 1.0])
    assert mean == pytest.approx(0.75)
    assert ci == pytest.approx(0.2829016, rel=1e-6)
    # population std (ddof=0) would give 1.96 * 0.204124 / sqrt(3) = 0.2309878: not what we report
    assert ci != pytest.approx(0.2309878, rel=1e-3)


def test_mean_ci95_two_values_and_constant():
    mean, ci = mean_ci95(torch.tensor([0.0, 1.0]))  # std = sqrt(0.5)
    assert (mean, ci) == pytest.approx((0.5, 1.96 * math.sqrt(0.5) / math.sqrt(2)))
    assert mean_ci95([0.9] * 10) == pytest.approx((0.9, 0.0))


def test_mean_ci95_single_value_has_undefined_interval():
    mean, ci = mean_ci95([0.4])
    assert mean == pytest.approx(0.4) and math.isnan(ci)
    r = EvalResult.from_values("accuracy", [0.4])
    assert r.format() == "40.00 ± n/a %" and r.to_dict()["ci95"] is None


def test_mean_ci95_errors():
    with pytest.raises(ValueError, match="values is empty"):
        mean_ci95([])
    with pytest.raises(ValueError, match=r"values\[1\]=nan is not finite"):
        mean_ci95([0.1, float("nan")])


def test_eval_result_format_and_dict():
    r = EvalResult.from_values("accuracy", [0.5, 0.75, 1.0])
    assert r.format() == "75.00 ± 28.29 %"
    assert r.to_dict() == {
        "metric": "accuracy",
        "accuracy": pytest.approx(0.75),
        "ci95": pytest.approx(0.2829016, rel=1e-6),
        "episodes": 3,
        "higher_is_better": True,
    }
    m = EvalResult.from_values("mse", [0.01, 0.03])
    assert not m.higher_is_better and m.format() == "0.02 ± 0.0196"
    with pytest.raises(ValueError, match=r"metric='acc' is not accuracy or mse; give higher_is_better"):
        EvalResult.from_values("acc", [1.0])


class _Fixed(Algorithm):
    """Predicts class 0 for every query; records the mode and grad state it was called in."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(1, 1)
        self.seen: list[tuple[bool, bool]] = []

    def predict(self, batch):
        self.seen.append((self.training, torch.is_grad_enabled()))
        b, q = batch.query_y.shape
        scores = torch.zeros(b, q, batch.ways)
        scores[..., 0] = 1.0
        return scores


def _batch(query_y: list[list[int]], ways: int = 2) -> EpisodeBatch:
    qy = torch.tensor(query_y)
    b, q = qy.shape
    return EpisodeBatch(torch.zeros(b, ways, 1), torch.arange(ways).repeat(b, 1), torch.zeros(b, q, 1), qy, ways)


def test_evaluate_per_episode_accuracy_over_batches():
    algo = _Fixed()
    algo.layer.train(False)  # mixed modes must be restored exactly
    batches = [_batch([[0, 0, 1, 1], [0, 0, 0, 0]]), _batch([[1, 1, 1, 0]])]
    r = evaluate(algo, batches)
    assert r.metric == "accuracy" and r.episodes == 3
    assert r.per_episode.tolist() == [0.5, 1.0, 0.25]
    assert r.mean == pytest.approx(1.75 / 3)
    assert r.ci95 == pytest.approx(mean_ci95([0.5, 1.0, 0.25])[1])
    assert algo.seen == [(False, False), (False, False)]
    assert algo.training and not algo.layer.training


def test_evaluate_restores_mode_on_error_and_rejects_bad_input():
    algo = _Fixed()
    with pytest.raises(TypeError, match=r"episodes\[1\] is a list; without a family, evaluate takes an iterable of EpisodeBatch"):
        evaluate(algo, [_batch([[0]]), [1, 2]])
    assert algo.training
    with pytest.raises(ValueError, match="episodes is empty"):
        evaluate(algo, [])
    with pytest.raises(TypeError, match="algorithm must be a metakit Algorithm, got Linear"):
        evaluate(nn.Linear(1, 1), [_batch([[0]])])


def test_evaluate_checks_prediction_shape():
    class Bad(_Fixed):
        def predict(self, batch):
            return torch.zeros(batch.num_tasks, 3)

    with pytest.raises(ValueError, match=r"Bad.predict returned shape \(1, 3\); expected scores \[tasks, queries, ways\] = \[1, 2, 2\]"):
        evaluate(Bad(), [_batch([[0, 1]])])


class _Mean(Algorithm):
    """Regression: predicts the mean support target for every query."""

    task_kinds = ("regression",)

    def predict(self, batch):
        return batch.support_y.mean(1, keepdim=True).expand_as(batch.query_y)


def test_evaluate_regression_reports_mse():
    sy = torch.tensor([[[1.0], [3.0]], [[0.0], [0.0]]])  # means 2 and 0
    qy = torch.tensor([[[2.0], [4.0]], [[1.0], [-3.0]]])  # squared errors (0, 4) -> 2 ; (1, 9) -> 5
    batch = EpisodeBatch(torch.zeros(2, 2, 1), sy, torch.zeros(2, 2, 1), qy)
    r = evaluate(_Mean(), [batch])
    assert r.metric == "mse" and not r.higher_is_better
    assert r.per_episode.tolist() == [2.0, 5.0]
    assert r.mean == pytest.approx(3.5) and r.ci95 == pytest.approx(1.96 * math.sqrt(4.5) / math.sqrt(2))

    class Both(_Fixed):
        def predict(self, batch):
            return torch.zeros_like(batch.query_y) if batch.ways is None else super().predict(batch)

    with pytest.raises(ValueError, match=r"episodes\[1\] is scored by accuracy but earlier batches by mse"):
        evaluate(Both(), [batch, _batch([[0]])])


def test_evaluate_protonet_hand_checked():
    # identity encoder, prototypes (0,0) and (10,0): query (1,0) -> class 0, (6,0) -> class 1
    sx = torch.tensor([[[0.0, 0.0], [10.0, 0.0]]])
    qx = torch.tensor([[[1.0, 0.0], [6.0, 0.0]]])
    b1 = EpisodeBatch(sx, torch.tensor([[0, 1]]), qx, torch.tensor([[0, 1]]), 2)
    b2 = EpisodeBatch(sx, torch.tensor([[0, 1]]), qx, torch.tensor([[0, 0]]), 2)
    r = evaluate(ProtoNet(nn.Identity()), [b1, b2], progress=True, desc="test")
    assert r.per_episode.tolist() == [1.0, 0.5]


def test_evaluate_refuses_non_finite_predictions():
    # argmax of NaN scores would pick class 0 and score the model at chance without a word
    class NaNScores(_Fixed):
        def predict(self, batch):
            scores = super().predict(batch)
            scores[-1, 0, 1] = float("nan")
            return scores

    with pytest.raises(
        ValueError,
        match=r"NaNScores.predict returned 1 non-finite value \(of 8\), first in task 1: nan; the model's weights "
        r"are probably NaN or inf. Evaluate an earlier checkpoint",
    ):
        evaluate(NaNScores(), [_batch([[0, 0], [0, 0]])])

    class InfMean(_Mean):
        def predict(self, batch):
            return super().predict(batch) * float("inf")

    batch = EpisodeBatch(torch.zeros(1, 2, 1), torch.ones(1, 2, 1), torch.zeros(1, 2, 1), torch.zeros(1, 2, 1))
    with pytest.raises(ValueError, match=r"InfMean.predict returned 2 non-finite values \(of 2\), first in task 0: inf"):
        evaluate(InfMean(), [batch])


def test_evaluate_uses_the_family_metric_direction_and_display():
    class Offsets:
        """A stand-in family: scores each task by its first query target, lower is better."""

        metric, higher_is_better, percent = "regret", False, False

        def __init__(self):
            self.seen = []

        def score(self, algorithm, batch):
            self.seen.append(batch)
            return batch.query_y[:, 0, 0].double()

    fam = Offsets()
    batches = [EpisodeBatch(torch.zeros(2, 1, 1), torch.zeros(2, 1, 1), torch.zeros(2, 1, 1),
                            torch.tensor([[[1.0]], [[3.0]]])),
               EpisodeBatch(torch.zeros(1, 1, 1), torch.zeros(1, 1, 1), torch.zeros(1, 1, 1), torch.tensor([[[5.0]]]))]
    algo = _Mean()
    algo.train()
    r = evaluate(algo, batches, family=fam)
    assert len(fam.seen) == 2 and algo.training
    assert (r.metric, r.higher_is_better, r.percent, r.episodes) == ("regret", False, False, 3)
    assert r.per_episode.tolist() == [1.0, 3.0, 5.0] and r.mean == pytest.approx(3.0)
    assert r.format() == f"3 ± {1.96 * 2 / math.sqrt(3):.4g}"
    assert r.to_dict() == {"metric": "regret", "regret": 3.0, "ci95": pytest.approx(1.96 * 2 / math.sqrt(3)),
                           "episodes": 3, "higher_is_better": False}


def test_evaluate_reports_the_breakdowns_a_family_returns_over_the_tasks_that_have_them():
    class Parts:
        """A stand-in family with one breakdown that the second task lacks (nan)."""

        metric, higher_is_better, percent = "accuracy", True, True

        def score_details(self, algorithm, batch):
            return torch.tensor([0.5, 1.0], dtype=torch.float64), {"part": torch.tensor([0.2, math.nan], dtype=torch.float64)}

    batch = EpisodeBatch(torch.zeros(2, 1, 1), torch.zeros(2, 1, 1), torch.zeros(2, 1, 1), torch.zeros(2, 1, 1))
    r = evaluate(_Mean(), [batch, batch], family=Parts())
    assert r.episodes == 4 and r.mean == pytest.approx(0.75)
    assert r.details == {"part": (pytest.approx(0.2), pytest.approx(0.0), 2)}
    assert r.to_dict()["part"] == pytest.approx(0.2) and r.to_dict()["part_ci95"] == pytest.approx(0.0)


def test_a_reference_gives_the_regret_with_its_interval():
    import dataclasses

    from metakit.runtime.evaluation import EvalResult

    r = EvalResult.from_values("return", [1.0, 2.0, 6.0], higher_is_better=True)
    assert r.regret is None and "regret" not in r.to_dict()
    r = dataclasses.replace(r, reference=torch.tensor([3.0, 3.0, 6.0], dtype=torch.float64))
    # regrets 2, 1, 0: mean 1, sample std 1 -> 1.96 / sqrt(3)
    mean, ci = r.regret
    assert mean == 1.0 and abs(ci - 1.96 / 3 ** 0.5) < 1e-12
    d = r.to_dict()
    assert d["optimal_return"] == 4.0 and d["regret"] == 1.0 and abs(d["regret_ci95"] - ci) < 1e-15
    assert "regret 1 ± 1.132" in str(r)


def test_the_regret_is_taken_over_the_episodes_the_algorithm_scores():
    """RL² scores the total of ``queries`` episodes, MAML-RL the mean return of one: the family's
    optimum is summed over as many episodes as the evaluated number covers."""
    from types import SimpleNamespace

    class Family:
        metric, higher_is_better, percent = "return", True, False

        def optimal_return(self, task, episodes):
            return 2.0 * episodes  # 2 per episode

        def score(self, algorithm, batch):
            return algorithm.task_returns(batch)

    class Total(Algorithm):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def task_returns(self, batch):
            return torch.full((len(batch.tasks),), 1.5 * batch.queries, dtype=torch.float64)

    class PerEpisode(Total):
        def task_returns(self, batch):
            return torch.full((len(batch.tasks),), 1.5, dtype=torch.float64)

        def scored_episodes(self, batch):
            return 1

    batch = SimpleNamespace(tasks=[SimpleNamespace(index=i) for i in range(3)], queries=4)
    total = evaluate(Total(), [batch], family=Family())
    per_episode = evaluate(PerEpisode(), [batch], family=Family())
    assert total.regret[0] == pytest.approx(4 * 0.5) and total.to_dict()["optimal_return"] == 8.0
    assert per_episode.regret[0] == pytest.approx(0.5) and per_episode.to_dict()["optimal_return"] == 2.0


class _Normalised(Algorithm):
    """Regression stand-in whose prediction is the query input through a BatchNorm layer (no affine)."""

    task_kinds = ("regression",)

    def __init__(self, track_running_stats: bool = True) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(1, affine=False, track_running_stats=track_running_stats).double()
        if track_running_stats:
            self.norm.running_mean.fill_(1.0)
            self.norm.running_var.fill_(4.0)
            self.norm.num_batches_tracked.fill_(7)

    def predict(self, batch):
        return self.norm(batch.query_x.flatten(0, 1)).view_as(batch.query_y)


def _regression_batch(query_x: list[list[float]], query_y: list[list[float]]) -> EpisodeBatch:
    qx = torch.tensor(query_x, dtype=torch.float64).unsqueeze(-1)
    b = qx.shape[0]
    return EpisodeBatch(torch.zeros(b, 1, 1, dtype=torch.float64), torch.zeros(b, 1, 1, dtype=torch.float64), qx,
                        torch.tensor(query_y, dtype=torch.float64).unsqueeze(-1))


def test_batch_norm_episode_normalises_each_task_with_its_own_statistics_and_keeps_the_running_ones():
    qx = [[0.0, 2.0, 4.0], [10.0, 10.0, 13.0]]
    qy = [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
    batch = _regression_batch(qx, qy)
    algo = _Normalised()
    eps = algo.norm.eps

    def mse(pred, target):
        return sum((p - t) ** 2 for p, t in zip(pred, target)) / len(pred)

    running = [[(x - 1.0) / math.sqrt(4.0 + eps) for x in row] for row in qx]
    r = evaluate(algo, [batch])
    assert r.per_episode.tolist() == pytest.approx([mse(p, t) for p, t in zip(running, qy)], rel=1e-12)
    own = []
    for row in qx:  # each task's own mean and biased variance, never the other task's
        m = sum(row) / len(row)
        v = sum((x - m) ** 2 for x in row) / len(row)
        own.append([(x - m) / math.sqrt(v + eps) for x in row])
    r = evaluate(algo, [batch], batch_norm="episode")
    assert r.per_episode.tolist() == pytest.approx([mse(p, t) for p, t in zip(own, qy)], rel=1e-12)
    # the running statistics, their count and the modes are as before
    assert algo.norm.running_mean.item() == 1.0 and algo.norm.running_var.item() == 4.0
    assert algo.norm.num_batches_tracked.item() == 7 and algo.training and algo.norm.training
    # one batch of two tasks or two batches of one: the same values
    split = evaluate(algo, batch.split(1), batch_norm="episode")
    assert split.per_episode.tolist() == r.per_episode.tolist()


def test_batch_norm_errors_name_the_fix():
    batch = _regression_batch([[0.0, 1.0]], [[0.0, 0.0]])
    with pytest.raises(ValueError, match=r"batch_norm='batch'; give one of 'running', 'episode'"):
        evaluate(_Normalised(), [batch], batch_norm="batch")
    for algo in (_Mean(), _Normalised(track_running_stats=False)):
        with pytest.raises(ValueError, match=r"\(metakit eval --batch-norm episode\) was given but the model has no "
                                             "BatchNorm layer with running statistics .* drop it"):
            evaluate(algo, [batch], batch_norm="episode")

    class Family:
        metric, higher_is_better, percent = "return", True, False

        def score(self, algorithm, batch):
            return torch.zeros(2)

    algo = _Normalised()
    with pytest.raises(ValueError, match=r"episodes\[0\] is a tuple, which cannot be split into single tasks"):
        evaluate(algo, [(1, 2)], family=Family(), batch_norm="episode")
    assert algo.norm.running_mean.item() == 1.0 and algo.training  # restored after the error


def test_batch_norm_statistics_names_what_the_model_normalises_with():
    class Mixed(_Normalised):
        def __init__(self) -> None:
            super().__init__()
            self.other = nn.BatchNorm2d(1, track_running_stats=False)

    assert batch_norm_statistics(_Normalised()) == "running"
    assert batch_norm_statistics(_Normalised(track_running_stats=False)) == "batch"
    assert batch_norm_statistics(Mixed()) == "mixed"
    assert batch_norm_statistics(_Mean()) == "none"
