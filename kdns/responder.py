"""From query bytes to response bytes, with a cache of encoded responses.

Encoding a response with dnslib costs far more than answering it, so each response is encoded
once and kept, keyed by the lower-cased question and the client's EDNS state; later queries for
the same question only get their ID, RD/CD flags and question spelling copied in. The cache is
emptied whenever any store's generation moves, before the next query is read (the store calls
back synchronously on the loop thread), so a cached answer never outlives the data it came from.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from dnslib import QTYPE, RCODE, DNSLabel

from .answers import Answer, Engine
from .wire import (
    CD,
    DEFAULT_MAX_UDP,
    RD,
    Drop,
    Query,
    Refuse,
    encode,
    limit_for,
    parse_query,
    truncated,
)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Entry:
    response: bytes
    rcode: int
    short: bytes | None = None  # the TC=1 form, made when first needed


class Responder:
    """Turns query packets into response packets. Runs on the event loop thread."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_udp: int = DEFAULT_MAX_UDP,
        cache_size: int = 20000,
    ) -> None:
        self.engine = engine
        self.max_udp = max_udp
        self.cache_size = cache_size
        self._cache: dict[bytes, _Entry] = {}
        self.hits = 0
        self.misses = 0
        for cluster in engine.clusters:
            cluster.store.subscribe(self._invalidate)

    def _invalidate(self, generation: int, received_at: float | None) -> None:
        self._cache.clear()

    def __len__(self) -> int:
        return len(self._cache)

    def respond(self, data: bytes, *, udp: bool) -> tuple[bytes | None, int, Query | None]:
        """(response or None to drop, rcode, decoded query or None)."""
        try:
            query = parse_query(data)
        except Drop:
            return None, -1, None
        except Refuse as refused:
            return refused.reply, refused.rcode, None
        entry = self._cache.get(query.key)
        if entry is None:
            self.misses += 1
            entry = self._answer(query)
        else:
            self.hits += 1
        response = bytearray(entry.response)
        if udp and len(response) > limit_for(query, self.max_udp):
            if entry.short is None:
                entry.short = truncated(entry.response, query)
            response = bytearray(entry.short)
        # The cached bytes were made for another query: copy in this one's identity.
        response[0:2] = data[0:2]
        response[2] = (response[2] & ~(RD >> 8)) | (data[2] & (RD >> 8))
        response[3] = (response[3] & ~CD) | (data[3] & CD)
        response[12 : 12 + len(query.name)] = query.name
        return bytes(response), entry.rcode, query

    def _answer(self, query: Query) -> _Entry:
        answer = self.resolve(query)
        response = encode(query, answer, max_udp=self.max_udp)
        if len(response) > 65535:
            response = _fit(query, answer, self.max_udp)
        entry = _Entry(response, answer.rcode)
        if len(self._cache) >= self.cache_size:
            self._cache.clear()  # cheaper than LRU bookkeeping on every hit
        self._cache[query.key] = entry
        return entry

    def resolve(self, query: Query) -> Answer:
        """The engine's answer to a decoded query, before encoding (the full path)."""
        if query.qclass != 1:
            return Answer(RCODE.REFUSED, authoritative=False)
        if query.qtype in (QTYPE.AXFR, QTYPE.IXFR):
            return Answer(RCODE.REFUSED, authoritative=False)
        return self.engine.resolve(DNSLabel(query.labels), query.qtype)


def _fit(query: Query, answer: Answer, max_udp: int) -> bytes:
    """Drop records from the end until the response fits a TCP message (65535 bytes)."""
    records = list(answer.answer)
    trimmed = Answer(answer.rcode, answer.authoritative, records, answer.authority, [])
    response = encode(query, trimmed, max_udp=max_udp)
    while len(response) > 65535 and records:
        keep = max(1, len(records) * 65000 // len(response))
        del records[keep if keep < len(records) else -1 :]
        response = encode(query, trimmed, max_udp=max_udp)
    return response
