"""UDP and TCP: getting query bytes to the responder and response bytes back.

Both protocols are asyncio `Protocol`s rather than streams: a datagram is answered inside
`datagram_received` with no task, no future and no copy beyond the response itself, which is most
of the difference between 18,000 and 60,000+ queries a second on one core.

Limits live here because they are about connections and clients, not about DNS: the number of
TCP connections (at the cap, the quietest connection makes room for a new one), the idle timeout
(which also drops a client that sends half a length prefix and stalls), pausing reads while a
client does not read its answers, and per-prefix response-rate limiting on UDP. (The bound on
forwarded queries waiting for an upstream is the forwarder's: `kdns.ops.forward.MAX_PENDING`.)
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter
from typing import Protocol

from kdns.dns.wire import describe_packet, refused_for, servfail_for, slipped
from kdns.serve.acl import QueryAcl
from kdns.serve.autopath import AutoPath
from kdns.serve.ratelimit import SLIP, RateLimiter
from kdns.serve.responder import FORWARD, TRANSFER, Action, Chase, Responder
from kdns.serve.stats import QueryCounters
from kdns.serve.tally import ClientTally

log = logging.getLogger(__name__)
querylog = logging.getLogger("kdns.query")


def _log_query(
    client: str, proto: str, query: bytes, response: bytes | None, started: float
) -> None:
    name, qtype, rcode = describe_packet(query, response)
    querylog.info(
        "client=%s proto=%s name=%s type=%s rcode=%s duration_us=%d",
        client,
        proto,
        name,
        qtype,
        rcode,
        (time.perf_counter() - started) * 1e6,
    )


Reply = Callable[[bytes | None], None]


class Forward(Protocol):
    """How a transport hands a query upstream: `forward(query, reply, udp=..., family=...)`,
    or an ExternalName's target (`chase`)."""

    def __call__(
        self, query: bytes, reply: Reply, *, udp: bool, family: int = 4, chase: Chase | None = None
    ) -> None: ...


@dataclass(eq=False)
class TransportState:
    """What the UDP and TCP protocols read and share, and nothing else of the server.

    The server (or a serving process) builds one; every protocol instance reads the same one, and
    the TCP ones keep their connection table in it.
    """

    responder: Responder
    stats: QueryCounters
    #: Sends a query upstream; the reply callback gets the answer or SERVFAIL.
    forward: Forward
    #: The messages of a zone transfer for (query, client address).
    transfer: Callable[[bytes, str], list[bytes]]
    limiter: RateLimiter | None = None
    #: None when everyone may query: the transports then check nothing.
    acl: QueryAcl | None = None
    log_queries: bool = False
    #: NXDOMAIN responses by client, for the page (--http-show-clients); None: not counted.
    clients: ClientTally | None = None
    #: `--autopath`: walks a pod's search path when its question got NXDOMAIN; None: off.
    autopath: AutoPath | None = None
    tcp_max_connections: int = 1000
    tcp_idle_timeout: float = 10.0
    #: Open TCP connections, least recently active first.
    connections: dict[TcpProtocol, None] = field(default_factory=dict)


def _walked(
    autopath: AutoPath, query: bytes, response: bytes, client: str, udp: bool
) -> bytes | Chase:
    """`response`, or what `--autopath` answers instead when it is an NXDOMAIN."""
    if len(response) > 3 and response[3] & 0xF == 3:
        walked = autopath.walk(query, response, client, udp)
        if walked is not None:
            return walked
    return response


def _family(transport: asyncio.BaseTransport) -> int:
    sock = transport.get_extra_info("socket")
    return 6 if sock is not None and sock.family == socket.AF_INET6 else 4


class UdpProtocol(asyncio.DatagramProtocol):
    """Answers each datagram as it arrives; never raises into the loop."""

    def __init__(self, state: TransportState) -> None:
        self.state = state
        self.responder = state.responder
        self.stats: QueryCounters = state.stats
        self.limiter: RateLimiter | None = state.limiter
        self.acl: QueryAcl | None = state.acl
        self.log_queries = state.log_queries
        self.clients: ClientTally | None = state.clients
        self.transport: asyncio.DatagramTransport | None = None
        self.family = 4
        self.counts = self.stats.counter("udp", 4)
        #: What answers a query on the short path: `_received_plain`, or with
        #: --http-show-clients `_received_counted`.
        self._plain = self._received_plain

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.family = _family(transport)
        self.counts = self.stats.counter("udp", self.family)
        if self.limiter is None and not self.log_queries and self.state.autopath is None:
            # The usual case gets a shorter path: this runs for every query.
            self._sendto = self.transport.sendto  # type: ignore[union-attr]
            if self.clients is not None:
                self._plain = self._received_counted
            if self.acl is None:
                self.datagram_received = self._plain  # type: ignore[method-assign]
            else:
                self._verdict = self.acl.verdicts.get
                self._allows = self.acl.allows
                self.datagram_received = self._received_allowed  # type: ignore[method-assign]

    def _received_allowed(self, data: bytes, addr: tuple[str, int]) -> None:
        """`_received_plain` behind --allow-query."""
        # A source seen before costs one dict lookup, in C; the rest ask the ACL.
        if self._verdict(addr[0]) or self._allows(addr[0]):
            self._plain(data, addr)
        else:
            self._deny(data, addr)

    def _deny(self, data: bytes, addr: tuple[str, int]) -> bytes | None:
        """Turn away a query from a source not allowed; the REFUSED sent, if any."""
        assert self.acl is not None
        self.acl.deny("udp")
        if self.acl.drop:
            return None
        response = refused_for(data)
        self._send(response, addr)
        return response

    def _received_plain(self, data: bytes, addr: tuple[str, int]) -> None:
        """`datagram_received` without rate limiting and query logging."""
        started = perf_counter()
        try:
            response = self.responder.respond(data, True)
        except Exception:
            log.exception("failed to answer a query from %s", addr[0])
            response = servfail_for(data)
        if type(response) is bytes:
            self._sendto(response, addr)
        elif self._not_bytes(data, addr, response):
            return
        self.stats.record(self.counts, self.responder.qtype, started)

    def _received_counted(self, data: bytes, addr: tuple[str, int]) -> None:
        """`_received_plain` that also counts NXDOMAIN responses per client (the page's
        --http-show-clients): one byte test more a query."""
        started = perf_counter()
        try:
            response = self.responder.respond(data, True)
        except Exception:
            log.exception("failed to answer a query from %s", addr[0])
            response = servfail_for(data)
        if type(response) is bytes:
            self._sendto(response, addr)
            if response[3] & 0xF == 3:
                self.clients.nxdomain(addr[0])  # type: ignore[union-attr]
        elif self._not_bytes(data, addr, response):
            return
        self.stats.record(self.counts, self.responder.qtype, started)

    def _not_bytes(self, data: bytes, addr: tuple[str, int], response: object) -> bool:
        """Act on a response that is not bytes; True when it is answered later (forwarded)."""
        if response is FORWARD or type(response) is Chase:
            chase = response if type(response) is Chase else None
            self.state.forward(
                data, self._replier(data, addr), udp=True, family=self.family, chase=chase
            )
            return True
        if isinstance(response, Action):
            self._send(servfail_for(data), addr)  # AXFR over UDP never gets here: REFUSED
        return False

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        started = perf_counter()
        if self.acl is not None and not self.acl.allows(addr[0]):
            refused = self._deny(data, addr)
            if self.log_queries:
                _log_query(addr[0], "udp", data, refused, started)
            return
        verdict: bool | str = True
        if self.limiter is not None:
            verdict = self.limiter.allow(addr[0])
            if not verdict:
                return
        try:
            response = self.responder.respond(data, True)
            if type(response) is bytes and self.state.autopath is not None:
                response = _walked(self.state.autopath, data, response, addr[0], True)
        except Exception:
            log.exception("failed to answer a query from %s", addr[0])
            response = servfail_for(data)
        if type(response) is bytes:
            if verdict is SLIP:
                # RRL slip: a truncated answer makes a real client retry over TCP, where
                # spoofing does not work, while a reflected victim gets only a tiny packet.
                response = slipped(response)
            self._send(response, addr)
            if self.clients is not None and response[3] & 0xF == 3:
                self.clients.nxdomain(addr[0])
        elif self._not_bytes(data, addr, response):
            return
        self.stats.record(self.counts, self.responder.qtype, started)
        if self.log_queries:
            _log_query(addr[0], "udp", data, response if type(response) is bytes else None, started)

    def _replier(self, data: bytes, addr: tuple[str, int]) -> Reply:
        """The callback that sends a forwarded question's answer (and logs it with
        --log-queries, when it is sent)."""
        if not self.log_queries:
            return lambda r: self._send(r, addr)
        started = perf_counter()

        def reply(response: bytes | None) -> None:
            self._send(response, addr)
            _log_query(addr[0], "udp", data, response, started)

        return reply

    def _send(self, response: bytes | None, addr: tuple[str, int]) -> None:
        if response is not None and self.transport is not None:
            self.transport.sendto(response, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a client that went away: nothing to do.
        log.debug("udp error: %s", exc)


class TcpProtocol(asyncio.Protocol):
    """Length-prefixed messages (RFC 1035 4.2.2, RFC 7766); several queries per connection.

    Answers go out in the order questions arrive (IDs identify them, as RFC 7766 allows
    pipelining). A connection that completes no message within the idle timeout is closed.
    """

    def __init__(self, state: TransportState) -> None:
        self.state = state
        self.responder = state.responder
        self.stats = state.stats
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self._timer: asyncio.TimerHandle | None = None
        self.family = 4

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.family = _family(transport)
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else "?"
        acl = self.state.acl
        if acl is not None and not acl.allows(self.peer):
            # Decided once per connection: the source cannot change within it.
            if acl.drop:
                acl.deny("tcp")
                transport.abort()  # type: ignore[attr-defined]
                return
            self._answer = self._refuse  # type: ignore[method-assign]
        conns = self.state.connections
        if len(conns) >= self.state.tcp_max_connections:
            # Full: close the connection that has been quiet longest rather than refuse this
            # one, so clients holding connections open without asking anything (slowloris)
            # cannot lock out a client that has a question now.
            oldest = next(iter(conns))
            oldest.close()
        conns[self] = None
        self._arm()

    def close(self) -> None:
        self.state.connections.pop(self, None)
        if self.transport is not None:
            self.transport.close()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.state.tcp_idle_timeout, self._idle)

    def _idle(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def pause_writing(self) -> None:
        # The client is not reading its answers: stop reading its questions until it does.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        done = False
        while len(self.buffer) >= 2:
            (size,) = struct.unpack_from("!H", self.buffer)
            if len(self.buffer) < 2 + size:
                break
            message = bytes(self.buffer[2 : 2 + size])
            del self.buffer[: 2 + size]
            done = True
            if not self._answer(message):
                return
        if done:
            self._arm()
            # Most recently active last: the connection evicted first is the quietest.
            conns = self.state.connections
            if conns.pop(self, 0) is None:
                conns[self] = None

    def _answer(self, message: bytes) -> bool:
        """Answer one message; False when the connection was closed."""
        started = time.perf_counter()
        try:
            response = self.responder.respond(message, udp=False)
            if type(response) is bytes and self.state.autopath is not None:
                response = _walked(self.state.autopath, message, response, self.peer, False)
        except Exception:
            log.exception("failed to answer a TCP query")
            response = servfail_for(message)
        if response is None:
            # Undecodable on a stream: the framing can no longer be trusted.
            if self.transport is not None:
                self.transport.close()
            return False
        if response is FORWARD or type(response) is Chase:
            chase = response if type(response) is Chase else None
            reply: Reply = self._write
            if self.state.log_queries:

                def logged(answer: bytes | None) -> None:
                    self._write(answer)
                    _log_query(self.peer, "tcp", message, answer, started)

                reply = logged
            self.state.forward(message, reply, udp=False, family=self.family, chase=chase)
            return True
        if response is TRANSFER:
            for part in self.state.transfer(message, self.peer):
                self._write(part)
        elif isinstance(response, bytes):
            self._write(response)
            clients = self.state.clients
            if clients is not None and response[3] & 0xF == 3:
                clients.nxdomain(self.peer)
        self.stats.record(self.stats.counter("tcp", self.family), self.responder.qtype, started)
        if self.state.log_queries:
            _log_query(
                self.peer, "tcp", message, response if type(response) is bytes else None, started
            )
        return True

    def _refuse(self, message: bytes) -> bool:
        """`_answer` for a source --allow-query leaves out: REFUSED, then close."""
        assert self.state.acl is not None and self.transport is not None
        self.state.acl.deny("tcp")
        refused = refused_for(message)
        self._write(refused)
        self.transport.close()  # after the REFUSED is written
        if self.state.log_queries:
            _log_query(self.peer, "tcp", message, refused, time.perf_counter())
        return False

    def _write(self, response: bytes | None) -> None:
        if response is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.write(struct.pack("!H", len(response)) + response)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.state.connections.pop(self, None)
