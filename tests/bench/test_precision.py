"""The precision benchmark measures what it says: errors against float64, per memory format."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from metakit.bench import precision as bench
from metakit.cli.main import main


def test_the_nchw_float32_meta_gradient_is_close_to_float64_and_channels_last_is_measured_apart():
    row = bench.measure_setting("fomaml-5w5s", None, tasks=1, iters=1, seed=0)
    err = row["rel_error"]
    assert row["data"].startswith("synthetic")
    assert err["nchw"] < 1e-4, err  # float32 rounding only
    # channels_last is measured apart: PyTorch's channels_last BatchNorm is far off float64 here
    # (a bench that ran one format twice would report the NCHW error for both)
    assert err["channels_last"] > 1e-4
    assert all(math.isfinite(s) and s > 0 for s in row["seconds"].values())
    # a well-conditioned setting: a float32-sized change of the weights moves the float64 gradient little
    assert 1e-12 < row["sensitivity"] < 1e-4, row["sensitivity"]


def test_batchnorm_rows_cover_every_batch_size_in_both_formats():
    rows = bench.batchnorm_errors(seed=0)
    assert [r["images"] for r in rows] == list(bench.BN_BATCHES)
    assert all(r["nchw"] < 1e-6 for r in rows), rows


def test_cli_json_record_names_its_command_hardware_and_settings(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv(bench.ROOT_ENV, str(tmp_path))  # no archives there: synthetic tasks
    assert main(["bench", "precision", "--settings", "anil-5w1s", "--tasks", "1", "--iters", "1", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert [r["setting"] for r in record["settings"]] == ["anil-5w1s"]
    assert record["hardware"]["torch"] and record["date"]
    assert record["settings"][0]["rel_error"]["nchw"] < 1e-4


@pytest.mark.parametrize("argv, needle", [
    (["--settings", "maml-7w1s"], "--settings names unknown setting(s) ['maml-7w1s']"),
    (["--tasks", "0"], "--tasks=0 must be >= 1"),
])
def test_bad_arguments_are_named(argv, needle, capsys):
    assert main(["bench", "precision", *argv]) == 2
    assert needle in capsys.readouterr().err


@pytest.mark.parametrize("name", [n for n in bench.SETTINGS if n.endswith("-published")])
def test_published_settings_are_the_shipped_configs(name):
    from metakit.runtime.config import load_config

    algo, options, ways, shots, queries, model = bench.SETTINGS[name]
    method, setting = name.removesuffix("-published").split("-")
    cfg = load_config(Path(__file__).parents[2] / "configs" / f"{method}_omniglot_{setting}.yaml")
    assert (cfg.algorithm.name, cfg.model.name) == (algo, model)
    assert (cfg.train.ways, cfg.train.shots, cfg.train.queries) == (ways, shots, queries)
    shipped = cfg.algorithm.options
    for key, value in options.items():
        assert shipped.get(key, False) == value, (key, shipped.get(key))
    assert shipped.get("first_order", False) == options.get("first_order", False)


def test_a_published_setting_runs_the_stride_2_network():
    row = bench.measure_setting("maml-5w1s-published", None, tasks=1, iters=1, seed=0)
    assert row["model"] == "conv4_strided" and row["options"]["inner_lr"] == 2.0
    assert row["rel_error"]["nchw"] < 1e-4, row["rel_error"]
