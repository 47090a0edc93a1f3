"""The response cache never serves what a fresh answer would not: after any change, every cached
answer equals the answer computed from scratch (targeted invalidation and serial patching)."""

from __future__ import annotations

import random

import dns.message
import pytest

from kdns.dns.resolution import Cluster, Engine
from kdns.serve.responder import Responder
from kdns.state.model import (
    Endpoint,
    EndpointPort,
    EndpointSet,
    KubeObject,
    Namespace,
    Service,
    ServicePort,
    Subset,
)
from kdns.state.store import Store

ZONE = "cluster.local"


def random_object(rng: random.Random) -> KubeObject:
    ns = rng.choice(["a", "b"])
    svc = rng.choice(["web", "db", "api", "ext"])
    pick = rng.random()
    if pick < 0.1:
        return Namespace(rng.choice(["a", "b", "c"]))
    if pick < 0.45:
        if svc == "ext":
            target = rng.choice(["web.a.svc.cluster.local", "example.com"])
            return Service(ns, svc, type="ExternalName", external_name=target)
        headless = rng.random() < 0.5
        ips = () if headless else (f"10.96.{rng.randrange(3)}.{rng.randrange(1, 4)}",)
        port = ServicePort(rng.choice(["http", "grpc"]), rng.choice([80, 81]))
        return Service(ns, svc, cluster_ips=ips, headless=headless, ports=(port,))
    endpoints = tuple(
        Endpoint(
            (f"10.1.0.{rng.randrange(1, 6)}",),
            hostname=rng.choice(["", "h0", "h1"]),
            ready=rng.random() < 0.7,
        )
        for _ in range(rng.randrange(0, 4))
    )
    port = EndpointPort(rng.choice(["http", "grpc"]), rng.choice([8080, 8081]))
    name = f"{svc}-{rng.randrange(2)}"
    return EndpointSet("EndpointSlice", ns, name, svc, (Subset(endpoints, (port,)),))


QUESTIONS = [
    (f"{name}.{ns}.svc.{ZONE}", t)
    for ns in ("a", "b", "c")
    for name in ("web", "db", "api", "ext", "nope")
    for t in ("A", "AAAA", "SRV", "TXT")
] + [
    (f"_http._tcp.web.a.svc.{ZONE}", "SRV"),
    (f"_grpc._tcp.db.b.svc.{ZONE}", "SRV"),
    (f"h0.web.a.svc.{ZONE}", "A"),
    (f"10-1-0-1.db.b.svc.{ZONE}", "A"),
    (f"a.svc.{ZONE}", "A"),
    (f"c.svc.{ZONE}", "A"),
    (f"10-0-0-1.c.pod.{ZONE}", "A"),
    (ZONE, "SOA"),
    (ZONE, "NS"),
    ("1.0.1.10.in-addr.arpa", "PTR"),
    ("2.0.1.10.in-addr.arpa", "PTR"),
    ("1.0.96.10.in-addr.arpa", "PTR"),
    ("9.9.9.10.in-addr.arpa", "PTR"),
    ("example.com", "A"),
]


@pytest.mark.parametrize("seed", range(6))
def test_cached_answers_always_equal_fresh_ones(seed: int) -> None:
    rng = random.Random(seed)
    store = Store(serial_base=1000)
    store.add_layer("t", implicit_namespaces=rng.random() < 0.5)
    store.set_synced("t")
    # One order (rotate="off"): this checks the cache's bytes; tests/test_rotation.py the orders.
    responder = Responder(
        Engine([Cluster(ZONE, store)]), cache_size=rng.choice([8, 1000]), rotate="off"
    )
    wires = {
        (n, t, e): dns.message.make_query(n, t, use_edns=e).to_wire()
        for n, t in QUESTIONS
        for e in (-1, 0)
    }
    for _step in range(150):
        if rng.random() < 0.6:
            objects = [random_object(rng) for _ in range(rng.randrange(1, 4))]
            deletes = []
            if rng.random() < 0.3:
                kind = rng.choice(["Service", "EndpointSlice", "Namespace"])
                name = rng.choice(["web", "db", "api", "ext", "web-0", "db-1", "a", "c"])
                deletes.append((kind, "" if kind == "Namespace" else rng.choice("ab"), name))
            store.apply("t", objects, deletes)
        for wire in rng.sample(list(wires.values()), 25):
            # The same bytes again and again: over UDP the memo answers them (with a new ID
            # each time, as a client would send).
            wire = rng.randbytes(2) + wire[2:]
            for udp in (True, False):
                cached = responder.respond(wire, udp=udp)
                fresh = Responder(Engine([Cluster(ZONE, store)]), rotate="off").respond(
                    wire, udp=udp
                )
                assert cached == fresh, (dns.message.from_wire(wire).question, udp)


def test_negative_answers_stay_cached_and_get_the_new_serial() -> None:
    store = Store(serial_base=5)
    store.add_layer("t", implicit_namespaces=True)
    store.apply("t", [Service("a", "web", cluster_ips=("10.96.0.1",))])
    store.set_synced("t")
    responder = Responder(Engine([Cluster(ZONE, store)]), rotate="off")
    wire = dns.message.make_query(f"nope.a.svc.{ZONE}", "A").to_wire()
    first = dns.message.from_wire(responder.respond(wire, udp=True))
    misses = responder.misses
    store.apply("t", [Service("a", "other", cluster_ips=("10.96.0.2",))])
    second = dns.message.from_wire(responder.respond(wire, udp=True))
    assert responder.misses == misses  # still cached: the change touched another service
    assert second.authority[0][0].serial == first.authority[0][0].serial + 1
    store.apply("t", [Service("a", "nope", cluster_ips=("10.96.0.3",))])
    third = dns.message.from_wire(responder.respond(wire, udp=True))
    assert third.answer[0][0].address == "10.96.0.3"
