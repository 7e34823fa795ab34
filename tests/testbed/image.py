"""The test image: a root filesystem holding only the static busybox and its applet links,
imported with `docker import` (there is no registry to pull from)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import time

import docker

IMAGE = "volagent-test/busybox:latest"
# applets every test may rely on; the full list of the installed busybox is added when known
REQUIRED_APPLETS = ("sh", "sleep", "stat", "cat", "touch", "ls", "mkdir", "id", "ln", "true")


def busybox_path() -> str:
    """The static busybox binary; a dynamic one would need its libraries in the image."""
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(candidate):
            return candidate
    found = shutil.which("busybox")
    if not found:
        raise FileNotFoundError("busybox not found: install the busybox-static package")
    return found


def _applets(binary: str) -> list[str]:
    out = subprocess.run([binary, "--list"], capture_output=True, text=True, check=False)
    names = {n.strip() for n in out.stdout.split() if n.strip() and "/" not in n}
    return sorted(names | set(REQUIRED_APPLETS))


def _add(tar: tarfile.TarFile, name: str, kind: bytes, mode: int, data: bytes = b"") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = int(time.time())
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        tar.addfile(info)


def build_rootfs_tar(dest: str) -> str:
    """Writes the root filesystem tarball to `dest` and returns it."""
    binary = busybox_path()
    with open(binary, "rb") as f:
        payload = f.read()
    with tarfile.open(dest, "w") as tar:
        for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "data"):
            _add(tar, d, tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755)
        _add(tar, "bin/busybox", tarfile.REGTYPE, 0o755, payload)
        for applet in _applets(binary):
            if applet == "busybox":
                continue
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            info.mode = 0o777
            tar.addfile(info)
        _add(tar, "etc/passwd", tarfile.REGTYPE, 0o644, b"root:x:0:0:root:/:/bin/sh\n")
        _add(tar, "etc/group", tarfile.REGTYPE, 0o644, b"root:x:0:\n")
    return dest


def ensure_image(client: docker.DockerClient, rootfs_tar: str, tag: str = IMAGE) -> str:
    """Imports the tarball as `tag` unless the engine already has it; returns the tag."""
    try:
        client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    repository, _, version = tag.rpartition(":")
    with open(rootfs_tar, "rb") as f:
        client.api.import_image_from_data(f.read(), repository=repository, tag=version)
    client.images.get(tag)  # raises if the import did not take
    return tag
