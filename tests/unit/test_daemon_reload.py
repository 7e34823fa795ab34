"""What a config reload applies, as each config field declares it: turning the guard off
applies at once (no restart asked for), an edited host_id names this host from then on,
keys that need a restart say so; and how the daemon's main loop and start end."""

from __future__ import annotations

import asyncio
from pathlib import Path

from structlog.testing import capture_logs

from volagent import config
from volagent.daemon.lifecycle import Daemon


def _daemon(tmp_path: Path, text: str) -> tuple[Daemon, Path]:
    path = tmp_path / "volagent.toml"
    path.write_text(text)
    d = Daemon(config.load(str(path)), str(path))
    return d, path


def _restart_warning(d: Daemon) -> str:
    return next((w for w in d.state.warnings if "need a restart" in w), "")


def test_turning_the_guard_off_applies_without_a_restart(tmp_path: Path) -> None:
    d, path = _daemon(tmp_path, 'host_id = "a"\n[guard]\nenabled = true\n')
    assert d.state.guard.enabled
    path.write_text('host_id = "a"\n[guard]\nenabled = false\n')
    assert d.reload()
    assert not d.state.guard.enabled
    assert _restart_warning(d) == ""
    path.write_text('host_id = "a"\n[guard]\nenabled = true\n')
    assert d.reload()
    assert "guard.enabled" in _restart_warning(d)


def test_an_edited_host_id_applies(tmp_path: Path) -> None:
    d, path = _daemon(tmp_path, 'host_id = "a"\n')
    assert d.state.host_id == "a"
    path.write_text('host_id = "b"\n')
    assert d.reload()
    assert d.state.host_id == "b"
    assert _restart_warning(d) == ""


def test_keys_that_need_a_restart_say_so(tmp_path: Path) -> None:
    d, path = _daemon(tmp_path, "")
    path.write_text('[docker]\nurl = "unix:///elsewhere.sock"\n[mount]\nprobe_interval_s = 1\n')
    assert d.reload()
    assert "docker.url" in _restart_warning(d)
    assert "mount" not in _restart_warning(d)


async def test_a_root_task_that_dies_wakes_the_main_loop_and_ends_it(tmp_path: Path) -> None:
    d, _ = _daemon(tmp_path, 'host_id = "a"\n')

    async def dies() -> None:
        raise RuntimeError("broken")

    d._spawn("breaks", dies())
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    # heard of at once, not at the next look around
    assert d._wake.is_set()
    await d._main_loop()
    assert d.exit_code == 1


async def test_a_stop_asked_for_ends_the_main_loop_without_a_death(tmp_path: Path) -> None:
    d, _ = _daemon(tmp_path, 'host_id = "a"\n')

    d.request_stop()
    await d._main_loop()
    assert d.exit_code == 0


async def test_a_start_that_fails_says_exit_code_1_when_it_stops(tmp_path: Path) -> None:
    # the status socket's path is taken by a directory: the start fails. The stop's log line
    # said exit_code 0 before the traceback (and the exit code 1) of the exception
    taken = tmp_path / "taken"
    taken.mkdir()
    d, _ = _daemon(tmp_path, f'host_id = "a"\n[api]\nsocket = "{taken}"\n')
    with capture_logs() as logs:
        assert await d.serve() == 1
    events = {e["event"]: e for e in logs}
    assert events["failed"]["log_level"] == "error" and events["failed"]["exc_info"]
    assert events["stopped"]["exit_code"] == 1
