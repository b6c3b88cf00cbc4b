import os
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


# -- content keys: what the decoded-dataset cache is keyed by -------------------------------------
def test_zip_key_changes_with_any_member_and_only_with_the_bytes(tmp_path):
    members = {"top/a/1.png": b"first image", "top/a/2.png": b"second image"}
    a = _zip(tmp_path / "a.zip", members)
    same = tmp_path / "same.zip"
    same.write_bytes(a.read_bytes())
    changed = _zip(tmp_path / "changed.zip", {**members, "top/a/2.png": b"second imagE"})
    with ArchiveSource(a) as x, ArchiveSource(same) as y, ArchiveSource(changed) as z:
        assert x.content_key() == y.content_key()
        assert z.content_key() != x.content_key()


def _folder(root, files: dict[str, bytes]):
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root / "top"


def test_folder_key_changes_when_a_file_changes_even_with_its_size_and_time_kept(tmp_path):
    files = {"top/a/1.png": b"first image", "top/b/2.png": b"second image"}
    folder = _folder(tmp_path / "x", files)
    key = ArchiveSource(folder).content_key()
    assert key.startswith("listing-")
    twin = _folder(tmp_path / "y", files)  # the same files elsewhere, written at another time
    assert ArchiveSource(twin).content_key() == key
    # the same number of bytes, the modification time put back (as `cp -p` or `rsync -t` do)
    target = folder / "b" / "2.png"
    st = target.stat()
    target.write_bytes(b"second imagE")
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert target.stat().st_size == st.st_size and target.stat().st_mtime_ns == st.st_mtime_ns
    assert ArchiveSource(folder).content_key() != key
    target.write_bytes(b"second image")
    assert ArchiveSource(folder).content_key() == key  # back to the same bytes: the same key


@pytest.mark.parametrize("change", ["add", "remove", "rename"])
def test_folder_key_changes_when_the_file_list_changes(tmp_path, change):
    folder = _folder(tmp_path, {"top/a/1.png": b"one", "top/a/2.png": b"two"})
    key = ArchiveSource(folder).content_key()
    if change == "add":
        (folder / "a" / "3.png").write_bytes(b"three")
    elif change == "remove":
        (folder / "a" / "2.png").unlink()
    else:
        (folder / "a" / "2.png").rename(folder / "a" / "9.png")
    assert ArchiveSource(folder).content_key() != key
