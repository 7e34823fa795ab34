"""What the start guard's HTTP server costs per plugin request, without Docker.

A client replays the two requests dockerd sends the guard for one `docker ps -a` (AuthZReq,
then AuthZRes carrying Docker's answer, ten containers' worth) on one kept-alive connection,
one after the other, against the guard's own server and against a do-nothing asyncio
protocol (the one the guard bench runs as a plugin), and, where uvloop is installed, both
again on uvloop. Client and server share one CPU, so the figure is the work itself rather
than the wake-ups across CPUs (which dominate on two and vary from run to run). The guard
bench's Docker figures are the ones that count; these show the HTTP server's share of them
steadily enough to compare two versions of it.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.guard_bench import NULL_PLUGIN
from volagent import log
from volagent.config import from_dict
from volagent.guard.plugin import Guard
from volagent.state import AgentState
from volagent.volumes.preparer import Preparer
from volagent.worker import TimedWorker

_ROOT = Path(__file__).resolve().parent.parent

PAIRS = 3000
WARM = 200
ROUNDS = 3


async def _serve_guard(path: str) -> None:
    """The guard's own server on `path`, with a mount point that is a plain directory."""
    mp = tempfile.mkdtemp()
    state = AgentState(from_dict({"rack": "r1", "mount_point": mp, "guard": {"enabled": True}}))
    state.set_mount_state("mounted")
    state.mount_dev = os.stat(mp).st_dev
    server = Guard(state, Preparer(state, TimedWorker("bench", max_threads=1))).server()
    await server.start_unix(path)
    await asyncio.Event().wait()


def serve_guard(path: str) -> None:
    """The child the bench times: real imports, so a moved module fails here, not in a string."""
    log.configure("warning")
    if os.environ.get("BENCH_UVLOOP"):
        import uvloop  # noqa: PLC0415 (optional: only where it is installed)

        uvloop.run(_serve_guard(path))
    else:
        asyncio.run(_serve_guard(path))


_NULL = NULL_PLUGIN.replace(
    "asyncio.run(main())",
    "import os\n"
    "if os.environ.get('BENCH_UVLOOP'):\n"
    "    import uvloop\n"
    "    uvloop.install()\n"
    "asyncio.run(main())",
)


def _post(path: bytes, doc: dict[str, object]) -> bytes:
    body = json.dumps(doc, separators=(",", ":")).encode()
    head = (
        b"POST %s HTTP/1.1\r\nHost: \r\nUser-Agent: Go-http-client/1.1\r\n"
        b"Content-Length: %d\r\nAccept: application/vnd.docker.plugins.v1.2+json\r\n\r\n"
    )
    return head % (path, len(body)) + body


def _requests() -> tuple[bytes, bytes]:
    call = {
        "RequestMethod": "GET",
        "RequestUri": "/v1.41/containers/json?limit=-1&all=1&size=0&trunc_cmd=0",
        "RequestHeaders": {
            "Accept": "*/*",
            "Accept-Encoding": "gzip, deflate",
            "Connection": "keep-alive",
            "User-Agent": "docker-sdk-python/7.2.0",
        },
    }
    listing = [
        {"Id": f"{i:064x}", "Names": [f"/bg-{i}"], "Image": "volagent-test", "State": "created"}
        | {"Labels": {"convox.app": "bg", "convox.service": f"s{i}"}, "Mounts": []}
        | {"Command": "true", "Created": 1700000000 + i, "Status": "Created", "Ports": []}
        for i in range(24)
    ]
    answer = json.dumps(listing).encode()  # about what Docker answers for ten containers
    res = call | {"ResponseStatusCode": 200, "ResponseBody": base64.b64encode(answer).decode()}
    return _post(b"/AuthZPlugin.AuthZReq", call), _post(b"/AuthZPlugin.AuthZRes", res)


def _answer(sock: socket.socket, buf: bytes) -> bytes:
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            length = int(buf[:end].lower().split(b"content-length:")[1].split(b"\r\n")[0])
            if len(buf) >= end + 4 + length:
                return buf[end + 4 + length :]
        data = sock.recv(65536)
        if not data:
            raise RuntimeError("the server closed the connection")
        buf += data


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _connect(server: subprocess.Popen[bytes], path: str) -> socket.socket:
    """A connection to the server once it listens: its socket file is bound a moment
    before it listens, so a connection refused is tried again."""
    deadline = time.monotonic() + 30
    while True:
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.connect(path)
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start") from None
            time.sleep(0.02)


def _run(
    command: list[str], uvloop: bool, pair: tuple[bytes, bytes], cpu: int | None = None
) -> tuple[float, float]:
    """(p50 of a pair's round trip, the server's CPU per pair), in seconds; the server runs
    on `cpu`, by default the client's."""
    base = tempfile.mkdtemp(prefix="vt-http-")
    path = os.path.join(base, "plugin.sock")
    env = dict(os.environ)
    env.pop("BENCH_UVLOOP", None)
    if uvloop:
        env["BENCH_UVLOOP"] = "1"
    if cpu is None:
        cpu = min(os.sched_getaffinity(0))
    server = subprocess.Popen(["taskset", "-c", str(cpu), *command, path], env=env, cwd=_ROOT)
    try:
        with _connect(server, path) as sock:
            buf, times = b"", []
            for i in range(WARM + PAIRS):
                if i == WARM:
                    used = _cpu(server.pid)
                started = time.perf_counter()
                for request in pair:
                    sock.sendall(request)
                    buf = _answer(sock, buf)
                if i >= WARM:
                    times.append(time.perf_counter() - started)
            used = _cpu(server.pid) - used
        return statistics.median(times), used / PAIRS
    finally:
        server.kill()
        server.wait()


def main() -> None:
    pair = _requests()
    loops = (False, True) if importlib.util.find_spec("uvloop") else (False,)
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    try:
        servers = [
            ("asyncio do-nothing protocol", [sys.executable, "-c", _NULL]),
            ("guard", [sys.executable, "-m", "bench.http_bench", "serve-guard"]),
        ]
        print(
            f"plugin request pairs (AuthZReq {len(pair[0])} B + AuthZRes {len(pair[1])} B), "
            f"{PAIRS} a run, median of {ROUNDS} runs, client and server on one CPU"
        )
        for uvloop in loops:
            for label, command in servers:
                runs = [_run(command, uvloop, pair) for _ in range(ROUNDS)]
                p50 = statistics.median(r[0] for r in runs)
                used = statistics.median(r[1] for r in runs)
                name = label + (" on uvloop" if uvloop else "")
                print(f"  {name:<38} p50 {p50 * 1e6:6.1f} us   server CPU {used * 1e6:6.1f} us")
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve-guard"]:
        serve_guard(sys.argv[2])
    else:
        main()
