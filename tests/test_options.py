"""Declared options: type, range and choice checks with messages that name key, value and fix."""

from dataclasses import dataclass
from typing import ClassVar

import pytest

from metakit.options import ConfigError, Options, check_value, option, option_rows, suggest


@dataclass(frozen=True)
class Demo(Options):
    section: ClassVar[str] = "demo"

    size: int = option(3, "how many", ge=1, lt=10)
    rate: float = option(0.5, "a rate", gt=0)
    mode: str = option("fast", "how", choices=("fast", "slow"))
    pair: tuple[float, float] = option((0.0, 1.0), "a pair")
    name: str | None = option(None, "maybe a name")

    def _resolve(self) -> None:
        if self.mode == "slow" and self.size > 5:
            raise ConfigError(f"demo.size={self.size} is too large for demo.mode=slow; lower it to 5")


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"size": 0}, r"demo.size=0 is out of range: it must be >= 1"),
        ({"size": 10}, r"demo.size=10 is out of range: it must be < 10"),
        ({"size": 2.0}, r"demo.size=2.0 has the wrong type: expected int, got float"),
        ({"size": True}, r"demo.size=True has the wrong type: expected int, got bool"),
        ({"rate": "quick"}, r"demo.rate='quick' has the wrong type: expected float, got str \(quote nothing"),
        ({"rate": float("inf")}, r"demo.rate=inf must be finite"),
        ({"mode": "fats"}, r"demo.mode='fats' is not a valid choice \(did you mean 'fast'\?\); use one of: fast, slow"),
        ({"pair": [1, 2, 3]}, r"demo.pair=\[1, 2, 3\] has the wrong type: expected list of float"),
        ({"mode": "slow", "size": 6}, r"demo.size=6 is too large for demo.mode=slow"),
        ({"sise": 2}, r"unknown config key 'demo.sise' \(did you mean 'demo.size'\?\); keys of demo: size, rate, mode, pair, name"),
    ],
)
def test_bad_values_name_key_value_and_fix(raw, message):
    with pytest.raises(ConfigError, match=message):
        Demo.from_mapping(raw)


def test_values_are_normalised_and_documented():
    d = Demo.from_mapping({"rate": "1e-3", "size": 4, "pair": [1, 2]})
    assert d.rate == pytest.approx(1e-3) and d.pair == [1.0, 2.0] and d.to_dict()["pair"] == [1.0, 2.0]
    assert Demo.keys() == ["size", "rate", "mode", "pair", "name"]
    rows = {r[0]: r for r in option_rows(Demo)}
    assert rows["size"][1:] == ("int, >= 1, < 10", 3, "how many")
    assert rows["mode"][1] == "str, {fast, slow}" and rows["name"][1] == "str or null"


def test_unknown_key_names_its_owner_and_suggests_across_sections():
    with pytest.raises(ConfigError, match=r"unknown config key 'demo.steps' for the demo thing \(did you mean 'train.steps'\?\)"):
        Demo.from_mapping({"steps": 1}, ["train.steps"], owner="the demo thing")
    assert suggest("lr", ["optim.lr", "train.steps"]) == " (did you mean 'optim.lr'?)"
    assert suggest("zzz", ["optim.lr"]) == ""
    assert check_value("k", [1, 2], list[int]) == [1, 2]
