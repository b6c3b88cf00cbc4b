"""benchmarks/omniglot/curves.py: validation curves of several runs in one PNG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metakit.bench import load_script

HERE = Path(__file__).resolve().parents[2] / "benchmarks" / "omniglot"


def _curves():
    return load_script(HERE / "curves.py", "omniglot_curves")


def test_curves_reads_validation_records_and_writes_a_png(tmp_path):
    curves = _curves()
    for name, accs in (("run_a", [0.5, 0.7, 0.8]), ("run_b", [0.6, 0.9])):
        d = tmp_path / name
        d.mkdir()
        lines = []
        for i, a in enumerate(accs, 1):
            lines.append(json.dumps({"step": 100 * i, "split": "train", "elapsed": 50.0 * i, "loss": 1.0, "accuracy": 0.1}))
            lines.append(json.dumps({"step": 100 * i, "split": "val", "elapsed": 60.0 * i, "metric": "accuracy",
                                     "accuracy": a, "ci95": 0.02, "episodes": 100}))
        (d / "metrics.jsonl").write_text("\n".join(lines) + "\n{\"step\": 4")  # a last line cut by a crash
    rows = curves.read_val(tmp_path / "run_a")
    assert rows == [(100, 60.0, 0.5, 0.02), (200, 120.0, 0.7, 0.02), (300, 180.0, 0.8, 0.02)]
    out = tmp_path / "figs" / "val.png"
    curves.main([str(tmp_path), "run_a", "run_b", "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    empty = tmp_path / "run_c"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text(json.dumps({"step": 1, "split": "train", "loss": 1.0}) + "\n")
    with pytest.raises(ValueError, match="no validation record"):
        curves.read_val(empty)
    with pytest.raises(FileNotFoundError, match="run folder"):
        curves.read_val(tmp_path / "missing")


_LIST = """\
columns: [5w1s]
evaluation: {split: test, queries: 15, episodes: 1000, seed: 0}
runs:
  run_a: {family: f, method: A, config: c.yaml, overrides: [train.steps=100], evaluate: [{ways: 5, shots: 1}]}
  run_b: {family: f, method: B, config: c.yaml, overrides: [train.steps=100], evaluate: [{ways: 5, shots: 1}]}
  run_c: {family: f, method: C, config: c.yaml, overrides: [train.steps=100], evaluate: [{ways: 5, shots: 1}]}
"""


def _record(run: str, steps: int, curves: dict | None) -> dict:
    r = {"run": run, "setting": "5w1s", "status": "recorded", "steps": steps}
    return {**r, "curves": curves} if curves is not None else r


def test_the_record_mode_draws_each_runs_newest_curves_without_run_folders(tmp_path, saved_figures):
    curves = _curves()
    run_list = tmp_path / "runs.yaml"
    run_list.write_text(_LIST)
    a50 = {"val": [[25, 1.0, 0.5, 0.02], [50, 2.0, 0.6, 0.02]], "val_episodes": 100, "train": [[10, 0.5, 2.0], [50, 2.0, 0.1]]}
    a100 = {**a50, "val": a50["val"] + [[100, 4.0, 0.7, 0.02]]}
    b = {"val": [], "val_episodes": None, "train": [[100, 3.0, 0.5]]}
    record = tmp_path / "results.json"
    record.write_text(json.dumps({"format": 2, "records": [_record("run_a", 50, a50), _record("run_a", 100, a100),
                                                           _record("run_b", 100, b), _record("run_c", 100, None)]}))
    runs = curves.recorded_curves(record, run_list)
    assert runs == {"run_a": {"steps": 100, "budget": 100, "curves": a100}, "run_b": {"steps": 100, "budget": 100, "curves": b}}
    out = tmp_path / "conv.png"
    curves.plot_record(runs, out, columns=2)
    fig, path = saved_figures[-1]
    assert path == out and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert titles == ["run_a: 100 steps", "run_b: 100 steps"]
    panel_a = next(ax for ax in fig.axes if ax.get_title() == "run_a: 100 steps")
    assert [list(line.get_xdata()) for line in panel_a.get_lines()][0] == [25, 50, 100]
    assert [list(line.get_ydata()) for line in panel_a.get_lines()][0] == pytest.approx([50.0, 60.0, 70.0])
    with pytest.raises(ValueError, match="--add-curves"):
        curves.plot_record({}, out)
    with pytest.raises(SystemExit):
        curves.main([str(tmp_path), "run_a", "--record", str(record), "--out", str(out)])


def test_the_compare_mode_draws_named_runs_from_the_record(tmp_path, saved_figures, capsys, monkeypatch):
    curves = _curves()
    run_list = tmp_path / "runs.yaml"
    run_list.write_text(_LIST)
    a = {"val": [[25, 60.0, 0.5, 0.02], [50, 120.0, 0.6, 0.03]], "val_episodes": 100, "train": []}
    b = {"val": [[40, 30.0, 0.7, 0.01]], "val_episodes": 100, "train": []}
    empty = {"val": [], "val_episodes": None, "train": [[100, 3.0, 0.5]]}
    record = tmp_path / "results.json"
    record.write_text(json.dumps({"format": 2, "records": [_record("run_a", 50, a), _record("run_b", 40, b),
                                                           _record("run_c", 100, empty)]}))
    assert curves.compared_curves(record, ["run_b", "run_a"], run_list) == {
        "run_b": [(40, 30.0, 0.7, 0.01)], "run_a": [(25, 60.0, 0.5, 0.02), (50, 120.0, 0.6, 0.03)]}
    with pytest.raises(ValueError, match="run 'run_c': no record of it .* holds validation curves"):
        curves.compared_curves(record, ["run_a", "run_c"], run_list)
    out = tmp_path / "cmp.png"
    curves.plot(curves.compared_curves(record, ["run_a", "run_b"], run_list), out, "t")
    fig, path = saved_figures[-1]
    step_ax, time_ax = fig.axes[:2]
    assert [list(line.get_xdata()) for line in step_ax.get_lines()] == [[25, 50], [40]]
    assert [list(line.get_xdata()) for line in time_ax.get_lines()] == [[1.0, 2.0], [0.5]]  # minutes
    assert list(step_ax.get_lines()[0].get_ydata()) == pytest.approx([50.0, 60.0])
    with pytest.raises(SystemExit):  # --compare needs the record
        curves.main(["--compare", "run_a", "--out", str(out)])
    assert "give --record" in capsys.readouterr().err
    monkeypatch.setattr(curves.reproduce, "RUN_LIST", run_list)
    curves.main(["--record", str(record), "--compare", "run_a", "run_b", "--out", str(tmp_path / "main.png")])
    fig, path = saved_figures[-1]
    assert path == tmp_path / "main.png" and [list(line.get_xdata()) for line in fig.axes[0].get_lines()] == [[25, 50], [40]]
    with pytest.raises(SystemExit):
        curves.main(["--record", str(record), "--compare", "run_c", "--out", str(out)])
    assert "holds validation curves" in capsys.readouterr().err


def test_reach_prints_each_runs_first_validation_at_an_accuracy(tmp_path, saved_figures, capsys, monkeypatch):
    curves = _curves()
    run_list = tmp_path / "runs.yaml"
    run_list.write_text(_LIST)
    # run_a passes 55% at its second validation and never 65%; run_b dips below 55% after passing it once
    a = {"val": [[25, 60.0, 0.5, 0.02], [50, 120.0, 0.6, 0.03], [75, 180.0, 0.58, 0.03]], "val_episodes": 100, "train": []}
    b = {"val": [[40, 30.0, 0.58, 0.01], [80, 90.0, 0.52, 0.01], [120, 150.0, 0.7, 0.01]], "val_episodes": 100, "train": []}
    record = tmp_path / "results.json"
    record.write_text(json.dumps({"format": 2, "records": [_record("run_a", 75, a), _record("run_b", 120, b)]}))
    rows = curves.compared_curves(record, ["run_a", "run_b"], run_list)
    assert curves.first_reaching(rows["run_a"], 55) == (50, 2.0)
    assert curves.first_reaching(rows["run_b"], 58) == (40, 0.5)  # exactly 58% counts (100 * 0.58 < 58 in floats)
    assert curves.first_reaching(rows["run_a"], 65) is None
    monkeypatch.setattr(curves.reproduce, "RUN_LIST", run_list)
    curves.main(["--record", str(record), "--compare", "run_a", "run_b", "--out", str(tmp_path / "r.png"),
                 "--reach", "55", "65"])
    out = capsys.readouterr().out.splitlines()
    assert out[1:] == [
        "| run | best validation (step) | first at >= 55% | first at >= 65% |",
        "| --- | --- | --- | --- |",
        "| `run_a` | 60.0 ± 3.0 (step 50) | step 50, 2 min | not reached |",
        "| `run_b` | 70.0 ± 1.0 (step 120) | step 40, 0 min | step 120, 2 min |"]
    n = len(saved_figures)
    curves.main(["--record", str(record), "--compare", "run_a", "run_b", "--reach", "55", "65"])  # the table alone
    assert capsys.readouterr().out.splitlines() == out[1:] and len(saved_figures) == n
    for argv, message in ((["--reach", "50", "--out", "r.png"], "--reach reads the runs of --compare"),
                          (["--compare", "run_a", "--reach", "0"], "--reach 0: give accuracies in percent"),
                          (["--compare", "run_a"], "give --out PNG")):
        with pytest.raises(SystemExit):
            curves.main(["--record", str(record), *argv])
        assert message in capsys.readouterr().err
