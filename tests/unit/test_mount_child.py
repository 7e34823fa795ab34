"""Programs the mount side runs in a child process: their outcome, their output, and a child
that outlives its timeout killed and left behind, never waited for."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from volagent.mount import child


async def test_output_and_exit_status_come_back() -> None:
    done = await child.run(["sh", "-c", "echo out; echo err >&2; exit 4"], timeout=30)
    assert done.returncode == 4
    assert done.output.split() == ["out", "err"]


async def test_a_child_that_outlives_its_timeout_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    # the program hangs like a call stuck in the kernel would: it never ends by itself
    argv = ["sh", "-c", f"echo $$ > {pid_file}; exec sleep 600"]

    with pytest.raises(child.ChildHung) as info:
        await child.run(argv, timeout=0.5)
    assert "did not finish within 0.5s and was killed" in str(info.value)
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed, and reaped


async def test_a_program_that_cannot_start_is_an_oserror() -> None:
    with pytest.raises(FileNotFoundError):
        await child.run(["/nonexistent/mount-program"], timeout=30)


@pytest.mark.skipif(os.geteuid() != 0, reason="umount2 answers EPERM to others")
async def test_lazy_unmount_of_a_plain_directory_says_nothing_was_mounted(tmp_path: Path) -> None:
    assert await child.lazy_unmount(str(tmp_path), timeout=30) is False


async def test_lazy_unmount_refused_names_the_reason(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(OSError) as info:
        await child.lazy_unmount(str(missing), timeout=30)
    assert str(missing) in str(info.value)
    assert "No such file or directory" in str(info.value)
