"""Smoke tests of the sampler benchmark's code path (tiny sizes; nothing here is timed)."""

import argparse
import json
import math
import statistics

import pytest
import torch

from metakit.bench import sampler as bench
from metakit.datasets import ClassIndexedDataset


def test_synthetic_dataset_has_the_requested_shape():
    ds = bench.synthetic_dataset(classes=7, per_class=3, size=5)
    assert ds.num_classes == 7 and len(ds) == 21 and ds.example_shape == (1, 5, 5)
    assert ds.data.dtype == torch.uint8 and ds.counts.tolist() == [3] * 7
    assert torch.equal(ds.data, bench.synthetic_dataset(classes=7, per_class=3, size=5).data)  # seeded


def test_measure_sampler_reports_rates_of_the_requested_setting():
    ds = bench.synthetic_dataset(classes=12, per_class=6, size=4)
    r = bench.measure_sampler(ds, 3, 1, 2, batch=4, seconds=0.03, repeats=3, warmup=0.01)
    assert (r["ways"], r["shots"], r["queries"], r["batch"]) == (3, 1, 2, 4)
    assert len(r["repeats"]) == 3 and all(math.isfinite(x) and x > 0 for x in r["repeats"])
    assert r["episodes_per_s"] == statistics.median(r["repeats"])
    assert (r["episodes_per_s_min"], r["episodes_per_s_max"]) == (min(r["repeats"]), max(r["repeats"]))
    # a batch of 4 episodes per ms_per_batch milliseconds: the same median repeat
    assert r["ms_per_batch"] == pytest.approx(1000 * 4 / r["episodes_per_s"], rel=1e-9)
    assert r["cpu_ms_per_batch"] >= 0
    with pytest.raises(ValueError, match="ways=13 but the dataset 'synthetic' has only 12 classes"):
        bench.measure_sampler(ds, 13, 1, 1, batch=1, seconds=0.01, repeats=1, warmup=0.01)


def test_time_loads_uses_a_fresh_cache_then_the_filled_one(tmp_path):
    calls = []

    def load(cache_dir):
        calls.append((cache_dir, sorted(p.name for p in cache_dir.iterdir())))
        (cache_dir / "decoded.bin").write_bytes(b"x")
        return ClassIndexedDataset.from_tensors(torch.zeros(4, 1), torch.tensor([0, 0, 1, 1]))

    times, ds = bench.time_loads(load, warm_repeats=2)
    assert [c[1] for c in calls] == [[], ["decoded.bin"], ["decoded.bin"]]  # cold first, then warm
    assert len({c[0] for c in calls}) == 1 and not calls[0][0].exists()  # one folder, removed after
    assert times["cold_s"] >= 0 and len(times["warm_s_all"]) == 2 and ds.num_classes == 2


def _args(**kw):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    argv = ["--seconds", "0.02", "--warmup", "0.01", "--repeats", "2", "--batch", "2"]
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}"] + ([] if v is True else [str(v)])
    return parser.parse_args(argv)


def test_run_on_synthetic_data_prints_json(capsys):
    assert bench.run(_args(synthetic=True, setting="5,1,2", json=True)) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["data"]["source"] == "synthetic" and report["data"]["reason"] == "--synthetic was given"
    assert report["data"]["classes"] == 4112 and report["data"]["shape"] == [1, 28, 28]
    assert report["load"] is None
    assert [(r["ways"], r["shots"], r["queries"]) for r in report["results"]] == [(5, 1, 2)]
    assert report["method"] == {"batch": 2, "seconds": 0.02, "repeats": 2, "warmup": 0.01}
    assert report["target_met"] == (report["results"][0]["episodes_per_s"] >= 5000)


def test_run_text_output_says_the_data_is_synthetic(capsys):
    assert bench.run(_args(synthetic=True, setting="2,1,1")) == 0
    out = capsys.readouterr().out
    assert "data: SYNTHETIC uint8 82240 x [1, 28, 28] (4112 classes) because --synthetic was given" in out
    assert "2-way 1-shot 1-query" in out and "episodes/s" in out


def test_missing_explicit_root_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--root '.*' holds neither images_background.zip"):
        bench.run(_args(root=tmp_path, setting="2,1,1"))


def test_bad_options_are_rejected(capsys):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    for argv, message in [
        (["--setting", "5,1"], "--setting '5,1' must be WAYS,SHOTS,QUERIES"),
        (["--seconds", "0"], "'0' must be a positive number of seconds"),
        (["--batch", "-1"], "'-1' must be a positive integer"),
    ]:
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        assert message in capsys.readouterr().err


@pytest.mark.slow
def test_real_omniglot_load_and_sampling(omniglot_root, cache_dir):
    # the loader the benchmark uses, on the real split (decodes once per session cache folder)
    load = bench._omniglot_loader(omniglot_root)
    ds = load(cache_dir)
    assert ds.num_classes == 4112 and ds.data.dtype == torch.uint8
    r = bench.measure_sampler(ds, 20, 5, 15, batch=2, seconds=0.02, repeats=1, warmup=0.01)
    assert r["episodes_per_s"] > 0


def test_default_root_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("METAKIT_OMNIGLOT_ROOT", raising=False)
    assert bench.default_root() == bench.DEFAULT_ROOT
    monkeypatch.setenv("METAKIT_OMNIGLOT_ROOT", "")  # empty counts as unset
    assert bench.default_root() == bench.DEFAULT_ROOT
    monkeypatch.setenv("METAKIT_OMNIGLOT_ROOT", str(tmp_path))
    assert bench.default_root() == tmp_path


def test_run_without_root_looks_in_the_environment_folder(monkeypatch, tmp_path, capsys):
    empty = tmp_path / "no-archives"
    empty.mkdir()
    monkeypatch.chdir(tmp_path)  # no ../shared/data/omniglot from here either
    monkeypatch.setenv("METAKIT_OMNIGLOT_ROOT", str(empty))
    assert bench.run(_args(setting="2,1,1", json=True)) == 0
    data = json.loads(capsys.readouterr().out)["data"]
    assert data["source"] == "synthetic"
    assert data["reason"] == f"no Omniglot archives under {empty} (pass --root DIR or set $METAKIT_OMNIGLOT_ROOT)"


def test_help_names_the_environment_variable():
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    help_text = " ".join(parser.format_help().split())  # argparse wraps lines
    expected = "default: $METAKIT_OMNIGLOT_ROOT if set, else ../shared/data/omniglot relative to the current folder"
    assert expected in help_text
