"""Shared fixtures: where the offline data lives, and seeded RNG."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import gfp  # noqa: F401  (installs the torchvision shim before any test imports basicsr)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Real offline data (../shared/data); tests that need it skip on a fresh clone without it."""
    default = Path(__file__).resolve().parents[2] / "shared" / "data"
    path = Path(os.environ.get("GFP_TEST_DATA") or default)
    if not (path / "README.md").is_file():
        pytest.skip("offline test data not present (set GFP_TEST_DATA or provide ../shared/data)")
    return path
