import io

import numpy as np
import pytest
import torch
from PIL import Image

from metakit.datasets import Preprocessing, load_images, preprocess_image


def _glyph(size: int = 105, mode: str = "L") -> Image.Image:
    """A black bar on white, like an Omniglot stroke."""
    a = np.full((size, size), 255, dtype=np.uint8)
    a[size // 3 : size // 3 + size // 8, 10 : size - 10] = 0
    img = Image.fromarray(a, "L")
    return img.convert(mode) if mode != "L" else img


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_inverts_black_strokes_to_bright():
    x = preprocess_image(_glyph(), image_size=28)
    assert x.dtype == torch.uint8 and x.shape == (1, 28, 28)
    assert int(x[0, 0, 0]) == 0  # white background -> 0
    assert int(x.max()) == 255  # black stroke -> 255
    raw = preprocess_image(_glyph(), image_size=28, invert=False)
    assert torch.equal(raw, 255 - x)


def test_one_bit_images_are_converted_before_lanczos():
    # Pillow resizes mode "1" images with NEAREST whatever filter is asked: converting to "L"
    # first is what makes LANCZOS produce anti-aliased grey levels.
    x = preprocess_image(_glyph(mode="1"), image_size=28)
    values = torch.unique(x)
    assert len(values) > 2
    assert torch.equal(x, preprocess_image(_glyph(), image_size=28))


def test_path_bytes_and_image_agree(tmp_path):
    img = _glyph()
    p = tmp_path / "g.png"
    img.save(p)
    a = preprocess_image(p, image_size=20)
    b = preprocess_image(str(p), image_size=20)
    c = preprocess_image(_png(img), image_size=20)
    d = preprocess_image(img, image_size=20)
    assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(a, d)


def test_rgb_and_resample_and_same_size():
    rgb = preprocess_image(_glyph(mode="RGB"), image_size=16, channels=3, invert=False)
    assert rgb.shape == (3, 16, 16)
    assert torch.equal(rgb[0], rgb[1])
    same = preprocess_image(_glyph(), image_size=105, invert=False)
    assert torch.equal(same[0], torch.from_numpy(np.array(_glyph())))
    near = preprocess_image(_glyph(), image_size=28, resample="nearest")
    assert set(torch.unique(near).tolist()) <= {0, 255}


def test_transparent_background_is_white():
    a = np.zeros((30, 30, 4), dtype=np.uint8)  # fully transparent black
    a[10:20, 5:25] = (0, 0, 0, 255)  # an opaque black bar
    x = preprocess_image(Image.fromarray(a, "RGBA"), image_size=30)
    assert int(x[0, 0, 0]) == 0 and int(x[0, 15, 15]) == 255


def test_preprocessing_round_trip():
    p = Preprocessing(image_size=28)
    assert p.as_dict() == {"image_size": 28, "channels": 1, "resample": "lanczos", "invert": True}
    assert Preprocessing(**p.as_dict()) == p
    assert torch.equal(p(_glyph()), preprocess_image(_glyph(), **p.as_dict()))


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"image_size": 0}, ValueError, r"image_size=0 is invalid; give an integer between 1 and"),
        ({"image_size": 28.0}, ValueError, r"image_size=28.0 is invalid"),
        ({"image_size": True}, ValueError, r"image_size=True is invalid"),
        ({"image_size": 28, "channels": 2}, ValueError, r"channels=2 is invalid; use 1 \(grayscale\) or 3 \(RGB\)"),
        ({"image_size": 28, "resample": "cubic"}, ValueError, r"resample='cubic' is not a known filter; use one of"),
        ({"image_size": 28, "invert": "yes"}, TypeError, r"invert='yes' must be True or False"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        preprocess_image(_glyph(), **kwargs)


def test_bad_images(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"image file not found: .*nope\.png"):
        preprocess_image(tmp_path / "nope.png", image_size=28)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ValueError, match=r"cannot read image .*bad\.png"):
        preprocess_image(bad, image_size=28)
    with pytest.raises(TypeError, match=r"image must be a file path, bytes or a PIL.Image, got ndarray"):
        preprocess_image(np.zeros((4, 4)), image_size=28)


def test_load_images_folder_and_list(tmp_path):
    for name in ["b.png", "a.jpg", ".hidden.png", "notes.txt"]:
        if name.endswith("txt"):
            (tmp_path / name).write_text("x")
        else:
            _glyph(mode="RGB").save(tmp_path / name)
    out = load_images(tmp_path, image_size=12)
    assert [p.name for p, _ in out] == ["a.jpg", "b.png"]
    assert all(t.shape == (1, 12, 12) and t.dtype == torch.uint8 for _, t in out)
    again = load_images([tmp_path / "b.png"], image_size=12)
    assert torch.equal(again[0][1], out[1][1])
    single = load_images(tmp_path / "b.png", image_size=12)
    assert torch.equal(single[0][1], out[1][1])


def test_load_images_errors(tmp_path):
    with pytest.raises(ValueError, match=r"paths=.* is a folder with no images"):
        load_images(tmp_path, image_size=28)
    with pytest.raises(ValueError, match=r"paths is empty"):
        load_images([], image_size=28)
    with pytest.raises(FileNotFoundError, match=r"image file not found"):
        load_images([tmp_path / "x.png"], image_size=28)


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path, bomb_png):
    import warnings

    from metakit.datasets import MAX_IMAGE_PIXELS

    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png)
    assert len(bomb_png) < 1_000_000
    expected = r"image .*bomb\.png is 900,000,000 pixels, over the limit of 67,108,864 pixels \(8192 x 8192\): refused without decoding it"
    with pytest.raises(ValueError, match=expected):
        preprocess_image(path, image_size=28)
    with pytest.raises(ValueError, match=r"image <\d+ bytes> is 900,000,000 pixels"):
        preprocess_image(bomb_png, image_size=28)
    assert MAX_IMAGE_PIXELS == 8192 * 8192


def test_images_over_the_limit_but_under_pillows_are_refused_and_those_under_pass_silently(tmp_path, monkeypatch):
    import warnings

    from metakit.datasets import images

    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 40 * 40)
    big = tmp_path / "big.png"
    Image.new("L", (41, 40), 255).save(big)
    with pytest.raises(ValueError, match=r"image .*big\.png is 41 x 40 = 1,640 pixels, over the limit of 1,600"):
        preprocess_image(big, image_size=28)
    ok = tmp_path / "ok.png"
    Image.new("L", (40, 40), 255).save(ok)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow would warn above 1,000 pixels
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert preprocess_image(ok, image_size=28).shape == (1, 28, 28)


def test_a_folder_given_as_an_image_is_named_as_a_folder(tmp_path):
    with pytest.raises(ValueError, match=r"is a folder, not an image file"):
        preprocess_image(tmp_path, image_size=28)
