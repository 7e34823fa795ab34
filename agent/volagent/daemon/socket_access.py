"""Who may use the status socket: root, and the members of one group (`[api] socket_group`,
`volagent` by default), as Docker does with its `docker` group.

volagent sets the mode and group when it creates the socket itself; a socket handed over by
systemd has those of its socket unit (`SocketMode=0660`, `SocketGroup=volagent`) and is only
checked. Where the group does not exist the socket is for root alone (0600), and the status
says how to open it to the group: failing to start would take the start guard down with it.
"""

from __future__ import annotations

import grp
import os
import stat
from dataclasses import dataclass

GROUP_MODE = 0o660
ROOT_ONLY_MODE = 0o600


@dataclass(frozen=True)
class SocketAccess:
    """The mode and group (gid, None: leave it) for the socket file, and what to warn about."""

    mode: int
    gid: int | None
    warning: str | None = None


def access_for(group: str) -> SocketAccess:
    """The access to create the socket with, for `[api] socket_group = group`."""
    if not group:
        return SocketAccess(ROOT_ONLY_MODE, None)
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        return SocketAccess(
            ROOT_ONLY_MODE,
            None,
            f"group {group!r} does not exist, so the status socket is for root only: create "
            f"it (groupadd --system {group}) and restart volagent to let its members run "
            "`volagent status`, or set [api] socket_group",
        )
    return SocketAccess(GROUP_MODE, gid)


def check_handed_over(path: str) -> str | None:
    """A warning when the socket systemd handed over lets every local user in."""
    try:
        st = os.stat(path)
    except OSError:
        return None  # systemd's socket may live elsewhere than [api] socket says
    if st.st_mode & 0o002:  # connecting takes write permission
        return (
            f"the status socket {path} is open to every local user (mode "
            f"{stat.S_IMODE(st.st_mode):04o}): install the volagent-api.socket unit of this "
            "version (SocketMode=0660, SocketGroup=volagent) and restart it"
        )
    return None
