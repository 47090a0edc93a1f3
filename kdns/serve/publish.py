"""The watching side of `--workers`: every write to the store, repeated to the serving processes.

With `--workers N` the main process runs the sources (the Kubernetes watch, the zones/ files)
and keeps a store of its own, for /explain and for starting serving processes; the N serving
processes keep replicas of it (`replica.py`). A `Publisher` is the sink the sources write to: it
applies each write to the main store and, when it changed anything, sends the same write as one
frame to every replica. A new replica is forked with the store as it is (`worker.py`), in the same
event-loop callback in which it starts receiving writes, so it misses none and gets none twice.

Each frame ends with the main store's SOA serial after the write, which the replica adopts:
every process gives the same serial for the same data, also after a replica restarts.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any, Protocol

from kdns.serve.frames import pack
from kdns.state.model import KubeObject, ObjectKey, record_count
from kdns.state.store import Store


class Subscribers(Protocol):
    """Where frames go: the pool of serving processes."""

    def send(self, frame: bytes, records: int = 0) -> None: ...

    def __bool__(self) -> bool: ...


class Publisher:
    """A sink for store `index` (0: the cluster domain, then each --cluster) that publishes."""

    def __init__(self, store: Store, index: int, subscribers: Subscribers) -> None:
        self.store = store
        self.index = index
        self.subscribers = subscribers

    def apply(
        self,
        layer: str,
        upserts: Iterable[KubeObject] = (),
        deletes: Iterable[ObjectKey] = (),
        received_at: float | None = None,
    ) -> bool:
        ups, dels = list(upserts), list(deletes)
        changed = self.store.apply(layer, ups, dels, received_at)
        if changed:
            self._publish("apply", layer, ups, dels, received_at, records=_records(ups) + len(dels))
        return changed

    def replace(
        self,
        layer: str,
        objects: Iterable[KubeObject],
        kinds: Collection[str] | None = None,
        received_at: float | None = None,
    ) -> bool:
        objs = list(objects)
        changed = self.store.replace(layer, objs, kinds, received_at)
        if changed:
            self._publish("replace", layer, objs, kinds, received_at, records=_records(objs))
        return changed

    def set_synced(self, layer: str, synced: bool = True) -> None:
        self.store.set_synced(layer, synced)
        self._publish("synced", layer, synced)

    def set_unreachable(self, layer: str, since: float | None) -> None:
        self.store.set_unreachable(layer, since)
        self._publish("unreachable", layer, since)

    def _publish(self, op: str, layer: str, *args: Any, records: int = 0) -> None:
        if self.subscribers:
            frame = pack((op, self.index, layer, *args, self.store.serial))
            self.subscribers.send(frame, records)


def _records(objects: list[KubeObject]) -> int:
    return sum(record_count(obj) for obj in objects)
