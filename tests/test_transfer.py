"""AXFR (kdns/ops/transfer.py) and `kdns records` (kdns/ops/zonefile.py) read the resolution.

A transfer holds a zone's records and nothing else: a cluster zone under another one
(`--cluster prod=prod.cluster.local` beside `--domain cluster.local`) is its own zone, so its
records are not the parent's. And a transfer holds every record the server answers, the shapes
the resolution added included (A at `_port._proto.<svc>`, SRV at an endpoint's name).
"""

from __future__ import annotations

import dns.message
import dns.rdatatype

from kdns.dns.resolution import Cluster, Engine
from kdns.ops.transfer import parse_networks, transfer
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
