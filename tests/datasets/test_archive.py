import zipfile

import pytest

from metakit.datasets._archive import ArchiveSource, check_member_name, open_zip, safe_extract


def _zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize(
    "name, reason",
    [
        ("../evil.txt", "contains a '..' component"),
        ("a/../../evil.txt", "contains a '..' component"),
        ("a\\..\\..\\evil.txt", "contains a '..' component"),
        ("/etc/evil", "is an absolute path"),
        ("\\evil", "is an absolute path"),
        ("C:/evil", "is an absolute path"),
    ],
)
def test_unsafe_member_names_are_refused(name, reason):
    with pytest.raises(ValueError, match=r"refusing archive x\.zip: member .* " + reason):
        check_member_name(name, "x.zip")


def test_safe_names_pass():
    for name in ["images_background/Latin/character01/0683_01.png", "a/b/", "a..b/c"]:
        assert check_member_name(name, "x.zip") == name


def test_zip_slip_extract_refused_and_nothing_written(tmp_path):
    bad = _zip(tmp_path / "bad.zip", {"ok/a.txt": b"a", "ok/../../escaped.txt": b"evil"})
    dest = tmp_path / "out" / "inner"
    with pytest.raises(ValueError, match=r"refusing archive .*bad\.zip: member 'ok/\.\./\.\./escaped\.txt'"):
        safe_extract(bad, dest)
    assert not (tmp_path / "out" / "escaped.txt").exists()
    assert not (tmp_path / "escaped.txt").exists()
    assert not dest.exists()  # names are checked before anything is written
    absolute = _zip(tmp_path / "abs.zip", {"/tmp/metakit-evil.txt": b"evil"})
    assert zipfile.ZipFile(absolute).namelist() == ["/tmp/metakit-evil.txt"]
    with pytest.raises(ValueError, match=r"member '/tmp/metakit-evil\.txt' is an absolute path"):
        safe_extract(absolute, dest)
    with pytest.raises(ValueError, match=r"refusing archive"):
        ArchiveSource(absolute)


def test_extract_good_archive(tmp_path):
    good = _zip(tmp_path / "good.zip", {"top/": b"", "top/a/b.txt": b"hello"})
    files = safe_extract(good, tmp_path / "dest")
    assert [f.relative_to(tmp_path / "dest").as_posix() for f in files] == ["top/a/b.txt"]
    assert (tmp_path / "dest/top/a/b.txt").read_bytes() == b"hello"


def test_missing_truncated_and_corrupt_zip(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"archive not found: .*missing\.zip"):
        open_zip(tmp_path / "missing.zip")
    good = _zip(tmp_path / "good.zip", {"top/a.bin": bytes(range(256)) * 40})
    data = good.read_bytes()
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"truncated\.zip is not a readable zip archive \(.* bytes; .*\): it is truncated or corrupt"):
        open_zip(truncated)
    # flip bytes inside the member's stored data: the CRC check must catch it
    corrupt = tmp_path / "corrupt.zip"
    i = data.index(bytes(range(256)))
    corrupt.write_bytes(data[: i + 10] + b"\xff\xff\xff" + data[i + 13 :])
    src = ArchiveSource(corrupt)
    with pytest.raises(ValueError, match=r"archive .*corrupt\.zip is corrupt: member 'top/a\.bin' cannot be read"):
        src.read("top/a.bin")
    with pytest.raises(ValueError, match=r"archive .*corrupt\.zip is corrupt: member 'top/a\.bin' fails its CRC check"):
        src.test_integrity()
    src.close()


def test_folder_source_matches_zip(tmp_path):
    z = _zip(tmp_path / "top.zip", {"top/x/1.txt": b"one", "top/y/2.txt": b"two"})
    safe_extract(z, tmp_path / "ex")
    with ArchiveSource(z) as a, ArchiveSource(tmp_path / "ex" / "top") as b:
        assert a.names == b.names == ["top/x/1.txt", "top/y/2.txt"]
        assert [a.read(n) for n in a.names] == [b.read(n) for n in b.names]
        assert a.content_key() != b.content_key()
        assert b.content_key().startswith("listing-")
