"""Every record kdns would serve, as an RFC 1035 zone file (`kdns records`).

The records are not rebuilt from the objects here: every name the data implies is asked of the
answer engine, so the listing shows exactly what queries get, and a difference between the two can
never creep in.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

from dnslib import QTYPE, RR, DNSLabel

from kdns.dns.resolution import Engine, fits

_TYPES = (QTYPE.SOA, QTYPE.NS, QTYPE.A, QTYPE.AAAA, QTYPE.CNAME, QTYPE.SRV, QTYPE.PTR, QTYPE.TXT)


def _names(engine: Engine) -> Iterator[str]:
    """Every name the data implies that DNS can carry (`fits`: a long --domain makes some
    longer than 255 octets, which no question can ask); pod names, which any address makes,
    are left out."""
    return (name for name in _all_names(engine) if fits(name))


def _all_names(engine: Engine) -> Iterator[str]:
    for cluster in engine.clusters:
        zone = cluster.domain
        yield from (zone, f"dns-version.{zone}", f"ns.dns.{zone}")
        addresses: set[str] = set()
        for view in cluster.store.views():
            svc = view.service
            fqdn = f"{svc.name}.{svc.namespace}.svc.{zone}"
            yield fqdn
            if svc.type == "ExternalName":
                continue
            ports = {(p.name, p.protocol) for p in svc.ports if p.name}
            if svc.headless:
                ports = {(p.name, p.protocol) for ep in view.ready for p in ep.ports if p.name}
            for name, proto in sorted(ports):
                yield f"_{name}._{proto.lower()}.{fqdn}"
            for label in sorted({ep.name for ep in view.ready}):
                yield f"{label}.{fqdn}"
            addresses.update(svc.cluster_ips)
            addresses.update(ep.address for ep in view.ready)
        for address in sorted(addresses, key=_ip_order):
            yield ipaddress.ip_address(address).reverse_pointer


def _ip_order(address: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(address)
    return ip.version, int(ip)


def records(engine: Engine) -> list[RR]:
    """Every answer record of every name the data implies, deduplicated and sorted."""
    seen: dict[str, RR] = {}
    for name in _names(engine):
        # Every type the engine has records of, asked at every name: which types a name has
        # is the resolution's to say (A at `_port._proto.<svc>`, SRV at an endpoint), not ours.
        label = DNSLabel(name)
        for qtype in _TYPES:
            for rr in engine.resolve(label, qtype).answer:
                seen.setdefault(rr.toZone(), rr)
    return [seen[k] for k in sorted(seen, key=_sort_key)]


def _sort_key(line: str) -> tuple[tuple[str, ...], str]:
    name, _, rest = line.partition(" ")
    # Sort by name from the root down, so each zone's names stay together.
    return tuple(reversed(name.lower().rstrip(".").split("."))), rest


def render(engine: Engine) -> str:
    """The zone file text: one record a line."""
    lines = [f"; kdns records for {', '.join(c.domain for c in engine.clusters)}"]
    lines += [rr.toZone() for rr in records(engine)]
    return "\n".join(lines) + "\n"
