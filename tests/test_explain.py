"""`kdns explain`: the reasons given for answers, on fixtures built in a Store.

The first line of an explanation is compared whole (it is what users read); the records below it
must be the engine's own. A table of names of every shape also checks that the prose never
contradicts the engine: the reason says NXDOMAIN exactly when the engine answers NXDOMAIN.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dnslib import QTYPE, RCODE, DNSLabel

from kdns.dns.resolution import Cluster, Engine
from kdns.ops.explain import ExplainError, explain
from kdns.sources.files import FileSource
from kdns.state.model import Endpoint
from kdns.state.store import Store
from tests.builders import (
    clusterip,
    endpoint_slice,
    endpoints,
    ep,
    eport,
    external,
    headless,
    make_engine,
    namespaces,
    port,
    subset,
    text,
)

ZONES = Path(__file__).resolve().parent.parent / "zones"


def fixture_objects() -> list[object]:
    return [
        *namespaces("default", "shop", "empty"),
        headless("shop", "web", ports=[port("http", 80)]),
        endpoint_slice(
            "shop",
            "web-abc",
            "web",
            [ep("10.0.0.1", hostname="web-0"), ep("10.0.0.2", hostname="web-1")],
            [eport("http", 8080)],
        ),
        endpoint_slice(
            "shop",
            "web-def",
            "web",
            [Endpoint(("10.0.0.3",), hostname="web-2", ready=False, target="Pod/web-2")],
            [eport("http", 8080)],
        ),
        clusterip("default", "my-service", "10.96.0.10", ports=[port("http", 80)]),
        endpoints("default", "my-service", subset([ep("10.1.0.1")], [eport("http", 8080)])),
        external("default", "search", "www.example.com"),
        external("default", "inside", "my-service.default.svc.cluster.local"),
        external("default", "by-ip", "192.0.2.1"),
        headless("shop", "down"),
        endpoint_slice("shop", "down-1", "down", [ep("10.0.0.9", ready=False)]),
    ]


@pytest.fixture
def engine() -> Engine:
    return make_engine(fixture_objects(), ns_addresses=["10.96.0.53"])  # type: ignore[arg-type]


def first(engine: Engine, name: str, qtype: str = "A") -> str:
    return explain(engine, name, qtype).splitlines()[0]


def test_headless_service(engine: Engine) -> None:
    out = explain(engine, "web.shop.svc.cluster.local")
    lines = out.splitlines()
    assert lines[0] == (
        "web.shop.svc.cluster.local A: headless service shop/web; 3 endpoints, 1 not ready; "
        "answered from EndpointSlices web-abc and web-def"
    )
    assert "  owned by layer cluster (the Kubernetes API)" in lines
    assert "  not ready (left out): Pod/web-2 10.0.0.3" in lines
    assert "NOERROR, 2 answer record(s)" in lines
    assert "  web.shop.svc.cluster.local. 5 A 10.0.0.1" in lines
    assert "  web.shop.svc.cluster.local. 5 A 10.0.0.2" in lines
    assert "10.0.0.3" not in "".join(line for line in lines if line.startswith("  web."))
    assert out.endswith("\n")


def test_records_are_the_engines(engine: Engine) -> None:
    for name, qtype in [
        ("web.shop.svc.cluster.local", "A"),
        ("_http._tcp.my-service.default.svc.cluster.local", "SRV"),
        ("10.0.96.10.in-addr.arpa", "PTR"),
    ]:
        answer = engine.resolve(DNSLabel(name), getattr(QTYPE, qtype))
        out = explain(engine, name, qtype)
        for rr in answer.answer + answer.authority + answer.additional:
            assert f"  {text(rr)}" in out.splitlines()


def test_clusterip_service(engine: Engine) -> None:
    out = explain(engine, "my-service.default.svc.cluster.local").splitlines()
    assert out[0] == (
        "my-service.default.svc.cluster.local A: ClusterIP service default/my-service: 10.96.0.10"
    )
    assert (
        "  endpoints (1 endpoint, from Endpoints my-service) answer only "
        "<endpoint>.<service> names" in out
    )


def test_external_name(engine: Engine) -> None:
    assert first(engine, "search.default.svc.cluster.local") == (
        "search.default.svc.cluster.local A: ExternalName service default/search -> www.example.com"
        " (outside kdns's zones: with --upstream the server adds the records the upstream gives"
        " for it; without, the client's resolver follows the CNAME)"
    )
    assert first(engine, "inside.default.svc.cluster.local").endswith(
        "-> my-service.default.svc.cluster.local (inside kdns's zones: followed)"
    )
    # The server answers the CNAME for MX too (it owns its name); the prose once said NODATA.
    assert first(engine, "search.default.svc.cluster.local", "MX").endswith(
        "the CNAME answers MX too (a CNAME owns its name: RFC 1034 3.6.2)"
    )
    assert first(engine, "search.default.svc.cluster.local", "SRV").endswith(
        "no SRV records for an ExternalName service (the specification's rule); "
        "no SRV records for this name (NODATA)"
    )
    assert first(engine, "by-ip.default.svc.cluster.local") == (
        "by-ip.default.svc.cluster.local A: NXDOMAIN: ExternalName service default/by-ip has "
        "an IP address, 192.0.2.1, as externalName"
    )


def test_missing_things(engine: Engine) -> None:
    assert first(engine, "x.default.svc.cluster.local") == (
        "x.default.svc.cluster.local A: NXDOMAIN: no service 'x' in namespace 'default'"
    )
    assert first(engine, "x.nowhere.svc.cluster.local") == (
        "x.nowhere.svc.cluster.local A: NXDOMAIN: no namespace 'nowhere' (so no service 'x' in it)"
    )
    assert first(engine, "down.shop.svc.cluster.local") == (
        "down.shop.svc.cluster.local A: NXDOMAIN: headless service shop/down has no ready "
        "endpoints (1 endpoint, 1 not ready)"
    )
    assert first(engine, "web-9.web.shop.svc.cluster.local") == (
        "web-9.web.shop.svc.cluster.local A: NXDOMAIN: headless service shop/web has no ready "
        "endpoint named 'web-9' (ready: web-0, web-1)"
    )


def test_endpoints_ports_and_nodata(engine: Engine) -> None:
    assert first(engine, "web-1.web.shop.svc.cluster.local") == (
        "web-1.web.shop.svc.cluster.local A: endpoint 'web-1' of headless service shop/web: "
        "10.0.0.2"
    )
    assert first(engine, "_http._tcp.web.shop.svc.cluster.local", "SRV") == (
        "_http._tcp.web.shop.svc.cluster.local SRV: SRV for port http/TCP of headless service "
        "shop/web, pointing at its ready endpoints"
    )
    assert first(engine, "_grpc._tcp.web.shop.svc.cluster.local", "SRV") == (
        "_grpc._tcp.web.shop.svc.cluster.local SRV: NXDOMAIN: headless service shop/web has no "
        "port named 'grpc' over TCP (named ports: http/TCP)"
    )
    assert first(engine, "my-service.default.svc.cluster.local", "TXT") == (
        "my-service.default.svc.cluster.local TXT: ClusterIP service default/my-service: "
        "10.96.0.10; no TXT records for this name (NODATA)"
    )
    assert first(engine, "empty.svc.cluster.local") == (
        "empty.svc.cluster.local A: NODATA: namespace empty exists but has no records of its own"
    )


def test_other_names(engine: Engine) -> None:
    assert first(engine, "www.example.org") == (
        "www.example.org A: REFUSED: not in kdns's zones (cluster.local, in-addr.arpa, "
        "ip6.arpa); forwarded instead with --upstream"
    )
    assert first(engine, "10.0.96.10.in-addr.arpa", "PTR") == (
        "10.0.96.10.in-addr.arpa PTR: PTR for 10.96.0.10: the ClusterIP of service "
        "default/my-service"
    )
    assert first(engine, "2.0.0.10.in-addr.arpa", "PTR") == (
        "2.0.0.10.in-addr.arpa PTR: PTR for 10.0.0.2: endpoint 'web-1' of service shop/web"
    )
    assert first(engine, "10-0-0-7.shop.pod.cluster.local").startswith(
        "10-0-0-7.shop.pod.cluster.local A: pod record: the address 10.0.0.7"
    )
    assert first(engine, "dns-version.cluster.local", "TXT").endswith("1.1.0")
    assert first(engine, "cluster.local", "SOA").startswith("cluster.local SOA: the apex")


def test_unsynced_store_says_servfail() -> None:
    engine = make_engine(fixture_objects(), synced=False)  # type: ignore[arg-type]
    assert first(engine, "x.default.svc.cluster.local") == (
        "x.default.svc.cluster.local A: SERVFAIL: the sources have not finished their first "
        "load yet; then: NXDOMAIN: no service 'x' in namespace 'default'"
    )


def test_layers_and_ignored_endpoints() -> None:
    store = Store()
    store.add_layer("files", implicit_namespaces=True)
    store.add_layer("cluster")
    store.apply(
        "files",
        [
            clusterip("default", "db", "10.96.0.20"),
            endpoints("default", "db", subset([ep("10.2.0.1")])),
            endpoint_slice("default", "db-x1", "db", [ep("10.2.0.1")]),
        ],
    )
    store.apply("cluster", [clusterip("default", "db", "10.96.0.99")])
    store.set_synced("files")
    store.set_synced("cluster")
    engine = Engine([Cluster("cluster.local", store)])
    out = explain(engine, "db.default.svc.cluster.local").splitlines()
    assert out[0] == "db.default.svc.cluster.local A: ClusterIP service default/db: 10.96.0.20"
    assert "  owned by layer files (zones/)" in out
    assert "  ignored: Endpoints db (EndpointSlices win over Endpoints)" in out


# Names of every shape, to check that the prose's NXDOMAIN matches the engine's.
SHAPES = [
    ("cluster.local", "SOA"),
    ("cluster.local", "A"),
    ("dns-version.cluster.local", "TXT"),
    ("ns.dns.cluster.local", "A"),
    ("dns.cluster.local", "A"),
    ("svc.cluster.local", "A"),
    ("pod.cluster.local", "A"),
    ("other.cluster.local", "A"),
    ("default.svc.cluster.local", "A"),
    ("nowhere.svc.cluster.local", "A"),
    ("web.shop.svc.cluster.local", "SRV"),
    ("web.shop.svc.cluster.local", "AAAA"),
    ("web-0.web.shop.svc.cluster.local", "A"),
    ("_tcp.web.shop.svc.cluster.local", "A"),
    ("_udp.web.shop.svc.cluster.local", "A"),
    ("_http._tcp.web.shop.svc.cluster.local", "A"),
    ("_http._udp.web.shop.svc.cluster.local", "SRV"),
    ("http.tcp.web.shop.svc.cluster.local", "SRV"),
    ("a.b.c.d.web.shop.svc.cluster.local", "A"),
    ("_tcp.my-service.default.svc.cluster.local", "A"),
    ("10-1-0-1.my-service.default.svc.cluster.local", "A"),
    ("search.default.svc.cluster.local", "CNAME"),
    ("x.search.default.svc.cluster.local", "A"),
    ("down.shop.svc.cluster.local", "SRV"),
    ("10-0-0-7.shop.pod.cluster.local", "A"),
    ("10-0-0-7.nowhere.pod.cluster.local", "A"),
    ("not-an-ip.shop.pod.cluster.local", "A"),
    ("shop.pod.cluster.local", "A"),
    ("9.9.9.9.in-addr.arpa", "PTR"),
    ("9.9.in-addr.arpa", "PTR"),
    ("0.0.10.in-addr.arpa", "PTR"),
    ("10.in-addr.arpa", "A"),
    ("in-addr.arpa", "SOA"),
    ("1.0.0.10.in-addr.arpa", "A"),
    ("example.org", "A"),
]


@pytest.mark.parametrize(("name", "qtype"), SHAPES)
def test_prose_agrees_with_the_engine(engine: Engine, name: str, qtype: str) -> None:
    answer = engine.resolve(DNSLabel(name), getattr(QTYPE, qtype))
    reason = first(engine, name, qtype).split(": ", 1)[1]
    said = reason.split(":", 1)[0]
    assert (said == "NXDOMAIN") == (answer.rcode == RCODE.NXDOMAIN), reason
    if answer.rcode == RCODE.NOERROR and not answer.answer:
        assert "NODATA" in reason, reason
    if answer.answer:
        assert "NXDOMAIN" not in reason and "NODATA" not in reason, reason


def test_pods_disabled() -> None:
    engine = make_engine(namespaces("shop"), pods="disabled")
    assert first(engine, "10-0-0-7.shop.pod.cluster.local") == (
        "10-0-0-7.shop.pod.cluster.local A: NXDOMAIN: pod records are disabled (--pods disabled)"
    )


@pytest.mark.parametrize(("name", "qtype"), [("a.b", "BOGUS"), ("a..b", "A"), ("", "A")])
def test_bad_questions(engine: Engine, name: str, qtype: str) -> None:
    with pytest.raises(ExplainError):
        explain(engine, name, qtype)


def test_bundled_zones() -> None:
    """The example in the issue, on the zones/ directory the repository ships."""
    store = Store()
    store.add_layer("files", implicit_namespaces=True)
    FileSource(store, "files", [ZONES], "10.96.0.0/12").load()
    engine = Engine([Cluster("cluster.local", store)])
    out = explain(engine, "db.data.svc.cluster.local").splitlines()
    assert out[0].startswith("db.data.svc.cluster.local A: headless service data/db; ")
    assert "1 not ready" in out[0] and "answered from EndpointSlice" in out[0]
    assert "  owned by layer files (zones/)" in out


def test_publish_not_ready_addresses_are_not_said_to_be_left_out() -> None:
    # It once printed "not ready (left out): 10.3.0.1", then 10.3.0.1 in the answer.
    engine = make_engine(
        [
            *namespaces("default"),
            headless("default", "peers", publish_not_ready=True),
            endpoint_slice("default", "peers-1", "peers", [ep("10.3.0.1", ready=False)]),
        ]
    )
    out = explain(engine, "peers.default.svc.cluster.local")
    assert "left out" not in out
    assert "not ready (answered all the same): 10.3.0.1" in out
    assert "peers.default.svc.cluster.local. 5 A 10.3.0.1" in out


def test_an_address_ready_in_another_slice_is_not_said_to_be_left_out() -> None:
    # Two hand-written slices, each with one address ready and the other not (a rollout's
    # overlap): both addresses are answered. It printed "not ready (left out): 10.250.2.2 and
    # 10.250.2.1", then both in the answer.
    engine = make_engine(
        [
            *namespaces("hand"),
            headless("hand", "split"),
            endpoint_slice(
                "hand", "split-1", "split", [ep("10.250.2.1"), ep("10.250.2.2", ready=False)]
            ),
            endpoint_slice(
                "hand", "split-2", "split", [ep("10.250.2.2"), ep("10.250.2.1", ready=False)]
            ),
            endpoint_slice("hand", "split-3", "split", [ep("10.250.2.3", ready=False)]),
        ]
    )
    out = explain(engine, "split.hand.svc.cluster.local")
    assert "  not ready (left out): 10.250.2.3" in out.splitlines()
    assert (
        "  not ready in one object, ready in another (answered): 10.250.2.2 and 10.250.2.1"
        in out.splitlines()
    )
    for address in ("10.250.2.1", "10.250.2.2"):
        assert f"split.hand.svc.cluster.local. 5 A {address}" in out
    assert "A 10.250.2.3" not in out
