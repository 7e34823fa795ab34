"""Fixtures shared by the unit tests that work on real directories."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def mp(tmp_path: Path) -> Path:
    """An empty directory standing in for the mount point."""
    path = tmp_path / "mp"
    path.mkdir()
    return path


@pytest.fixture
def root(mp: Path) -> Iterator[int]:
    """A descriptor of the stand-in mount point, as gc opens it."""
    fd = os.open(mp, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)
