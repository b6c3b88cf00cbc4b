"""What "verified" means for Omniglot's content: per-image pixel digests against the shipped manifest."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from metakit.datasets import omniglot as omniglot_module
from metakit.datasets._archive import ArchiveSource
from metakit.datasets._manifest import check_against_manifest, pixel_digest
from metakit.datasets.omniglot import ARCHIVES, _scan, locate_archive, omniglot_manifest


def _png(array: np.ndarray, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", **save)
    return buf.getvalue()


def test_the_digest_depends_on_the_pixels_not_on_the_encoding():
    rng = np.random.default_rng(0)
    bits = rng.random((105, 105)) > 0.8
    gray = np.where(bits, 0, 255).astype(np.uint8)
    one_bit = _png(gray.astype(bool))                      # mode "1", as Omniglot's PNGs
    eight_bit = _png(gray, compress_level=0)               # mode "L", stored uncompressed
    assert one_bit != eight_bit and pixel_digest(one_bit) == pixel_digest(eight_bit)
    changed = gray.copy()
    changed[50, 50] = 255 - changed[50, 50]
    assert pixel_digest(_png(changed)) != pixel_digest(eight_bit)
    assert pixel_digest(_png(gray.T.copy())) != pixel_digest(eight_bit)
    assert len(pixel_digest(one_bit)) == 16


def test_check_against_manifest_names_missing_extra_and_changed_files():
    a, b = _png(np.zeros((4, 4), np.uint8)), _png(np.full((4, 4), 255, np.uint8))
    files = {"top/x/1.png": a, "top/x/2.png": b}
    expected = {k: pixel_digest(v) for k, v in files.items()}
    assert check_against_manifest(list(files), files.__getitem__, expected, "arch.zip") == 2
    with pytest.raises(ValueError, match=r"arch\.zip is not the official content: 1 official file\(s\) missing \(e\.g\. top/x/2\.png\); 1 file\(s\) not in the official set \(e\.g\. top/x/3\.png\)"):
        renamed = {"top/x/1.png": a, "top/x/3.png": b}
        check_against_manifest(list(renamed), renamed.__getitem__, expected, "arch.zip")
    swapped = {"top/x/1.png": b, "top/x/2.png": a}
    with pytest.raises(ValueError, match=r"arch\.zip: 2 image\(s\) differ from the official ones pixel for pixel \(top/x/1\.png, top/x/2\.png\)"):
        check_against_manifest(list(swapped), swapped.__getitem__, expected, "arch.zip")


@pytest.mark.slow
def test_the_shipped_manifest_is_that_of_the_official_images(omniglot_root):
    """Rebuilt from the offline copy (every PNG the official file): the same 32,460 digests."""
    manifest = omniglot_manifest()
    assert len(manifest) == 32_460
    rebuilt = {}
    for archive in ARCHIVES:
        with ArchiveSource(locate_archive(omniglot_root, archive)) as source:
            for _, members in _scan(source, archive):
                rebuilt.update((m, pixel_digest(source.read(m))) for m in members)
    assert rebuilt == manifest


def test_a_known_archive_digest_stands_for_its_content(omniglot_root, monkeypatch):
    """The shipped archives are known by their sha256: no image is decoded to verify them."""
    monkeypatch.setattr(omniglot_module, "pixel_digest", None)  # would fail if called
    monkeypatch.setattr(omniglot_module, "check_against_manifest", None)
    result = omniglot_module.verify_omniglot_archive(omniglot_root / "images_evaluation.zip")
    assert result["checks"] == ["layout", "crc", "digest"]
