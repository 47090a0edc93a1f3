"""The large-answer encoder (kdns/dns/large_answers.py): exactly the engine's bytes, or nothing.

The engine is the definition of an answer; `encode_bulk` is a second implementation of a slice of
it, kept honest here. Many generated clusters (headless and ClusterIP services, hostnames or none
in mixed case, dual-stack, several slices with duplicate addresses, named and unnamed ports over
TCP, UDP and SCTP, publishNotReadyAddresses, several and nested zones) are asked many questions
(mixed case, EDNS on and off, DO, RD and CD, other classes and types), and for each one:

- when `encode_bulk` answers, its bytes equal `encode(query, resolve(query))`;
- it answers exactly when the engine gives a positive answer of the shapes it covers (so a
  refactoring that makes it give up everywhere fails too).
"""

from __future__ import annotations

import ipaddress
import random
import struct
from collections import Counter
from collections.abc import Callable

import pytest
from dnslib import AAAA, QTYPE, RCODE, A
from hypothesis import given, settings
from hypothesis import strategies as st

from kdns.dns.large_answers import Bodies, _rdata, encode_bulk
from kdns.dns.resolution import Cluster, Engine
from kdns.dns.wire import Query, encode, parse_query
from kdns.serve.responder import Responder, _fit
from kdns.state.model import (
    Endpoint,
    EndpointKind,
    EndpointPort,
    EndpointSet,
    KubeObject,
    Namespace,
    Service,
    ServicePort,
    Subset,
    ip_family,
)
from kdns.state.store import Store

NAMESPACES = ("default", "team-a")
SERVICES = ("web", "db", "svc", "h0", "api")
HOSTNAMES = ("", "", "", "h0", "h1", "H0", "web-0", "svc", "db", "Web-0", "a.b", "A.b")
PORT_NAMES = ("http", "", "dns", "grpc", "Metrics")
PROTOCOLS = ("TCP", "TCP", "UDP", "SCTP")
ZONE_SETS = (
    ("cluster.local",),
    ("cluster.local", "east.example"),
    ("cluster.local", "sub.cluster.local"),  # nested: the longer zone wins its names
)
TYPES = ("A", "AAAA", "ANY", "SRV", "TXT", "PTR", "CNAME")


def v4(rng: random.Random) -> str:
    return f"10.{rng.randrange(2)}.0.{rng.randrange(1, 9)}"  # few: duplicates across slices


def v6(rng: random.Random) -> str:
    return f"fd00::{rng.randrange(1, 9):x}"


def random_service(rng: random.Random, ns: str, name: str) -> list[KubeObject]:
    kind = rng.random()
    ports = tuple(
        ServicePort(rng.choice(PORT_NAMES), rng.choice((53, 80, 443, 8080)), rng.choice(PROTOCOLS))
        for _ in range(rng.randrange(4))
    )
    pnr = rng.random() < 0.3
    if kind < 0.1:
        return [Service(ns, name, type="ExternalName", external_name="example.com", ports=ports)]
    if kind < 0.4:
        ips = rng.choice(
            [(v4(rng),), (v4(rng), v6(rng)), (v6(rng),), (v4(rng), v4(rng)), ("10.9.9.9",) * 2]
        )
        svc_type = rng.choice(["ClusterIP", "NodePort", "LoadBalancer"])
        return [
            Service(ns, name, type=svc_type, cluster_ips=ips, ports=ports, publish_not_ready=pnr)
        ]
    objects: list[KubeObject] = [
        Service(ns, name, headless=True, ports=ports, publish_not_ready=pnr)
    ]
    for i in range(rng.randrange(4)):
        subsets = []
        for _ in range(1 if rng.random() < 0.7 else 2):
            endpoints = []
            for _ in range(rng.randrange(8)):
                family = rng.random()
                if family < 0.6:
                    addresses: tuple[str, ...] = (v4(rng),)
                elif family < 0.8:
                    addresses = (v6(rng),)
                else:
                    addresses = (v4(rng), v6(rng))
                hostname = rng.choice(HOSTNAMES)
                endpoints.append(Endpoint(addresses, hostname=hostname, ready=rng.random() < 0.8))
            eports = tuple(
                EndpointPort(
                    rng.choice(PORT_NAMES), rng.choice((53, 80, 8080, 9090)), rng.choice(PROTOCOLS)
                )
                for _ in range(rng.randrange(4))
            )
            subsets.append(Subset(tuple(endpoints), eports))
        kind_ = "EndpointSlice" if rng.random() < 0.8 else "Endpoints"
        ename = f"{name}-{i}" if kind_ == "EndpointSlice" else name
        objects.append(EndpointSet(kind_, ns, ename, name, tuple(subsets)))
    return objects


def random_store(
    rng: random.Random, extra: Callable[[str], list[KubeObject]] | None = None
) -> Store:
    """Random services in each namespace, and the objects `extra(namespace)` gives."""
    store = Store(serial_base=rng.randrange(1 << 32))
    store.add_layer("t", implicit_namespaces=rng.random() < 0.5)
    objects: list[KubeObject] = [Namespace(ns) for ns in NAMESPACES]
    for ns in NAMESPACES:
        for name in rng.sample(SERVICES, rng.randrange(2, len(SERVICES) + 1)):
            objects += random_service(rng, ns, name)
        if extra is not None:
            objects += extra(ns)
    store.apply("t", objects)
    if rng.random() < 0.9:
        store.set_synced("t")
    return store


def spell(rng: random.Random, name: str) -> str:
    """`name` in a random mix of cases."""
    return "".join(c.upper() if rng.random() < 0.3 else c for c in name)


def wire(
    rng: random.Random, name: str, qtype: int, qclass: int = 1, edns: bool = False, do: bool = False
) -> bytes:
    flags = rng.choice([0x0000, 0x0100, 0x0010, 0x0110])
    head = struct.pack("!HHHHHH", rng.randrange(1 << 16), flags, 1, 0, 0, 1 if edns else 0)
    qname = b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\x00"
    packet = head + qname + struct.pack("!HH", qtype, qclass)
    if edns:
        ttl = 0x8000 if do else 0
        option = b"\x00\x0a\x00\x08" + bytes(8) if rng.random() < 0.3 else b""  # a cookie
        payload = rng.choice([512, 1232, 4096])
        packet += b"\x00" + struct.pack("!HHIH", 41, payload, ttl, len(option)) + option
    return packet


#: An endpoint's name: the direct encoder covers its A, AAAA and ANY, not its SRV.
ENDPOINT = "endpoint"


def questions(rng: random.Random, zones: tuple[str, ...]) -> list[tuple[str, bool | str]]:
    """(name, whether it has a shape the direct encoder covers: service or _port._proto, or
    ENDPOINT)."""
    out = []
    for zone in zones:
        for ns in (*NAMESPACES, "nope"):
            for svc in (*SERVICES, "missing"):
                base = f"{svc}.{ns}.svc.{zone}"
                out.append((base, True))
                for pname in ("http", "dns", "grpc", "metrics", "", "none"):
                    for proto in ("tcp", "udp", "sctp", "xtp"):
                        if rng.random() < 0.3:
                            out.append((f"_{pname}._{proto}.{base}" if pname else base, True))
                # The "_" is optional, as in CoreDNS: still a port question.
                out.append((f"http._tcp.{base}", True))
                out.append((f"_http.{base}", False))
                out.append((f"{rng.choice(['h0', 'h1', 'H0', '10-0-0-1'])}.{base}", ENDPOINT))
        out.append((zone, False))
        out.append((f"default.svc.{zone}", False))
    out.append(("1.0.0.10.in-addr.arpa", False))
    out.append(("example.org", False))
    return out


def reference(responder: Responder, query: Query, max_udp: int) -> bytes | Exception:
    """What kdns gave before the direct encoder: the engine's answer, packed by dnslib."""
    try:
        return encode(query, responder.resolve(query), max_udp=max_udp)
    except Exception as err:  # dnslib refuses some names and addresses
        return err


def check(
    engine: Engine,
    responder: Responder,
    data: bytes,
    covered: bool | str,
    max_udp: int,
    bodies: Bodies | None = None,
) -> str | None:
    """Assert the direct encoder against the engine for one query; the kind of what it gave.

    With `bodies`, the sections encoded for earlier questions of the same views are reused.
    """
    query = parse_query(data)
    depth = "port" if query.labels[0].startswith(b"_") else "service"
    if covered == ENDPOINT:
        covered, depth = query.qtype != QTYPE.SRV, "endpoint"
    direct = encode_bulk(engine, query, max_udp, bodies=bodies)
    expected = reference(responder, query, max_udp)
    if isinstance(expected, Exception):
        assert direct is None, (query.labels, query.qtype, expected)
        return None
    if direct is not None:
        assert direct == expected, (query.labels, query.qtype, query.edns, query.do)
    answer = responder.resolve(query)
    positive = (
        query.qclass == 1
        and query.qtype in (QTYPE.A, QTYPE.AAAA, QTYPE.ANY, QTYPE.SRV)
        and answer.rcode == RCODE.NOERROR
        and bool(answer.answer)
        and all(rr.rtype != QTYPE.CNAME for rr in answer.answer)
        and len(expected) <= 65535
    )
    assert (direct is not None) == (covered and positive), (query.labels, query.qtype)
    if direct is None:
        return None
    return f"{depth} {QTYPE[query.qtype]}"


@pytest.mark.parametrize("seed", range(30))
def test_direct_bytes_equal_engine_bytes(seed: int) -> None:
    rng = random.Random(seed)
    zones = ZONE_SETS[seed % len(ZONE_SETS)]
    engine = Engine(
        [Cluster(zone, random_store(rng)) for zone in zones], ttl=rng.choice([0, 5, 30, 3600])
    )
    responder = Responder(engine)
    max_udp = rng.choice([512, 1232, 4096])
    kinds: Counter[str] = Counter()
    # Every question asked twice, in other spellings and EDNS states: the second one is served
    # from the bodies the first left (half the seeds), or encoded again.
    bodies = Bodies() if seed % 2 else None
    for name, covered in questions(rng, zones):
        for type_name in rng.sample(TYPES, 4) * 2:
            qclass = 1 if rng.random() < 0.95 else 3
            edns = rng.random() < 0.5
            data = wire(
                rng, spell(rng, name), getattr(QTYPE, type_name), qclass, edns, rng.random() < 0.5
            )
            kind = check(engine, responder, data, covered, max_udp, bodies)
            if kind:
                kinds[kind] += 1
    assert kinds, "the direct encoder answered nothing"


def test_every_covered_shape_is_exercised() -> None:
    """The generated cases reach every kind of answer the direct encoder gives."""
    kinds: Counter[str] = Counter()
    for seed in range(12):
        rng = random.Random(1000 + seed)
        engine = Engine([Cluster("cluster.local", random_store(rng))])
        responder = Responder(engine)
        for name, covered in questions(rng, ("cluster.local",)):
            for type_name in ("A", "AAAA", "ANY", "SRV"):
                data = wire(rng, spell(rng, name), getattr(QTYPE, type_name), 1, seed % 2 == 0)
                kind = check(engine, responder, data, covered, 1232)
                if kind:
                    kinds[kind] += 1
    wanted = {"service A", "service AAAA", "service ANY", "service SRV", "port SRV", "port ANY"}
    wanted |= {"endpoint A", "endpoint AAAA", "endpoint ANY"}
    assert wanted <= set(kinds), kinds


def one_service(objects: list[KubeObject]) -> tuple[Engine, Responder]:
    store = Store()
    store.add_layer("t", implicit_namespaces=True)
    store.apply("t", objects)
    store.set_synced("t")
    engine = Engine([Cluster("cluster.local", store)])
    return engine, Responder(engine)


def big_headless(count: int, hostname: str = "", dual: bool = False) -> list[KubeObject]:
    endpoints = tuple(
        Endpoint(
            (f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}",) + ((f"fd00::{i + 1:x}",) if dual else ()),
            hostname=f"{hostname}{i}" if hostname else "",
        )
        for i in range(count)
    )
    return [
        Service("ns", "db", headless=True, ports=(ServicePort("http", 80),)),
        EndpointSet(
            "EndpointSlice", "ns", "db-1", "db", (Subset(endpoints, (EndpointPort("http", 80),)),)
        ),
    ]


@pytest.mark.parametrize(
    ("count", "hostname", "name", "qtype"),
    [
        (5000, "", "db.ns.svc.cluster.local", QTYPE.A),  # 5000 x 16 bytes
        (800, "h" * 50 + "-", "_http._tcp.db.ns.svc.cluster.local", QTYPE.SRV),
        (800, "h" * 50 + "-", "db.ns.svc.cluster.local", QTYPE.SRV),
    ],
)
def test_answers_over_64k_are_left_to_fit(count: int, hostname: str, name: str, qtype: int) -> None:
    engine, responder = one_service(big_headless(count, hostname))
    data = wire(random.Random(0), name, qtype)
    query = parse_query(data)
    assert len(encode(query, responder.resolve(query))) > 65535
    assert encode_bulk(engine, query) is None
    response = responder.respond(data, udp=False)
    assert response == _fit(query, responder.resolve(query), responder.max_udp)
    assert isinstance(response, bytes) and len(response) <= 65535


def moved(count: int, change: int, hostname: str = "") -> EndpointSet:
    """`big_headless`'s slice after `change` changes: one endpoint moved to a new address,
    every third change one more endpoint, every fifth one fewer."""
    n = count + (change % 3 == 0) - (change % 5 == 0)
    endpoints = tuple(
        Endpoint(
            (f"10.{1 + change % 200}.0.{i}" if i == change % n else f"10.0.{i >> 8}.{i & 255}",),
            hostname=f"{hostname}{i}" if hostname else "",
        )
        for i in range(n)
    )
    return EndpointSet(
        "EndpointSlice", "ns", "db-1", "db", (Subset(endpoints, (EndpointPort("http", 80),)),)
    )


@pytest.mark.parametrize(("hostname", "kept"), [("", 64), ("web-", 1)])
def test_bodies_follow_every_change(hostname: str, kept: int) -> None:
    """A service changing again and again, asked each time with and without EDNS, in other
    spellings, for each covered type at its name and at its port: every answer built from the
    kept bodies equals the engine's for the data of that moment (a new view is encoded anew,
    and a kept body is never served for a later view), with room for many views or one."""
    rng = random.Random(len(hostname) + kept)
    engine, responder = one_service(big_headless(100, hostname))
    store = engine.clusters[0].store
    bodies = Bodies(kept)
    names = ("db.ns.svc.cluster.local", "_http._tcp.db.ns.svc.cluster.local")
    for change in range(1, 25):
        store.apply("t", [moved(100, change, hostname)])
        for _ in range(3):
            for name in names:
                for qtype in (QTYPE.A, QTYPE.AAAA, QTYPE.ANY, QTYPE.SRV):
                    data = wire(rng, spell(rng, name), qtype, 1, rng.random() < 0.5)
                    query = parse_query(data)
                    direct = encode_bulk(engine, query, 1232, bodies=bodies)
                    expected = encode(query, responder.resolve(query), max_udp=1232)
                    if qtype == QTYPE.AAAA:  # no IPv6 address: NODATA, the engine's to give
                        assert direct is None
                    else:
                        assert direct == expected, (name, QTYPE[qtype], change)
        assert len(bodies) <= kept


def test_answers_past_16k_stay_readable() -> None:
    """A compression pointer has 14 bits: names past offset 16383 are never pointed at, so an
    answer over 16 KiB reads back whole (dnslib alone cut such pointers and corrupted it)."""
    import dns.message

    engine, responder = one_service(big_headless(400, "host-", dual=True))
    for name in ("_http._tcp.db.ns.svc.cluster.local", "db.ns.svc.cluster.local"):
        query = parse_query(wire(random.Random(1), name, QTYPE.SRV, edns=True))
        direct = encode_bulk(engine, query)
        assert direct is not None and len(direct) > 16384
        assert direct == encode(query, responder.resolve(query))
        msg = dns.message.from_wire(direct)
        assert sum(len(rrset) for rrset in msg.answer) == 400  # one per hostname
        assert sum(len(rrset) for rrset in msg.additional) == 800  # A and AAAA each


@pytest.mark.parametrize(
    ("address", "hostname", "qtype", "direct"),
    [
        ("fe80::1%eth0", "", QTYPE.A, True),  # no AAAA asked: the odd address is skipped
        ("fe80::1%eth0", "", QTYPE.AAAA, False),  # dnslib cannot pack it: the engine's case
        ("::ffff:1.2.3.4", "h", QTYPE.SRV, False),
        ("10.0.0.1", "caf\u00e9", QTYPE.SRV, False),  # IDNA: dnslib rewrites the name
        ("10.0.0.1", "h\\065", QTYPE.SRV, False),  # \DDD escape
        ("10.0.0.1", "a.b", QTYPE.SRV, True),  # two labels: still a plain name
        ("10.0.0.1", "x" * 64, QTYPE.SRV, False),  # a label over 63
        ("10.0.0.1", "H", QTYPE.SRV, True),
    ],
)
def test_odd_names_and_addresses(address: str, hostname: str, qtype: int, direct: bool) -> None:
    engine, responder = one_service(
        [
            Service("ns", "db", headless=True),
            EndpointSet(
                "EndpointSlice",
                "ns",
                "db-1",
                "db",
                (
                    Subset(
                        (Endpoint((address,), hostname), Endpoint(("10.0.0.9",))),
                        (EndpointPort("http", 80),),
                    ),
                ),
            ),
        ]
    )
    query = parse_query(wire(random.Random(2), "db.ns.svc.cluster.local", qtype))
    out = encode_bulk(engine, query)
    assert (out is not None) == direct
    if out is not None:
        assert out == encode(query, responder.resolve(query))


def test_responder_serves_and_invalidates_direct_answers() -> None:
    engine, responder = one_service(big_headless(100, "h"))
    store = engine.clusters[0].store
    data = wire(random.Random(3), "_HTTP._tcp.DB.ns.svc.cluster.local", QTYPE.SRV, edns=True)
    first = responder.respond(data, udp=False)
    query = parse_query(data)
    assert first == encode(query, responder.resolve(query))
    store.apply("t", big_headless(99, "h")[1:])
    second = responder.respond(data, udp=False)
    assert second != first
    assert second == encode(query, responder.resolve(query))


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.ip_addresses().map(str),
        st.ip_addresses(v=6).map(lambda a: a.exploded),
        st.ip_addresses(v=6).map(lambda a: f"::ffff:{ipaddress.IPv4Address(int(a) & 0xFFFFFFFF)}"),
        st.from_regex(r"\A[0-9a-fA-F:.%]{1,20}\Z"),
    )
)
def test_address_rdata_is_dnslibs(address: str) -> None:
    """The fast rdata (inet_pton) is byte for byte dnslib's, and refuses what dnslib refuses;
    the family is `ip_family`'s."""
    family, rdata = _rdata(address)
    assert family == ip_family(address)
    try:
        if family == 4:
            expected: bytes | None = bytes(A(address).data)
        elif family == 6:
            expected = bytes(AAAA(address).data)
        else:
            expected = None
    except Exception:
        expected = None
    assert rdata == expected


def mapped_ports(kind: EndpointKind, headless: bool) -> list[KubeObject]:
    """A service on ports 80 (http) and 81 (unnamed) whose 40 endpoints listen on 8080 and 8081,
    from an EndpointSlice or from manual Endpoints."""
    endpoints = tuple(Endpoint((f"10.8.0.{i + 1}",)) for i in range(40))
    ports = (ServicePort("http", 80), ServicePort("", 81))
    eports = (EndpointPort("http", 8080), EndpointPort("", 8081))
    ips = () if headless else ("10.96.8.1",)
    name = "db-1" if kind == "EndpointSlice" else "db"
    return [
        Service("ns", "db", headless=headless, cluster_ips=ips, ports=ports),
        EndpointSet(kind, "ns", name, "db", (Subset(endpoints, eports),)),
    ]


@pytest.mark.parametrize("kind", ["EndpointSlice", "Endpoints"])
@pytest.mark.parametrize(
    ("headless", "name", "ports"),
    [
        (True, "_http._tcp.db.ns.svc.cluster.local", {8080}),  # the endpoint's (target) port
        (True, "db.ns.svc.cluster.local", {8080, 8081}),  # named and unnamed
        (False, "_http._tcp.db.ns.svc.cluster.local", {80}),  # the service's port
        (False, "db.ns.svc.cluster.local", {80, 81}),
    ],
)
def test_srv_ports_when_service_and_target_ports_differ(
    kind: EndpointKind, headless: bool, name: str, ports: set[int]
) -> None:
    import dns.message

    engine, responder = one_service(mapped_ports(kind, headless))
    query = parse_query(wire(random.Random(2), name, QTYPE.SRV, edns=True))
    direct = encode_bulk(engine, query)
    assert direct is not None and direct == encode(query, responder.resolve(query))
    srv = [rd for rrset in dns.message.from_wire(direct).answer for rd in rrset]
    assert {rd.port for rd in srv} == ports
    assert len(srv) == (40 * len(ports) if headless else len(ports))
