import json

import pytest

from metakit.bench import BENCHMARKS, available_benchmarks, load_benchmark
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


def test_unknown_benchmark_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "nope"])
    assert e.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err
