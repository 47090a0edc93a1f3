"""The reflector, through the real kubernetes client, against the API server double.

Each test runs one or two reflectors into a real `Store` on its own event loop (written through
`LoopSink`, as in the server) and checks the store, often after every single change it went
through (`LoopStore.changes`), not just at the end. Every wait is bounded.
"""

from __future__ import annotations

import http.client
import itertools
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes.client import ApiException
from urllib3.exceptions import ProtocolError

import kdns.sources.reflector
from kdns.sources.cluster import load_api_client
from kdns.sources.reflector import Recovery, Reflector, WatchSettings, _Dechunker, backoff_delay
from kdns.sources.trim import trim as real_trim
from kdns.state.model import KubeObject, ObjectKey
from kdns.state.store import Sink
from testkit import apiserver
from testkit.apiserver import (
    FAST,
    TOKEN,
    FakeApiServer,
    Fault,
    LoopStore,
    endpoint_slice,
    namespace,
    service,
    slice_endpoint,
    wait_for,
    write_kubeconfig,
)

Start = Callable[..., Reflector]


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    with FakeApiServer() as server:
        yield server


@pytest.fixture
def client(api: FakeApiServer, tmp_path: Path) -> Any:
    return load_api_client(str(write_kubeconfig(tmp_path / "kubeconfig", api.url)))


@pytest.fixture
def store() -> Iterator[LoopStore]:
    loop_store = LoopStore()
    yield loop_store
    loop_store.close()


@pytest.fixture
def start(client: Any, store: LoopStore) -> Iterator[Start]:
    """Start a reflector into `store`; every one is stopped at the end of the test."""
    started: list[Reflector] = []

    def run(
        kind: str = "Service",
        *,
        settings: WatchSettings = FAST,
        sink: Sink | None = None,
        **kw: Any,
    ) -> Reflector:
        reflector = Reflector(
            kind, sink or store.sink, store.layer, client, settings=settings, **kw
        )
        reflector.start()
        started.append(reflector)
        return reflector

    yield run
    for reflector in started:
        reflector.stop()


def synced(reflector: Reflector) -> Reflector:
    assert reflector.wait_synced(20), f"{reflector.name} did not sync"
    return reflector


def changes_since(store: LoopStore, mark: int) -> list[Any]:
    return store.read(lambda _: list(store.changes[mark:]))


def count(store: LoopStore) -> int:
    return store.read(lambda _: len(store.changes))


def hold_next_watch(
    api: FakeApiServer, reflector: Reflector, path: str | None = None
) -> threading.Event:
    """End the open watches cleanly and hold the reflector's next watch request (at `path`)
    until the returned event is set: the reflector misses what happens meanwhile, without an
    error (an error alone makes it list again)."""
    # A watch that ends before it delivered anything counts as a failure: a bookmark first.
    wait_for(lambda: reflector.stats.watches >= 1, what="the watch")
    bookmarks = reflector.stats.events.get("BOOKMARK", 0)
    api.send_bookmarks()
    wait_for(lambda: reflector.stats.events.get("BOOKMARK", 0) > bookmarks, what="a bookmark")
    gate = threading.Event()
    resource = reflector.resource.plural
    fault = api.inject(Fault(None, resource=resource, watch=True, path=path, gate=gate))
    api.end_watches()
    wait_for(lambda: fault.hits == 1, what="the next watch to be held")
    return gate


# -- list ------------------------------------------------------------------------------------------


def test_first_list_pages_through_continue_and_syncs(
    api: FakeApiServer, store: LoopStore, start: Start
) -> None:
    for i in range(5):
        api.apply(service(f"svc-{i}", cluster_ip=f"10.96.0.{i + 1}"))
    calls: list[Reflector] = []
    reflector = synced(start(on_synced=calls.append))

    assert store.service_names() == {f"svc-{i}" for i in range(5)}
    assert store.addresses("svc-3") == ["10.96.0.4"]
    lists = api.requests("services", watch=False)
    assert [r.query.get("limit") for r in lists] == ["2", "2", "2"]
    assert [bool(r.query.get("continue")) for r in lists] == [False, True, True]
    assert calls == [reflector]
    assert reflector.resource_version == str(api.resource_version)
    wait_for(lambda: api.requests("services", watch=True), what="the watch")
    watch = api.requests("services", watch=True)[0].query
    assert watch["resourceVersion"] == reflector.resource_version
    assert watch["allowWatchBookmarks"] == "true"
    assert watch["timeoutSeconds"] == "30"


def test_added_modified_deleted_reach_the_store_with_arrival_time(
    api: FakeApiServer, store: LoopStore, start: Start
) -> None:
    api.apply(service("web", cluster_ip="10.96.0.10"))
    reflector = synced(start())
    mark = count(store)

    api.apply(service("db", cluster_ip="10.96.0.20"))
    wait_for(lambda: store.addresses("db") == ["10.96.0.20"], what="ADDED")
    api.apply(service("web", cluster_ip="10.96.0.11"))
    wait_for(lambda: store.addresses("web") == ["10.96.0.11"], what="MODIFIED")
    api.delete("Service", "db")
    wait_for(lambda: store.addresses("db") is None, what="DELETED")

    seen = changes_since(store, mark)
    assert len(seen) == 3
    assert all(c.received_at is not None and c.received_at <= c.applied_at for c in seen)
    assert reflector.stats.events == {"ADDED": 1, "MODIFIED": 1, "DELETED": 1}
    assert reflector.stats.objects == 1
    assert reflector.stats.lists == 1


def test_an_object_trim_refuses_is_counted_and_the_rest_still_load(
    api: FakeApiServer, store: LoopStore, start: Start
) -> None:
    bad = service("bad")
    bad["spec"]["ports"][0]["port"] = "eighty"
    api.apply_all([bad, service("good", cluster_ip="10.96.0.2")])
    reflector = synced(start())
    assert store.service_names() == {"good"}
    assert reflector.stats.invalid == 1


# -- watch -----------------------------------------------------------------------------------------


def test_bookmarks_advance_the_resource_version(
    api: FakeApiServer, store: LoopStore, start: Start
) -> None:
    api.apply(service("web", cluster_ip="10.96.0.10"))
    reflector = synced(start())
    wait_for(lambda: api.open_watches() == 1, what="the watch")
    api.apply(namespace("elsewhere"))  # a write to another kind: services see no event
    api.send_bookmarks()
    wait_for(lambda: reflector.resource_version == str(api.resource_version), what="bookmark's RV")
    assert reflector.stats.events.get("BOOKMARK") == 1

    # Forget history up to now and end the watch cleanly: only a reflector that followed the
    # bookmark can watch again without a 410 and a relist.
    api.compact()
    api.end_watches()
    api.apply(service("web", cluster_ip="10.96.0.11"))
    wait_for(lambda: store.addresses("web") == ["10.96.0.11"], what="change after rewatch")
    assert reflector.stats.lists == 1
    assert "ERROR" not in reflector.stats.events


def test_server_timeout_rewatches_from_the_newest_version_without_relisting(
    api: FakeApiServer, store: LoopStore, start: Start
) -> None:
    api.apply(service("web", cluster_ip="10.96.0.10"))
    settings = replace(FAST, watch_timeout=(1, 1))
    reflector = synced(start(settings=settings))
    api.apply(service("web", cluster_ip="10.96.0.11"))
    changed_at = str(api.resource_version)
    wait_for(lambda: store.addresses("web") == ["10.96.0.11"], what="first change")
    wait_for(lambda: len(api.requests("services", watch=True)) >= 3, timeout=30, what="rewatches")

    api.apply(service("web", cluster_ip="10.96.0.12"))
    wait_for(lambda: store.addresses("web") == ["10.96.0.12"], what="change after rewatches")
    watches = api.requests("services", watch=True)
    assert all(w.query["timeoutSeconds"] == "1" for w in watches)
    assert [w.query["resourceVersion"] for w in watches[1:3]] == [changed_at, changed_at]
    assert len(api.requests("services", watch=False)) == 1
    assert reflector.stats.errors == 0


def test_idle_watch_is_listed_and_reopened_quietly(
    api: FakeApiServer, store: LoopStore, start: Start
) -> None:
    api.apply(service("web", cluster_ip="10.96.0.10"))
    mark = count(store)
    reflector = synced(start(settings=replace(FAST, idle_timeout=0.3)))
    wait_for(lambda: reflector.stats.watches >= 3, what="idle watches reopened")
    api.apply(service("web", cluster_ip="10.96.0.11"))
    wait_for(lambda: store.addresses("web") == ["10.96.0.11"], what="a change after that")
    assert reflector.stats.errors == 0
    # A silent watch may be a dead connection to an apiserver since replaced: each is followed
    # by a list, a diff that changed nothing here (the first list and the change only).
    assert reflector.stats.relists >= 2
    assert len(changes_since(store, mark)) == 2


@pytest.mark.parametrize("as_http", [False, True], ids=["error-event", "http-410"])
def test_expired_version_relists_and_unchanged_names_never_disappear(
    api: FakeApiServer, store: LoopStore, start: Start, as_http: bool
) -> None:
    api.expired_as_http = as_http
    api.apply_all(
        [
            service("keep", cluster_ip="10.96.0.1"),
            service("change", cluster_ip="10.96.0.2"),
            service("gone", cluster_ip="10.96.0.3"),
        ]
    )
    reflector = synced(start())
    mark = count(store)

    # The next watch waits while the cluster changes and its history is compacted: it then asks
    # for a resourceVersion that is gone.
    gate = hold_next_watch(api, reflector)
    api.apply(service("change", cluster_ip="10.96.0.22"))
    api.delete("Service", "gone")
    api.apply(service("new", cluster_ip="10.96.0.4"))
    api.compact()
    gate.set()

    wait_for(lambda: reflector.stats.relists == 1, what="the relist")
    assert store.service_names() == {"keep", "change", "new"}
    assert store.addresses("change") == ["10.96.0.22"]
    seen = changes_since(store, mark)
    # The changes of each page (two items a page here) as it arrives, the deletes with the
    # last: three listed items, so at most two changes; in none did "keep" go missing.
    assert 1 <= len(seen) <= 2, seen
    assert all(c.services[("default", "keep")] == ("10.96.0.1",) for c in seen)
    assert reflector.stats.lists == 2
    assert reflector.stats.errors == 0
    if as_http:
        assert [w.status for w in api.requests("services", watch=True)].count(410) == 1
    else:
        assert reflector.stats.events.get("ERROR") == 1


def test_a_relist_answers_each_pages_changes_before_the_last_page(
    api: FakeApiServer, store: LoopStore, start: Start
) -> None:
    """What changed while the watch was down answers as soon as its page of the relist is in,
    not after the last page; what is gone leaves with the last page, never before."""
    api.apply_all(
        [service(f"svc-{i}", cluster_ip=f"10.96.0.{i + 1}") for i in range(6)]  # three pages
    )
    reflector = synced(start())
    gate = hold_next_watch(api, reflector)
    api.apply(service("svc-0", cluster_ip="10.96.0.100"))  # on the first page
    api.delete("Service", "svc-5")  # gone: known only once every page is in
    api.compact()
    later_pages = threading.Event()
    api.inject(Fault(None, resource="services", watch=False, query="continue", gate=later_pages))
    gate.set()
    try:
        wait_for(lambda: store.addresses("svc-0") == ["10.96.0.100"], what="the first page")
        assert reflector.stats.relists == 0  # held at the second page: the relist is not over
        assert "svc-5" in store.service_names()
    finally:
        later_pages.set()
    wait_for(lambda: reflector.stats.relists == 1, what="the relist")
    assert store.service_names() == {f"svc-{i}" for i in range(5)}


@pytest.mark.parametrize("overtaken", [False, True], ids=["rv-still-behind", "rv-overtaken"])
def test_after_a_restart_on_a_wiped_etcd_no_ghost_stays_and_new_objects_come(
    api: FakeApiServer, store: LoopStore, start: Start, overtaken: bool
) -> None:
    """The apiserver comes back on a new etcd, its objects re-created without one service and
    with a new one: resourceVersions went backwards. Our resourceVersion is in its future
    (still behind) or already in its past (overtaken by the writes made before we reconnect);
    either way watching from it again would show neither change, ever."""
    api.apply_all(
        [
            service("keep", cluster_ip="10.96.0.1"),
            service("changed", cluster_ip="10.96.0.2"),
            service("gone", cluster_ip="10.96.0.3"),
        ]
    )
    for i in range(20):  # history moves well past the services' resourceVersions
        api.apply(namespace(f"ns-{i}"))
    # No idle timeout to come to the rescue: the broken watch alone must bring the relist.
    reflector = synced(start(settings=replace(FAST, idle_timeout=600)))
    seen_rv = int(reflector.resource_version)
    wait_for(lambda: api.open_watches() == 1, what="the watch")
    mark = count(store)

    api.go_down()
    api.wipe()
    # Re-created in the same order: "keep" and "changed" get the very resourceVersions they had
    # (only their uids tell them apart), and "changed" has another address now.
    api.apply_all(
        [
            service("keep", cluster_ip="10.96.0.1"),
            service("changed", cluster_ip="10.96.0.22"),
            service("new", cluster_ip="10.96.0.4"),
        ]
    )
    if overtaken:
        for i in range(30):
            api.apply(namespace(f"ns-{i}"))
        assert api.resource_version > seen_rv
    else:
        assert api.resource_version < seen_rv
    api.come_up()

    wait_for(lambda: reflector.stats.relists == 1, what="the relist")
    assert store.service_names() == {"keep", "changed", "new"}
    assert store.addresses("changed") == ["10.96.0.22"]
    assert reflector.resource_version == str(api.resource_version)
    # "keep" never stopped answering, and the new history is followed from here on.
    assert all(
        c.services[("default", "keep")] == ("10.96.0.1",) for c in changes_since(store, mark)
    )
    api.apply(service("later", cluster_ip="10.96.0.5"))
    wait_for(lambda: store.addresses("later") == ["10.96.0.5"], what="a change after the restore")


def test_relist_of_unchanged_content_changes_nothing(
    api: FakeApiServer, store: LoopStore, start: Start
) -> None:
    api.apply_all([service("a", cluster_ip="10.96.0.1"), service("b", cluster_ip="10.96.0.2")])
    reflector = synced(start())
    mark = count(store)
    api.apply(namespace("elsewhere"))  # history moves on without services changing
    api.compact()
    api.cut_watches()
    wait_for(lambda: reflector.stats.relists == 1, what="the relist")
    assert changes_since(store, mark) == []


def test_event_cut_in_half_is_received_by_the_relist_after_the_break(
    api: FakeApiServer, store: LoopStore, start: Start
) -> None:
    api.apply_all([service("web", cluster_ip="10.96.0.10"), service("db", cluster_ip="10.96.0.2")])
    reflector = synced(start())
    wait_for(lambda: api.open_watches() == 1, what="the watch")
    mark = count(store)
    api.truncate_next_event()
    api.apply(service("web", cluster_ip="10.96.0.11"))
    wait_for(lambda: store.addresses("web") == ["10.96.0.11"], what="the cut event")
    assert reflector.stats.errors == 1
    assert "broke" in reflector.stats.last_error
    wait_for(lambda: reflector.stats.relists == 1, what="the relist after the break")
    # A cut reaches only the watches open at that moment: wait for the one after the relist,
    # the second watch (it flaked on a loaded machine when the cut came first and cut nothing).
    wait_for(
        lambda: reflector.stats.watches == 2 and api.open_watches() == 1,
        what="the watch after the relist",
    )

    api.cut_watches()  # and a connection dying while idle
    wait_for(lambda: reflector.stats.relists == 2, what="the relist after the second cut")
    api.apply(service("web", cluster_ip="10.96.0.12"))
    wait_for(lambda: store.addresses("web") == ["10.96.0.12"], what="a change after the cut")
    assert reflector.stats.errors == 2
    # Half an event is never applied; the relists are diffs: nothing else ever changed.
    assert reflector.stats.events.get("MODIFIED") == 1
    seen = changes_since(store, mark)
    assert [c.services[("default", "web")] for c in seen] == [("10.96.0.11",), ("10.96.0.12",)]
    assert all(c.services[("default", "db")] == ("10.96.0.2",) for c in seen)


def test_slice_with_null_endpoints_and_slice_that_stops_counting(
    api: FakeApiServer, store: LoopStore, start: Start
) -> None:
    api.apply(service("db", cluster_ip="None"))  # headless
    api.apply(endpoint_slice("db-x1", "db", endpoints=None))
    synced(start("Service"))
    slices = synced(start("EndpointSlice"))
    assert store.endpoint_addresses("db") == []
    assert api.get("EndpointSlice", "db-x1")["endpoints"] is None  # type: ignore[index]

    api.apply(endpoint_slice("db-x1", "db", endpoints=["10.1.0.5", slice_endpoint("10.1.0.6")]))
    wait_for(lambda: store.endpoint_addresses("db") == ["10.1.0.5", "10.1.0.6"], what="endpoints")
    fqdn = endpoint_slice("db-x1", "db", endpoints=["10.1.0.5"], address_type="FQDN")
    api.apply(fqdn)  # no longer a slice DNS can use: what it said before must go
    wait_for(lambda: store.endpoint_addresses("db") == [], what="FQDN slice dropped")
    assert slices.stats.objects == 0


# -- the watch stream read by hand -----------------------------------------------------------------


@dataclass
class Framing:
    """How the double frames the bytes of its watch streams (patched over its `_chunk`).

    `group`: events per chunk (held back until that many are queued, or the stream ends).
    `torture`: each event sent as three chunks (the second with a chunk extension), the last
    holding only the newline, and the bytes written in six pieces with pauses between, cut inside
    a size line, inside data and inside a CRLF. `cut`: after `cut_after` more events, write only
    part of the next event's chunk ("size": one byte of its size line, "data": half the chunk,
    "crlf": all but the CRLF after the data) and drop the connection.
    """

    group: int = 1
    torture: bool = False
    cut: str | None = None
    cut_after: int = 0
    last_write: float = 0.0  # time.monotonic() just before the last write began
    ports: set[int] = field(default_factory=set)  # client ports of the streams written to
    pending: dict[int, list[bytes]] = field(default_factory=dict)

    def chunk(self, handler: Any, data: bytes) -> None:
        if not data:  # the end of the stream: what is held back goes first
            held = self.pending.pop(id(handler), [])
            if held:
                self._write(handler, _frame(b"".join(held)))
            self._write(handler, _frame(b""))
            return
        if self.group > 1:
            queue = self.pending.setdefault(id(handler), [])
            queue.append(data)
            if len(queue) < self.group:
                return
            data = b"".join(queue)
            queue.clear()
        if self.cut is not None:
            if self.cut_after > 0:
                self.cut_after -= 1
            else:
                how, self.cut = self.cut, None
                wire = _frame(data)
                cut = {"size": 1, "data": len(wire) // 2, "crlf": len(wire) - 2}[how]
                self._write(handler, wire[:cut])
                handler.connection.shutdown(socket.SHUT_RDWR)
                handler.close_connection = True
                raise ConnectionAbortedError("cut on purpose")
        if not self.torture:
            self._write(handler, _frame(data))
            return
        half = len(data) // 2
        wire = (
            b"%x;kdns=test\r\n%s\r\n" % (half, data[:half])
            + _frame(data[half:-1])
            + _frame(data[-1:])  # the newline alone
        )
        size_line = wire.index(b"\r\n")
        cuts = [1, size_line + 1, size_line + 2 + half // 2, len(wire) // 2 + 1, len(wire) - 3]
        for a, b in itertools.pairwise([0, *cuts, len(wire)]):
            self._write(handler, wire[a:b])
            time.sleep(0.01)

    def _write(self, handler: Any, data: bytes) -> None:
        self.last_write = time.monotonic()  # before: the reader may have it before write returns
        handler.wfile.write(data)
        self.ports.add(handler.client_address[1])


def _frame(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@pytest.fixture
def framing(monkeypatch: pytest.MonkeyPatch) -> Framing:
    """Reframe the double's watch streams, and make sure the reflector reads them by hand."""
    frames = Framing()
    monkeypatch.setattr(
        apiserver._Handler, "_chunk", lambda handler, data: frames.chunk(handler, data)
    )

    def slow_path(response: Any) -> Iterator[tuple[bytes, float]]:
        raise AssertionError("the watch stream was left to urllib3")

    monkeypatch.setattr(kdns.sources.reflector, "_urllib3_lines", slow_path)
    return frames


def test_lines_split_across_chunks_and_reads_arrive_whole_when_complete(
    api: FakeApiServer, store: LoopStore, start: Start, framing: Framing
) -> None:
    api.apply(service("web", cluster_ip="10.96.0.10"))
    reflector = synced(start())
    wait_for(lambda: api.open_watches() == 1, what="the watch")
    mark = count(store)
    framing.torture = True
    api.apply(service("web", cluster_ip="10.96.0.11"))
    wait_for(lambda: store.addresses("web") == ["10.96.0.11"], what="the event in pieces")
    [change] = changes_since(store, mark)
    assert change.received_at is not None
    # Stamped when its last piece arrived, not its first (the pieces are 50 ms apart).
    assert change.received_at >= framing.last_write

    framing.torture = False
    framing.group = 3
    with api._cond:  # three events the stream thread finds at once: one chunk
        api.apply(service("a", cluster_ip="10.96.0.1"))
        api.apply(service("b", cluster_ip="10.96.0.2"))
        api.apply(service("web", cluster_ip="10.96.0.12"))
    wait_for(lambda: store.addresses("web") == ["10.96.0.12"], what="three events in a chunk")
    assert store.service_names() == {"web", "a", "b"}
    assert reflector.stats.events == {"MODIFIED": 2, "ADDED": 2}
    assert reflector.stats.errors == 0, reflector.stats.last_error
    # The reflector notes an event's resourceVersion just after handing the event to the sink,
    # and the store can show it first (it is applied on another thread): wait, do not assume.
    wait_for(
        lambda: reflector.resource_version == str(api.resource_version),
        what="the last event's resourceVersion",
    )


def test_clean_end_of_a_hand_read_stream_reuses_the_connection(
    api: FakeApiServer, store: LoopStore, start: Start, framing: Framing
) -> None:
    api.apply(service("web", cluster_ip="10.96.0.10"))
    framing.group = 2  # the last event of each stream is held back to the empty chunk
    reflector = synced(start(settings=replace(FAST, watch_timeout=(1, 1))))
    api.apply(service("web", cluster_ip="10.96.0.11"))
    wait_for(lambda: store.addresses("web") == ["10.96.0.11"], timeout=30, what="flushed at end")
    wait_for(lambda: reflector.stats.watches >= 3, timeout=30, what="watches ending cleanly")
    assert reflector.stats.errors == 0, reflector.stats.last_error
    assert reflector.stats.lists == 1
    # Every watch on one connection: each stream was read to its end and the connection went
    # back to the pool (one dropped instead would show as a new client port).
    assert len(framing.ports) == 1


@pytest.mark.parametrize("where", ["size", "data", "crlf"])
def test_stream_cut_mid_chunk_keeps_the_whole_lines_and_rewatches(
    api: FakeApiServer, store: LoopStore, start: Start, framing: Framing, where: str
) -> None:
    api.apply_all([service("a", cluster_ip="10.96.0.1"), service("b", cluster_ip="10.96.0.2")])
    reflector = synced(start())
    wait_for(lambda: api.open_watches() == 1, what="the watch")
    framing.cut, framing.cut_after = where, 1  # the first event whole, the second cut
    with api._cond:
        api.apply(service("a", cluster_ip="10.96.0.11"))
        api.apply(service("b", cluster_ip="10.96.0.22"))
    wait_for(lambda: store.addresses("b") == ["10.96.0.22"], what="the cut event, again or whole")
    assert store.addresses("a") == ["10.96.0.11"]
    assert reflector.stats.errors == 1
    assert "broke" in reflector.stats.last_error
    # Whole lines are applied (cut after its data, the second event is whole), half lines never:
    # the relist after the break brings them.
    assert reflector.stats.events == {"MODIFIED": 2 if where == "crlf" else 1}
    wait_for(lambda: reflector.stats.relists == 1, what="the relist")


def test_streams_urllib3_cannot_hand_over_are_read_through_it(
    api: FakeApiServer, store: LoopStore, start: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kdns.sources.reflector, "_raw_body", lambda response: None)
    api.apply(service("web", cluster_ip="10.96.0.10"))
    reflector = synced(start())
    api.apply(service("web", cluster_ip="10.96.0.11"))
    wait_for(lambda: store.addresses("web") == ["10.96.0.11"], what="the event")
    assert reflector.stats.errors == 0


def _dechunk(wire: bytes, pieces: Iterable[int]) -> tuple[bytes, _Dechunker]:
    decoder = _Dechunker()
    at = 0
    for size in pieces:
        decoder.feed(wire[at : at + size])
        at += size
    decoder.feed(wire[at:])
    return bytes(decoder.body), decoder


def test_dechunker_any_framing_any_reads() -> None:
    rng = random.Random(7)
    for _ in range(300):
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 400)))
        wire, at = b"", 0
        while at < len(body):
            size = rng.randint(1, 60)
            ext = b";a=b" if rng.random() < 0.2 else b""
            wire += b"%X%s\r\n%s\r\n" % (len(body[at : at + size]), ext, body[at : at + size])
            at += size
        wire += b"0\r\nx-trailer: 1\r\n\r\n" if rng.random() < 0.5 else b"0\r\n\r\n"
        pieces = [rng.randint(1, 30) for _ in range(len(wire) // 10)]
        out, decoder = _dechunk(wire, pieces)
        assert out == body
        assert decoder.done


def test_dechunker_states_and_framing_errors() -> None:
    out, decoder = _dechunk(b"5\r\nhel", [])
    assert out == b"hel" and decoder.in_chunk and not decoder.ended
    out, decoder = _dechunk(b"3\r\nabc\r\n0\r\n", [])
    assert out == b"abc" and decoder.ended and not decoder.done
    for bad in (b"zz\r\n", b"-1\r\n", b"\r\n", b"3\r\nabcdef\r\n", b"1" * 70000):
        with pytest.raises(ProtocolError):
            _dechunk(bad, [])


# -- relists ---------------------------------------------------------------------------------------


class RecordingSink:
    """The store's `LoopSink`, noting every call a reflector makes."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.calls: list[tuple[str, list[ObjectKey], list[ObjectKey]]] = []

    def apply(
        self,
        layer: str,
        upserts: Iterable[KubeObject] = (),
        deletes: Iterable[ObjectKey] = (),
        received_at: float | None = None,
    ) -> object:
        upserts, deletes = list(upserts), list(deletes)
        self.calls.append(("apply", [o.key for o in upserts], deletes))
        return self.sink.apply(layer, upserts, deletes, received_at)

    def replace(
        self,
        layer: str,
        objects: Iterable[KubeObject],
        kinds: Collection[str] | None = None,
        received_at: float | None = None,
    ) -> object:
        objects = list(objects)
        self.calls.append(("replace", [o.key for o in objects], []))
        return self.sink.replace(layer, objects, kinds, received_at)

    def set_synced(self, layer: str, synced: bool = True) -> None:
        self.sink.set_synced(layer, synced)

    def set_unreachable(self, layer: str, since: float | None) -> None:
        self.sink.set_unreachable(layer, since)


def svc_key(name: str, ns: str = "default") -> ObjectKey:
    return ("Service", ns, name)


@pytest.mark.parametrize("scope", [None, "default"], ids=["cluster-wide", "namespaced"])
def test_relist_sends_only_changes_in_batches_and_nothing_disappears(
    api: FakeApiServer,
    store: LoopStore,
    start: Start,
    monkeypatch: pytest.MonkeyPatch,
    scope: str | None,
) -> None:
    keep = {f"keep-{i}": f"10.96.1.{i}" for i in range(4)}
    api.apply_all([service(n, cluster_ip=ip) for n, ip in keep.items()])
    api.apply_all([service(f"change-{i}", cluster_ip=f"10.96.2.{i}") for i in range(2)])
    api.apply_all([service(f"gone-{i}", cluster_ip=f"10.96.3.{i}") for i in range(3)])
    api.apply(service("web", "other", cluster_ip="10.96.9.9"))
    sink = RecordingSink(store.sink)
    settings = replace(FAST, batch_size=2)
    reflector = synced(start(settings=settings, sink=sink, namespace=scope))
    if scope is not None:  # the other namespace's own reflector, whose objects stay untouched
        synced(start(namespace="other"))
    held = 10 if scope is None else 9
    assert reflector.stats.objects == held
    first = list(sink.calls)
    assert [c[0] for c in first] == ["apply"] * 5, "the first list, two objects a call"
    assert all(len(up) + len(down) <= 2 for _, up, down in first)

    trimmed: list[Any] = []

    def counting_trim(kind: str, obj: Any, **options: Any) -> Any:
        trimmed.append(obj["metadata"]["name"])
        return real_trim(kind, obj, **options)

    monkeypatch.setattr(kdns.sources.reflector, "trim", counting_trim)
    mark = count(store)
    calls = len(sink.calls)
    path = "/api/v1/services" if scope is None else f"/api/v1/namespaces/{scope}/services"
    gate = hold_next_watch(api, reflector, path)
    api.apply_all([service(f"change-{i}", cluster_ip=f"10.96.2.{i + 100}") for i in range(2)])
    for i in range(3):
        api.delete("Service", f"gone-{i}")
    api.apply(service("new-0", cluster_ip="10.96.4.0"))
    api.compact()
    gate.set()
    wait_for(lambda: reflector.stats.relists == 1, what="the relist")

    relist = sink.calls[calls:]
    sent = [key for _, up, _ in relist for key in up]
    deleted = [key for _, _, down in relist for key in down]
    assert sorted(sent) == [svc_key("change-0"), svc_key("change-1"), svc_key("new-0")]
    assert sorted(deleted) == [svc_key(f"gone-{i}") for i in range(3)]
    assert sorted(trimmed) == ["change-0", "change-1", "new-0"], "unchanged items not trimmed"
    assert len(relist) == 3 and all(len(up) + len(down) <= 2 for _, up, down in relist)
    assert reflector.stats.objects == held - 2

    expected = {**keep, "change-0": "10.96.2.100", "change-1": "10.96.2.101", "new-0": "10.96.4.0"}
    assert store.service_names("default") == set(expected)
    assert all(store.addresses(name) == [ip] for name, ip in expected.items())
    assert store.addresses("web", "other") == ["10.96.9.9"]
    seen = changes_since(store, mark)
    assert len(seen) == 3, "one store change per batch"
    for change in seen:  # never a moment without the names that did not change
        for name, ip in keep.items():
            assert change.services[("default", name)] == (ip,)
        assert change.services[("other", "web")] == ("10.96.9.9",)
        for i in range(2):
            assert change.services[("default", f"change-{i}")] in (
                (f"10.96.2.{i}",),
                (f"10.96.2.{i + 100}",),
            )


def test_relist_drops_what_trim_now_refuses(
    api: FakeApiServer, store: LoopStore, start: Start
) -> None:
    api.apply(service("db", cluster_ip="None"))
    api.apply(endpoint_slice("db-x1", "db", endpoints=["10.1.0.5"]))
    synced(start("Service"))
    slices = synced(start("EndpointSlice"))
    gate = hold_next_watch(api, slices)
    api.apply(endpoint_slice("db-x1", "db", endpoints=["10.1.0.5"], address_type="FQDN"))
    api.compact()
    gate.set()
    wait_for(lambda: slices.stats.relists == 1, what="the relist")
    assert store.endpoint_addresses("db") == []
    assert slices.stats.objects == 0


def test_endpoint_kinds_are_listed_in_their_own_page_size(
    api: FakeApiServer, store: LoopStore, start: Start
) -> None:
    assert WatchSettings().page_size == 500 and WatchSettings().endpoint_page_size == 50
    api.apply(service("db", cluster_ip="None"))
    api.apply_all([endpoint_slice(f"db-{i}", "db", endpoints=[f"10.1.0.{i}"]) for i in range(7)])
    settings = replace(FAST, page_size=5, endpoint_page_size=3)
    synced(start("Service", settings=settings))
    synced(start("EndpointSlice", settings=settings))
    assert store.endpoint_addresses("db") == [f"10.1.0.{i}" for i in range(7)]
    assert [r.query["limit"] for r in api.requests("services", watch=False)] == ["5"]
    assert [r.query["limit"] for r in api.requests("endpointslices", watch=False)] == ["3"] * 3


# -- failures --------------------------------------------------------------------------------------


def test_server_errors_back_off_keep_the_data_and_recover_by_a_diff_relist(
    api: FakeApiServer, store: LoopStore, start: Start
) -> None:
    api.apply_all([service(f"svc-{i}", cluster_ip=f"10.96.0.{i + 1}") for i in range(3)])
    reflector = synced(start())
    wait_for(lambda: api.open_watches() == 1, what="the watch")
    mark = count(store)
    before = len(api.requests())
    began = time.monotonic()
    fault = api.inject(Fault(500, times=None))
    api.cut_watches()
    wait_for(lambda: reflector.stats.errors >= 8, what="failures")
    elapsed = time.monotonic() - began
    attempts = len(api.requests()) - before
    api.apply(service("svc-0", cluster_ip="10.96.0.100"))  # while the reflector is away
    api.remove(fault)

    # Backoff: a reflector retrying at once makes hundreds of requests a second; backing off
    # (FAST: waits up to 0.2 s) about ten. A slow machine only lowers the rate.
    assert attempts / elapsed < 40, (attempts, elapsed)
    # A 500 says nothing about the API being away: no probes, the whole backoff.
    assert not [r for r in api.requests() if r.query.get("limit") == "1"]
    # The stats follow the store's update: wait for them, not only for the store.
    wait_for(lambda: reflector.stats.relists == 1, what="the relist after the broken watch")
    assert store.addresses("svc-0") == ["10.96.0.100"]
    seen = changes_since(store, mark)
    assert len(seen) == 1 and len(seen[0].services) == 3, "nothing was dropped meanwhile"


def test_outage_before_the_first_list_delays_sync_only(
    api: FakeApiServer, store: LoopStore, start: Start
) -> None:
    api.apply(service("web", cluster_ip="10.96.0.10"))
    outage = api.inject(Fault(503, times=None))
    reflector = start()
    wait_for(lambda: len(api.requests("services")) >= 2, what="failed attempts")
    assert not reflector.synced
    assert store.service_names() == set()
    api.remove(outage)
    synced(reflector)
    assert store.addresses("web") == ["10.96.0.10"]
    assert "503" in reflector.stats.last_error


def test_unreachable_api_keeps_data_and_reconnects(
    api: FakeApiServer, store: LoopStore, start: Start
) -> None:
    api.apply_all([service("a", cluster_ip="10.96.0.1"), service("b", cluster_ip="10.96.0.2")])
    reflector = synced(start())
    mark = count(store)
    api.go_down()
    api.apply(service("b", cluster_ip="10.96.0.22"))
    began = time.time()
    wait_for(lambda: reflector.stats.errors >= 3, what="failed reconnects")
    assert "unreachable" in reflector.stats.last_error
    assert store.service_names() == {"a", "b"}
    # The store knows its data may be stale, since the first failure of the streak.
    since = store.read(lambda s: s.unreachable_since)
    assert since is not None and began - 1 <= since <= time.time()
    api.come_up()
    wait_for(lambda: reflector.stats.relists == 1, what="the relist after reconnecting")
    assert store.addresses("b") == ["10.96.0.22"]
    assert store.read(lambda s: s.unreachable_since) is None
    # One change of data (the relist); the other two are the outage's start and end, which
    # change no answer's records (only what the answers say of their freshness).
    snapshots = [c.services for c in changes_since(store, mark - 1)]
    assert len(snapshots) == 4
    assert sum(a != b for a, b in itertools.pairwise(snapshots)) == 1


def test_stop_is_prompt_in_every_state(api: FakeApiServer, store: LoopStore, start: Start) -> None:
    # Prompt: well before the 30 s backoff or a slow answer; bounds generous for a loaded machine.
    api.apply(service("web"))
    watching = synced(start())
    wait_for(lambda: api.open_watches() == 1, what="the watch")
    assert watching.stop(timeout=10)

    slow_backoff = replace(FAST, backoff_base=30, backoff_cap=30)
    api.inject(Fault(500, times=None, resource="endpointslices"))
    waiting = start("EndpointSlice", settings=slow_backoff)
    wait_for(lambda: waiting.stats.errors >= 1, what="a failure")
    assert waiting.stop(timeout=10)

    # The same while backing off with probes (the API away) on a shared `Recovery`.
    api.inject(Fault(503, times=None, resource="namespaces"))
    probing = start("Namespace", settings=replace(slow_backoff, probe_interval=30))
    wait_for(lambda: probing.stats.errors >= 1, what="a failure")
    assert probing.stop(timeout=10)

    # Waiting for the headers of an answer held back: stop() returns at its timeout, the thread
    # ends when the answer comes (or at its read timeout), and nothing is written after stop().
    gate = threading.Event()
    held = api.inject(Fault(None, times=None, resource="endpoints", gate=gate))
    mark = count(store)
    stalled = start("Endpoints")
    wait_for(lambda: held.hits >= 1, what="the request to be held")
    began = time.monotonic()
    stalled.stop(timeout=0.5)
    assert time.monotonic() - began < 10
    gate.set()
    assert stalled.join(10), "the thread ends when the answer comes"
    assert not stalled.synced
    assert count(store) == mark


def test_back_as_soon_as_the_api_is_without_waiting_out_a_long_backoff(
    api: FakeApiServer, client: Any, store: LoopStore
) -> None:
    """Two kinds sharing one `Recovery`, with a backoff of days and a probe every 0.1-0.2 s:
    both must be watching again, with the change made meanwhile, soon after the API returns.
    Only a probe can bring them back (the chance that one of the six or so drawn waits is under
    the minute this test waits at most is about 1e-5)."""
    api.apply(service("db", cluster_ip="None"))
    api.apply(endpoint_slice("db-x1", "db", endpoints=["10.1.0.5"]))
    settings = replace(FAST, backoff_base=1e6, backoff_cap=1e6, probe_interval=0.2)
    recovery = Recovery(settings.probe_interval)
    reflectors = [
        Reflector(kind, store.sink, store.layer, client, settings=settings, recovery=recovery)
        for kind in ("Service", "EndpointSlice")
    ]
    for reflector in reflectors:
        reflector.start()
    try:
        for reflector in reflectors:
            synced(reflector)
        wait_for(lambda: api.open_watches() == 2, what="both watches")
        api.go_down()
        wait_for(lambda: all(r.stats.errors >= 1 for r in reflectors), what="both failing")
        api.apply(endpoint_slice("db-x1", "db", endpoints=["10.1.0.6"]))
        api.come_up()
        wait_for(lambda: store.endpoint_addresses("db") == ["10.1.0.6"], timeout=60, what="back")
        wait_for(lambda: api.open_watches() == 2, timeout=60, what="both watching again")
        probes = [r for r in api.requests(watch=False) if r.query.get("limit") == "1"]
        assert [r.status for r in probes] == [200], "one probe answered, for both kinds"
    finally:
        for reflector in reflectors:
            reflector.stop()


def test_recovery_ends_every_wait_on_the_first_answer_and_probes_one_at_a_time() -> None:
    recovery = Recovery(interval=0.02)
    stop = threading.Event()
    calls: list[str] = []
    answers = iter([False, False, True])
    lock = threading.Lock()
    probing = threading.Event()

    def probe(who: str) -> Callable[[], bool]:
        def ask() -> bool:
            assert not probing.is_set(), "two probes at once"
            probing.set()
            with lock:
                calls.append(who)
                answer = next(answers)
            probing.clear()
            return answer

        return ask

    results: dict[str, bool] = {}
    threads = [
        threading.Thread(target=lambda w=w: results.update({w: recovery.wait(600, probe(w), stop)}))
        for w in ("a", "b", "c")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == {"a": True, "b": True, "c": True}
    assert len(calls) == 3, "one probe per interval for all the waiters, until one answered"

    # A success reported by anyone ends a wait; stop ends it too, without a success.
    done: list[bool] = []
    waiting = threading.Event()

    def refused() -> bool:
        waiting.set()  # called from inside the wait: a success from now on must end it
        return False

    waiter = threading.Thread(target=lambda: done.append(recovery.wait(600, refused, stop)))
    waiter.start()
    wait_for(waiting.is_set, what="the waiter's first probe")
    recovery.success()
    waiter.join(60)
    assert done == [True]
    stop.set()
    assert recovery.wait(600, lambda: True, stop) is False


def test_backoff_is_full_jitter_capped() -> None:
    import random

    rng = random.Random(1)
    assert backoff_delay(0, 0.5, 30, rng) == 0
    for failures in range(1, 40):
        ceiling = min(30, 0.5 * 2 ** (failures - 1))
        draws = [backoff_delay(failures, 0.5, 30, rng) for _ in range(50)]
        assert all(0 <= d <= ceiling for d in draws)
        assert max(draws) > ceiling / 2  # spread over the whole range, not a fixed delay


# -- the double itself -----------------------------------------------------------------------------


def test_double_speaks_the_apiserver_wire_protocol(api: FakeApiServer) -> None:
    """What the tests above rely on: list items without kind, `watch=True` (client 36) and
    `watch=true` (client 37), one chunk per newline-terminated event, 401 without the token."""
    api.apply(service("web", cluster_ip="10.96.0.10"))
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=5)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    conn.request("GET", "/api/v1/services", headers={})
    denied = conn.getresponse()
    assert denied.status == 401 and json.loads(denied.read())["kind"] == "Status"

    conn.request("GET", "/api/v1/services", headers=auth)
    listed = json.loads(conn.getresponse().read())
    assert listed["kind"] == "ServiceList"
    assert "kind" not in listed["items"][0] and "apiVersion" not in listed["items"][0]
    rv = listed["metadata"]["resourceVersion"]

    for flag in ("True", "true"):
        api.apply(service("web", cluster_ip=f"10.96.0.{len(flag) + 10}"))
        conn.request(
            "GET",
            f"/api/v1/services?watch={flag}&resourceVersion={rv}&timeoutSeconds=1",
            headers=auth,
        )
        stream = conn.getresponse()
        assert stream.status == 200 and stream.getheader("Transfer-Encoding") == "chunked"
        lines = stream.read().splitlines()  # ends after timeoutSeconds with the last chunk
        events = [json.loads(line) for line in lines]
        assert all(e["object"]["kind"] == "Service" for e in events)
        assert [e["type"] for e in events][-1] == "MODIFIED"
        rv = events[-1]["object"]["metadata"]["resourceVersion"]
    conn.close()


def test_a_watch_refused_after_a_list_allowed_backs_off_and_warns_once(
    api: FakeApiServer, store: LoopStore, start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    # RBAC granting list and not watch: every list succeeds, every watch gets 403. The list's
    # success must not end the failure streak (it did: the backoff began again from its first
    # step each time, a full list and a warning about every half second, forever).
    api.apply(service("web", cluster_ip="10.96.0.10"))
    api.inject(Fault(403, times=None, resource="services", watch=True))
    with caplog.at_level(logging.DEBUG, logger="kdns.sources.reflector"):
        reflector = synced(start(settings=replace(FAST, backoff_base=0.01, backoff_cap=0.05)))
        assert store.addresses("web") == ["10.96.0.10"]  # served from the lists meanwhile
        wait_for(lambda: reflector.stats.errors >= 5, what="five refused watches")
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    refused = [m for m in messages if "not allowed to watch services cluster-wide (403)" in m]
    assert len(refused) == 1, messages
    assert "grant watch to kdns's account" in refused[0]
    assert not [m for m in messages if "working again" in m], messages


def test_a_client_side_failure_is_one_line_that_says_what_to_check() -> None:
    # The client raises ApiException with status 0 when no answer came (TLS, connection); its
    # reason spans lines. It read "the API answered 0 SSLError" and the next line.
    fake = SimpleNamespace(resource=SimpleNamespace(plural="services"), namespace="", verb="list")
    reason = (
        "SSLError\n[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get "
        "local issuer certificate (_ssl.c:1006)"
    )
    text = kdns.sources.reflector._describe(ApiException(status=0, reason=reason), fake)
    assert "\n" not in text and "answered 0" not in text
    assert text.startswith("API unreachable: SSLError [SSL: CERTIFICATE_VERIFY_FAILED]")
    assert text.endswith(
        "check the kubeconfig's certificate-authority (or certificate-authority-data) "
        "for this server"
    )
    other = kdns.sources.reflector._describe(ApiException(status=0, reason="Timeout\nx"), fake)
    assert other == "API unreachable: Timeout x"
