"""Flow control of one connection, as uvicorn keeps it: whether reading is paused (by the
connection: requests sent ahead while one is served) and whether writing is (by the
transport: the client reads slowly and the write buffer is past its high-water mark)."""

from __future__ import annotations

import asyncio


class FlowControl:
    """Pauses and resumes the transport's reading once each way; records the transport's
    pauses of writing (`pause_writing`/`resume_writing` of the protocol)."""

    __slots__ = ("read_paused", "transport", "write_paused")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None  # set once the transport is made
        self.read_paused = False
        self.write_paused = False

    def pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and self.transport is not None:
            self.read_paused = False
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
