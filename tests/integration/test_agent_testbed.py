"""The test bed itself: the private engine runs the busybox image with the network off, and
Docker creates a missing bind directory root:root 0755 at start, the fact `late` rests on."""

from __future__ import annotations

import os
import stat

import pytest

from tests.testbed import Containers, Dockerd, mounts

pytestmark = [pytest.mark.docker]


def test_engine_is_private(dockerd: Dockerd) -> None:
    assert len(dockerd.socket_path) < 100
    info = dockerd.client().info()
    assert info["DockerRootDir"] == dockerd.data_root


def test_docker_run_creates_missing_bind_dir_as_root(
    containers: Containers, tmp_path: os.PathLike[str]
) -> None:
    target = os.path.join(str(tmp_path), "made-by-docker")
    cid = containers.run(
        [f"{target}:/data"], command=["sh", "-c", "id -u; stat -c '%u:%g %a' /data; ls /bin/sleep"]
    )
    assert containers.wait(cid) == 0, containers.logs(cid)
    out = containers.logs(cid).split()
    assert out[:3] == ["0", "0:0", "755"], out
    st = os.stat(target)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o755)
    networks = containers.api.inspect_container(cid)["HostConfig"]["NetworkMode"]
    assert networks == "none"


def test_docker_create_does_not_create_bind_dir(
    containers: Containers, tmp_path: os.PathLike[str]
) -> None:
    target = os.path.join(str(tmp_path), "not-yet")
    containers.create([f"{target}:/data"])
    assert not os.path.lexists(target)


def test_underneath_view_peels_off_a_mount(tmp_path: os.PathLike[str]) -> None:
    top = os.path.join(str(tmp_path), "top")
    os.mkdir(top)
    with open(os.path.join(top, "below"), "w") as f:
        f.write("underneath")
    mounts.mount_tmpfs(top)
    try:
        with open(os.path.join(top, "above"), "w") as f:
            f.write("on the mount")
        with mounts.underneath(top) as view:
            assert sorted(os.listdir(view)) == ["below"]
        assert sorted(os.listdir(top)) == ["above"]
    finally:
        mounts.umount_lazy(top)
    assert not mounts.is_mount_point(top)
