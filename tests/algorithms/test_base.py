import pytest
import torch
from torch import nn

from metakit.algorithms import Algorithm, accuracy, get_algorithm, register
from metakit.tasks import EpisodeBatch


class _Linear(Algorithm):
    """Scores queries with a fixed linear map; the learner ignores the support."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def adapt(self, support_x, support_y, ways=None):
        model = self.model

        class L:
            def predict(self, qx):
                return model(qx)

        return L()


def test_default_predict_loops_adapt_over_tasks():
    algo = _Linear(nn.Linear(2, 3))
    batch = EpisodeBatch(
        torch.randn(4, 3, 2), torch.zeros(4, 3, dtype=torch.long), torch.randn(4, 5, 2), torch.zeros(4, 5, dtype=torch.long), 3
    )
    out = algo.predict(batch)
    assert out.shape == (4, 5, 3)
    assert torch.allclose(out, algo.model(batch.query_x))


def test_accuracy():
    scores = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]]])
    assert accuracy(scores, torch.tensor([[0, 1, 1]])).tolist() == pytest.approx([2 / 3])


def test_registry_rejects_duplicates_and_suggests_names():
    register("_test_linear")(_Linear)
    assert get_algorithm("_test_linear") is _Linear
    with pytest.raises(ValueError, match="already registered"):

        @register("_test_linear")
        class Other(Algorithm):
            pass

    with pytest.raises(ValueError, match=r"algorithm.name='_test_linaer' is not a known algorithm \(did you mean '_test_linear'\?\)"):
        get_algorithm("_test_linaer")


def test_evaluation_options_are_set_by_default_and_others_refused():
    class WithOption(Algorithm):
        evaluation_options = ("eval_steps",)

        def __init__(self):
            super().__init__()
            self.eval_steps = 1

    a = WithOption()
    a.set_evaluation_options(eval_steps=5)
    assert a.eval_steps == 5
    with pytest.raises(ValueError, match=r"steps is not an evaluation-time option of WithOption \(.*: eval_steps\)"):
        a.set_evaluation_options(steps=2)
    with pytest.raises(ValueError, match=r"eval_steps is not an evaluation-time option of Algorithm \(.*: none\)"):
        Algorithm().set_evaluation_options(eval_steps=2)
