"""Bind sources spelled outside the shared filesystem that another container can repoint,
each against a real dockerd with `--authorization-plugin=volagent` and the guard on.

A bind of a host path outside the mount point is not volagent's business while it stays
there, and one spelled outside that lands inside (a host symlink) is resolved on the host and
judged where it lands. But Docker resolves the path again at every start, and a start by a
restart policy asks no plugin. The attacker (app `evil`) binds a host directory of its own
(`-v /tmp/scratch:/s`, which Docker makes), plants a symlink there that leads to a harmless
directory beside it, and binds the symlink into a second container with a restart policy:
at the create and at the start it leads outside. Then the first container points the symlink
at app `other`'s directory, and the second container's next start by its policy mounts it.
Rule 7 for host paths refuses the second container at its create: its source leads through
a location inside another container's bind (and, the other way round, a bind that contains
a location another bind's lookup visits is refused).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

import docker
import pytest

from tests.testbed import Containers, app_labels
from tests.testbed.containers import TEST_LABEL
from tests.testbed.guarded import Guarded, denied

pytestmark = [pytest.mark.docker, pytest.mark.mount]

OWNER = "33:33"
EVIL = app_labels("evil", "web", owner=OWNER)
READ_AND_EXIT = ["sh", "-c", "cat /data/secret 2>/dev/null; exit 1"]
WHY = "can change what this path leads to"
TEST = {TEST_LABEL: "1"}


@pytest.fixture
def scratch() -> Iterator[str]:
    """A host directory outside the shared filesystem, for the attacker to bind."""
    path = tempfile.mkdtemp(prefix="volagent-scratch-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _sh(ctr: Containers, cid: str, script: str) -> None:
    exec_id = ctr.api.exec_create(cid, ["sh", "-c", script])["Id"]
    ctr.api.exec_start(exec_id)
    assert ctr.api.exec_inspect(exec_id)["ExitCode"] == 0, script


def _planter(ctr: Containers, scratch: str, script: str) -> str:
    """The attacker's first container: binds `scratch` at /s and runs `script` in it."""
    planter = ctr.run([f"{scratch}:/s"], labels=EVIL)
    _sh(ctr, planter, script)
    return planter


def test_host_symlink_in_a_directory_another_container_binds_is_refused_at_create(
    bed: Guarded, ctr: Containers, victim: str, scratch: str
) -> None:
    harmless = os.path.join(scratch, "harmless")
    _planter(ctr, scratch, f"mkdir /s/harmless && ln -s {harmless} /s/link")
    with pytest.raises(docker.errors.APIError) as excinfo:
        ctr.create([f"{scratch}/link:/data"], labels=EVIL, command=READ_AND_EXIT, restart="always")
    text = denied(excinfo)
    assert "rule 7" in text and WHY in text and f"inside {scratch}," in text, text


def test_local_bind_volume_of_a_host_symlink_another_container_can_repoint_is_refused(
    bed: Guarded, ctr: Containers, victim: str, scratch: str
) -> None:
    # the same through a volume: the local driver mounts `device` again at every start of a
    # container using the volume, following a symlink in it as a bind does
    harmless = os.path.join(scratch, "harmless")
    _planter(ctr, scratch, f"mkdir /s/harmless && ln -s {harmless} /s/link")
    name = "redirected"
    ctr.api.create_volume(
        name, driver="local", driver_opts={"type": "none", "o": "bind", "device": f"{scratch}/link"}
    )
    try:
        with pytest.raises(docker.errors.APIError) as excinfo:
            ctr.create([f"{name}:/data"], labels=EVIL, command=READ_AND_EXIT, restart="always")
        text = denied(excinfo)
        assert "rule 7" in text and WHY in text, text
    finally:
        with contextlib.suppress(docker.errors.APIError):
            ctr.api.remove_volume(name, force=True)


def test_plain_directory_another_container_can_rename_away_is_refused_at_create(
    bed: Guarded, ctr: Containers, victim: str, scratch: str
) -> None:
    # no symlink yet: the planter renames the directory away and puts a symlink in its
    # place before the reader's next start by its policy
    _planter(ctr, scratch, "mkdir /s/dir")
    with pytest.raises(docker.errors.APIError) as excinfo:
        ctr.create([f"{scratch}/dir:/data"], labels=EVIL, command=READ_AND_EXIT, restart="always")
    text = denied(excinfo)
    assert "rule 7" in text and WHY in text and f"{scratch}/dir" in text, text


def test_binding_the_directory_that_holds_another_containers_bind_source_is_refused(
    bed: Guarded, ctr: Containers, victim: str, scratch: str
) -> None:
    # the reader first, its symlink planted before (by a container gone since): the planter
    # created after it may not bind the directory holding the symlink
    harmless = os.path.join(scratch, "harmless")
    os.mkdir(harmless)
    os.symlink(harmless, os.path.join(scratch, "link"))
    reader = ctr.create(
        [f"{scratch}/link:/data"], labels=EVIL, command=READ_AND_EXIT, restart="always"
    )
    assert reader
    with pytest.raises(docker.errors.APIError) as excinfo:
        ctr.create([f"{scratch}:/s"], labels=EVIL)
    text = denied(excinfo)
    assert "rule 7" in text and f"contains {scratch}/link" in text, text


def test_shared_host_paths_docker_socket_and_tmpfs_stay_allowed(
    bed: Guarded, ctr: Containers, scratch: str
) -> None:
    # one host path bound by two containers is shared, not nested; the engine's socket is
    # reached through a symlinked directory as /var/run/docker.sock is (/var/run -> /run),
    # by both; a tmpfs binds nothing of the host
    links = tempfile.mkdtemp(prefix="volagent-var-")
    try:
        os.symlink(os.path.dirname(bed.engine.socket_path), os.path.join(links, "run"))
        sock = f"{links}/run/{os.path.basename(bed.engine.socket_path)}:/var/run/docker.sock"
        first = ctr.create([f"{scratch}:/s", sock], labels=EVIL)
        second = ctr.create([f"{scratch}:/s", sock], labels=EVIL)
        host_config = ctr.api.create_host_config(
            binds=[f"{scratch}:/s"], tmpfs={"/t": "size=1m"}, network_mode="none"
        )
        third = ctr.api.create_container(
            ctr.image, command=["sleep", "300"], host_config=host_config, labels=EVIL | TEST
        )["Id"]
        for cid in (first, second, third):
            ctr.start(cid)
            assert ctr.api.inspect_container(cid)["State"]["Running"]
    finally:
        shutil.rmtree(links, ignore_errors=True)
