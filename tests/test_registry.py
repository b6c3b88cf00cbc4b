"""Name -> class registries (algorithms, task families, dataset sources)."""

import pytest

from metakit.options import ConfigError
from metakit.registry import Registry


def test_register_get_and_list():
    reg: Registry = Registry("widget", "part.widget", required=("size",))

    @reg.register("round")
    class Round:
        size = 3

    @reg.register("_test_square")
    class Square:
        size = 4

    assert Round.name == "round" and reg.get("round") is Round and "round" in reg and "oval" not in reg
    assert reg.names() == ["round"] and reg.names(private=True) == ["_test_square", "round"]
    assert reg.get("_test_square") is Square
    with pytest.raises(ConfigError, match=r"part.widget='rund' is not a known widget \(did you mean 'round'\?\); available: round \(one of your own: list the module that registers it in run.imports\)$"):
        reg.get("rund")
    with pytest.raises(ConfigError, match=r"did you mean '_test_square'\?"):
        reg.get("_test_sqare")
    with pytest.raises(ValueError, match=r"widget name 'round' is already registered by .*Round"):
        reg.register("round")(type("Other", (), {"size": 1}))
    reg.register("round")(Round)  # registering the same class again is harmless
    with pytest.raises(ValueError, match=r"widget Sizeless must set the class attribute 'size'"):
        reg.register("sizeless")(type("Sizeless", (), {}))
    assert "sizeless" not in reg
