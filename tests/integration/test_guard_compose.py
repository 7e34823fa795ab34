"""What users do legitimately keeps working with the guard on, driven by a real client,
Debian's `docker-compose`: services of one app sharing a directory through `volumes_from`
and through the same host path, across two separate `docker-compose run` steps (data
written in the first is read in the second), the WordPress layout (`/var/www/html` of
service `web` owned 33:33 before the start), and `:ro` binds staying read-only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.testbed.containers import Containers
from tests.testbed.guarded import Guarded

pytestmark = [pytest.mark.docker, pytest.mark.mount]

IMAGE = "volagent-test/busybox:latest"


def compose_file(bed: Guarded, where: Path) -> Path:
    agent = bed.agent
    assert agent is not None
    html, conf = agent.ns("shop", "web", "html"), agent.ns("shop", "web", "conf")

    def labels(service: str) -> dict[str, str]:
        return {
            "convox.app": "shop",
            "convox.service": service,
            "volagent.owner": "33:33",
            "volagent.test": "1",
        }

    doc = {
        "version": "2.4",
        "services": {
            "web": {
                "image": IMAGE,
                "network_mode": "none",
                "labels": labels("web"),
                "command": ["sleep", "300"],
                "volumes": [f"{html}:/var/www/html", f"{conf}:/conf:ro"],
            },
            "worker": {
                "image": IMAGE,
                "network_mode": "none",
                "labels": labels("worker"),
                "volumes_from": ["web"],
                "volumes": [f"{html}:/shared"],
            },
        },
    }
    path = where / "docker-compose.yml"
    path.write_text(json.dumps(doc))  # JSON is YAML
    return path


def compose(bed: Guarded, path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker-compose", "-f", str(path), "-p", "shop", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "DOCKER_HOST": bed.engine.url, "COMPOSE_INTERACTIVE_NO_CLI": "1"},
    )


def run_step(
    bed: Guarded, ctr: Containers, path: Path, service: str, script: str
) -> tuple[int, str]:
    """One `docker-compose run` step of `service` running `sh -c script`, awaited: the exit
    status of its one run and its logs (for the failure message). What a step read, the
    script writes beside the data, to be read from the host.

    Not `run --rm -T` with the result printed: docker-compose 1.x (dockerpty on Python 3)
    attaches to the container only after its start has returned, so what the container
    printed before the attach is lost (exit status 0, empty stdout), and a container that
    already exited by then is started a second time. Detached, the step is one start
    through the guard, and the exit status comes from the engine."""
    started = compose(bed, path, "run", "-d", service, "sh", "-c", script)
    assert started.returncode == 0, started.stdout + started.stderr
    name = started.stdout.strip().splitlines()[-1]  # `run -d` prints the container's name
    try:
        return ctr.wait(name), ctr.logs(name)
    finally:
        ctr.remove(name)


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="make testbed-deps installs it")
def test_compose_services_of_one_app_share_data_across_two_runs(
    bed: Guarded, ctr: Containers, tmp_path: Path
) -> None:
    agent = bed.agent
    assert agent is not None
    path = compose_file(bed, tmp_path)
    html = agent.ns("shop", "web", "html")
    status, logs = run_step(
        bed,
        ctr,
        path,
        "web",
        "stat -c %u:%g /var/www/html > /var/www/html/owner"
        " && echo hello > /var/www/html/index.html",
    )
    assert status == 0, logs
    with open(os.path.join(html, "owner")) as f:
        assert f.read().strip() == "33:33"  # owned before the start
    # the second step: through volumes_from of web and through the same host path
    status, logs = run_step(
        bed,
        ctr,
        path,
        "worker",
        "cat /var/www/html/index.html /shared/index.html > /var/www/html/seen",
    )
    assert status == 0, logs
    with open(os.path.join(html, "seen")) as f:
        assert f.read().split() == ["hello", "hello"]
    # :ro stays read-only; the exit status of `run --rm -T` is the engine's (its wait), not
    # the attached output, so the common invocation serves here
    ro = compose(bed, path, "run", "--rm", "-T", "web", "touch", "/conf/x")
    assert ro.returncode != 0
    assert not os.path.exists(os.path.join(agent.ns("shop", "web", "conf"), "x"))
    with open(os.path.join(html, "index.html")) as f:
        assert f.read() == "hello\n"
    down = compose(bed, path, "down", "--remove-orphans")
    assert down.returncode == 0, down.stderr
    doc = agent.status()
    assert not any(v["state"] == "violation" for c in doc["containers"] for v in c["volumes"]), doc[
        "containers"
    ]
