"""The naive baseline: dnslib's own DNSServer with a resolver class over the same records.

This is how a Python DNS server is usually first written: parse every query into objects, look
the name up, build a reply object, pack it. kdns is measured against it in the same run.

    python bench/baseline_dnslib.py ZONEFILE PORT
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict

from dnslib import QTYPE, RCODE, RR, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSServer


class ZoneResolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, text: str) -> None:
        self.records: dict[tuple[str, int], list[RR]] = defaultdict(list)
        self.names: set[str] = set()
        self.soa: RR | None = None
        for rr in RR.fromZone(text):
            name = str(rr.rname).lower()
            self.records[(name, rr.rtype)].append(rr)
            self.names.add(name)
            if rr.rtype == QTYPE.SOA and self.soa is None:
                self.soa = rr

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()
        qname = request.q.qname
        name = str(qname).lower()
        found = self.records.get((name, request.q.qtype))
        if found:
            for rr in found:
                reply.add_answer(RR(qname, rr.rtype, rr.rclass, rr.ttl, rr.rdata))
        elif name not in self.names:
            reply.header.rcode = RCODE.NXDOMAIN
            if self.soa is not None:
                reply.add_auth(self.soa)
        elif self.soa is not None:
            reply.add_auth(self.soa)
        return reply


def main() -> None:
    zonefile, port = sys.argv[1], int(sys.argv[2])
    with open(zonefile) as f:
        resolver = ZoneResolver(f.read())
    server = DNSServer(resolver, port=port, address="127.0.0.1", logger=_Quiet())
    server.start_thread()
    print(f"serving on 127.0.0.1 port {port}", flush=True)
    while server.isAlive():
        time.sleep(0.5)


class _Quiet:
    def __getattr__(self, name: str) -> object:
        return lambda *args, **kwargs: None


if __name__ == "__main__":
    main()
