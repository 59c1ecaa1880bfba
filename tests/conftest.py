"""Shared fixtures: where the offline data lives, and seeded RNG."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
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


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No downloads: an empty cache, no weights folder from the environment, a network that always fails."""
    monkeypatch.setenv("GFP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("GFP_WEIGHTS_DIR", raising=False)

    def no_network(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("offline test")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
