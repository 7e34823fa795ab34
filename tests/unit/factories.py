"""Factories shared by the unit tests: an agent state on a real directory standing in for
the shared filesystem's mount point, healthy unless a test says otherwise."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from volagent.config import from_dict
from volagent.state import AgentState

RACK = "r1"
INSTANCE_ID = "i-0123"


def make_state(mp: Path, host: str = "host-a", **sections: Any) -> AgentState:
    """An AgentState for rack `r1` on mount point `mp`, as host `host`: the mount healthy
    (mounted, on `mp`'s device) and Docker connected. `sections` are config tables
    (`guard={"enabled": True}`, `quotas={...}`) merged over the defaults. Its local state
    lies beside `mp`, never in the host's own state directory."""
    state_dir = str(mp.parent / f"{mp.name}.state")
    st = AgentState(
        from_dict({"rack": RACK, "mount_point": str(mp), "state_dir": state_dir, **sections})
    )
    st.host_id = host
    st.instance_id = INSTANCE_ID
    st.set_mount_state("mounted")
    st.set_docker_state("connected")
    st.mount_dev = os.stat(mp).st_dev
    return st
