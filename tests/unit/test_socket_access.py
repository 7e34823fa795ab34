"""Who may use the status socket: root and one group, root alone where the group is missing."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from volagent.daemon.socket_access import (
    GROUP_MODE,
    ROOT_ONLY_MODE,
    access_for,
    check_handed_over,
)


def test_an_existing_group_gets_0660() -> None:
    access = access_for("root")
    assert (access.mode, access.gid, access.warning) == (GROUP_MODE, 0, None)


def test_a_missing_group_leaves_the_socket_to_root_and_says_how_to_fix_it() -> None:
    access = access_for("no-such-group-here")
    assert (access.mode, access.gid) == (ROOT_ONLY_MODE, None)
    assert access.warning is not None
    assert "groupadd --system no-such-group-here" in access.warning


def test_an_empty_group_means_root_only_by_choice() -> None:
    access = access_for("")
    assert (access.mode, access.gid, access.warning) == (ROOT_ONLY_MODE, None, None)


def test_a_handed_over_socket_open_to_all_is_reported(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(path)
        os.chmod(path, 0o666)  # noqa: S103 - the old unit's mode, on purpose
        warning = check_handed_over(path)
        assert warning is not None and "mode 0666" in warning
        os.chmod(path, 0o660)
        assert check_handed_over(path) is None
    assert check_handed_over(str(tmp_path / "elsewhere.sock")) is None
