"""A private Docker engine for the tests: its own socket, data root and exec root under a
short temporary directory, so it never meets another engine on the machine.

`Dockerd.start()` waits until the engine answers; `stop()` ends it and everything it
started, unmounts what it left behind and removes its directories. `halt()` + `start()`
keep the directories, so containers and images survive, as with a real engine restart.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence

import docker

from tests.testbed import mounts

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


class DockerdError(RuntimeError):
    """The engine did not come up; the message carries the tail of its log."""


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, command line), read from /proc."""
    table: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        table[int(entry)] = (ppid, cmdline)
    return table


def processes_of(base: str) -> list[int]:
    """Processes whose command line names `base` (containerd and its shims re-parent away
    from dockerd) and everything below them, parents first."""
    table = _process_table()
    me = os.getpid()
    needle = base.rstrip("/") + "/"
    todo = [pid for pid, (_, cmd) in table.items() if needle in cmd and pid != me]
    out: list[int] = []
    while todo:
        pid = todo.pop(0)
        if pid in out:
            continue
        out.append(pid)
        todo.extend(child for child, (ppid, _) in table.items() if ppid == pid)
    return out


class Dockerd:
    """One private dockerd. `extra_args` are appended to its command line (for instance
    `--authorization-plugin=volagent`); `wrapper` is put before it (a command that execs
    the rest, e.g. one entering a mount namespace of its own)."""

    def __init__(
        self,
        extra_args: Sequence[str] = (),
        base_dir: str | None = None,
        wrapper: Sequence[str] = (),
    ) -> None:
        # short base: the engine's own sockets (containerd's among them) must fit in 108 bytes
        self.base = base_dir or tempfile.mkdtemp(prefix="vt-d-", dir="/tmp")
        self.extra_args = list(extra_args)
        self.wrapper = list(wrapper)
        self.socket_path = os.path.join(self.base, "d.sock")
        self.data_root = os.path.join(self.base, "data")
        self.exec_root = os.path.join(self.base, "exec")
        self.pidfile = os.path.join(self.base, "d.pid")
        self.log_path = os.path.join(self.base, "dockerd.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self._clients: list[docker.DockerClient] = []
        if len(self.socket_path) >= 100:
            raise DockerdError(f"socket path too long for AF_UNIX: {self.socket_path}")

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self, timeout: int = 60) -> docker.DockerClient:
        """A DockerClient for this engine; closed when the engine is halted."""
        c = docker.DockerClient(base_url=self.url, version="auto", timeout=timeout)
        self._clients.append(c)
        return c

    def start(self) -> Dockerd:
        if self.running:
            return self
        os.makedirs(self.data_root, exist_ok=True)
        os.makedirs(self.exec_root, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        argv = [
            *self.wrapper,
            "dockerd",
            "--host",
            self.url,
            "--data-root",
            self.data_root,
            "--exec-root",
            self.exec_root,
            "--pidfile",
            self.pidfile,
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            *self.extra_args,
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        try:
            self._wait_ready()
        except BaseException:
            self.halt()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.running:
                raise DockerdError(f"dockerd exited at start:\n{self.log_tail()}")
            if os.path.exists(self.socket_path) and self.ping():
                return
            time.sleep(0.1)
        raise DockerdError(
            f"dockerd did not answer within {START_TIMEOUT_S:g}s:\n{self.log_tail()}"
        )

    def ping(self) -> bool:
        try:
            c = docker.APIClient(base_url=self.url, timeout=5)
        except Exception:  # version negotiation fails while the engine starts
            return False
        try:
            return bool(c.ping())
        except Exception:  # not up yet
            return False
        finally:
            c.close()

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log)"

    def _close_clients(self) -> None:
        for c in self._clients:
            with contextlib.suppress(Exception):
                c.close()
        self._clients.clear()

    def halt(self) -> None:
        """Stops the engine (SIGTERM, SIGKILL at the deadline) and whatever it left running
        (containerd, shims, container processes), keeping its directories."""
        self._close_clients()
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(STOP_TIMEOUT_S)
            self.proc = None
        # containerd and the shims normally go with dockerd; whatever is left is ours to end
        for pid in processes_of(self.base):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        """Stops the engine, unmounts what it left and removes its directories."""
        try:
            self.halt()
        finally:
            mounts.remove_tree(self.base)
