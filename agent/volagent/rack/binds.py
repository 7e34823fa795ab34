"""The binds other hosts of the rack use, read from their usage records, so that rule 7
(binds do not nest) holds across hosts and not only on this one.

Each host lists its containers' bind paths in its usage records (`usage.py`); this root task
reads every other host's records every REFRESH_S into `state.rack_binds`, through the
records worker, only while the mount is healthy. A decision here can lag another host by
that interval plus its own recording delay and, on NFS, the client's attribute cache; the
check at every container start (`volumes/mount_check.py`) covers that window.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time

from volagent import log, safedir
from volagent.errors import VolagentError
from volagent.rack import records
from volagent.rack.usage import REFRESH_S as USAGE_REFRESH_S
from volagent.rack.usage import usage_dirs
from volagent.state import AgentState
from volagent.worker import TimedWorker

REFRESH_S = 10.0
READ_TIMEOUT_S = 10.0
# a record not refreshed for this long belongs to a host that stopped recording: its
# containers' binds no longer count
STALE_AFTER_S = 2 * USAGE_REFRESH_S


def read_rack_binds(mount_point: str, dev: int | None, own_host: str, now: float) -> dict[str, str]:
    """Blocking: bind path -> host, from every fresh usage record of another host."""
    root = safedir.open_shared_root(mount_point, dev)
    out: dict[str, str] = {}
    try:
        for _, fd in usage_dirs(root):
            _read_records(fd, own_host, now, out)
    finally:
        os.close(root)
    return out


def _read_records(fd: int, own_host: str, now: float, out: dict[str, str]) -> None:
    for host_file, record in records.read_records(fd):
        host = str(record.get("host") or host_file)
        fresh = isinstance(record.get("time"), (int, float)) and (
            now - float(record["time"]) < STALE_AFTER_S
        )
        if host == own_host or not fresh:
            continue
        for path in record.get("binds") or ():
            if isinstance(path, str):
                out.setdefault(path, host)


class RackBinds:
    """The root task keeping `state.rack_binds` current."""

    def __init__(self, state: AgentState, worker: TimedWorker) -> None:
        self.state = state
        self.worker = worker
        self.log = log.get("rack-binds")

    async def run(self) -> None:
        while True:
            with contextlib.suppress(VolagentError, OSError):
                await self.refresh()
            await asyncio.sleep(REFRESH_S)

    async def refresh(self) -> None:
        st = self.state
        if not st.mount_healthy or st.mount_dev is None:
            return
        call = functools.partial(
            read_rack_binds, st.config.mount_point, st.mount_dev, st.host_id, time.time()
        )
        st.rack_binds = await self.worker.run(call, READ_TIMEOUT_S, what="reading rack binds")
