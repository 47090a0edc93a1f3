"""The change journal's view of answers: `Engine.texts`, the records `Engine.build` makes as the
text dig prints, which the journal compares before and after each change, held equal to `build`.
"""

from __future__ import annotations

import ipaddress
import random

import dns.reversename
import pytest
from dnslib import QTYPE, DNSLabel

from kdns.dns.resolution import Cluster, Engine
from tests.test_bulk import ZONE_SETS, random_store


@pytest.mark.parametrize("seed", range(30))
def test_texts_are_the_records_build_makes(seed: int) -> None:
    # `Engine.texts` mirrors `Engine.build` for the journal: held equal here, over generated
    # stores (headless and ClusterIP, dual-stack, several slices, odd hostnames, mixed-case
    # ports, ExternalNames, nested zones), at every name the data implies and some it does not.
    rng = random.Random(seed)
    zones = ZONE_SETS[seed % len(ZONE_SETS)]
    engine = Engine([Cluster(zone, random_store(rng)) for zone in zones])
    names: set[str] = set()
    for cluster in engine.clusters:
        for view in cluster.store.views():
            svc = view.service
            fqdn = f"{svc.name}.{svc.namespace}.svc.{cluster.domain}."
            names |= {fqdn, f"nope.{fqdn}", f"_http._tcp.{fqdn}", f"_x._udp.{fqdn}"}
            ports = [*svc.ports, *(p for e in view.ready for p in e.ports)]
            names |= {f"_{p.name}._{p.protocol.lower()}.{fqdn}" for p in ports if p.name}
            names |= {f"{e.name}.{fqdn}" for e in view.ready}
            for address in (*svc.cluster_ips, *(e.address for e in view.ready)):
                names.add(dns.reversename.from_address(address).to_text())
    covered = 0
    for name in sorted(names):
        label = DNSLabel(name)
        res = engine.decide(engine.parse(label.label))
        for rtype in ("A", "AAAA", "SRV", "CNAME", "PTR"):
            qtype = getattr(QTYPE, rtype)
            texts = engine.texts(res, qtype)
            if texts is None:
                continue
            covered += 1
            built = [
                rr
                for rr in engine.build(res, label, qtype).answer
                if rr.rtype == qtype and rr.rname == label
            ]
            assert [_canonical(t, rtype) for t in texts] == [
                _canonical(str(rr.rdata), rtype) for rr in built
            ], (name, rtype)
    assert covered > 50


def _canonical(text: str, rtype: str) -> str:
    # dnslib writes some IPv6 addresses otherwise than RFC 5952 (and dig): compare the address.
    return str(ipaddress.ip_address(text)) if rtype in ("A", "AAAA") else text
