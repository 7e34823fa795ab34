"""The start guard: volagent as Docker's authorization plugin (`--authorization-plugin=volagent`).

dockerd asks before every API call. `POST /containers/create` is answered only after every
directory of the container's binds under the mount point exists with its owner and mode, so
the container can never start before them; a create that would break the namespace rules,
or write to local disk because the mount is not healthy, is denied with a message saying
why and what to do. `POST /containers/{id}/start` (and restart) is judged again, from the
daemon's table of containers, and denied while the mount is unhealthy for a container that
binds under it. Everything else is allowed at once, without reading the request body.

Decisions never wait on a hung filesystem: the mount state is known in memory, and the
directory walk runs in the timed worker, so a hang becomes a deny within the timeout.

Errors in the guard's own logic never let through a request that could reach the shared
filesystem: such a request (a create that binds, inherits or mounts anything, a start of a
container that does, a local volume that binds or mounts) is denied, the error logged,
counted (`volagent_guard_decisions{result="error"}`) and shown as a status warning. Only
a request that touches nothing of it fails open: a guard that denied every Docker call on
its own bugs would turn one bug into an outage of the host. Failures of the world (a hung
filesystem, a body that cannot be read) are not bugs: they are denied.

Every start is judged afresh: the directories are walked again (no symlink followed), since
what was checked at create may have been swapped since. Starts Docker makes without asking
(restart policies, dockerd's own restart) are checked after the fact by the Docker watch
(see volumes/start_check.py and volumes/mount_check.py).

A named volume is judged where a container uses it (`-v NAME:/x`, `Mounts` of type volume,
volumes copied by VolumesFrom, at create and at start): looked up in Docker and judged by
its driver and options like a volume create, since it may have been made before volagent
ran or by a request whose body the guard never saw. A create without one looks nothing up.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from volagent import log
from volagent.guard import messages, privilege
from volagent.guard.pending import AllowedCreate, PendingCreates, request_key
from volagent.guard.protocol import (
    ACTIVATE_BODY,
    ALLOW_BODY,
    AuthzRequest,
    CreateBodyError,
    CreateRequest,
    PluginRequestError,
    Route,
    RouteKind,
    created_id,
    decision_body,
    error_body,
    parse_authz_request,
    parse_checkpoint_dir,
    parse_create_body,
    parse_exec_privileged,
    parse_volume_body,
    query_value,
    route,
)
from volagent.httpserver import HttpServer, Request, Response
from volagent.state import AgentState, ContainerRecord, VolumeRecord
from volagent.vocabulary import MountType, OnViolation, VolumeState, WhenUnhealthy
from volagent.volumes.local_volume import LocalVolume
from volagent.volumes.namespace import Bind
from volagent.volumes.preparer import Allowed, ContainerSpec, Preparer, Refused

# looks a container up in Docker by id, name or id prefix: its inspect data, None when
# Docker knows no such container
Inspect = Callable[[str], Awaitable[Mapping[str, Any] | None]]
# looks a volume up in Docker by name: its inspect data (Driver, Options), None when Docker
# knows no such volume
InspectVolume = Callable[[str], Awaitable[Mapping[str, Any] | None]]

PLUGIN_CONTENT_TYPE = "application/vnd.docker.plugins.v1.2+json"
# dockerd keeps its plugin connections open and owns their lifetime: closing one while it
# sits idle races with dockerd reusing it, and a request lost that way fails a Docker call.
IDLE_TIMEOUT_S = 24 * 3600.0
# on stop, how long idle connections stay open for dockerd to use once more and let go
IDLE_LINGER_S = 2.0
# AuthZRes carries Docker's whole JSON answer (a long `docker ps -a` included)
MAX_PLUGIN_BODY = 64 << 20
MAX_CONNECTIONS = 1024
# how long a create or start waits, just after volagent started, for the mount's state
MOUNT_SETTLE_S = 30.0


class Guard:
    """The plugin's request handler. `server()` makes the HTTP server for it."""

    def __init__(
        self,
        state: AgentState,
        preparer: Preparer,
        inspect: Inspect | None = None,
        inspect_volume: InspectVolume | None = None,
        on_activate: Callable[[], None] | None = None,
    ) -> None:
        self.state = state
        self.preparer = preparer
        # Docker's own answer to "which container is this": what a VolumesFrom names is
        # resolved there, not from what volagent remembers (a name removed or renamed a
        # moment ago, an id prefix that another container's name shadows)
        self.inspect = inspect
        # a named volume is judged by what Docker has under its name, however it was made
        self.inspect_volume = inspect_volume
        # dockerd activates its plugin when it (re)starts, once it has restarted containers
        # by their restart policy: the Docker watch is told, to check them at once
        self.on_activate = on_activate
        self.pending = PendingCreates(state)
        self.log = log.get("guard")
        self._allow = Response(200, ALLOW_BODY, PLUGIN_CONTENT_TYPE)
        self._allowed_total = state.metrics.guard_decisions.labels(result="allow")

    def server(self) -> HttpServer:
        return HttpServer(
            "guard",
            self.answer,
            max_body=MAX_PLUGIN_BODY,
            idle_timeout=IDLE_TIMEOUT_S,
            max_connections=MAX_CONNECTIONS,
            linger_idle=IDLE_LINGER_S,
        )

    # --- HTTP ---------------------------------------------------------------------------
    def answer(self, req: Request) -> Response | Awaitable[Response]:
        """The server's handler: the answer at once for every call the guard need not judge
        (nearly every Docker API call: no task, no turn of the event loop), else an
        awaitable of it."""
        if req.path == "/AuthZPlugin.AuthZRes":
            return self._on_response(req)
        if req.path == "/AuthZPlugin.AuthZReq":
            if req.method != "POST":
                return self._error(405, "use POST")
            if req.peer_uid not in (None, 0):
                return self._error(403, "only root (dockerd) may ask the start guard")
            return self._request_answer(req.body)
        if req.path == "/Plugin.Activate":
            if self.on_activate is not None:
                self.on_activate()
            return Response(200, ACTIVATE_BODY, PLUGIN_CONTENT_TYPE)
        return self._error(404, f"no such plugin endpoint {req.path}")

    async def handle(self, req: Request) -> Response:
        answer = self.answer(req)
        return answer if isinstance(answer, Response) else await answer

    def _error(self, status: int, message: str) -> Response:
        return Response(status, error_body(message), PLUGIN_CONTENT_TYPE)

    def _on_response(self, req: Request) -> Response:
        """AuthZRes: always allowed. Only a create's answer is read, for the new id."""
        body = req.body.strip()
        if not body:
            # dockerd retries a plugin call whose connection broke without rewinding the
            # body it had already sent: an empty AuthZRes is such a retry, and answers are
            # never refused, so the Docker call need not fail for it
            return self._allow
        if not (body.startswith(b"{") and body.endswith(b"}")):
            return self._error(400, "plugin request must be a JSON object")
        if b"create" not in body and b"%" not in body:
            # neither a create nor a URI with escapes (`/containers/%63reate` is routed as a
            # create too): nothing to learn, and no JSON to parse
            return self._allow
        try:
            authz = parse_authz_request(body)
            if route(authz.method, authz.uri).kind != RouteKind.CREATE or authz.body is None:
                return self._allow
            answered = authz.response_body
        except PluginRequestError as exc:
            return self._error(400, str(exc))
        allowed = self.pending.answered(request_key(authz.uri, authz.body))
        container_id = created_id(answered)
        if allowed is not None and container_id:
            self.log.debug("guard_learned", container=container_id[:12], name=allowed.spec.name)
            spec = dataclasses.replace(allowed.spec, id=container_id)
            self.preparer.adopt(spec, allowed.volumes, allowed.identity)
        return self._allow

    def _request_answer(self, raw: bytes) -> Response | Awaitable[Response]:
        """AuthZReq: allowed at once when the call is none the guard judges."""
        started = time.perf_counter()
        try:
            authz = parse_authz_request(raw)
        except PluginRequestError as exc:
            self.log.warning("guard_bad_request", error=str(exc))
            return self._error(400, str(exc))
        where = route(authz.method, authz.uri)
        if where.kind == RouteKind.OTHER or not self.state.guard.enabled:
            return self._decided(None, where, started)  # the hot path: no more than this
        if where.kind == RouteKind.UNKNOWN:
            # a route volagent does not know (a newer dockerd's): what it does cannot be
            # judged, but a body kept from the guard must not carry it
            hidden = authz.body_hidden
            what = f"{authz.method} {authz.uri[:80]} (a route volagent does not know)"
            return self._decided(
                messages.hidden_body(authz.headers, what) if hidden else None, where, started
            )
        try:
            _ = authz.body  # decoded here, so a body that is not base64 is a 400, not a bug
        except PluginRequestError as exc:
            return self._error(400, str(exc))
        return self._judge(authz, where, started)

    async def _judge(self, authz: AuthzRequest, where: Route, started: float) -> Response:
        try:
            await self._await_mount_state()
            if where.kind == RouteKind.CREATE:
                denial = await self._judge_create(authz, where)
            elif where.kind == RouteKind.VOLUME:
                denial = await self._judge_volume_create(authz)
            elif where.kind == RouteKind.SWARM:
                denial = messages.swarm()
            elif where.kind == RouteKind.PLUGIN:
                denial = messages.plugin(where.action)
            elif where.kind == RouteKind.EXEC:
                denial = await self._judge_exec(authz, where)
            elif where.kind == RouteKind.CHECKPOINT:
                denial = self._judge_checkpoint(authz, where)
            else:  # start, restart, and copies in or out of a container (its binds mounted)
                denial = await self._judge_start(authz, where)
        except Exception as exc:
            return self._failed(authz, where, exc, started)
        return self._decided(denial, where, started)

    def _decided(self, denial: str | None, where: Route, started: float) -> Response:
        st = self.state
        st.metrics.guard_seconds.observe(time.perf_counter() - started)
        if denial is None:
            st.guard.allowed += 1
            self._allowed_total.inc()
            return self._allow
        st.guard.denied += 1
        st.metrics.guard_decisions.labels(result="deny").inc()
        self.log.info(
            "guard_denied",
            action=where.kind,
            container=where.container or where.name,
            reason=denial,
        )
        return Response(200, decision_body(False, denial), PLUGIN_CONTENT_TYPE)

    def _failed(
        self, authz: AuthzRequest, where: Route, exc: Exception, started: float
    ) -> Response:
        """The guard's own code failed: deny what could reach the shared filesystem, allow
        (fail open) only what cannot."""
        st = self.state
        st.metrics.guard_seconds.observe(time.perf_counter() - started)
        st.metrics.guard_decisions.labels(result="error").inc()
        risky = self._might_reach_shared(authz, where)
        verdict = "denied it" if risky else "allowed it unchecked (it touches no shared data)"
        st.warn(
            "guard-error",
            f"the start guard failed on {authz.method} {authz.uri[:120]} and {verdict} "
            f"({type(exc).__name__}: {exc}); see the log",
        )
        self.log.exception("guard_error", action=where.kind, uri=authz.uri[:200], denied=risky)
        if not risky:
            st.guard.allowed += 1
            return self._allow
        st.guard.denied += 1
        return Response(200, decision_body(False, messages.guard_failed(exc)), PLUGIN_CONTENT_TYPE)

    def _might_reach_shared(self, authz: AuthzRequest, where: Route) -> bool:
        """Whether a request the guard failed on could reach the shared filesystem; True
        whenever that cannot be ruled out (this check failing included)."""
        try:
            body = authz.body
            if where.kind == RouteKind.CREATE:
                if body is None:
                    return True
                create = parse_create_body(body)
                return create.touches_anything or not create.privileges.plain
            if where.kind == RouteKind.VOLUME:
                vol = parse_volume_body(body) if body else None
                return vol is not None and not vol.plain
            if where.kind not in (RouteKind.START, RouteKind.ARCHIVE, RouteKind.OTHER):
                return True
            if body and body.strip() not in (b"", b"{}", b"null"):
                return True  # a start body carries a HostConfig (API below 1.24)
            known = self.state.find_container(where.container)
            # not known: what it binds cannot be ruled out
            return known is None or bool(known.volumes or known.spec)
        except Exception:
            return True

    async def _await_mount_state(self) -> None:
        """Just after a (re)start the mount reads `unmounted` until the mount manager has
        looked at it (adopting the mount already there takes a moment): judging a create
        then would deny it for nothing. Wait until the state is known: healthy, or
        unhealthy with a reason. Bounded."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(MOUNT_SETTLE_S):
                await self.state.mount_known.wait()

    # --- create -------------------------------------------------------------------------
    async def _judge_create(self, authz: AuthzRequest, where: Route) -> str | None:
        body = authz.body
        if body is None:
            return messages.hidden_body(authz.headers, "this container create")
        try:
            create = parse_create_body(body, where.name)
        except CreateBodyError as exc:
            return f"volagent cannot read this create request: {exc}"
        who = messages.who(where.name)
        spec = create.spec
        denial = await self._judge_privileges(who, create.privileges, spec.labels, spec.env)
        if denial is not None:
            return denial
        denial = await self._judge_inherited(who, create)
        if denial is not None:
            return denial
        key = request_key(authz.uri, body)  # one digest of up to 1 MiB for every use
        verdict = await self.preparer.decide_create(
            spec,
            key,
            lambda live: self.pending.reserve(key, live, spec.host_binds),
            lambda: self.pending.release(key),
        )
        if isinstance(verdict, Allowed):
            self.pending.allowed(key, AllowedCreate(spec, verdict.volumes, verdict.identity))
        return self._phrased(who, verdict, "create")

    def _phrased(self, who: str, verdict: Allowed | Refused, action: str) -> str | None:
        """The refusal in words for the one who asked; None for a verdict that allows."""
        if isinstance(verdict, Allowed):
            return None
        if verdict.rule == "violations":
            return messages.violations_of(who, verdict.outcome, self.state.config.mount_point)
        if verdict.rule == "unhealthy":
            hosts = [v.host for v in verdict.volumes]
            return messages.unhealthy(self.state.mount, who, hosts, action)
        if verdict.rule == "failed":
            return messages.failed(who, verdict.volumes, self.state.mount.state, action)
        if verdict.rule == "unlisted":
            return messages.unlisted(who, action, self.state.config.directories.timeout_s)
        return verdict.text

    async def _judge_inherited(self, who: str, create: CreateRequest) -> str | None:
        """VolumesFrom, local-driver volumes and named volumes: what the container gets
        besides its own binds. Inherited binds join the container's own, judged against its
        namespace; every named volume, its own or inherited, is judged as Docker has it."""
        devices: list[str] = []
        for vol in create.volumes:
            denial = await self._judge_local_volume(who, vol)
            if denial is not None:
                return denial
            devices += [vol.bind_device] if vol.bind_device else []
        inherited, unknown, their_volumes = await self._volumes_from(create.volumes_from)
        if unknown:
            return messages.unknown_volumes_from(who, unknown)
        if inherited:
            create.spec.inherited = tuple(Bind(v.host, v.container, v.read_only) for v in inherited)
        names = list(dict.fromkeys([*create.spec.named_volumes, *their_volumes]))
        create.spec.volume_devices = tuple(devices)
        if not names:
            return None  # the common create: no lookup at all
        create.spec.volume_names = tuple(names)
        return await self._judge_named_volumes(who, names, create.spec)

    async def _volumes_from(
        self, refs: list[str]
    ) -> tuple[list[VolumeRecord], list[str], list[str]]:
        """The binds each `name[:ro|:rw]` reference copies, as Docker resolves the name now;
        the references Docker does not know; the named volumes they copy."""
        out: list[VolumeRecord] = []
        unknown: list[str] = []
        volumes: list[str] = []
        for ref in refs:
            name, _, mode = ref.partition(":")
            source = await self._source_of(name)
            if source is None:
                unknown.append(name)
                continue
            binds, named = source
            volumes.extend(named)
            for b in binds:
                out.append(VolumeRecord(b.host, b.container, b.read_only or mode == "ro"))
        return out, unknown, volumes

    async def _source_of(self, ref: str) -> tuple[list[Bind], list[str]] | None:
        """The binds and named volumes of the container `ref` names, asked of Docker; of
        the daemon's table of containers for a guard built without Docker access. None: no
        such container."""
        if self.inspect is None:
            record = self.state.find_container(ref)
            if record is None:
                return None
            named = record.spec.named_volumes if record.spec is not None else []
            return [Bind(v.host, v.container, v.read_only) for v in record.volumes], named
        data = await self.inspect(ref)
        if data is None:
            return None
        spec = ContainerSpec.from_inspect(data)
        return list(spec.binds), spec.named_volumes

    async def _judge_named_volumes(
        self, who: str, names: list[str], spec: ContainerSpec
    ) -> str | None:
        """Each named volume judged; the devices of the bind volumes among them added to
        `spec.volume_devices` (rule 7 for host paths judges them with its binds)."""
        devices: list[str] = []
        for name in names:
            denial = await self._judge_named_volume(who, name, devices)
            if denial is not None:
                return denial
        spec.volume_devices = tuple(dict.fromkeys([*spec.volume_devices, *devices]))
        return None

    async def _judge_named_volume(self, who: str, name: str, devices: list[str]) -> str | None:
        """A named volume as Docker has it now, judged like a volume create: whatever route
        or moment made it (before volagent ran, or by a request whose body the guard never
        saw). One that does not exist yet is made by Docker at the create: a plain volume
        of the container's volume driver, or as its Mounts entry says (judged above)."""
        if self.inspect_volume is None:
            raise RuntimeError(f"volume {name[:64]} cannot be judged: Docker cannot be asked")
        self.state.metrics.volume_lookups.inc()
        data = await self.inspect_volume(name)
        if data is None:
            return None
        vol = LocalVolume.from_inspect(name, data)
        if vol is None:
            # a volume plugin's: plugins are installed by root, and what their volumes mount
            # is theirs to answer for (managed plugins are judged where they are installed)
            driver = str(data.get("Driver"))[:128]
            self.log.info("guard_plugin_volume", volume=name[:128], driver=driver)
            return None
        denial = await self._judge_local_volume(who, vol)
        devices += [vol.bind_device] if vol.bind_device else []
        return None if denial is None else messages.existing_volume(denial, name)

    async def _judge_volume_create(self, authz: AuthzRequest) -> str | None:
        if authz.body is None:
            # dockerd's handler needs a body (the CLI always sends one): one kept from the
            # guard (padded past 1 MiB, not JSON) may make a bind or mount of anything
            return messages.hidden_body(authz.headers, "this volume create")
        if not authz.body.strip():
            return None  # nothing to make: dockerd refuses it
        try:
            vol = parse_volume_body(authz.body)
        except CreateBodyError as exc:
            return f"volagent cannot read this volume create request: {exc}"
        return None if vol is None else await self._judge_local_volume("this volume", vol)

    async def _judge_local_volume(self, who: str, vol: LocalVolume) -> str | None:
        """A local-driver volume is a mount dockerd makes as root, host-wide: any container
        of any app may use it by name later. Only kinds that cannot reach the shared
        filesystem or the host pass: plain volumes, tmpfs, binds that land outside the
        shared filesystem, and NFS while the shared filesystem is not NFS itself (its
        server has many names and addresses; one of them would mount every app's data)."""
        mount = self.state.mount
        if vol.plain or (vol.type == "tmpfs" and not vol.is_bind):
            return None
        if vol.type.startswith("nfs"):
            return (
                None if mount.type == MountType.LOCAL else messages.shared_volume(who, vol, mount)
            )
        if vol.type in ("", "none") and vol.is_bind:
            device = vol.device
            if not device.startswith("/") or ".." in device.split("/") or "\x00" in device:
                return messages.volume_kind(who, vol, "its device is not a plain absolute path")
            probe = ContainerSpec(
                "", "", {}, [], "", {"Mounts": [{"Type": "bind", "Source": device, "Target": "/"}]}
            )
            if await self.preparer.judge(probe) is not None:
                return messages.shared_volume(who, vol, mount)
            return None
        return messages.volume_kind(who, vol, f"type {vol.type or '(none)'} with {vol.options}")

    # --- start --------------------------------------------------------------------------
    async def _judge_start(self, authz: AuthzRequest, where: Route) -> str | None:
        known = self.state.find_container(where.container)
        who = messages.who((known.name if known else "") or where.container)
        if where.action == "start":
            if where.legacy and authz.body_hidden:
                # below API 1.24 dockerd 25 and older apply a HostConfig from any start body
                # longer than 7 bytes, or of unknown length, that the guard may never see
                return messages.hidden_body(authz.headers, f"this start of {who}")
            if query_value(where.query, "checkpoint-dir"):
                return messages.checkpoint_dir()
        body = (authz.body or b"").strip() if where.action == "start" else b""
        if body and body not in (b"{}", b"null"):
            # API below 1.24: Docker 24 and older still apply a HostConfig sent at start
            denial = await self._judge_start_body(who, known, body, where.container)
            if denial is not None:
                return denial
        healthy = self.state.mount_healthy
        deny_violations = self.state.config.guard.violations == OnViolation.DENY
        if known is None:
            # not in the table (yet): volagent has just started and the Docker watch has not
            # looked at every container, or the answer to its create went astray. Docker
            # says what it is, and it is judged like any other: the check after the start
            # needs the watch, and the nesting rule did not see it either
            spec = await self._inspected(where.container)
            if spec is None:
                return None  # Docker knows no such container: the start fails there
            who = messages.who(spec.name or where.container)
        elif known.spec is None:
            if not known.volumes:
                return None
            if not healthy:
                hosts = [v.host for v in known.volumes]
                if self.state.config.guard.when_unhealthy == WhenUnhealthy.DENY:
                    return messages.unhealthy(self.state.mount, who, hosts, where.action)
                return None
            bad = [v for v in known.volumes if v.state == VolumeState.VIOLATION]
            return messages.violations(who, bad) if bad and deny_violations else None
        else:
            spec = known.spec
        self._note_privileged_start(where.action, who, spec)
        # its named volumes as Docker has them: the container may have been made before
        # volagent ran, or by a request the guard never saw
        names = spec.named_volumes
        if names:
            spec.volume_devices = ()  # as Docker has the volumes now
            denial = await self._judge_named_volumes(who, names, spec)
            if denial is not None:
                return denial
        return self._phrased(who, await self.preparer.decide_start(spec, healthy), where.action)

    async def _inspected(self, ref: str) -> ContainerSpec | None:
        """The container a start names that the table does not know, as Docker has it; None
        when Docker knows no such container. Raises when Docker cannot be asked (the start
        is then refused: it may bind anything)."""
        if self.inspect is None:
            raise RuntimeError(f"container {ref[:64]} is not known and Docker cannot be asked")
        data = await self.inspect(ref)
        return None if data is None else ContainerSpec.from_inspect(data)

    async def _judge_start_body(
        self, who: str, known: ContainerRecord | None, body: bytes, ref: str
    ) -> str | None:
        try:
            legacy = parse_create_body(body)
        except CreateBodyError as exc:
            return f"volagent cannot read this start request's body: {exc}"
        spec = legacy.spec
        if not legacy.privileges.plain or legacy.touches_anything:
            # the start body replaces the container's whole HostConfig; who the container
            # is (its labels and env) is Docker's, or the table's when it holds it
            if known is not None and known.spec is not None:
                spec.labels, spec.env = known.spec.labels, known.spec.env
            elif (found := await self._inspected(ref)) is not None:
                spec.labels, spec.env = found.labels, found.env
        if not legacy.privileges.plain:
            denial = await self._judge_privileges(
                who, legacy.privileges, spec.labels, spec.env, "start"
            )
            if denial is not None:
                return denial
        if not legacy.touches_anything:
            return None
        denial = await self._judge_inherited(who, legacy)
        if denial is not None:
            return denial
        # rule 7 for host paths judges the body against every container of this host
        if not await self.preparer.table_listed():
            return messages.unlisted(who, "start", self.state.config.directories.timeout_s)
        if await self.preparer.judge(spec) is not None or spec.inherited:
            return messages.legacy_start(who)
        return None

    # --- privilege ------------------------------------------------------------------------
    async def _judge_privileges(
        self,
        who: str,
        wanted: privilege.HostPrivileges,
        labels: Mapping[str, str],
        env: Sequence[str],
        action: str = "create",
    ) -> str | None:
        """The privilege policy for a container's HostConfig (see guard/privilege.py): None
        when it asks for nothing beyond Docker's defaults, names no app, or its app is in
        `[guard] privileged_apps` (then logged)."""
        if wanted.plain:
            return None
        apps = self._apps(labels, env)
        if not apps:
            return None  # not an app's container: not volagent's business
        joined = {key: await self._apps_of(ref) for key, ref in wanted.joined().items()}
        used = wanted.refused(joined, apps)
        return self._privileged(action, who, apps, used) if used else None

    def _apps(self, labels: Mapping[str, str], env: Sequence[str]) -> frozenset[str]:
        """The apps a container's app label and environment name."""
        return privilege.apps_named(labels.get(self.state.config.docker.app_label) or "", env)

    def _privileged(
        self, action: str, who: str, apps: frozenset[str], used: list[str]
    ) -> str | None:
        """The refusal of `used` for apps not all in `[guard] privileged_apps`; None when
        they are, and every privilege so allowed leaves a line in the log."""
        if not privilege.allowed_apps(apps, self.state.config.guard.privileged_apps):
            return messages.privileged(who, apps, used, action)
        self.log.warning("guard_privileged", action=action, who=who, apps=sorted(apps), uses=used)
        return None

    def _note_privileged_start(self, action: str, who: str, spec: ContainerSpec) -> None:
        """A start of a container whose stored settings use privilege: logged. Judged at
        create already; one created before the policy (or while its app was listed) is
        named in the log as not listed."""
        wanted = privilege.HostPrivileges.from_host_config(spec.host_config)
        if wanted.plain:
            return
        apps = self._apps(spec.labels, spec.env)
        if not apps:
            return
        used = wanted.refused({}, apps, ignore_joined=True)
        if self._privileged(action, who, apps, used) is not None:
            self.log.warning(
                "guard_privileged_unlisted", action=action, who=who, apps=sorted(apps), uses=used
            )

    async def _apps_of(self, ref: str) -> frozenset[str] | None:
        """The apps the container `ref` names, as Docker resolves `ref` now; None when Docker
        knows no such container."""
        spec = await self._inspected(ref)
        return None if spec is None else self._apps(spec.labels, spec.env)

    async def _judge_exec(self, authz: AuthzRequest, where: Route) -> str | None:
        """`docker exec --privileged` runs a process with every capability and no
        confinement in the container: the policy of its app decides."""
        if authz.body is None:
            return messages.hidden_body(authz.headers, "this exec create")
        try:
            wants = parse_exec_privileged(authz.body)
        except CreateBodyError as exc:
            return f"volagent cannot read this exec request: {exc}"
        if not wants:
            return None
        spec = await self._inspected(where.container)
        if spec is None:
            return None  # Docker knows no such container: the exec fails there
        who = messages.who(spec.name or where.container)
        apps = self._apps(spec.labels, spec.env)
        if not apps:
            return None
        return self._privileged("exec", who, apps, ["Privileged (docker exec --privileged)"])

    def _judge_checkpoint(self, authz: AuthzRequest, where: Route) -> str | None:
        """Checkpoints (experimental dockerd): a directory of the caller's choosing is read,
        written or deleted by dockerd as root."""
        if authz.method.upper() == "POST":
            if authz.body is None:
                return messages.hidden_body(authz.headers, "this checkpoint create")
            try:
                chosen = parse_checkpoint_dir(authz.body) if authz.body.strip() else ""
            except CreateBodyError as exc:
                return f"volagent cannot read this checkpoint request: {exc}"
        else:
            chosen = query_value(where.query, "dir")
        return messages.checkpoint_dir() if chosen else None
