"""Factories shared by the unit tests: an agent state on a real directory standing in for
the shared filesystem's mount point, healthy unless a test says otherwise."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from volagent.config import from_dict
from volagent.state import AgentState, VolumeRecord
from volagent.vocabulary import DockerState, MountState

RACK = "r1"
INSTANCE_ID = "i-0123"
# where a state without a mount point keeps its local state: nothing can be made under a
# file, not even by root, so a test that writes there fails instead of writing to the host
NOWHERE = "/dev/null/volagent-state"


def make_state(
    mp: Path | None = None,
    host: str = "host-a",
    *,
    mount_state: MountState | str | None = MountState.MOUNTED,
    docker_state: DockerState | str | None = DockerState.CONNECTED,
    listed: bool = True,
    **sections: Any,
) -> AgentState:
    """An AgentState for rack `r1` on mount point `mp`, as host `host`: the mount healthy
    (mounted, on `mp`'s device) and Docker connected. `sections` are config tables
    (`guard={"enabled": True}`, `quotas={...}`) or top-level keys (`rack="r"`,
    `state_dir=...`) merged over the defaults. Its local state lies beside `mp`, never in
    the host's own state directory.

    `mount_state` and `docker_state` are the states it starts in; None leaves one as the
    agent starts it (the mount unmounted and not yet looked at, Docker connecting), for
    code under test that drives it. `listed`: the Docker watch has listed this host's
    containers once (the table is whole: rule 7 on this host judges against it).
    Without `mp` nothing of the state is on disk: its mount
    point is the default /volumes (or `mount_point=`, a path never looked at) and it has no
    mount device: for what the state reports (the status document, the metrics) or rules
    judged before any directory is."""
    config: dict[str, Any] = {"rack": RACK, "state_dir": NOWHERE}
    if mp is not None:
        config |= {"mount_point": str(mp), "state_dir": str(mp.parent / f"{mp.name}.state")}
    st = AgentState(from_dict(config | sections))
    st.host_id = host
    st.instance_id = INSTANCE_ID
    if mount_state is not None:
        st.set_mount_state(MountState(mount_state))
        if mp is not None and st.mount_healthy:
            st.mount_dev = os.stat(mp).st_dev
    if docker_state is not None:
        st.set_docker_state(DockerState(docker_state))
    if listed:
        st.containers_listed.set()
    return st


@contextlib.contextmanager
def directory_timeout(st: AgentState, seconds: float) -> Iterator[None]:
    """`st` gives up on a directory walk (or a registry claim) after `seconds` meanwhile: for
    a test that waits for the timeout. Elsewhere the default stays, generous enough that a
    loaded machine times nothing out that a test expects to succeed."""
    config = st.config
    directories = dataclasses.replace(config.directories, timeout_s=seconds)
    st.config = dataclasses.replace(config, directories=directories)
    try:
        yield
    finally:
        st.config = config


def volumes_of(*hosts: str) -> tuple[list[VolumeRecord], list[object]]:
    """Volumes binding `hosts` at `/d`, and their plans as the guard hands them to the
    registry's claim: anything but a violation."""
    vols = [VolumeRecord(host=h, container="/d", read_only=False) for h in hosts]
    return vols, [object() for _ in vols]
