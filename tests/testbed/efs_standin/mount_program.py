#!/usr/bin/env python3
"""The EFS stand-in's mount program: receives the exact argv volagent gives `mount`,
`PROG -t TYPE -o OPTS SOURCE MOUNT_POINT`, logs it, and realises it with
`bindfs EXPORT MOUNT_POINT`, where EXPORT is `<exports>/<source host>`: one export directory
per server. No export directory for the host is "no such export"; a file
`<exports>/<host>.fail` makes the mount fail with its text (a server refusing mounts).

Usage (volagent's mount_program is a wrapper that adds the first three options):
    mount_program.py --exports DIR --log FILE --prog WRAPPER -t TYPE -o OPTS SOURCE MOUNT_POINT
The log gets one JSON line per call: {"argv": [WRAPPER, "-t", TYPE, ...]}, what volagent ran.
Standard library only; runs with any python3.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--exports", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--prog", required=True)
    p.add_argument("-t", dest="type", required=True)
    p.add_argument("-o", dest="options", required=True)
    p.add_argument("source")
    p.add_argument("mount_point")
    args = p.parse_args(argv)
    with open(args.log, "a", encoding="utf-8") as f:
        line = {"argv": [args.prog, *argv[6:]], "time": time.time()}
        f.write(json.dumps(line) + "\n")
    host = args.source.rpartition(":")[0] or args.source
    export = os.path.join(args.exports, host)
    fail = export + ".fail"
    if os.path.exists(fail):
        with open(fail, encoding="utf-8") as f:
            sys.stderr.write(f"mount.{args.type}: {f.read().strip()}\n")
        return 32
    if not os.path.isdir(export):
        sys.stderr.write(
            f"mount.{args.type}: mounting {args.source} failed, reason given by server: "
            "No such file or directory\n"
        )
        return 32
    # bindfs forks its server and returns once the mount is in place; its output goes to
    # the log's neighbour so it never holds the caller's stdout
    with open(args.log + ".bindfs", "ab") as out:
        rc = subprocess.call(
            ["bindfs", export, args.mount_point],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
    if rc != 0:
        sys.stderr.write(f"mount.{args.type}: bindfs failed with exit {rc}\n")
        return 32
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
