"""Property tests: any override string and any image folder ends in a result or in a clear error.

Config overrides: whatever ``section.key=value`` text a user types, the config either accepts it
(and then holds a valid config) or raises :class:`ConfigError` with a one-line message -- never
another exception. Image folders: whatever mix of class folders, valid images of any size and
mode, broken, empty, hidden and non-image files a folder holds, :class:`ImageFolder` either loads
exactly the valid images or raises an error naming the folder or the file at fault.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from metakit.datasets import ImageFolder
from metakit.runtime.config import Config, ConfigError

BASE = Config.from_dict(
    {
        "data": {"dataset": "sinusoid"},
        "train": {"shots": 5, "queries": 5, "meta_batch": 4, "steps": 10},
        "model": {"name": "mlp", "in_features": 1, "hidden": [8], "out_features": 1},
        "algorithm": {"name": "maml"},
    }
)

_values = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["true", "false", "null", "~", "[]", "{}", "[1, 2]", "{a: 1}", "nan", "-.inf", "1e400", "'x'", "[", "{", ": :", "!!python/object:os.system ''"]),
    st.text(max_size=12),
)
_KEYS = sorted(f"{section}.{key}" for section, body in BASE.to_dict().items() for key in body)
_keys = st.one_of(st.sampled_from(_KEYS), st.text(max_size=15))


@settings(max_examples=300, deadline=None)
@given(key=_keys, value=_values, bare=st.booleans())
def test_any_override_gives_a_valid_config_or_a_one_line_config_error(key, value, bare):
    override = key if bare else f"{key}={value}"
    try:
        config = BASE.with_overrides([override])
    except ConfigError as e:
        message = str(e)
        assert message and "\n" not in message.strip(), message
        return
    assert isinstance(config, Config)
    assert Config.from_dict(config.to_dict()) == config  # what was accepted is a valid config


_MODES = ["L", "RGB", "RGBA", "1", "P", "LA", "I;16"]


def _image_bytes(w: int, h: int, mode: str, seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(arr, "RGB").convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


_file = st.one_of(
    st.tuples(st.just("image"), st.integers(1, 40), st.integers(1, 40), st.sampled_from(_MODES), st.integers(0, 9)),
    st.tuples(st.just("garbage"), st.binary(max_size=64)),
    st.tuples(st.just("empty")),
    st.tuples(st.just("hidden")),
    st.tuples(st.just("text")),
    st.tuples(st.just("subfolder")),
)
_folder = st.lists(st.tuples(st.sampled_from(["a", "b", "c", ".hidden", "d d"]), st.lists(_file, max_size=4)), max_size=4, unique_by=lambda t: t[0])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layout=_folder)
def test_any_image_folder_loads_its_valid_images_or_names_the_fault(layout):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        valid: dict[str, int] = {}
        bad: set[str] = set()
        for cls, files in layout:
            d = root / cls
            d.mkdir()
            read = not cls.startswith(".")  # hidden class folders are skipped
            for i, f in enumerate(files):
                kind = f[0]
                if kind == "image":
                    (d / f"{i}.png").write_bytes(_image_bytes(*f[1:]))
                    if read:
                        valid[cls] = valid.get(cls, 0) + 1
                elif kind == "garbage":
                    (d / f"{i}.png").write_bytes(f[1])
                    if read:
                        bad.add(str(d / f"{i}.png"))
                elif kind == "empty":
                    (d / f"{i}.jpg").write_bytes(b"")
                    if read:
                        bad.add(str(d / f"{i}.jpg"))
                elif kind == "hidden":
                    (d / f".{i}.png").write_bytes(b"ignored")
                elif kind == "text":
                    (d / f"{i}.txt").write_text("ignored")
                else:
                    (d / f"sub{i}").mkdir()
        classes = sorted(c for c, _ in layout if not c.startswith("."))
        try:
            ds = ImageFolder(root, image_size=8)
        except (ValueError, FileNotFoundError) as e:
            message = str(e)
            assert "\n" not in message
            faults = bad | {str(root / c) for c in classes if c not in valid} | {str(root)}
            assert any(f in message for f in faults), message
            return
        assert not bad and ds.class_names == classes
        assert ds.num_classes == len(classes) and len(ds) == sum(valid.values())
        assert tuple(ds.data.shape[1:]) == (1, 8, 8)
