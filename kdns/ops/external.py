"""ExternalName targets outside kdns's zones, resolved through the forwarder (`--upstream`).

`remote.shop.svc.cluster.local` -> `CNAME payments.example.com` is a dead end for most clients:
glibc's stub resolver does not follow a CNAME to another server, so `getaddrinfo` fails with "No
address associated with hostname". CoreDNS appends the target's records by asking its upstream;
with `--upstream`, so does kdns. The target is asked through the forwarder, so its cache and
its loop protection apply, and each record added keeps the smaller of its own remaining TTL and
kdns's `--ttl`: the answer is good for no longer than either part of it.

When the upstream gives no usable answer (no reply, an error, no records of the asked type),
the client gets the CNAME alone, as without `--upstream`: its resolver can still follow it.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from dnslib import CLASS, QTYPE, RCODE, DNSHeader, DNSQuestion, DNSRecord

from kdns.dns.wire import truncated

log = logging.getLogger(__name__)


async def follow(
    forwarder: Any,
    response: bytes,
    target: str,
    qtype: int,
    *,
    ttl: int,
    limit: int,
    qlen: int,
    edns: bool,
    fallback: bytes | None = None,
) -> bytes:
    """`response` (the CNAME answer, with the client's ID and spelling) with the records of
    `target` of type `qtype` appended, as the forwarder finds them; TC=1 past `limit` bytes.

    With `fallback` (`--autopath`, whose CNAME is kdns's own guess at what the client meant):
    `fallback` when the target does not exist upstream or no answer comes, and when it exists
    with no record of the type, `response` without the CNAME (NODATA), as CoreDNS's autopath
    answers."""
    query = DNSRecord(
        DNSHeader(id=random.randrange(1 << 16), rd=1), q=DNSQuestion(target, qtype, CLASS.IN)
    )
    try:
        # As a TCP client would ask: the whole answer, whatever the client's UDP limit.
        reply = await forwarder.forward(query.pack(), udp=False)
        upstream = DNSRecord.parse(reply) if reply is not None else None
    except Exception as err:  # a reply dnslib cannot read is no answer
        log.debug("ExternalName target %s: no usable upstream answer: %s", target, err)
        upstream = None
    if upstream is None or upstream.header.rcode != RCODE.NOERROR:
        return response if fallback is None else fallback
    # The upstream's own chain (more CNAMEs) and the addresses it ends in.
    records = [rr for rr in upstream.rr if rr.rtype in (QTYPE.CNAME, qtype)]
    message = DNSRecord.parse(response)
    if not any(rr.rtype == qtype for rr in records):
        if fallback is None:
            return response
        message.rr = []
        message.auth = [rr for rr in upstream.auth if rr.rtype == QTYPE.SOA]
        nodata: bytes = message.pack()
        return nodata
    for rr in records:
        rr.ttl = min(rr.ttl, ttl)
        message.add_answer(rr)
    out: bytes = message.pack()
    if len(out) > limit:
        return truncated(out, qlen, edns, limit)
    return out
