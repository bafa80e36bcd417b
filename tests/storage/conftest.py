"""Fixtures for the FileStorage tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    """A path for a new store (the directory does not exist yet)."""
    return tmp_path / "store"
