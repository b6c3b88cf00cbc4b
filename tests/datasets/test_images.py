import io
import math

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


# -- an independent Lanczos-3 resize, as Pillow defines it ---------------------------------------
# Pillow resamples separably: for every output pixel o of an axis of n_in -> n_out pixels
# (scale = n_in / n_out, widened = max(scale, 1)), the inputs i in [center - 3 widened,
# center + 3 widened) around center = (o + 0.5) scale, rounded to the nearest integer, are weighted
# by lanczos3((i + 0.5 - center) / widened), lanczos3(x) = sinc(x) sinc(x / 3) on [-3, 3);
# the weights are normalised to sum 1 and rounded to fixed point with 22 fractional bits; each
# pass sums in integers from 2^21 (rounding) and clips to 0..255, so the intermediate is uint8.

_FRACTION_BITS = 22


def _lanczos3(x: float) -> float:
    def sinc(t: float) -> float:
        return 1.0 if t == 0.0 else math.sin(math.pi * t) / (math.pi * t)

    return sinc(x) * sinc(x / 3.0) if -3.0 <= x < 3.0 else 0.0


def _fixed_point_weights(n_in: int, n_out: int) -> list[tuple[int, list[int]]]:
    scale = n_in / n_out
    widened = max(scale, 1.0)
    out = []
    for o in range(n_out):
        center = (o + 0.5) * scale
        first = max(int(center - 3.0 * widened + 0.5), 0)
        stop = min(int(center + 3.0 * widened + 0.5), n_in)
        w = [_lanczos3((i + 0.5 - center) / widened) for i in range(first, stop)]
        total = sum(w)
        fixed = [int(v / total * (1 << _FRACTION_BITS) + (0.5 if v >= 0 else -0.5)) for v in w]
        out.append((first, fixed))
    return out


def _resample_last_axis(a: np.ndarray, n_out: int) -> np.ndarray:
    out = np.empty(a.shape[:-1] + (n_out,), dtype=np.uint8)
    for o, (first, w) in enumerate(_fixed_point_weights(a.shape[-1], n_out)):
        acc = (a[..., first : first + len(w)].astype(np.int64) * np.array(w, dtype=np.int64)).sum(-1)
        out[..., o] = np.clip((acc + (1 << (_FRACTION_BITS - 1))) >> _FRACTION_BITS, 0, 255)
    return out


def _lanczos_reference(a: np.ndarray, size: int, rows_first: bool = True) -> np.ndarray:
    """``a`` (uint8 [H, W]) resized to ``size x size``; ``rows_first``: the horizontal pass first."""
    def horizontal(x):
        return _resample_last_axis(x, size) if x.shape[1] != size else x

    def vertical(x):
        return _resample_last_axis(x.T, size).T if x.shape[0] != size else x

    return vertical(horizontal(a)) if rows_first else horizontal(vertical(a))


def test_reference_lanczos_weights_are_a_partition_of_unity_peaked_at_the_center():
    assert _lanczos3(0.0) == 1.0 and all(abs(_lanczos3(k)) < 1e-15 for k in (-3.0, -2.0, -1.0, 1.0, 2.0))
    assert _lanczos3(3.0) == 0.0 and _lanczos3(0.5) == pytest.approx(math.sin(math.pi / 2) * math.sin(math.pi / 6) / (math.pi**2 / 12))
    for n_in, n_out in [(105, 28), (20, 28), (9, 4)]:
        for _, w in _fixed_point_weights(n_in, n_out):
            assert abs(sum(w) - (1 << _FRACTION_BITS)) <= len(w)
    flat = np.full((105, 105), 77, dtype=np.uint8)
    assert (_lanczos_reference(flat, 28) == 77).all()


@pytest.mark.parametrize("size_in, size_out", [(105, 28), (60, 28), (9, 4), (20, 28)])
def test_lanczos_resize_matches_an_independent_lanczos3(size_in, size_out):
    # square inputs (Omniglot's 105 x 105 PNGs): Pillow takes the horizontal pass first
    rng = np.random.default_rng(size_in * 100 + size_out)
    noise = rng.integers(0, 256, (size_in, size_in), dtype=np.uint8)
    strokes = np.where(rng.random((size_in, size_in)) < 0.15, 0, 255).astype(np.uint8)
    for a in (noise, strokes):
        expected = _lanczos_reference(a, size_out)
        got = preprocess_image(Image.fromarray(a, "L"), image_size=size_out, invert=False)
        assert np.array_equal(got[0].numpy(), expected)
        inverted = preprocess_image(Image.fromarray(a, "L"), image_size=size_out)
        assert np.array_equal(inverted[0].numpy(), 255 - expected)


def test_one_bit_glyph_is_resized_by_lanczos3_in_grayscale():
    glyph = _glyph(mode="1")  # Omniglot's PNGs are 1-bit
    expected = 255 - _lanczos_reference(np.array(glyph.convert("L")), 28)
    assert np.array_equal(preprocess_image(glyph, image_size=28)[0].numpy(), expected)
    assert len(np.unique(expected)) > 2  # grey levels: not a nearest-neighbour resize


def test_non_square_input_is_a_lanczos3_resize_in_one_of_the_two_pass_orders():
    # For non-square inputs Pillow picks which of its two passes runs first; the two orders
    # differ by the rounding of the uint8 intermediate, both are a Lanczos-3 resample.
    rng = np.random.default_rng(3)
    for h, w, size in [(31, 17, 8), (9, 7, 5), (12, 40, 16)]:
        a = rng.integers(0, 256, (h, w), dtype=np.uint8)
        got = preprocess_image(Image.fromarray(a, "L"), image_size=size, invert=False)[0].numpy()
        candidates = [_lanczos_reference(a, size, rows_first) for rows_first in (True, False)]
        assert any(np.array_equal(got, c) for c in candidates), (h, w, size)


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
