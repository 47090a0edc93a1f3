"""UDP in batches: recvmmsg and sendmmsg through ctypes, on the event loop thread.

Instead of a `UdpProtocol` behind uvloop's datagram transport (one recvmsg, one Python callback,
one `(host, port)` tuple made and parsed back, one sendmsg per datagram), the socket gets a
reader callback (`loop.add_reader`) that takes up to `BATCH` datagrams with one recvmmsg, answers
each with the same `Responder.respond` and sends the answers with one sendmmsg, from their own
bytes (no copy), to the senders' addresses exactly as the kernel gave them. The client's
address is never turned into a string unless an answer needs it (forwarding, an error).

It runs on the loop thread, so the responder's caches, memo and rotation are used exactly as by
`UdpProtocol`: no locks, nothing served that a change has dropped. It covers only the short
path (`UdpProtocol._received_plain`): with `--rrl`, `--log-queries`, `--autopath` or
`--allow-query` the server keeps the datagram protocol. With `--http-show-clients` the sender of
an NXDOMAIN answer is turned into a string, for the page's count by client.

Differences from the datagram transport: a query of `SLOT` bytes or more is dropped (a DNS
query is a few dozen bytes; 4096 is EDNS's usual buffer), and an answer the socket cannot take at
once (EAGAIN) is dropped rather than queued, as nsd does.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import platform
import socket
import struct
import sys
from collections import _count_elements  # type: ignore[attr-defined]
from time import perf_counter
from typing import Any

from kdns.dns.wire import servfail_for
from kdns.serve.transport import TransportState, UdpProtocol

log = logging.getLogger(__name__)

#: Datagrams per system call.
BATCH = 64
#: Bytes of each datagram buffer; a query of this length or longer is dropped.
SLOT = 4096
#: Batches taken in one reader callback before the loop runs anything else.
ROUNDS = 8
#: Seconds of answering after which a reader callback takes no further batch. Answers from the
#: cache take microseconds, so this only bounds a run of misses (large answers built afresh,
#: hundreds of microseconds each, more on a busy CPU): without it, one callback of 512 of them
#: held the loop for seconds, and with it the store's writes, the timers, and the reports a
#: serving process owes the main process (which took the silence for a hang and killed it).
BUDGET = 0.01

MSG_DONTWAIT = 0x40
MSG_TRUNC = 0x20
_NAME = 128  # sizeof(struct sockaddr_storage)
_IOVEC = 16  # struct iovec: void *iov_base; size_t iov_len
_MMSG = 64  # struct mmsghdr: struct msghdr (56 bytes) + unsigned int msg_len + padding
# Offsets in struct msghdr (x86_64 / aarch64 Linux): msg_name 0, msg_namelen 8, msg_iov 16,
# msg_iovlen 24, msg_control 32, msg_controllen 40, msg_flags 48; mmsghdr.msg_len 56.

#: Where a `bytes` object's contents start, from its address (`id`): CPython's PyBytesObject,
#: checked by `available`. An answer is sent from there, not copied.
_BYTES_DATA = bytes.__basicsize__ - 1

_libc: Any = None


def _calls() -> tuple[Any, Any]:
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.recvmmsg.argtypes = [
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_void_p,
        ]
        libc.recvmmsg.restype = ctypes.c_int
        libc.sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
        libc.sendmmsg.restype = ctypes.c_int
        _libc = libc
    return _libc.recvmmsg, _libc.sendmmsg


def available() -> bool:
    """True where recvmmsg and sendmmsg can be called as this module does: Linux, 64-bit,
    CPython (whose `id` is the object's address)."""
    if not sys.platform.startswith("linux") or platform.python_implementation() != "CPython":
        return False
    try:
        _calls()
    except (OSError, AttributeError):
        return False
    if ctypes.sizeof(ctypes.c_void_p) != 8:
        return False
    probe = b"kdns" * 3
    return ctypes.string_at(id(probe) + _BYTES_DATA, len(probe)) == probe


class _Headers:
    """`count` mmsghdrs, each with one iovec and a sockaddr_storage; for receiving (`slots`),
    each iovec over its own `SLOT` bytes, for sending, pointed at each answer's bytes."""

    def __init__(self, count: int, receive: bool) -> None:
        self.hdrs = ctypes.create_string_buffer(count * _MMSG)
        self.iovs = ctypes.create_string_buffer(count * _IOVEC)
        self.names = ctypes.create_string_buffer(count * _NAME)
        self.data = ctypes.create_string_buffer(count * SLOT if receive else 1)
        self.address = ctypes.addressof(self.hdrs)
        self.names_at = ctypes.addressof(self.names)
        iovs_at = ctypes.addressof(self.iovs)
        data_at = ctypes.addressof(self.data)
        for i in range(count):
            if receive:
                struct.pack_into("QQ", self.iovs, i * _IOVEC, data_at + i * SLOT, SLOT)
            struct.pack_into(
                "QI4xQQQQi4xI4x",
                self.hdrs,
                i * _MMSG,
                self.names_at + i * _NAME,
                _NAME,
                iovs_at + i * _IOVEC,
                1,
                0,
                0,
                0,
                0,
            )
        raw = memoryview(self.hdrs).cast("B")
        #: The headers as 32-bit words: [i*16 + 2] msg_namelen, [+12] msg_flags, [+14] msg_len.
        self.words = raw.cast("I")
        #: ... and as 64-bit ones: [i*8] msg_name.
        self.quads = raw.cast("Q")
        #: The iovecs as 64-bit words: [i*2] iov_base, [i*2 + 1] iov_len.
        self.iov_quads = memoryview(self.iovs).cast("B").cast("Q")
        self.name_bytes = memoryview(self.names).cast("B")
        #: Each datagram's buffer, as a ctypes array: slicing one gives `bytes` in one step.
        self.slots: list[Any] = [
            (ctypes.c_char * SLOT).from_buffer(self.data, i * SLOT)
            for i in range(count if receive else 0)
        ]


class _SocketTransport(asyncio.DatagramTransport):
    """What `UdpProtocol` needs of a transport, for the answers that do not go out in a batch
    (forwarded, SERVFAIL for an action): `sendto` on the socket itself."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock

    def sendto(self, data: Any, addr: Any = None) -> None:
        try:
            self._sock.sendto(data, addr)
        except OSError as err:  # full (EAGAIN), or the client's network is gone
            log.debug("udp send to %s: %s", addr, err)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._sock if name == "socket" else default

    def is_closing(self) -> bool:
        return False


class BatchUdp:
    """Serves one UDP socket with recvmmsg/sendmmsg from a reader callback on `loop`."""

    def __init__(self, sock: socket.socket, state: TransportState) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.state = state
        self.family = 6 if sock.family == socket.AF_INET6 else 4
        self.recv = _Headers(BATCH, receive=True)
        self.send = _Headers(BATCH, receive=False)
        namelen = 28 if self.family == 6 else 16
        for i in range(BATCH):
            self.send.words[i * 16 + 2] = namelen
            # Answer i goes to query i's sender, unless an earlier query got no answer.
            self.send.quads[i * 8] = self.recv.names_at + i * _NAME
        # The protocol of the rare cases: forwarding (and its answer, later), AXFR's SERVFAIL.
        self.protocol = UdpProtocol(state)
        self.protocol.connection_made(_SocketTransport(sock))
        self.counts = state.stats.counter("udp", self.family)
        self.dropped = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    @staticmethod
    def applies(state: TransportState) -> bool:
        """True when nothing on `state` needs the datagram protocol: the same condition as
        `UdpProtocol`'s short path, without --allow-query."""
        return (
            state.limiter is None
            and not state.log_queries
            and state.autopath is None
            and state.acl is None
        )

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.fd, self._readable)

    def close(self) -> None:
        """Stop reading and close the socket (as the datagram transport's `close` does)."""
        if self._loop is not None:
            self._loop.remove_reader(self.fd)
            self._loop = None
        self.sock.close()

    def _address(self, i: int) -> tuple[str, int]:
        name = self.recv.name_bytes[i * _NAME : i * _NAME + 28].tobytes()
        port = int.from_bytes(name[2:4], "big")
        if self.family == 6:
            return socket.inet_ntop(socket.AF_INET6, name[8:24]), port
        return socket.inet_ntop(socket.AF_INET, name[4:8]), port

    def _readable(self) -> None:
        recvmmsg, sendmmsg = _calls()
        until = perf_counter() + BUDGET
        for _ in range(ROUNDS):
            n = recvmmsg(self.fd, self.recv.address, BATCH, MSG_DONTWAIT, None)
            if n <= 0:
                if n < 0:
                    err = ctypes.get_errno()
                    if err not in (errno.EAGAIN, errno.EINTR):
                        log.debug("recvmmsg: %s", errno.errorcode.get(err, err))
                return
            self._answer(n, sendmmsg)
            if n < BATCH or perf_counter() > until:
                return

    def _answer(self, n: int, sendmmsg: Any) -> None:
        started = perf_counter()
        words = self.recv.words
        slots = self.recv.slots
        names_at = self.recv.names_at
        iovs = self.send.iov_quads
        names = self.send.quads
        responder = self.state.responder
        respond = responder.respond
        clients = self.state.clients  # --http-show-clients: NXDOMAIN answers by address
        keep = []  # the answers, alive until sent: the kernel reads them where they are
        qtypes = []  # of the queries answered, for the counters
        j = 0
        shifted = False  # an answer went into another header than its query's
        for i, size in enumerate(words[14 : n * 16 : 16].tolist()):
            if size >= SLOT:  # the datagram did not fit (MSG_TRUNC): too long for a query
                self.dropped += 1
                continue
            data: bytes = slots[i][:size]
            try:
                response = respond(data, True)
            except Exception:
                log.exception("failed to answer a query from %s", self._address(i)[0])
                response = servfail_for(data)
            if type(response) is bytes:
                iovs[j * 2] = id(response) + _BYTES_DATA
                iovs[j * 2 + 1] = len(response)
                if i != j:  # send header j points at query j's address until then
                    names[j * 8] = names_at + i * _NAME
                    shifted = True
                keep.append(response)
                j += 1
                if clients is not None and response[3] & 0xF == 3:
                    clients.nxdomain(self._address(i)[0])
            else:
                try:
                    if self.protocol._not_bytes(data, self._address(i), response):
                        continue
                except Exception:
                    # One query's trouble (the forwarder raising) must not cost the rest of
                    # the batch their answers.
                    log.exception("failed to hand on a query from %s", self._address(i)[0])
                    continue
            qtypes.append(responder.qtype)
        sent = 0
        while sent < j:
            k = sendmmsg(self.fd, self.send.address + sent * _MMSG, j - sent, 0)
            if k > 0:
                sent += k
                continue
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.ENOBUFS):
                self.dropped += j - sent
                break
            if err != errno.EINTR:
                log.debug("sendmmsg: %s", errno.errorcode.get(err, err))
                sent += 1  # that one answer cannot go; send the rest
        del keep
        if shifted:
            for k in range(j):
                names[k * 8] = names_at + k * _NAME
        if qtypes:
            _count_elements(self.counts, qtypes)
            self.state.stats.record_many(len(qtypes), started)
