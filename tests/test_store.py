"""Store semantics: layers and priority, writes as diffs, listeners, sync state, indexes."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from kdns.state.model import (
    EndpointSet,
    Gateway,
    HostRoute,
    ImportSlice,
    Namespace,
    PodAddresses,
    ServiceExport,
    ServiceImport,
    endpoint_name,
    record_count,
)
from kdns.state.store import ReadyEndpoint, Store, build_view
from tests.builders import (
    clusterip,
    endpoint_slice,
    endpoints,
    ep,
    eport,
    external,
    headless,
    port,
    subset,
)

WEB = clusterip("default", "web", "10.96.0.100", ports=[port("http", 80)])
WEB_SLICE = endpoint_slice("default", "web-x1", "web", [ep("10.0.0.1")], [eport("http", 8080)])


def two_layers() -> Store:
    store = Store()
    store.add_layer("files", implicit_namespaces=True)
    store.add_layer("cluster")
    return store


def ready(store: Store, ns: str, name: str) -> list[tuple[str, str]]:
    view = store.service(ns, name)
    assert view is not None
    return [(r.name, r.address) for r in view.ready]


# -- layers --------------------------------------------------------------------------------------


def test_layers_keep_their_order_and_names_are_unique() -> None:
    store = two_layers()
    assert store.layers() == ["files", "cluster"]
    with pytest.raises(ValueError, match="already exists"):
        store.add_layer("files")


def test_first_layer_wins_and_the_conflict_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = two_layers()
    caplog.set_level(logging.WARNING, logger="kdns.state.store")
    # the later layer arrives first: it answers until the earlier one defines the service
    store.apply("cluster", [clusterip("default", "web", "10.96.0.2"), WEB_SLICE])
    view = store.service("default", "web")
    assert view is not None and view.service.cluster_ips == ("10.96.0.2",)
    assert store.owner("default", "web") == "cluster"
    assert not caplog.records

    store.apply("files", [clusterip("default", "web", "10.96.0.1")])
    view = store.service("default", "web")
    assert view is not None and view.service.cluster_ips == ("10.96.0.1",)
    assert store.owner("default", "web") == "files"
    # the endpoints come from the owning layer only
    assert view.ready == ()
    assert store.endpoint_sets("default", "web") == []
    assert store.services_by_cluster_ip("10.96.0.1") == [("default", "web")]
    assert store.services_by_cluster_ip("10.96.0.2") == []
    assert store.endpoints_by_ip("10.0.0.1") == []

    store.apply("cluster", [clusterip("default", "web", "10.96.0.3")])
    store.apply("files", [clusterip("default", "web", "10.96.0.4")])
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "default/web" in message and "files" in message and "cluster" in message

    # when the winner lets go, the other layer answers, with its own endpoints
    store.apply("files", deletes=[("Service", "default", "web")])
    view = store.service("default", "web")
    assert view is not None and view.service.cluster_ips == ("10.96.0.3",)
    assert store.owner("default", "web") == "cluster"
    assert ready(store, "default", "web") == [("10-0-0-1", "10.0.0.1")]
    assert store.services_by_cluster_ip("10.96.0.3") == [("default", "web")]
    assert store.services_by_cluster_ip("10.96.0.4") == []
    assert store.endpoints_by_ip("10.0.0.1") == [("default", "web", "10-0-0-1")]


def test_a_later_layer_cannot_change_what_the_winner_answers() -> None:
    store = two_layers()
    store.apply("files", [WEB])
    generation = store.generation
    store.apply("cluster", [clusterip("default", "web", "10.96.0.2"), WEB_SLICE])
    view = store.service("default", "web")
    assert view is not None and view.service == WEB and view.ready == ()
    # the write itself is still a change of that layer
    assert store.generation == generation + 1


# -- writes are diffs ---------------------------------------------------------------------------


def test_apply_moves_the_generation_only_on_real_change() -> None:
    store = Store()
    store.add_layer("c")
    assert store.generation == 0
    assert store.apply("c", [WEB, WEB_SLICE, Namespace("default")]) is True
    assert store.generation == 1
    # the same objects again, equal copies, a delete of nothing, an empty write
    assert store.apply("c", [WEB, WEB_SLICE, Namespace("default")]) is False
    equal_copy = clusterip("default", "web", "10.96.0.100", ports=[port("http", 80)])
    assert store.apply("c", [equal_copy]) is False
    assert store.generation == 1
    assert store.apply("c", deletes=[("Service", "default", "nope")]) is False
    assert store.apply("c", deletes=[("Namespace", "", "nope")]) is False
    assert store.apply("c") is False
    assert store.generation == 1
    # one call is one change, however many objects it carries
    assert store.apply(
        "c",
        [clusterip("default", "a", "10.96.0.1"), clusterip("default", "b", "10.96.0.2")],
        [("Service", "default", "web")],
    )
    assert store.generation == 2
    assert store.service("default", "web") is None
    assert store.apply("c", deletes=[("Namespace", "", "default")]) is True
    assert store.generation == 3


def test_serial_follows_the_generation_from_its_base_and_wraps() -> None:
    store = Store(serial_base=2**32 - 1)
    store.add_layer("c")
    assert store.serial == 2**32 - 1
    store.apply("c", [WEB])
    assert store.serial == 0
    store.apply("c", [WEB])
    assert store.serial == 0


def test_a_clocked_serial_is_the_second_of_the_change_and_never_goes_back() -> None:
    now = [1_000.0]

    def store_started() -> Store:
        store = Store(serial_base=int(now[0]), clock=lambda: now[0])
        store.add_layer("c")
        return store

    store = store_started()
    assert store.serial == 1_000
    serials = []
    for i in range(30):  # a burst: 30 changes within 3 seconds
        now[0] = 1_000.5 + i / 10
        store.apply("c", [clusterip("default", "web", f"10.96.0.{i + 1}")])
        serials.append(store.serial)
    assert serials == list(range(1_001, 1_031))  # one more each time: ahead of the clock
    now[0] = 1_100.2  # quiet for a while, then a change: the clock's second again
    store.apply("c", [clusterip("default", "web", "10.96.1.1")])
    assert store.serial == 1_100
    store.apply("c", [clusterip("default", "web", "10.96.1.1")])  # no change: no new serial
    assert store.serial == 1_100
    # Restarted a second later, the same data has a serial no lower than before the restart.
    # (Counted from the start instead, 200 changes a second for a minute put the serial 11,940
    # ahead of the clock, and a restart set it back by as much.)
    now[0] = 1_101.0
    again = store_started()
    assert again.serial >= store.serial
    again.apply("c", [clusterip("default", "web", "10.96.1.1")])
    assert again.serial > store.serial


def test_replace_is_a_diff_limited_to_its_kinds() -> None:
    store = Store()
    store.add_layer("c")
    a = clusterip("default", "a", "10.96.0.1")
    b = clusterip("default", "b", "10.96.0.2")
    slice_a = endpoint_slice("default", "a-x", "a", [ep("10.0.0.1")])
    store.apply("c", [a, b, slice_a, Namespace("default")])
    generation = store.generation

    # the same content: nothing changes
    assert store.replace("c", [a, b], kinds={"Service"}) is False
    assert store.generation == generation

    # a relist of Services drops b, keeps the slices and namespaces
    assert store.replace("c", [a], kinds={"Service"}, received_at=7.0) is True
    assert store.generation == generation + 1
    assert store.service("default", "b") is None
    assert ready(store, "default", "a") == [("10-0-0-1", "10.0.0.1")]
    assert store.has_namespace("default")

    # a relist of slices with none left empties the endpoints only
    assert store.replace("c", [], kinds={"EndpointSlice"}) is True
    assert ready(store, "default", "a") == []
    assert store.service("default", "a") is not None

    # kinds=None: the objects are the whole layer
    assert store.replace("c", [b]) is True
    assert store.service("default", "a") is None
    assert store.service("default", "b") is not None
    assert not store.has_namespace("default")


# -- listeners and sync -------------------------------------------------------------------------


def test_listeners_get_the_generation_and_when_the_change_arrived() -> None:
    store = Store()
    store.add_layer("c")
    calls: list[tuple[int, float | None]] = []
    store.subscribe(lambda gen, at: calls.append((gen, at)))
    store.apply("c", [WEB], received_at=12.5)
    store.apply("c", [WEB], received_at=13.0)  # no change: no call
    store.replace("c", [], received_at=14.0)
    store.set_synced("c")
    store.set_synced("c")  # already synced: no call
    store.apply("c", [WEB])
    assert calls == [(1, 12.5), (2, 14.0), (3, None), (4, None)]


def test_synced_once_every_layer_has_loaded() -> None:
    store = two_layers()
    assert store.synced is False
    store.set_synced("files")
    assert store.synced is False
    generation = store.generation
    store.set_synced("cluster")
    assert store.synced is True
    assert store.generation == generation + 1
    store.set_synced("cluster", False)
    assert store.synced is False
    with pytest.raises(KeyError):
        store.set_synced("nope")


# -- views --------------------------------------------------------------------------------------


def test_view_keeps_ready_endpoints_deduplicated_across_slices() -> None:
    store = Store()
    store.add_layer("c")
    svc = headless("default", "hl")
    ports = [eport("http", 8080)]
    store.apply(
        "c",
        [
            svc,
            endpoint_slice(
                "default", "hl-a", "hl", [ep("10.1.0.1"), ep("10.1.0.2", ready=False)], ports
            ),
            endpoint_slice(
                "default", "hl-b", "hl", [ep("10.1.0.1"), ep("10.1.0.3", hostname="c")], ports
            ),
            endpoint_slice("default", "hl-6", "hl", [ep("2001:db8::1")], ports),
        ],
    )
    view = store.service("default", "hl")
    assert view is not None
    assert sorted(view.addresses()) == ["10.1.0.1", "10.1.0.3", "2001:db8::1"]
    assert len(view.ready) == 3
    assert view.not_ready == 1
    assert sorted(view.sources) == [
        ("EndpointSlice", "default", "hl-6"),
        ("EndpointSlice", "default", "hl-a"),
        ("EndpointSlice", "default", "hl-b"),
    ]
    assert view.named("C") == ["10.1.0.3"]
    assert view.named("2001-db8--1") == ["2001:db8::1"]
    assert view.named("10-1-0-2") == []


def test_endpoints_are_found_by_the_names_their_addresses_spell_and_by_hostname() -> None:
    # The dashed names are not stored; a label is turned into the address it spells.
    ports = (eport("http", 80),)
    store = Store()
    store.add_layer("c")
    store.apply(
        "c",
        [
            headless("default", "hl"),
            endpoint_slice(
                "default",
                "hl-a",
                "hl",
                [ep("10.1.0.1"), ep("10.1.0.2", hostname="Web-0"), ep("10.1.0.10")],
                ports,
            ),
            endpoint_slice("default", "hl-6", "hl", [ep("2001:db8::"), ep("2001:db8::a:1")], ports),
        ],
    )
    view = store.service("default", "hl")
    assert view is not None
    assert view.named("10-1-0-1") == ["10.1.0.1"]
    assert view.named("10-1-0-01") == []  # a spelling endpoint_name never makes
    assert view.named("010-1-0-1") == []
    assert view.named("10-1-0-2") == []  # named by its hostname instead
    assert view.named("web-0") == view.named("WEB-0") == ["10.1.0.2"]
    assert view.named("2001-db8--0") == ["2001:db8::"]
    assert view.named("2001-db8--") == []
    assert view.named("2001-db8--a-1") == ["2001:db8::a:1"]
    assert view.named("2001-0db8--a-1") == []
    assert sorted(ep.name for ep in view.ready) == sorted(
        ["10-1-0-1", "Web-0", "10-1-0-10", "2001-db8--0", "2001-db8--a-1"]
    )
    # PTR: the name each address is known by
    assert store.endpoints_by_ip("10.1.0.1") == [("default", "hl", "10-1-0-1")]
    assert store.endpoints_by_ip("10.1.0.2") == [("default", "hl", "Web-0")]
    assert store.endpoints_by_ip("2001:db8::") == [("default", "hl", "2001-db8--0")]


def test_build_view_rules() -> None:
    ports = (eport("http", 80),)
    manual = endpoints(
        "default", "svc", subset([ep("10.0.0.1"), ep("10.0.0.9", ready=False)], ports)
    )
    mirrored = endpoint_slice("default", "svc-m", "svc", [ep("10.0.0.1")], ports)

    # slices win over v1 Endpoints
    view = build_view(headless("default", "svc"), [manual, mirrored])
    assert view.ready == (ReadyEndpoint("", "10.0.0.1", ports),)
    assert view.ready[0].name == "10-0-0-1"
    assert view.sources == (("EndpointSlice", "default", "svc-m"),)

    # v1 Endpoints alone: addresses ready, notReadyAddresses not
    view = build_view(headless("default", "svc"), [manual])
    assert view.addresses() == ["10.0.0.1"]
    assert view.not_ready == 1

    # publishNotReadyAddresses: everything counts
    view = build_view(headless("default", "svc", publish_not_ready=True), [manual])
    assert view.addresses() == ["10.0.0.1", "10.0.0.9"]
    assert view.not_ready == 0

    # terminating/not-ready slice endpoints are left out, and counted
    view = build_view(
        headless("default", "svc"),
        [endpoint_slice("default", "s", "svc", [ep("10.0.0.2", ready=False), ep("10.0.0.3")])],
    )
    assert view.addresses() == ["10.0.0.3"]
    assert view.not_ready == 1

    # ExternalName services have no endpoints
    view = build_view(external("default", "svc", "example.com"), [mirrored])
    assert view.ready == ()


@pytest.mark.parametrize(
    ("hostname", "address", "name"),
    [
        ("web-0", "10.0.0.1", "web-0"),
        ("", "10.0.0.1", "10-0-0-1"),
        ("", "2001:db8::1", "2001-db8--1"),
        ("", "2001:db8::", "2001-db8--0"),
        ("", "fd00::a1", "fd00--a1"),
        ("", "2001:db8:0:0:1:0:0:1", "2001-db8-0-0-1-0-0-1"),
    ],
)
def test_endpoint_name(hostname: str, address: str, name: str) -> None:
    assert endpoint_name(hostname, address) == name


def test_views_are_sorted_and_endpoint_sets_include_ignored_ones() -> None:
    store = Store()
    store.add_layer("c")
    manual = endpoints("default", "b", subset([ep("10.0.0.1")]))
    mirrored = endpoint_slice("default", "b-m", "b", [ep("10.0.0.1")])
    store.apply("c", [headless("x", "a"), headless("default", "b"), manual, mirrored])
    assert [(v.service.namespace, v.service.name) for v in store.views()] == [
        ("default", "b"),
        ("x", "a"),
    ]
    assert sorted(s.key for s in store.endpoint_sets("default", "b")) == [
        ("EndpointSlice", "default", "b-m"),
        ("Endpoints", "default", "b"),
    ]
    assert store.endpoint_sets("default", "nope") == []


# -- reverse indexes ----------------------------------------------------------------------------


def test_cluster_ip_index_follows_changes_and_removal() -> None:
    store = Store()
    store.add_layer("c")
    store.apply("c", [clusterip("default", "web", "10.96.0.1", "fd00::1")])
    assert store.services_by_cluster_ip("10.96.0.1") == [("default", "web")]
    assert store.services_by_cluster_ip("fd00::1") == [("default", "web")]

    store.apply("c", [clusterip("default", "web", "10.96.0.2")])
    assert store.services_by_cluster_ip("10.96.0.1") == []
    assert store.services_by_cluster_ip("fd00::1") == []
    assert store.services_by_cluster_ip("10.96.0.2") == [("default", "web")]

    store.apply("c", [clusterip("default", "also", "10.96.0.2")])
    assert store.services_by_cluster_ip("10.96.0.2") == [("default", "also"), ("default", "web")]

    # a ClusterIP service turned ExternalName has no ClusterIP any more
    store.apply("c", [external("default", "web", "example.com")])
    assert store.services_by_cluster_ip("10.96.0.2") == [("default", "also")]

    store.apply("c", deletes=[("Service", "default", "also")])
    assert store.services_by_cluster_ip("10.96.0.2") == []


def test_endpoint_index_follows_readiness_slices_and_services() -> None:
    store = Store()
    store.add_layer("c")
    ports = [eport("http", 8080)]
    store.apply(
        "c",
        [
            headless("default", "hl"),
            clusterip("default", "web", "10.96.0.1"),
            endpoint_slice("default", "hl-a", "hl", [ep("10.1.0.1", hostname="pod-a")], ports),
            endpoint_slice("default", "hl-b", "hl", [ep("10.1.0.1", hostname="pod-a")], ports),
            endpoint_slice("default", "web-a", "web", [ep("10.1.0.1")], ports),
        ],
    )
    assert store.endpoints_by_ip("10.1.0.1") == [
        ("default", "hl", "pod-a"),
        ("default", "web", "10-1-0-1"),
    ]
    # in two slices of one service: still there while one remains
    store.apply("c", deletes=[("EndpointSlice", "default", "hl-a")])
    assert store.endpoints_by_ip("10.1.0.1") == [
        ("default", "hl", "pod-a"),
        ("default", "web", "10-1-0-1"),
    ]
    # not ready any more
    store.apply(
        "c", [endpoint_slice("default", "hl-b", "hl", [ep("10.1.0.1", ready=False)], ports)]
    )
    assert store.endpoints_by_ip("10.1.0.1") == [("default", "web", "10-1-0-1")]
    # a hostname change renames the entry
    store.apply("c", [endpoint_slice("default", "web-a", "web", [ep("10.1.0.1", hostname="w")])])
    assert store.endpoints_by_ip("10.1.0.1") == [("default", "web", "w")]
    # the service goes away: so do its endpoints
    store.apply("c", deletes=[("Service", "default", "web")])
    assert store.endpoints_by_ip("10.1.0.1") == []
    assert store.service("default", "web") is None
    # ... and come back with it
    store.apply("c", [clusterip("default", "web", "10.96.0.1")])
    assert store.endpoints_by_ip("10.1.0.1") == [("default", "web", "w")]


def test_endpoint_set_moving_to_another_service() -> None:
    store = Store()
    store.add_layer("c")
    moving = endpoint_slice("default", "x-1", "a", [ep("10.2.0.1")])
    store.apply("c", [headless("default", "a"), headless("default", "b"), moving])
    assert ready(store, "default", "a") == [("10-2-0-1", "10.2.0.1")]
    assert store.endpoints_by_ip("10.2.0.1") == [("default", "a", "10-2-0-1")]

    moved = EndpointSet("EndpointSlice", "default", "x-1", "b", moving.subsets)
    assert store.apply("c", [moved]) is True
    assert ready(store, "default", "a") == []
    assert ready(store, "default", "b") == [("10-2-0-1", "10.2.0.1")]
    assert store.endpoints_by_ip("10.2.0.1") == [("default", "b", "10-2-0-1")]
    assert store.endpoint_sets("default", "a") == []
    assert store.endpoint_sets("default", "b") == [moved]


# -- namespaces ---------------------------------------------------------------------------------


def test_cluster_namespaces_are_explicit() -> None:
    store = Store()
    store.add_layer("c")
    store.apply("c", [clusterip("team", "web", "10.96.0.1")])
    assert store.has_namespace("team") is False
    store.apply("c", [Namespace("team")])
    assert store.has_namespace("team") is True
    assert store.namespaces() == {"team"}
    store.apply("c", deletes=[("Namespace", "", "team")])
    assert store.has_namespace("team") is False
    assert store.service("team", "web") is not None


def test_file_namespaces_exist_while_an_object_lives_in_them() -> None:
    store = Store()
    store.add_layer("files", implicit_namespaces=True)
    svc = clusterip("team", "web", "10.96.0.1")
    eps = endpoints("team", "web", subset([ep("10.0.0.1")]))
    store.apply("files", [svc, eps, endpoint_slice("other", "s", "x", [])])
    assert store.has_namespace("team") and store.has_namespace("other")
    assert store.namespaces() == {"team", "other"}
    # replacing an object does not count it twice
    store.apply("files", [clusterip("team", "web", "10.96.0.2")])
    store.apply("files", deletes=[("Service", "team", "web")])
    assert store.has_namespace("team") is True  # the Endpoints still live there
    store.apply("files", deletes=[("Endpoints", "team", "web")])
    assert store.has_namespace("team") is False
    # a Namespace manifest declares one
    store.apply("files", [Namespace("empty")])
    assert store.has_namespace("empty") is True
    assert store.namespaces() == {"other", "empty"}


# -- writes from other threads ------------------------------------------------------------------


def test_loop_sink_applies_writes_on_the_loop() -> None:
    from kdns.state.store import LoopSink

    async def main() -> Store:
        store = Store()
        store.add_layer("c")
        sink = LoopSink(store, asyncio.get_running_loop())
        await asyncio.to_thread(sink.apply, "c", [WEB])
        await asyncio.to_thread(sink.replace, "c", [WEB, Namespace("default")])
        await asyncio.to_thread(sink.set_synced, "c")
        for _ in range(10):
            await asyncio.sleep(0)
        return store

    store = asyncio.run(main())
    assert store.service("default", "web") is not None
    assert store.has_namespace("default")
    assert store.synced is True
    assert store.generation == 3


def test_a_service_change_recomputes_its_view() -> None:
    store = Store()
    store.add_layer("c")
    store.apply(
        "c",
        [
            headless("default", "peers"),
            endpoint_slice(
                "default", "p-1", "peers", [ep("10.7.0.1"), ep("10.7.0.2", ready=False)]
            ),
        ],
    )
    assert store.endpoints_by_ip("10.7.0.2") == []
    # publishNotReadyAddresses switched on: the not-ready endpoint counts
    store.apply("c", [headless("default", "peers", publish_not_ready=True)])
    assert ready(store, "default", "peers") == [("10-7-0-1", "10.7.0.1"), ("10-7-0-2", "10.7.0.2")]
    assert store.endpoints_by_ip("10.7.0.2") == [("default", "peers", "10-7-0-2")]
    # headless turned ClusterIP: same endpoints, and now a ClusterIP
    store.apply("c", [clusterip("default", "peers", "10.96.0.7")])
    assert ready(store, "default", "peers") == [("10-7-0-1", "10.7.0.1")]
    assert store.services_by_cluster_ip("10.96.0.7") == [("default", "peers")]
    assert store.endpoints_by_ip("10.7.0.2") == []


def test_a_change_reports_only_the_addresses_whose_ptr_entries_moved() -> None:
    store = Store()
    store.add_layer("c")
    seen: list[frozenset[str]] = []
    store.subscribe(lambda generation, at: seen.append(store.last_change.addresses))
    svc = headless("ns", "db")
    three = [ep("10.0.0.1"), ep("10.0.0.2"), ep("10.0.0.3")]
    store.apply("c", [svc, endpoint_slice("ns", "db-x", "db", three)])
    assert seen[-1] == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}
    # one endpoint moves: its old and new address change, the other two keep their answers
    moved = [ep("10.0.0.1"), ep("10.0.0.2"), ep("10.0.0.4")]
    store.apply("c", [endpoint_slice("ns", "db-x", "db", moved)])
    assert seen[-1] == {"10.0.0.3", "10.0.0.4"}
    assert store.endpoints_by_ip("10.0.0.3") == []
    assert store.endpoints_by_ip("10.0.0.4") == [("ns", "db", "10-0-0-4")]
    # a hostname given to one endpoint renames its PTR target
    named = [ep("10.0.0.1", hostname="a"), ep("10.0.0.2"), ep("10.0.0.4")]
    store.apply("c", [endpoint_slice("ns", "db-x", "db", named)])
    assert seen[-1] == {"10.0.0.1"}
    assert store.endpoints_by_ip("10.0.0.1") == [("ns", "db", "a")]
    # the service goes: every address it held changes
    store.apply("c", deletes=[("Service", "ns", "db")])
    assert seen[-1] == {"10.0.0.1", "10.0.0.2", "10.0.0.4"}
    assert store.endpoints_by_ip("10.0.0.2") == []


def test_a_route_without_hostnames_follows_its_listeners_in_any_order() -> None:
    """A hostless route takes the hostnames of the listeners it attaches to, whether the route
    or the Gateway arrives first; they move with the Gateway; nothing is left behind in the
    host indexes when both go (generated orders of puts and deletes)."""
    listeners = [
        (("a", "one.example.test"), ("b", "*.two.example.test")),
        (("a", "three.example.test"),),
        (("a", ""),),
    ]
    for seed in range(30):
        rng = random.Random(seed)
        store = Store()
        store.add_layer("c")
        section = rng.choice(("", "a", "b"))
        route = HostRoute("HTTPRoute", "web", "r", (), parents=(("infra", "gw", section),))
        gateways = [Gateway("infra", "gw", ("192.0.2.1",), (), rng.choice(listeners))]
        gateways.append(Gateway("infra", "gw", ("192.0.2.1",), (), rng.choice(listeners)))
        steps = [route, *gateways]
        rng.shuffle(steps)
        for obj in steps:
            store.apply("c", [obj])
        final = next(o for o in reversed(steps) if isinstance(o, Gateway))
        want = {h for name, h in final.listeners if h and (not section or name == section)}
        got = {h for h in want if store.routes_at(h)}
        assert got == want, (seed, steps)
        assert all(not store.routes_at(h) for ls in listeners for _, h in ls if h not in want)
        for key in rng.sample([route.key, final.key], 2):
            store.apply("c", deletes=[key])
        lay = store._layers["c"]
        assert (lay.by_host, lay.above_hosts, lay.inherited, lay.hostless) == ({}, {}, {}, {})


def test_fast_records_build_compare_and_pickle_as_the_dataclass_would() -> None:
    # `fast_record` replaces the dataclass's __init__ and pickling of the hot records: the
    # same signature and defaults, still frozen, equal and hashed alike, and a pickle (what a
    # serving process is sent) gives back an equal record.
    import copy
    import dataclasses
    import inspect
    import pickle

    import kdns.state.model as model
    import kdns.state.store as store_module

    decorated = [
        cls
        for module in (model, store_module)
        for cls in vars(module).values()
        if isinstance(cls, type)
        and dataclasses.is_dataclass(cls)
        and cls.__module__ == module.__name__
        and cls.__init__.__code__.co_filename == "<string>"
        and "_set_" in " ".join(cls.__init__.__code__.co_freevars)
    ]
    assert {c.__name__ for c in decorated} >= {
        "Endpoint",
        "Service",
        "ReadyEndpoint",
        "ServiceView",
    }
    for cls in decorated:
        params = list(inspect.signature(cls).parameters.values())
        assert [p.name for p in params] == [f.name for f in dataclasses.fields(cls)]
        for p, f in zip(params, dataclasses.fields(cls), strict=True):
            assert p.default == (
                inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default
            )
    endpoint = model.Endpoint(("10.0.0.1", "fd00::1"), "web-0", False, "node-1", "Pod/web-0")
    assert endpoint == model.Endpoint(
        addresses=("10.0.0.1", "fd00::1"),
        hostname="web-0",
        ready=False,
        node_name="node-1",
        target="Pod/web-0",
    )
    assert (endpoint.zone, endpoint.for_zones) == ("", ())
    with pytest.raises(dataclasses.FrozenInstanceError):
        endpoint.ready = True  # type: ignore[misc]
    view = build_view(
        service=headless("shop", "db"),
        sets=[endpoint_slice("shop", "db-a", "db", [ep("10.0.0.2")])],
    )
    for record in (endpoint, model.Namespace("shop"), view, view.ready[0]):
        again = pickle.loads(pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL))
        assert again == record and hash(again) == hash(record) and type(again) is type(record)
        assert copy.deepcopy(record) == record

    @dataclasses.dataclass(frozen=True, slots=True)
    class WithFactory:
        items: list[str] = dataclasses.field(default_factory=list)

    with pytest.raises(TypeError, match="plain fields only"):
        model.fast_record(WithFactory)


@pytest.mark.parametrize("seed", range(20))
def test_the_record_count_kept_as_writes_land_is_the_count_of_what_is_held(seed: int) -> None:
    # `Store.records()` is kept up to date write by write (summed afresh, it read every object:
    # with --workers, pages the serving processes no longer shared). Generated writes of every
    # kind, as upserts, deletes and whole-layer replacements, in two layers.
    rng = random.Random(seed)
    store = two_layers()

    def some_eps() -> list[str]:
        return [f"10.1.{rng.randrange(4)}.{rng.randrange(1, 9)}" for _ in range(rng.randrange(4))]

    def make(n: int) -> object:
        ns, name = rng.choice(("a", "b")), f"o{n}"
        kind = rng.randrange(10)
        if kind == 0:
            return clusterip(ns, name, f"10.96.0.{n}")
        if kind == 1:
            return headless(ns, name)
        if kind == 2:
            return endpoint_slice(ns, name, f"o{rng.randrange(6)}", [ep(a) for a in some_eps()])
        if kind == 3:
            return endpoints(ns, name, subset([ep(a) for a in some_eps()]))
        if kind == 4:
            return Namespace(ns)
        if kind == 5:
            return PodAddresses(ns, name, tuple(some_eps()))
        if kind == 6:
            return HostRoute("Ingress", ns, name, (f"{name}.example",), ("192.0.2.1",))
        if kind == 7:
            return Gateway(ns, name, ("192.0.2.2",))
        if kind == 8:
            return ServiceImport(ns, name, ips=("10.200.0.1",))
        if rng.randrange(2):
            return ServiceExport(ns, name, name)
        return ImportSlice(ns, name, name, "east", (subset([ep(a) for a in some_eps()]),))

    for _ in range(60):
        layer = rng.choice(("files", "cluster"))
        step = rng.randrange(5)
        held = store.layer_objects(layer)
        if step == 0 and held:
            gone = rng.sample(held, min(len(held), rng.randrange(1, 3)))
            store.apply(layer, deletes=[o.key for o in gone])
        elif step == 1:
            store.replace(layer, [make(rng.randrange(12)) for _ in range(rng.randrange(6))])
        else:
            store.apply(layer, [make(rng.randrange(12)) for _ in range(rng.randrange(1, 4))])
        want = sum(record_count(o) for lay in store.layers() for o in store.layer_objects(lay))
        assert store.records() == want, seed
