"""The agent as a real process: a temporary config, a mount point and a local filesystem of
its own, `python -m volagent --config PATH run`, and a finalizer that stops it and unmounts
what it mounted (the agent never unmounts on stop, by design, so the test bed must).

The "local" filesystem is a tmpfs, so a directory on the mount has another st_dev than the
directory underneath the mount point, and the tests can tell them apart.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import tomli_w

from tests.testbed import mounts, unixhttp

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
CLOSED_PORT_URL = "http://127.0.0.1:9"  # loopback discard port: nothing listens, fails fast

Document = dict[str, Any]


def agent_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a volagent process in tests: AWS pointed at loopback with fake
    credentials, nothing inherited that would pick another config or socket."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "VOLAGENT_", "BOTO_")) and k != "NOTIFY_SOCKET"
    }
    env.update(
        {
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": CLOSED_PORT_URL,
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


def volagent_cli(
    args: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Runs `python -m volagent ARGS` to completion; stdout and stderr as text."""
    return subprocess.run(
        [sys.executable, "-m", "volagent", *args],
        capture_output=True,
        text=True,
        env=agent_env(env),
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def toml_text(data: Mapping[str, Any]) -> str:
    return tomli_w.dumps(dict(data))


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


class AgentFailed(AssertionError):
    """The agent died or did not answer; the message carries its log and stderr."""


class AgentProcess:
    """One volagent daemon with private paths under `base`."""

    def __init__(
        self,
        docker_url: str,
        rack: str = "r1",
        config: Mapping[str, Any] | None = None,
        local_tmpfs: bool = True,
        parent_dir: str = "/tmp",
    ) -> None:
        self.base = tempfile.mkdtemp(prefix="vt-a-", dir=parent_dir)
        self.rack = rack
        self.mount_point = os.path.join(self.base, "mp")
        self.local_path = os.path.join(self.base, "local")
        self.state_dir = os.path.join(self.base, "state")
        self.socket_path = os.path.join(self.base, "api.sock")
        self.config_path = os.path.join(self.base, "agent.toml")
        self.log_path = os.path.join(self.base, "agent.log")
        self.err_path = os.path.join(self.base, "agent.err")
        for d in (self.mount_point, self.local_path, self.state_dir):
            os.makedirs(d, exist_ok=True)
        if local_tmpfs:
            mounts.mount_tmpfs(self.local_path)
        self.config: dict[str, Any] = _merge(
            {
                "rack": rack,
                "host_id": "test-host",
                "mount_point": self.mount_point,
                "state_dir": self.state_dir,
                "log_level": "debug",
                "mount": {
                    "type": "local",
                    "local_path": self.local_path,
                    "probe_interval_s": 0.5,
                    "probe_timeout_s": 2,
                },
                "aws": {"imds_endpoint": CLOSED_PORT_URL, "endpoint_url": CLOSED_PORT_URL},
                "docker": {"url": docker_url},
                # a group every Debian host has, so test agents need no group made for them
                "api": {"socket": self.socket_path, "socket_group": "nogroup"},
                "guard": {
                    "enabled": False,
                    "plugin_socket": os.path.join(self.base, "plugin.sock"),
                },
            },
            config or {},
        )
        self.write_config()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # --- lifecycle -----------------------------------------------------------------------
    def write_config(self, text: str | None = None) -> None:
        with open(self.config_path, "w", encoding="utf-8") as f:
            f.write(text if text is not None else toml_text(self.config))

    def ns(self, app: str, *rest: str) -> str:
        """`<mp>/<rack>-<app>/rest...`, a host path in an app's namespace."""
        return os.path.join(self.mount_point, f"{self.rack}-{app}", *rest)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the agent was never started"
        return self.proc.pid

    def spawn(self) -> subprocess.Popen[bytes]:
        """Starts the process without waiting for it to answer."""
        assert not self.running, "the agent is already running"
        with open(self.log_path, "ab") as out, open(self.err_path, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "volagent", "--config", self.config_path, "run"],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=agent_env(),
                cwd=self.base,
            )
        self.starts += 1
        return self.proc

    def start(self, timeout: float = START_TIMEOUT_S) -> AgentProcess:
        """Starts the agent and waits until its socket answers /v1/health (200 or 503)."""
        self.spawn()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise AgentFailed(f"the agent exited at start\n{self.diagnostics()}")
            with contextlib.suppress(OSError, ValueError):
                status, _ = unixhttp.get_json(self.socket_path, "/v1/health", timeout=2)
                if status in (200, 503):
                    return self
            time.sleep(0.05)
        raise AgentFailed(f"no answer on {self.socket_path} in {timeout:g}s\n{self.diagnostics()}")

    def wait_exit(self, timeout: float = STOP_TIMEOUT_S) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, then waits for the exit; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> int:
        """SIGKILL: no goodbye, no cleanup, as in a crash or an OOM kill."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait(STOP_TIMEOUT_S)

    def restart(self) -> AgentProcess:
        self.stop()
        return self.start()

    def close(self) -> None:
        """Ends the process, unmounts the mount point and the local filesystem, removes all."""
        try:
            if self.running:
                try:
                    self.stop()
                except subprocess.TimeoutExpired:
                    self.kill()
        finally:
            mounts.umount_lazy(self.mount_point)
            mounts.remove_tree(self.base)

    # --- the local API -------------------------------------------------------------------
    def health(self) -> tuple[int, Document]:
        status, doc = unixhttp.get_json(self.socket_path, "/v1/health")
        return status, doc

    def status(self) -> Document:
        status, doc = unixhttp.get_json(self.socket_path, "/v1/status")
        assert status == 200, f"/v1/status answered {status}: {doc}"
        assert isinstance(doc, dict)
        return doc

    def metric(self, name: str, labels: str = "") -> float:
        """One sample of `/metrics` (`labels` as written there, `{a="b"}`); 0 when absent."""
        _, body = unixhttp.request(self.socket_path, "GET", "/metrics")
        pattern = re.compile(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", re.M)
        match = pattern.search(body.decode())
        return float(match.group(1)) if match else 0.0

    def wait_for(
        self, predicate: Callable[[Document], Any], timeout: float = 60, what: str = ""
    ) -> Document:
        """Polls the status document until predicate(doc) is true; returns that document."""
        deadline = time.monotonic() + timeout
        doc: Document = {}
        while True:
            if not self.running:
                raise AgentFailed(f"the agent died waiting for {what}\n{self.diagnostics()}")
            with contextlib.suppress(OSError, ValueError):
                doc = self.status()
                if predicate(doc):
                    return doc
            if time.monotonic() > deadline:
                shown = json.dumps(doc, indent=1)[-4000:]
                raise AgentFailed(
                    f"timed out after {timeout:g}s waiting for {what or predicate}\n"
                    f"last status: {shown}\n{self.diagnostics()}"
                )
            time.sleep(0.05)

    # --- logs ----------------------------------------------------------------------------
    def log_events(self) -> list[Document]:
        """The JSON log lines written so far (lines that are not JSON are skipped)."""
        out = []
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                with contextlib.suppress(ValueError):
                    item = json.loads(line)
                    if isinstance(item, dict):
                        out.append(item)
        return out

    def diagnostics(self, lines: int = 40) -> str:
        parts = []
        for label, path in (("stdout", self.log_path), ("stderr", self.err_path)):
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    tail = "".join(f.readlines()[-lines:])
            except OSError:
                tail = "(none)"
            parts.append(f"--- agent {label} ---\n{tail}")
        return "\n".join(parts)


# --- reading the status document -----------------------------------------------------------
def volumes(doc: Document) -> dict[str, Document]:
    """host path -> volume entry, over every container of the document."""
    return {v["host"]: v for c in doc.get("containers", []) for v in c.get("volumes", [])}


def container(doc: Document, container_id: str) -> Document | None:
    for c in doc.get("containers", []):
        if c.get("id") == container_id or container_id.startswith(str(c.get("id")) or "-"):
            return dict(c)
    return None


def volume_states(doc: Document, container_ids: Sequence[str]) -> dict[str, list[str]]:
    """container id -> its volumes' states ([] when the agent does not know it)."""
    out = {}
    for cid in container_ids:
        c = container(doc, cid)
        out[cid] = [v["state"] for v in c["volumes"]] if c else []
    return out


def all_in(doc: Document, container_ids: Sequence[str], states: Sequence[str]) -> bool:
    """Every given container is known and every one of its volumes is in `states`."""
    found = volume_states(doc, container_ids)
    return all(s and all(x in states for x in s) for s in found.values())
