"""The Makefile's entry points install what each needs: `make run` the agent and its
dependencies alone, the test targets the test tools too."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def planned(target: str) -> str:
    """What `make TARGET` would run from scratch (-n: nothing runs; -B: as if nothing were
    built yet)."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    out = subprocess.run(
        [make, "-n", "-B", "--no-print-directory", target],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout


def test_make_run_installs_the_agent_without_the_test_extras() -> None:
    plan = planned("run")
    assert "pip install -q -e ." in plan
    assert "[test]" not in plan
    assert "volagent --config" in plan


def test_make_install_adds_the_test_tools() -> None:
    assert "pip install -q -e '.[test]'" in planned("install")
