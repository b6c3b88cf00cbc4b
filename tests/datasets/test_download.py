"""The download path, against a local HTTP server on 127.0.0.1 serving the offline copies."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch

from metakit.datasets import Omniglot, download_omniglot
from metakit.datasets.download import download_file


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_both_archives(serve, omniglot_root, tmp_path):
    url = serve(omniglot_root)
    dest = tmp_path / "root"
    paths = download_omniglot(dest, base_url=url, progress=False)
    assert [p.name for p in paths] == ["images_background.zip", "images_evaluation.zip"]
    for p in paths:
        assert p.read_bytes() == (omniglot_root / p.name).read_bytes()
    assert _leftovers(dest) == ["images_background.zip", "images_evaluation.zip"]  # no temporary files
    # already present: not fetched again (the server is gone for this URL)
    assert download_omniglot(dest, base_url="http://127.0.0.1:9/nothing", progress=False) == paths


def test_dataset_download_flag_uses_env_url(serve, omniglot_root, tmp_path, cache_dir, load_omniglot, monkeypatch):
    monkeypatch.setenv("METAKIT_OMNIGLOT_URL", serve(omniglot_root))
    root = tmp_path / "fresh"
    ds = Omniglot(root, "vinyals", "test", download=True, cache_dir=cache_dir, progress=False)
    assert _leftovers(root) == ["images_evaluation.zip"]  # only the archive the split needs
    assert torch.equal(ds.data, load_omniglot("vinyals", "test").data)


def test_truncated_download_is_refused(serve, omniglot_root, tmp_path):
    url = serve(omniglot_root)
    dest = tmp_path / "root"
    with pytest.raises(ValueError, match=r"download of .*/short/images_evaluation\.zip (broke off after|is truncated: received)"):
        download_file(f"{url}/short/images_evaluation.zip", dest / "images_evaluation.zip", progress=False)
    assert _leftovers(dest) == []


def test_wrong_checksum_is_refused(serve, omniglot_root, tmp_path):
    bad = tmp_path / "mirror"
    bad.mkdir()
    # a valid zip with the right layout but other bytes: re-zipped with another compression
    with zipfile.ZipFile(omniglot_root / "images_evaluation.zip") as zin, zipfile.ZipFile(
        bad / "images_evaluation.zip", "w", compression=zipfile.ZIP_STORED
    ) as zout:
        for info in zin.infolist():
            if not info.is_dir():
                zout.writestr(info.filename, zin.read(info))
    url = serve(bad)
    dest = tmp_path / "root"
    with pytest.raises(ValueError, match=r"refusing .*images_evaluation\.zip: its checksum \(md5 [0-9a-f]{32}, sha256 [0-9a-f]{64}, .* bytes\) matches no known images_evaluation\.zip; pass checksum=False"):
        download_omniglot(dest, ["evaluation"], base_url=url, progress=False)
    assert _leftovers(dest) == []
    # the same PNGs re-zipped are accepted from a trusted mirror when the checksum is skipped
    (path,) = download_omniglot(dest, ["evaluation"], base_url=url, checksum=False, progress=False)
    assert path.read_bytes() == (bad / "images_evaluation.zip").read_bytes()


def test_wrong_structure_is_refused_even_without_checksum(serve, tmp_path):
    bad = tmp_path / "mirror"
    bad.mkdir()
    with zipfile.ZipFile(bad / "images_background.zip", "w") as zf:
        zf.writestr("images_background/A/character01/1.png", b"x")
    (bad / "images_evaluation.zip").write_bytes(b"<html>not found</html>")
    url = serve(bad)
    dest = tmp_path / "root"
    with pytest.raises(ValueError, match=r"refusing .*images_background\.zip: archive .* holds 1 alphabets, 1 characters and 1 images; the official images_background\.zip has 30, 964 and 19,280"):
        download_omniglot(dest, ["background"], base_url=url, checksum=False, progress=False)
    with pytest.raises(ValueError, match=r"refusing .*images_evaluation\.zip: .* is not a readable zip archive"):
        download_omniglot(dest, ["evaluation"], base_url=url, checksum=False, progress=False)
    assert _leftovers(dest) == []


def test_http_error_and_bad_argument(serve, tmp_path):
    url = serve(tmp_path)
    with pytest.raises(OSError, match=r"cannot download .*/images_background\.zip: HTTP 404"):
        download_omniglot(tmp_path / "root", ["background"], base_url=url, progress=False)
    assert _leftovers(tmp_path / "root") == []
    with pytest.raises(ValueError, match=r"archives contains 'small1'; use 'background' and/or 'evaluation'"):
        download_omniglot(tmp_path / "root", ["small1"], base_url=url, progress=False)
