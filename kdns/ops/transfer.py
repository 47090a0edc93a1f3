"""Zone transfer (AXFR, RFC 5936) of a cluster zone, for clients in `--transfer-to` only.

Off by default: a transfer lists every service and endpoint, which is exactly what a cluster DNS
server should not hand to any pod that asks. Allowed only over TCP (the responder refuses it over
UDP) and only to the networks named. The records are those `kdns records` prints, so a transfer,
the record listing and individual queries can never disagree.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from dnslib import QTYPE, RCODE, RR, DNSHeader, DNSLabel, DNSQuestion, DNSRecord

from kdns.dns.names import Shape, ZoneKind
from kdns.dns.resolution import Engine
from kdns.dns.wire import pack, parse_query
from kdns.ops.zonefile import records

#: Records per message: keeps each message well under 65535 bytes.
PER_MESSAGE = 200

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: Sequence[str]) -> list[Network]:
    """`--transfer-to` values as networks (ValueError on a bad one)."""
    return [ipaddress.ip_network(c, strict=False) for c in cidrs]


def allowed(client: str, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(client.split("%", 1)[0])
    except ValueError:
        return False
    return any(ip in net for net in networks)


def transfer(
    engine: Engine, query_bytes: bytes, client: str, networks: Sequence[Network]
) -> list[bytes]:
    """The messages answering an AXFR query: the zone between two copies of its SOA. An IXFR
    query gets the same (RFC 1995 section 4: a server that keeps no history of changes sends
    the whole zone), or the current SOA alone when its own SOA is as new (section 2)."""
    query = parse_query(query_bytes)
    qname = DNSLabel(query.labels)
    zone = str(qname).rstrip(".").lower()

    def message(rcode: int, rrs: Sequence[RR], first: bool) -> bytes:
        header = DNSHeader(id=query.id, qr=1, aa=1, rcode=rcode)
        rec = DNSRecord(header, q=DNSQuestion(qname, query.qtype) if first else None)
        for rr in rrs:
            rec.add_answer(rr)
        # kdns's packing: dnslib alone would point to names past offset 16,383, which a
        # compression pointer cannot reach (a message of 200 long names came out corrupt).
        packed = bytearray(pack(rec))
        if first:
            packed[12 : 12 + len(query.name)] = query.name
        return bytes(packed)

    if not allowed(client, networks):
        return [message(RCODE.REFUSED, [], True)]
    request = engine.parse(query.labels)
    if request.shape is not Shape.APEX or (
        # An external zone's names are not enumerated (wildcards, and names of every kind).
        request.zone is not None and request.zone.kind is not ZoneKind.CLUSTER
    ):
        return [message(RCODE.NOTAUTH, [], True)]
    cluster = request.zone
    soa = engine.resolve(DNSLabel(zone), QTYPE.SOA).answer
    if query.qtype == QTYPE.IXFR and _up_to_date(query_bytes, soa[0].rdata.times[0]):
        # RFC 1995 section 2: a client as new as the server gets the current SOA alone.
        return [message(RCODE.NOERROR, soa, True)]
    # A record belongs to the zone the grammar puts its name in (the longest zone that holds it),
    # so a cluster zone under another one is never transferred as part of its parent.
    body = [
        rr
        for rr in records(engine)
        if rr.rtype != QTYPE.SOA and engine.parse(rr.rname.label).zone is cluster
    ]
    rrs = [*soa, *body, *soa]
    chunks = [rrs[i : i + PER_MESSAGE] for i in range(0, len(rrs), PER_MESSAGE)]
    return [message(RCODE.NOERROR, chunk, i == 0) for i, chunk in enumerate(chunks)]


def _up_to_date(query_bytes: bytes, serial: int) -> bool:
    """Whether an IXFR query's SOA (its authority section) has `serial` or a later one, in
    serial number arithmetic (RFC 1982). False when it carries none."""
    try:
        auth = DNSRecord.parse(query_bytes).auth
    except Exception:  # dnslib raises several kinds on odd input; parse_query accepted it
        return False
    theirs = next((rr.rdata.times[0] for rr in auth if rr.rtype == QTYPE.SOA), None)
    return theirs is not None and (theirs - serial) % (1 << 32) < (1 << 31)
