"""The daemon's lifecycle: start the root tasks, serve, reload, stop.

serve -> start (socket, mount, Docker) -> ready -> main loop -> shutdown. Signal handlers
only set flags; the main loop acts on them. Root tasks are named; one that dies unexpectedly
stops the daemon with an error so systemd restarts it, instead of leaving it half-alive. The
daemon never unmounts the shared filesystem on stop: containers keep using it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import socket
import sys
from collections.abc import Coroutine
from typing import Any

from volagent import config as config_mod
from volagent import log
from volagent.api.server import StatusApi
from volagent.aws.asg import AsgReporter, instance_identity
from volagent.config import Config
from volagent.config_watch import ConfigWatch
from volagent.daemon import socket_access, systemd
from volagent.errors import ConfigError
from volagent.guard.plugin import Guard
from volagent.httpserver import HttpServer
from volagent.mount import MountManager
from volagent.rack.heartbeat import Heartbeat
from volagent.rack.registry_task import Registry
from volagent.rack.usage.recorder import UsageRecorder
from volagent.rack.usage.task import UsageWalker
from volagent.state import AgentState
from volagent.vocabulary import DockerState
from volagent.volumes.preparer import Preparer
from volagent.watch.events import DockerWatch
from volagent.worker import TimedWorker

SHUTDOWN_GRACE_S = 5.0
HOSTS_READ_S = 30.0
RACK_VIEW_READ_S = 0.9
READY_WAIT_S = 60.0


class Daemon:
    """Owns the state and every root task."""

    def __init__(self, cfg: Config, config_path: str | None) -> None:
        self.config_path = config_path
        self.state = AgentState(cfg)
        self.state.host_id = cfg.host_id or socket.gethostname()
        self.worker = TimedWorker("fs", max_threads=16)
        self.registry = Registry(self.state)
        self.preparer = Preparer(self.state, self.worker, registry=self.registry)
        self.docker = DockerWatch(self.state, self.preparer)
        self.mount = MountManager(self.state, on_healthy=self._on_mount_healthy)
        # records on the shared filesystem get threads of their own: a hung mount that holds
        # them never takes threads the directory preparation needs
        self.records_worker = TimedWorker("records", max_threads=4)
        self.heartbeat = Heartbeat(self.state, self.records_worker)
        self.usage = UsageRecorder(self.state, self.records_worker)
        # the walk's share of the namespaces is read once a pass, and may take its time: a
        # list cut short by the socket's deadline would make this host walk everything
        self.usage_walker = UsageWalker(
            self.state, hosts=functools.partial(self.heartbeat.hosts, timeout=HOSTS_READ_S)
        )
        self.asg = AsgReporter(self.state, identity=instance_identity(self.state))
        self.log = log.get("daemon")
        # flags the signal handlers set; `_wake` makes the main loop look at them at once
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._wake = asyncio.Event()
        self._died: list[asyncio.Task[Any]] = []  # root tasks that ended by themselves
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._servers: list[HttpServer] = []
        self._background: set[asyncio.Task[Any]] = set()
        self.exit_code = 0

    # --- flags set by signals -------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def request_reload(self) -> None:
        self._reload.set()
        self._wake.set()

    # --- lifecycle ----------------------------------------------------------------------
    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        self.log.info(
            "starting",
            config=self.config_path,
            mount_point=self.state.config.mount_point,
            host=self.state.host_id,
        )
        try:
            await self._start()
            await self._main_loop()
        except Exception:
            # a start that fails (the status socket cannot be made, ...): the stop's log line
            # and the exit code say so, the reason is logged with its traceback
            self.exit_code = 1
            self.log.exception("failed")
        finally:
            await self._shutdown()
        return self.exit_code

    async def _start(self) -> None:
        cfg = self.state.config
        inherited = systemd.listen_fds()
        api = StatusApi(
            self.state,
            on_reconcile=self._api_reconcile,
            on_remount=self._api_remount,
            # `?rack=1` waits up to a second: the heartbeats of a big rack take a moment
            hosts=functools.partial(self.heartbeat.hosts, timeout=RACK_VIEW_READ_S),
            usage=self.usage_walker.view,
        )
        server = api.server()
        api_sock = inherited.get("api")
        if api_sock is None:
            access = socket_access.access_for(cfg.api.socket_group)
            await server.start_unix(cfg.api.socket, mode=access.mode, group=access.gid)
            warning = access.warning
        else:
            await server.start_unix(sock=api_sock)
            warning = socket_access.check_handed_over(cfg.api.socket)
        if warning:
            self.log.warning("api_socket_access", problem=warning)
            self.state.warn("api.access", warning)
        self._servers.append(server)
        guard_sock = inherited.get("guard")
        if cfg.guard.enabled or guard_sock is not None:
            # A guard socket handed over with the guard off is still where dockerd asks:
            # answering it (allowing everything) beats every Docker call hanging there.
            guard = Guard(
                self.state,
                self.preparer,
                inspect=self.docker.inspect,
                inspect_volume=self.docker.inspect_volume,
                on_activate=self.docker.wake,
            ).server()
            await guard.start_unix(cfg.guard.plugin_socket, sock=guard_sock, mode=0o600)
            self._servers.append(guard)
            if not cfg.guard.enabled:
                self.state.warn(
                    "guard.off",
                    "[guard] enabled = false, but systemd hands over the guard socket: every "
                    "Docker call is allowed unchecked (disable volagent-guard.socket and take "
                    "volagent out of Docker's authorization-plugins, or enable the guard)",
                )
        if cfg.api.metrics_address:
            await self._serve_metrics(server, cfg.api.metrics_address)
        self._spawn("mount", self.mount.run())
        self._spawn("docker", self.docker.run())
        self._spawn("ready", self._announce_ready())
        self._spawn("heartbeat", self.heartbeat.run())
        self._spawn("usage", self.usage.run())
        self._spawn("registry", self.registry.run())
        self._spawn("usage-walk", self.usage_walker.run())
        self._spawn("asg", self.asg.run())
        watched = config_mod.config_path(self.config_path)
        self._spawn("config-watch", ConfigWatch(watched, self.reload).run())

    async def _serve_metrics(self, server: HttpServer, address: str) -> None:
        """/metrics and /v1/health over TCP too. An address it cannot listen on (the port
        taken, an address not on this host) is a warning, not a failed start: the daemon
        serves on without it, since failing would take the mount and the start guard down."""
        host, _, port = address.rpartition(":")
        try:
            await server.start_tcp(host or "127.0.0.1", int(port))
        except (OSError, ValueError) as exc:  # ValueError: a host name IDNA cannot encode
            problem = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self.log.warning(
                "metrics_listen_failed", key="api.metrics_address", address=address, error=problem
            )
            self.state.warn(
                "api.metrics_address",
                f"[api] metrics_address {address}: cannot listen ({problem}); /metrics is "
                "served on the status socket only: free the port or choose another "
                "address, then restart volagent",
            )

    def _spawn(self, name: str, coro: Coroutine[Any, Any, Any]) -> None:
        task = self._tasks[name] = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._root_task_ended)

    def _root_task_ended(self, task: asyncio.Task[Any]) -> None:
        # a root task runs as long as the daemon: one that ends before the shutdown asked
        # it to has died, and the main loop hears of it at once
        if task.get_name() != "ready" and not self.state.stopping:
            self._died.append(task)
            self._wake.set()

    async def _announce_ready(self) -> None:
        """READY=1 once the socket serves, the mount has settled once and Docker has been
        tried once (reconciled, or found absent: dockerd starts after us at boot)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(READY_WAIT_S):
                await self.docker.first_attempt_done.wait()
                await self.state.mount_known.wait()
        systemd.ready(self._status_line())
        self.log.info("ready", mount=self.state.mount.state, docker=self.state.docker.state)

    def _status_line(self) -> str:
        return (
            f"mount {self.state.mount.state}, docker {self.state.docker.state}, "
            f"{len(self.state.containers)} containers"
        )

    async def _main_loop(self) -> None:
        interval = systemd.watchdog_interval()
        tick = min(interval / 2, 1.0) if interval else 1.0
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(tick):  # the watchdog's pace, when nothing happens
                    await self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                break
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
            if self._died:
                for task in self._died:
                    exc = task.exception() if not task.cancelled() else None
                    reason = repr(exc) if exc else "cancelled"
                    self.log.error("root_task_died", task=task.get_name(), reason=reason)
                self.exit_code = 1
                return
            # fed only from here: a stuck loop stops the pings and systemd restarts us
            systemd.watchdog()
            systemd.status(self._status_line())

    async def _shutdown(self) -> None:
        systemd.stopping()
        self.state.stopping = True
        self.log.info("stopping")
        pending = [*self._tasks.values(), *self._background]
        for task in pending:
            task.cancel()
        if pending:
            _, still = await asyncio.wait(pending, timeout=SHUTDOWN_GRACE_S)
            for task in still:
                self.log.warning("task_did_not_stop", task=task.get_name())
        for server in self._servers:
            with contextlib.suppress(Exception):
                # requests begun are answered first: dockerd fails a call whose answer is lost
                drain = self.state.config.directories.timeout_s + 1.0
                async with asyncio.timeout(drain + 2.0):
                    await server.close(grace=drain)
        self.worker.close()
        self.records_worker.close()
        self.registry.worker.close()
        self.log.info("stopped", exit_code=self.exit_code)

    # --- reactions ------------------------------------------------------------------------
    def _on_mount_healthy(self) -> None:
        """The mount is (back) up: volumes left pending get their directories now."""
        self.heartbeat.wake()
        task = asyncio.create_task(self._reconcile_quietly(), name="reconcile-after-mount")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _reconcile_quietly(self) -> None:
        if self.state.docker.state != DockerState.CONNECTED:
            return  # the Docker connection reconciles by itself when it comes up
        try:
            await self.docker.reconcile()
            await self.docker.start_held()
        except Exception as exc:
            self.log.warning("reconcile_failed", reason=str(exc))

    async def _api_reconcile(self) -> dict[str, Any]:
        if self.state.docker.state != DockerState.CONNECTED:
            return {"reconciled": False, "reason": f"docker is {self.state.docker.state}"}
        result = await self.docker.reconcile()
        return {"reconciled": True, **result}

    async def _api_remount(self) -> dict[str, Any]:
        self.mount.request_remount()
        return {"remount": "requested", "mount": self.state.mount.state}

    def reload(self) -> bool:
        """Re-reads the config file. A valid config replaces the old one where it can be
        applied live; an invalid one is refused, kept out, and reported."""
        try:
            new = config_mod.load(self.config_path)
        except ConfigError as exc:
            self.state.warn(
                "config", f"config reload refused, still running on the previous config: {exc}"
            )
            self.state.metrics.config_reloads.labels(result="refused").inc()
            self.log.error("config_reload_refused", reason=str(exc))
            return False
        old = self.state.config
        fixed = _needs_restart(old, new)
        if fixed:
            self.state.warn(
                "config-restart", "changed keys need a restart to apply: " + ", ".join(fixed)
            )
        else:
            self.state.clear_warning("config-restart")
        self.state.config = new
        self.state.guard.enabled = new.guard.enabled and old.guard.enabled
        if new.host_id != old.host_id:
            # the rack view names this host by it: a new one applies with the next heartbeat
            self.state.rename(new.host_id or self.state.instance_id or socket.gethostname())
        self.state.clear_warning("config")
        log.configure(new.log_level)
        self.heartbeat.wake()  # a new heartbeat interval applies now, not after the old one
        self.mount.config_changed()  # so does a change that needs a remount
        self.state.metrics.config_reloads.labels(result="applied").inc()
        self.log.info("config_reloaded", restart_needed=fixed)
        return True


def _needs_restart(old: Config, new: Config) -> list[str]:
    """The edited keys that apply only after a restart (declared on each config field)."""
    fixed = config_mod.changed_keys(old, new, config_mod.RESTART)
    turned_on = config_mod.changed_keys(old, new, config_mod.RESTART_TO_ENABLE)
    return fixed + [k for k in turned_on if config_mod.value_of(new, k)]


def main(config_path: str | None) -> int:
    """`volagent run`: loads the config (exit 2 naming the key when invalid) and serves."""
    try:
        cfg = config_mod.load(config_path)
    except ConfigError as exc:
        print(f"volagent: invalid config: {exc}", file=sys.stderr)
        return 2
    log.configure(cfg.log_level)
    return asyncio.run(Daemon(cfg, config_path).serve())
