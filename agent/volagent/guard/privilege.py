"""The privilege policy for app containers, as pure functions: which settings of a container's
HostConfig (or of an exec) give it more than Docker's default confinement.

An app container with any of them can reach past its own namespace without a single bind:
`--pid=host` reads another container's files through `/proc/<pid>/root`, `CAP_SYS_ADMIN`
with apparmor and seccomp unconfined mounts filesystems, a device node is the disk under
every app's data. Containers that name an app get none of them unless the app is listed in
`[guard] privileged_apps`. The caller resolves what Docker would resolve (the container a
`container:<id>` namespace joins) and says which apps a container names.

Values are compared the way dockerd and runc compare them (exact mode strings, capability
names upper-cased with or without `CAP_`, security options split on `=` or else `:`,
sysctl names with `/` as separator), so no other spelling slips past.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# moby's oci/caps/defaults.go, the same from Docker 20.10 to 27
DEFAULT_CAPABILITIES = frozenset(
    {
        "CHOWN",
        "DAC_OVERRIDE",
        "FSETID",
        "FOWNER",
        "MKNOD",
        "NET_RAW",
        "SETGID",
        "SETUID",
        "SETFCAP",
        "SETPCAP",
        "NET_BIND_SERVICE",
        "SYS_CHROOT",
        "KILL",
        "AUDIT_WRITE",
    }
)
# The paths Docker masks and makes read-only by default (moby's oci/defaults.go, 20.10; later
# versions add to them). A HostConfig that sends its own list replaces Docker's, so a list
# without these (`--security-opt systempaths=unconfined` sends empty ones) opens /proc and /sys.
DEFAULT_MASKED_PATHS = frozenset(
    {
        "/proc/asound",
        "/proc/acpi",
        "/proc/kcore",
        "/proc/keys",
        "/proc/latency_stats",
        "/proc/timer_list",
        "/proc/timer_stats",
        "/proc/sched_debug",
        "/proc/scsi",
        "/sys/firmware",
    }
)
DEFAULT_READONLY_PATHS = frozenset(
    {"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}
)
# runc's validator: the sysctls that live in a container's own IPC namespace
IPC_SYSCTLS = frozenset(
    {
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    }
)
# namespace modes that keep the container's own namespace (anything else Docker refuses, or
# is `host`, or joins another container's: `container:<id>`)
OWN_MODES = {
    "PidMode": frozenset({""}),
    "IpcMode": frozenset({"", "private", "shareable", "none"}),
    "UsernsMode": frozenset({""}),
    "CgroupnsMode": frozenset({"", "private"}),
}
JOINABLE = ("PidMode", "IpcMode")
# a container id as Docker makes them: a name or shorter prefix is resolved again at start
FULL_ID_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class HostPrivileges:
    """The settings of a HostConfig that can grant privilege, as Docker reads them."""

    privileged: bool = False
    modes: tuple[tuple[str, str], ...] = ()  # (PidMode|IpcMode|UsernsMode|CgroupnsMode, value)
    network_mode: str = ""
    uts_mode: str = ""
    cap_add: tuple[str, ...] = ()
    devices: int = 0
    device_requests: int = 0
    device_cgroup_rules: int = 0
    security_opt: tuple[str, ...] = ()
    sysctls: tuple[str, ...] = ()
    masked_paths: tuple[str, ...] | None = None  # None: Docker's default list
    readonly_paths: tuple[str, ...] | None = None

    def to_host_config(self) -> dict[str, Any]:
        """These settings under their HostConfig keys, as `docker inspect` shows them."""
        return {
            "Privileged": self.privileged,
            **dict(self.modes),
            "NetworkMode": self.network_mode,
            "UTSMode": self.uts_mode,
            "CapAdd": list(self.cap_add),
            "Devices": [{}] * self.devices,
            "DeviceRequests": [{}] * self.device_requests,
            "DeviceCgroupRules": [""] * self.device_cgroup_rules,
            "SecurityOpt": list(self.security_opt),
            "Sysctls": dict.fromkeys(self.sysctls, ""),
            "MaskedPaths": None if self.masked_paths is None else list(self.masked_paths),
            "ReadonlyPaths": None if self.readonly_paths is None else list(self.readonly_paths),
        }

    @classmethod
    def from_host_config(cls, hc: Mapping[str, Any]) -> HostPrivileges:
        """The settings of a HostConfig as Docker stores it (`docker inspect`), for the log
        of a start. Docker fills in CgroupnsMode itself (`host` on cgroup v1 hosts), so it
        is left out."""

        def text(key: str) -> str:
            value = hc.get(key)
            return value if isinstance(value, str) else ""

        def strings(key: str) -> tuple[str, ...]:
            value = hc.get(key)
            return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()

        def count(key: str) -> int:
            value = hc.get(key)
            return len(value) if isinstance(value, list) else 0

        def paths(key: str) -> tuple[str, ...] | None:
            return None if hc.get(key) is None else strings(key)

        sysctls = hc.get("Sysctls")
        return cls(
            privileged=hc.get("Privileged") is True,
            modes=tuple((key, text(key)) for key in ("PidMode", "IpcMode", "UsernsMode")),
            network_mode=text("NetworkMode"),
            uts_mode=text("UTSMode"),
            cap_add=strings("CapAdd"),
            devices=count("Devices"),
            device_requests=count("DeviceRequests"),
            device_cgroup_rules=count("DeviceCgroupRules"),
            security_opt=strings("SecurityOpt"),
            sysctls=tuple(sysctls) if isinstance(sysctls, Mapping) else (),
            masked_paths=paths("MaskedPaths"),
            readonly_paths=paths("ReadonlyPaths"),
        )

    def mode(self, key: str) -> str:
        return dict(self.modes).get(key, "")

    def joined(self) -> dict[str, str]:
        """The containers whose namespaces this one joins: {"PidMode": "<ref>", ...}."""
        modes = {key: self.mode(key).partition(":") for key in JOINABLE}
        return {key: ref for key, (kind, sep, ref) in modes.items() if sep and kind == "container"}

    @property
    def plain(self) -> bool:
        """Nothing here asks for more than Docker's defaults (the common case, decided
        without looking anything up)."""
        return self == _PLAIN or not self.refused({}, (), ignore_joined=True)

    def refused(
        self,
        joined_apps: Mapping[str, frozenset[str] | None],
        apps: Iterable[str],
        ignore_joined: bool = False,
    ) -> list[str]:
        """Every setting here beyond Docker's default confinement, named for the message.
        `joined_apps` gives, per joined namespace, the apps the container it names belongs
        to (None: Docker knows no such container); `apps` are the apps this one names."""
        out: list[str] = []
        if self.privileged:
            out.append("Privileged (--privileged)")
        out += self._modes(joined_apps, frozenset(apps), ignore_joined)
        out += [f"CapAdd {c} (--cap-add)" for c in added_capabilities(self.cap_add)]
        for count, what in (
            (self.devices, "Devices (--device)"),
            (self.device_requests, "DeviceRequests (--gpus)"),
            (self.device_cgroup_rules, "DeviceCgroupRules (--device-cgroup-rule)"),
        ):
            if count:
                out.append(what)
        out += [f"SecurityOpt {o!r}" for o in self.security_opt if unconfined_option(o)]
        out += [f"Sysctls {s}" for s in self.sysctls if not self._namespaced_sysctl(s)]
        for name, given, default in (
            ("MaskedPaths", self.masked_paths, DEFAULT_MASKED_PATHS),
            ("ReadonlyPaths", self.readonly_paths, DEFAULT_READONLY_PATHS),
        ):
            if given is not None and not default <= set(given):
                missing = sorted(default - set(given))
                out.append(
                    f"{name} without {', '.join(missing[:3])}"
                    f"{' ...' if len(missing) > 3 else ''} (--security-opt systempaths=unconfined)"
                )
        return out

    def _modes(
        self, joined_apps: Mapping[str, frozenset[str] | None], apps: frozenset[str], ignore: bool
    ) -> list[str]:
        out = []
        for key, value in self.modes:
            if value in OWN_MODES[key]:
                continue
            kind, sep, ref = value.partition(":")
            if key in JOINABLE and sep and kind == "container":
                if ignore:
                    out.append(f"{key}={value}")
                    continue
                owners = joined_apps.get(key)
                if not FULL_ID_RE.fullmatch(ref):
                    out.append(f"{key}={value} (not a full container id)")
                elif owners is None or not owners or owners != apps:
                    out.append(f"{key}={value} (a container of another app, or of none)")
                continue
            out.append(f"{key}={value}")
        return out

    def _namespaced_sysctl(self, raw: str) -> bool:
        name = sysctl_name(raw)
        ipc, net = self.mode("IpcMode"), self.network_mode
        if name in IPC_SYSCTLS or name.startswith("fs.mqueue."):
            return ipc != "host" and not ipc.startswith("container:")
        if name.startswith("net."):
            return net != "host" and not net.startswith("container:")
        return name == "kernel.domainname" and self.uts_mode != "host"


_PLAIN = HostPrivileges()


def go_upper(text: str) -> str:
    """Go's strings.ToUpper: one rune to one rune (Python's `ß`.upper() is two letters)."""
    return "".join(u if len(u := c.upper()) == 1 else c for c in text)


def added_capabilities(cap_add: Iterable[str]) -> list[str]:
    """The capabilities of CapAdd beyond Docker's default set, as Docker normalises them."""
    out = []
    for raw in cap_add:
        name = go_upper(raw)
        if name == "ALL":
            out.append("ALL")
            continue
        short = name[4:] if name.startswith("CAP_") else name
        if short not in DEFAULT_CAPABILITIES:
            out.append(short)
    return out


def unconfined_option(opt: str) -> bool:
    """Whether a SecurityOpt entry lifts a confinement, parsed as dockerd parses it: SELinux
    label options (disable, or a type, level, user or role of one's choosing), an AppArmor
    profile other than Docker's own (hosts ship profiles that confine nothing), and a seccomp
    profile other than Docker's built-in one (unconfined, or a profile of one's own)."""
    if opt == "no-new-privileges":
        return False
    if opt == "disable":
        return True
    key, sep, value = opt.partition("=" if "=" in opt else ":")
    if not sep:
        return False  # dockerd refuses it
    if key == "label":
        return True
    if key == "apparmor":
        return value not in ("", "docker-default")
    if key == "seccomp":
        return value not in ("", "builtin")
    return False  # no-new-privileges=..., or a key dockerd refuses


def sysctl_name(raw: str) -> str:
    """runc's reading of a sysctl name: `net/ipv4/ip_forward` is `net.ipv4.ip_forward`."""
    first = next((c for c in raw if c in "./"), "")
    if first != "/":
        return raw
    return raw.translate(str.maketrans("./", "/."))


def apps_named(app_label_value: str, env: Iterable[str]) -> frozenset[str]:
    """Every app a container names: its app label and each `APP=` of its env (a process
    reads whichever it likes)."""
    apps = {app_label_value} if app_label_value else set()
    for item in env:
        key, sep, value = item.partition("=")
        if sep and key == "APP" and value:
            apps.add(value)
    return frozenset(apps)


def allowed_apps(apps: frozenset[str], privileged_apps: Iterable[str]) -> bool:
    """Whether every app the container names may have privilege."""
    return bool(apps) and apps <= set(privileged_apps)
