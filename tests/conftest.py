"""Shared test fixtures.

The real Omniglot archives are read from ``../shared/data/omniglot`` beside the checkout (or
``$METAKIT_OMNIGLOT_ROOT``). Tests that need them are skipped with a clear reason when the
folder is absent; CI always has it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
OMNIGLOT_ROOT = Path(os.environ.get("METAKIT_OMNIGLOT_ROOT", REPO.parent / "shared" / "data" / "omniglot"))

# Two cores are shared by everything on this machine; keep each test process on one thread so
# parallel workers (pytest -n 2) do not oversubscribe them.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def omniglot_root() -> Path:
    if not (OMNIGLOT_ROOT / "images_background.zip").exists():
        if os.environ.get("CI"):
            pytest.fail(f"Omniglot archives not found under {OMNIGLOT_ROOT}; CI must have ../shared/data/omniglot")
        pytest.skip(f"Omniglot archives not found under {OMNIGLOT_ROOT}")
    return OMNIGLOT_ROOT


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One decoded-dataset cache folder for the whole test session."""
    return tmp_path_factory.mktemp("metakit-cache")
