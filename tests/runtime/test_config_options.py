"""Options of registered models and algorithms: signatures, help text, and the meta-device model check."""

import pytest

from metakit.algorithms import Algorithm, register
from metakit.options import ConfigError
from metakit.runtime.config_help import config_help
from metakit.runtime.config_options import algorithm_option_specs, check_model_fits, doc_args, model_option_specs
from metakit.tasks import get_family


@register("_opt_help_algo")
class _Documented(Algorithm):
    """A test algorithm.

    Args:
        model: the backbone.
        rate: step size (measured 1.4x faster than the other one on one machine).
        steps (int): how many
            steps, on two lines.
    """

    option_help = {"rate": "step size of the inner loop"}

    def __init__(self, model, rate: float = 0.1, steps: int = 1) -> None:
        super().__init__()


def test_declared_option_help_wins_over_the_docstring():
    specs = algorithm_option_specs("_opt_help_algo")
    assert specs["rate"].help == "step size of the inner loop"
    assert specs["steps"].help == "how many steps, on two lines."
    assert doc_args(_Documented)["rate"].startswith("step size (measured 1.4x")


def test_no_shipped_option_help_carries_measurements():
    text = config_help()
    for marker in (" ms ", "1.4-1.6x", "per meta-iteration", "measured"):
        assert marker not in text, marker


def test_model_specs_come_from_the_signature():
    specs = model_option_specs("mlp")
    assert list(specs) == ["in_features", "hidden", "out_features"] and specs["out_features"].default == 1


def test_check_model_fits_builds_on_meta_and_names_the_options():
    sinusoid = get_family("sinusoid").from_options({})
    check_model_fits("mlp", {"hidden": [4]}, sinusoid, None)
    with pytest.raises(ConfigError, match=r"model 'mlp' with hidden=\[4\], out_features=0 gives outputs of shape \[2, 0\]"):
        check_model_fits("mlp", {"hidden": [4], "out_features": 0}, sinusoid, None)
    with pytest.raises(ConfigError, match=r"model 'mlp' with hidden=\[4\], out_features=2 gives outputs of shape \[2\] per "
                                          r"example, but a sinusoid task has one target per input"):
        check_model_fits("mlp", {"hidden": [4], "out_features": 2}, sinusoid, None)
    with pytest.raises(ConfigError, match=r"model 'mlp' with its defaults cannot run on the examples of task.family=classification"):
        check_model_fits("mlp", {}, get_family("classification").from_options({"root": "/d"}), None)
