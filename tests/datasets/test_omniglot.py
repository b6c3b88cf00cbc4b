import io
import os
import re
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from metakit.datasets import Omniglot, preprocess_image, verify_omniglot_archive, vinyals_split
from metakit.datasets import omniglot as omniglot_module
from metakit.datasets._archive import safe_extract
from metakit.datasets._cache import load_cached

PREP = {"image_size": 28, "channels": 1, "resample": "lanczos", "invert": True}


# -- counts, names, metadata --------------------------------------------------------------------
@pytest.mark.parametrize(
    "split, alphabets, characters, images",
    [("background", 30, 964, 19_280), ("evaluation", 20, 659, 13_180)],
)
def test_lake_counts(load_omniglot, split, alphabets, characters, images):
    ds = load_omniglot("lake", split)
    assert len(ds.alphabets) == alphabets
    assert ds.num_classes == len(ds.characters) == characters
    assert len(ds) == images
    assert ds.data.shape == (images, 1, 28, 28) and ds.data.dtype == torch.uint8
    assert bool((ds.counts == 20).all())
    assert all(re.fullmatch(r"[^/]+/character\d\d", n) for n in ds.class_names)
    assert ds.class_names == sorted(ds.class_names)
    assert ds.meta["dataset"] == "omniglot" and ds.meta["protocol"] == "lake" and ds.meta["split"] == split
    assert ds.meta["image_size"] == 28 and ds.meta["preprocessing"] == PREP
    assert list(ds.meta["archives"]) == [f"images_{split}.zip"]


@pytest.mark.parametrize(
    "split, alphabets, characters, classes",
    [("train", 33, 1028, 4112), ("val", 5, 172, 688), ("trainval", 38, 1200, 4800), ("test", 13, 423, 1692)],
)
def test_vinyals_counts_and_names(load_omniglot, omniglot_root, split, alphabets, characters, classes):
    ds = load_omniglot("vinyals", split)
    assert len(ds.alphabets) == alphabets
    assert len(ds.characters) == characters
    assert ds.num_classes == classes and len(ds) == classes * 20
    assert bool((ds.counts == 20).all())
    published = (omniglot_root / "splits" / "vinyals" / f"{split}.txt").read_text().splitlines()
    assert ds.class_names == published
    assert ds.meta["protocol"] == "vinyals" and ds.meta["preprocessing"] == PREP
    assert "counter-clockwise" in ds.meta["rotation"]


@pytest.mark.parametrize("split", ["train", "val", "trainval", "test"])
def test_packaged_split_matches_published_list_line_for_line(omniglot_root, split):
    published = (omniglot_root / "splits" / "vinyals" / f"{split}.txt").read_text().splitlines()
    ours = vinyals_split(split)
    assert len(ours) == len(published)
    for i, (a, b) in enumerate(zip(ours, published)):
        assert a == b, f"line {i + 1} of {split}.txt"


# -- pixels -------------------------------------------------------------------------------------
def test_images_are_the_preprocessed_pngs(load_omniglot, omniglot_root):
    ds = load_omniglot("lake", "evaluation")
    with zipfile.ZipFile(omniglot_root / "images_evaluation.zip") as zf:
        for c in [0, 123, ds.num_classes - 1]:
            alphabet, character = ds.class_names[c].split("/")
            prefix = f"images_evaluation/{alphabet}/{character}/"
            members = sorted(n for n in zf.namelist() if n.startswith(prefix) and n.endswith(".png"))
            assert len(members) == 20
            for j in (0, 19):
                assert torch.equal(ds.class_examples(c)[j], preprocess_image(zf.read(members[j]), **PREP))
    x = ds.to_float(ds.data[:200])
    assert float(x.mean()) < 0.2  # mostly background
    assert float(x[..., 0, 0].max()) < 0.05  # corners are background (up to LANCZOS ringing)
    assert float(x.amax(dim=(1, 2, 3)).min()) > 0.9  # every image has bright strokes


def test_rotations_are_counter_clockwise(load_omniglot, omniglot_root):
    test = load_omniglot("vinyals", "test")
    lake = load_omniglot("lake", "evaluation")
    name = "Gurmukhi/character42"
    base = lake.class_examples(lake.class_names.index(name))
    for deg in (0, 90, 180, 270):
        c = test.class_names.index(f"{name}/rot{deg:03d}")
        assert torch.equal(test.class_examples(c), torch.rot90(base, deg // 90, dims=(-2, -1)))
    # torch.rot90 over (H, W) turns the same way as PIL's Image.rotate (counter-clockwise), the
    # rotation of the loader the published lists come from. Checked at full size, no resizing.
    with zipfile.ZipFile(omniglot_root / "images_evaluation.zip") as zf:
        raw = zf.read(next(n for n in zf.namelist() if n.endswith(".png")))
    full = {**PREP, "image_size": 105}
    for deg in (90, 180, 270):
        pil = preprocess_image(Image.open(io.BytesIO(raw)).rotate(deg), **full)
        assert torch.equal(torch.rot90(preprocess_image(raw, **full), deg // 90, dims=(-2, -1)), pil)
    assert not torch.equal(torch.rot90(preprocess_image(raw, **full), 1, dims=(-2, -1)),
                           preprocess_image(Image.open(io.BytesIO(raw)).rotate(-90), **full))


def test_rotating_after_resizing_is_close_to_rotating_first(omniglot_root):
    # We rotate the resized image; rotating the raw image before resizing differs only by
    # Pillow's two-pass rounding (not at all for 180 degrees).
    with zipfile.ZipFile(omniglot_root / "images_background.zip") as zf:
        raws = [zf.read(n) for n in zf.namelist() if n.endswith(".png")][:40]
    for deg in (90, 180, 270):
        diffs = []
        for raw in raws:
            first = preprocess_image(Image.open(io.BytesIO(raw)).rotate(deg), **PREP).float()
            after = torch.rot90(preprocess_image(raw, **PREP), deg // 90, dims=(-2, -1)).float()
            diffs.append((first - after).abs())
        d = torch.stack(diffs)
        assert float(d.mean()) < (1e-9 if deg == 180 else 1.5)


def test_nearest_resampling_keeps_the_scans_binary_and_rotates_exactly(omniglot_root, cache_dir):
    # resample="nearest": the published Prototypical Networks and Reptile loaders' resizing of the
    # 1-bit scans. The images stay binary, and rotating after resizing equals rotating first (the
    # nearest-neighbour grid of 105 -> 28 is symmetric), so the vinyals classes are the published ones.
    near = Omniglot(omniglot_root, "lake", "evaluation", cache_dir=cache_dir, progress=False, resample="nearest")
    assert near.meta["preprocessing"] == {**PREP, "resample": "nearest"}
    assert set(near.data.unique().tolist()) == {0, 255}
    lanczos = Omniglot(omniglot_root, "lake", "evaluation", cache_dir=cache_dir, progress=False)
    assert len(set(lanczos.data[:20].unique().tolist())) > 2
    assert list((cache_dir / "omniglot").glob("evaluation-*-s28-c1-nearest-inv.safetensors"))
    with zipfile.ZipFile(omniglot_root / "images_evaluation.zip") as zf:
        alphabet, character = near.class_names[7].split("/")
        prefix = f"images_evaluation/{alphabet}/{character}/"
        raws = [zf.read(n) for n in sorted(n for n in zf.namelist() if n.startswith(prefix) and n.endswith(".png"))]
    nearest = {**PREP, "resample": "nearest"}
    for j in (0, 19):
        assert torch.equal(near.class_examples(7)[j], preprocess_image(raws[j], **nearest))
    for raw in raws:
        for deg in (90, 180, 270):
            first = preprocess_image(Image.open(io.BytesIO(raw)).rotate(deg), **nearest)
            assert torch.equal(torch.rot90(preprocess_image(raw, **nearest), deg // 90, dims=(-2, -1)), first)


# -- argument errors ----------------------------------------------------------------------------
def test_bad_arguments(omniglot_root, cache_dir):
    with pytest.raises(ValueError, match=r"protocol='snell' is not an Omniglot protocol; use one of 'lake', 'vinyals'"):
        Omniglot(omniglot_root, protocol="snell", cache_dir=cache_dir)
    with pytest.raises(ValueError, match=r"split='train' is not a split of protocol='lake'; use one of 'background', 'evaluation'"):
        Omniglot(omniglot_root, protocol="lake", split="train", cache_dir=cache_dir)
    with pytest.raises(ValueError, match=r"split='background' is not a split of protocol='vinyals'; use one of 'train', 'val', 'trainval', 'test'"):
        Omniglot(omniglot_root, protocol="vinyals", split="background", cache_dir=cache_dir)
    for bad in (0, 7, 106, 28.0, "28", True):
        with pytest.raises(ValueError, match=r"image_size=.* is invalid; give an integer between 8 and 105"):
            Omniglot(omniglot_root, image_size=bad, cache_dir=cache_dir)
    with pytest.raises(ValueError, match=r"resample='area' is not a known filter; use one of \['bicubic', 'bilinear', "):
        Omniglot(omniglot_root, resample="area", cache_dir=cache_dir)
    with pytest.raises(ValueError, match=r"split='x' is not a split"):
        vinyals_split("x")


def test_default_splits(load_omniglot, omniglot_root, cache_dir):
    ds = Omniglot(omniglot_root, protocol="lake", cache_dir=cache_dir, progress=False)
    assert ds.meta["split"] == "background"
    ds = Omniglot(omniglot_root, cache_dir=cache_dir, progress=False)
    assert ds.meta["protocol"] == "vinyals" and ds.meta["split"] == "train"


def test_missing_root_and_archive(tmp_path, cache_dir):
    with pytest.raises(FileNotFoundError, match=r"root=.*nowhere.* is not a folder; point it at the folder holding images_background.zip"):
        Omniglot(tmp_path / "nowhere", cache_dir=cache_dir)
    with pytest.raises(FileNotFoundError, match=r"Omniglot archive not found: .*images_background\.zip \(nor the extracted folder .*images_background/\).*download=True"):
        Omniglot(tmp_path, protocol="lake", split="background", cache_dir=cache_dir)


def test_only_the_needed_archive_is_read(tmp_path, omniglot_root, cache_dir):
    (tmp_path / "images_evaluation.zip").symlink_to(omniglot_root / "images_evaluation.zip")
    ds = Omniglot(tmp_path, "vinyals", "test", cache_dir=cache_dir, progress=False)  # test: evaluation only
    assert ds.num_classes == 1692 and list(ds.meta["archives"]) == ["images_evaluation.zip"]
    with pytest.raises(FileNotFoundError, match=r"images_background\.zip"):
        Omniglot(tmp_path, "vinyals", "val", cache_dir=cache_dir, progress=False)


# -- cache ------------------------------------------------------------------------------------
#: the name ending of the cache entries of the preprocessing ``load_omniglot`` uses (28 px, 1 channel, Lanczos, inverted)
PREP_SUFFIX = "-s28-c1-lanczos-inv.safetensors"


def _entry(cache_dir, ds, archive: str) -> Path:
    """The cache entry of ``archive`` (``"background"``/``"evaluation"``) that ``ds`` was read from:
    the session's cache also holds entries of other image sizes and of other (modified) archives."""
    key = ds.meta["archives"][f"images_{archive}.zip"]
    return cache_dir / "omniglot" / f"{archive}-{key.removeprefix('listing-')[:16]}{PREP_SUFFIX}"


def test_warm_load_uses_the_cache(load_omniglot, omniglot_root, cache_dir, monkeypatch):
    for protocol, split in [("lake", "background"), ("lake", "evaluation"), ("vinyals", "trainval")]:
        reference = load_omniglot(protocol, split)
        entries = sorted((cache_dir / "omniglot").iterdir())

        def no_decoding(*args, **kwargs):
            raise AssertionError("decoded a PNG although the cache holds the archive")

        monkeypatch.setattr(omniglot_module, "_apply", no_decoding)
        ds = Omniglot(omniglot_root, protocol, split, cache_dir=cache_dir, progress=False)
        monkeypatch.undo()
        assert torch.equal(ds.data, reference.data) and ds.class_names == reference.class_names
        assert sorted((cache_dir / "omniglot").iterdir()) == entries  # the warm load wrote nothing
    # one entry per archive, read by every protocol and split
    assert _entry(cache_dir, load_omniglot("lake", "background"), "background").is_file()
    assert _entry(cache_dir, load_omniglot("lake", "evaluation"), "evaluation").is_file()


@pytest.mark.slow  # decodes the evaluation archive again (~2-3 s)
def test_corrupt_cache_is_rebuilt(load_omniglot, omniglot_root, cache_dir, tmp_path):
    reference = load_omniglot("lake", "evaluation")
    src = _entry(cache_dir, reference, "evaluation")
    fresh = tmp_path / "cache"
    (fresh / "omniglot").mkdir(parents=True)
    dst = fresh / "omniglot" / src.name
    raw = bytearray(src.read_bytes())
    raw[len(raw) // 2] ^= 0x5A  # a flipped byte inside the image tensor
    dst.write_bytes(bytes(raw))
    with pytest.warns(RuntimeWarning, match=r"cache file .*evaluation-.*\.safetensors is corrupt \(tensor 'images' fails its sha256 check\); rebuilding it"):
        ds = Omniglot(omniglot_root, "lake", "evaluation", cache_dir=fresh, progress=False)
    assert torch.equal(ds.data, reference.data)
    rebuilt, _ = load_cached(dst, {})
    assert torch.equal(rebuilt["images"].view_as(reference.data), reference.data)


def _swap_target(ds) -> tuple[int, str, str]:
    """An image index of ``ds`` (lake evaluation), its member name and a member of another class."""
    c, other = 5, 100
    a_alpha, a_char = ds.class_names[c].split("/")
    b_alpha, b_char = ds.class_names[other].split("/")
    return c, f"images_evaluation/{a_alpha}/{a_char}/", f"images_evaluation/{b_alpha}/{b_char}/"


def _assert_only_first_image_of_class_changed(ds, reference, c: int, new_png: bytes) -> None:
    first = int(reference.counts[:c].sum())  # classes are stored one after the other, 20 images each
    assert torch.equal(ds.data[first], preprocess_image(new_png, **PREP))
    assert not torch.equal(ds.data[first], reference.data[first])
    assert torch.equal(ds.data[:first], reference.data[:first]) and torch.equal(ds.data[first + 1 :], reference.data[first + 1 :])


@pytest.mark.slow  # decodes the evaluation archive again (~3 s)
def test_a_changed_zip_is_not_served_from_the_cache_of_the_original(load_omniglot, omniglot_root, cache_dir, tmp_path):
    reference = load_omniglot("lake", "evaluation")
    # a cache folder that already holds the decoded original archive
    cache = tmp_path / "cache"
    (cache / "omniglot").mkdir(parents=True)
    original = _entry(cache_dir, reference, "evaluation")
    (cache / "omniglot" / original.name).write_bytes(original.read_bytes())
    # the same archive with the first image of one character replaced by an image of another
    c, prefix, donor_prefix = _swap_target(reference)
    root = tmp_path / "root"
    root.mkdir()
    with zipfile.ZipFile(omniglot_root / "images_evaluation.zip") as zin:
        names = sorted(n for n in zin.namelist() if n.endswith(".png"))
        target = next(n for n in names if n.startswith(prefix))
        donor = zin.read(next(n for n in names if n.startswith(donor_prefix)))
        with zipfile.ZipFile(root / "images_evaluation.zip", "w", zipfile.ZIP_STORED) as zout:
            for info in zin.infolist():
                zout.writestr(info.filename, donor if info.filename == target else zin.read(info))
    ds = Omniglot(root, "lake", "evaluation", cache_dir=cache, progress=False)
    key, old_key = ds.meta["archives"]["images_evaluation.zip"], reference.meta["archives"]["images_evaluation.zip"]
    assert key != old_key
    _assert_only_first_image_of_class_changed(ds, reference, c, donor)
    assert len(list((cache / "omniglot").glob("evaluation-*.safetensors"))) == 2  # the original's entry is kept


@pytest.mark.slow  # decodes the evaluation archive twice (~6 s)
def test_extracted_folder_reads_like_the_zip_and_a_changed_file_is_decoded_again(load_omniglot, omniglot_root, tmp_path):
    reference = load_omniglot("lake", "evaluation")
    safe_extract(omniglot_root / "images_evaluation.zip", tmp_path / "root")
    cache = tmp_path / "cache"
    ds = Omniglot(tmp_path / "root", "lake", "evaluation", cache_dir=cache, progress=False)
    assert torch.equal(ds.data, reference.data) and ds.class_names == reference.class_names
    key = ds.meta["archives"]["images_evaluation.zip"]
    assert key.startswith("listing-")
    # replace one extracted PNG by another character's, keeping its modification time (cp -p)
    c, prefix, donor_prefix = _swap_target(reference)
    target = sorted((tmp_path / "root" / prefix).iterdir())[0]
    donor = sorted((tmp_path / "root" / donor_prefix).iterdir())[0].read_bytes()
    st = target.stat()
    target.write_bytes(donor)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    changed = Omniglot(tmp_path / "root", "lake", "evaluation", cache_dir=cache, progress=False)
    assert changed.meta["archives"]["images_evaluation.zip"] != key
    _assert_only_first_image_of_class_changed(changed, reference, c, donor)


# -- damaged archives ---------------------------------------------------------------------------
def _first_member(zip_path) -> str:
    """The member decoded first: sorted characters, then sorted files."""
    with zipfile.ZipFile(zip_path) as zf:
        return sorted(n for n in zf.namelist() if n.endswith(".png"))[0]


def test_truncated_and_empty_archive(tmp_path, omniglot_root):
    data = (omniglot_root / "images_evaluation.zip").read_bytes()
    (tmp_path / "images_evaluation.zip").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match=r"images_evaluation\.zip is not a readable zip archive \(1,954,642 bytes; .*\): it is truncated or corrupt"):
        Omniglot(tmp_path, "lake", "evaluation", cache_dir=tmp_path / "c", progress=False)
    (tmp_path / "images_evaluation.zip").write_bytes(b"")
    with pytest.raises(ValueError, match=r"images_evaluation\.zip is empty \(0 bytes\)"):
        Omniglot(tmp_path, "lake", "evaluation", cache_dir=tmp_path / "c", progress=False)


def test_corrupt_member_is_named(tmp_path, omniglot_root):
    src = omniglot_root / "images_evaluation.zip"
    first = _first_member(src)
    with zipfile.ZipFile(src) as zf:
        info = zf.getinfo(first)
    data = bytearray(src.read_bytes())
    name_len = int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    for k in range(start + 20, start + 40):
        data[k] ^= 0xFF
    (tmp_path / "images_evaluation.zip").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"images_evaluation\.zip is corrupt: member '{re.escape(first)}'"):
        Omniglot(tmp_path, "lake", "evaluation", cache_dir=tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match=rf"is corrupt: member '{re.escape(first)}' (fails its CRC check|cannot be read)"):
        verify_omniglot_archive(tmp_path / "images_evaluation.zip")


def test_undecodable_png_is_named(tmp_path, omniglot_root):
    src = omniglot_root / "images_evaluation.zip"
    first = _first_member(src)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp_path / "images_evaluation.zip", "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, b"not a png" if info.filename == first else zin.read(info))
    with pytest.raises(ValueError, match=rf"cannot read image {re.escape(first)} in .*images_evaluation\.zip"):
        Omniglot(tmp_path, "lake", "evaluation", cache_dir=tmp_path / "c", progress=False)


def _small_zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name in members:
            zf.writestr(name, b"x")


def test_wrong_structure(tmp_path):
    _small_zip(tmp_path / "images_evaluation.zip", ["images_evaluation/A/character01/1.png", "images_evaluation/A/character01/2.png"])
    with pytest.raises(ValueError, match=r"holds 1 alphabets, 1 characters and 2 images; the official images_evaluation\.zip has 20, 659 and 13,180"):
        Omniglot(tmp_path, "lake", "evaluation", cache_dir=tmp_path / "c", progress=False)
    _small_zip(tmp_path / "images_evaluation.zip", ["images_evaluation/A/1.png"])
    with pytest.raises(ValueError, match=r"has an unexpected member 'images_evaluation/A/1\.png'"):
        verify_omniglot_archive(tmp_path / "images_evaluation.zip")
    with pytest.raises(ValueError, match=r"cannot tell which Omniglot archive .*other\.zip is"):
        verify_omniglot_archive(tmp_path / "other.zip")


def test_zip_slip_archive_is_refused(tmp_path):
    _small_zip(tmp_path / "images_background.zip", ["images_background/A/character01/1.png", "../../evil.png"])
    with pytest.raises(ValueError, match=r"refusing archive .*images_background\.zip: member '\.\./\.\./evil\.png' contains a '\.\.' component"):
        Omniglot(tmp_path, "lake", "background", cache_dir=tmp_path / "c", progress=False)
    assert not (tmp_path.parent / "evil.png").exists()


def test_verify_real_archives(omniglot_root):
    checks = ["layout", "crc", "digest"]
    assert verify_omniglot_archive(omniglot_root / "images_background.zip") == {"alphabets": 30, "characters": 964, "images": 19_280, "checks": checks}
    assert verify_omniglot_archive(omniglot_root / "images_evaluation.zip") == {"alphabets": 20, "characters": 659, "images": 13_180, "checks": checks}


def test_a_bad_cache_dir_is_refused_before_anything_is_decoded(tmp_path, omniglot_root, monkeypatch):
    def no_decoding(*a, **k):
        raise AssertionError("decoded before checking the cache folder")

    monkeypatch.setattr(omniglot_module, "_apply", no_decoding)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"cache_dir='.*file' is a file, not a folder"):
        Omniglot(omniglot_root, "lake", "evaluation", cache_dir=tmp_path / "file", progress=False)
    monkeypatch.setenv("METAKIT_CACHE", str(tmp_path / "file"))
    with pytest.raises(ValueError, match=r"METAKIT_CACHE='.*file' is a file, not a folder"):
        Omniglot(omniglot_root, "lake", "evaluation", progress=False)
    monkeypatch.delenv("METAKIT_CACHE")
    monkeypatch.setattr("os.access", lambda *a, **k: False)  # an empty cache folder that cannot be written
    with pytest.raises(ValueError, match=r"cache_dir='.*empty/omniglot' is not writable"):
        Omniglot(omniglot_root, "lake", "evaluation", cache_dir=tmp_path / "empty", progress=False)


def test_a_decompression_bomb_inside_the_archive_is_refused_by_name(tmp_path, omniglot_root, bomb_png):
    src = omniglot_root / "images_evaluation.zip"
    first = _first_member(src)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp_path / "images_evaluation.zip", "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, bomb_png if info.filename == first else zin.read(info))
    with pytest.raises(ValueError, match=rf"image {re.escape(first)} in .*images_evaluation\.zip is 900,000,000 pixels, over the limit"):
        Omniglot(tmp_path, "lake", "evaluation", cache_dir=tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match=rf"image {re.escape(first)} in .*images_evaluation\.zip is 900,000,000 pixels"):
        verify_omniglot_archive(tmp_path / "images_evaluation.zip")


def test_a_root_that_is_a_file_is_named_as_a_file(tmp_path):
    (tmp_path / "images_background.zip").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=r"root='.*images_background\.zip' is a file, not a folder"):
        Omniglot(tmp_path / "images_background.zip", "lake", "background", progress=False)
