"""Partial reverse names: NODATA while some PTR exists below them, NXDOMAIN once none does.

The engine answers them from an index it builds on the first such question and then keeps up to
date from the store's changes; the response cache must drop their answers whenever an address
anywhere changes. These tests change the data under a live engine and responder and compare every
answer with what a brute-force reading of the store says.
"""

from __future__ import annotations

import gc
import ipaddress
import random
import weakref

import dns.message
import dns.rcode
import pytest
from dnslib import DNSLabel

from kdns.dns.resolution import ANY_TAG, Cluster, Engine
from kdns.serve.responder import Responder
from kdns.state.model import KubeObject
from kdns.state.reverse_index import ReverseIndex
from kdns.state.store import Store
from tests.builders import (
    LAYER,
    ask,
    clusterip,
    endpoint_slice,
    ep,
    eport,
    headless,
    make_engine,
    make_store,
    namespaces,
    rcode,
)

ZONE = "cluster.local"


def rev(address: str) -> str:
    return ipaddress.ip_address(address).reverse_pointer


def prefixes(address: str) -> list[str]:
    """Every partial reverse name above `address`, nearest the apex last."""
    labels = rev(address).split(".")
    return [".".join(labels[i:]) for i in range(1, len(labels) - 2)]


def wire(name: str, qtype: str = "PTR") -> bytes:
    return dns.message.make_query(name, qtype).to_wire()


def rcode_of(response: object) -> str:
    assert isinstance(response, bytes)
    return dns.rcode.to_text(response[3] & 0x0F)  # no EDNS extended rcode in these answers


def test_a_name_above_an_address_appears_and_goes_with_it() -> None:
    engine = make_engine(namespaces("default"))
    store = engine.clusters[0].store
    assert rcode(ask(engine, "0.96.10.in-addr.arpa", "PTR")) == "NXDOMAIN"
    store.apply(LAYER, [clusterip("default", "web", "10.96.0.5")])
    for name in prefixes("10.96.0.5"):
        ans = ask(engine, name, "PTR")
        assert (rcode(ans), ans.answer) == ("NOERROR", []), name
    assert rcode(ask(engine, "1.96.10.in-addr.arpa", "PTR")) == "NXDOMAIN"
    # an endpoint counts while it is ready
    store.apply(
        LAYER, [headless("default", "db"), endpoint_slice("default", "db-a", "db", [ep("fd00::7")])]
    )
    assert rcode(ask(engine, prefixes("fd00::7")[0], "PTR")) == "NOERROR"
    store.apply(LAYER, [endpoint_slice("default", "db-a", "db", [ep("fd00::7", ready=False)])])
    assert rcode(ask(engine, prefixes("fd00::7")[0], "PTR")) == "NXDOMAIN"
    assert rcode(ask(engine, "d.f.ip6.arpa", "PTR")) == "NXDOMAIN"
    store.apply(LAYER, deletes=[("Service", "default", "web")])
    for name in prefixes("10.96.0.5"):
        assert rcode(ask(engine, name, "PTR")) == "NXDOMAIN", name


def test_an_address_two_services_share_stays_until_both_are_gone() -> None:
    engine = make_engine(
        [
            *namespaces("default"),
            clusterip("default", "a", "10.96.0.5"),
            clusterip("default", "b", "10.96.0.5"),
        ]
    )
    store = engine.clusters[0].store
    assert rcode(ask(engine, "0.96.10.in-addr.arpa", "PTR")) == "NOERROR"
    store.apply(LAYER, deletes=[("Service", "default", "a")])
    assert rcode(ask(engine, "0.96.10.in-addr.arpa", "PTR")) == "NOERROR"
    store.apply(LAYER, deletes=[("Service", "default", "b")])
    assert rcode(ask(engine, "0.96.10.in-addr.arpa", "PTR")) == "NXDOMAIN"


def test_every_cluster_counts_and_one_cluster_losing_an_address_is_not_enough() -> None:
    home = make_store([*namespaces("default"), clusterip("default", "web", "10.96.0.5")])
    east = make_store([*namespaces("default")])
    engine = Engine([Cluster(ZONE, home), Cluster("east.example", east)])
    assert rcode(ask(engine, "0.128.10.in-addr.arpa", "PTR")) == "NXDOMAIN"
    east.apply(
        LAYER, [clusterip("default", "api", "10.128.0.7"), clusterip("default", "web", "10.96.0.5")]
    )
    assert rcode(ask(engine, "0.128.10.in-addr.arpa", "PTR")) == "NOERROR"
    home.apply(LAYER, deletes=[("Service", "default", "web")])
    assert rcode(ask(engine, "0.96.10.in-addr.arpa", "PTR")) == "NOERROR"  # east still has it
    east.apply(LAYER, deletes=[("Service", "default", "web")])
    assert rcode(ask(engine, "0.96.10.in-addr.arpa", "PTR")) == "NXDOMAIN"


def test_before_the_sync_only_nothing_below_becomes_servfail() -> None:
    engine = make_engine(
        [*namespaces("default"), clusterip("default", "web", "10.96.0.5")], synced=False
    )
    assert rcode(ask(engine, "0.96.10.in-addr.arpa", "PTR")) == "NOERROR"
    assert rcode(ask(engine, "1.96.10.in-addr.arpa", "PTR")) == "SERVFAIL"


def test_cache_tags() -> None:
    engine = make_engine()

    def tag(name: str) -> tuple[str, ...] | None:
        return engine.cache_tag([label.encode() for label in name.split(".")])

    assert tag("5.0.96.10.in-addr.arpa") == ("ip", "10.96.0.5")
    assert tag(rev("fd00::7")) == ("ip", "fd00::7")
    for name in ("0.96.10.in-addr.arpa", "10.in-addr.arpa", *prefixes("fd00::7")):
        assert tag(name) == ANY_TAG, name
    # names nothing can ever exist under, and the apexes, depend on no address
    for name in (
        "x.in-addr.arpa",
        "010.in-addr.arpa",
        "1.5.0.96.10.in-addr.arpa",
        "in-addr.arpa",
        "ip6.arpa",
    ):
        assert tag(name) is None, name


def test_the_response_cache_drops_a_partial_name_when_an_address_under_it_changes() -> None:
    store = make_store([*namespaces("default"), clusterip("default", "other", "10.200.0.1")])
    responder = Responder(Engine([Cluster(ZONE, store)]))
    question = wire("0.96.10.in-addr.arpa")
    edns = dns.message.make_query("0.96.10.in-addr.arpa", "PTR", use_edns=0).to_wire()
    assert rcode_of(responder.respond(question, udp=True)) == "NXDOMAIN"
    assert rcode_of(responder.respond(question, udp=True)) == "NXDOMAIN"  # now from the cache
    assert rcode_of(responder.respond(edns, udp=True)) == "NXDOMAIN"
    store.apply(LAYER, [clusterip("default", "web", "10.96.0.5")])
    nodata = responder.respond(question, udp=True)
    assert isinstance(nodata, bytes)
    parsed = dns.message.from_wire(nodata)
    assert parsed.rcode() == dns.rcode.NOERROR and not parsed.answer
    assert [(str(r.name), r.rdtype) for r in parsed.authority] == [("in-addr.arpa.", 6)]
    assert rcode_of(responder.respond(edns, udp=True)) == "NOERROR"
    # a change elsewhere, then the address goes
    store.apply(LAYER, [clusterip("default", "other", "10.200.0.2")])
    assert rcode_of(responder.respond(question, udp=True)) == "NOERROR"
    store.apply(LAYER, deletes=[("Service", "default", "web")])
    assert rcode_of(responder.respond(question, udp=True)) == "NXDOMAIN"
    assert rcode_of(responder.respond(edns, udp=True)) == "NXDOMAIN"


def _many(first: int, n: int) -> list[KubeObject]:
    return [
        headless("default", "big"),
        endpoint_slice(
            "default",
            "big-a",
            "big",
            [ep(f"10.{first}.{i // 256}.{i % 256}") for i in range(n)],
            [eport("http", 80)],
        ),
    ]


def test_a_relist_sized_change_is_merged_in_one_pass() -> None:
    engine = make_engine([*namespaces("default"), clusterip("default", "web", "10.96.0.5")])
    store = engine.clusters[0].store
    assert rcode(ask(engine, "7.1.in-addr.arpa", "PTR")) == "NXDOMAIN"
    store.apply(LAYER, _many(1, 1000))
    assert rcode(ask(engine, "3.1.10.in-addr.arpa", "PTR")) == "NOERROR"
    assert rcode(ask(engine, "4.1.10.in-addr.arpa", "PTR")) == "NXDOMAIN"
    store.apply(LAYER, _many(2, 1000))  # 2,000 addresses touched: 1,000 gone, 1,000 new
    assert rcode(ask(engine, "3.1.10.in-addr.arpa", "PTR")) == "NXDOMAIN"
    assert rcode(ask(engine, "3.2.10.in-addr.arpa", "PTR")) == "NOERROR"
    assert rcode(ask(engine, "0.96.10.in-addr.arpa", "PTR")) == "NOERROR"


def test_an_index_nobody_reads_is_dropped_and_built_again_when_asked() -> None:
    engine = make_engine([*namespaces("default"), clusterip("default", "web", "10.96.0.5")])
    store = engine.clusters[0].store
    assert rcode(ask(engine, "0.96.10.in-addr.arpa", "PTR")) == "NOERROR"
    index = engine._ptrs
    for first in (1, 2, 3):
        store.apply(LAYER, _many(first, 2000))  # a backlog past BACKLOG, never applied
    assert index._values is None and not index._pending
    assert rcode(ask(engine, "7.3.10.in-addr.arpa", "PTR")) == "NOERROR"
    assert rcode(ask(engine, "7.2.10.in-addr.arpa", "PTR")) == "NXDOMAIN"
    assert rcode(ask(engine, "0.96.10.in-addr.arpa", "PTR")) == "NOERROR"


def test_a_dropped_engine_is_not_kept_alive_by_its_store() -> None:
    store = make_store([*namespaces("default"), clusterip("default", "web", "10.96.0.5")])
    engine = Engine([Cluster(ZONE, store)])
    assert engine.resolve(DNSLabel("0.96.10.in-addr.arpa"), 12).rcode == 0
    gone = weakref.ref(engine)
    del engine
    gc.collect()
    assert gone() is None
    store.apply(LAYER, [clusterip("default", "api", "10.96.0.6")])  # its listener does nothing


# -- random changes against a brute-force reading of the store ------------------------------------

POOL = [
    "10.96.0.1",
    "10.96.0.2",
    "10.96.1.1",
    "10.1.0.1",
    "10.1.0.2",
    "10.1.2.3",
    "10.2.0.1",
    "192.168.0.1",
    "fd00::1",
    "fd00::2",
    "fd00::1:0",
    "fd00:1::1",
    "2001:db8::",
]
PARTIAL_NAMES = [
    *sorted({name for address in POOL for name in prefixes(address)}),
    "11.in-addr.arpa",
    "3.96.10.in-addr.arpa",
    "e.f.ip6.arpa",
    "2.0.0.0.d.f.ip6.arpa",
]


def _random_objects(rng: random.Random) -> list[KubeObject]:
    out: list[KubeObject] = []
    for _ in range(rng.randrange(1, 4)):
        name = rng.choice(["a", "b", "c"])
        if rng.random() < 0.4:
            ips = tuple(rng.sample(POOL, rng.randrange(0, 3)))
            out.append(clusterip("default", name, *ips))
        else:
            out.append(headless("default", name))
            eps = [ep(a, ready=rng.random() < 0.7) for a in rng.sample(POOL, rng.randrange(0, 5))]
            out.append(endpoint_slice("default", f"{name}-{rng.randrange(2)}", name, eps))
    return out


def _expected(store: Store, name: str) -> str:
    below = any(
        (store.services_by_cluster_ip(a) or store.endpoints_by_ip(a))
        and rev(a).endswith("." + name)
        for a in POOL
    )
    return "NOERROR" if below else "NXDOMAIN"


@pytest.mark.parametrize(
    ("seed", "one_by_one", "backlog"),
    [(0, 64, 4096), (1, 64, 4096), (2, 1, 4096), (3, 1, 4096), (4, 64, 3), (5, 1, 3)],
)
def test_random_changes_agree_with_the_store(
    seed: int, one_by_one: int, backlog: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small ONE_BY_ONE and BACKLOG send the same changes through the merge and the rebuild."""
    monkeypatch.setattr(ReverseIndex, "ONE_BY_ONE", one_by_one)
    monkeypatch.setattr(ReverseIndex, "BACKLOG", backlog)
    rng = random.Random(seed)
    store = make_store(namespaces("default"))
    engine = Engine([Cluster(ZONE, store)])
    responder = Responder(Engine([Cluster(ZONE, store)]))
    wires = {name: wire(name) for name in PARTIAL_NAMES}
    for _step in range(120):
        deletes = []
        if rng.random() < 0.3:
            deletes.append(("Service", "default", rng.choice(["a", "b", "c"])))
        store.apply(LAYER, _random_objects(rng), deletes)
        for name in rng.sample(PARTIAL_NAMES, 12):
            want = _expected(store, name)
            assert rcode(ask(engine, name, "PTR")) == want, name
            assert rcode_of(responder.respond(wires[name], udp=True)) == want, name
