"""Decoding queries and encoding responses.

The decoder is hand-written because it sits on the hot path and because it must be strict where a
general-purpose parser is lenient: it reads the header, the one question and the EDNS OPT record
straight from the bytes, without building objects, and sorts every packet into one of four fates:
answer it, FORMERR, NOTIMP, or drop it (no readable header, or a response rather than a query:
answering those would let two servers bounce packets at each other forever).

Responses are built with dnslib from the engine's records. They are always built for the question
name in lower case, so dnslib's (case-sensitive) name compression makes every owner name that
equals the question a pointer to it; the asked name is then copied over the question in place.
That one copy restores the client's case in those owners (0x20 randomising resolvers check it) and
lets one encoded response serve every spelling of a name, which is what the response cache relies
on. No other name points into the question, so every other name keeps its own (lower-case)
spelling: SRV and CNAME targets, glue, the SOA.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from dnslib import QTYPE, RCODE, DNSHeader, DNSLabel, DNSQuestion, DNSRecord
from dnslib.label import DNSBuffer, DNSLabelError

from kdns.dns.resolution import Answer

HEADER = struct.Struct("!HHHHHH")
QR = 0x8000
AA = 0x0400
TC = 0x0200
RD = 0x0100
CD = 0x0010
OPT_TYPE = 41
#: The UDP payload size kdns advertises and sends at most (DNS flag day 2020: no fragmentation).
DEFAULT_MAX_UDP = 1232
#: Extended rcode BADVERS = 16: the upper 8 bits (1) go in the OPT record, the lower 4 (0) in
#: the header.
BADVERS_EXT = 1
BADVERS = 16


class Drop(Exception):
    """A packet that gets no answer at all."""


class Refuse(Exception):
    """A packet whose header is readable but which is not a query kdns will answer.

    `rcode` says why (FORMERR, NOTIMP); `reply` is the encoded error response.
    """

    def __init__(self, rcode: int, reply: bytes) -> None:
        super().__init__(RCODE.forward.get(rcode, f"RCODE{rcode}"))
        self.rcode = rcode
        self.reply = reply


@dataclass(slots=True)
class Query:
    """A decoded query: only what answering needs."""

    id: int
    flags: int
    #: The question name as sent (wire format, original case).
    name: bytes
    qtype: int
    qclass: int
    edns: bool = False
    #: The client's UDP payload size (512 without EDNS).
    payload: int = 512
    do: bool = False
    #: Cache key: lower-cased question + EDNS state. Equal keys get equal responses.
    key: bytes = b""
    #: The whole packet.
    data: bytes = b""

    @property
    def labels(self) -> list[bytes]:
        """The question name's labels, lower-cased."""
        out = []
        name = self.name.lower()
        i = 0
        while name[i]:
            n = name[i]
            out.append(name[i + 1 : i + 1 + n])
            i += 1 + n
        return out


def _error(id_: int, flags: int, rcode: int, question: bytes = b"", opt: bytes = b"") -> bytes:
    # QR set; keep opcode and RD; answer carries the question back when it was readable.
    out_flags = QR | (flags & 0x7800) | (flags & RD) | (rcode & 0xF)
    qd = 1 if question else 0
    ar = 1 if opt else 0
    return HEADER.pack(id_, out_flags, qd, 0, 0, ar) + question + opt


def opt_record(payload: int, do: bool, ext_rcode: int = 0, options: bytes = b"") -> bytes:
    """An OPT pseudo-record (RFC 6891) carrying `options` (already encoded)."""
    ttl = (ext_rcode << 24) | (0x8000 if do else 0)
    return b"\x00" + struct.pack("!HHIH", OPT_TYPE, payload, ttl, len(options)) + options


#: RFC 8914's EDNS option code for an Extended DNS Error.
EDE_OPTION = 15


def ede_option(ede: tuple[tuple[int, str], ...]) -> bytes:
    """Extended DNS Error options (RFC 8914 section 2), one per (info-code, EXTRA-TEXT)."""
    out = b""
    for code, text in ede:
        data = text.encode()
        out += struct.pack("!HHH", EDE_OPTION, 2 + len(data), code) + data
    return out


def skip_name(data: bytes, i: int) -> int:
    """Offset just past the (possibly compressed) name at `i`; ValueError when malformed."""
    hops = 0
    end = -1
    total = 0
    while True:
        if i >= len(data):
            raise ValueError("name runs past the end")
        n = data[i]
        if n & 0xC0 == 0xC0:
            if i + 1 >= len(data):
                raise ValueError("truncated pointer")
            if end < 0:
                end = i + 2
            target = ((n & 0x3F) << 8) | data[i + 1]
            hops += 1
            if hops > 64 or target >= i:
                raise ValueError("compression pointer loop")
            i = target
            continue
        if n & 0xC0:
            raise ValueError("unknown label type")
        if n == 0:
            return end if end >= 0 else i + 1
        total += n + 1
        if total > 254:
            raise ValueError("name longer than 255 bytes")
        i += 1 + n


def parse_query(data: bytes) -> Query:
    """Decode a query, or raise `Drop` or `Refuse` (with the reply to send)."""
    data = bytes(data)
    if len(data) < HEADER.size:
        raise Drop("shorter than a DNS header")
    id_, flags, qd, an, ns, ar = HEADER.unpack_from(data)
    if flags & QR:
        raise Drop("a response, not a query")
    opcode = (flags >> 11) & 0xF
    if opcode != 0:
        raise Refuse(RCODE.NOTIMP, _error(id_, flags, RCODE.NOTIMP))
    # At most what a query carries: an OPT and a TSIG, one SOA in the authority section for
    # IXFR (RFC 1995), as CoreDNS's DNS library accepts. More would make each message a walk of
    # thousands of compressed names that are then ignored.
    if qd != 1 or an or ns > 1 or ar > 2:
        raise Refuse(RCODE.FORMERR, _error(id_, flags, RCODE.FORMERR))
    # The question name: no compression (there is nothing before it to point to).
    i = 12
    try:
        while True:
            n = data[i]
            if n == 0:
                i += 1
                break
            if n > 63:
                raise ValueError("bad label")
            i += 1 + n
            if i - 12 > 255:
                raise ValueError("name too long")
        if i + 4 > len(data) or i - 12 > 255:
            raise ValueError("truncated question")
    except (IndexError, ValueError):
        raise Refuse(RCODE.FORMERR, _error(id_, flags, RCODE.FORMERR)) from None
    name = data[12:i]
    qtype, qclass = struct.unpack_from("!HH", data, i)
    question = data[12 : i + 4]
    i += 4
    edns = False
    payload = 512
    do = False
    version = 0
    try:
        for _ in range(ns):  # IXFR's SOA: nothing in it changes the answer
            i = skip_name(data, i)
            if i + 10 > len(data):
                raise ValueError("truncated record")
            i += 10 + struct.unpack_from("!H", data, i + 8)[0]
            if i > len(data):
                raise ValueError("truncated rdata")
        for _ in range(ar):
            start = i
            i = skip_name(data, i)
            if i + 10 > len(data):
                raise ValueError("truncated record")
            rtype, rclass, ttl, rdlen = struct.unpack_from("!HHIH", data, i)
            i += 10
            if i + rdlen > len(data):
                raise ValueError("truncated rdata")
            if rtype == OPT_TYPE:
                if edns or data[start] != 0:
                    raise ValueError("second OPT record, or OPT not at the root")
                edns = True
                payload = max(512, rclass)
                version = (ttl >> 16) & 0xFF
                do = bool(ttl & 0x8000)
                j = i
                while j < i + rdlen:  # options must tile the rdata exactly
                    if j + 4 > i + rdlen:
                        raise ValueError("truncated EDNS option")
                    (olen,) = struct.unpack_from("!H", data, j + 2)
                    j += 4 + olen
                if j != i + rdlen:
                    raise ValueError("EDNS option overruns the record")
            i += rdlen
        if i != len(data):
            raise ValueError("trailing bytes")
        if qtype == OPT_TYPE:
            raise ValueError("OPT is not a question type")
    except (IndexError, ValueError, struct.error):
        opt = opt_record(DEFAULT_MAX_UDP, False) if edns else b""
        raise Refuse(RCODE.FORMERR, _error(id_, flags, RCODE.FORMERR, question, opt)) from None
    if edns and version != 0:
        opt = opt_record(DEFAULT_MAX_UDP, do, BADVERS_EXT)
        raise Refuse(BADVERS, _error(id_, flags, 0, question, opt))
    # Only the name is folded: type and class bytes that happen to be letters stay apart.
    key = name.lower() + question[-4:] + (b"\x02" if do else b"\x01" if edns else b"\x00")
    return Query(id_, flags, name, qtype, qclass, edns, payload, do, key, data)


class _Buffer(DNSBuffer):  # type: ignore[misc]
    """dnslib's buffer, except that names written past offset 0x3FFF are not offered for
    compression: a pointer has 14 bits, and dnslib would silently cut the offset (answers over
    16 KiB, such as SRV for hundreds of endpoints with hostnames, came out corrupt)."""

    def __init__(self) -> None:
        super().__init__()
        #: Where each SRV target was written whole, and whether the additional section (the
        #: glue) is being written: see `encode_name_nocompress`.
        self.targets: dict[tuple[bytes, ...], int] = {}
        self.glue = False

    def encode_name(self, name: DNSLabel | str) -> None:
        if not isinstance(name, DNSLabel):
            name = DNSLabel(name)
        if len(name) > 253:
            raise DNSLabelError(f"Domain label too long: {name!r}")
        labels = list(name.label)
        if self.glue:
            at = self.targets.get(tuple(labels))
            if at is not None:
                self.pack("!H", 0xC000 | at)
                return
        while labels:
            key = tuple(labels)
            if key in self.names:
                self.pack("!H", 0xC000 | self.names[key])
                return
            if self.offset < 0x4000:
                self.names[key] = self.offset
            element = labels.pop(0)
            if len(element) > 63:
                raise DNSLabelError(f"Label component too long: {element!r}")
            self.pack("!B", len(element))
            self.append(element)
        self.append(b"\x00")

    def encode_name_nocompress(self, name: DNSLabel | str) -> None:
        """An SRV target, written out whole (RFC 2782); glue records named like it then point
        to it. Otherwise the glue of target `web.ns.svc.cluster.local` would point into the
        question `_http._tcp.WEB.ns...` and, once the asked spelling is copied over the
        question, be named `WEB.ns...`: no longer the spelling of the target it supports.
        Only glue does this: answer owners keep pointing to the question, which is how they
        take the client's spelling."""
        if not isinstance(name, DNSLabel):
            name = DNSLabel(name)
        if self.offset < 0x4000:
            self.targets.setdefault(tuple(name.label), self.offset)
        super().encode_name_nocompress(name)


def pack(record: DNSRecord) -> bytes:
    """`record.pack()`, but no compression pointer past offset 0x3FFF (`_Buffer`), and names
    after the question compressed only against the whole question (whose spelling callers may
    copy over it)."""
    record.set_header_qa()
    buffer = _Buffer()
    record.header.pack(buffer)
    for item in record.questions:
        item.pack(buffer)
    # Only the whole question may be pointed to (by owners equal to it): the asked spelling is
    # copied over it afterwards, and a pointer to one of its suffixes would give that spelling
    # to another name (a CNAME target `web.NS.svc...` for the question `ext.NS.svc...`).
    buffer.names = {k: v for k, v in buffer.names.items() if v == 12}
    for section in (record.rr, record.auth):
        for item in section:
            item.pack(buffer)
    buffer.glue = True
    for item in record.ar:
        item.pack(buffer)
    return bytes(buffer.data)


def encode(query: Query, answer: Answer, *, max_udp: int = DEFAULT_MAX_UDP) -> bytes:
    """The full response to `query`, with the question in the case it was asked."""
    header = DNSHeader(
        id=query.id,
        qr=1,
        aa=1 if answer.authoritative else 0,
        rd=1 if query.flags & RD else 0,
        rcode=answer.rcode & 0xF,
    )
    qname = DNSLabel(query.labels)
    record = DNSRecord(header, q=DNSQuestion(qname, query.qtype, query.qclass))
    for rr in answer.answer:
        record.add_answer(rr)
    for rr in answer.authority:
        record.add_auth(rr)
    for rr in answer.additional:
        record.add_ar(rr)
    packed = bytearray(pack(record))
    if query.flags & CD:
        packed[3] |= CD & 0xFF
    if query.edns:
        packed[10:12] = struct.pack("!H", HEADER.unpack_from(packed)[5] + 1)
        packed += opt_record(max_udp, query.do, options=ede_option(answer.ede))
    packed[12 : 12 + len(query.name)] = query.name
    return bytes(packed)


def truncated(response: bytes, qlen: int, edns: bool, limit: int) -> bytes:
    """The TC=1 form of a response larger than `limit` (the client's UDP size): as many whole
    records as fit, in order (answer, then authority, then additional, each up to the first
    that does not fit), and the OPT record.

    As CoreDNS's DNS library truncates: a client that cannot retry over TCP (musl before 1.2.4,
    older Alpine images) still gets part of a large headless answer rather than none.
    Compression pointers point backwards only, so a message cut at a record's end stays whole.
    `qlen` is the length of the question section, `edns` whether the response has an OPT.
    """
    id_, flags, _, an, ns, ar = HEADER.unpack_from(response)
    opt = response[_opt_start(response) :] if edns else b""  # encode() appends it last
    budget = max(limit, 512) - len(opt)
    end = 12 + qlen
    kept = [0, 0, 0]
    try:
        for section, count in enumerate((an, ns, ar - (1 if opt else 0))):
            for _ in range(count):
                at = skip_name(response, end)
                at += 10 + struct.unpack_from("!H", response, at + 8)[0]
                if at > budget:
                    raise StopIteration
                end = at
                kept[section] += 1
    except (StopIteration, ValueError, struct.error):
        pass
    counts = HEADER.pack(id_, flags | TC, 1, kept[0], kept[1], kept[2] + (1 if opt else 0))
    return counts + response[12:end] + opt


def _opt_start(response: bytes) -> int:
    """Where the OPT record that ends `response` starts (its options make its length vary)."""
    # Root name, type 41, class, TTL, then a length that reaches exactly the end.
    for at in range(len(response) - 11, 11, -1):
        if response[at : at + 3] == b"\x00\x00\x29":
            (length,) = struct.unpack_from("!H", response, at + 9)
            if at + 11 + length == len(response):
                return at
    return len(response) - 11


def limit_for(query: Query, max_udp: int = DEFAULT_MAX_UDP) -> int:
    """The largest UDP response this client may get."""
    return min(query.payload, max_udp) if query.edns else 512


def describe(qtype: int) -> str:
    """The mnemonic of a type number (TYPE65280 for unknown ones)."""
    name = QTYPE.forward.get(qtype)
    return str(name) if name else f"TYPE{qtype}"


def _question_end(packet: bytes) -> int:
    """Offset just past the first question (12 when there is none or it is malformed)."""
    if len(packet) < 12 or packet[4:6] == b"\x00\x00":
        return 12
    try:
        return skip_name(packet, 12) + 4
    except ValueError:
        return 12


def slipped(response: bytes) -> bytes:
    """A response cut to header and question with TC=1: "ask again over TCP"."""
    end = min(_question_end(response), len(response))
    qd = 1 if end > 12 else 0
    id_, flags, *_ = HEADER.unpack_from(response)
    return HEADER.pack(id_, flags | TC, qd, 0, 0, 0) + response[12:end]


def servfail_for(query: bytes) -> bytes | None:
    """SERVFAIL for a query kdns failed to answer (None when not even the header is there)."""
    if len(query) < 12:
        return None
    id_, flags, *_ = HEADER.unpack_from(query)
    end = _question_end(query)
    return _error(id_, flags, RCODE.SERVFAIL, query[12:end] if end > 12 else b"")


#: dnslib's `RCODE.REFUSED` costs a few µs per lookup: too much for a path a flood can take.
_REFUSED = int(RCODE.REFUSED)


def refused_for(query: bytes) -> bytes | None:
    """REFUSED for a query from a client not allowed to ask (None: a response, or no header).

    Responses are never answered: a spoofed source could otherwise bounce two servers' refusals
    between them.
    """
    if len(query) < 12 or query[2] & 0x80:
        return None
    id_, flags, *_ = HEADER.unpack_from(query)
    end = _question_end(query)
    return _error(id_, flags, _REFUSED, query[12:end] if 12 < end <= len(query) else b"")


def describe_packet(query: bytes, response: bytes | None) -> tuple[str, str, str]:
    """(name, type, rcode) for a query log line; "-" where unknown, "?" where unreadable."""
    name, qtype, rcode = "-", "-", "-"
    end = _question_end(query)
    if end > 12:
        try:
            name = str(DNSLabel(_labels(query, 12))) or "."
            qtype = describe(struct.unpack_from("!H", query, end - 4)[0])
        except (ValueError, UnicodeError, IndexError, struct.error):
            name, qtype = "?", "?"
    if response is not None and len(response) >= 4:
        code = response[3] & 0xF | _extended_rcode(response) << 4
        rcode = "BADVERS" if code == BADVERS else str(RCODE.forward.get(code, code))
    return name, qtype, rcode


def _extended_rcode(response: bytes) -> int:
    """The upper 8 bits of a response's rcode, from its OPT record (0 without one)."""
    if len(response) < 12:
        return 0
    _, _, qd, an, ns, ar = HEADER.unpack_from(response)
    if not ar:
        return 0
    try:
        i = 12
        for _ in range(qd):
            i = skip_name(response, i) + 4
        for n in range(an + ns + ar):
            i = skip_name(response, i)
            rtype, _, ttl, rdlen = struct.unpack_from("!HHIH", response, i)
            if rtype == OPT_TYPE and n >= an + ns:
                return int(ttl) >> 24
            i += 10 + rdlen
    except (ValueError, struct.error):
        pass
    return 0


def _labels(packet: bytes, i: int) -> list[bytes]:
    out = []
    while packet[i]:
        n = packet[i]
        if n > 63:
            raise ValueError("not a plain label")
        out.append(packet[i + 1 : i + 1 + n])
        i += 1 + n
    return out
