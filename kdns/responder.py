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
    DEFAULT_MAX_UDP,
    Drop,
    Query,
    Refuse,
    encode,
    limit_for,
    parse_query,
    truncated,
)

log = logging.getLogger(__name__)


class Action:
    """Something the transport must do instead of sending a response."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


FORWARD = Action("forward")
TRANSFER = Action("transfer")


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
        forwarding: bool = False,
    ) -> None:
        self.engine = engine
        #: True when a forwarder takes names outside kdns's zones (they are REFUSED otherwise).
        self.forwarding = forwarding
        self.max_udp = max_udp
        self.cache_size = cache_size
        self._cache: dict[bytes, _Entry] = {}
        #: The type of the last question answered (for the request counters).
        self.qtype = 0
        self.hits = 0
        self.misses = 0
        self.dropped = 0
        #: responses sent, by rcode
        self.rcodes: dict[int, int] = {}
        for cluster in engine.clusters:
            cluster.store.subscribe(self._invalidate)

    def count(self, rcode: int) -> None:
        self.rcodes[rcode] = self.rcodes.get(rcode, 0) + 1

    def _invalidate(self, generation: int, received_at: float | None) -> None:
        self._cache.clear()

    def __len__(self) -> int:
        return len(self._cache)

    def respond(self, data: bytes, *, udp: bool) -> bytes | Action | None:
        """The response to one query packet, or None when it gets no answer.

        An `Action` instead of bytes asks the transport to do what a single response cannot:
        forward the query upstream (`FORWARD`, only with a forwarder) or stream a zone transfer
        (`TRANSFER`, only over TCP to allowed clients, which the transport checks).
        """
        response = self._fast(data, udp)
        if response is not None:
            self.hits += 1
            return response
        self.qtype = 0
        try:
            query = parse_query(data)
        except Drop:
            self.dropped += 1
            return None
        except Refuse as refused:
            self.count(refused.rcode)
            return refused.reply
        self.qtype = query.qtype
        if query.qtype in (QTYPE.AXFR, QTYPE.IXFR) and query.qclass == 1:
            # Never cached: whether it is allowed depends on the client, not the question.
            if not udp and query.qtype == QTYPE.AXFR and self.engine.is_apex(query.labels):
                return TRANSFER
            return self._uncached(query, Answer(RCODE.REFUSED, authoritative=False), udp)
        if self.forwarding and query.qclass == 1 and not self.engine.is_local_labels(query.labels):
            return FORWARD
        entry = self._cache.get(query.key)
        if entry is None:
            self.misses += 1
            entry = self._answer(query)
        else:
            self.hits += 1  # a cached name asked in a form the fast path leaves alone
            self.count(entry.rcode)
        qend = 12 + len(query.name) + 4
        limit = limit_for(query, self.max_udp) if udp else 65535
        return _assemble(data, entry, qend, limit, query.edns)

    def _fast(self, data: bytes, udp: bool) -> bytes | None:
        """Answer a plain query for a cached question without decoding it; None otherwise.

        Accepts exactly what `parse_query` accepts and nothing more: one question, nothing in
        the answer and authority sections, at most one OPT record (version 0, well-formed
        options). Anything else takes the full path.
        """
        n = len(data)
        if n < 17 or data[2] & 0xF8 or data[4:10] != b"\x00\x01\x00\x00\x00\x00":
            return None
        i = 12
        try:
            while length := data[i]:
                if length > 63:
                    return None
                i += length + 1
        except IndexError:
            return None
        qend = i + 5
        if qend > n or qend - 16 > 255:
            return None
        ar = data[10] << 8 | data[11]
        if ar == 0:
            if qend != n:
                return None
            key = data[12 : qend - 4].lower() + data[qend - 4 : qend] + b"\x00"
            limit = 512
        elif ar == 1:
            # OPT: root name, type 41, class = payload, ext-rcode, version 0, flags, rdlen.
            if n < qend + 11 or data[qend : qend + 3] != b"\x00\x00\x29" or data[qend + 6]:
                return None
            end = qend + 11 + (data[qend + 9] << 8 | data[qend + 10])
            if end != n:
                return None
            j = qend + 11
            while j < end:
                if j + 4 > end:
                    return None
                j += 4 + (data[j + 2] << 8 | data[j + 3])
            if j != end:
                return None
            marker = b"\x02" if data[qend + 7] & 0x80 else b"\x01"
            key = data[12 : qend - 4].lower() + data[qend - 4 : qend] + marker
            limit = min(max(512, data[qend + 3] << 8 | data[qend + 4]), self.max_udp)
        else:
            return None
        if data[qend - 4 : qend - 2] == b"\x00\x29":
            return None  # OPT as a question type: FORMERR on the full path
        entry = self._cache.get(key)
        if entry is None:
            return None
        self.qtype = data[qend - 4] << 8 | data[qend - 3]
        self.count(entry.rcode)
        return _assemble(data, entry, qend, limit if udp else 65535, ar == 1)

    def _uncached(self, query: Query, answer: Answer, udp: bool) -> bytes:
        self.count(answer.rcode)
        entry = _Entry(encode(query, answer, max_udp=self.max_udp), answer.rcode)
        limit = limit_for(query, self.max_udp) if udp else 65535
        return _assemble(query.data, entry, 12 + len(query.name) + 4, limit, query.edns)

    def _answer(self, query: Query) -> _Entry:
        answer = self.resolve(query)
        response = encode(query, answer, max_udp=self.max_udp)
        if len(response) > 65535:
            response = _fit(query, answer, self.max_udp)
        entry = _Entry(response, answer.rcode)
        self.count(answer.rcode)
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


def _assemble(data: bytes, entry: _Entry, qend: int, limit: int, edns: bool) -> bytes:
    """A cached response, given this query's ID, RD and CD flags and question spelling."""
    response = entry.response
    if len(response) > limit:
        if entry.short is None:
            entry.short = truncated(response, qend - 12, edns)
        response = entry.short
    flags = bytes(
        ((response[2] & 0xFE) | (data[2] & 0x01), (response[3] & 0xEF) | (data[3] & 0x10))
    )
    return data[0:2] + flags + response[4:12] + data[12:qend] + response[qend:]


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
