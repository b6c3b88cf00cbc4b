import json
import re

import numpy as np
import pytest
from PIL import Image

from metakit.cli.main import main

EXPECTED = [
    {"protocol": "lake", "split": "background", "alphabets": 30, "characters": 964, "classes": 964, "images": 19_280},
    {"protocol": "lake", "split": "evaluation", "alphabets": 20, "characters": 659, "classes": 659, "images": 13_180},
    {"protocol": "vinyals", "split": "train", "alphabets": 33, "characters": 1028, "classes": 4112, "images": 82_240},
    {"protocol": "vinyals", "split": "val", "alphabets": 5, "characters": 172, "classes": 688, "images": 13_760},
    {"protocol": "vinyals", "split": "trainval", "alphabets": 38, "characters": 1200, "classes": 4800, "images": 96_000},
    {"protocol": "vinyals", "split": "test", "alphabets": 13, "characters": 423, "classes": 1692, "images": 33_840},
]


def test_check_json(omniglot_root, cache_dir, capsys):
    assert main(["data", "check", "omniglot", "--root", str(omniglot_root), "--cache-dir", str(cache_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == EXPECTED


def test_check_table(omniglot_root, cache_dir, capsys):
    assert main(["data", "check", "omniglot", "--root", str(omniglot_root), "--cache-dir", str(cache_dir)]) == 0
    out = capsys.readouterr().out
    assert "Omniglot in " in out and ": verified" in out
    assert re.search(r"images_background\.zip +30 alphabets +964 characters +19,280 images +checks passed: layout, crc, digest", out)
    assert "content: the zip's checksum is that of a known genuine archive" in out
    assert re.search(r"images_evaluation\.zip +20 alphabets +659 characters +13,180 images", out)
    assert re.search(r"vinyals +test +13 +423 +1,692 +33,840", out)


def test_check_missing_archive_is_one_line_error(tmp_path, capsys):
    assert main(["data", "check", "omniglot", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("metakit data: error: Omniglot archive not found: ")
    assert "pass --download" in err


def test_check_corrupt_archive_is_one_line_error(tmp_path, omniglot_root, capsys):
    (tmp_path / "images_background.zip").symlink_to(omniglot_root / "images_background.zip")
    (tmp_path / "images_evaluation.zip").write_bytes(b"PK\x03\x04 truncated")
    assert main(["data", "check", "omniglot", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "images_evaluation.zip is not a readable zip archive" in err and "truncated or corrupt" in err


def _png_shape(path):
    with Image.open(path) as im:
        return im.size


def test_show_omniglot(omniglot_root, cache_dir, tmp_path, capsys):
    out = tmp_path / "figs" / "episode.png"
    argv = ["data", "show", "omniglot", "--root", str(omniglot_root), "--cache-dir", str(cache_dir),
            "--ways", "5", "--shots", "2", "--queries", "3", "--seed", "1", "--out", str(out)]
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    w, h = _png_shape(out)
    assert w > h > 300  # 5 rows, 2 + 3 columns plus labels
    first = out.read_bytes()
    assert main(argv) == 0 and out.read_bytes() == first  # same seed, same picture
    argv[argv.index("--seed") + 1] = "2"
    assert main(argv) == 0 and out.read_bytes() != first


def test_show_lake_and_errors(omniglot_root, cache_dir, tmp_path, capsys):
    out = tmp_path / "e.png"
    base = ["data", "show", "omniglot", "--root", str(omniglot_root), "--cache-dir", str(cache_dir), "--out", str(out)]
    assert main(base + ["--protocol", "lake", "--ways", "3", "--shots", "1"]) == 0
    assert out.exists()
    assert main(base + ["--protocol", "lake", "--split", "test", "--ways", "3", "--shots", "1"]) == 2
    assert "split='test' is not a split of protocol='lake'" in capsys.readouterr().err
    assert main(base + ["--ways", "5", "--shots", "20", "--queries", "1"]) == 2
    assert "shots" in capsys.readouterr().err


def test_folder_check_and_show(tmp_path, capsys):
    root = tmp_path / "mine"
    for c, n in [("cat", 3), ("dog", 4)]:
        (root / c).mkdir(parents=True)
        for i in range(n):
            a = np.full((30, 30, 3), 255, dtype=np.uint8)
            a[5 + i : 15 + i, 5:25] = (200, 30 * i, 0)
            Image.fromarray(a).save(root / c / f"{i}.png")
    assert main(["data", "check", "folder", "--root", str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"dataset": "folder", "root": str(root), "classes": 2, "images": 7, "min_per_class": 3, "max_per_class": 4}
    ]
    out = tmp_path / "f.png"
    assert main(["data", "show", "folder", "--root", str(root), "--channels", "3", "--no-invert",
                 "--ways", "2", "--shots", "2", "--queries", "1", "--out", str(out)]) == 0
    assert out.exists()
    assert main(["data", "check", "folder", "--root", str(tmp_path / "none")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_help_lists_data(capsys):
    with pytest.raises(SystemExit):
        main(["data", "--help"])
    out = capsys.readouterr().out
    assert "check" in out and "show" in out


def test_check_download_fetches_missing_archives(serve, omniglot_root, cache_dir, tmp_path, monkeypatch, capsys):
    # the official source replaced by a local server on 127.0.0.1 serving the offline copies
    monkeypatch.setenv("METAKIT_OMNIGLOT_URL", serve(omniglot_root))
    root = tmp_path / "omniglot"
    argv = ["data", "check", "omniglot", "--root", str(root), "--cache-dir", str(cache_dir), "--json"]
    assert main(argv) != 0  # without --download a missing root is an error
    assert "--download" in capsys.readouterr().err
    assert main([*argv, "--download"]) == 0
    assert json.loads(capsys.readouterr().out) == EXPECTED
    assert sorted(p.name for p in root.iterdir()) == ["images_background.zip", "images_evaluation.zip"]


def _rezip(src, dest, swap=None):
    """Re-zip ``src`` into ``dest`` stored (not deflated); ``swap=(a, b)`` exchanges two members' bytes."""
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            if info.is_dir():
                continue
            name = info.filename
            if swap and name in swap:
                name = swap[1 - swap.index(name)]
            zout.writestr(info.filename, zin.read(name))


@pytest.mark.slow
def test_check_verifies_the_content_of_a_repacked_archive(omniglot_root, cache_dir, tmp_path, capsys):
    import zipfile

    (tmp_path / "images_background.zip").symlink_to(omniglot_root / "images_background.zip")
    # a faithful re-packing: other zip bytes, the same PNGs -> every image is checked and passes
    _rezip(omniglot_root / "images_evaluation.zip", tmp_path / "images_evaluation.zip")
    argv = ["data", "check", "omniglot", "--root", str(tmp_path), "--cache-dir", str(cache_dir)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert re.search(r"images_evaluation\.zip .* 13,180 images +checks passed: layout, crc, content", out)
    assert "content: every image has the official path and pixels" in out
    # one image swapped with another of the same character: layout, counts and CRCs are all fine
    with zipfile.ZipFile(omniglot_root / "images_evaluation.zip") as zf:
        a, b = sorted(n for n in zf.namelist() if n.endswith(".png"))[:2]
    _rezip(omniglot_root / "images_evaluation.zip", tmp_path / "images_evaluation.zip", swap=(a, b))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"images_evaluation.zip: 2 image(s) differ from the official ones pixel for pixel ({a}, {b})" in err
