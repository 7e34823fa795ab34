"""The systemd service protocol, without libsystemd: sd_notify messages and inherited sockets.

- `notify()` sends one datagram to `$NOTIFY_SOCKET` (a path, or `@name` in the abstract
  namespace). It never blocks the event loop: the socket is non-blocking and a full queue
  is a dropped message, not a stall. Outside systemd every helper is a no-op returning False.
- `watchdog_interval()` reads `WATCHDOG_USEC`/`WATCHDOG_PID` and says how often to ping.
- `listen_fds()` takes the sockets systemd handed over (`LISTEN_PID`, `LISTEN_FDS`,
  `LISTEN_FDNAMES`, descriptors from 3 on), keyed by the `FileDescriptorName=` of their
  socket units ("api", "guard"), and removes those variables so child processes (mount
  helpers) neither see nor inherit them.
"""

from __future__ import annotations

import os
import socket

SD_LISTEN_FDS_START = 3
_LISTEN_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def _notify_address(raw: str) -> str | None:
    if raw.startswith("@"):
        return "\0" + raw[1:]  # abstract namespace
    if raw.startswith("/"):
        return raw
    return None  # e.g. vsock:..., which a host agent never gets


def notify(message: str) -> bool:
    """Sends `message` (newline-separated `KEY=VALUE` lines) to the service manager.

    Returns True when the datagram was sent, False when not running under systemd (no
    `NOTIFY_SOCKET`) or when it could not be sent right now."""
    raw = os.environ.get("NOTIFY_SOCKET", "")
    address = _notify_address(raw) if raw else None
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
    except OSError:
        return False
    return True


def _one_line(text: str) -> str:
    # a newline would start a new KEY=VALUE assignment in the message
    return " ".join(text.split())


def ready(status_text: str | None = None) -> bool:
    """READY=1: the socket serves and the first reconcile is done (or Docker is absent)."""
    message = "READY=1"
    if status_text:
        message += f"\nSTATUS={_one_line(status_text)}"
    return notify(message)


def stopping() -> bool:
    """STOPPING=1: shutdown has begun."""
    return notify("STOPPING=1")


def watchdog() -> bool:
    """WATCHDOG=1: the event loop is alive. Send it only from the loop itself."""
    return notify("WATCHDOG=1")


def status(text: str) -> bool:
    """STATUS=...: one line shown by `systemctl status volagent`."""
    return notify(f"STATUS={_one_line(text)}")


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half of `WatchdogSec=`), or None when systemd does
    not watch this process."""
    usec_text = os.environ.get("WATCHDOG_USEC", "")
    pid_text = os.environ.get("WATCHDOG_PID", "")
    try:
        usec = int(usec_text)
        if pid_text and int(pid_text) != os.getpid():
            return None  # inherited from a parent that is the one being watched
    except ValueError:
        return None
    return usec / 1_000_000 / 2 if usec > 0 else None


def listen_fds() -> dict[str, socket.socket]:
    """The listening sockets handed over by systemd, by name.

    Names come from `LISTEN_FDNAMES` (`FileDescriptorName=` of each socket unit); a socket
    without a name is keyed `fd<N>`; a repeated name gets `:<i>` appended. Descriptors are
    marked close-on-exec so mount helpers don't inherit them. Returns {} when nothing was
    handed over to this process."""
    values = {name: os.environ.get(name) for name in _LISTEN_VARS}
    for name in _LISTEN_VARS:
        os.environ.pop(name, None)
    try:
        pid = int(values["LISTEN_PID"] or "")
        count = int(values["LISTEN_FDS"] or "")
    except ValueError:
        return {}
    if pid != os.getpid() or count <= 0:
        return {}
    names = (values["LISTEN_FDNAMES"] or "").split(":")
    sockets: dict[str, socket.socket] = {}
    for index in range(count):
        fd = SD_LISTEN_FDS_START + index
        try:
            os.set_inheritable(fd, False)
            sock = socket.socket(fileno=fd)  # family and type are read from the descriptor
        except OSError:
            continue  # not a socket (a FIFO from ListenFIFO=) or not open
        name = names[index] if index < len(names) and names[index] else f"fd{fd}"
        key, n = name, 1
        while key in sockets:
            key, n = f"{name}:{n}", n + 1
        sockets[key] = sock
    return sockets
