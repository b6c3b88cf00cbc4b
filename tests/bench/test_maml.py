"""Smoke tests of the MAML benchmark's code path (tiny sizes; nothing here is timed)."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch

from metakit.bench import maml as bench
from metakit.cli.main import main


@pytest.mark.parametrize("setting", ["so1", "fo1"])
def test_every_implementation_gives_the_same_meta_gradient(setting):
    batch = bench.make_batch(2)
    impls = ["metakit", "metakit-cl", "metakit-classic", "loop"] + (["higher"] if bench._have_higher() else [])
    exact = bench.reference_gradient(bench.SETTINGS[setting], batch, hidden=8)
    scale = max(float(g.abs().max()) for g in exact)
    for impl in impls:
        model, fn, _ = bench.build(impl, bench.SETTINGS[setting], hidden=8)
        grads = bench.first_gradient(model, fn, batch)
        err = max(float((a.double() - b).abs().max()) for a, b in zip(grads, exact)) / scale
        assert err < 1e-3, (impl, err)


def test_the_peers_run_the_classic_block_order_with_the_same_weights():
    ours, _, _ = bench.build("metakit", bench.SETTINGS["so1"], hidden=8)
    for impl in ("metakit-classic", "loop"):
        classic, _, _ = bench.build(impl, bench.SETTINGS["so1"], hidden=8)
        kinds = [type(m).__name__ for m in classic.features[:4]]
        assert kinds == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"], impl
        a, b = dict(ours.named_parameters()), dict(classic.named_parameters())
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(ours(x), classic(x))


def test_flops_of_the_issue_workload_per_task():
    """One task of the issue's work (5+75 images, 2nd order, 1 step): about 5.2 GFLOP (167 per 32)."""
    batch = bench.make_batch(1)
    model, fn, _ = bench.build("metakit", bench.SETTINGS["so1"])
    flops = bench.count_flops(model, fn, batch)
    assert 4.5e9 < flops < 6e9


def test_cli_json_record(capsys):
    argv = ["bench", "maml", "--settings", "fo1,so5ck", "--impls", "metakit,loop", "--iters", "2", "--warmup", "0",
            "--meta-batch", "1", "--hidden", "8", "--json", "--no-peaks", "--no-memory"]
    assert main(argv) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["benchmark"] == "maml" and rec["matmul_gflops"] is None and rec["meta_batch"] == 1
    fo1, so5ck = rec["settings"]
    assert set(fo1["impls"]) == {"metakit", "loop"} and set(so5ck["impls"]) == {"metakit"}  # recompute: metakit only
    for s in rec["settings"]:
        assert s["meta_batch"] == 1 and math.isfinite(s["flops"]) and s["flops"] > 0
        for r in s["impls"].values():
            # the reported numbers are those of the timed iterations
            assert len(r["wall"]) == len(r["cpu"]) == s["iters"] == 2 and all(t > 0 for t in r["wall"])
            assert r["median_s"] == statistics.median(r["wall"]) and r["min_s"] == min(r["wall"])
            assert r["gflops_per_s"] == pytest.approx(s["flops"] / r["median_s"] / 1e9)
            # the compared meta-gradients agree: with float64 and with metakit's own float32 gradient
            assert 0 <= r["grad_err_f64_rel"] < 1e-3 and 0 <= r["grad_diff_rel"] < 1e-4
            assert "memory" not in r
    assert fo1["impls"]["metakit"]["grad_diff_rel"] == 0.0  # metakit is the float32 reference
    # the loop's reported differences are those of its gradient on the same weights and batch
    batch = bench.setting_batch(bench.SETTINGS["fo1"], 1)
    exact = bench.reference_gradient(bench.SETTINGS["fo1"], batch, hidden=8)
    ours, loop = (bench.first_gradient(*bench.build(i, bench.SETTINGS["fo1"], hidden=8)[:2], batch) for i in ("metakit", "loop"))
    scale = max(float(g.abs().max()) for g in exact)
    r = fo1["impls"]["loop"]
    assert r["grad_diff_rel"] == pytest.approx(max(float((a - b).abs().max()) for a, b in zip(loop, ours)) / scale, rel=1e-6)
    assert r["grad_err_f64_rel"] == pytest.approx(max(float((a.double() - b).abs().max()) for a, b in zip(loop, exact)) / scale, rel=1e-6)


def test_cli_table_reports_finite_ratios_of_the_medians(capsys):
    argv = ["bench", "maml", "--settings", "fo1", "--impls", "metakit,loop", "--iters", "2", "--warmup", "0",
            "--meta-batch", "1", "--hidden", "8", "--no-peaks", "--no-memory"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.split()[:2] == ["implementation", "s/iter"])
    assert "x vs loop" in header and "err vs f64" in header
    rows = {}
    for line in lines:
        fields = line.split()
        if fields and fields[0] in ("metakit", "loop") and len(fields) >= 9:
            rows[fields[0]] = fields
    assert set(rows) == {"metakit", "loop"}
    seconds = {k: float(v[1]) for k, v in rows.items()}
    ratio = {k: float(v[6]) for k, v in rows.items()}  # after s/iter, CPU s, GFLOP/s, %matmul, %conv
    assert ratio["loop"] == 1.0
    assert math.isfinite(ratio["metakit"]) and ratio["metakit"] > 0
    # the loop's median over metakit's: within what the printed medians' rounding allows
    half = {k: 0.5 * 10.0 ** -len(v[1].partition(".")[2]) for k, v in rows.items()}
    low = (seconds["loop"] - half["loop"]) / (seconds["metakit"] + half["metakit"])
    high = (seconds["loop"] + half["loop"]) / (seconds["metakit"] - half["metakit"])
    assert low - 0.005 <= ratio["metakit"] <= high + 0.005  # the ratio itself printed to 2 decimals
    for fields in rows.values():
        assert 0 <= float(fields[7]) < 1e-3 and 0 <= float(fields[8]) < 1e-4  # err vs f64, vs metakit


def test_recompute_settings_use_their_own_task_shape():
    s = bench.SETTINGS["so10ck-20w5s"]
    batch = bench.setting_batch(s, 32)
    assert batch.num_tasks == 1 and batch.support_x.shape[1] == 100 and batch.ways == 20
    model, _, _ = bench.build("metakit", s, hidden=4)
    assert model.head.out_features == 20


@pytest.mark.slow  # starts a Python process (imports torch)
def test_peak_memory_in_a_fresh_process():
    import argparse

    args = argparse.Namespace(meta_batch=1, hidden=8, tune_allocator=True, threads=1)
    mem = bench.measure_memory("metakit", "fo1", args)
    assert mem["peak_mb"] >= mem["baseline_mb"] > 50  # torch alone is larger than that


def test_peak_rates_are_positive():
    assert bench.matmul_gflops(n=64, reps=1) > 0
    rate, which = bench.conv_peak_gflops(images=2, hidden=4, reps=1)
    assert rate > 0 and which.startswith("conv")


def test_bad_options(capsys):
    assert main(["bench", "maml", "--settings", "so2"]) == 2
    assert "--settings: 'so2' is not known; use a comma list of so1, fo1, so5, so5ck, so10-20w5s, so10ck-20w5s" in capsys.readouterr().err
    assert main(["bench", "maml", "--impls", "l2l"]) == 2
    assert "--impls: 'l2l' is not known" in capsys.readouterr().err
    assert main(["bench", "maml", "--iters", "0"]) == 2
    assert "--iters=0 must be >= 1" in capsys.readouterr().err
