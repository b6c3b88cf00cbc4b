import json
import sys

import pytest

from metakit.bench import BENCHMARKS, available_benchmarks, load_benchmark, load_script
from metakit.cli.main import main


def test_bench_lists_the_registered_benchmarks(capsys):
    assert main(["bench"]) == 2
    out = capsys.readouterr().out
    flat = " ".join(out.split())
    for name in BENCHMARKS:
        assert name in out and " ".join(load_benchmark(name).DESCRIPTION.split()) in flat


def test_bench_sampler_dispatches_to_the_module(capsys):
    argv = ["bench", "sampler", "--synthetic", "--setting", "2,1,1", "--batch", "2"]
    assert main(argv + ["--seconds", "0.02", "--warmup", "0.01", "--repeats", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["benchmark"] == "sampler"


def test_registry_errors():
    assert available_benchmarks() == list(BENCHMARKS) and "sampler" in BENCHMARKS
    with pytest.raises(ValueError, match=r"benchmark 'samplr' is not known; did you mean 'sampler'\? Available: "):
        load_benchmark("samplr")


def test_load_script_runs_a_file_as_a_registered_module(tmp_path, monkeypatch):
    script = tmp_path / "tool.py"
    script.write_text(
        "import dataclasses, sys\n"
        "@dataclasses.dataclass\n"  # a dataclass looks its module up in sys.modules while it is built
        "class Row:\n    x: int = 1\n"
        "NAME = __name__\n"
    )
    monkeypatch.delitem(sys.modules, "tool_under_test", raising=False)
    module = load_script(script, "tool_under_test")
    assert module.NAME == "tool_under_test" and module.Row().x == 1 and sys.modules["tool_under_test"] is module
    assert load_script(script, "tool_under_test") is not module  # each call executes the file afresh
    monkeypatch.delitem(sys.modules, "tool_under_test")
    with pytest.raises(FileNotFoundError, match=r"load_script: '.*missing.py' is not a file; give the path of a benchmark script"):
        load_script(tmp_path / "missing.py", "missing")


def test_unknown_benchmark_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "nope"])
    assert e.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err
