"""Forwarding names outside kdns's zones to upstream resolvers (`--upstream`), for laptop use.

One job: a query packet in, the upstream's answer out, cached. Design decisions:

- **Our own query upstream.** The client's question goes upstream under a fresh random ID, with
  RD set and an EDNS OPT of our own (payload 1232, the client's DO bit, the client's CD bit).
  A random ID per upstream query makes a spoofed reply harder to land than the client's (often
  predictable) ID would, and every client then gets replies of one shape: the cache key is the
  lower-cased question plus the DO and CD bits, not the client's EDNS details.
- **Without EDNS for servers that refuse it.** An upstream that answers FORMERR to our query
  (which always carries an OPT) is asked once more without the OPT record, and that answer is
  the one relayed: RFC 6891 section 7's fallback for servers that do not implement EDNS. The
  client's own query was well formed, so passing the FORMERR on would blame it for our OPT.
- **UDP, then TCP when TC=1.** Each UDP query uses a connected socket on a fresh ephemeral port
  (source-port randomisation); replies whose ID or question do not match are ignored, as are
  replies that are not well formed. A truncated reply is asked again over TCP.
- **Fail over in order.** Upstreams are tried in the order given; one that times out, refuses
  the connection or answers garbage is marked down for `DOWN_FOR` seconds, and the next is
  tried. Healthy upstreams are always tried first, upstreams marked down only as a last resort.
  An upstream answering REFUSED is skipped too (a resolver that does not recurse for us); its
  REFUSED is returned only when no other upstream gives anything better.
- **When nothing answers, SERVFAIL** (never None): the client hears at once that resolution
  failed, instead of waiting out its own timeout, which is what CoreDNS's `forward` does too.
  `forward()` returns None only for a packet it cannot read at all (to be dropped).
- **Cache with cachetools, per-entry TTL** (`TLRUCache`): the smallest TTL of any record in the
  reply, so no record is ever served past its own TTL; negative answers (NXDOMAIN, NODATA) by
  the SOA minimum capped by the SOA's own TTL (RFC 2308 section 5), and not at all without an
  SOA; every TTL capped at `MAX_TTL`. SERVFAIL, REFUSED, FORMERR and truncated replies are never
  cached. A hit gets this query's ID, RD bit and question spelling copied in and every TTL
  decreased by the time spent in the cache; the OPT record is removed for a client that sent none.
- **Identical queries in flight share one upstream transaction** (coalescing): a burst of clients
  asking the same uncached name costs one upstream query, and a forwarding loop through an
  upstream that rewrites IDs (dnsmasq, systemd-resolved) cannot multiply: the looped query joins
  the transaction it came from, which then times out and fails over.
- **Loop detection.** At construction an upstream equal to one of kdns's own listen addresses is
  refused (`ConfigError`); wildcard listeners count every local address. At run time kdns
  remembers the (ID, name) of every query it has in flight upstream, and also tags each one with
  a private EDNS option (code `LOOP_OPTION`, from the local/experimental range, holding a random
  per-process nonce and the ID; RFC 6891 says resolvers ignore unknown options, and forwarders
  that relay the message keep it: CoreDNS 1.14's `forward` replaces the ID but keeps the option,
  so the (ID, name) check alone would miss a loop through CoreDNS). A query arriving that
  matches one in flight is our own, sent back to us: it gets SERVFAIL, and when the upstream
  then fails the original query (with that SERVFAIL, or by timing out) the upstream is marked
  as looping for the life of the process, logged once, and skipped. The confirmation step means
  a client that happens to pick the same random ID for the same name costs that client one
  SERVFAIL, never an upstream.
- **Bounded:** at most `MAX_PENDING` queries waiting for an upstream at once; beyond that, SERVFAIL.

Everything runs on the event loop thread; nothing here blocks it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import socket
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cachetools import TLRUCache

from kdns.config import ConfigError, parse_hostport
from kdns.dns.wire import (
    DEFAULT_MAX_UDP,
    OPT_TYPE,
    Drop,
    Refuse,
    limit_for,
    opt_record,
    parse_query,
    skip_name,
)

log = logging.getLogger(__name__)

#: How long one exchange with an upstream may take by default (UDP, and TCP each), in seconds.
TIMEOUT = 2.0
#: Longest time any forwarded answer is cached, and the largest TTL a cached negative answer gets.
MAX_TTL = 3600
#: How long an upstream that failed is tried only after the healthy ones.
DOWN_FOR = 10.0
#: Forwarded queries waiting at most (those sharing one upstream transaction included); further
#: queries get SERVFAIL at once. The one bound on forwarding (the server keeps no other).
MAX_PENDING = 1000
#: The EDNS option that tags kdns's own upstream queries (local/experimental range, RFC 6891).
LOOP_OPTION = 65431
DEFAULT_PORT = 53
RESOLV_CONF = Path("/etc/resolv.conf")

_HEADER = struct.Struct("!HHHHHH")
_QR, _TC, _RD, _AD, _CD = 0x8000, 0x0200, 0x0100, 0x0020, 0x0010
_NOERROR, _FORMERR, _SERVFAIL, _NXDOMAIN, _REFUSED = 0, 1, 2, 3, 5
_SOA = 6
_CACHEABLE = (_NOERROR, _NXDOMAIN)
_NO_TRANSFER = (251, 252)  # IXFR, AXFR


# -- reading replies -------------------------------------------------------------------------------


class _Malformed(ValueError):
    """A reply kdns cannot walk."""


def _skip_name(data: bytes, i: int) -> int:
    """Offset just past the (possibly compressed) name at `i`."""
    try:
        return skip_name(data, i)
    except ValueError as err:
        raise _Malformed(str(err)) from None


@dataclass(slots=True)
class _Walk:
    """Where the parts of a message are: enough to patch it without re-encoding."""

    flags: int
    qend: int  # offset just past the question
    #: (offset of the TTL field, TTL) of every record but OPT, in order.
    ttls: list[tuple[int, int]]
    answers: int
    opt: tuple[int, int] | None  # [start, end) of the OPT record
    opt_options: bytes  # the OPT record's rdata
    #: (TTL, minimum) of the first SOA in the authority section.
    soa: tuple[int, int] | None

    @property
    def rcode(self) -> int:
        return self.flags & 0xF


def _walk(data: bytes) -> _Walk:
    """Walk a message with exactly one question; `_Malformed` when it cannot be read."""
    if len(data) < 12:
        raise _Malformed("shorter than a header")
    _id, flags, qd, an, ns, ar = _HEADER.unpack_from(data)
    if qd != 1:
        raise _Malformed("not one question")
    i = _skip_name(data, 12) + 4
    if i > len(data):
        raise _Malformed("truncated question")
    qend = i
    ttls: list[tuple[int, int]] = []
    opt: tuple[int, int] | None = None
    options = b""
    soa: tuple[int, int] | None = None
    for n in range(an + ns + ar):
        start = i
        i = _skip_name(data, i)
        if i + 10 > len(data):
            raise _Malformed("truncated record")
        rtype, _rclass, ttl, rdlen = struct.unpack_from("!HHIH", data, i)
        rdata = i + 10
        end = rdata + rdlen
        if end > len(data):
            raise _Malformed("truncated rdata")
        if rtype == OPT_TYPE:
            if opt is not None or n < an + ns:
                raise _Malformed("misplaced or second OPT record")
            opt = (start, end)
            options = data[rdata:end]
        else:
            ttls.append((i + 4, ttl))
            if rtype == _SOA and an <= n < an + ns and soa is None:
                if rdlen < 22:
                    raise _Malformed("short SOA")
                soa = (ttl, struct.unpack_from("!I", data, end - 4)[0])
        i = end
    if i != len(data):
        raise _Malformed("trailing bytes")
    return _Walk(flags, qend, ttls, an, opt, options, soa)


def _options(rdata: bytes) -> Iterable[tuple[int, bytes]]:
    j = 0
    while j + 4 <= len(rdata):
        code, length = struct.unpack_from("!HH", rdata, j)
        yield code, rdata[j + 4 : j + 4 + length]
        j += 4 + length


def cache_ttl(reply: bytes) -> int:
    """How long a reply may be cached (0: not at all). See the module docstring."""
    try:
        walk = _walk(reply)
    except _Malformed:
        return 0
    return _ttl(walk)


def _ttl(walk: _Walk) -> int:
    if walk.rcode not in _CACHEABLE or walk.flags & _TC:
        return 0
    ttls = [ttl for _, ttl in walk.ttls]
    if walk.rcode == _NXDOMAIN or walk.answers == 0:
        if walk.soa is None:
            return 0  # RFC 2308 section 5: no SOA, no negative caching
        ttls = [ttl for _, ttl in walk.ttls[: walk.answers]]
        ttls.append(min(walk.soa))
    if not ttls:
        return 0
    return max(0, min(MAX_TTL, *ttls))


# -- building messages -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Question:
    """What forwarding needs of a client's query."""

    id: int
    flags: int
    name: bytes  # wire format, as the client spelled it
    qtype: int
    qclass: int
    edns: bool
    do: bool
    limit: int  # the largest UDP reply this client takes
    loop_tag: bytes  # the value of our loop option in this query, b"" when absent

    @property
    def question(self) -> bytes:
        return self.name + struct.pack("!HH", self.qtype, self.qclass)

    @property
    def key(self) -> bytes:
        bits = (1 if self.do else 0) | (2 if self.flags & _CD else 0)
        return self.question.lower() + bytes((bits,))


def _read_question(data: bytes) -> _Question | None:
    try:
        query = parse_query(data)
    except (Drop, Refuse):
        return None
    tag = b""
    if query.edns:
        # parse_query checked the whole packet; the OPT record is the last additional record.
        with contextlib.suppress(_Malformed):
            walk = _walk(data)
            for code, value in _options(walk.opt_options):
                if code == LOOP_OPTION:
                    tag = value
    return _Question(
        query.id,
        query.flags,
        query.name,
        query.qtype,
        query.qclass,
        query.edns,
        query.do,
        limit_for(query, DEFAULT_MAX_UDP),
        tag,
    )


def _error_reply(q: _Question, rcode: int) -> bytes:
    """A reply with no records: the question back, RA set, OPT when the client sent one."""
    flags = _QR | 0x0080 | (q.flags & (0x7800 | _RD | _CD)) | rcode
    opt = opt_record(DEFAULT_MAX_UDP, q.do) if q.edns else b""
    return _HEADER.pack(q.id, flags, 1, 0, 0, 1 if opt else 0) + q.question + opt


def _upstream_query(q: _Question, qid: int, tag: bytes | None) -> bytes:
    """Our query for `q`: with an OPT carrying the loop option `tag`, or none when `tag` is None
    (the retry for a server that does not implement EDNS)."""
    flags = _RD | (q.flags & _CD)
    if tag is None:
        return _HEADER.pack(qid, flags, 1, 0, 0, 0) + q.question
    option = struct.pack("!HH", LOOP_OPTION, len(tag)) + tag
    ttl = 0x8000 if q.do else 0
    opt = b"\x00" + struct.pack("!HHIH", OPT_TYPE, DEFAULT_MAX_UDP, ttl, len(option)) + option
    return _HEADER.pack(qid, flags, 1, 0, 0, 1) + q.question + opt


def _personalise(reply: bytes, walk: _Walk, q: _Question, elapsed: int, udp: bool) -> bytes:
    """`reply` as an answer to `q`: its ID, RD bit and spelling, aged TTLs, its EDNS state."""
    out = bytearray(reply)
    flags = (walk.flags & ~(_RD | _TC)) | (q.flags & _RD)
    if not q.do and not q.flags & _AD:
        flags &= ~_AD  # RFC 6840 5.8: AD only for clients that asked for it
    struct.pack_into("!HH", out, 0, q.id, flags)
    out[12 : 12 + len(q.name)] = q.name
    for offset, ttl in walk.ttls:
        struct.pack_into("!I", out, offset, max(0, min(ttl, MAX_TTL) - elapsed))
    if walk.opt is not None:
        start, end = walk.opt
        if q.edns:
            struct.pack_into("!H", out, start + 3, DEFAULT_MAX_UDP)
        elif end == len(out):
            del out[start:end]  # nothing can point into an OPT record; it is last
            struct.pack_into("!H", out, 10, struct.unpack_from("!H", out, 10)[0] - 1)
        else:
            return _error_reply(q, _SERVFAIL)  # an OPT in the middle: not worth re-encoding
    elif q.edns:
        out += opt_record(DEFAULT_MAX_UDP, q.do)  # the upstream left it out; RFC 6891 6.1.1
        struct.pack_into("!H", out, 10, struct.unpack_from("!H", out, 10)[0] + 1)
    if udp and len(out) > q.limit:
        opt = opt_record(DEFAULT_MAX_UDP, q.do) if q.edns else b""
        head = _HEADER.pack(q.id, flags | _TC, 1, 0, 0, 1 if opt else 0)
        return head + bytes(out[12 : walk.qend]) + opt
    return bytes(out)


# -- upstreams -------------------------------------------------------------------------------------


@dataclass(slots=True)
class Upstream:
    """One upstream resolver and what kdns has seen of it (read by the metrics collector)."""

    host: str
    port: int
    requests: int = 0
    failures: int = 0  # timeouts, refused connections, unreadable replies
    #: replies by rcode
    responses: dict[int, int] = field(default_factory=dict)
    down_until: float = 0.0
    looping: bool = False

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(slots=True)
class _Flight:
    upstream: Upstream
    suspect: bool = False  # a query matching this one came back to us


@dataclass(slots=True)
class _Entry:
    reply: bytes
    walk: _Walk
    stored: float
    ttl: int


class _UdpClient(asyncio.DatagramProtocol):
    def __init__(self, qid: int, question: bytes) -> None:
        self.qid = qid
        self.question = question.lower()
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.reply.done() or not _matches(data, self.qid, self.question):
            return  # late, spoofed or for someone else: keep waiting
        self.reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc or ConnectionError("closed"))


def _matches(data: bytes, qid: int, question: bytes) -> bool:
    if len(data) < 12 + len(question):
        return False
    rid, flags, qd = struct.unpack_from("!HHH", data)
    return (
        rid == qid
        and bool(flags & _QR)
        and qd == 1
        and data[12 : 12 + len(question)].lower() == question
    )


class Forwarder:
    """Forwards queries for names outside kdns's zones to `upstreams`, with a cache.

    `timeout`: seconds one exchange with an upstream may take (the UDP query, and the TCP one
    after a truncated reply, each) before that upstream counts as failed and the next is tried.
    `own`: kdns's listen addresses; an upstream among them is a loop and refused at once (call
    `set_own()` again once port-0 listeners know their port). `cache_size` 0 turns the cache
    off. `clock` is for tests.
    """

    def __init__(
        self,
        upstreams: Sequence[tuple[str, int]],
        *,
        timeout: float = TIMEOUT,
        cache_size: int = 10000,
        own: Sequence[tuple[str, int]] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not upstreams:
            raise ConfigError("--upstream: no upstream resolver given")
        if timeout <= 0:
            raise ConfigError("the upstream timeout must be positive")
        self.upstreams = [Upstream(host, port) for host, port in dict.fromkeys(upstreams)]
        self.timeout = timeout
        self.clock = clock
        self.set_own(own)
        self._cache: TLRUCache[bytes, _Entry] = TLRUCache(
            maxsize=cache_size, ttu=lambda _k, entry, now: now + entry.ttl, timer=clock
        )
        self._nonce = secrets.token_bytes(8)
        self._flights: dict[tuple[int, bytes], _Flight] = {}
        self._pending: dict[bytes, asyncio.Future[tuple[bytes, _Walk] | None]] = {}
        #: Queries in `forward` past the cache, waiting for an upstream (bounded: MAX_PENDING).
        self.waiting = 0
        self._loops_logged: set[str] = set()
        self.hits = 0
        self.misses = 0
        self.loops = 0  # queries of ours that came back

    # -- configuration ------------------------------------------------------------------------

    def set_own(self, own: Iterable[tuple[str, int]]) -> None:
        """Declare kdns's listen addresses; ConfigError when an upstream is one of them."""
        own = list(own)
        for up in self.upstreams:
            for host, port in own:
                if port == up.port and _same_host(host, up.host):
                    raise ConfigError(
                        f"--upstream {up} is kdns's own listen address {host}:{port}: "
                        "forwarding there would loop"
                    )
        self.own = own

    @property
    def cache_entries(self) -> int:
        return len(self._cache)

    # -- the query path -----------------------------------------------------------------------

    async def forward(self, data: bytes, *, udp: bool = True) -> bytes | None:
        """The answer to the query packet `data` (None: unreadable, drop it).

        `udp`: the client asked over UDP, so a reply larger than it takes is sent truncated.
        """
        q = _read_question(data)
        if q is None:
            return None
        flight = self._looped(q)
        if flight is not None:
            self.loops += 1
            flight.suspect = True
            log.debug("query %s came back from %s: loop suspected", _show(q.name), flight.upstream)
            return _error_reply(q, _SERVFAIL)
        if q.qtype in _NO_TRANSFER:
            return _error_reply(q, _REFUSED)
        key = q.key
        entry = self._cache.get(key)
        if entry is not None:
            self.hits += 1
            elapsed = int(self.clock() - entry.stored)
            return _personalise(entry.reply, entry.walk, q, elapsed, udp)
        self.misses += 1
        if self.waiting >= MAX_PENDING:
            return _error_reply(q, _SERVFAIL)
        self.waiting += 1
        try:
            return await self._upstream(q, key, udp)
        finally:
            self.waiting -= 1

    async def _upstream(self, q: _Question, key: bytes, udp: bool) -> bytes:
        pending = self._pending.get(key)
        if pending is not None:
            result = await asyncio.shield(pending)  # the same question is already upstream
        else:
            pending = asyncio.get_running_loop().create_future()
            self._pending[key] = pending
            result = None
            try:
                result = await self._resolve(q)
            finally:
                del self._pending[key]
                pending.set_result(result)  # None when cancelled: the joiners get SERVFAIL
            if result is not None:
                ttl = _ttl(result[1])
                if ttl > 0 and self._cache.maxsize > 0:
                    self._cache[key] = _Entry(result[0], result[1], self.clock(), ttl)
        if result is None:
            return _error_reply(q, _SERVFAIL)
        return _personalise(result[0], result[1], q, 0, udp)

    # -- loops --------------------------------------------------------------------------------

    def _looped(self, q: _Question) -> _Flight | None:
        name = q.name.lower()
        flight = self._flights.get((q.id, name))
        if flight is None and len(q.loop_tag) == 10 and q.loop_tag[:8] == self._nonce:
            (qid,) = struct.unpack("!H", q.loop_tag[8:])
            flight = self._flights.get((qid, name))
        return flight

    def _loop_confirmed(self, up: Upstream) -> None:
        up.looping = True
        if str(up) not in self._loops_logged:
            self._loops_logged.add(str(up))
            log.error(
                "forwarding loop: upstream %s sent kdns's own query back to it; "
                "no longer forwarding there (check that it does not forward to kdns)",
                up,
            )

    # -- upstream transactions ----------------------------------------------------------------

    def _candidates(self) -> list[Upstream]:
        now = self.clock()
        usable = [u for u in self.upstreams if not u.looping]
        return [u for u in usable if u.down_until <= now] + [
            u for u in usable if u.down_until > now
        ]

    async def _resolve(self, q: _Question) -> tuple[bytes, _Walk] | None:
        """Ask the upstreams in turn; the first usable reply, else the last REFUSED, else None."""
        refused: tuple[bytes, _Walk] | None = None
        for up in self._candidates():
            result = await self._ask(up, q, edns=True)
            if result is not None and result[1].rcode == _FORMERR:
                # Only once: a server that cannot read a plain query either is relayed as is.
                result = await self._ask(up, q, edns=False)
            if result is None:
                continue
            if result[1].rcode == _REFUSED:
                refused = result
                continue
            return result
        return refused

    async def _ask(self, up: Upstream, q: _Question, *, edns: bool) -> tuple[bytes, _Walk] | None:
        """One transaction with `up`: its reply, or None when it gave none worth using (it is
        then marked down, or as looping)."""
        name = q.name.lower()
        qid = self._new_id(name)
        # Without EDNS there is no loop option: only the (ID, name) check guards that query.
        tag = self._nonce + struct.pack("!H", qid) if edns else None
        packet = _upstream_query(q, qid, tag)
        flight = _Flight(up)
        self._flights[(qid, name)] = flight
        up.requests += 1
        try:
            reply = await self._exchange(up, packet, qid, q.question)
            walk = _walk(reply) if reply is not None else None
        except _Malformed as err:
            log.debug("unreadable reply from %s: %s", up, err)
            reply, walk = None, None
        finally:
            del self._flights[(qid, name)]
        if walk is None or reply is None:
            if flight.suspect:
                self._loop_confirmed(up)
            else:
                up.failures += 1
                up.down_until = self.clock() + DOWN_FOR
            return None
        up.responses[walk.rcode] = up.responses.get(walk.rcode, 0) + 1
        if flight.suspect:
            if walk.rcode == _SERVFAIL:
                self._loop_confirmed(up)
                return None
            log.debug("query of %s matched one in flight by chance", _show(q.name))
        up.down_until = 0.0
        return reply, walk

    def _new_id(self, name: bytes) -> int:
        while True:
            qid = secrets.randbelow(1 << 16)
            if (qid, name) not in self._flights:
                return qid

    async def _exchange(
        self, up: Upstream, packet: bytes, qid: int, question: bytes
    ) -> bytes | None:
        """The reply of `up` to `packet`: UDP, then TCP if truncated. None on failure."""
        loop = asyncio.get_running_loop()
        transport: asyncio.DatagramTransport | None = None
        try:
            async with asyncio.timeout(self.timeout):
                transport, client = await loop.create_datagram_endpoint(
                    lambda: _UdpClient(qid, question), remote_addr=up.address
                )
                transport.sendto(packet)
                reply = await client.reply
        except (TimeoutError, OSError) as err:
            log.debug("upstream %s over udp: %s", up, err or "timeout")
            return None
        finally:
            if transport is not None:
                transport.close()
        if not struct.unpack_from("!H", reply, 2)[0] & _TC:
            return reply
        return await self._exchange_tcp(up, packet, qid, question)

    async def _exchange_tcp(
        self, up: Upstream, packet: bytes, qid: int, question: bytes
    ) -> bytes | None:
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_connection(*up.address)
                writer.write(struct.pack("!H", len(packet)) + packet)
                await writer.drain()
                while True:
                    (size,) = struct.unpack("!H", await reader.readexactly(2))
                    reply = await reader.readexactly(size)
                    if _matches(reply, qid, question.lower()):
                        return reply
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as err:
            log.debug("upstream %s over tcp: %s", up, err or "timeout")
            return None
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()


def _show(name: bytes) -> str:
    labels = []
    i = 0
    while i < len(name) and name[i]:
        labels.append(name[i + 1 : i + 1 + name[i]].decode("latin-1"))
        i += 1 + name[i]
    return ".".join(labels) + "."


# -- addresses -------------------------------------------------------------------------------------


def _normal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _is_local(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for an address of this machine (loopback, unspecified, or one it can bind)."""
    if ip.is_loopback or ip.is_unspecified:
        return True
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.bind((str(ip), 0))
    except OSError:
        return False
    return True


def _same_host(listen: str, upstream: str) -> bool:
    """Would a query sent to `upstream` reach a socket listening on `listen`?"""
    if listen == upstream:
        return True
    lip, uip = _normal(listen), _normal(upstream)
    if lip is None or uip is None:
        return False
    if lip.is_unspecified:
        return lip.version == uip.version and _is_local(uip)
    return lip == uip


def parse_upstream(
    text: str,
    *,
    own: Iterable[tuple[str, int]] = (),
    resolv_conf: Path = RESOLV_CONF,
) -> list[tuple[str, int]]:
    """The upstreams `--upstream TEXT` names.

    `ADDR`, `ADDR:PORT`, `[IPv6]:PORT` (port 53 by default; an IP literal, since the address of
    a DNS server cannot itself need DNS), or the word `resolv.conf`: the nameservers of
    `resolv_conf` except kdns's own addresses `own` (ConfigError when none is left).
    """
    text = text.strip()
    if text == "resolv.conf":
        return _from_resolv_conf(resolv_conf, list(own))
    host, port = parse_hostport(text, default_port=DEFAULT_PORT)
    if _normal(host) is None:
        raise ConfigError(f"bad --upstream {text!r}: expected an IP address, optionally :PORT")
    if port == 0:
        raise ConfigError(f"bad --upstream {text!r}: port 0")
    return [(host, port)]


def _from_resolv_conf(path: Path, own: list[tuple[str, int]]) -> list[tuple[str, int]]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise ConfigError(
            f"--upstream resolv.conf: cannot read {path}: {err.strerror or err}"
        ) from None
    found: list[tuple[str, int]] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver" and _normal(words[1]) is not None:
            found.append((words[1], DEFAULT_PORT))
    kept = [(h, p) for h, p in found if not any(p == op and _same_host(oh, h) for oh, op in own)]
    if not kept:
        what = "no nameserver" if not found else "only kdns itself as nameserver"
        raise ConfigError(f"--upstream resolv.conf: {path} lists {what}")
    return list(dict.fromkeys(kept))
