import numpy as np
import pytest
import torch
from PIL import Image

from metakit.datasets import ImageFolder, preprocess_image


def _write(path, value: int, size=(20, 24), mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.full(size[::-1], 255, dtype=np.uint8)
    a[5:10, 3:value] = 0
    Image.fromarray(a, "L").convert(mode).save(path)
    return path


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "data"
    _write(root / "b_class" / "2.png", 10)
    _write(root / "b_class" / "1.JPG", 12, mode="RGB")
    _write(root / "a_class" / "x.bmp", 15)
    (root / "a_class" / "readme.txt").write_text("not an image")
    (root / "a_class" / ".hidden.png").write_bytes(b"junk")
    (root / ".git").mkdir()
    return root


def test_classes_sorted_and_images_preprocessed(folder):
    ds = ImageFolder(folder, image_size=16)
    assert ds.class_names == ["a_class", "b_class"]
    assert ds.counts.tolist() == [1, 2]
    assert ds.data.shape == (3, 1, 16, 16) and ds.data.dtype == torch.uint8
    assert [p.name for p in ds.files] == ["x.bmp", "1.JPG", "2.png"]
    assert torch.equal(ds.data[1], preprocess_image(folder / "b_class" / "1.JPG", image_size=16))
    assert ds.meta["preprocessing"] == {"image_size": 16, "channels": 1, "resample": "lanczos", "invert": True}
    assert ds.meta["dataset"] == "folder"


def test_rgb_no_invert(folder):
    ds = ImageFolder(folder, image_size=8, channels=3, invert=False)
    assert ds.data.shape == (3, 3, 8, 8)
    assert int(ds.data[0, :, 0, 0].min()) == 255  # white background kept white


def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"root=.*nowhere.* is not a folder; expected root/<class>/<image>"):
        ImageFolder(tmp_path / "nowhere")


def test_empty_root(tmp_path):
    with pytest.raises(ValueError, match=r"root=.* has no class folders; expected root/<class>/<image>"):
        ImageFolder(tmp_path)


def test_loose_images_hint(tmp_path):
    _write(tmp_path / "a.png", 5)
    with pytest.raises(ValueError, match=r"has no class folders \(found 1 images directly in it: move them into one folder per class\)"):
        ImageFolder(tmp_path)


def test_class_without_images(folder):
    (folder / "c_empty").mkdir()
    (folder / "c_empty" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"class folder .*c_empty has no images \(looked for \.png"):
        ImageFolder(folder)


def test_unreadable_image_named(folder):
    (folder / "a_class" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match=r"cannot read image .*a_class/broken\.png"):
        ImageFolder(folder)


def test_bad_preprocessing_argument(folder):
    with pytest.raises(ValueError, match=r"channels=4 is invalid"):
        ImageFolder(folder, channels=4)


def test_root_that_is_a_file_is_named_as_a_file(tmp_path):
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=r"root=.*f\.png' is a file, not a folder; expected root/<class>/<image>"):
        ImageFolder(tmp_path / "f.png")


def test_a_decompression_bomb_in_a_class_folder_is_refused_by_name(folder, bomb_png):
    (folder / "a_class" / "zz_bomb.png").write_bytes(bomb_png)
    with pytest.raises(ValueError, match=r"image .*a_class/zz_bomb\.png is 900,000,000 pixels, over the limit"):
        ImageFolder(folder)
