"""Fixtures shared by the unit tests that work on real directories."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def mp(tmp_path: Path) -> Path:
    """An empty directory standing in for the mount point."""
    path = tmp_path / "mp"
    path.mkdir()
    return path
