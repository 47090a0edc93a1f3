"""The serving side of `--workers`: a replica of the main process's stores, fed through a pipe.

Frames (see `publish.py`) are applied one per event-loop callback, so a burst of writes (a relist)
is interleaved with queries instead of stalling them; the read side pauses while more than
`MAX_BACKLOG` bytes wait, so a slow replica holds the backlog in the pipe, not in its memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, cast

from kdns.serve.frames import FrameReader
from kdns.state.store import Store

log = logging.getLogger(__name__)

MAX_BACKLOG = 64 << 20


class Replica:
    """Applies published writes to `stores`, in the order the publisher made them."""

    def __init__(self, stores: Sequence[Store], on_stop: Callable[[], None]) -> None:
        self.stores = stores
        self.on_stop = on_stop
        #: set once the snapshot (everything before this process started) is in
        self.ready = asyncio.Event()

    def handle(self, message: tuple[Any, ...]) -> None:
        op = message[0]
        if op == "ready":
            self.ready.set()
            return
        if op == "stop":
            self.on_stop()
            return
        store = self.stores[message[1]]
        if op == "layer":
            store.add_layer(message[2], implicit_namespaces=message[3])
            return
        if op == "apply":
            store.apply(message[2], message[3], message[4], message[5])
        elif op == "replace":
            store.replace(message[2], message[3], message[4], message[5])
        elif op == "synced":
            store.set_synced(message[2], message[3])
        elif op == "unreachable":
            store.set_unreachable(message[2], message[3])
        else:
            raise ValueError(f"unknown message {op!r}")
        store.follow_serial(message[-1])


class FeedProtocol(asyncio.Protocol):
    """Reads the pipe from the main process; `on_lost` runs when it closes (the parent is gone)."""

    def __init__(self, replica: Replica, on_lost: Callable[[], None]) -> None:
        self.replica = replica
        self.on_lost = on_lost
        self.reader = FrameReader()
        self.transport: asyncio.ReadTransport | None = None
        self._scheduled = False
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.ReadTransport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        if self.reader.pending > MAX_BACKLOG and self.transport is not None:
            self.transport.pause_reading()
            self._paused = True
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._next)

    def _next(self) -> None:
        self._scheduled = False
        message = self.reader.next()
        if message is None:
            return
        try:
            self.replica.handle(message)
        except Exception:
            # A replica that cannot follow must not go on answering from stale data.
            log.exception("cannot apply an update from the main process; stopping")
            self.on_lost()
            return
        self._scheduled = True
        asyncio.get_running_loop().call_soon(self._next)
        if self._paused and self.reader.pending < MAX_BACKLOG // 2 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.on_lost()
