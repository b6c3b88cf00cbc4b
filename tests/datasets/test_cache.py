import pytest
import torch

from metakit.datasets._cache import default_cache_dir, load_cached, resolve_cache_dir, save_cached


def _save(tmp_path):
    path = tmp_path / "c" / "x.safetensors"
    images = torch.arange(4 * 8 * 8, dtype=torch.int64).remainder(256).to(torch.uint8).view(4, 1, 8, 8)
    save_cached(path, {"images": images, "counts": torch.tensor([2, 2])}, {"format": "f1", "key": "abc"})
    return path, images


def test_round_trip_and_no_temp_files(tmp_path):
    path, images = _save(tmp_path)
    assert [p.name for p in path.parent.iterdir()] == ["x.safetensors"]
    tensors, meta = load_cached(path, {"format": "f1", "key": "abc"})
    assert torch.equal(tensors["images"], images) and tensors["counts"].tolist() == [2, 2]
    assert meta["key"] == "abc"


def test_absent_file_is_none(tmp_path):
    assert load_cached(tmp_path / "none.safetensors", {}) is None


def test_flipped_byte_is_detected_and_removed(tmp_path):
    path, _ = _save(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF  # inside the tensor data
    path.write_bytes(bytes(raw))
    with pytest.warns(RuntimeWarning, match=r"cache file .*x\.safetensors is corrupt \(tensor '.*' fails its sha256 check\); rebuilding it"):
        assert load_cached(path, {"format": "f1"}) is None
    assert not path.exists()


def test_truncated_file_is_detected(tmp_path):
    path, _ = _save(tmp_path)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.warns(RuntimeWarning, match=r"is corrupt \(unreadable"):
        assert load_cached(path, {}) is None


def test_unexpected_metadata_is_rejected(tmp_path):
    path, _ = _save(tmp_path)
    with pytest.warns(RuntimeWarning, match=r"metadata 'key' is 'abc', expected 'other'"):
        assert load_cached(path, {"key": "other"}) is None


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("METAKIT_CACHE", str(tmp_path / "mk"))
    assert default_cache_dir() == tmp_path / "mk"
    assert resolve_cache_dir(None) == tmp_path / "mk"
    assert resolve_cache_dir(tmp_path / "y") == tmp_path / "y"
    monkeypatch.delenv("METAKIT_CACHE")
    assert default_cache_dir().parts[-2:] == (".cache", "metakit")


def test_a_cache_dir_that_is_a_file_is_named_with_its_setting(monkeypatch, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"cache_dir='.*file' is a file, not a folder; give a folder as cache_dir \(--cache-dir, data.cache_dir\)"):
        resolve_cache_dir(tmp_path / "file")
    with pytest.raises(ValueError, match=r"cache_dir='.*file/sub' lies inside '.*file', which is a file, not a folder"):
        resolve_cache_dir(tmp_path / "file" / "sub")
    monkeypatch.setenv("METAKIT_CACHE", str(tmp_path / "file"))
    with pytest.raises(ValueError, match=r"METAKIT_CACHE='.*file' is a file, not a folder; set METAKIT_CACHE to a folder"):
        resolve_cache_dir(None)


def test_an_unwritable_cache_dir_is_named(monkeypatch, tmp_path):
    from metakit.datasets._cache import ensure_writable_cache_dir

    ensure_writable_cache_dir(tmp_path / "new" / "omniglot")
    assert (tmp_path / "new" / "omniglot").is_dir()
    monkeypatch.setattr("os.access", lambda *a, **k: False)
    monkeypatch.setenv("METAKIT_CACHE", str(tmp_path / "new"))
    with pytest.raises(ValueError, match=r"METAKIT_CACHE='.*new/omniglot' is not writable \(permission denied\)"):
        ensure_writable_cache_dir(tmp_path / "new" / "omniglot")
