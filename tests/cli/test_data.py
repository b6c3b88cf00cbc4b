import json
import re

import numpy as np
import pytest
from PIL import Image

from metakit.cli.main import main
from metakit.datasets import ImageFolder, Omniglot
from metakit.tasks import EpisodeSampler

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


def _assert_shows_the_episode(fig, dataset, episode, shots: int, queries: int) -> None:
    """Row i: the support then the query images of label i, as the model sees them (0..1)."""
    axes = [ax for ax in fig.axes if ax.get_images()]
    assert len(axes) == episode.ways * (shots + queries)
    for i in range(episode.ways):
        row = axes[i * (shots + queries) : (i + 1) * (shots + queries)]
        images = list(episode.support_x[episode.support_y == i]) + list(episode.query_x[episode.query_y == i])
        for ax, img in zip(row, images):
            x = dataset.to_float(img)
            expected = x[0] if x.shape[0] == 1 else x.permute(1, 2, 0)
            assert np.array_equal(np.asarray(ax.get_images()[0].get_array()), expected.numpy())
        name = dataset.class_names[int(episode.classes[i])]
        assert row[0].get_ylabel().startswith(f"label {i}\n") and row[0].get_ylabel().replace("\n", "") == f"label {i}{name}"
    assert [ax.get_title() for ax in axes[: shots + queries]] == [f"support {j + 1}" for j in range(shots)] + [
        f"query {j + 1}" for j in range(queries)]


def test_show_omniglot(omniglot_root, cache_dir, tmp_path, capsys, saved_figures):
    out = tmp_path / "figs" / "episode.png"
    argv = ["data", "show", "omniglot", "--root", str(omniglot_root), "--cache-dir", str(cache_dir),
            "--ways", "5", "--shots", "2", "--queries", "3", "--seed", "1", "--out", str(out)]
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    w, h = _png_shape(out)
    assert w > h > 300  # 5 rows, 2 + 3 columns plus labels
    # the figure shows the episode the sampler draws with that seed from the vinyals test split
    test = Omniglot(omniglot_root, "vinyals", "test", cache_dir=cache_dir, progress=False)
    episode = EpisodeSampler(test, 5, 2, 3, seed=1).sample(1)[0]
    (fig, _), = saved_figures
    _assert_shows_the_episode(fig, test, episode, 2, 3)
    assert fig.get_suptitle().startswith("Omniglot vinyals/test: 5-way 2-shot, 3 queries per class, seed 1\n")
    first = out.read_bytes()
    assert main(argv) == 0 and out.read_bytes() == first  # same seed, same picture
    argv[argv.index("--seed") + 1] = "2"
    assert main(argv) == 0 and out.read_bytes() != first


def test_show_resizes_with_the_given_filter(omniglot_root, cache_dir, tmp_path, capsys, saved_figures):
    out = tmp_path / "e.png"
    base = ["data", "show", "omniglot", "--root", str(omniglot_root), "--cache-dir", str(cache_dir), "--out", str(out),
            "--protocol", "lake", "--ways", "3", "--shots", "1"]
    assert main(base + ["--resample", "nearest"]) == 0
    binary = Omniglot(omniglot_root, "lake", "evaluation", cache_dir=cache_dir, progress=False, resample="nearest")
    (fig, _), = saved_figures
    _assert_shows_the_episode(fig, binary, EpisodeSampler(binary, 3, 1, 1, seed=0).sample(1)[0], 1, 1)
    assert main(base + ["--resample", "area"]) == 2
    assert "resample='area' is not a known filter; use one of" in capsys.readouterr().err


def test_show_lake_and_errors(omniglot_root, cache_dir, tmp_path, capsys, saved_figures):
    out = tmp_path / "e.png"
    base = ["data", "show", "omniglot", "--root", str(omniglot_root), "--cache-dir", str(cache_dir), "--out", str(out)]
    assert main(base + ["--protocol", "lake", "--ways", "3", "--shots", "1"]) == 0
    assert out.exists()
    evaluation = Omniglot(omniglot_root, "lake", "evaluation", cache_dir=cache_dir, progress=False)  # lake's default
    (fig, _), = saved_figures
    _assert_shows_the_episode(fig, evaluation, EpisodeSampler(evaluation, 3, 1, 1, seed=0).sample(1)[0], 1, 1)
    assert main(base + ["--protocol", "lake", "--split", "test", "--ways", "3", "--shots", "1"]) == 2
    assert "split='test' is not a split of protocol='lake'" in capsys.readouterr().err
    assert main(base + ["--ways", "5", "--shots", "20", "--queries", "1"]) == 2
    assert "shots" in capsys.readouterr().err


def test_folder_check_and_show(tmp_path, capsys, saved_figures):
    root = tmp_path / "mine"
    for k, (c, n) in enumerate([("cat", 3), ("dog", 4)]):
        (root / c).mkdir(parents=True)
        for i in range(n):
            a = np.full((30, 30, 3), 255, dtype=np.uint8)
            a[5 + i : 15 + i, 5:25] = (200, 30 * i, 120 * k)  # every image differs
            Image.fromarray(a).save(root / c / f"{i}.png")
    assert main(["data", "check", "folder", "--root", str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"dataset": "folder", "root": str(root), "classes": 2, "images": 7, "min_per_class": 3, "max_per_class": 4}
    ]
    out = tmp_path / "f.png"
    assert main(["data", "show", "folder", "--root", str(root), "--channels", "3", "--no-invert",
                 "--ways", "2", "--shots", "2", "--queries", "1", "--out", str(out)]) == 0
    assert out.exists()
    (fig, _), = saved_figures
    folder = ImageFolder(root, image_size=28, channels=3, invert=False)
    _assert_shows_the_episode(fig, folder, EpisodeSampler(folder, 2, 2, 1, seed=0).sample(1)[0], 2, 1)
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
