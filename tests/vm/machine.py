"""The test virtual machine: QEMU with an emulated CPU (TCG), a qcow2 overlay on the cached
disk image, no network device at all, driven through QMP (the monitor) and the QEMU guest
agent (commands and their results), both on Unix sockets of the host.

A machine either boots (`start()`) or resumes a saved state (`start(incoming=...)`); a saved
state only fits the exact QEMU, arguments and CPU model it was made with, so `qemu_argv`
is the one place that decides them.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shlex
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

QEMU = "qemu-system-x86_64"
MEMORY_MB = 1536
CPUS = 2
KERNEL_ARGS = "root=/dev/vda rw console=ttyS0 panic=-1 net.ifnames=0"
# root's PATH of a login shell on Debian (/etc/profile) and nothing of volagent's: the
# commands the tests run (`volagent status`) are found where the install put them
GUEST_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class GuestError(RuntimeError):
    """The guest agent refused a command or did not answer in time."""


@dataclass(frozen=True)
class Result:
    """What a command in the guest did."""

    cmd: str
    rc: int
    out: str
    err: str

    def check(self) -> Result:
        if self.rc != 0:
            raise GuestError(
                f"{self.cmd!r} exited {self.rc}\nstdout: {self.out}\nstderr: {self.err}"
            )
        return self


@dataclass(frozen=True)
class Image:
    """A built disk image (scripts/build-vm-image): disk.qcow2, vmlinuz, initrd.img."""

    directory: Path

    @property
    def disk(self) -> Path:
        return self.directory / "disk.qcow2"

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd.img"


def qemu_version() -> str:
    out = subprocess.run([QEMU, "--version"], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()[0]


def make_overlay(backing: Path, overlay: Path) -> None:
    """A qcow2 overlay whose reads fall through to `backing`, which stays untouched."""
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            str(backing),
            str(overlay),
        ],
        check=True,
    )


class _JsonSocket:
    """Newline-separated JSON over a Unix stream socket (QMP and the guest agent both)."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.buf = b""

    def send(self, obj: dict[str, Any], prefix: bytes = b"") -> None:
        self.sock.sendall(prefix + json.dumps(obj).encode() + b"\n")

    def recv(self, timeout: float) -> dict[str, Any] | None:
        """The next JSON object, or None when none came within `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            line, sep, rest = self.buf.partition(b"\n")
            if sep:
                self.buf = rest
                line = line.replace(b"\xff", b"").strip()
                if line:
                    with contextlib.suppress(ValueError):
                        obj = json.loads(line)
                        if isinstance(obj, dict):
                            return obj
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return None
            if not chunk:
                raise ConnectionError("the socket was closed")
            self.buf += chunk

    def close(self) -> None:
        self.sock.close()


class Qmp:
    """The QEMU monitor protocol: commands and their answers (events are skipped)."""

    def __init__(self, path: Path) -> None:
        self.conn = _JsonSocket(path, timeout=30)
        if self.conn.recv(30) is None:
            raise GuestError("QMP sent no greeting")
        self.execute("qmp_capabilities")

    def execute(self, command: str, **arguments: Any) -> Any:
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.conn.send(msg)
        while True:
            reply = self.conn.recv(600)
            if reply is None:
                raise GuestError(f"QMP {command}: no answer")
            if "error" in reply:
                raise GuestError(f"QMP {command}: {reply['error']}")
            if "return" in reply:
                return reply["return"]


class GuestAgent:
    """The QEMU guest agent on its virtio-serial port: runs commands and returns results."""

    def __init__(self, path: Path) -> None:
        self.conn = _JsonSocket(path, timeout=30)
        self.ids = itertools.count(int(time.time()) % 100000 * 1000)

    def sync(self, timeout: float) -> None:
        """Waits until the agent answers (it may be booting, or the guest rebooting)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            token = next(self.ids)
            # 0xff first: the agent drops a half-read request and starts afresh
            self.conn.send(
                {"execute": "guest-sync-delimited", "arguments": {"id": token}}, prefix=b"\xff"
            )
            end = min(deadline, time.monotonic() + 3)
            while (left := end - time.monotonic()) > 0:
                reply = self.conn.recv(left)
                if reply is not None and reply.get("return") == token:
                    return
        raise GuestError(f"the guest agent did not answer within {timeout:g}s")

    def call(self, command: str, timeout: float = 30, **arguments: Any) -> Any:
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.conn.send(msg)
        reply = self.conn.recv(timeout)
        if reply is None:
            raise GuestError(f"guest agent: no answer to {command}")
        if "error" in reply:
            raise GuestError(f"guest agent {command}: {reply['error']}")
        return reply.get("return")

    def exec(self, argv: list[str], timeout: float) -> tuple[int, str, str]:
        started = self.call(
            "guest-exec", path=argv[0], arg=argv[1:], env=[GUEST_PATH], **{"capture-output": True}
        )
        pid = started["pid"]
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            status = self.call("guest-exec-status", pid=pid)
            if status.get("exited"):
                out = base64.b64decode(status.get("out-data", "")).decode(errors="replace")
                err = base64.b64decode(status.get("err-data", "")).decode(errors="replace")
                rc = status.get("exitcode", 128 + int(status.get("signal", 0)))
                return int(rc), out, err
            if time.monotonic() > deadline:
                raise TimeoutError(f"{argv!r} did not finish within {timeout:g}s (pid {pid})")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


class Machine:
    """One QEMU process on `image`, its disk an overlay in `workdir`."""

    def __init__(self, image: Image, workdir: Path, disk: Path) -> None:
        self.image = image
        self.workdir = workdir
        self.disk = disk
        self.qmp_path = workdir / "qmp.sock"
        self.qga_path = workdir / "qga.sock"
        self.console = workdir / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.qmp: Qmp | None = None
        self.agent: GuestAgent | None = None

    def qemu_argv(self) -> list[str]:
        return [
            QEMU,
            "-nodefaults",
            "-no-user-config",
            "-machine", "q35",
            "-accel", "tcg,thread=multi",
            "-cpu", "qemu64",
            "-smp", str(CPUS),
            "-m", str(MEMORY_MB),
            "-display", "none",
            "-nic", "none",  # no network device: nothing leaves the machine
            "-serial", f"file:{self.console}",
            "-kernel", str(self.image.kernel),
            "-initrd", str(self.image.initrd),
            "-append", KERNEL_ARGS,
            "-drive", f"file={self.disk},if=virtio,format=qcow2,discard=unmap",
            "-object", "rng-random,id=rng0,filename=/dev/urandom",
            "-device", "virtio-rng-pci,rng=rng0",
            "-device", "virtio-serial-pci",
            "-chardev", f"socket,id=qga0,path={self.qga_path},server=on,wait=off",
            "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
        ]  # fmt: skip

    def start(self, incoming: Path | None = None) -> None:
        argv = self.qemu_argv()
        if incoming is not None:
            argv += ["-incoming", f"exec:cat {shlex.quote(str(incoming))}"]
        # the child writes to its own copy of the descriptor: ours is closed at once
        with (self.workdir / "qemu.log").open("wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        self.qmp = Qmp(self.qmp_path)
        if incoming is not None:
            self._finish_incoming()
        self.agent = GuestAgent(self.qga_path)

    def _finish_incoming(self) -> None:
        assert self.qmp is not None
        deadline = time.monotonic() + 600
        while (state := self.qmp.execute("query-status")["status"]) in {"inmigrate", "prelaunch"}:
            if time.monotonic() > deadline:
                raise GuestError("the saved state did not load within 600 s")
            time.sleep(0.2)
        if state != "running":
            self.qmp.execute("cont")

    def wait_agent(self, timeout: float = 600) -> None:
        assert self.agent is not None
        self.agent.sync(timeout)

    def set_clock(self) -> None:
        """A resumed guest's clock is where it was when the state was saved: set it to now."""
        assert self.agent is not None
        self.agent.call("guest-set-time", time=time.time_ns())

    def sh(self, cmd: str, timeout: float = 300, check: bool = True) -> Result:
        """Runs `cmd` with the guest's /bin/sh as root and returns what it did."""
        assert self.agent is not None
        rc, out, err = self.agent.exec(["/bin/sh", "-c", cmd], timeout)
        result = Result(cmd, rc, out, err)
        return result.check() if check else result

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Writes `data` to `path` in the guest (through the guest agent's file calls)."""
        assert self.agent is not None
        handle = self.agent.call("guest-file-open", path=path, mode="w")
        try:
            for start in range(0, len(data), 1 << 20):
                chunk = base64.b64encode(data[start : start + (1 << 20)]).decode()
                self.agent.call("guest-file-write", handle=handle, **{"buf-b64": chunk})
        finally:
            self.agent.call("guest-file-close", handle=handle)
        self.sh(f"chmod {mode:o} {shlex.quote(path)}")

    def boot_id(self) -> str:
        return self.sh("cat /proc/sys/kernel/random/boot_id").out.strip()

    def reboot(self, timeout: float = 900) -> None:
        """`systemctl reboot` in the guest, then waits for the agent of the next boot."""
        assert self.agent is not None
        before = self.boot_id()
        with contextlib.suppress(GuestError, TimeoutError):
            self.sh("systemctl reboot", timeout=30, check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(GuestError, TimeoutError):
                self.agent.sync(min(60, deadline - time.monotonic()))
                if self.boot_id() != before:
                    return
            time.sleep(1)
        raise GuestError(f"no new boot within {timeout:g}s")

    def save_state(self, path: Path) -> None:
        """Stops the guest and writes its whole state (memory, devices) to `path`."""
        assert self.qmp is not None
        self.qmp.execute("stop")
        self.qmp.execute("migrate", uri=f"exec:cat > {shlex.quote(str(path))}")
        deadline = time.monotonic() + 600
        while (status := self.qmp.execute("query-migrate").get("status")) != "completed":
            if status == "failed" or time.monotonic() > deadline:
                raise GuestError(f"saving the state: {status}")
            time.sleep(0.2)

    def console_tail(self, lines: int = 40) -> str:
        try:
            text = self.console.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def quit(self) -> None:
        """Ends QEMU (the disk is flushed); a hung one is killed."""
        if self.proc is None:
            return
        if self.qmp is not None:
            with contextlib.suppress(OSError, GuestError, ConnectionError):
                self.qmp.execute("quit")
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for conn in (self.qmp, self.agent):
            if conn is not None:
                conn.conn.close()
        self.proc = None
