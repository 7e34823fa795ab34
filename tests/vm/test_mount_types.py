"""Scenario 5, first half: the mount argv volagent builds for `[mount] type = "nfs4"` and
`type = "auto"` mounts for real. Both find the filesystem by EFS discovery: instance metadata
and the EFS API are answered by a stand-in in the machine (tests/vm/aws_standin.py; there is
no AWS here), the filesystem's DNS name resolves to the machine's own NFS server (as an EFS
DNS name resolves to the mount target in a VPC), which exports /export as the root of its
NFSv4 namespace (`fsid=0`), as EFS serves `fs-...:/`. From there on everything is real:
volagent's argv, mount(8), mount.nfs4 and the kernel's NFS client. `auto` picks nfs4 here,
as amazon-efs-utils (mount.efs) is not installed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.vm import aws_standin
from tests.vm.helpers import EXPORT, RACK, run_container, status, wait_mount_state
from tests.vm.machine import Machine

pytestmark = pytest.mark.timeout(1200)

PORT = 8111
FILE_SYSTEM_ID = aws_standin.FILE_SYSTEM_ID
DNS_NAME = aws_standin.DNS_NAME
PRODUCTION = ("vers=4.1", "hard", "timeo=600", "retrans=2", "noresvport")


def config(mount_type: str) -> str:
    return f"""rack = "{RACK}"

[mount]
type = "{mount_type}"
file_system_id = "{FILE_SYSTEM_ID}"
allow_local_fallback = false

[aws]
imds_endpoint = "http://127.0.0.1:{PORT}"
endpoint_url = "http://127.0.0.1:{PORT}"

[guard]
enabled = true
when_unhealthy = "deny"
violations = "deny"
"""


def use_discovery(vm: Machine, mount_type: str) -> None:
    """The machine as an EC2 instance of a rack whose EFS volagent finds by discovery."""
    vm.write_file("/usr/local/lib/aws_standin.py", Path(aws_standin.__file__).read_bytes())
    vm.sh(f"systemd-run --unit aws-standin python3 /usr/local/lib/aws_standin.py {PORT}")
    vm.sh(f"echo '127.0.0.1 {DNS_NAME}' >> /etc/hosts")
    # the credentials the EFS API calls are signed with (an instance profile's, on EC2)
    vm.sh(
        "mkdir -p /etc/systemd/system/volagent.service.d && printf '%s\\n' '[Service]'"
        " 'Environment=AWS_ACCESS_KEY_ID=AKIDVMTEST AWS_SECRET_ACCESS_KEY=vm-test-secret'"
        " > /etc/systemd/system/volagent.service.d/aws.conf"
    )
    # the type nfs mount of the snapshot goes; the export becomes the NFSv4 root, as EFS's is
    vm.sh("systemctl stop volagent && umount /volumes")
    vm.sh(
        f"sed -i 's|^{EXPORT} 127.0.0.1(|{EXPORT} 127.0.0.1(fsid=0,|' /etc/exports"
        " && exportfs -ra && cat /etc/exports"
    )
    vm.write_file("/etc/volagent/volagent.toml", config(mount_type).encode())
    vm.sh("volagent check-config && systemctl daemon-reload && systemctl start volagent")


def last_event(vm: Machine, event: str) -> dict[str, Any]:
    """The last log entry of `event` in volagent's journal."""
    out = vm.sh("journalctl -u volagent -o cat --no-pager").out
    found = [json.loads(line) for line in out.splitlines() if f'"event": "{event}"' in line]
    assert found, out[-3000:]
    entry: dict[str, Any] = found[-1]
    return entry


@pytest.mark.parametrize("mount_type", ["nfs4", "auto"])
def test_discovered_filesystem_mounts_as_nfs4_with_the_production_options(
    vm: Machine, mount_type: str
) -> None:
    # auto is efs where amazon-efs-utils is installed: it is not here
    assert vm.sh("command -v mount.efs", check=False).rc != 0
    use_discovery(vm, mount_type)
    took = wait_mount_state(vm, "mounted", timeout=600)
    print(f"type {mount_type}: mounted {took:.1f}s after volagent started")
    line = vm.sh("grep ' /volumes ' /proc/mounts").out.strip()
    print(f"/proc/mounts: {line}")
    source, _, fstype, options = line.split()[:4]
    assert (source, fstype) == (f"{DNS_NAME}:/", "nfs4")
    for opt in PRODUCTION:
        assert opt in options.split(","), (opt, options)
    # what volagent ran: `mount -t nfs4 -o OPTIONS fs-...:/ /volumes`, as its log says
    mounted = last_event(vm, "mount.mounted")
    print(f"volagent's log: {mounted}")
    assert (mounted["type"], mounted["source"]) == ("nfs4", f"{DNS_NAME}:/")
    rc, doc = status(vm)
    print(f"status: {doc.get('mount')}")
    assert rc == 0, doc
    m = doc["mount"]
    assert (m["state"], m["type"], m["source"]) == ("mounted", "nfs4", f"{DNS_NAME}:/")
    assert m["file_system_id"] == FILE_SYSTEM_ID
    # a guarded container's directory lands on the export through this mount
    run_container(vm, "web", "shop", "web", "/data")
    vm.sh("docker exec web sh -c 'echo via-nfs4 > /data/marker'")
    assert vm.sh(f"cat {EXPORT}/{RACK}-shop/web/data/marker").out.strip() == "via-nfs4"
