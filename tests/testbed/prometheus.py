"""A real Prometheus server for tests: Debian's `prometheus` on 127.0.0.1 with a data
directory of its own, scraping given targets every second and evaluating given rule files,
and a small client of its HTTP API."""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

READY_TIMEOUT_S = 60.0
BIND_ATTEMPTS = 5
_ADDRESS_IN_USE = b"bind: address already in use"


class PortTaken(Exception):
    """The port the server was given was taken before it could listen there."""


def free_port() -> int:
    """A port of 127.0.0.1 nothing listens on, below the range the kernel gives outgoing
    connections (ip_local_port_range), so none of the tests' own connections takes it
    between now and the listener's bind (a port the kernel picks for bind(0) is of that
    range)."""
    low = _ephemeral_low()
    for _ in range(100):
        port = random.randrange(max(1024, low - 10000), low)  # noqa: S311 - not a secret
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", port))
            return port
    raise OSError(f"no free port of 127.0.0.1 below {low}")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


class PrometheusServer:
    """`prometheus` scraping `targets` in job `job` every second, each target with the labels
    `target_labels` gives it (as a scrape config's static labels or relabelling would)."""

    def __init__(
        self,
        base: Path,
        targets: list[str],
        rule_files: list[Path],
        job: str = "volagent",
        target_labels: dict[str, dict[str, str]] | None = None,
    ) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise FileNotFoundError("prometheus is not installed (Debian package prometheus)")
        self.binary = binary
        self.base = base
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        base.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [
                {
                    "job_name": job,
                    "scrape_timeout": "1s",
                    "static_configs": [
                        {"targets": [target], "labels": (target_labels or {}).get(target, {})}
                        for target in targets
                    ],
                }
            ],
        }
        self.config_path = base / "prometheus.yml"
        self.config_path.write_text(json.dumps(config))  # JSON is YAML
        self.log_path = base / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrometheusServer:
        """Starts the server and waits until it is ready. The port `free_port` found free may
        still be taken by another listener before the server binds it: then it starts again
        on another one, a few times."""
        for _ in range(BIND_ATTEMPTS - 1):
            try:
                return self._start()
            except PortTaken:
                self.port = free_port()
                self.url = f"http://127.0.0.1:{self.port}"
        return self._start()

    def _start(self) -> PrometheusServer:
        logged = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.base / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--web.enable-lifecycle",
                ],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                cwd=self.base,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if _ADDRESS_IN_USE in self.log_path.read_bytes()[logged:]:
                    raise PortTaken(self.port)
                raise AssertionError(f"prometheus exited at start:\n{self.log()}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp,
            ):
                if resp.status == 200:
                    return self
            time.sleep(0.2)
        raise AssertionError(f"prometheus not ready in {READY_TIMEOUT_S:g}s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(20)

    def log(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    # --- the HTTP API ----------------------------------------------------------------------
    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as resp:
            doc = json.loads(resp.read())
        assert doc["status"] == "success", doc
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of `expr` now (a scalar comes back as one series)."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def firing(self, alertname: str) -> list[dict[str, str]]:
        """The labels of every firing alert of that name."""
        alerts = self.api("alerts")["alerts"]
        return [
            a["labels"]
            for a in alerts
            if a["labels"].get("alertname") == alertname and a["state"] == "firing"
        ]

    def targets_up(self) -> int:
        return sum(1 for s in self.query('up{job="volagent"} == 1'))
