"""The watching side of `--workers`: every write to the store, repeated to the serving processes.

With `--workers N` the main process runs the sources (the Kubernetes watch, the zones/ files)
and keeps a store of its own, for /explain and for starting serving processes; the N serving
processes keep replicas of it (`replica.py`). A `Publisher` is the sink the sources write to: it
applies each write to the main store and, when it changed anything, sends the same write as one
frame to every replica. A new replica first gets a `snapshot()` of the whole store, taken in the
same event-loop callback in which it starts receiving writes, so it misses none and gets none twice.

Each frame ends with the main store's SOA serial after the write, which the replica adopts:
every process gives the same serial for the same data, also after a replica restarts.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import Any, Protocol

from kdns.serve.frames import pack
from kdns.state.model import KubeObject, ObjectKey
from kdns.state.store import Store

#: Objects per frame of a snapshot: frames stay small (200 slices of 100 endpoints: about 2 MB),
#: however large the store.
SNAPSHOT_BATCH = 200


class Subscribers(Protocol):
    """Where frames go: the pool of serving processes."""

    def send(self, frame: bytes) -> None: ...

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
            self._publish("apply", layer, ups, dels, received_at)
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
            self._publish("replace", layer, objs, kinds, received_at)
        return changed

    def set_synced(self, layer: str, synced: bool = True) -> None:
        self.store.set_synced(layer, synced)
        self._publish("synced", layer, synced)

    def set_unreachable(self, layer: str, since: float | None) -> None:
        self.store.set_unreachable(layer, since)
        self._publish("unreachable", layer, since)

    def _publish(self, op: str, layer: str, *args: Any) -> None:
        if self.subscribers:
            self.subscribers.send(pack((op, self.index, layer, *args, self.store.serial)))


_Layer = tuple[int, str, bool, bool, float | None, list[KubeObject], int]


def snapshot(stores: Sequence[Store]) -> Iterator[bytes]:
    """Frames that rebuild `stores` in a replica, ending with a "ready" frame.

    The content is taken when this is called: lists of the records, which are immutable, so
    later writes do not show. The frames are pickled as they are consumed, so that a large store
    never sits in memory twice while a replica reads it.
    """
    layers: list[_Layer] = [
        (index, name, implicit, synced, since, store.layer_objects(name), store.serial)
        for index, store in enumerate(stores)
        for name, implicit, synced, since in store.layer_states()
    ]
    return _frames(layers)


def _frames(layers: list[_Layer]) -> Iterator[bytes]:
    for index, name, implicit, synced, since, objects, serial in layers:
        yield pack(("layer", index, name, implicit))
        for start in range(0, len(objects), SNAPSHOT_BATCH):
            batch = objects[start : start + SNAPSHOT_BATCH]
            yield pack(("apply", index, name, batch, [], None, serial))
        if synced:
            yield pack(("synced", index, name, True, serial))
        if since is not None:
            yield pack(("unreachable", index, name, since, serial))
    yield pack(("ready",))
