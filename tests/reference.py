"""An answer oracle that shares no code with kdns: the records a name must have, straight from the
model objects and the rules in /work/shared/dns-behaviour.md, built into messages by dnspython.

Tests that compare kdns with its own `encode()`, `truncated()` or `kdns records` cannot see a bug
that sits in those; these helpers can. Only positive service answers are covered (A, AAAA and SRV
of services, `_port._proto` names and endpoint names); `records()` returns None for the rest.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import dns.rdataclass
import dns.rdatatype
import dns.rrset

from kdns.state.model import Endpoint, EndpointSet, Namespace, Service

TTL = 5
Objects = Sequence[Service | EndpointSet | Namespace]


@dataclass(frozen=True)
class Expected:
    """The answer and additional sections of a positive reply, as dnspython RRsets."""

    answer: list[dns.rrset.RRset]
    additional: list[dns.rrset.RRset]


def _family(qtype: int, address: str) -> bool:
    version = ipaddress.ip_address(address).version
    return (qtype, version) in ((dns.rdatatype.A, 4), (dns.rdatatype.AAAA, 6))


def _dashed(address: str) -> str:
    """The endpoint label of an address without hostname, written out from the spec's examples."""
    if ":" not in address:
        return address.replace(".", "-")
    text = address.replace(":", "-")
    return text + "0" if text.endswith("-") else text


def _ready(service: Service, objects: Objects) -> list[tuple[Endpoint, list[tuple[str, int, str]]]]:
    """(endpoint, its ports as (name, port, protocol)) for every endpoint that counts as ready."""
    out = []
    for obj in objects:
        if not isinstance(obj, EndpointSet):
            continue
        if (obj.namespace, obj.service) != (service.namespace, service.name):
            continue
        for subset in obj.subsets:
            ports = [(p.name, p.port, p.protocol) for p in subset.ports]
            for endpoint in subset.endpoints:
                if endpoint.ready or service.publish_not_ready:
                    out.append((endpoint, ports))
    return out


def _rrset(owner: str, rdtype: int, texts: Iterable[str]) -> dns.rrset.RRset:
    kind = dns.rdatatype.RdataType.make(rdtype)
    return dns.rrset.from_text_list(owner, TTL, dns.rdataclass.IN, kind, sorted(set(texts)))


def _addresses(
    owner: str, addresses: Iterable[str], types: Sequence[int] = (1, 28)
) -> list[dns.rrset.RRset]:
    out = []
    for rdtype in types:
        texts = [a for a in addresses if _family(rdtype, a)]
        if texts:
            out.append(_rrset(owner, rdtype, texts))
    return out


def records(objects: Objects, zone: str, name: str, qtype: int) -> Expected | None:
    """What `name` `qtype` must answer, or None when this oracle does not cover it."""
    labels = name.lower().rstrip(".").split(".")
    zone_labels = zone.split(".")
    if labels[-len(zone_labels) :] != zone_labels or qtype not in (1, 28, 33):
        return None
    labels = labels[: -len(zone_labels)]
    if len(labels) < 3 or labels[-1] != "svc":
        return None
    svc, ns = labels[-3], labels[-2]
    prefix = labels[:-3]
    services = [o for o in objects if isinstance(o, Service) and (o.namespace, o.name) == (ns, svc)]
    if len(services) != 1 or services[0].type == "ExternalName":
        return None
    service = services[0]
    owner = name if name.endswith(".") else name + "."
    base = f"{svc}.{ns}.svc.{zone}."
    ready = _ready(service, objects)
    if not prefix or (len(prefix) == 2 and all(p.startswith("_") for p in prefix)):
        port_name = prefix[0][1:] if prefix else None
        proto = prefix[1][1:].upper() if prefix else None
        if qtype != dns.rdatatype.SRV and not prefix:
            if service.headless:
                found = _addresses(owner, [a for e, _ in ready for a in e.addresses], [qtype])
            else:
                found = _addresses(owner, service.cluster_ips, [qtype])
            return Expected(found, []) if found else None
        targets: set[tuple[str, int]] = set()
        extra: dict[str, set[str]] = {}
        if service.headless:
            for endpoint, ports in ready:
                for pname, port, pproto in ports:
                    if prefix and (pname != port_name or pproto != proto or not pname):
                        continue
                    for address in endpoint.addresses:
                        label = endpoint.hostname or _dashed(address)
                        target = f"{label}.{base}"
                        targets.add((target, port))
                        extra.setdefault(target, set()).add(address)
        else:
            for p in service.ports:
                if prefix and (p.name != port_name or p.protocol != proto or not p.name):
                    continue
                targets.add((base, p.port))
                extra.setdefault(base, set()).update(service.cluster_ips)
        if not targets:
            return None
        if qtype != dns.rdatatype.SRV:
            # A/AAAA at a port name: the addresses the SRV records lead to (dns-behaviour.md).
            addresses = sorted({a for t in extra.values() for a in t})
            found = _addresses(owner, addresses, [qtype])
            return Expected(found, []) if found else None
        weight = max(1, 100 // len(targets))
        srv = _rrset(owner, 33, (f"0 {weight} {port} {target}" for target, port in targets))
        additional = [rr for t in sorted(extra) for rr in _addresses(t, extra[t])]
        return Expected([srv], additional)
    if len(prefix) != 1:
        return None
    if qtype == dns.rdatatype.SRV:
        # At an endpoint's name: one SRV per port of the endpoints of that name (CoreDNS).
        named = [
            (e, ports)
            for e, ports in ready
            for a in e.addresses
            if (e.hostname or _dashed(a)) == prefix[0]
        ]
        port_numbers = {port for _, ports in named for _, port, _ in ports}
        if not port_numbers:
            return None
        target = f"{prefix[0]}.{base}"
        weight = max(1, 100 // len(port_numbers))
        srv = _rrset(owner, 33, (f"0 {weight} {port} {target}" for port in port_numbers))
        glue = {a for e, _ in named for a in e.addresses if (e.hostname or _dashed(a)) == prefix[0]}
        return Expected([srv], _addresses(target, sorted(glue)))
    found = _addresses(
        owner,
        [a for e, _ in ready for a in e.addresses if (e.hostname or _dashed(a)) == prefix[0]],
        [qtype],
    )
    return Expected(found, []) if found else None
