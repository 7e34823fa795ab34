"""A private home for the `volagent` Docker plugin, so an engine started with
`--authorization-plugin=volagent` finds the test's agent and nothing else, and no other
engine on the machine ever finds the test's agent.

dockerd looks plugins up at fixed paths (`/run/docker/plugins/NAME.sock`, then spec files in
`/etc/docker/plugins` and `/usr/lib/docker/plugins`), global to the machine. So the engine
runs in a mount namespace of its own, where a directory of the test is bound over
`/run/docker/plugins` (and empty tmpfs over the spec directories, if they exist). That bind
sits on the private root mount, so it never leaves the engine's namespace. The test's
directory itself is a shared mount, made before the namespace: everything mounted under it
later (agents' mount points, the bindfs stand-in, lazy unmounts) reaches the engine too.

`hold()` binds and listens on the plugin socket the way a systemd socket unit does, and
`HandedOverAgent` passes it to each agent process as systemd would (LISTEN_FDS=1,
LISTEN_FDNAMES=guard, LISTEN_PID of the process), so agents can come and go while dockerd
keeps connecting: connections wait in the backlog for the next agent.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
from typing import Any

from tests.testbed import mounts
from tests.testbed.agent import AgentProcess, agent_env
from tests.testbed.dockerd import Dockerd

PLUGIN = "volagent"
_ENTER = (
    "set -e; "
    "for d in /etc/docker/plugins /usr/lib/docker/plugins; do "
    '  if [ -d "$d" ]; then mount -t tmpfs -o size=1m,mode=0755 tmpfs "$d"; fi; '
    "done; "
    "mkdir -p /run/docker/plugins; "
    'mount --bind "$0" /run/docker/plugins; '
    'exec "$@"'
)
# execs the agent with the held socket as descriptor 3 and LISTEN_PID set to its own pid
_HANDOVER = (
    "import os, sys\n"
    "held = int(os.environ.pop('VOLAGENT_TEST_HELD_FD'))\n"
    "if held != 3:\n"
    "    os.dup2(held, 3)\n"
    "    os.close(held)\n"
    "os.environ['LISTEN_PID'] = str(os.getpid())\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
)


class PluginHome:
    """A shared directory with `plugins/` in it, and engines that see it as their plugins."""

    def __init__(self) -> None:
        self.base = tempfile.mkdtemp(prefix="vt-g-", dir="/tmp")
        subprocess.run(["mount", "--bind", self.base, self.base], check=True, capture_output=True)
        subprocess.run(["mount", "--make-shared", self.base], check=True, capture_output=True)
        self.plugins = os.path.join(self.base, "plugins")
        os.mkdir(self.plugins, 0o700)
        self.plugin_socket = os.path.join(self.plugins, f"{PLUGIN}.sock")
        self._held: socket.socket | None = None

    def dockerd(self, *extra_args: str, name: str = "d") -> Dockerd:
        """An engine (not started) that finds plugins in this home only; `name` is its
        directory in the home."""
        wrapper = ["unshare", "--mount", "--propagation", "unchanged", "--"]
        wrapper += ["sh", "-c", _ENTER, self.plugins]
        return Dockerd(extra_args, base_dir=os.path.join(self.base, name), wrapper=wrapper)

    def hold(self) -> socket.socket:
        """The plugin socket, bound and listening here for the whole life of the home."""
        if self._held is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.plugin_socket)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(self.plugin_socket)
            os.chmod(self.plugin_socket, 0o600)
            sock.listen(512)
            self._held = sock
        return self._held

    def agent(self, docker_url: str, *, handed_over: bool = True, **kwargs: Any) -> AgentProcess:
        """An agent (not started) with its files in this home and the guard on."""
        config = dict(kwargs.pop("config", None) or {})
        config["guard"] = {
            "enabled": True,
            "plugin_socket": self.plugin_socket,
            **config.get("guard", {}),
        }
        if handed_over:
            return HandedOverAgent(
                self.hold(), docker_url, parent_dir=self.base, config=config, **kwargs
            )
        return AgentProcess(docker_url, parent_dir=self.base, config=config, **kwargs)

    def close(self) -> None:
        if self._held is not None:
            self._held.close()
            self._held = None
        mounts.remove_tree(self.base)  # the shared bind of the base included


class HandedOverAgent(AgentProcess):
    """An agent that gets its guard socket from the test, as from a systemd socket unit."""

    def __init__(self, held: socket.socket, docker_url: str, **kwargs: Any) -> None:
        super().__init__(docker_url, **kwargs)
        self.held = held

    def spawn(self) -> subprocess.Popen[bytes]:
        assert not self.running, "the agent is already running"
        fd = self.held.fileno()
        env = agent_env(
            {"LISTEN_FDS": "1", "LISTEN_FDNAMES": "guard", "VOLAGENT_TEST_HELD_FD": str(fd)}
        )
        argv = [sys.executable, "-c", _HANDOVER, "-m", "volagent"]
        argv += ["--config", self.config_path, "run"]
        with open(self.log_path, "ab") as out, open(self.err_path, "ab") as err:
            self.proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.base,
                pass_fds=(fd,),
            )
        self.starts += 1
        return self.proc
