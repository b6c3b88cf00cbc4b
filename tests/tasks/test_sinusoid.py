import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from metakit.options import ConfigError
from metakit.tasks import EpisodeBatch, FixedSinusoidTasks, SinusoidFamily, SinusoidParams, SinusoidTasks, sinusoid


def _equal(a: EpisodeBatch, b: EpisodeBatch) -> bool:
    return all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("support_x", "support_y", "query_x", "query_y"))


def test_maml_protocol_defaults_and_shapes():
    tasks = SinusoidTasks(shots=10, seed=0)
    assert tasks.queries == 10
    assert tasks.amplitude == (0.1, 5.0) and tasks.phase == (0.0, math.pi) and tasks.x_range == (-5.0, 5.0)
    batch, params = tasks.sample_with_params(4000)
    assert batch.ways is None and batch.num_tasks == 4000
    assert batch.support_x.shape == batch.support_y.shape == (4000, 10, 1)
    assert batch.query_x.shape == batch.query_y.shape == (4000, 10, 1)
    for t in (batch.support_x, batch.support_y, batch.query_x, batch.query_y):
        assert t.dtype == torch.float32 and t.is_contiguous()
    # ranges and (roughly) uniform distributions
    amp, ph, x = params.amplitude, params.phase, torch.cat([batch.support_x, batch.query_x], 1)
    assert 0.1 <= float(amp.min()) and float(amp.max()) <= 5.0
    assert 0.0 <= float(ph.min()) and float(ph.max()) <= math.pi
    assert -5.0 <= float(x.min()) and float(x.max()) <= 5.0
    assert abs(float(amp.mean()) - 2.55) < 0.08 and abs(float(ph.mean()) - math.pi / 2) < 0.05
    assert abs(float(amp.var()) - 4.9**2 / 12) < 0.1
    assert abs(float(x.mean())) < 0.05 and abs(float(x.var()) - 100 / 12) < 0.2
    # y = A sin(x - phase), task by task
    want = amp.view(-1, 1, 1) * torch.sin(batch.support_x - ph.view(-1, 1, 1))
    assert torch.allclose(batch.support_y, want)
    assert torch.allclose(batch.query_y, amp.view(-1, 1, 1) * torch.sin(batch.query_x - ph.view(-1, 1, 1)))
    # support and query points are independent draws
    assert not torch.equal(batch.support_x, batch.query_x)


def test_sinusoid_formula_by_hand():
    assert float(sinusoid(torch.tensor(math.pi / 2 + 0.3), 2.0, 0.3)) == pytest.approx(2.0)
    assert float(sinusoid(torch.tensor(0.0), 1.5, math.pi / 2)) == pytest.approx(-1.5)


@settings(max_examples=40, deadline=None)
@given(
    shots=st.integers(1, 20),
    queries=st.integers(1, 20),
    b=st.integers(1, 6),
    seed=st.integers(0, 2**31),
    lo=st.floats(-3, 3),
    width=st.floats(0.5, 4),
)
def test_properties(shots, queries, b, seed, lo, width):
    tasks = SinusoidTasks(shots, queries, amplitude=(0.5, 2.0), x_range=(lo, lo + width), seed=seed)
    batch, params = tasks.sample_with_params(b)
    assert batch.support_x.shape == (b, shots, 1) and batch.query_x.shape == (b, queries, 1)
    assert len(params) == b
    x = torch.cat([batch.support_x, batch.query_x], 1)
    assert bool((x >= lo).all()) and bool((x <= lo + width + 1e-5).all())
    y = torch.cat([batch.support_y, batch.query_y], 1)
    assert bool((y.abs() <= params.amplitude.view(-1, 1, 1) + 1e-6).all())
    twin = SinusoidTasks(shots, queries, amplitude=(0.5, 2.0), x_range=(lo, lo + width), seed=seed)
    again, p2 = twin.sample_with_params(b)
    assert _equal(batch, again) and torch.equal(params.amplitude, p2.amplitude) and torch.equal(params.phase, p2.phase)


def test_sample_and_sample_with_params_consume_the_generator_alike():
    a, b = SinusoidTasks(5, seed=1), SinusoidTasks(5, seed=1)
    assert _equal(a.sample(3), b.sample_with_params(3)[0])
    assert _equal(a.sample(3), b.sample(3))
    assert not _equal(a.sample(3), SinusoidTasks(5, seed=2).sample(3))


def test_params_evaluate_a_grid_for_plots():
    params = SinusoidParams(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0]))
    grid = torch.linspace(-5, 5, 7)
    curves = params(grid)
    assert curves.shape == (2, 7, 1)
    assert torch.allclose(curves[1, :, 0], 3.0 * torch.sin(grid - 1.0))
    assert torch.allclose(params(grid.view(7, 1)), curves)
    assert torch.equal(params.slice(1, 2).amplitude, torch.tensor([3.0]))


def test_state_dict_resumes_the_same_tasks(tmp_path):
    run = SinusoidTasks(5, 10, seed=4)
    run.sample(8)
    torch.save(run.state_dict(), tmp_path / "s.pt")
    expected = [run.sample(8) for _ in range(3)]
    resumed = SinusoidTasks(5, 10, seed=4)
    resumed.load_state_dict(torch.load(tmp_path / "s.pt"))
    for want in expected:
        assert _equal(resumed.sample(8), want)


def test_load_state_dict_rejects_other_settings():
    state = SinusoidTasks(5).state_dict()
    with pytest.raises(ValueError, match=r"saved with shots=5 but these tasks have shots=10; load it into SinusoidTasks built with the same settings$"):
        SinusoidTasks(10).load_state_dict(state)
    with pytest.raises(ValueError, match=r"saved with amplitude=\(0.1, 5.0\) but these tasks have amplitude=\(1.0, 2"):
        SinusoidTasks(5, amplitude=(1, 2)).load_state_dict(state)
    with pytest.raises(ValueError, match=r"state is missing \['generator'\]"):
        SinusoidTasks(5).load_state_dict({k: v for k, v in state.items() if k != "generator"})
    with pytest.raises(ValueError, match=r"state must be a dict from SinusoidTasks.state_dict\(\)"):
        SinusoidTasks(5).load_state_dict(None)


def test_fixed_tasks_do_not_depend_on_the_batch_size():
    fixed = FixedSinusoidTasks(5, tasks=130, queries=7, seed=3, batch_size=50)
    assert fixed.num_tasks == 130 and len(fixed) == 3 and len(fixed.params) == 130
    whole = EpisodeBatch.concat(list(fixed))
    assert whole.support_x.shape == (130, 5, 1) and whole.query_y.shape == (130, 7, 1)
    for size in (1, 64, 1000):
        again = FixedSinusoidTasks(5, tasks=130, queries=7, seed=3, batch_size=size)
        assert _equal(EpisodeBatch.concat(list(again)), whole)
    assert _equal(EpisodeBatch.concat(list(fixed)), whole)  # re-iterable
    pairs = list(fixed.batches(40, with_params=True))
    assert [b.num_tasks for b, _ in pairs] == [40, 40, 40, 10]
    amp = torch.cat([p.amplitude for _, p in pairs])
    assert torch.equal(amp, fixed.params.amplitude)
    assert torch.allclose(pairs[1][0].query_y, pairs[1][1](pairs[1][0].query_x))
    assert torch.equal(fixed[129].support_y, whole.support_y[129]) and torch.equal(fixed[-1].query_x, whole.query_x[-1])
    with pytest.raises(IndexError, match="task 130 out of range for 130"):
        fixed[130]
    assert not _equal(EpisodeBatch.concat(list(FixedSinusoidTasks(5, tasks=130, queries=7, seed=4))), whole)


def test_tasks_fixed_leaves_the_training_generator_alone():
    a, b = SinusoidTasks(10, seed=0), SinusoidTasks(10, seed=0)
    fixed = a.fixed(20, seed=9, batch_size=8)
    assert isinstance(fixed, FixedSinusoidTasks) and len(fixed) == 3
    assert _equal(a.sample(4), b.sample(4))
    direct = FixedSinusoidTasks(10, tasks=20, seed=9)
    assert _equal(EpisodeBatch.concat(list(fixed)), EpisodeBatch.concat(list(direct)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(shots=0), r"shots=0 must be a positive int \(support points per task\); use shots >= 1"),
        (dict(shots=2.0), r"shots=2.0 must be a positive int .*got float"),
        (dict(queries=-1), r"queries=-1 must be a positive int \(query points per task\)"),
        (
            dict(amplitude=(5.0, 0.1)),
            r"amplitude=\(5.0, 0.1\) must be a \(low, high\) pair of finite numbers with low <= high",
        ),
        (dict(amplitude=1.0), r"amplitude=1.0 must be a \(low, high\) pair"),
        (dict(phase=(0, float("nan"))), r"phase=\(0, nan\) must be a \(low, high\) pair of finite numbers"),
        (dict(x_range=(1.0, 1.0)), r"x_range=\(1.0, 1.0\) must be a \(low, high\) pair of finite .* low < high"),
        (dict(x_range=(0, 1, 2)), r"x_range=\(0, 1, 2\) must be a \(low, high\) pair"),
        (dict(seed=-5), r"seed=-5 must be a non-negative int"),
    ],
)
def test_bad_settings_raise(kwargs, message):
    args = dict(shots=5) | kwargs
    with pytest.raises(ValueError, match=message):
        SinusoidTasks(**args)


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match=r"batch_size=0 must be a positive int \(tasks per batch\)"):
        SinusoidTasks(5).sample(0)
    with pytest.raises(ValueError, match=r"batch_size=-2 must be a positive int"):
        SinusoidTasks(5).sample_with_params(-2)
    with pytest.raises(ValueError, match=r"tasks=0 must be a positive int \(number of evaluation tasks\)"):
        FixedSinusoidTasks(5, tasks=0)
    with pytest.raises(ValueError, match=r"batch_size=0 must be a positive int"):
        FixedSinusoidTasks(5, tasks=3, batch_size=0)
    with pytest.raises(ValueError, match=r"batch_size=0 must be a positive int"):
        next(FixedSinusoidTasks(5, tasks=3).batches(0))


def test_fixed_amplitude_and_phase_are_allowed():
    batch, params = SinusoidTasks(3, amplitude=(2.0, 2.0), phase=(0.5, 0.5)).sample_with_params(4)
    assert torch.equal(params.amplitude, torch.full((4,), 2.0))
    assert torch.allclose(batch.support_y, 2.0 * torch.sin(batch.support_x - 0.5))


def test_repr():
    assert repr(SinusoidTasks(5, seed=1)) == (
        f"SinusoidTasks(shots=5, queries=5, amplitude=(0.1, 5.0), phase=(0.0, {math.pi}), "
        "x_range=(-5.0, 5.0), seed=1)"
    )
    text = repr(FixedSinusoidTasks(5, tasks=3))
    assert text == "FixedSinusoidTasks(shots=5, queries=5, tasks=3, seed=0, batch_size=100)"


# -- the task family -----------------------------------------------------------------------------
def test_family_eval_sets_keep_their_seeds_apart_and_fixed():
    """val and test tasks are drawn with eval.seed + 2**21 and + 2**20 (the seeds every sinusoid
    evaluation has used: changing them would change every reported number)."""
    fam = SinusoidFamily.from_options({})
    for split, offset in (("test", 1 << 20), ("val", 1 << 21), ("train", 0)):
        mine = fam.eval_set(split, None, ways=None, shots=5, queries=7, episodes=10, seed=3, batch_size=4)
        ref = FixedSinusoidTasks(5, tasks=10, queries=7, seed=3 + offset, batch_size=4)
        assert all(_equal(a, b) for a, b in zip(mine, ref)) and len(mine) == len(ref) == 3
    with pytest.raises(ValueError, match=r"ways=5 but sinusoid tasks are regression tasks"):
        fam.eval_set("test", None, ways=5, shots=1, queries=1, episodes=1, seed=0)
    with pytest.raises(ValueError, match=r"split='dev' is not known for task.family=sinusoid"):
        fam.eval_set("dev", None, ways=None, shots=1, queries=1, episodes=1, seed=0)


def test_family_options_shape_the_tasks():
    fam = SinusoidFamily.from_options({"amplitude": [2, 2], "phase": [0, 0], "x_range": [0, 1]})
    assert fam.to_dict() == {"amplitude": [2.0, 2.0], "phase": [0.0, 0.0], "x_range": [0.0, 1.0]}
    batch = fam.train_sampler(None, ways=None, shots=3, queries=2, seed=1).sample(4)
    assert torch.allclose(batch.support_y, 2 * torch.sin(batch.support_x))
    assert float(batch.query_x.min()) >= 0 and float(batch.query_x.max()) <= 1
    with pytest.raises(ConfigError, match=r"task.x_range=\[1.0, 1.0\] must be a \(low, high\) pair of finite numbers with low < high"):
        SinusoidFamily.from_options({"x_range": [1, 1]})
    with pytest.raises(ConfigError, match=r"task.phase=\[0.0\] has the wrong type: expected list of float"):
        SinusoidFamily.from_options({"phase": [0.0]})


def test_family_score_is_the_mse_per_task_by_hand():
    class Zero:
        def predict(self, batch):
            return torch.zeros_like(batch.query_y)

    qy = torch.tensor([[[1.0], [3.0]], [[2.0], [0.0]]])  # squared errors (1, 9) -> 5 ; (4, 0) -> 2
    batch = EpisodeBatch(torch.zeros(2, 1, 1), torch.zeros(2, 1, 1), torch.zeros(2, 2, 1), qy)
    fam = SinusoidFamily.from_options({})
    assert fam.score(Zero(), batch).tolist() == [5.0, 2.0]
    assert (fam.metric, fam.higher_is_better, fam.kind) == ("mse", False, "regression")

    class Wide:
        def predict(self, batch):
            return torch.zeros(2, 2, 3)

    with pytest.raises(ValueError, match=r"Wide.predict returned shape \(2, 2, 3\); expected the shape of query_y \(2, 2, 1\)"):
        fam.score(Wide(), batch)
    assert fam.check_model_output((1,)) is None
    assert "must give 1 output per example, not 3" in fam.check_model_output((3,))
