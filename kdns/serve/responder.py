"""From query bytes to response bytes, with a cache of encoded responses.

Encoding a response with dnslib costs far more than answering it, so each response is encoded
once and kept, keyed by the lower-cased question and the client's EDNS state; later queries for
the same question only get their ID, RD/CD flags and question spelling copied in.

A cached answer never outlives the data it came from. Each store calls back synchronously on the
loop thread after every change, before the next query is read, saying what the change touched
(`store.Change`). Every cached answer is tagged with what it depends on (`Engine.cache_tag`): the
service a name is under, the address a reverse name spells; answers that follow a CNAME depend on
everything. A change drops the answers of the services and addresses it touched; a change of
namespaces or of sync state drops them all. Emptying the whole cache on every change would make a
cluster with 200 endpoint changes a second answer nearly every query from scratch.

The one thing every negative answer shares is the SOA serial, which moves with every change; it
is patched into the cached bytes when a hit finds it stale, rather than dropping the answer.

Before all that, a UDP query is looked up in a memo by its bytes after the ID: clients ask the
same names, spelled the same way, again and again, and everything in a response but the ID is a
function of those bytes. A memo hit costs a slice, a dict lookup and a concatenation instead of
walking the question and assembling the response (bench/RESULTS.md, "where the time goes": 5.7
-> 4.4 µs of CPU per query). It serves an entry only while that entry is still in the cache and
its bytes unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass

from dnslib import QTYPE, RCODE, DNSLabel

from kdns.config import RotateMode
from kdns.dns.large_answers import Bodies, encode_bulk
from kdns.dns.resolution import ANY_TAG, Answer, Engine, Resolution, lead_of, pod_tag, tag_of
from kdns.dns.wire import (
    DEFAULT_MAX_UDP,
    Drop,
    Query,
    Refuse,
    ede_option,
    encode,
    limit_for,
    parse_query,
    truncated,
)
from kdns.serve.rotation import KEEP_BUILT, Rotation, orders, plan, turnable, turned
from kdns.serve.tally import NameTally, Rows
from kdns.state.store import Store

log = logging.getLogger(__name__)


class Action:
    """Something the transport must do instead of sending a response."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


FORWARD = Action("forward")
TRANSFER = Action("transfer")


class Chase(Action):
    """Ask the forwarder for an ExternalName's target outside kdns's zones, then answer with
    `response` (the CNAME, already given this query's ID and spelling) plus what came back.

    Clients' stub resolvers do not follow CNAMEs themselves (glibc's getaddrinfo fails with "No
    address associated with hostname"), so with --upstream kdns follows it for them.
    """

    def __init__(
        self,
        response: bytes,
        target: str,
        qtype: int,
        limit: int,
        qlen: int,
        edns: bool,
        fallback: bytes | None = None,
    ) -> None:
        super().__init__("chase")
        self.edns = edns
        #: `--autopath`: what to answer when the target does not exist (the first NXDOMAIN).
        self.fallback = fallback
        self.response = response
        self.target = target
        self.qtype = qtype
        #: The largest response this client takes (UDP), and the question section's length.
        self.limit = limit
        self.qlen = qlen


@dataclass(slots=True)
class _Entry:
    response: bytes
    rcode: int
    short: dict[int, bytes] | None = None  # the TC=1 forms, by UDP size, made when needed
    #: Offset of the SOA serial when the response ends with a SOA record (negative answers);
    #: -1 otherwise.
    serial_at: int = -1
    serial: int = 0
    serial_of: Callable[[], int] | None = None
    #: What the answer depends on (see `Engine.cache_tag`); None: only namespaces and sync.
    tag: tuple[str, ...] | None = None
    #: False once dropped from the cache (a change, or eviction): the memo must not serve it.
    live: bool = True
    #: An ExternalName target outside the zones that the forwarder resolves for each query
    #: (`Chase`); such an entry is never cached: the upstream's answer is the forwarder's to keep.
    chase: str | None = None
    #: The answer's records in turning orders (`--rotate`); None: one order. The memo keeps
    #: such an entry's bytes only up to the question and asks it for the rest on every hit.
    #: Planned when the answer is first served whole (`rotated`), from `unplanned`.
    rotation: Rotation | None = None
    #: Makes `rotation`, until the first time it is needed. A large answer that clients only
    #: ever get truncated (UDP without EDNS: the record order is not in a TC=1 answer) never
    #: pays for cutting its bytes into orders, which cost as much as encoding it (a headless
    #: service of 100 endpoints: its SRV answer, after every change of an endpoint).
    unplanned: Callable[[], Rotation | None] | None = None
    #: Queries answered with this response (for the page): added to `Responder.names` when the
    #: entry leaves the cache (`kdns.serve.tally`).
    asked: int = 0

    def rotated(self) -> Rotation | None:
        """`rotation`, planned now if this is the first time it is needed."""
        unplanned = self.unplanned
        if unplanned is not None:
            self.unplanned = None
            self.rotation = unplanned()
        return self.rotation

    def refresh_serial(self) -> None:
        """Patch the current serial in, if it moved since the response was encoded."""
        assert self.serial_of is not None
        current = self.serial_of()
        if current != self.serial:
            at = self.serial_at
            self.response = self.response[:at] + _SERIAL.pack(current) + self.response[at + 4 :]
            self.serial = current


_SERIAL = struct.Struct("!I")
#: Longer UDP queries are answered from the cache but not memoised: the memo keeps each query's
#: bytes, and a client padding its queries (EDNS padding, junk options) could make every one
#: distinct and up to 64 KiB: 20,000 of them, a gigabyte. Ordinary queries are under 300 bytes
#: (RFC 8467 pads them to 128-byte blocks).
MEMO_MAX_QUERY = 512
#: The tag of answers that depend on any change (they followed a CNAME, or are partial reverse
#: names).
_ANY = ANY_TAG


class Responder:
    """Turns query packets into response packets. Runs on the event loop thread."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_udp: int = DEFAULT_MAX_UDP,
        cache_size: int = 20000,
        forwarding: bool = False,
        rotate: RotateMode = "round-robin",
    ) -> None:
        self.engine = engine
        self.rotate = rotate
        #: True when a forwarder takes names outside kdns's zones (they are REFUSED otherwise).
        self.forwarding = forwarding
        self.max_udp = max_udp
        self.cache_size = cache_size
        self._cache: dict[bytes, _Entry] = {}
        #: UDP query bytes after the ID -> (cache entry, its response bytes then, the response
        #: sent after the ID, qtype, and for a rotating answer its `Rotation`: then the bytes
        #: kept end with the question, and the next order's body follows them), for queries
        #: `_fast` answered; emptied when it fills up.
        self._memo: dict[bytes, tuple[_Entry, bytes, bytes, int, Rotation | None]] = {}
        #: cache tag -> keys of the cached answers that carry it
        self._tags: dict[tuple[str, ...], set[bytes]] = {}
        #: The sections of large answers, per service view: the misses that follow a change
        #: of a service (its name asked with and without EDNS, for A then ANY) encode it once.
        self._bodies = Bodies()
        #: The type of the last question answered (for the request counters).
        self.qtype = 0
        #: The cache key of the last question answered FORWARD (for the page's name counts).
        self.forwarded = b""
        #: Answers by question and rcode of the entries no longer cached, for the page
        #: (`names_digest` adds the cached ones).
        self.names = NameTally()
        self.hits = 0
        self.misses = 0
        #: responses sent, by (extended, 12-bit) rcode: a list, the cheapest to count into
        self._rcodes = [0] * 4096
        for cluster in engine.clusters:
            cluster.store.subscribe(self._invalidator(cluster.domain, cluster.store))

    def count(self, rcode: int) -> None:
        self._rcodes[rcode] += 1

    @property
    def rcodes(self) -> dict[int, int]:
        """Responses sent, by rcode."""
        return {rcode: n for rcode, n in enumerate(self._rcodes) if n}

    def _invalidator(self, domain: str, store: Store) -> Callable[[int, float | None], None]:
        def invalidate(generation: int, received_at: float | None) -> None:
            change = store.last_change
            if change.full:
                names = self.names
                for key, gone in self._cache.items():
                    names.add(key, gone.rcode, gone.asked)
                self._cache.clear()
                self._tags.clear()
                self._memo.clear()
                return
            tags = self._tags
            drop: set[bytes] = tags.pop(_ANY, set())
            for ns, name in change.services:
                drop |= tags.pop((domain, ns, name), set())
            for address in change.addresses:
                drop |= tags.pop(("ip", address), set())
            for ns in change.pods:
                drop |= tags.pop(pod_tag(domain, ns), set())
            cache = self._cache
            names = self.names
            for key in drop:
                entry = cache.pop(key, None)
                if entry is not None:
                    entry.live = False
                    names.add(key, entry.rcode, entry.asked)

        return invalidate

    def __len__(self) -> int:
        return len(self._cache)

    async def names_digest(self) -> Rows:
        """Answers by (name, rcode) since the start, the cached entries' and the others'."""
        return await self.names.digest(list(self._cache.items()))

    def respond(self, data: bytes, udp: bool) -> bytes | Action | None:
        """The response to one query packet, or None when it gets no answer.

        An `Action` instead of bytes asks the transport to do what a single response cannot:
        forward the query upstream (`FORWARD`, only with a forwarder) or stream a zone transfer
        (`TRANSFER`, only over TCP to allowed clients, which the transport checks).
        """
        if udp:
            # The memo first (see the module's docstring): the same bytes but for the ID as a
            # query `_fast` answered, whose entry is still cached and unchanged.
            hit = self._memo.get(data[2:])
            if hit is not None:
                cached, encoded, tail, qtype, rotation = hit
                if cached.live:
                    if cached.serial_at >= 0:
                        cached.refresh_serial()
                    if cached.response is encoded:
                        self.hits += 1
                        cached.asked += 1
                        self.qtype = qtype
                        self._rcodes[cached.rcode] += 1
                        if rotation is not None:
                            return data[:2] + tail + rotation.next_body()
                        return data[:2] + tail
        response = self._fast(data, udp)
        if response is not None:
            self.hits += 1
            return response
        self.qtype = 0
        try:
            query = parse_query(data)
        except Drop:
            return None
        except Refuse as refused:
            self.count(refused.rcode)
            return refused.reply
        self.qtype = query.qtype
        if query.qtype in (QTYPE.AXFR, QTYPE.IXFR) and query.qclass == 1:
            # Never cached: whether it is allowed depends on the client, not the question.
            # IXFR gets the whole zone, as RFC 1995 section 4 lets a server without history.
            if not udp and self.engine.is_apex(query.labels):
                return TRANSFER
            return self._uncached(query, self._respond(query, None), udp)
        if self.forwarding and query.qclass == 1 and not self.engine.is_local_labels(query.labels):
            self.forwarded = query.key
            return FORWARD
        entry = self._cache.get(query.key)
        if entry is None:
            self.misses += 1
            entry = self._answer(query)
            if entry.chase is not None:
                qend = 12 + len(query.name) + 4
                limit = limit_for(query, self.max_udp) if udp else 65535
                full = _assemble(data, entry, qend, 65535, query.edns)
                return Chase(full, entry.chase, query.qtype, limit, qend - 12, query.edns)
        else:
            self.hits += 1  # a cached name asked in a form the fast path leaves alone
            entry.asked += 1
            self.count(entry.rcode)
            if entry.serial_at >= 0:
                entry.refresh_serial()
        qend = 12 + len(query.name) + 4
        limit = limit_for(query, self.max_udp) if udp else 65535
        return _assemble(data, entry, qend, limit, query.edns)

    def _fast(self, data: bytes, udp: bool) -> bytes | None:
        """Answer a plain query for a cached question without decoding it; None otherwise.

        Accepts exactly what `parse_query` accepts and nothing more: one question, nothing in
        the answer and authority sections, at most one OPT record (version 0, well-formed
        options). Anything else takes the full path.

        Over UDP, what it answers goes into the memo that `respond` looks at first.
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
        self.qtype = qtype = data[qend - 4] << 8 | data[qend - 3]
        entry.asked += 1
        self.count(entry.rcode)
        if entry.serial_at >= 0:
            entry.refresh_serial()
        if not udp:
            return _assemble(data, entry, qend, 65535, ar == 1)
        out = _assemble(data, entry, qend, limit, ar == 1)
        if n > MEMO_MAX_QUERY:
            return out
        memo = self._memo
        if len(memo) >= self.cache_size:
            memo.clear()
        rotation = entry.rotation  # planned by `_assemble` when served whole
        if rotation is not None and len(entry.response) <= limit:
            # Kept up to the question's end; each hit adds the next order's body.
            memo[data[2:]] = (entry, entry.response, out[2:qend], qtype, rotation)
        else:
            memo[data[2:]] = (entry, entry.response, out[2:], qtype, None)
        return out

    def _uncached(self, query: Query, answer: Answer, udp: bool) -> bytes:
        self.count(answer.rcode)
        entry = _Entry(encode(query, answer, max_udp=self.max_udp), answer.rcode)
        limit = limit_for(query, self.max_udp) if udp else 65535
        return _assemble(query.data, entry, 12 + len(query.name) + 4, limit, query.edns)

    def _answer(self, query: Query) -> _Entry:
        # One parse and one decision, read by the encoders and the cache tag alike.
        req = self.engine.parse(query.labels)
        res = self.engine.decide(req) if _answerable(query) else None
        # Large positive answers (a service's addresses, SRV) are written straight from the
        # store, byte for byte what the engine and dnslib give
        # (kdns/dns/large_answers.py); None: the rest.
        response = None
        # Stale data says so in every answer (an EDE), which the large-answer encoder does not
        # write: it steps aside then.
        if res is not None and self.engine.unreachable_since(res) is None:
            response = encode_bulk(self.engine, query, self.max_udp, res, self._bodies)
        if response is not None:
            answer = Answer()  # NOERROR, nothing that needs a serial or a wider cache tag
        else:
            answer = self._respond(query, res)
            response = encode(query, answer, max_udp=self.max_udp)
            if len(response) > 65535:
                response = _fit(query, answer, self.max_udp)
        entry = _Entry(response, answer.rcode, asked=1)
        if self.forwarding and answer.outside:
            entry.chase = answer.outside
            self.count(answer.rcode)
            self.names.add(query.key, answer.rcode, 1)  # never cached: counted at once
            return entry
        if self.rotate != "off" and response[6:8] > b"\x00\x01" and len(response) <= 65535:
            entry.unplanned = functools.partial(self._rotation, query, res, answer, response)
        self.count(answer.rcode)
        last = (answer.additional or answer.authority or answer.answer or [None])[-1]
        if last is not None and last.rtype == QTYPE.SOA:
            # The serial is the first of the SOA's five numbers, which end the message (the OPT
            # record, when there is one, comes after them).
            opt = 11 + len(ede_option(answer.ede)) if query.edns else 0
            entry.serial_at = len(response) - opt - 20
            entry.serial_of = self.engine.serial_of(str(last.rname).rstrip(".").lower())
            entry.serial = entry.serial_of()
        cache = self._cache
        if len(cache) >= self.cache_size:
            # Drop the oldest tenth: dicts keep insertion order, and an answer asked for since
            # would have been inserted again only after a change, so age is a fair guess.
            for key in list(itertools.islice(cache, self.cache_size // 10 + 1)):
                old = cache.pop(key)
                old.live = False
                self.names.add(key, old.rcode, old.asked)
                if old.tag is not None:
                    self._tags.get(old.tag, set()).discard(key)
        cache[query.key] = entry
        tag = tag_of(req)
        if any(rr.rtype == QTYPE.CNAME for rr in answer.answer):
            tag = _ANY
        if tag is not None:
            entry.tag = tag
            self._tags.setdefault(tag, set()).add(query.key)
        return entry

    def _rotation(
        self, query: Query, res: Resolution | None, answer: Answer, response: bytes
    ) -> Rotation | None:
        """The orders of a response with two or more answer records (see `kdns.serve.rotation`):
        its bytes cut apart, or else its answer encoded again per order."""
        lead = lead_of(res, query.qtype)
        rotation = plan(response, 12 + len(query.name) + 4, query.qtype, self.rotate, lead)
        if rotation is not None:
            return rotation
        # The large-answer encoder leaves no records (and may order them its own way): get the
        # engine's, and encode every order from them, the first too.
        encoded_from_records = bool(answer.answer)
        if not encoded_from_records:
            answer = self._respond(query, res)
        count = orders(turnable(answer.answer, query.qtype), lead)
        if count < 2 or count > KEEP_BUILT:
            # Past KEEP_BUILT records, each order kept would be another copy of a large answer
            # (and its encoding a large cost): such answers keep their one order.
            return None
        records, qtype, max_udp = answer.answer, query.qtype, self.max_udp

        def build(k: int) -> bytes:
            if k == 0 and encoded_from_records:
                return response
            moved = dataclasses.replace(answer, answer=turned(records, qtype, k, lead))
            encoded = encode(query, moved, max_udp=max_udp)
            # An answer cut to fit a TCP message (`_fit`) keeps the one order it was cut to.
            return encoded if len(encoded) <= 65535 else response

        head = response[: 12 + len(query.name) + 4]
        return Rotation(lambda k: build(k)[len(head) :], head, count, self.rotate)

    def resolve(self, query: Query) -> Answer:
        """The engine's answer to a decoded query, before encoding (the full path)."""
        res = self.engine.decide(self.engine.parse(query.labels)) if _answerable(query) else None
        return self._respond(query, res)

    def _respond(self, query: Query, res: Resolution | None) -> Answer:
        if res is None:
            return Answer(RCODE.REFUSED, authoritative=False)
        return self.engine.respond(res, DNSLabel(query.labels), query.qtype)


def _answerable(query: Query) -> bool:
    """Class IN, and not a zone transfer (AXFR is served apart, over TCP, to those allowed)."""
    return query.qclass == 1 and query.qtype not in (QTYPE.AXFR, QTYPE.IXFR)


def _assemble(data: bytes, entry: _Entry, qend: int, limit: int, edns: bool) -> bytes:
    """A cached response, given this query's ID, RD and CD flags and question spelling."""
    response = entry.response
    # An answer too large for this client is sent truncated (TC=1, the records that fit, in
    # the first order): it neither needs the orders nor moves the turn on. Every order has the
    # first order's records (the same length, but for an order encoded again, whose
    # compression may differ: checked).
    if len(response) <= limit and (entry.rotation is not None or entry.unplanned is not None):
        rotation = entry.rotated()
        if rotation is not None:
            response = rotation.next()
    if len(response) > limit:
        short = entry.short
        if short is None:
            short = entry.short = {}
        cut = short.get(limit)  # 512 without EDNS, the client's size with it
        if cut is None:
            cut = short[limit] = truncated(entry.response, qend - 12, edns, limit)
        response = cut
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
