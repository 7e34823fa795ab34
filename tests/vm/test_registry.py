"""Scenario 7, rule 7 across two hosts of a rack on the kernel's NFS client: two NFS clients
of the one export race to bind nested directories, and the rack's registry lets exactly one
of each pair through, every round.

Host 1 is the machine's real agent (systemd, the guarded dockerd, /volumes mounted by
volagent). Host 2 is a second NFS client of the same export: the kernel keeps NFS client
state per network namespace, so a mount made from a second network namespace (its own veth
to the server's address) with a host name of its own (the NFSv4 client id is made from it)
is a second client to the server, with its own lease, its own locks and its own caches. On
that mount, tests/vm/registry_peer.py runs the installed volagent's own registry claim as
host `host-2`, with a live heartbeat (the process itself runs in the machine's namespaces:
what makes it host 2 is the mount it works through, whose client is the second one). Host 2's
link has a netem delay, so its transaction holds the lock across real round trips.

The test first proves the two mounts are two clients: distinct superblocks, one client in
each namespace's /proc/fs/nfsfs/servers, and two clients with different names in the
server's /proc/fs/nfsd/clients.

The attack this stops: host 1 binds `.../web/lag` while host 2, at the same moment, binds
`.../web/lag/s1`; both allowed, the first container swaps `s1` for a symlink into another
app and the second reads through it, before either host has read the other's usage records.
"""

from __future__ import annotations

import base64
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from tests.vm.helpers import EXPORT, RACK
from tests.vm.machine import Machine

pytestmark = pytest.mark.timeout(1800)

PEER = "/tmp/registry_peer.py"
PYTHON = "/opt/volagent/bin/python"
MOUNT2 = "/mnt/host2"
SERVER_IP = "10.98.0.1"  # the machine's own NFS server, on the root namespace's veth end
CLIENT2_IP = "10.98.0.2"
ROUNDS = 12  # per direction
# host 2 farther from the server than host 1: its claim holds the namespace's lock across
# round trips of 50 ms, so host 1's claim, aimed at it, meets it there (without the lock,
# both would read the entries before either wrote)
DELAY = "25ms"

# The second client: a network namespace with a veth to the root one, the export opened to
# its address, and the mount made from inside it (nsenter --net: the mount itself stays in
# the machine's mount namespace, where every process sees it) with a host name of its own
# (unshare --uts), from which the kernel makes the client's NFSv4 id; a netem delay on both
# ends of its veth.
SECOND_CLIENT = f"""set -e
ip netns add host2
ip link add vh2a type veth peer name vh2b netns host2
ip addr add {SERVER_IP}/24 dev vh2a
ip link set vh2a up
ip netns exec host2 ip addr add {CLIENT2_IP}/24 dev vh2b
ip netns exec host2 ip link set vh2b up
ip netns exec host2 ip link set lo up
mkdir -p /etc/exports.d {MOUNT2}
echo '{EXPORT} {CLIENT2_IP}(rw,sync,no_subtree_check,no_root_squash,insecure)' \
    > /etc/exports.d/host2.exports
exportfs -ra
tc qdisc add dev vh2a root netem delay {DELAY}
ip netns exec host2 tc qdisc add dev vh2b root netem delay {DELAY}
nsenter --net=/run/netns/host2 unshare --uts sh -ec '
    echo vmhost2 > /proc/sys/kernel/hostname
    mount -t nfs4 -o nfsvers=4.1,hard,timeo=600,retrans=2,noresvport \
        {SERVER_IP}:{EXPORT} {MOUNT2}'
"""


def second_client(vm: Machine) -> None:
    vm.sh(SECOND_CLIENT, timeout=300)
    script = base64.b64encode(Path(__file__).with_name("registry_peer.py").read_bytes()).decode()
    vm.sh(f"echo {script} | base64 -d > {PEER}")
    # two superblocks: the mounts are not one client's cache seen twice
    devs = vm.sh(f"stat -c %d /volumes {MOUNT2}").out.split()
    assert len(set(devs)) == 2, devs
    # one client in each network namespace, each to its own server address
    root_ns = vm.sh("cat /proc/fs/nfsfs/servers").out
    host2_ns = vm.sh("nsenter --net=/run/netns/host2 cat /proc/fs/nfsfs/servers").out
    print(f"root namespace's NFS clients:\n{root_ns}host2's:\n{host2_ns}")
    assert "7f000001" in root_ns and "0a620001" not in root_ns, root_ns
    assert "0a620001" in host2_ns and "7f000001" not in host2_ns, host2_ns
    # and the server holds two NFSv4 clients with different ids: two leases, two lock owners
    infos = vm.sh("for f in /proc/fs/nfsd/clients/*/info; do cat $f; echo; done").out
    print(f"the server's clients:\n{infos}")
    name_of = {}
    for block in infos.split("\n\n"):
        address = re.search(r'^address: "(.*):\d+"$', block, re.M)
        name = re.search(r'^name: "(.*)"$', block, re.M)
        if address and name:
            name_of[address.group(1)] = name.group(1)
    assert {"127.0.0.1", CLIENT2_IP} <= name_of.keys(), infos
    assert name_of["127.0.0.1"] != name_of[CLIENT2_IP], infos


def peer(vm: Machine, *args: str) -> list[dict[str, Any]]:
    out = vm.sh(shlex.join([PYTHON, PEER, *args]), timeout=900).out
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def host1_id(vm: Machine) -> str:
    beats = vm.sh("ls /volumes/.volagent/hosts").out.split()
    others = [b.removesuffix(".json") for b in beats if b != "host-2.json"]
    assert len(others) == 1, beats
    return others[0]


def entries(vm: Machine, ns: str) -> list[dict[str, Any]]:
    """The registry's entries of `ns`, read through host 2's client."""
    r = vm.sh(f"cat {MOUNT2}/.volagent/registry/{ns}.json", check=False)
    found: list[dict[str, Any]] = json.loads(r.out)["entries"] if r.rc == 0 else []
    return found


def test_two_nfs_clients_racing_to_nest_binds_one_wins(vm: Machine) -> None:
    second_client(vm)
    host1 = ""
    tally: dict[str, dict[str, int]] = {}
    directions = {
        "host 1 binds the parent": ("web/lag", "web/lag/s1", "rp"),
        "host 1 binds the child": ("web/lag/s1", "web/lag", "rc"),
    }
    for direction, (docker_path, peer_path, prefix) in directions.items():
        rounds = peer(vm, "race", MOUNT2, docker_path, peer_path, str(ROUNDS), prefix)
        assert len(rounds) == ROUNDS, rounds
        host1 = host1 or host1_id(vm)
        won = {"host 1": 0, "host 2": 0, "host 2 found the lock held": 0}
        for r in rounds:
            one, two = r["host1"], r["host2"]
            shown = (
                f"{direction}, round {r['round']} (host 2 {r['offset']:.2f}s after the barrier):"
                f" create {one}, claim {two}"
            )
            won["host 2 found the lock held"] += two["lock_tries"] > 1
            # exactly one of the pair is allowed, and the other is told whose bind is in
            # the way
            assert one["allowed"] != two["registered"], shown
            if one["allowed"]:
                won["host 1"] += 1
                assert f"on host {host1}" in two["clash"], shown
                assert "binds may not nest" in two["clash"], shown
            else:
                won["host 2"] += 1
                assert "host-2" in one["message"] and "nest" in one["message"], shown
            # the registry holds the winner's bind alone
            holders = {e["host"] for e in entries(vm, r["ns"])}
            assert holders == {host1 if one["allowed"] else "host-2"}, (shown, holders)
        tally[direction] = won
        print(f"{direction}: {ROUNDS} rounds, won by {won}")


def test_a_bind_held_by_the_other_client_refuses_the_nesting_create(vm: Machine) -> None:
    second_client(vm)
    ns = f"{RACK}-nest"
    held = peer(vm, "claim", MOUNT2, ns, f"{ns}/web/lag/s1")
    assert held[0]["registered"], held
    r = vm.sh(
        "docker create --name nest --network none --label convox.app=nest"
        f" --label convox.service=web -v /volumes/{ns}/web/lag:/data"
        " volagent-test/busybox:latest sh",
        check=False,
        timeout=600,
    )
    print(f"the nesting create: exit {r.rc}: {r.err.strip()}")
    assert r.rc != 0
    assert "host-2" in r.err and f"{ns}/web/lag/s1" in r.err, r.err
    assert vm.sh("docker ps -aq --filter name=^nest$").out.strip() == ""
    assert {e["host"] for e in entries(vm, ns)} == {"host-2"}
