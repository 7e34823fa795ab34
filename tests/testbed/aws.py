"""AWS for the test bed, all on loopback: a moto server for the EFS and EC2 APIs, an IMDSv2
emulator whose failures the tests control, and an "NFS port" listener for the TCP check.

A pytest plugin of the suite (tests/conftest.py's `pytest_plugins`): its fixtures are
there for any test by name; its helpers are imported as usual (benchmarks use them too).
"""

from __future__ import annotations

import errno
import random
import secrets
import socket
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest

REGION = "us-east-1"
ZONE = "us-east-1a"
OTHER_ZONE = "us-east-1b"
INSTANCE_ID = "i-0123456789abcdef0"
RACK_TAG = ("convox:rack", "myrack")


def zone_id(zone: str) -> str:
    """The AZ ID moto gives a zone name, read from moto's own table."""
    from moto.ec2.models.availability_zones_and_regions import RegionsAndZonesBackend

    for z in RegionsAndZonesBackend.zones[zone[:-1]]:
        if z.name == zone:
            return str(z.zone_id)
    raise KeyError(zone)


# --- moto --------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """A moto server on 127.0.0.1 for the session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def moto_reset(url: str) -> None:
    req = urllib.request.Request(f"{url}/moto-api/reset", method="POST", data=b"")
    with urllib.request.urlopen(req, timeout=10) as resp:
        resp.read()


# --- the NFS port --------------------------------------------------------------------------
def _listener(address: str) -> socket.socket | None:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((address, 2049))
    except OSError as exc:
        s.close()
        if exc.errno == errno.EADDRINUSE:
            return None
        raise
    s.listen(64)
    return s


def _refuses(address: str) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((address, 2049)) == errno.ECONNREFUSED


@dataclass
class NfsPorts:
    """`open_ip` listens on 2049 (an answering mount target), `closed_ip` refuses."""

    open_ip: str
    closed_ip: str


def open_nfs_port() -> tuple[str, socket.socket]:
    """Listens on port 2049 of a free random address in 127.0.2.0/24 (another test run on
    this host may hold one); returns the address and the listening socket to close."""
    rng = random.Random()  # noqa: S311 - picking test addresses, not secrets
    for _ in range(50):
        ip = f"127.0.2.{rng.randrange(10, 240)}"
        sock = _listener(ip)
        if sock is not None:
            return ip, sock
    raise RuntimeError("no free address for the NFS port listener")


@pytest.fixture(scope="session")
def nfs_ports() -> Iterator[NfsPorts]:
    open_ip, sock = open_nfs_port()
    rng = random.Random()  # noqa: S311 - as above
    candidates = [f"127.0.2.{n}" for n in rng.sample(range(10, 240), 20)]
    closed_ip = next(ip for ip in candidates if ip != open_ip and _refuses(ip))
    try:
        yield NfsPorts(open_ip, closed_ip)
    finally:
        sock.close()


# --- the EFS world in moto -------------------------------------------------------------------
@dataclass
class EfsWorld:
    """A VPC of 127.0.0.0/16 with subnets in two zones, and what tests add to it."""

    url: str
    efs: Any
    ec2: Any
    subnets: dict[str, str] = field(default_factory=dict)

    def file_system(self, tags: dict[str, str] | None = None) -> str:
        tag_list = [{"Key": k, "Value": v} for k, v in (tags or {}).items()]
        fs = self.efs.create_file_system(CreationToken=secrets.token_hex(8), Tags=tag_list)
        return str(fs["FileSystemId"])

    def mount_target(self, fs_id: str, ip: str, zone: str = ZONE) -> str:
        mt = self.efs.create_mount_target(
            FileSystemId=fs_id, SubnetId=self.subnets[zone], IpAddress=ip
        )
        return str(mt["MountTargetId"])


@pytest.fixture
def efs_world(moto_url: str) -> EfsWorld:
    """A fresh moto state with the VPC and subnets; the test adds filesystems."""
    moto_reset(moto_url)
    kw: dict[str, Any] = {"region_name": REGION, "endpoint_url": moto_url}
    world = EfsWorld(moto_url, boto3.client("efs", **kw), boto3.client("ec2", **kw))
    vpc = world.ec2.create_vpc(CidrBlock="127.0.0.0/16")["Vpc"]["VpcId"]
    for n, zone in enumerate((ZONE, OTHER_ZONE), start=2):
        sub = world.ec2.create_subnet(VpcId=vpc, CidrBlock=f"127.0.{n}.0/24", AvailabilityZone=zone)
        world.subnets[zone] = sub["Subnet"]["SubnetId"]
    return world


# --- IMDSv2 ----------------------------------------------------------------------------------
class Imds:
    """An IMDSv2 emulator on 127.0.0.1. `down()` closes the port (connection refused) and
    `up()` opens it again on the same port; `fail_next(n, status)` answers errors."""

    def __init__(self, zone: str = ZONE, instance_id: str = INSTANCE_ID) -> None:
        self.values = {
            "placement/availability-zone": zone,
            "placement/availability-zone-id": zone_id(zone),
            "placement/region": zone[:-1],
            "instance-id": instance_id,
        }
        self.tokens: set[str] = set()
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.failures: list[int] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        imds = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: str = "") -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _failure(self) -> int:
                with imds._lock:
                    imds.requests.append(
                        (self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
                    )
                    return imds.failures.pop(0) if imds.failures else 0

            def do_PUT(self) -> None:
                if status := self._failure():
                    return self._answer(status)
                ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
                if self.path != "/latest/api/token" or not ttl.isdigit():
                    return self._answer(400)
                token = secrets.token_hex(16)
                imds.tokens.add(token)
                return self._answer(200, token)

            def do_GET(self) -> None:
                if status := self._failure():
                    return self._answer(status)
                if self.headers.get("X-aws-ec2-metadata-token") not in imds.tokens:
                    return self._answer(401)
                key = self.path.removeprefix("/latest/meta-data/")
                if key in imds.values:
                    return self._answer(200, imds.values[key])
                return self._answer(404, "Not Found")

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def reserve(self) -> None:
        """Picks the port without serving, so a test can start with IMDS down."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]

    def fail_next(self, n: int, status: int = 500) -> None:
        with self._lock:
            self.failures.extend([status] * n)

    def gets(self) -> list[str]:
        return [p for m, p, _ in self.requests if m == "GET"]


@pytest.fixture
def imds() -> Iterator[Imds]:
    emulator = Imds()
    emulator.up()
    try:
        yield emulator
    finally:
        emulator.down()


def standin_resolver(table: dict[str, str]) -> Any:
    """A resolver for the stand-in world: names in `table` resolve, nothing else does (the
    real DNS is never asked)."""

    def resolve(name: str) -> list[str]:
        return [table[name]] if name in table else []

    return resolve


__all__ = [
    "OTHER_ZONE",
    "REGION",
    "ZONE",
    "EfsWorld",
    "Imds",
    "NfsPorts",
    "efs_world",
    "imds",
    "moto_url",
    "nfs_ports",
    "standin_resolver",
    "zone_id",
]
