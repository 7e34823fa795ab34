"""What the start guard tells whoever ran `docker run` when it says no: what is wrong, and
what to do about it. dockerd shows the text as `authorization denied by plugin volagent: ...`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from volagent.guard.protocol import MAX_FORWARDED_BODY, header
from volagent.state import MountStatus, VolumeRecord
from volagent.volumes.local_volume import LocalVolume
from volagent.volumes.preparer import Outcome

_DONE = {
    "start": "started",
    "restart": "restarted",
    "create": "created",
    "archive": "copied to or from",  # docker cp mounts the container's binds again
    "copy": "copied from",
}


def who(name: str) -> str:
    return f"container {name}" if name else "this container"


def unhealthy(mount: MountStatus, who: str, hosts: list[str], action: str) -> str:
    why = f" ({mount.error})" if mount.error else ""
    unique = sorted(set(hosts))
    shown = ", ".join(unique[:3]) + (" ..." if len(unique) > 3 else "")
    return (
        f"volagent: the shared filesystem at {mount.mount_point} is {mount.state}{why}; "
        f"{who} binds {shown} there, so it is not {_DONE.get(action, 'created')}: its data "
        "would go to the local disk or hang. Retry once `volagent status` shows the mount "
        'mounted; to let such containers through anyway set [guard] when_unhealthy = "allow".'
    )


def violations(who: str, bad: list[VolumeRecord], namespace: str = "") -> str:
    reasons = "; ".join(f"{v.host}: {v.error}" for v in bad[:3])
    where = f" ({namespace}/<service>/...)" if namespace else ""
    return (
        f"volagent: {who} breaks the volume namespace rules: {reasons}. Bind only paths "
        f"under its own app's namespace{where}; `volagent paths --app APP --service "
        "SERVICE PATH` prints them."
    )


def violations_of(who: str, outcome: Outcome, mount_point: str) -> str:
    ident = outcome.identity
    ns = f"{mount_point.rstrip('/')}/{ident.namespace}" if ident.app and ident.rack else ""
    return violations(who, outcome.violations, ns)


def failed(who: str, bad: list[VolumeRecord], mount_state: str, action: str) -> str:
    reasons = "; ".join(f"{v.error}" for v in bad[:3])
    return (
        f"volagent could not prepare the directories of {who}: {reasons} (mount "
        f"{mount_state}). The container was not {_DONE.get(action, 'created')}; check "
        "`volagent status` and retry."
    )


def unlisted(who: str, action: str, timeout_s: float) -> str:
    return (
        f"volagent has not finished listing this host's containers (it has just started; "
        f"waited {timeout_s:g}s): whether the binds of {who} nest another container's "
        f"cannot be judged yet (rule 7). The container was not {_DONE.get(action, 'created')}; "
        "retry in a moment, and check `volagent status` if it lasts."
    )


def hidden_body(headers: Mapping[str, str], what: str) -> str:
    ctype = header(headers, "Content-Type") or "none"
    length = header(headers, "Content-Length") or "none (chunked?)"
    return (
        f"volagent cannot judge {what}: its body did not reach the start guard. dockerd "
        "passes a request body to authorization plugins only when it is application/json "
        f"with a Content-Length under {MAX_FORWARDED_BODY} bytes (1 MiB); this one had "
        f"Content-Type {ctype}, Content-Length {length}. A request body over 1 MiB (or not "
        "application/json) cannot be judged, so it is refused: send it as JSON under 1 MiB "
        "with a Content-Length, as the docker CLI does."
    )


def privileged(who: str, apps: Iterable[str], used: list[str], action: str = "create") -> str:
    names = ", ".join(sorted(apps))
    shown = "; ".join(used[:6]) + (" ..." if len(used) > 6 else "")
    verb = "execs with" if action == "exec" else "asks for"
    return (
        f"volagent: {who} (app {names}) {verb} {shown}: privilege, host namespaces, added "
        "capabilities, devices and unconfined security options are refused for app "
        "containers (with them a container reaches other apps' data and the host). Drop "
        "these settings; if the app really needs them (a CI builder that runs Docker "
        f"itself), add it to [guard] privileged_apps in the volagent config (privileged_apps "
        f'= ["{sorted(apps)[0]}"]).'
    )


def plugin(action: str) -> str:
    return (
        f"volagent: `docker plugin {action}` is refused while the start guard is on: a "
        "managed plugin runs as root with the host mounts, devices and capabilities it "
        "declares, where the guard cannot judge them. Install and configure plugins when "
        "the host is built (before dockerd is started with the guard); installed plugins "
        "keep working."
    )


def checkpoint_dir() -> str:
    return (
        "volagent: a checkpoint directory of one's own is refused while the start guard is "
        "on: dockerd reads, writes and deletes it as root, anywhere on the host. Use the "
        "container's own checkpoint directory (leave out --checkpoint-dir)."
    )


def unknown_volumes_from(who: str, refs: list[str]) -> str:
    shown = ", ".join(refs[:3]) + (" ..." if len(refs) > 3 else "")
    return (
        f"volagent: {who} takes volumes from {shown}, which volagent does not know, so it "
        "cannot judge what they bind. Create the source container first (through this "
        "Docker), then this one."
    )


def shared_volume(who: str, vol: LocalVolume, mount: MountStatus) -> str:
    if vol.is_bind:
        what = f"binds {vol.device}: that reaches the shared filesystem at {mount.mount_point}"
    else:
        what = (
            f"mounts NFS from {vol.nfs_server or vol.device}: on a host whose shared filesystem "
            f"is NFS ({mount.source or mount.type}), that may be the rack's filesystem"
        )
    name = f" {vol.name}" if vol.name else ""
    return (
        f"volagent: {who} uses local volume{name}, which {what}, around the namespace rules "
        "(volumes are host-wide, any app could use it). Bind the app's own directory "
        f"instead: `-v {mount.mount_point.rstrip('/')}/<rack>-<app>/<service>/<path>:"
        "<container path>`."
    )


def volume_kind(who: str, vol: LocalVolume, what: str) -> str:
    name = f" {vol.name}" if vol.name else ""
    return (
        f"volagent: {who} uses local volume{name} ({what}): a mount dockerd makes as root, "
        "host-wide, that volagent cannot judge. The start guard allows local volumes that are "
        "plain, tmpfs, or binds of absolute paths outside the shared filesystem."
    )


def existing_volume(denial: str, name: str) -> str:
    """A named volume's refusal: it exists already, made before or around the guard."""
    return (
        f"{denial} The volume {name} exists already (made before volagent judged it, or by "
        "a request it could not see): root can remove it with `docker volume rm "
        f"{name}`."
    )


def swarm() -> str:
    return (
        "volagent: swarm services and swarm membership are refused while the start guard is "
        "on: the containers of a service never pass the guard, so their mounts could not be "
        "judged. Run containers through the rack's scheduler instead."
    )


def legacy_start(who: str) -> str:
    return (
        f"volagent: {who} is started with binds in the start request (a HostConfig in the "
        "body, Docker API below 1.24). Binds are judged at create only: give them when "
        "creating the container, and use API 1.24 or later."
    )


def guard_failed(exc: Exception) -> str:
    return (
        "volagent: the start guard failed while judging this request "
        f"({type(exc).__name__}: {str(exc)[:200]}), and it reaches the shared filesystem, so "
        "it is refused rather than let through unchecked. Retry; if it keeps failing, see "
        "`volagent status` and the log."
    )
