"""`--autopath`: the pod's search path, walked once by kdns instead of by the client.

A pod's resolv.conf says `search <ns>.svc.<zone> svc.<zone> <zone>` and `options ndots:5`, so
its resolver asks for `api.example.com` as `api.example.com.<ns>.svc.<zone>` first, then under
the two other search domains, each NXDOMAIN, and only then as itself: four round trips (eight,
with A and AAAA in parallel) for one answer, the largest waste in cluster DNS. CoreDNS's
`autopath @kubernetes` walks the path on the server; so does kdns, with the same rules:

- only for a question strictly below `<ns>.svc.<zone>` that got NXDOMAIN, from an address that
  is a pod's in namespace <ns> (`--pods verified` watches pods, so kdns knows every pod's
  addresses; an address that pods of several namespaces share, host-network pods', is left
  alone, where CoreDNS takes the first pod it finds);
- the front part (`api.example.com`) is tried under `svc.<zone>`, then `<zone>`, then alone: in
  kdns's zones by the engine, outside them through the forwarder (`--upstream`; without it the
  walk stops at the zones);
- the first name that is not NXDOMAIN answers: a CNAME from the name asked to that name, then
  its records; a name that exists without records of the type gives its NODATA, as CoreDNS
  writes it (no CNAME); when every name is NXDOMAIN, the first NXDOMAIN is the answer.

So the client stops after its first question. The answer depends on who asks, so it is never
cached (the NXDOMAIN it starts from is, as usual); the walk costs a few engine lookups, and an
upstream query for names outside the zones, which the forwarder caches.
"""

from __future__ import annotations

from dnslib import CNAME, QTYPE, RCODE, RR, DNSLabel

from kdns.dns.resolution import Answer, Cluster, Engine
from kdns.dns.wire import Drop, Query, Refuse, encode, limit_for, parse_query, truncated
from kdns.serve.responder import Chase

NXDOMAIN = RCODE.NXDOMAIN


class AutoPath:
    """Walks a pod's search path for questions that got NXDOMAIN (see the module's doc)."""

    def __init__(self, engine: Engine, *, forwarding: bool, max_udp: int) -> None:
        self.engine = engine
        self.forwarding = forwarding
        self.max_udp = max_udp
        #: Questions answered from a later search domain, in the zones or upstream (asked).
        self.found = 0
        self.upstream = 0

    def walk(self, data: bytes, response: bytes, client: str, udp: bool) -> bytes | Chase | None:
        """What to send instead of `response` (the NXDOMAIN kdns gives `data` from `client`):
        the answer of a later name of the client's search path, a `Chase` of the bare name for
        the forwarder, or None to send `response` as it is."""
        try:
            query = parse_query(data)
        except (Drop, Refuse):
            return None
        if query.qclass != 1:
            return None
        labels = [label.decode("latin-1") for label in query.labels]
        zone = self.engine.parse(query.labels).zone
        if zone is None:
            return None
        path = _search_path(zone, client, labels)
        if path is None:
            return None
        base, candidates = path
        for candidate in candidates:
            answer = self.engine.resolve(DNSLabel(candidate), query.qtype)
            if answer.rcode != NXDOMAIN:
                self.found += 1
                return self._alias(query, answer, candidate, udp)
        bare = ".".join(base)
        if self.engine.is_local(DNSLabel(bare)):
            answer = self.engine.resolve(DNSLabel(bare), query.qtype)
            if answer.rcode == NXDOMAIN or not answer.authoritative:
                return None
            self.found += 1
            return self._alias(query, answer, bare, udp)
        if not self.forwarding:
            return None
        self.upstream += 1
        qend = 12 + len(query.name) + 4
        limit = limit_for(query, self.max_udp) if udp else 65535
        cname = encode(query, Answer(answer=[self._cname(query, bare)]), max_udp=self.max_udp)
        return Chase(cname, bare, query.qtype, limit, qend - 12, query.edns, fallback=response)

    def _cname(self, query: Query, target: str) -> RR:
        return RR(
            DNSLabel(query.labels), QTYPE.CNAME, ttl=self.engine.ttl, rdata=CNAME(target + ".")
        )

    def _alias(self, query: Query, answer: Answer, target: str, udp: bool) -> bytes:
        """`answer` (for `target`) as the answer to `query`: a CNAME in front of its records,
        or its NODATA as it is."""
        records = answer.answer
        if records:
            records = [self._cname(query, target), *records]
        moved = Answer(
            rcode=answer.rcode,
            authoritative=answer.authoritative,
            answer=records,
            authority=answer.authority,
            additional=answer.additional,
            ede=answer.ede,
        )
        out = encode(query, moved, max_udp=self.max_udp)
        limit = limit_for(query, self.max_udp) if udp else 65535
        if len(out) > limit:
            return truncated(out, len(query.name) + 4, query.edns, limit)
        return out


def _search_path(
    zone: Cluster, client: str, labels: list[str]
) -> tuple[list[str], list[str]] | None:
    """(the front part, the names to try in the zone) for a question of `labels` from
    `client`, or None when the question is not its first search domain's."""
    namespaces = zone.store.pod_namespaces(client)
    if len(namespaces) != 1:
        return None
    first = [namespaces[0], "svc", *zone.labels]
    if len(labels) <= len(first) or labels[-len(first) :] != first:
        return None
    base = labels[: -len(first)]
    return base, [".".join([*base, "svc", *zone.labels]), ".".join([*base, *zone.labels])]
