"""The release, proven: the bundle from `make dist` installs with no network into an empty
directory, and packer/provision.sh provisions a Debian system for real, inside a container
of a debootstrapped root filesystem on the test bed's dockerd, with no network either.

Both the dependency wheels and the root filesystem are cached under CACHE (built once per
machine: the first run downloads them from PyPI and Debian's mirror)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.testbed import Dockerd
from volagent import __version__

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("VOLAGENT_TEST_CACHE", "/var/cache/volagent-test"))
UNITS = ("volagent.service", "volagent-api.socket", "volagent-guard.socket")
BUILD_TIMEOUT_S = 900  # first run only: debootstrap and wheel downloads

pytestmark = pytest.mark.root  # debootstrap, dockerd and a network namespace


def run(
    argv: list[str],
    timeout: float = 300,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> str:
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env, check=False
    )
    assert result.returncode == 0, f"{argv[0]} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The release bundle, built as `make dist` builds it."""
    out = tmp_path_factory.mktemp("dist")
    printed = run(
        [str(ROOT / "scripts" / "build-dist"), "--python", sys.executable, "--out", str(out)],
        timeout=BUILD_TIMEOUT_S,
        env={**os.environ, "VOLAGENT_DIST_CACHE": str(CACHE / "dist")},
    )
    path = Path(printed.strip().splitlines()[-1])
    assert path == out / f"volagent-{__version__}-bundle.tar.gz"
    assert (out / f"volagent-{__version__}-py3-none-any.whl").exists()
    return path


def offline(argv: list[str]) -> list[str]:
    """argv in a network namespace of its own: nothing it does can reach a network."""
    return ["unshare", "--net", *argv]


def test_bundle_installs_offline_into_an_empty_directory(bundle: Path, tmp_path: Path) -> None:
    with tarfile.open(bundle) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    unpacked = tmp_path / "unpacked" / f"volagent-{__version__}"
    wheels = {p.name for p in (unpacked / "wheels").iterdir()}
    # compiled dependencies are there for every target host, not just this one
    for tag in ("cp311", "cp312", "cp313"):
        for arch in ("x86_64", "aarch64"):
            assert any(tag in w and arch in w for w in wheels), f"no {tag} {arch} wheels"
    # integrity list covers every file of the bundle
    listed = run(["sha256sum", "--check", "--quiet", "SHA256SUMS"], cwd=unpacked)
    assert listed == ""

    prefix = tmp_path / "empty"
    prefix.mkdir()
    # pip settings of the host must not add a source: the bundle alone has to be enough
    leaky = {"PIP_FIND_LINKS": str(tmp_path), "PIP_INDEX_URL": "http://127.0.0.1:9/simple"}
    run(
        # --no-group: the test leaves this host's groups alone
        offline([str(unpacked / "install.sh"), "--prefix", str(prefix), "--no-group"]),
        env={**os.environ, **leaky},
    )
    assert run([str(prefix / "bin" / "volagent"), "--version"]).strip() == (
        f"volagent {__version__}"
    )
    # every dependency came along: the daemon's imports work in the new environment
    imported = run(
        [
            str(prefix / "bin" / "python"),
            "-c",
            "import sys, boto3, docker, prometheus_client, structlog, tenacity, watchdog;"
            "import volagent.daemon.lifecycle; print(sys.prefix)",
        ]
    )
    assert imported.strip() == str(prefix / "current")
    # the man page and the completion, generated from this version's argument parser
    share = prefix / "current" / "share"
    assert ".TH VOLAGENT 1" in (share / "man" / "man1" / "volagent.1").read_text()
    assert (
        "complete -F _volagent volagent"
        in (share / "bash-completion" / "completions" / "volagent").read_text()
    )
    checked = run(
        [
            str(prefix / "bin" / "volagent"),
            "check-config",
            "--config",
            str(ROOT / "examples" / "volagent.toml"),
        ]
    )
    assert 'rack = "myrack"' in checked


@pytest.fixture(scope="module")
def debian_image(dockerd: Dockerd) -> str:
    """A Debian image with the provisioning script's packages in apt's cache only."""
    tarball = run([str(ROOT / "scripts" / "build-test-rootfs"), str(CACHE)], BUILD_TIMEOUT_S)
    repository = "volagent-provision-test"
    api = docker.APIClient(base_url=dockerd.url, timeout=300)
    try:
        api.import_image_from_file(tarball.strip(), repository=repository, tag="latest")
    finally:
        api.close()
    return f"{repository}:latest"


@pytest.fixture
def debian(dockerd: Dockerd, debian_image: str, bundle: Path, tmp_path: Path) -> Iterator[str]:
    """A running container of the Debian image, without a network, holding the bundle,
    provision.sh and the sample config read-only under /ship."""
    ship = tmp_path / "ship"
    ship.mkdir()
    shutil.copy(bundle, ship / "bundle.tar.gz")
    shutil.copy(ROOT / "packer" / "provision.sh", ship / "provision.sh")
    shutil.copy(ROOT / "examples" / "volagent.toml", ship / "volagent.toml")
    client = dockerd.client()
    container = client.containers.run(
        debian_image,
        ["sleep", "3600"],
        detach=True,
        network_mode="none",
        volumes={str(ship): {"bind": "/ship", "mode": "ro"}},
        labels={"volagent-test": "ship"},
    )
    try:
        yield str(container.id)
    finally:
        container.remove(force=True)


def sh(dockerd: Dockerd, container_id: str, script: str) -> tuple[int, str]:
    """Runs script with bash in the container; (exit code, output)."""
    client = dockerd.client(timeout=300)
    result = client.containers.get(container_id).exec_run(["bash", "-c", script], demux=False)
    return result.exit_code, result.output.decode(errors="replace")


@pytest.mark.docker
def test_provision_sh_sets_up_a_debian_host_offline(dockerd: Dockerd, debian: str) -> None:
    # an existing daemon.json with settings of its own and another plugin
    code, out = sh(
        dockerd,
        debian,
        'mkdir -p /etc/docker && echo \'{"log-driver": "journald", '
        '"authorization-plugins": ["other"]}\' > /etc/docker/daemon.json && '
        "/ship/provision.sh --bundle /ship/bundle.tar.gz --config /ship/volagent.toml",
    )
    assert code == 0, out

    code, out = sh(dockerd, debian, "/opt/volagent/bin/volagent --version")
    assert (code, out.strip()) == (0, f"volagent {__version__}")
    # on PATH: root's login shell with the default PATH, and cron's PATH (sudo's on Amazon
    # Linux: /sbin:/bin:/usr/sbin:/usr/bin) find it
    for shell in ("env -i bash -lc", "env -i PATH=/usr/bin:/bin sh -c"):
        code, out = sh(dockerd, debian, f"{shell} 'volagent --version'")
        assert (code, out.strip()) == (0, f"volagent {__version__}"), shell
    # `man volagent` and bash completion, from the installed version
    code, out = sh(
        dockerd,
        debian,
        "grep -c '^.TH VOLAGENT' /usr/local/share/man/man1/volagent.1 && "
        "bash -c 'source /usr/local/share/bash-completion/completions/volagent && "
        "complete -p volagent'",
    )
    assert code == 0 and "_volagent" in out, out

    # the OS packages came from apt's cache: the NFS client, Docker, Python
    code, out = sh(dockerd, debian, "command -v mount.nfs4 dockerd python3")
    assert code == 0, out

    # the units, byte for byte, and systemd-analyze verify content with them as installed
    for unit in UNITS:
        code, out = sh(dockerd, debian, f"cat /etc/systemd/system/{unit}")
        assert (code, out) == (0, (ROOT / "systemd" / unit).read_text())
    code, out = sh(
        dockerd,
        debian,
        "systemd-analyze verify " + " ".join(f"/etc/systemd/system/{u}" for u in UNITS) + " 2>&1",
    )
    assert (code, out) == (0, "")
    # the status socket's group, which volagent-api.socket names
    code, out = sh(dockerd, debian, "getent group volagent")
    assert code == 0, out
    code, out = sh(dockerd, debian, "cat /etc/systemd/system/docker.service.d/volagent.conf")
    assert (code, out) == (0, (ROOT / "systemd" / "docker.service.d" / "volagent.conf").read_text())

    # enabled: the service, the status socket and (guard on in the config) the guard socket
    code, out = sh(
        dockerd,
        debian,
        "cd /etc/systemd/system && readlink multi-user.target.wants/volagent.service "
        "sockets.target.wants/volagent-api.socket sockets.target.wants/volagent-guard.socket",
    )
    assert code == 0, out
    assert len(out.split()) == 3

    code, out = sh(dockerd, debian, "cat /etc/docker/daemon.json")
    assert code == 0, out
    daemon_json = json.loads(out)
    assert daemon_json == {"log-driver": "journald", "authorization-plugins": ["other", "volagent"]}

    code, out = sh(dockerd, debian, "cmp /ship/volagent.toml /etc/volagent/volagent.toml")
    assert code == 0, out

    # run again with the guard off: idempotent, the plugin (only ours) leaves daemon.json
    code, out = sh(dockerd, debian, "/ship/provision.sh --bundle /ship/bundle.tar.gz --guard off")
    assert code == 0, out
    assert "already installed" in out
    code, out = sh(dockerd, debian, "cat /etc/docker/daemon.json")
    assert json.loads(out) == {"log-driver": "journald", "authorization-plugins": ["other"]}
    code, out = sh(dockerd, debian, "ls /etc/systemd/system/sockets.target.wants/")
    assert "volagent-api.socket" in out.split()
    assert "volagent-guard.socket" not in out.split()


@pytest.mark.docker
def test_provision_sh_uninstalls_and_keeps_config_and_data(dockerd: Dockerd, debian: str) -> None:
    code, out = sh(
        dockerd,
        debian,
        'echo \'{"log-driver": "journald"}\' > /tmp/daemon.json && mkdir -p /etc/docker && '
        "cp /tmp/daemon.json /etc/docker/daemon.json && mkdir -p /var/lib/volagent && "
        "touch /var/lib/volagent/kept && "
        "/ship/provision.sh --bundle /ship/bundle.tar.gz --config /ship/volagent.toml",
    )
    assert code == 0, out
    code, out = sh(dockerd, debian, "/opt/volagent/provision.sh --uninstall")
    assert code == 0, out
    assert "volagent uninstalled" in out
    # Docker's config as it was before, the units, the drop-in, the install and the command gone
    code, out = sh(dockerd, debian, "cat /etc/docker/daemon.json")
    assert json.loads(out) == {"log-driver": "journald"}
    left = " ".join(
        [f"/etc/systemd/system/{unit}" for unit in UNITS]
        + [
            "/etc/systemd/system/docker.service.d/volagent.conf",
            "/opt/volagent",
            "/usr/bin/volagent",
            "/usr/local/share/man/man1/volagent.1",
            "/usr/local/share/bash-completion/completions/volagent",
        ]
    )
    code, out = sh(
        dockerd, debian, f"for f in {left}; do [ -e $f ] || [ -L $f ] && echo $f; done; true"
    )
    assert (code, out) == (0, "")
    code, out = sh(
        dockerd,
        debian,
        "cmp /ship/volagent.toml /etc/volagent/volagent.toml && "
        "ls /var/lib/volagent/kept && getent group volagent",
    )
    assert code == 0, out
