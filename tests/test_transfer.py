"""AXFR (kdns/ops/transfer.py) and `kdns records` (kdns/ops/zonefile.py) read the resolution.

A transfer holds a zone's records and nothing else: a cluster zone under another one
(`--cluster prod=prod.cluster.local` beside `--domain cluster.local`) is its own zone, so its
records are not the parent's. And a transfer holds every record the server answers, the shapes
the resolution added included (A at `_port._proto.<svc>`, SRV at an endpoint's name).
"""

from __future__ import annotations

import dns.message
import dns.rdatatype
import dns.rrset

from kdns.dns.resolution import Cluster, Engine
from kdns.ops.transfer import parse_networks, transfer
from kdns.ops.zonefile import records
from tests.builders import (
    clusterip,
    endpoint_slice,
    ep,
    eport,
    headless,
    make_store,
    namespaces,
    port,
)

LOCAL = parse_networks(["127.0.0.0/8"])


def engine() -> Engine:
    parent = make_store(
        [
            *namespaces("default"),
            clusterip("default", "web", "10.96.0.80", ports=[port("http", 80)]),
            headless("default", "db", ports=[port("pg", 5432)]),
            endpoint_slice(
                "default", "db-abc", "db", [ep("10.1.0.10", hostname="db-0")], [eport("pg", 5432)]
            ),
        ]
    )
    child = make_store(
        [*namespaces("shop"), clusterip("shop", "api", "10.97.0.9", ports=[port("https", 443)])]
    )
    return Engine([Cluster("cluster.local", parent), Cluster("prod.cluster.local", child)])


def axfr(eng: Engine, zone: str) -> list[tuple[str, str, str]]:
    wire = dns.message.make_query(zone, "AXFR").to_wire()
    rrs: list[tuple[str, str, str]] = []
    for message in transfer(eng, wire, "127.0.0.1", LOCAL):
        for rrset in dns.message.from_wire(message, one_rr_per_rrset=True).answer:
            for rd in rrset:
                rrs.append(
                    (rrset.name.to_text(), dns.rdatatype.to_text(rrset.rdtype), rd.to_text())
                )
    return rrs


def test_a_zone_under_another_is_not_transferred_with_its_parent() -> None:
    eng = engine()
    parent = axfr(eng, "cluster.local")
    child = axfr(eng, "prod.cluster.local")
    assert ("web.default.svc.cluster.local.", "A", "10.96.0.80") in parent
    assert ("api.shop.svc.prod.cluster.local.", "A", "10.97.0.9") in child
    assert [r for r in parent if r[0].endswith(".prod.cluster.local.")] == []
    assert [r for r in child if not r[0].endswith("prod.cluster.local.")] == []
    assert parent[0][1] == parent[-1][1] == "SOA" and child[0][1] == child[-1][1] == "SOA"


def test_a_transfer_holds_what_the_resolution_answers_at_every_shape() -> None:
    rrs = axfr(engine(), "cluster.local")
    assert ("_http._tcp.web.default.svc.cluster.local.", "A", "10.96.0.80") in rrs
    assert ("_pg._tcp.db.default.svc.cluster.local.", "A", "10.1.0.10") in rrs
    assert (
        "db-0.db.default.svc.cluster.local.",
        "SRV",
        "0 100 5432 db-0.db.default.svc.cluster.local.",
    ) in rrs


def test_a_transfer_of_long_names_is_readable_past_16_kib() -> None:
    # 60 endpoints with 63-character hostnames of a service and namespace of 63 characters: a
    # message of 200 such records passes offset 16,383, beyond which a compression pointer
    # cannot point; dnslib wrote such pointers (cut to 14 bits) and dig read "bad label type".
    ns, svc = "n" * 63, "s" * 63
    eps = [ep(f"10.7.0.{i + 1}", hostname=f"{i:02d}" + "h" * 61) for i in range(60)]
    eng = Engine(
        [
            Cluster(
                "cluster.local",
                make_store(
                    [
                        *namespaces(ns),
                        headless(ns, svc, ports=[port("http", 80)]),
                        endpoint_slice(ns, f"{svc}-1", svc, eps, [eport("http", 80)]),
                    ]
                ),
            )
        ]
    )
    wire = dns.message.make_query("cluster.local", "AXFR").to_wire()
    messages = transfer(eng, wire, "127.0.0.1", LOCAL)
    assert max(len(m) for m in messages) > 16_384
    rrs = axfr(eng, "cluster.local")  # dnspython reads every message
    expected = {f"{e.hostname}.{svc}.{ns}.svc.cluster.local." for e in eps}
    assert {r[0] for r in rrs if r[1] == "A"} >= expected


def test_no_listed_name_is_longer_than_dns_carries() -> None:
    # A 15-character port name under a 100-character domain: `_<port>._udp.<svc>.<ns>.svc.<d>`
    # is 256 octets; `kdns records` listed it, and a transfer of it raised on the server.
    domain = "d" * 50 + "." + "d" * 49
    ns, svc = "n" * 63, "s" * 63
    store = make_store(
        [
            *namespaces(ns),
            clusterip(ns, svc, "10.96.0.10", ports=[port("abcdefghijklmno", 81, "UDP")]),
        ]
    )
    eng = Engine([Cluster(domain, store)])
    listed = [str(rr.rname) for rr in records(eng)]
    assert f"{svc}.{ns}.svc.{domain}." in listed
    assert all(len(name) - 1 <= 253 for name in listed), max(listed, key=len)
    wire = dns.message.make_query(domain, "AXFR").to_wire()
    assert transfer(eng, wire, "127.0.0.1", LOCAL)  # encodes, whole


def ixfr(eng: Engine, zone: str, serial: int) -> list[bytes]:
    q = dns.message.make_query(zone, "IXFR")
    q.authority.append(dns.rrset.from_text(zone + ".", 0, "IN", "SOA", f". . {serial} 0 0 0 0"))
    return transfer(eng, q.to_wire(), "127.0.0.1", LOCAL)


def test_ixfr_gets_the_soa_alone_when_the_client_is_current_and_the_zone_otherwise() -> None:
    eng = engine()
    current = eng.clusters[0].store.serial
    whole = transfer(
        eng, dns.message.make_query("cluster.local", "AXFR").to_wire(), "127.0.0.1", LOCAL
    )
    for serial in (current - 1, current - 2**31 + 1):  # older, in serial arithmetic
        got = ixfr(eng, "cluster.local", serial % 2**32)
        answers = [dns.message.from_wire(m).answer for m in got]
        assert answers == [dns.message.from_wire(m).answer for m in whole]
        assert len(answers[0]) > 3  # the zone, between its SOA twice
    for serial in (current, current + 5, current + 2**31 - 1):  # as new or newer (RFC 1995 2)
        (only,) = ixfr(eng, "cluster.local", serial % 2**32)
        reply = dns.message.from_wire(only)
        assert [rrset.rdtype for rrset in reply.answer] == [dns.rdatatype.SOA]
        assert reply.answer[0][0].serial == current
