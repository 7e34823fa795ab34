"""`volagent doctor`, the checks of this host: the NFS client and amazon-efs-utils mount
helpers, the Docker engine, and whether Docker's authorization plugin setting and the start
guard of the config agree. Each returns a CheckResult whose fix is the exact thing to do."""

from __future__ import annotations

import json
import os
import shutil

from volagent.config import Config
from volagent.mount.shared import HELPER_DIRS
from volagent.ops.doctor.result import CheckResult
from volagent.vocabulary import MountType

DAEMON_JSON_ENV = "VOLAGENT_DOCKER_DAEMON_JSON"
DAEMON_JSON = "/etc/docker/daemon.json"
OS_RELEASE = "/etc/os-release"
# mount helpers live in the sbin directories, which a non-root PATH often lacks
_SBIN = HELPER_DIRS

_NFS_PACKAGES = {
    "debian": "apt-get install -y nfs-common",
    "rhel": "yum install -y nfs-utils",
    "suse": "zypper install -y nfs-client",
}
_EFS_UTILS = {
    "amzn": "yum install -y amazon-efs-utils",
    "debian": "build the .deb from https://github.com/aws/efs-utils (./build-deb.sh) and "
    "apt-get install -y ./build/amazon-efs-utils*.deb",
    "rhel": "build the .rpm from https://github.com/aws/efs-utils (make rpm) and "
    "yum install -y ./build/amazon-efs-utils*.rpm",
    "suse": "build the .rpm from https://github.com/aws/efs-utils (make rpm) and "
    "zypper install -y ./build/amazon-efs-utils*.rpm",
}


def distro_family(os_release: str = OS_RELEASE) -> str:
    """amzn, debian, rhel, suse, or "" when unknown; from ID and ID_LIKE of os-release."""
    ids: list[str] = []
    try:
        with open(os_release, encoding="utf-8") as f:
            for line in f:
                key, _, value = line.strip().partition("=")
                if key in ("ID", "ID_LIKE"):
                    ids += value.strip().strip("\"'").lower().split()
    except OSError:
        return ""
    if "amzn" in ids:
        return "amzn"
    for family, names in (
        ("debian", ("debian", "ubuntu")),
        ("rhel", ("rhel", "fedora", "centos")),
        ("suse", ("suse", "sles", "opensuse")),
    ):
        if any(n in ids for n in names):
            return family
    return ""


def _install(commands: dict[str, str], family: str) -> str:
    if family == "amzn" and "amzn" not in commands:
        family = "rhel"
    if family in commands:
        return commands[family]
    return "; ".join(f"{name}: {cmd}" for name, cmd in commands.items())


def find_helper(name: str) -> str | None:
    path = os.pathsep.join([os.environ.get("PATH", ""), *_SBIN])
    return shutil.which(name, path=path)


def check_nfs_client(cfg: Config, family: str) -> CheckResult:
    name = "nfs client"
    if cfg.mount.type == MountType.LOCAL:
        return CheckResult.skip(name, "mount type local needs no NFS client")
    found = find_helper("mount.nfs4") or find_helper("mount.nfs")
    if found:
        return CheckResult.ok(name, f"{found}")
    return CheckResult.failed(
        name,
        "mount.nfs4 is not installed: the kernel cannot mount NFS/EFS from this host",
        _install(_NFS_PACKAGES, family),
    )


def check_efs_utils(cfg: Config, family: str) -> CheckResult:
    name = "efs-utils"
    if cfg.mount.type in (MountType.LOCAL, MountType.NFS, MountType.NFS4):
        return CheckResult.skip(name, f"mount type {cfg.mount.type} does not use mount.efs")
    found = find_helper("mount.efs")
    if found:
        return CheckResult.ok(name, f"{found} (TLS in transit)")
    fix = _install(_EFS_UTILS, family)
    if cfg.mount.type == MountType.AUTO:
        return CheckResult.warning(
            name,
            "mount.efs is not installed: type auto mounts with plain nfs4, without TLS",
            fix,
        )
    return CheckResult.failed(name, "mount.efs is not installed and mount type is efs", fix)


def check_docker(cfg: Config) -> CheckResult:
    name = "docker"
    url = cfg.docker.url
    if url.startswith("unix://") and not os.path.exists(url[len("unix://") :]):
        # no socket, no engine; and docker-py leaks the socket of a connect that fails
        return CheckResult.failed(
            name,
            f"Docker does not answer at {url}: no such socket",
            f"start Docker (systemctl enable --now docker), or set [docker] url to its "
            f"socket (now {url})",
        )
    try:
        import docker  # noqa: PLC0415 - heavy; doctor only

        # a fixed version: "auto" asks the engine inside the constructor, whose connection
        # then leaks when the engine does not answer; the one call made is unversioned
        client = docker.APIClient(base_url=url, version="1.24", timeout=5)
        try:
            info = client.version(api_version=False)
            version = info.get("Version", "?")
            min_api = str(info.get("MinAPIVersion") or "")
        finally:
            client.close()
    except Exception as exc:
        text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        if "Permission denied" in text:
            fix = "run volagent doctor as root (the Docker socket is root's)"
        else:
            fix = f"start Docker (systemctl start docker) and check [docker] url (now {url})"
        return CheckResult.failed(name, f"Docker does not answer at {url}: {text}", fix)
    if min_api and _api_tuple(min_api) < (1, 24):
        return CheckResult.warning(
            name,
            f"Docker {version} answers at {url} and accepts API versions down to {min_api}: "
            "below 1.24 it applies binds sent with a container start, after the create was "
            "judged (volagent's guard judges start bodies too, and denies those that reach the "
            "shared filesystem)",
            "run Docker 25 or later, which refuses API versions below 1.24; on Docker 26+ "
            "DOCKER_MIN_API_VERSION=1.24 in dockerd's environment keeps them off",
        )
    return CheckResult.ok(name, f"Docker {version} answers at {url}")


def _api_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        return (0,)


def plugin_name(cfg: Config) -> str:
    """The name Docker knows the plugin by: its socket's file name without `.sock`."""
    base = os.path.basename(cfg.guard.plugin_socket)
    return base[: -len(".sock")] if base.endswith(".sock") else base


def check_guard(cfg: Config) -> CheckResult:
    name = "guard config"
    path = os.environ.get(DAEMON_JSON_ENV) or DAEMON_JSON
    plugin = plugin_name(cfg)
    line = f'"authorization-plugins": ["{plugin}"]'
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        data = {}
    except (OSError, ValueError) as exc:
        return CheckResult.failed(
            name,
            f"{path} cannot be read as JSON: {exc}",
            f"fix the JSON of {path}; dockerd will not start with it either",
        )
    plugins = data.get("authorization-plugins") if isinstance(data, dict) else None
    named = isinstance(plugins, list) and plugin in plugins
    if cfg.guard.enabled and not named:
        return CheckResult.failed(
            name,
            f"[guard] enabled = true, but {path} does not name the plugin {plugin!r}: "
            "Docker never asks volagent, so containers can start before their directories",
            f"add {line} to {path}, then systemctl reload docker (dockerd re-reads it on "
            "SIGHUP; containers keep running)",
        )
    if named and not cfg.guard.enabled:
        return CheckResult.failed(
            name,
            f"{path} names the authorization plugin {plugin!r} but [guard] enabled = false: "
            "dockerd refuses to start, or every Docker call waits ~30 s and fails, while the "
            "plugin does not answer",
            f"set [guard] enabled = true in the volagent config (and restart volagent), or "
            f"remove {plugin!r} from authorization-plugins in {path} and systemctl reload "
            "docker",
        )
    if named:
        return CheckResult.ok(name, f"the start guard is on, and {path} names {plugin!r}")
    return CheckResult.ok(name, f"the start guard is off, and {path} does not name it")


def check_privileged_apps(cfg: Config) -> CheckResult:
    """Which apps' containers the guard lets have privilege and host namespaces."""
    name = "privileged apps"
    apps = cfg.guard.privileged_apps
    if not cfg.guard.enabled:
        return CheckResult.skip(name, "the start guard is off: Docker refuses no privilege")
    if not apps:
        return CheckResult.ok(
            name,
            "none: containers of every app are refused --privileged, host namespaces, added "
            "capabilities, devices and unconfined security options ([guard] privileged_apps)",
        )
    return CheckResult.ok(
        name,
        f"containers of {', '.join(apps)} may use --privileged, host namespaces, added "
        "capabilities, devices and unconfined security options (each use is logged as "
        "guard_privileged); every other app is refused them ([guard] privileged_apps)",
    )
