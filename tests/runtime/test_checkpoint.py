from __future__ import annotations

import io
import json
import math
import os

import pytest
import torch
from torch import nn

from metakit.runtime import checkpoint as ckpt
from metakit.runtime.checkpoint import CheckpointError, CheckpointManager, load_checkpoint, save_checkpoint


def _state() -> dict:
    lin = nn.Linear(3, 2)
    return {
        "step": 7,
        "name": "x",
        "flag": True,
        "none": None,
        "ratio": 0.1,
        "nan": math.nan,
        "tuple": (1, (2.5, "a")),
        "int_keys": {0: {"exp_avg": torch.ones(2)}, 3: [1, 2]},
        "dunder": {"__tensor__": "not a tensor"},
        "model": lin.state_dict(),
        "scalars": [torch.tensor(3), torch.tensor(2.5, dtype=torch.float64)],
        "dtypes": {
            "u8": torch.arange(5, dtype=torch.uint8),
            "bool": torch.tensor([True, False]),
            "bf16": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
            "empty": torch.zeros(0, 4),
        },
    }


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b and type(a) is type(b)


def test_roundtrip_keeps_structure_types_and_bits(tmp_path):
    state = _state()
    path = save_checkpoint(tmp_path / "a.safetensors", state)
    back = load_checkpoint(path)
    assert _equal(state, back)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_tied_weights_are_stored(tmp_path):
    shared = torch.randn(4)
    back = load_checkpoint(save_checkpoint(tmp_path / "t.safetensors", {"a": shared, "b": shared, "view": shared[:2]}))
    assert torch.equal(back["a"], shared) and torch.equal(back["b"], shared) and torch.equal(back["view"], shared[:2])


def test_optimizer_state_roundtrip_continues_identically(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    x = torch.randn(8, 4)

    def step(m, o, s):
        o.zero_grad()
        m(x).pow(2).mean().backward()
        o.step()
        s.step()

    for _ in range(3):
        step(model, opt, sched)
    path = save_checkpoint(
        tmp_path / "o.safetensors",
        {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict()},
    )
    twin = nn.Linear(4, 3)
    twin_opt = torch.optim.Adam(twin.parameters(), lr=0.01)
    twin_sched = torch.optim.lr_scheduler.StepLR(twin_opt, step_size=2, gamma=0.5)
    back = load_checkpoint(path)
    twin.load_state_dict(back["model"])
    twin_opt.load_state_dict(back["optimizer"])
    twin_sched.load_state_dict(back["scheduler"])
    for _ in range(3):
        step(model, opt, sched)
        step(twin, twin_opt, twin_sched)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)
    assert twin_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_truncated_file_is_reported_by_name(tmp_path):
    path = save_checkpoint(tmp_path / "step-00000010.safetensors", _state())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"checkpoint '.*step-00000010.safetensors' is unusable: "):
        load_checkpoint(path)
    path.write_bytes(data[:5])
    with pytest.raises(CheckpointError, match=r"truncated: 5 bytes"):
        load_checkpoint(path)
    path.write_bytes(data[:100])
    with pytest.raises(CheckpointError, match=r"truncated: the header announces"):
        load_checkpoint(path)


def test_damaged_tensor_bytes_fail_the_checksum(tmp_path):
    path = save_checkpoint(tmp_path / "c.safetensors", {"w": torch.zeros(64)})
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # inside the tensor data
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"checksum mismatch: the tensor data is damaged"):
        load_checkpoint(path)


def test_foreign_files_are_refused_without_unpickling(tmp_path):
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(CheckpointError, match=r"not a metakit checkpoint or a damaged header"):
        load_checkpoint(plain)
    pickled = tmp_path / "pickle.safetensors"
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    pickled.write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match=r"pickle.safetensors' is unusable: not a safetensors file \(it is a zip archive, e\.g\. a torch\.save pickle; metakit never unpickles files\)"):
        load_checkpoint(pickled)
    legacy = tmp_path / "legacy.safetensors"  # the pre-zip pickle protocol of torch.save
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf, _use_new_zipfile_serialization=False)
    legacy.write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match=r"not a safetensors file \(it is a Python pickle; metakit never unpickles files\)"):
        load_checkpoint(legacy)
    text = tmp_path / "notes.safetensors"
    text.write_bytes(b"some text, not tensors")
    with pytest.raises(CheckpointError, match=r"not a safetensors file \(it starts with b'some tex'\)"):
        load_checkpoint(text)
    with pytest.raises(FileNotFoundError, match=r"checkpoint '.*missing.safetensors' does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match=r"is unusable: it is a folder, not a checkpoint file"):
        load_checkpoint(tmp_path)


def test_wrong_format_version(tmp_path, monkeypatch):
    path = tmp_path / "v.safetensors"
    monkeypatch.setattr(ckpt, "FORMAT", "metakit-checkpoint/999")
    save_checkpoint(path, {"a": 1})
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match=r"unknown checkpoint format 'metakit-checkpoint/999'"):
        load_checkpoint(path)


def test_only_plain_values_can_be_stored(tmp_path):
    with pytest.raises(TypeError, match=r"cannot store a Linear at 'model' in a checkpoint"):
        save_checkpoint(tmp_path / "x.safetensors", {"model": nn.Linear(1, 1)})
    with pytest.raises(TypeError, match=r"state must be a dict, got list"):
        save_checkpoint(tmp_path / "x.safetensors", [1])  # type: ignore[arg-type]


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "k.safetensors", {"v": torch.ones(3)})

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"v": torch.zeros(3)})
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["v"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.safetensors"]


def test_manager_keeps_the_last_k_and_the_best(tmp_path):
    mgr = CheckpointManager(tmp_path / "ck", keep_last=2)
    for step in (10, 20, 30, 40):
        mgr.save(step, {"step": step})
    mgr.save_best({"step": 20})
    assert [s for s, _ in mgr.steps()] == [30, 40]
    assert sorted(p.name for p in mgr.folder.iterdir()) == [
        "best.safetensors",
        "step-00000030.safetensors",
        "step-00000040.safetensors",
    ]
    state, path = mgr.load_latest()
    assert state["step"] == 40 and path.name == "step-00000040.safetensors"


def test_manager_falls_back_past_corrupt_checkpoints_and_names_them(tmp_path):
    err = io.StringIO()
    mgr = CheckpointManager(tmp_path, keep_last=3)
    for step in (1, 2, 3):
        mgr.save(step, {"step": step, "w": torch.full((4,), float(step))})
    newest = mgr.step_path(3)
    newest.write_bytes(newest.read_bytes()[:-7])  # truncated
    middle = mgr.step_path(2)
    data = bytearray(middle.read_bytes())
    data[-1] ^= 1
    middle.write_bytes(bytes(data))
    state, path = mgr.load_latest(stream=err)
    assert state["step"] == 1 and path == mgr.step_path(1)
    lines = err.getvalue().splitlines()
    assert len(lines) == 2
    assert "step-00000003.safetensors" in lines[0] and "falling back to the previous checkpoint" in lines[0]
    assert "step-00000002.safetensors" in lines[1] and "checksum mismatch" in lines[1]
    mgr.step_path(1).write_bytes(b"")
    assert mgr.load_latest(stream=io.StringIO()) is None


def test_manager_accept_hook_rejects_by_name(tmp_path):
    err = io.StringIO()
    mgr = CheckpointManager(tmp_path)
    mgr.save(1, {"kind": "step"})
    mgr.save(2, {"kind": "other"})

    def accept(state):
        if state["kind"] != "step":
            raise ValueError("not a step checkpoint")

    state, path = mgr.load_latest(stream=err, accept=accept)
    assert path == mgr.step_path(1)
    assert "step-00000002.safetensors' is unusable: not a step checkpoint" in err.getvalue()


def test_manager_removes_leftover_temporary_files(tmp_path):
    mgr = CheckpointManager(tmp_path)
    leftover = tmp_path / ".step-00000005.safetensors.tmp-123"
    leftover.write_bytes(b"partial")
    mgr.remove_temporary()
    assert not leftover.exists()
    assert mgr.steps() == [] and mgr.load_latest() is None


def test_manager_rejects_bad_keep_last(tmp_path):
    with pytest.raises(ValueError, match=r"keep_last=0 must be an int >= 1"):
        CheckpointManager(tmp_path, keep_last=0)


def test_edited_metadata_fails_the_checksum(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", {"step": 1000, "w": torch.zeros(4)})
    data = path.read_bytes()
    edited = data.replace(b'\\"step\\": 1000', b'\\"step\\": 9000')  # the state JSON inside the header
    assert edited != data and len(edited) == len(data)
    path.write_bytes(edited)
    with pytest.raises(CheckpointError, match=r"checksum mismatch: the tensor data is damaged or the metadata was edited"):
        load_checkpoint(path)


def test_version_1_files_with_a_tensor_only_checksum_still_load(tmp_path):
    from safetensors.torch import save as st_save

    tensors: dict = {}
    skeleton = ckpt._encode({"step": 3, "w": torch.ones(2)}, "", tensors)
    header = {"format": "metakit-checkpoint/1", "sha256": ckpt._digest(tensors), "state": skeleton}
    path = tmp_path / "v1.safetensors"
    path.write_bytes(st_save(tensors, metadata={"metakit": json.dumps(header)}))
    back = load_checkpoint(path)
    assert back["step"] == 3 and torch.equal(back["w"], torch.ones(2))


def test_manager_sets_corrupt_checkpoints_aside_and_never_prunes_a_fresh_one(tmp_path):
    err = io.StringIO()
    mgr = CheckpointManager(tmp_path, keep_last=1)
    mgr.save(20, {"step": 20})
    corrupt = mgr.step_path(20)
    corrupt.write_bytes(corrupt.read_bytes()[:-3])
    assert mgr.load_latest(stream=err, set_aside=True) is None
    assert "step-00000020.safetensors' is unusable: " in err.getvalue()
    assert "renamed it to step-00000020.safetensors.corrupt" in err.getvalue()
    assert mgr.steps() == [] and (tmp_path / "step-00000020.safetensors.corrupt").is_file()
    mgr.save(5, {"step": 5})
    assert [s for s, _ in mgr.steps()] == [5]
    # without setting aside, a newer step file is never counted against the one just written
    other = CheckpointManager(tmp_path / "b", keep_last=1)
    other.save(20, {"step": 20})
    other.save(5, {"step": 5})
    other.save(6, {"step": 6})
    assert [s for s, _ in other.steps()] == [6, 20]
