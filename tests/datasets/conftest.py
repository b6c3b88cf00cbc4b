"""Omniglot loaded once per test session (the cold decode happens at most once per archive)."""

from __future__ import annotations

import pytest

from metakit.datasets import Omniglot


@pytest.fixture(scope="session")
def load_omniglot(omniglot_root, cache_dir):
    """``load_omniglot(protocol, split)`` -> the shared, cached dataset (do not modify it)."""
    loaded: dict[tuple[str, str], Omniglot] = {}

    def get(protocol: str, split: str) -> Omniglot:
        if (protocol, split) not in loaded:
            loaded[protocol, split] = Omniglot(omniglot_root, protocol, split, cache_dir=cache_dir, progress=False)
        return loaded[protocol, split]

    return get
