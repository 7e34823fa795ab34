"""The start that only looks at a held path's directories (0.7, volumes/trashcheck.py) on the
kernel's NFS client, against a change another host made on the server after the create walk:
the one case the look answers from host 1's caches where an open would ask the server.

Only root on another host, or a host the registry does not hold back (its agent down for
`forget_after_s` with its containers running), can make such a change to a path this host's
entry holds. The look then finds the create walk's directories, and Docker's bind of the path,
made by path moments later through the same caches, gets those directories too: never the
other app's directory the symlink points at. The start after the look's time bound opens each
component and refuses the symlink. A leaf removed on the server is made again (the look's
stat meets ESTALE and the walk judges the path afresh), as the opening walk makes it.
"""

from __future__ import annotations

import base64
import json
import shlex
from pathlib import Path
from typing import Any

import pytest

from tests.vm.machine import Machine
from tests.vm.test_registry import PYTHON, second_client

pytestmark = pytest.mark.timeout(1200)

PEER = "/tmp/start_look_peer.py"


def changed(vm: Machine, change: str, ns: str) -> dict[str, Any]:
    script = base64.b64encode(Path(__file__).with_name("start_look_peer.py").read_bytes())
    vm.sh(f"echo {script.decode()} | base64 -d > {PEER}")
    out = vm.sh(shlex.join([PYTHON, PEER, change, ns]), timeout=600).out
    got: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    print(got)
    return got


def test_a_symlink_another_host_swaps_in_after_the_create_never_reaches_the_other_app(
    vm: Machine,
) -> None:
    second_client(vm)
    got = changed(vm, "symlink", "vmrack-s1")
    # the look finds the create walk's directories in host 1's caches; a bind of the path
    # right after gets them too (host 1's file), not app b's directory
    assert got["held"] == {"start": "allowed", "same_as_create": True, "leaf_created": False}
    assert got["bind_after_held"] == ["app-a-file"], got
    # a start after the look's time bound opens each component and refuses the symlink
    assert got["opened"]["start"].startswith("refused: rule 4"), got


def test_a_leaf_another_host_removed_after_the_create_is_made_again(vm: Machine) -> None:
    second_client(vm)
    got = changed(vm, "rmleaf", "vmrack-r1")
    assert got["held"]["start"] == "allowed" and got["held"]["leaf_created"], got
    assert got["opened"]["start"] == "allowed", got
