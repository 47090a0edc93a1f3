"""The answer engine against the tables of dns-behaviour.md, one parametrised row per case.

Every row is: question (name, type) -> rcode, the answer records, the additional records; the
authority section must hold exactly the zone's SOA for every negative answer (NXDOMAIN, or
NOERROR without data) and nothing otherwise. Records compare as sorted
`"owner ttl TYPE rdata"` strings, so a missing, extra, duplicated or misspelt record fails.

Shorthand in the tables: `~` stands for `.default.svc.cluster.local.` and `^` for
`.kube-system.svc.cluster.local.`.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from dnslib import QTYPE, RCODE, DNSLabel, DNSRecord

from kdns.dns.resolution import Answer, Cluster, Engine
from kdns.dns.wire import encode, parse_query
from kdns.ops.zonefile import records
from kdns.state.model import EndpointSet, KubeObject, Namespace
from kdns.state.store import Store
from tests.builders import (
    LAYER,
    ask,
    clusterip,
    endpoint_slice,
    endpoints,
    ep,
    eport,
    external,
    headless,
    make_engine,
    make_store,
    namespaces,
    port,
    rcode,
    soa_text,
    subset,
    texts,
)

ZONE = "cluster.local"
NS_ADDRESSES = ("10.96.0.10", "fd00::10")
ETCD_IPS = ("178.104.163.38", "178.104.163.187", "178.104.163.243")
HL_PORTS = [eport("http", 8080), eport("metrics", 9100)]


def x(text: str) -> str:
    """Expand the table shorthand."""
    return text.replace("~", ".default.svc.cluster.local.").replace(
        "^", ".kube-system.svc.cluster.local."
    )


def rev(address: str) -> str:
    return ipaddress.ip_address(address).reverse_pointer


def above(address: str, n: int) -> str:
    """The reverse name of `address` without its first `n` labels."""
    return rev(address).split(".", n)[-1]


def etcd_endpoints(namespace: str, name: str) -> EndpointSet:
    """The seed's hand-written Endpoints of an external etcd cluster."""
    return endpoints(
        namespace,
        name,
        subset(
            [ep(ip, node_name=f"etc-master{i}") for i, ip in enumerate(ETCD_IPS, 1)],
            [eport("port", 2379)],
        ),
    )


WORLD: list[KubeObject] = [
    *namespaces("default", "kube-system", "quiet"),
    # ClusterIP services
    clusterip(
        "default",
        "web",
        "10.96.0.100",
        ports=[port("http", 80), port("https", 443), port("dns", 53, "UDP")],
    ),
    endpoint_slice(
        "default",
        "web-x1",
        "web",
        [ep("10.0.0.1"), ep("10.0.0.2", ready=False)],
        [eport("http", 8080), eport("https", 8443), eport("dns", 5353, "UDP")],
    ),
    clusterip("default", "single", "10.96.0.11", ports=[port("", 8080)]),
    clusterip("default", "dual", "10.96.0.12", "fd00::12", ports=[port("https", 443)]),
    clusterip("default", "v6only", "fd00::13", ports=[port("http", 80)]),
    clusterip("default", "np", "10.96.0.14", type="NodePort", ports=[port("http", 80)]),
    clusterip("default", "lb", "10.96.0.15", type="LoadBalancer", ports=[port("http", 80)]),
    clusterip("default", "idle", "10.96.0.16", ports=[port("http", 80)]),
    endpoint_slice("default", "idle-x1", "idle", [ep("10.0.1.1", ready=False)], HL_PORTS),
    # headless services
    headless("default", "hl", ports=[port("http", 80), port("metrics", 9100)]),
    endpoint_slice(
        "default",
        "hl-a",
        "hl",
        [ep("10.1.0.1", hostname="pod-a"), ep("10.1.0.2"), ep("10.1.0.3", ready=False)],
        HL_PORTS,
    ),
    # a rollout: 10.1.0.2 is in two slices at once
    endpoint_slice("default", "hl-b", "hl", [ep("10.1.0.2"), ep("10.1.0.5")], HL_PORTS),
    endpoint_slice(
        "default",
        "hl-v6",
        "hl",
        [ep("fd00::a1", hostname="pod-a"), ep("2001:db8::1"), ep("2001:db8::")],
        HL_PORTS,
    ),
    # a second service selecting pod-a (no hostname: its subdomain is not this service)
    headless("default", "hl2"),
    endpoint_slice("default", "hl2-a", "hl2", [ep("10.1.0.1")], [eport("http", 8080)]),
    headless("default", "hl-unnamed"),
    endpoint_slice("default", "hl-unnamed-a", "hl-unnamed", [ep("10.3.0.1")], [eport("", 5000)]),
    headless("default", "hl-down"),
    endpoint_slice(
        "default", "hl-down-a", "hl-down", [ep("10.4.0.1", ready=False)], [eport("http", 80)]
    ),
    headless("default", "hl-none", ports=[port("http", 80)]),
    headless("default", "hl-noport"),
    endpoint_slice("default", "hl-noport-a", "hl-noport", [ep("10.6.0.1")]),
    clusterip("default", "noport", "10.96.0.17"),
    headless("default", "hl-pub", publish_not_ready=True),
    endpoint_slice(
        "default",
        "hl-pub-a",
        "hl-pub",
        [ep("10.5.0.1", hostname="boot", ready=False)],
        [eport("peer", 2380)],
    ),
    headless("default", "shared"),
    endpoint_slice(
        "default",
        "shared-a",
        "shared",
        [
            ep("10.2.0.1", hostname="db"),
            ep("10.2.0.2", hostname="db"),
            ep("10.2.0.3", hostname="other"),
        ],
        [eport("pg", 5432)],
    ),
    # service ports unlike the endpoints' (targetPort): headless SRV gives the endpoint's port,
    # ClusterIP SRV the service's; named and unnamed, from slices and from manual Endpoints
    headless("default", "hl-map", ports=[port("http", 80), port("", 81)]),
    endpoint_slice(
        "default", "hl-map-a", "hl-map", [ep("10.7.0.1")], [eport("http", 8080), eport("", 8081)]
    ),
    headless("default", "hl-manual", ports=[port("http", 80), port("", 81)]),
    endpoints(
        "default",
        "hl-manual",
        subset([ep("10.7.1.1", hostname="m0")], [eport("http", 8080), eport("", 8081)]),
    ),
    clusterip("default", "cip-map", "10.96.0.30", ports=[port("http", 80), port("", 81)]),
    endpoint_slice(
        "default", "cip-map-a", "cip-map", [ep("10.7.2.1")], [eport("http", 8080), eport("", 8081)]
    ),
    clusterip("default", "cip-manual", "10.96.0.31", ports=[port("http", 80), port("", 81)]),
    endpoints(
        "default",
        "cip-manual",
        subset([ep("10.7.3.1")], [eport("http", 8080), eport("", 8081)]),
    ),
    # ExternalName services
    external("default", "ext", "example.com"),
    external("default", "ext-in", "web.default.svc.cluster.local"),
    external("default", "ext-hl", "hl.default.svc.cluster.local"),
    external("default", "ext-gone", "gone.default.svc.cluster.local"),
    external("default", "ext-ip", "1.2.3.4"),
    # kube-dns: two ports share a number, one per protocol
    clusterip(
        "kube-system",
        "kube-dns",
        "10.96.0.10",
        ports=[port("dns", 53, "UDP"), port("dns-tcp", 53, "TCP"), port("metrics", 9153)],
    ),
    # the seed: an external etcd behind a selector-less Service and hand-written Endpoints
    clusterip("kube-system", "etcd-k8s", "10.96.0.20", ports=[port("port", 2379)]),
    etcd_endpoints("kube-system", "etcd-k8s"),
    # the same, headless, on a control plane whose mirroring controller copied it to a slice
    headless("kube-system", "etcd-mirrored", ports=[port("port", 2379)]),
    etcd_endpoints("kube-system", "etcd-mirrored"),
    endpoint_slice(
        "kube-system",
        "etcd-mirrored-abcde",
        "etcd-mirrored",
        [ep(ip) for ip in ETCD_IPS],
        [eport("port", 2379)],
    ),
]


#: The SOA serial of the world's store: one change for the objects, one for the sync.
SERIAL = 2


@pytest.fixture(scope="module")
def engine() -> Engine:
    engine = make_engine(WORLD, ns_addresses=NS_ADDRESSES)
    assert engine.clusters[0].store.serial == SERIAL
    return engine


def row(
    name: str,
    qtype: str,
    rcode: str,
    answer: list[str] | tuple[str, ...] = (),
    additional: list[str] | tuple[str, ...] = (),
    *,
    soa: bool | None = None,
    xfail: str = "",
) -> Any:
    """One table row; `soa` defaults to "the answer is negative"."""
    if soa is None:
        soa = rcode == "NXDOMAIN" or (rcode == "NOERROR" and not answer)
    marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
    return pytest.param(
        x(name),
        qtype,
        rcode,
        sorted(x(r) for r in answer),
        sorted(x(r) for r in additional),
        soa,
        marks=marks,
        id=f"{x(name)} {qtype}",
    )


def check(
    engine: Engine,
    name: str,
    qtype: str,
    want_rcode: str,
    want_answer: list[str],
    want_additional: list[str],
    want_soa: bool,
) -> Answer:
    ans = ask(engine, name, qtype)
    assert rcode(ans) == want_rcode
    assert ans.authoritative is True
    assert texts(ans.answer) == want_answer
    assert texts(ans.additional) == want_additional
    if want_soa:
        assert [QTYPE[rr.rtype] for rr in ans.authority] == ["SOA"]
    else:
        assert ans.authority == []
    return ans


def check_forward(engine: Engine, *args: Any) -> None:
    ans = check(engine, *args)
    if args[-1]:
        serial = engine.clusters[0].store.serial
        assert texts(ans.authority) == [soa_text(ZONE, serial, engine.ttl)]


def check_reverse_soa(ans: Answer, zone: str, ttl: int = 5) -> None:
    """The reverse zone's SOA: its owner and timers (the server names are not pinned down)."""
    assert len(ans.authority) == 1
    soa = ans.authority[0]
    assert (str(soa.rname), QTYPE[soa.rtype], soa.ttl) == (f"{zone}.", "SOA", ttl)
    assert soa.rdata.times[1:] == (7200, 1800, 86400, ttl)


# -- services -----------------------------------------------------------------------------------

CLUSTERIP_ROWS = [
    row("web~", "A", "NOERROR", ["web~ 5 A 10.96.0.100"]),
    row("web~", "AAAA", "NOERROR"),  # no address of that family: NODATA
    row("dual~", "A", "NOERROR", ["dual~ 5 A 10.96.0.12"]),
    row("dual~", "AAAA", "NOERROR", ["dual~ 5 AAAA fd00::12"]),
    row("v6only~", "A", "NOERROR"),
    row("v6only~", "AAAA", "NOERROR", ["v6only~ 5 AAAA fd00::13"]),
    row("np~", "A", "NOERROR", ["np~ 5 A 10.96.0.14"]),
    row("lb~", "A", "NOERROR", ["lb~ 5 A 10.96.0.15"]),
    # readiness of endpoints does not matter for a ClusterIP
    row("idle~", "A", "NOERROR", ["idle~ 5 A 10.96.0.16"]),
    row("single~", "A", "NOERROR", ["single~ 5 A 10.96.0.11"]),
    # any other type at an existing name: NODATA
    row("web~", "TXT", "NOERROR"),
    row("web~", "MX", "NOERROR"),
    row("web~", "CNAME", "NOERROR"),
    row("web~", "PTR", "NOERROR"),
]

HEADLESS_ROWS = [
    # ready endpoints only, deduplicated by IP across slices, IPv4 and IPv6 slices alike
    row(
        "hl~",
        "A",
        "NOERROR",
        ["hl~ 5 A 10.1.0.1", "hl~ 5 A 10.1.0.2", "hl~ 5 A 10.1.0.5"],
    ),
    row(
        "hl~",
        "AAAA",
        "NOERROR",
        ["hl~ 5 AAAA fd00::a1", "hl~ 5 AAAA 2001:db8::1", "hl~ 5 AAAA 2001:db8::"],
    ),
    row("hl~", "TXT", "NOERROR"),
    row("hl-unnamed~", "AAAA", "NOERROR"),  # ready endpoints, none IPv6: NODATA
    # no ready endpoint: NXDOMAIN, whatever the type
    row("hl-down~", "A", "NXDOMAIN"),
    row("hl-down~", "AAAA", "NXDOMAIN"),
    row("hl-none~", "A", "NXDOMAIN"),
    row("hl-none~", "SRV", "NXDOMAIN"),
    row("_http._tcp.hl-none~", "SRV", "NXDOMAIN"),
    # publishNotReadyAddresses: not-ready endpoints count
    row("hl-pub~", "A", "NOERROR", ["hl-pub~ 5 A 10.5.0.1"]),
    # manual Endpoints mirrored into a slice: every address once
    row(
        "etcd-mirrored.kube-system.svc.cluster.local",
        "A",
        "NOERROR",
        [f"etcd-mirrored.kube-system.svc.cluster.local. 5 A {ip}" for ip in ETCD_IPS],
    ),
]

SRV_CLUSTERIP_ROWS = [
    row(
        "_http._tcp.web~",
        "SRV",
        "NOERROR",
        ["_http._tcp.web~ 5 SRV 0 100 80 web~"],
        ["web~ 5 A 10.96.0.100"],
    ),
    row(
        "_dns._udp.web~",
        "SRV",
        "NOERROR",
        ["_dns._udp.web~ 5 SRV 0 100 53 web~"],
        ["web~ 5 A 10.96.0.100"],
    ),
    row(
        "_https._tcp.dual~",
        "SRV",
        "NOERROR",
        ["_https._tcp.dual~ 5 SRV 0 100 443 dual~"],
        ["dual~ 5 A 10.96.0.12", "dual~ 5 AAAA fd00::12"],
    ),
    # unknown port or protocol: NXDOMAIN
    row("_dns._tcp.web~", "SRV", "NXDOMAIN"),
    row("_http._udp.web~", "SRV", "NXDOMAIN"),
    row("_http._sctp.web~", "SRV", "NXDOMAIN"),
    row("_nope._tcp.web~", "SRV", "NXDOMAIN"),
    row("_80._tcp.web~", "SRV", "NXDOMAIN"),
    # unnamed ports have no _name form
    row("_._tcp.single~", "SRV", "NXDOMAIN"),
    row("_8080._tcp.single~", "SRV", "NXDOMAIN"),
    # A/AAAA at an SRV name: the addresses the SRV records lead to (CoreDNS; the spec is silent)
    row("_http._tcp.web~", "A", "NOERROR", ["_http._tcp.web~ 5 A 10.96.0.100"]),
    row("_http._tcp.web~", "AAAA", "NOERROR"),  # none of that family: NODATA
    row("_https._tcp.dual~", "AAAA", "NOERROR", ["_https._tcp.dual~ 5 AAAA fd00::12"]),
    row("_nope._tcp.web~", "A", "NXDOMAIN"),
    # other types at an SRV name: NODATA
    row("_http._tcp.web~", "TXT", "NOERROR"),
    # the protocol label above an SRV name is an empty non-terminal (RFC 8020): NODATA
    row("_tcp.web~", "SRV", "NOERROR"),
    row("_sctp.web~", "SRV", "NXDOMAIN"),
    # compatibility form: every port, named or not; weight floor(100/N)
    row(
        "web~",
        "SRV",
        "NOERROR",
        [
            "web~ 5 SRV 0 33 80 web~",
            "web~ 5 SRV 0 33 443 web~",
            "web~ 5 SRV 0 33 53 web~",
        ],
        ["web~ 5 A 10.96.0.100"],
    ),
    row(
        "single~",
        "SRV",
        "NOERROR",
        ["single~ 5 SRV 0 100 8080 single~"],
        ["single~ 5 A 10.96.0.11"],
    ),
    # deduplicated by (target, port): kube-dns's 53/UDP and 53/TCP make one record
    row(
        "kube-dns^",
        "SRV",
        "NOERROR",
        ["kube-dns^ 5 SRV 0 50 53 kube-dns^", "kube-dns^ 5 SRV 0 50 9153 kube-dns^"],
        ["kube-dns^ 5 A 10.96.0.10"],
    ),
    row(
        "_dns-tcp._tcp.kube-dns^",
        "SRV",
        "NOERROR",
        ["_dns-tcp._tcp.kube-dns^ 5 SRV 0 100 53 kube-dns^"],
        ["kube-dns^ 5 A 10.96.0.10"],
    ),
    row("noport~", "SRV", "NOERROR"),  # a service without ports: NODATA
    # endpoints on 8080/8081 behind service ports 80/81: ClusterIP SRV gives the service port,
    # whether the endpoints come from a slice or from manual Endpoints
    row(
        "_http._tcp.cip-map~",
        "SRV",
        "NOERROR",
        ["_http._tcp.cip-map~ 5 SRV 0 100 80 cip-map~"],
        ["cip-map~ 5 A 10.96.0.30"],
    ),
    row(
        "cip-map~",
        "SRV",
        "NOERROR",
        ["cip-map~ 5 SRV 0 50 80 cip-map~", "cip-map~ 5 SRV 0 50 81 cip-map~"],
        ["cip-map~ 5 A 10.96.0.30"],
    ),
    row(
        "_http._tcp.cip-manual~",
        "SRV",
        "NOERROR",
        ["_http._tcp.cip-manual~ 5 SRV 0 100 80 cip-manual~"],
        ["cip-manual~ 5 A 10.96.0.31"],
    ),
    row(
        "cip-manual~",
        "SRV",
        "NOERROR",
        ["cip-manual~ 5 SRV 0 50 80 cip-manual~", "cip-manual~ 5 SRV 0 50 81 cip-manual~"],
        ["cip-manual~ 5 A 10.96.0.31"],
    ),
    row("noport~", "A", "NOERROR", ["noport~ 5 A 10.96.0.17"]),
]

HL_TARGETS = ["pod-a", "10-1-0-2", "10-1-0-5", "2001-db8--1", "2001-db8--0"]
HL_GLUE = [
    "pod-a.hl~ 5 A 10.1.0.1",
    "pod-a.hl~ 5 AAAA fd00::a1",
    "10-1-0-2.hl~ 5 A 10.1.0.2",
    "10-1-0-5.hl~ 5 A 10.1.0.5",
    "2001-db8--1.hl~ 5 AAAA 2001:db8::1",
    "2001-db8--0.hl~ 5 AAAA 2001:db8::",
]

SRV_HEADLESS_ROWS = [
    # one per (ready endpoint, matching port), target the endpoint, port the endpoint's;
    # pod-a has an IPv4 and an IPv6 address: one SRV, both addresses in additional
    row(
        "_http._tcp.hl~",
        "SRV",
        "NOERROR",
        [f"_http._tcp.hl~ 5 SRV 0 20 8080 {t}.hl~" for t in HL_TARGETS],
        HL_GLUE,
    ),
    row(
        "_metrics._tcp.hl~",
        "SRV",
        "NOERROR",
        [f"_metrics._tcp.hl~ 5 SRV 0 20 9100 {t}.hl~" for t in HL_TARGETS],
        HL_GLUE,
    ),
    row(
        "hl~",
        "SRV",
        "NOERROR",
        [f"hl~ 5 SRV 0 10 {p} {t}.hl~" for t in HL_TARGETS for p in (8080, 9100)],
        HL_GLUE,
    ),
    row("_http._udp.hl~", "SRV", "NXDOMAIN"),
    row("_nope._tcp.hl~", "SRV", "NXDOMAIN"),
    # two endpoints named db: one SRV per (target, port), both addresses in additional
    row(
        "_pg._tcp.shared~",
        "SRV",
        "NOERROR",
        [
            "_pg._tcp.shared~ 5 SRV 0 50 5432 db.shared~",
            "_pg._tcp.shared~ 5 SRV 0 50 5432 other.shared~",
        ],
        ["db.shared~ 5 A 10.2.0.1", "db.shared~ 5 A 10.2.0.2", "other.shared~ 5 A 10.2.0.3"],
    ),
    row(
        "_peer._tcp.hl-pub~",
        "SRV",
        "NOERROR",
        ["_peer._tcp.hl-pub~ 5 SRV 0 100 2380 boot.hl-pub~"],
        ["boot.hl-pub~ 5 A 10.5.0.1"],
    ),
    # an unnamed endpoint port: only in the compatibility form
    row(
        "hl-unnamed~",
        "SRV",
        "NOERROR",
        ["hl-unnamed~ 5 SRV 0 100 5000 10-3-0-1.hl-unnamed~"],
        ["10-3-0-1.hl-unnamed~ 5 A 10.3.0.1"],
    ),
    row("_http._tcp.hl-unnamed~", "SRV", "NXDOMAIN"),
    row("_._tcp.hl-unnamed~", "SRV", "NXDOMAIN"),  # not even as an empty `_` label
    # service port 80/81, endpoint (target) port 8080/8081: the endpoint's port, from a slice
    row(
        "_http._tcp.hl-map~",
        "SRV",
        "NOERROR",
        ["_http._tcp.hl-map~ 5 SRV 0 100 8080 10-7-0-1.hl-map~"],
        ["10-7-0-1.hl-map~ 5 A 10.7.0.1"],
    ),
    row(
        "hl-map~",
        "SRV",
        "NOERROR",
        ["hl-map~ 5 SRV 0 50 8080 10-7-0-1.hl-map~", "hl-map~ 5 SRV 0 50 8081 10-7-0-1.hl-map~"],
        ["10-7-0-1.hl-map~ 5 A 10.7.0.1"],
    ),
    row(
        "10-7-0-1.hl-map~",
        "SRV",
        "NOERROR",
        [
            "10-7-0-1.hl-map~ 5 SRV 0 50 8080 10-7-0-1.hl-map~",
            "10-7-0-1.hl-map~ 5 SRV 0 50 8081 10-7-0-1.hl-map~",
        ],
        ["10-7-0-1.hl-map~ 5 A 10.7.0.1"],
    ),
    row("_81._tcp.hl-map~", "SRV", "NXDOMAIN"),
    # ... and from manual Endpoints
    row(
        "_http._tcp.hl-manual~",
        "SRV",
        "NOERROR",
        ["_http._tcp.hl-manual~ 5 SRV 0 100 8080 m0.hl-manual~"],
        ["m0.hl-manual~ 5 A 10.7.1.1"],
    ),
    row(
        "hl-manual~",
        "SRV",
        "NOERROR",
        ["hl-manual~ 5 SRV 0 50 8080 m0.hl-manual~", "hl-manual~ 5 SRV 0 50 8081 m0.hl-manual~"],
        ["m0.hl-manual~ 5 A 10.7.1.1"],
    ),
    # endpoints without ports: addresses, but no SRV
    row("hl-noport~", "A", "NOERROR", ["hl-noport~ 5 A 10.6.0.1"]),
    row("hl-noport~", "SRV", "NOERROR"),
    row("_http._tcp.hl-noport~", "SRV", "NXDOMAIN"),
]

ENDPOINT_ROWS = [
    row("pod-a.hl~", "A", "NOERROR", ["pod-a.hl~ 5 A 10.1.0.1"]),
    row("pod-a.hl~", "AAAA", "NOERROR", ["pod-a.hl~ 5 AAAA fd00::a1"]),
    row("pod-a.hl~", "TXT", "NOERROR"),
    row("10-1-0-2.hl~", "A", "NOERROR", ["10-1-0-2.hl~ 5 A 10.1.0.2"]),
    row("10-1-0-3.hl~", "A", "NXDOMAIN"),  # not ready
    row("2001-db8--1.hl~", "AAAA", "NOERROR", ["2001-db8--1.hl~ 5 AAAA 2001:db8::1"]),
    row("2001-db8--1.hl~", "A", "NOERROR"),
    row("2001-db8--0.hl~", "AAAA", "NOERROR", ["2001-db8--0.hl~ 5 AAAA 2001:db8::"]),
    row("2001-db8--.hl~", "AAAA", "NXDOMAIN"),
    row("db.shared~", "A", "NOERROR", ["db.shared~ 5 A 10.2.0.1", "db.shared~ 5 A 10.2.0.2"]),
    row("boot.hl-pub~", "A", "NOERROR", ["boot.hl-pub~ 5 A 10.5.0.1"]),
    row("nope.hl~", "A", "NXDOMAIN"),
    # endpoint names of a ClusterIP service (compatibility)
    row("10-0-0-1.web~", "A", "NOERROR", ["10-0-0-1.web~ 5 A 10.0.0.1"]),
    row("10-0-0-2.web~", "A", "NXDOMAIN"),  # not ready
    row(
        "178-104-163-38.etcd-k8s.kube-system.svc.cluster.local",
        "A",
        "NOERROR",
        ["178-104-163-38.etcd-k8s.kube-system.svc.cluster.local. 5 A 178.104.163.38"],
    ),
]

EXTERNAL_ROWS = [
    row("ext~", "A", "NOERROR", ["ext~ 5 CNAME example.com."]),
    row("ext~", "AAAA", "NOERROR", ["ext~ 5 CNAME example.com."]),
    row("ext~", "CNAME", "NOERROR", ["ext~ 5 CNAME example.com."]),
    row("ext~", "SRV", "NOERROR"),
    # a CNAME owns its name for every other type too (RFC 1034 3.6.2), as with CoreDNS
    row("ext~", "TXT", "NOERROR", ["ext~ 5 CNAME example.com."]),
    row("ext~", "MX", "NOERROR", ["ext~ 5 CNAME example.com."]),
    row("_http._tcp.ext~", "SRV", "NXDOMAIN"),
    row("deeper.ext~", "A", "NXDOMAIN"),
    row("ext-ip~", "A", "NXDOMAIN"),
    row("ext-ip~", "CNAME", "NXDOMAIN"),
    # a target inside the zone is chased
    row(
        "ext-in~",
        "A",
        "NOERROR",
        ["ext-in~ 5 CNAME web.default.svc.cluster.local.", "web~ 5 A 10.96.0.100"],
    ),
    row("ext-in~", "CNAME", "NOERROR", ["ext-in~ 5 CNAME web.default.svc.cluster.local."]),
    # ... and the final name's negative answer carries the SOA, after the CNAME
    row(
        "ext-in~",
        "AAAA",
        "NOERROR",
        ["ext-in~ 5 CNAME web.default.svc.cluster.local."],
        soa=True,
    ),
    row(
        "ext-hl~",
        "A",
        "NOERROR",
        [
            "ext-hl~ 5 CNAME hl.default.svc.cluster.local.",
            "hl~ 5 A 10.1.0.1",
            "hl~ 5 A 10.1.0.2",
            "hl~ 5 A 10.1.0.5",
        ],
    ),
    row(
        "ext-gone~",
        "A",
        "NXDOMAIN",
        ["ext-gone~ 5 CNAME gone.default.svc.cluster.local."],
        soa=True,
    ),
]

APEX_ROWS = [
    row(
        "dns-version.cluster.local",
        "TXT",
        "NOERROR",
        ['dns-version.cluster.local. 28800 TXT "1.1.0"'],
    ),
    row("dns-version.cluster.local", "A", "NOERROR"),
    row(
        "cluster.local",
        "NS",
        "NOERROR",
        ["cluster.local. 5 NS ns.dns.cluster.local."],
        ["ns.dns.cluster.local. 5 A 10.96.0.10", "ns.dns.cluster.local. 5 AAAA fd00::10"],
    ),
    row("ns.dns.cluster.local", "A", "NOERROR", ["ns.dns.cluster.local. 5 A 10.96.0.10"]),
    row("ns.dns.cluster.local", "AAAA", "NOERROR", ["ns.dns.cluster.local. 5 AAAA fd00::10"]),
    row("dns.cluster.local", "A", "NOERROR"),
]

POD_ROWS = [
    row(
        "10-244-1-5.default.pod.cluster.local",
        "A",
        "NOERROR",
        ["10-244-1-5.default.pod.cluster.local. 5 A 10.244.1.5"],
    ),
    row("10-244-1-5.default.pod.cluster.local", "AAAA", "NOERROR"),
    row(
        "10-244-1-5.quiet.pod.cluster.local",
        "A",
        "NOERROR",
        ["10-244-1-5.quiet.pod.cluster.local. 5 A 10.244.1.5"],
    ),
    row(
        "fd00-10-244--5.default.pod.cluster.local",
        "AAAA",
        "NOERROR",
        ["fd00-10-244--5.default.pod.cluster.local. 5 AAAA fd00:10:244::5"],
    ),
    row(
        "2001-db8--1.default.pod.cluster.local",
        "AAAA",
        "NOERROR",
        ["2001-db8--1.default.pod.cluster.local. 5 AAAA 2001:db8::1"],
    ),
    row("10-244-1-5.nope.pod.cluster.local", "A", "NXDOMAIN"),  # namespace must exist
    row("not-an-ip.default.pod.cluster.local", "A", "NXDOMAIN"),
    row("10-244-1-256.default.pod.cluster.local", "A", "NXDOMAIN"),
    row("x.10-244-1-5.default.pod.cluster.local", "A", "NXDOMAIN"),
    row("default.pod.cluster.local", "A", "NOERROR"),
    row("nope.pod.cluster.local", "A", "NXDOMAIN"),
]

NODATA_ROWS = [
    row("cluster.local", "A", "NOERROR"),
    row("cluster.local", "TXT", "NOERROR"),
    row("svc.cluster.local", "A", "NOERROR"),
    row("svc.cluster.local", "SRV", "NOERROR"),
    row("pod.cluster.local", "A", "NOERROR"),
    row("default.svc.cluster.local", "A", "NOERROR"),
    row("default.svc.cluster.local", "SRV", "NOERROR"),
    row("quiet.svc.cluster.local", "A", "NOERROR"),  # a namespace without services
    row("kube-system.svc.cluster.local", "AAAA", "NOERROR"),
]

NXDOMAIN_ROWS = [
    row("missing~", "A", "NXDOMAIN"),
    row("missing~", "SRV", "NXDOMAIN"),
    row("web.nope.svc.cluster.local", "A", "NXDOMAIN"),
    row("nope.svc.cluster.local", "A", "NXDOMAIN"),
    row("x.web~", "A", "NXDOMAIN"),
    row("web.default.cluster.local", "A", "NXDOMAIN"),
    row("web.default.foo.cluster.local", "A", "NXDOMAIN"),
    row("foo.cluster.local", "A", "NXDOMAIN"),
    row("x._http._tcp.web~", "SRV", "NXDOMAIN"),
    row("a.b._http._tcp.web~", "SRV", "NXDOMAIN"),
    row("a.b.c.d.e.f.web~", "A", "NXDOMAIN"),
    # The "_" of the port and protocol labels is optional, as in CoreDNS's parse.go.
    row(
        "_http.tcp.web~",
        "SRV",
        "NOERROR",
        ["_http.tcp.web~ 5 SRV 0 100 80 web~"],
        ["web~ 5 A 10.96.0.100"],
    ),
    row("http.tcp.web~", "A", "NOERROR", ["http.tcp.web~ 5 A 10.96.0.100"]),
    row("http.udp.web~", "SRV", "NXDOMAIN"),
    row("a.b.default.pod.cluster.local", "A", "NXDOMAIN"),
    # wildcards are nothing special
    row("*~", "A", "NXDOMAIN"),
    row("any~", "A", "NXDOMAIN"),
    row("web.*.svc.cluster.local", "A", "NXDOMAIN"),
    row("web.any.svc.cluster.local", "A", "NXDOMAIN"),
    row("*.*.svc.cluster.local", "A", "NXDOMAIN"),
    row("*.svc.cluster.local", "A", "NXDOMAIN"),
    row("*.hl~", "A", "NXDOMAIN"),
    row("any.hl~", "A", "NXDOMAIN"),
    row("_*._tcp.web~", "SRV", "NXDOMAIN"),
    row("_http._*.web~", "SRV", "NXDOMAIN"),
    row("_any._any.web~", "SRV", "NXDOMAIN"),
    row("*.default.pod.cluster.local", "A", "NXDOMAIN"),
]

CASE_ROWS = [
    row(
        "WEB.Default.SVC.Cluster.LOCAL",
        "A",
        "NOERROR",
        ["WEB.Default.SVC.Cluster.LOCAL. 5 A 10.96.0.100"],
    ),
    row(
        "_HTTP._Tcp.Web.default.svc.cluster.local",
        "SRV",
        "NOERROR",
        ["_HTTP._Tcp.Web.default.svc.cluster.local. 5 SRV 0 100 80 web~"],
        ["web~ 5 A 10.96.0.100"],
    ),
    row(
        "POD-A.Hl.default.svc.cluster.local",
        "A",
        "NOERROR",
        ["POD-A.Hl.default.svc.cluster.local. 5 A 10.1.0.1"],
    ),
    row(
        "DNS-Version.Cluster.Local",
        "TXT",
        "NOERROR",
        ['DNS-Version.Cluster.Local. 28800 TXT "1.1.0"'],
    ),
    row("Ext~", "A", "NOERROR", ["Ext.default.svc.cluster.local. 5 CNAME example.com."]),
    row(
        "10-244-1-5.DEFAULT.Pod.cluster.local",
        "A",
        "NOERROR",
        ["10-244-1-5.DEFAULT.Pod.cluster.local. 5 A 10.244.1.5"],
    ),
    row("Missing.Default.SVC.cluster.local", "A", "NXDOMAIN"),
    row(
        "Cluster.Local",
        "SOA",
        "NOERROR",
        [soa_text("Cluster.Local", SERIAL, server_zone=ZONE)],
    ),
    row(
        "Cluster.Local",
        "NS",
        "NOERROR",
        ["Cluster.Local. 5 NS ns.dns.cluster.local."],
        ["ns.dns.cluster.local. 5 A 10.96.0.10", "ns.dns.cluster.local. 5 AAAA fd00::10"],
    ),
]

FORWARD_ROWS = (
    CLUSTERIP_ROWS
    + HEADLESS_ROWS
    + SRV_CLUSTERIP_ROWS
    + SRV_HEADLESS_ROWS
    + ENDPOINT_ROWS
    + EXTERNAL_ROWS
    + APEX_ROWS
    + POD_ROWS
    + NODATA_ROWS
    + NXDOMAIN_ROWS
)


@pytest.mark.parametrize(
    ("name", "qtype", "want_rcode", "want_answer", "want_additional", "want_soa"), FORWARD_ROWS
)
def test_forward(
    engine: Engine,
    name: str,
    qtype: str,
    want_rcode: str,
    want_answer: list[str],
    want_additional: list[str],
    want_soa: bool,
) -> None:
    check_forward(engine, name, qtype, want_rcode, want_answer, want_additional, want_soa)


@pytest.mark.parametrize(
    ("name", "qtype", "want_rcode", "want_answer", "want_additional", "want_soa"), CASE_ROWS
)
def test_case_insensitive_and_case_preserving(
    engine: Engine,
    name: str,
    qtype: str,
    want_rcode: str,
    want_answer: list[str],
    want_additional: list[str],
    want_soa: bool,
) -> None:
    check_forward(engine, name, qtype, want_rcode, want_answer, want_additional, want_soa)


def test_apex_soa(engine: Engine) -> None:
    want = (
        "cluster.local. 5 SOA ns.dns.cluster.local. hostmaster.cluster.local. 2 7200 1800 86400 5"
    )
    ans = check(engine, "cluster.local", "SOA", "NOERROR", [want], [], False)
    soa = ans.answer[0].rdata
    assert str(soa.mname) == "ns.dns.cluster.local."
    assert str(soa.rname) == "hostmaster.cluster.local."
    assert soa.times == (SERIAL, 7200, 1800, 86400, 5)


def test_apex_ns_without_known_address_has_no_glue() -> None:
    engine = make_engine(WORLD)
    check(
        engine,
        "cluster.local",
        "NS",
        "NOERROR",
        ["cluster.local. 5 NS ns.dns.cluster.local."],
        [],
        False,
    )
    check_forward(engine, "ns.dns.cluster.local", "A", "NOERROR", [], [], True)


# -- reverse ------------------------------------------------------------------------------------

PTR_ROWS = [
    ("100.0.96.10.in-addr.arpa", ["web~"]),
    ("20.0.96.10.in-addr.arpa", ["etcd-k8s^"]),
    ("10.0.96.10.in-addr.arpa", ["kube-dns^"]),
    (rev("10.96.0.12"), ["dual~"]),
    (rev("fd00::12"), ["dual~"]),
    (rev("fd00::13"), ["v6only~"]),
    # a ready endpoint: one name per service that selects it
    ("1.0.1.10.in-addr.arpa", ["pod-a.hl~", "10-1-0-1.hl2~"]),
    ("2.0.1.10.in-addr.arpa", ["10-1-0-2.hl~"]),
    ("5.0.1.10.in-addr.arpa", ["10-1-0-5.hl~"]),
    ("1.0.5.10.in-addr.arpa", ["boot.hl-pub~"]),
    ("1.0.0.10.in-addr.arpa", ["10-0-0-1.web~"]),
    (rev("fd00::a1"), ["pod-a.hl~"]),
    (rev("2001:db8::1"), ["2001-db8--1.hl~"]),
    (rev("2001:db8::"), ["2001-db8--0.hl~"]),
    (
        rev("178.104.163.38"),
        [
            "178-104-163-38.etcd-k8s.kube-system.svc.cluster.local.",
            "178-104-163-38.etcd-mirrored.kube-system.svc.cluster.local.",
        ],
    ),
    ("100.0.96.10.IN-ADDR.Arpa", ["web~"]),
]


@pytest.mark.parametrize(("name", "targets"), PTR_ROWS, ids=[r[0] for r in PTR_ROWS])
def test_ptr(engine: Engine, name: str, targets: list[str]) -> None:
    want = sorted(f"{name}. 5 PTR {x(t)}" for t in targets)
    check(engine, name, "PTR", "NOERROR", want, [], False)


NEGATIVE_PTR_ROWS = [
    ("3.0.1.10.in-addr.arpa", "PTR", "NXDOMAIN", "in-addr.arpa"),  # not ready
    ("1.0.4.10.in-addr.arpa", "PTR", "NXDOMAIN", "in-addr.arpa"),  # not ready
    ("1.2.0.192.in-addr.arpa", "PTR", "NXDOMAIN", "in-addr.arpa"),
    ("1.2.0.300.in-addr.arpa", "PTR", "NXDOMAIN", "in-addr.arpa"),
    (rev("2001:db8::dead"), "PTR", "NXDOMAIN", "ip6.arpa"),
    ("100.0.96.10.in-addr.arpa", "A", "NOERROR", "in-addr.arpa"),
    (rev("fd00::12"), "TXT", "NOERROR", "ip6.arpa"),
    # part of a reverse name: NODATA when a PTR exists below (an empty non-terminal, RFC 4592),
    # NXDOMAIN only when nothing does (RFC 8020)
    ("0.96.10.in-addr.arpa", "PTR", "NOERROR", "in-addr.arpa"),
    ("96.10.in-addr.arpa", "PTR", "NOERROR", "in-addr.arpa"),
    ("10.in-addr.arpa", "PTR", "NOERROR", "in-addr.arpa"),
    ("163.104.178.in-addr.arpa", "ANY", "NOERROR", "in-addr.arpa"),
    ("0.1.10.IN-ADDR.ARPA", "A", "NOERROR", "in-addr.arpa"),
    (above("fd00::12", 1), "PTR", "NOERROR", "ip6.arpa"),
    (above("2001:db8::", 16), "PTR", "NOERROR", "ip6.arpa"),
    ("d.f.ip6.arpa", "PTR", "NOERROR", "ip6.arpa"),
    ("1.96.10.in-addr.arpa", "PTR", "NXDOMAIN", "in-addr.arpa"),
    ("11.in-addr.arpa", "PTR", "NXDOMAIN", "in-addr.arpa"),
    ("4.10.in-addr.arpa", "PTR", "NXDOMAIN", "in-addr.arpa"),  # only a not-ready endpoint
    ("1.0.10.in-addr.arpa", "PTR", "NXDOMAIN", "in-addr.arpa"),  # only a not-ready endpoint
    ("010.in-addr.arpa", "PTR", "NXDOMAIN", "in-addr.arpa"),  # not how an octet is spelled
    ("x.100.0.96.10.in-addr.arpa", "PTR", "NXDOMAIN", "in-addr.arpa"),  # below a PTR
    ("e.f.ip6.arpa", "PTR", "NXDOMAIN", "ip6.arpa"),
    ("d.ff.ip6.arpa", "PTR", "NXDOMAIN", "ip6.arpa"),  # not a nibble
]


@pytest.mark.parametrize(
    ("name", "qtype", "want_rcode", "zone"),
    NEGATIVE_PTR_ROWS,
    ids=[f"{r[0]} {r[1]}" for r in NEGATIVE_PTR_ROWS],
)
def test_ptr_negative(engine: Engine, name: str, qtype: str, want_rcode: str, zone: str) -> None:
    ans = check(engine, name, qtype, want_rcode, [], [], True)
    check_reverse_soa(ans, zone)


def test_reverse_apex_soa(engine: Engine) -> None:
    ans = ask(engine, "in-addr.arpa", "SOA")
    assert rcode(ans) == "NOERROR"
    assert [(str(r.rname), QTYPE[r.rtype]) for r in ans.answer] == [("in-addr.arpa.", "SOA")]


@pytest.mark.parametrize("zone", ["in-addr.arpa", "ip6.arpa"])
def test_reverse_apex_other_types_are_nodata_even_with_nothing_below(zone: str) -> None:
    for engine in (make_engine(WORLD), make_engine()):
        check(engine, zone, "PTR", "NOERROR", [], [], True)
        assert rcode(ask(engine, zone, "SOA")) == "NOERROR"


# -- refused ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "qtype"),
    [
        ("example.com", "A"),
        (".", "NS"),
        ("local", "SOA"),
        ("cluster.local.example.com", "A"),
        ("web.default.svc.cluster.local.example.com", "A"),
        ("xcluster.local", "A"),
        ("svc.local", "A"),
    ],
)
def test_outside_every_zone_is_refused(engine: Engine, name: str, qtype: str) -> None:
    ans = ask(engine, name, qtype)
    assert rcode(ans) == "REFUSED"
    assert ans.authoritative is False
    assert (ans.answer, ans.authority, ans.additional) == ([], [], [])
    assert engine.is_local(DNSLabel(name)) is False


def test_is_local() -> None:
    engine = make_engine()
    for name in ("cluster.local", "a.b.svc.cluster.local", "1.0.0.10.in-addr.arpa", rev("::1")):
        assert engine.is_local(DNSLabel(name)) is True


# -- whole-answer properties -------------------------------------------------------------------

ALL_QUESTIONS = [(p.values[0], p.values[1]) for p in FORWARD_ROWS + CASE_ROWS] + [
    (name, qtype) for name, qtype, _, _ in NEGATIVE_PTR_ROWS
]


def test_every_negative_answer_carries_the_soa_and_every_answer_is_authoritative(
    engine: Engine,
) -> None:
    for name, qtype in ALL_QUESTIONS:
        ans = ask(engine, name, qtype)
        assert ans.authoritative, name
        negative = ans.rcode == RCODE.NXDOMAIN or (ans.rcode == RCODE.NOERROR and not ans.answer)
        if negative:
            assert [QTYPE[rr.rtype] for rr in ans.authority] == ["SOA"], (name, qtype)


TTL_ROWS = [
    row("web~", "A", "NOERROR", ["web~ 30 A 10.96.0.100"]),
    row(
        "_http._tcp.web~",
        "SRV",
        "NOERROR",
        ["_http._tcp.web~ 30 SRV 0 100 80 web~"],
        ["web~ 30 A 10.96.0.100"],
    ),
    row("pod-a.hl~", "A", "NOERROR", ["pod-a.hl~ 30 A 10.1.0.1"]),
    row("ext~", "CNAME", "NOERROR", ["ext~ 30 CNAME example.com."]),
    row(
        "10-244-1-5.default.pod.cluster.local",
        "A",
        "NOERROR",
        ["10-244-1-5.default.pod.cluster.local. 30 A 10.244.1.5"],
    ),
    row("cluster.local", "SOA", "NOERROR", [soa_text(ZONE, SERIAL, ttl=30)]),
    row(
        "cluster.local",
        "NS",
        "NOERROR",
        ["cluster.local. 30 NS ns.dns.cluster.local."],
        ["ns.dns.cluster.local. 30 A 10.96.0.10", "ns.dns.cluster.local. 30 AAAA fd00::10"],
    ),
    row("missing~", "A", "NXDOMAIN"),  # SOA with TTL and minimum 30
    row("web~", "AAAA", "NOERROR"),
    # the schema version keeps its own TTL
    row(
        "dns-version.cluster.local",
        "TXT",
        "NOERROR",
        ['dns-version.cluster.local. 28800 TXT "1.1.0"'],
    ),
]


@pytest.mark.parametrize(
    ("name", "qtype", "want_rcode", "want_answer", "want_additional", "want_soa"), TTL_ROWS
)
def test_ttl_comes_from_the_engine(
    name: str,
    qtype: str,
    want_rcode: str,
    want_answer: list[str],
    want_additional: list[str],
    want_soa: bool,
) -> None:
    engine = make_engine(WORLD, ttl=30, ns_addresses=NS_ADDRESSES)
    check_forward(engine, name, qtype, want_rcode, want_answer, want_additional, want_soa)


def test_ttl_comes_from_the_engine_in_reverse_zones() -> None:
    engine = make_engine(WORLD, ttl=30)
    check(
        engine,
        "100.0.96.10.in-addr.arpa",
        "PTR",
        "NOERROR",
        [x("100.0.96.10.in-addr.arpa. 30 PTR web~")],
        [],
        False,
    )
    ans = check(engine, "1.2.0.192.in-addr.arpa", "PTR", "NXDOMAIN", [], [], True)
    check_reverse_soa(ans, "in-addr.arpa", ttl=30)


# -- SRV weights --------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "weight"), [(1, 100), (2, 50), (3, 33), (7, 14), (100, 1), (101, 1)])
def test_srv_weight_is_floor_100_over_n_and_at_least_1(n: int, weight: int) -> None:
    eps = [ep(f"10.9.{i // 256}.{i % 256}") for i in range(n)]
    engine = make_engine(
        [
            *namespaces("default"),
            headless("default", "big"),
            endpoint_slice("default", "big-a", "big", eps, [eport("http", 80)]),
        ]
    )
    ans = ask(engine, x("_http._tcp.big~"), "SRV")
    assert rcode(ans) == "NOERROR"
    assert len(ans.answer) == n
    assert {(rr.rdata.priority, rr.rdata.weight, rr.rdata.port) for rr in ans.answer} == {
        (0, weight, 80)
    }
    assert len({str(rr.rdata.target) for rr in ans.answer}) == n
    assert len(ans.additional) == n


# -- the SOA serial ------------------------------------------------------------------------------


def _serial(engine: Engine, zone: str) -> int:
    ans = ask(engine, zone, "SOA")
    assert QTYPE[ans.answer[0].rtype] == "SOA"
    serial: int = ans.answer[0].rdata.times[0]
    return serial


def test_soa_serial_changes_whenever_data_changes() -> None:
    engine = make_engine(WORLD)
    store = engine.clusters[0].store
    before, reverse_before = _serial(engine, ZONE), _serial(engine, "in-addr.arpa")

    # the same objects again: nothing DNS can see changed
    assert store.apply(LAYER, WORLD) is False
    assert _serial(engine, ZONE) == before
    assert _serial(engine, "in-addr.arpa") == reverse_before

    store.apply(LAYER, [clusterip("default", "web", "10.96.0.101", ports=[port("http", 80)])])
    after = _serial(engine, ZONE)
    assert after != before
    assert _serial(engine, "in-addr.arpa") != reverse_before
    assert texts(ask(engine, x("web~"), "A").answer) == [x("web~ 5 A 10.96.0.101")]
    # negative answers carry the new serial too
    assert texts(ask(engine, x("missing~"), "A").authority) == [soa_text(ZONE, after)]

    store.apply(LAYER, deletes=[("Service", "default", "web")])
    assert _serial(engine, ZONE) not in (before, after)
    assert rcode(ask(engine, x("web~"), "A")) == "NXDOMAIN"
    assert rcode(ask(engine, "101.0.96.10.in-addr.arpa", "PTR")) == "NXDOMAIN"

    # an endpoint becoming ready changes answers, and the serial
    serial = _serial(engine, ZONE)
    store.apply(LAYER, [endpoint_slice("default", "hl-down-a", "hl-down", [ep("10.4.0.1")])])
    assert _serial(engine, ZONE) != serial
    assert texts(ask(engine, x("hl-down~"), "A").answer) == [x("hl-down~ 5 A 10.4.0.1")]


# -- before the first sync ----------------------------------------------------------------------


def test_servfail_instead_of_nxdomain_before_the_store_is_synced() -> None:
    engine = make_engine(WORLD, synced=False)
    store = engine.clusters[0].store
    for name, qtype in [
        (x("missing~"), "A"),
        (x("hl-down~"), "A"),
        ("nope.svc.cluster.local", "A"),
        (x("_nope._tcp.web~"), "SRV"),
        ("1.2.0.192.in-addr.arpa", "PTR"),
    ]:
        ans = ask(engine, name, qtype)
        assert rcode(ans) == "SERVFAIL", name
        assert (ans.answer, ans.authority) == ([], []), name
    # what is known is answered
    check(engine, x("web~"), "A", "NOERROR", [x("web~ 5 A 10.96.0.100")], [], False)
    check(engine, x("web~"), "AAAA", "NOERROR", [], [], True)
    check(
        engine,
        "100.0.96.10.in-addr.arpa",
        "PTR",
        "NOERROR",
        [x("100.0.96.10.in-addr.arpa. 5 PTR web~")],
        [],
        False,
    )

    store.set_synced(LAYER)
    assert rcode(ask(engine, x("missing~"), "A")) == "NXDOMAIN"
    assert rcode(ask(engine, "1.2.0.192.in-addr.arpa", "PTR")) == "NXDOMAIN"

    # a layer that lost its data is not trusted for NXDOMAIN either
    store.set_synced(LAYER, False)
    assert rcode(ask(engine, x("missing~"), "A")) == "SERVFAIL"


def test_servfail_until_every_layer_is_synced() -> None:
    store = Store()
    store.add_layer("files", implicit_namespaces=True)
    store.add_layer(LAYER)
    store.apply("files", [clusterip("default", "web", "10.96.0.100")])
    store.set_synced("files")
    engine = Engine([Cluster(ZONE, store)])
    assert rcode(ask(engine, x("missing~"), "A")) == "SERVFAIL"
    assert rcode(ask(engine, x("web~"), "A")) == "NOERROR"
    store.set_synced(LAYER)
    assert rcode(ask(engine, x("missing~"), "A")) == "NXDOMAIN"


# -- manual Endpoints (the seed) -----------------------------------------------------------------

ETCD = ".kube-system.svc.cluster.local."


def test_seed_external_etcd_clusterip_with_manual_endpoints() -> None:
    engine = make_engine(
        [
            *namespaces("kube-system"),
            clusterip("kube-system", "etcd-k8s", "10.96.0.20", ports=[port("port", 2379)]),
            etcd_endpoints("kube-system", "etcd-k8s"),
        ]
    )
    name = f"etcd-k8s{ETCD}"
    check(engine, name, "A", "NOERROR", [f"{name} 5 A 10.96.0.20"], [], False)
    check(
        engine,
        f"_port._tcp.{name}",
        "SRV",
        "NOERROR",
        [f"_port._tcp.{name} 5 SRV 0 100 2379 {name}"],
        [f"{name} 5 A 10.96.0.20"],
        False,
    )
    for ip in ETCD_IPS:
        label = ip.replace(".", "-")
        check(engine, f"{label}.{name}", "A", "NOERROR", [f"{label}.{name} 5 A {ip}"], [], False)
        check(engine, rev(ip), "PTR", "NOERROR", [f"{rev(ip)}. 5 PTR {label}.{name}"], [], False)


def test_seed_external_etcd_headless_with_manual_endpoints() -> None:
    engine = make_engine(
        [
            *namespaces("kube-system"),
            headless("kube-system", "etcd", ports=[port("port", 2379)]),
            endpoints(
                "kube-system",
                "etcd",
                subset(
                    [ep(ETCD_IPS[0], hostname="etcd-0"), ep(ETCD_IPS[1])], [eport("port", 2379)]
                ),
                subset([ep(ETCD_IPS[2]), ep("178.104.163.99", ready=False)], [eport("port", 2379)]),
            ),
        ]
    )
    name = f"etcd{ETCD}"
    check(engine, name, "A", "NOERROR", [f"{name} 5 A {ip}" for ip in sorted(ETCD_IPS)], [], False)
    targets = [f"etcd-0.{name}", f"178-104-163-187.{name}", f"178-104-163-243.{name}"]
    check(
        engine,
        f"_port._tcp.{name}",
        "SRV",
        "NOERROR",
        sorted(f"_port._tcp.{name} 5 SRV 0 33 2379 {t}" for t in targets),
        sorted(f"{t} 5 A {ip}" for t, ip in zip(targets, ETCD_IPS, strict=True)),
        False,
    )
    check(engine, f"etcd-0.{name}", "A", "NOERROR", [f"etcd-0.{name} 5 A {ETCD_IPS[0]}"], [], False)
    check(engine, f"178-104-163-99.{name}", "A", "NXDOMAIN", [], [], True)  # notReadyAddresses


def test_publish_not_ready_addresses_counts_not_ready_endpoints_of_manual_endpoints() -> None:
    engine = make_engine(
        [
            *namespaces("default"),
            headless("default", "peers", publish_not_ready=True),
            endpoints("default", "peers", subset([ep("10.7.0.1"), ep("10.7.0.2", ready=False)])),
        ]
    )
    check(
        engine,
        x("peers~"),
        "A",
        "NOERROR",
        [x("peers~ 5 A 10.7.0.1"), x("peers~ 5 A 10.7.0.2")],
        [],
        False,
    )


def test_slices_win_over_endpoints_and_no_address_counts_twice() -> None:
    store = make_store(
        [
            *namespaces("default"),
            headless("default", "db", ports=[port("pg", 5432)]),
            endpoints(
                "default", "db", subset([ep("10.8.0.1"), ep("10.8.0.2")], [eport("pg", 5432)])
            ),
            endpoint_slice(
                "default", "db-m1", "db", [ep("10.8.0.1"), ep("10.8.0.2")], [eport("pg", 5432)]
            ),
        ]
    )
    engine = Engine([Cluster(ZONE, store)])
    check(
        engine, x("db~"), "A", "NOERROR", [x("db~ 5 A 10.8.0.1"), x("db~ 5 A 10.8.0.2")], [], False
    )
    ans = ask(engine, x("_pg._tcp.db~"), "SRV")
    assert texts(ans.answer) == [
        x("_pg._tcp.db~ 5 SRV 0 50 5432 10-8-0-1.db~"),
        x("_pg._tcp.db~ 5 SRV 0 50 5432 10-8-0-2.db~"),
    ]
    assert texts(ask(engine, "1.0.8.10.in-addr.arpa", "PTR").answer) == [
        x("1.0.8.10.in-addr.arpa. 5 PTR 10-8-0-1.db~")
    ]
    # when they differ, the slices say what is current
    store.apply(
        LAYER, [endpoint_slice("default", "db-m1", "db", [ep("10.8.0.3")], [eport("pg", 5432)])]
    )
    check(engine, x("db~"), "A", "NOERROR", [x("db~ 5 A 10.8.0.3")], [], False)
    # without slices the Endpoints answer again
    store.apply(LAYER, deletes=[("EndpointSlice", "default", "db-m1")])
    check(
        engine, x("db~"), "A", "NOERROR", [x("db~ 5 A 10.8.0.1"), x("db~ 5 A 10.8.0.2")], [], False
    )


# -- ExternalName loops --------------------------------------------------------------------------


def test_externalname_loop_terminates() -> None:
    engine = make_engine(
        [
            *namespaces("default"),
            external("default", "a", "b.default.svc.cluster.local"),
            external("default", "b", "a.default.svc.cluster.local"),
        ]
    )
    # The chain up to the CNAME that closes the loop, each record once (RFC 2181 5: no
    # duplicate records in a response).
    for qtype in ("A", "AAAA"):
        ans = ask(engine, x("a~"), qtype)
        assert ans.rcode == RCODE.NOERROR
        assert texts(ans.answer) == [
            x("a~ 5 CNAME b.default.svc.cluster.local."),
            x("b~ 5 CNAME a.default.svc.cluster.local."),
        ]


@pytest.mark.parametrize("length", [1, 2, 3, 8, 9])
def test_externalname_chains_give_each_cname_once(length: int) -> None:
    # s0 -> s1 -> ... -> s(length-1) -> s0: the loop closes after `length` CNAMEs, which are
    # all given when they fit in the chase (8); a longer chain stops there.
    engine = make_engine(
        [
            *namespaces("default"),
            *(
                external("default", f"s{i}", f"s{(i + 1) % length}.default.svc.cluster.local")
                for i in range(length)
            ),
        ]
    )
    ans = ask(engine, x("s0~"), "A")
    assert ans.rcode == RCODE.NOERROR
    owners = [str(rr.rname) for rr in ans.answer]
    assert len(owners) == len(set(owners)) == min(length, 8 + 1)
    assert all(rr.rtype == QTYPE.CNAME for rr in ans.answer)


# -- pods mode -----------------------------------------------------------------------------------


def test_pods_disabled() -> None:
    engine = make_engine(WORLD, pods="disabled")
    check_forward(engine, "10-244-1-5.default.pod.cluster.local", "A", "NXDOMAIN", [], [], True)
    check_forward(engine, x("web~"), "A", "NOERROR", [x("web~ 5 A 10.96.0.100")], [], False)


# -- another domain, several clusters -----------------------------------------------------------


def test_non_default_domain() -> None:
    engine = make_engine(
        [
            *namespaces("default"),
            clusterip("default", "web", "10.96.0.100", ports=[port("http", 80)]),
            headless("default", "hl"),
            endpoint_slice(
                "default", "hl-a", "hl", [ep("10.1.0.1", hostname="pod-a")], [eport("http", 8080)]
            ),
            external("default", "ext-in", "web.default.svc.example.internal"),
        ],
        domain="example.internal",
        ns_addresses=["10.96.0.10"],
    )
    d = ".default.svc.example.internal."
    serial = engine.clusters[0].store.serial
    soa = soa_text("example.internal", serial)
    assert soa.startswith(
        "example.internal. 5 SOA ns.dns.example.internal. hostmaster.example.internal."
    )
    check(engine, "example.internal", "SOA", "NOERROR", [soa], [], False)
    check(
        engine,
        "example.internal",
        "NS",
        "NOERROR",
        ["example.internal. 5 NS ns.dns.example.internal."],
        ["ns.dns.example.internal. 5 A 10.96.0.10"],
        False,
    )
    check(
        engine,
        "dns-version.example.internal",
        "TXT",
        "NOERROR",
        ['dns-version.example.internal. 28800 TXT "1.1.0"'],
        [],
        False,
    )
    check(engine, f"web{d}", "A", "NOERROR", [f"web{d} 5 A 10.96.0.100"], [], False)
    check(
        engine,
        f"_http._tcp.web{d}",
        "SRV",
        "NOERROR",
        [f"_http._tcp.web{d} 5 SRV 0 100 80 web{d}"],
        [f"web{d} 5 A 10.96.0.100"],
        False,
    )
    check(
        engine,
        f"hl{d}",
        "SRV",
        "NOERROR",
        [f"hl{d} 5 SRV 0 100 8080 pod-a.hl{d}"],
        [f"pod-a.hl{d} 5 A 10.1.0.1"],
        False,
    )
    check(
        engine,
        f"ext-in{d}",
        "A",
        "NOERROR",
        [f"ext-in{d} 5 CNAME web{d}", f"web{d} 5 A 10.96.0.100"],
        [],
        False,
    )
    check(
        engine,
        "100.0.96.10.in-addr.arpa",
        "PTR",
        "NOERROR",
        [f"100.0.96.10.in-addr.arpa. 5 PTR web{d}"],
        [],
        False,
    )
    check(
        engine,
        "1.0.1.10.in-addr.arpa",
        "PTR",
        "NOERROR",
        [f"1.0.1.10.in-addr.arpa. 5 PTR pod-a.hl{d}"],
        [],
        False,
    )
    ans = check(engine, f"missing{d}", "A", "NXDOMAIN", [], [], True)
    assert texts(ans.authority) == [soa]
    check(
        engine,
        "10-244-1-5.default.pod.example.internal",
        "A",
        "NOERROR",
        ["10-244-1-5.default.pod.example.internal. 5 A 10.244.1.5"],
        [],
        False,
    )
    assert rcode(ask(engine, x("web~"), "A")) == "REFUSED"
    assert rcode(ask(engine, "cluster.local", "SOA")) == "REFUSED"


def test_multiple_clusters() -> None:
    home = make_store(
        [
            *namespaces("default"),
            clusterip("default", "web", "10.96.0.100", ports=[port("http", 80)]),
        ]
    )
    east = make_store(
        [
            *namespaces("default", "east-only"),
            clusterip("default", "web", "10.128.0.100"),
            clusterip("default", "api", "10.128.0.7"),
            external("default", "bridge", "web.default.svc.cluster.local"),
            headless("default", "hl"),
            endpoint_slice("default", "hl-a", "hl", [ep("10.1.0.1")]),
        ]
    )
    east.apply(LAYER, [clusterip("default", "extra", "10.128.0.8")])  # another serial
    engine = Engine([Cluster(ZONE, home), Cluster("east.example", east)])
    e = ".default.svc.east.example."
    check(engine, x("web~"), "A", "NOERROR", [x("web~ 5 A 10.96.0.100")], [], False)
    check(engine, f"web{e}", "A", "NOERROR", [f"web{e} 5 A 10.128.0.100"], [], False)
    check(engine, f"api{e}", "A", "NOERROR", [f"api{e} 5 A 10.128.0.7"], [], False)
    ans = check(engine, x("api~"), "A", "NXDOMAIN", [], [], True)
    assert texts(ans.authority) == [soa_text(ZONE, home.serial)]
    ans = check(engine, f"missing{e}", "A", "NXDOMAIN", [], [], True)
    assert texts(ans.authority) == [soa_text("east.example", east.serial)]
    assert home.serial != east.serial
    check(engine, "east-only.svc.east.example", "A", "NOERROR", [], [], True)
    check(engine, "east-only.svc.cluster.local", "A", "NXDOMAIN", [], [], True)
    # an ExternalName into another served zone is chased there
    check(
        engine,
        f"bridge{e}",
        "A",
        "NOERROR",
        [f"bridge{e} 5 CNAME web.default.svc.cluster.local.", x("web~ 5 A 10.96.0.100")],
        [],
        False,
    )
    # PTR looks in every cluster
    check(
        engine,
        "7.0.128.10.in-addr.arpa",
        "PTR",
        "NOERROR",
        [f"7.0.128.10.in-addr.arpa. 5 PTR api{e}"],
        [],
        False,
    )
    check(
        engine,
        "100.0.96.10.in-addr.arpa",
        "PTR",
        "NOERROR",
        [x("100.0.96.10.in-addr.arpa. 5 PTR web~")],
        [],
        False,
    )
    check(
        engine,
        "1.0.1.10.in-addr.arpa",
        "PTR",
        "NOERROR",
        [f"1.0.1.10.in-addr.arpa. 5 PTR 10-1-0-1.hl{e}"],
        [],
        False,
    )

    # sync is per zone for forward names; the reverse zones need every cluster
    east.set_synced(LAYER, False)
    assert rcode(ask(engine, f"missing{e}", "A")) == "SERVFAIL"
    assert rcode(ask(engine, x("missing~"), "A")) == "NXDOMAIN"
    assert rcode(ask(engine, "1.2.0.192.in-addr.arpa", "PTR")) == "SERVFAIL"


def test_nested_zone_wins_its_names() -> None:
    outer = make_store([*namespaces("default"), clusterip("default", "web", "10.96.0.100")])
    inner = make_store([*namespaces("default"), clusterip("default", "web", "10.128.0.100")])
    engine = Engine([Cluster(ZONE, outer), Cluster("east.cluster.local", inner)])
    name = "web.default.svc.east.cluster.local"
    check(engine, name, "A", "NOERROR", [f"{name}. 5 A 10.128.0.100"], [], False)
    check(engine, x("web~"), "A", "NOERROR", [x("web~ 5 A 10.96.0.100")], [], False)
    ans = ask(engine, "east.cluster.local", "SOA")
    assert [str(rr.rname) for rr in ans.answer] == ["east.cluster.local."]


# -- from API JSON to answers --------------------------------------------------------------------


def test_ptr_finds_ipv6_addresses_written_in_any_form() -> None:
    from kdns.sources.trim import trim

    svc = trim(
        "Service",
        {
            "metadata": {"name": "v6", "namespace": "default"},
            "spec": {"clusterIPs": ["FD00:0:0::A"], "ports": [{"port": 80}]},
        },
    )
    assert svc is not None
    engine = make_engine([Namespace("default"), svc])
    check(engine, x("v6~"), "AAAA", "NOERROR", [x("v6~ 5 AAAA fd00::a")], [], False)
    name = rev("fd00::a")
    check(engine, name, "PTR", "NOERROR", [x(f"{name}. 5 PTR v6~")], [], False)


def test_ptr_of_a_cluster_ip_names_one_service() -> None:
    engine = make_engine(
        [
            *namespaces("default", "b"),
            clusterip("default", "web", "10.96.0.100"),
            clusterip("b", "also", "10.96.0.100"),
        ]
    )
    check(
        engine,
        "100.0.96.10.in-addr.arpa",
        "PTR",
        "NOERROR",
        ["100.0.96.10.in-addr.arpa. 5 PTR also.b.svc.cluster.local."],
        [],
        False,
    )


# -- names longer than DNS carries ----------------------------------------------------------------


@pytest.mark.parametrize("domain_length", [13, 57, 58, 92, 110])
def test_no_name_longer_than_255_octets_is_served(domain_length: int) -> None:
    # Valid objects (63-character names, the longest label) under a long --domain make endpoint
    # names longer than DNS carries. Such a name is left out (no SRV target, no PTR): the other
    # records still answer, and every answer can be encoded. (At 110 the SRV question itself
    # is as long as a name can be.)
    domain = ".".join(["d" * 40, "e" * 40, "f" * 40])[:domain_length].strip(".")
    ns, svc, host = "n" * 63, "s" * 63, "h" * 63
    engine = make_engine(
        [
            *namespaces(ns),
            headless(ns, svc, ports=[port("http", 80)]),
            endpoint_slice(
                ns,
                f"{svc}-1",
                svc,
                [ep("10.4.0.9", hostname=host), ep("10.4.0.8")],
                [eport("http", 80)],
            ),
        ],
        domain=domain,
    )
    fqdn = f"{svc}.{ns}.svc.{domain}."
    long_fits = len(f"{host}.{fqdn}") - 1 <= 253
    srv = ask(engine, f"_http._tcp.{fqdn}", "SRV")
    targets = sorted(str(rr.rdata.target) for rr in srv.answer)
    expected = [f"10-4-0-8.{fqdn}", *([f"{host}.{fqdn}"] if long_fits else [])]
    assert targets == sorted(expected)
    assert {rr.rdata.weight for rr in srv.answer} == {100 // len(expected)}
    assert len(srv.additional) == len(expected)
    assert texts(ask(engine, "8.0.4.10.in-addr.arpa", "PTR").answer) == [
        f"8.0.4.10.in-addr.arpa. 5 PTR 10-4-0-8.{fqdn}"
    ]
    ptr = ask(engine, "9.0.4.10.in-addr.arpa", "PTR")
    assert (ptr.rcode, len(ptr.answer)) == (
        (RCODE.NOERROR, 1) if long_fits else (RCODE.NXDOMAIN, 0)
    )
    assert {str(rr.rdata) for rr in ask(engine, fqdn, "A").answer} == {"10.4.0.8", "10.4.0.9"}
    asked = [(f"_http._tcp.{fqdn}", "SRV"), (fqdn, "SRV"), ("9.0.4.10.in-addr.arpa", "PTR")]
    for name, qtype in asked:
        message = DNSRecord.question(name, qtype).pack()
        assert encode(parse_query(message), engine.resolve(DNSLabel(name), getattr(QTYPE, qtype)))
    for rr in records(engine):
        assert len(str(rr.rname)) - 1 <= 253
        assert len(str(getattr(rr.rdata, "target", getattr(rr.rdata, "label", "")))) - 1 <= 253
