"""The shipped files checked by the tools that read them: `systemd-analyze verify` on the
units, `packer validate` on the AMI template, shellcheck on the scripts, and the settings
that keep the service's mount visible to dockerd."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from volagent import __version__, config
from volagent.config import ApiConfig, GuardConfig

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "systemd"
PACKER = ROOT / "packer"
UNITS = ("volagent.service", "volagent-api.socket", "volagent-guard.socket")
SCRIPTS = (
    "packer/provision.sh",
    "scripts/build-dist",
    "scripts/build-ami",
    "scripts/build-test-rootfs",
    "scripts/build-vm-rootfs",
    "scripts/build-vm-image",
    "scripts/install-bundle.sh",
)
INSTALLED_EXEC = "/opt/volagent/bin/volagent"
# Every one of these gives the service a mount namespace of its own and makes its mounts
# slave: the /volumes mount would never reach dockerd (systemd.exec(5), PrivateMounts=).
NAMESPACING_OPTIONS = (
    "PrivateMounts",
    "PrivateTmp",
    "PrivateDevices",
    "PrivateNetwork",
    "PrivateIPC",
    "ProtectSystem",
    "ProtectHome",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "ProtectProc",
    "ProcSubset",
    "ReadWritePaths",
    "ReadOnlyPaths",
    "InaccessiblePaths",
    "ExecPaths",
    "NoExecPaths",
    "TemporaryFileSystem",
    "BindPaths",
    "BindReadOnlyPaths",
    "RootDirectory",
    "RootImage",
    "DynamicUser",
    "MountAPIVFS",
)


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed: `make testbed-deps` installs it"
    return path


def unit_settings(path: Path) -> dict[str, list[str]]:
    """KEY -> values, across sections (systemd allows repeated keys)."""
    settings: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def verify(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("systemd-analyze"), "verify", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify insists that ExecStart= names an existing executable; /opt/volagent is what
    # provision.sh installs, so a copy points at this checkout's own volagent instead
    # (the provisioning proof verifies the installed units against the real path)
    volagent = Path(sys.executable).parent / "volagent"
    assert volagent.exists(), f"{volagent} missing: the package is not installed in this venv"
    for unit in UNITS:
        text = (SYSTEMD / unit).read_text()
        (tmp_path / unit).write_text(text.replace(INSTALLED_EXEC, str(volagent)))
    result = verify(*(str(tmp_path / u) for u in UNITS))
    assert result.returncode == 0, result.stderr
    # warnings (an unknown key, a bad value) don't fail verify: none are allowed either
    assert result.stdout + result.stderr == ""


def test_docker_drop_in_verifies_with_docker_service(tmp_path: Path) -> None:
    docker_unit = next(
        (
            p
            for p in (Path("/lib/systemd/system"), Path("/usr/lib/systemd/system"))
            if (p / "docker.service").exists()
        ),
        None,
    )
    assert docker_unit, "docker.service is not installed: `make testbed-deps` installs docker.io"
    shutil.copytree(SYSTEMD / "docker.service.d", tmp_path / "docker.service.d")
    # a trailing colon appends the default unit paths: docker.service comes from there,
    # its drop-in from tmp_path
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"}
    result = verify("docker.service", env=env)
    assert result.returncode == 0, result.stderr
    assert "volagent" not in result.stdout + result.stderr


def test_service_keeps_its_mounts_visible_and_itself_alive() -> None:
    service = unit_settings(SYSTEMD / "volagent.service")
    present = sorted(set(NAMESPACING_OPTIONS) & set(service))
    assert present == [], f"these would hide the /volumes mount from dockerd: {present}"
    assert service.get("MountFlags", ["shared"]) == ["shared"]
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["Restart"] == ["always"]
    assert service["WatchdogSec"]
    assert service["ExecStart"] == [f"{INSTALLED_EXEC} run"]
    # mount helpers (efs-utils' stunnel, FUSE servers) outlive a restart of the agent
    assert service["KillMode"] == ["process"]
    # /run/volagent holds the socket unit's socket: not removed when the service stops
    assert service["RuntimeDirectoryPreserve"] == ["yes"]
    capabilities = set(service["CapabilityBoundingSet"][0].split())
    for needed in ("CAP_SYS_ADMIN", "CAP_CHOWN", "CAP_FOWNER", "CAP_LINUX_IMMUTABLE"):
        assert needed in capabilities
    # directories may be created setgid ([directories] mode = "2775")
    assert "RestrictSUIDSGID" not in service
    assert service["Before"] == ["docker.service"]
    assert "network-online.target" in service["After"][0].split()


def test_socket_units_listen_where_the_config_defaults_say() -> None:
    api = unit_settings(SYSTEMD / "volagent-api.socket")
    guard = unit_settings(SYSTEMD / "volagent-guard.socket")
    assert api["ListenStream"] == [ApiConfig().socket]
    assert guard["ListenStream"] == [GuardConfig().plugin_socket]
    assert api["FileDescriptorName"] == ["api"]
    assert guard["FileDescriptorName"] == ["guard"]
    assert api["Service"] == guard["Service"] == ["volagent.service"]
    # root and the volagent group may read the status (POSTs check the peer's uid); only
    # dockerd, root, the guard
    assert api["SocketMode"] == ["0660"]
    assert api["SocketGroup"] == [ApiConfig().socket_group]
    assert guard["SocketMode"] == ["0600"]


def test_daemon_json_fragment_names_the_plugin_docker_will_find() -> None:
    fragment = json.loads((SYSTEMD / "daemon.json").read_text())
    assert fragment == {"authorization-plugins": ["volagent"]}
    # dockerd finds plugin NAME at /run/docker/plugins/NAME.sock
    assert Path(GuardConfig().plugin_socket).name == "volagent.sock"
    drop_in = unit_settings(SYSTEMD / "docker.service.d" / "volagent.conf")
    assert "volagent.service" in drop_in["After"][0].split()
    assert "volagent-guard.socket" in drop_in["After"][0].split()
    # Requires= would restart dockerd, and every container, with each agent restart
    assert "Requires" not in drop_in


def packer_env(tmp_path: Path) -> dict[str, str]:
    # fake credentials and no metadata lookups; validate runs in a network namespace of
    # its own as well, so nothing it does can reach AWS
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "PACKER_CACHE_DIR": str(tmp_path / "packer_cache"),
        "AWS_ACCESS_KEY_ID": "AKIDTEST",
        "AWS_SECRET_ACCESS_KEY": "test-secret",
        "AWS_EC2_METADATA_DISABLED": "true",
        "CHECKPOINT_DISABLE": "1",
    }


def offline(argv: list[str]) -> list[str]:
    # a fresh network namespace: only a downed loopback; as non-root, with a user namespace
    return [tool("unshare"), "--net", *([] if os.geteuid() == 0 else ["--map-root-user"]), *argv]


IMDS_SETTINGS = re.compile(r"^  # imds: begin\n.*?^  # imds: end\n", re.MULTILINE | re.DOTALL)


def packer_version() -> tuple[int, ...]:
    out = subprocess.run(
        [tool("packer"), "version"], capture_output=True, text=True, timeout=60, check=False
    )
    match = re.search(r"v(\d+)\.(\d+)", out.stdout)
    assert match, out.stdout + out.stderr
    return (int(match[1]), int(match[2]))


def packer_tree(tmp_path: Path) -> Path:
    """A copy of packer/ and examples/ with the AMI template as this machine's Packer can
    check it: Debian's Packer 1.6.6 has the amazon builder built in, without its IMDS
    settings (test_packer_requires_imdsv2 reads those), so they are left out of the copy it
    validates. Returns the template's path."""
    shutil.copytree(PACKER, tmp_path / "packer", dirs_exist_ok=True)
    shutil.copytree(ROOT / "examples", tmp_path / "examples", dirs_exist_ok=True)
    template = tmp_path / "packer" / "volagent.pkr.hcl"
    if packer_version() < (1, 7):
        text, count = IMDS_SETTINGS.subn("", template.read_text())
        assert count == 1, "the template lost its '# imds: begin' / '# imds: end' markers"
        template.write_text(text)
    return template


def packer_validate(tmp_path: Path, *variables: str) -> subprocess.CompletedProcess[str]:
    bundle = tmp_path / "bundle.tar.gz"  # the file provisioner checks that its source exists
    bundle.write_bytes(b"")
    argv = [tool("packer"), "validate", "-var", f"bundle={bundle}", *variables]
    return subprocess.run(
        offline([*argv, str(packer_tree(tmp_path))]),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=packer_env(tmp_path),
        check=False,
    )


def test_packer_template_validates(tmp_path: Path) -> None:
    # a full validate (not -syntax-only: that checks HCL syntax, not the builder's
    # schema): Packer 1.6.6's amazon-ebs prepares without calling AWS
    result = packer_validate(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    refused = packer_validate(tmp_path, "-var", "guard=sometimes")
    assert refused.returncode != 0
    assert "must be auto, on or off" in refused.stdout + refused.stderr
    # plugins.pkr.hcl (Packer >= 1.7 only) must at least be well-formed HCL
    fmt = subprocess.run(
        [tool("packer"), "fmt", "-check", str(PACKER)],
        capture_output=True,
        text=True,
        timeout=60,
        env=packer_env(tmp_path),
        check=False,
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_packer_defaults_find_what_make_dist_builds(tmp_path: Path) -> None:
    # the template's default bundle is ../dist/volagent-VERSION-bundle.tar.gz of this version
    # (scripts/build-dist's name) and its default config ../examples/volagent.toml
    template = packer_tree(tmp_path)
    (tmp_path / "dist").mkdir()
    (tmp_path / "dist" / f"volagent-{__version__}-bundle.tar.gz").write_bytes(b"")
    result = subprocess.run(
        offline([tool("packer"), "validate", str(template)]),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=packer_env(tmp_path),
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_packer_requires_imdsv2() -> None:
    # volagent asks instance metadata only with a session token (IMDSv2): the build instance
    # requires it, and the AMI's instances default to requiring it
    text = (PACKER / "volagent.pkr.hcl").read_text()
    source = text[text.index('source "amazon-ebs"') :]
    source = source[: source.index("\n}\n")]
    block = re.search(r"^  metadata_options \{\n(.*?)^  \}", source, re.MULTILINE | re.DOTALL)
    assert block, "the amazon-ebs source has no metadata_options block"
    settings = dict(re.findall(r'^\s*(\w+)\s*=\s*"?([^"\n]*)"?\s*$', block[1], re.MULTILINE))
    assert settings["http_tokens"] == "required"
    assert settings["http_endpoint"] == "enabled"
    assert re.search(r'^  imds_support\s*=\s*"v2\.0"\s*$', source, re.MULTILINE)
    # the plugin that knows both settings
    plugins = (PACKER / "plugins.pkr.hcl").read_text()
    assert re.search(r'version\s*=\s*">= 1\.[2-9]', plugins)


@pytest.mark.parametrize("name", ["volagent.toml", "local.toml"])
def test_example_configs_are_valid(name: str) -> None:
    cfg = config.load(str(ROOT / "examples" / name))
    assert cfg.rack
    if name == "local.toml":
        assert cfg.mount.type == "local"  # what `make run` gets on a machine without EFS
        assert not cfg.guard.enabled  # a plain dockerd has no plugin configured


def test_shell_scripts_pass_shellcheck() -> None:
    result = subprocess.run(
        [tool("shellcheck"), *(str(ROOT / s) for s in SCRIPTS)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize(("manager", "package"), [("apt", "nfs-common"), ("dnf", "nfs-utils")])
def test_provision_names_the_nfs_client_of_each_distro(manager: str, package: str) -> None:
    out = subprocess.run(
        [str(PACKER / "provision.sh"), "--print-packages", manager],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.split()
    assert package in out
