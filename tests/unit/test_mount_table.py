"""The mount table reader: mountinfo lines, escapes, stacked mounts; and source matching."""

from __future__ import annotations

import os
from pathlib import Path

from volagent.mount.table import find_mount, mount_at, parse_line, parse_mountinfo, read_table
from volagent.mount.target import Target, normalise_source

EFS_LINE = (
    "36 22 0:52 / /volumes rw,relatime shared:7 master:3 - nfs4 "
    "fs-1.efs.us-east-1.amazonaws.com:/ rw,vers=4.1,addr=10.0.2.5"
)
SAMPLE = f"""\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
{EFS_LINE}
37 36 0:53 / /volumes rw,nosuid - fuse /srv/export rw,user_id=0
40 22 254:0 /var/lib/local\\040dir /mnt/with\\040space rw - ext4 /dev/vda rw
garbage line
"""


def test_parses_fields_and_optional_tags() -> None:
    entries = parse_mountinfo(SAMPLE)
    assert [e.mount_id for e in entries] == [22, 36, 37, 40]
    nfs = entries[1]
    assert nfs.parent_id == 22
    assert nfs.dev == os.makedev(0, 52)
    assert nfs.fstype == "nfs4"
    assert nfs.source == "fs-1.efs.us-east-1.amazonaws.com:/"
    assert nfs.super_options == "rw,vers=4.1,addr=10.0.2.5"
    assert nfs.options == "rw,relatime"


def test_unescapes_octal() -> None:
    entry = parse_mountinfo(SAMPLE)[3]
    assert entry.mount_point == "/mnt/with space"
    assert entry.root == "/var/lib/local dir"


def test_mount_at_is_the_topmost_and_exact() -> None:
    entries = parse_mountinfo(SAMPLE)
    top = mount_at(entries, "/volumes/")
    assert top is not None and top.mount_id == 37
    assert mount_at(entries, "/volumes/sub") is None
    assert mount_at(entries, "/vol") is None


def test_bad_lines_are_skipped() -> None:
    assert parse_line("") is None
    assert parse_line("1 2 x:y / / rw - ext4 /dev/vda rw") is None
    assert parse_line("1 2 0:1 / / rw no-separator") is None


def test_source_forms_compare_equal() -> None:
    assert normalise_source("FS-1.efs.us-east-1.amazonaws.com:") == normalise_source(
        "fs-1.efs.us-east-1.amazonaws.com:/"
    )
    assert normalise_source("server:/export/") == "server:/export"
    target = Target(
        type="nfs4",
        source="fs-1.efs.us-east-1.amazonaws.com:/",
        aliases=frozenset({"10.0.2.5:/"}),
    )
    by_ip = parse_line("36 22 0:52 / /volumes rw - nfs4 10.0.2.5: rw")
    other = parse_line("36 22 0:52 / /volumes rw - nfs4 10.0.9.9:/ rw")
    assert by_ip is not None and other is not None
    assert target.matches_source(by_ip)
    assert not target.matches_source(other)


def test_nfs_mounts_take_their_root_from_the_source() -> None:
    # what Linux's NFS client shows: root "/" for every mount, the directory in the source
    export = parse_line("167 26 0:41 / /volumes rw - nfs4 127.0.0.1:/export rw,vers=4.1")
    bind = parse_line("165 26 0:41 / /data rw - nfs4 127.0.0.1:/export/vmrack-a/web/data rw")
    efs = parse_line("36 22 0:52 / /volumes rw - nfs4 fs-1.efs.us-east-1.amazonaws.com:/ rw")
    efs_bind = parse_line("37 22 0:52 / /d rw - nfs4 fs-1.efs.us-east-1.amazonaws.com:/r-a/s rw")
    v6 = parse_line("38 22 0:53 / /v rw - nfs [fd00::5]:/srv//x/ rw")
    assert export is not None and bind is not None and efs is not None
    assert efs_bind is not None and v6 is not None
    assert (export.root, bind.root) == ("/export", "/export/vmrack-a/web/data")
    assert (efs.root, efs_bind.root, v6.root) == ("/", "/r-a/s", "/srv/x")
    assert bind.source == "127.0.0.1:/export/vmrack-a/web/data"


def test_reading_only_the_mounts_at_a_point_finds_what_the_whole_table_finds(
    tmp_path: Path,
) -> None:
    info = tmp_path / "mountinfo"
    # a mount whose root names the mount point, and a deeper mount below it: neither is at it
    extra = (
        "41 22 254:0 /volumes /srv/copy rw - ext4 /dev/vda rw\n"
        "42 36 0:54 / /volumes/a rw - tmpfs tmpfs rw\n"
    )
    info.write_text(SAMPLE + extra)
    for point in ("/volumes", "/volumes/", "/mnt/with space", "/", "/volumes/a", "/nowhere"):
        whole = mount_at(parse_mountinfo(SAMPLE + extra), point)
        assert find_mount(point, str(info)) == whole, point
    assert [e.mount_id for e in read_table(str(info), at="/volumes")] == [36, 37]
