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


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="make testbed-deps installs it")
def test_compose_services_of_one_app_share_data_across_two_runs(
    bed: Guarded, tmp_path: Path
) -> None:
    agent = bed.agent
    assert agent is not None
    path = compose_file(bed, tmp_path)
    first = compose(
        bed,
        path,
        *("run", "--rm", "-T", "web", "sh", "-c"),
        "stat -c %u:%g /var/www/html && echo hello > /var/www/html/index.html",
    )
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.strip().splitlines()[0] == "33:33"  # owned before the start
    # the second step: through volumes_from of web and through the same host path
    # what it read is written beside, not printed: `docker-compose run -T` can lose the
    # output of a container that exits at once (its attach races the exit)
    second = compose(
        bed,
        path,
        *("run", "--rm", "-T", "worker", "sh", "-c"),
        "cat /var/www/html/index.html /shared/index.html > /var/www/html/seen",
    )
    assert second.returncode == 0, second.stdout + second.stderr
    with open(os.path.join(agent.ns("shop", "web", "html"), "seen")) as f:
        assert f.read().split() == ["hello", "hello"]
    # :ro stays read-only
    ro = compose(bed, path, "run", "--rm", "-T", "web", "touch", "/conf/x")
    assert ro.returncode != 0
    assert not os.path.exists(os.path.join(agent.ns("shop", "web", "conf"), "x"))
    with open(os.path.join(agent.ns("shop", "web", "html"), "index.html")) as f:
        assert f.read() == "hello\n"
    down = compose(bed, path, "down", "--remove-orphans")
    assert down.returncode == 0, down.stderr
    doc = agent.status()
    assert not any(v["state"] == "violation" for c in doc["containers"] for v in c["volumes"]), doc[
        "containers"
    ]
