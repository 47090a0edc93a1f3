"""Fuzz a live kdns over UDP and TCP with random and mutated packets, and check it survives.

    python -m testkit.fuzz                      # 100,000 packets, a random seed (printed)
    python -m testkit.fuzz --packets 5000 --seed 7

What it does:

1. Copies the zones directory (default `zones/`) into a temporary one and adds a headless
   service `big.fuzz` with `--headless` (default 100) ready endpoints, asks `kdns records` for
   every record of the result (the expectations), and starts `python -m kdns serve` on a free
   port (parsed from its `serving ... port N` log line) with a short TCP idle timeout.
2. Checks every known name (UDP with and without EDNS, TCP where an answer is truncated), and
   measures the amplification factor (response size / query size over UDP) on the way.
3. Sends `--packets` packets built by a seeded RNG from the mutation families below, in windows
   of UDP datagrams and in TCP sessions (random framing and split points, many messages per
   connection, huge and partial length prefixes, connections closed mid-message or without
   reading). Every reply is checked: it parses (dnspython), carries the query's ID, has QR set,
   echoes the question as asked, fits the UDP limit (512 without EDNS, at most 1232 with it),
   answers with the type asked (or a CNAME). A query with a readable header that is not a
   response must get a reply within 2 s (a late one is matched while later windows are read);
   one without (shorter than 12 bytes, or QR set) must get none.
4. Every tenth of the run: the process is alive and every known name still answers exactly as
   `kdns records` says; RSS is sampled. The RSS after warm-up (`--warmup`, a fraction of the
   packets; the response cache fills during it) and at the end must differ by at most
   `--rss-bound-mb`. The kdns log must hold no traceback.

Prints counts per outcome (NOERROR, NXDOMAIN, FORMERR, NOTIMP, REFUSED, SERVFAIL, BADVERS,
dropped) and a summary; the last line is `FUZZ-SUMMARY {json}`. Exit status 0 when nothing
failed, 1 otherwise. Every wait is bounded; `--time-limit` bounds the whole run.

The packet generators (`valid_query`, `mutate`, `random_packet`) are also used by the property
tests in tests/test_fuzz_properties.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.renderer
import dns.rrset

ROOT = Path(__file__).resolve().parent.parent
SERVING = re.compile(r"serving \S+ on (\S+) port (\d+)")
HEADER = struct.Struct("!HHHHHH")
#: Datagrams this long or longer are dropped by kdns's batched UDP reader (kdns.serve.batch.SLOT;
#: tests/test_fuzz_live.py holds the two equal).
SLOT = 4096
#: How long a UDP reply may take before the query counts as unanswered.
UDP_PATIENCE = 2.0

#: Types a query asks for: the ones kdns answers, the meta types, and some it does not know.
QTYPES = [1, 28, 33, 12, 16, 5, 6, 2, 255, 252, 251, 15, 65, 64, 99, 41, 0, 65535]
#: Classes: IN mostly, then CH, NONE, ANY and an unassigned one.
QCLASSES = [1] * 12 + [3, 254, 255, 0, 4242]
#: EDNS option codes: NSID, ECS, COOKIE, PADDING, EDNS-KEY-TAG, an unknown one.
OPTION_CODES = [3, 8, 10, 12, 14, 65001]
#: Pieces the name family builds labels from: enough to spell pod addresses (with and without
#: IPv6 scope ids), ports, protocols, wildcards and odd bytes.
TOKENS = [
    "a", "0", "1", "10", "255", "256", "01", "fe80", "fd00", "ff", "-", "--", "%", "%eth0",
    "_", "_tcp", "_udp", "_http", "_postgres", "*", ":", "db-0", "web", "default", "svc", "pod",
    "\\", "\x00", "\xff", "A", "Z", "x" * 63,
]  # fmt: skip
SUFFIXES = [
    "default.pod.cluster.local", "default.svc.cluster.local", "data.svc.cluster.local",
    "shop.svc.cluster.local", "fuzz.svc.cluster.local", "svc.cluster.local", "pod.cluster.local",
    "cluster.local", "dns.cluster.local", "in-addr.arpa", "ip6.arpa", "arpa", "example.org", "",
]  # fmt: skip
#: Names every kdns serves, whatever the zones say.
FIXED_NAMES = [
    "cluster.local",
    "ns.dns.cluster.local",
    "dns-version.cluster.local",
    "default.svc.cluster.local",
    "10-0-0-1.default.pod.cluster.local",
    "nope.default.svc.cluster.local",
    "in-addr.arpa",
    "example.org",
    "",
]


# -- packets ---------------------------------------------------------------------------------


def name_wire(labels: Sequence[bytes]) -> bytes:
    """A name in wire format, uncompressed (labels are not checked: callers may want bad ones)."""
    return b"".join(bytes([len(label) & 0xFF]) + label for label in labels) + b"\x00"


def text_labels(name: str) -> list[bytes]:
    return [label.encode("latin-1") for label in name.split(".") if label]


def opt_record(
    payload: int = 1232,
    do: bool = False,
    options: Sequence[tuple[int, bytes]] = (),
    version: int = 0,
    ext_rcode: int = 0,
    owner: bytes = b"\x00",
    rdlen: int | None = None,
) -> bytes:
    """An OPT pseudo-record; `rdlen` overrides the true length of the options."""
    rdata = b"".join(struct.pack("!HH", code, len(data)) + data for code, data in options)
    ttl = (ext_rcode << 24) | (version << 16) | (0x8000 if do else 0)
    length = len(rdata) if rdlen is None else rdlen
    return owner + struct.pack("!HHIH", 41, payload, ttl, length & 0xFFFF) + rdata


@dataclass
class Query:
    """A query as parts, so mutations can change one part and rebuild the rest correctly."""

    id: int = 0
    flags: int = 0x0100
    name: bytes = b"\x00"
    qtype: int = 1
    qclass: int = 1
    opt: bytes | None = None
    qd: int | None = None
    an: int = 0
    ns: int = 0
    ar: int | None = None
    extra: bytes = b""  # further records after the OPT, counted in `ar` by the caller

    def wire(self) -> bytes:
        question = self.name + struct.pack("!HH", self.qtype & 0xFFFF, self.qclass & 0xFFFF)
        qd = 1 if self.qd is None else self.qd
        ar = (1 if self.opt is not None else 0) if self.ar is None else self.ar
        head = HEADER.pack(self.id & 0xFFFF, self.flags & 0xFFFF, qd, self.an, self.ns, ar)
        return head + question + (self.opt or b"") + self.extra


def random_case(rng: random.Random, labels: Sequence[bytes]) -> list[bytes]:
    out = []
    for label in labels:
        out.append(
            bytes(
                (b ^ 0x20) if (0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A) and rng.random() < 0.5 else b
                for b in label
            )
        )
    return out


def random_labels(rng: random.Random, names: Sequence[str]) -> list[bytes]:
    """A question name: a known one, one built from tokens, or random bytes."""
    kind = rng.random()
    if kind < 0.45 and names:
        labels = text_labels(rng.choice(names))
    elif kind < 0.55 and names:
        labels = [rng.randbytes(rng.randint(1, 20)), *text_labels(rng.choice(names))]
    elif kind < 0.65:
        labels = [pod_label(rng).encode("latin-1"), *text_labels(rng.choice(SUFFIXES[:3]))]
    elif kind < 0.85:
        parts = []
        for _ in range(rng.randint(1, 3)):
            label = "".join(rng.choice(TOKENS) for _ in range(rng.randint(1, 6)))[:63]
            parts.append(label.encode("latin-1"))
        labels = parts + text_labels(rng.choice(SUFFIXES))
    elif kind < 0.92:
        octets = [rng.choice(["0", "1", "10", "255", "256", "01", "x", str(rng.randint(0, 300))])]
        octets += [str(rng.randint(0, 255)) for _ in range(rng.choice([2, 3, 3, 3, 4]))]
        labels = text_labels(".".join(octets) + ".in-addr.arpa")
    else:
        labels = [rng.randbytes(rng.randint(1, 40)) for _ in range(rng.randint(1, 5))]
        labels = [label.replace(b"\x00", b"a") for label in labels]
    labels = [label[:63] for label in labels if label]
    while len(name_wire(labels)) > 255:
        labels = labels[1:]
    return random_case(rng, labels)


def pod_label(rng: random.Random) -> str:
    """An address spelled with dashes, as pod and endpoint names are, now and then with a twist."""
    if rng.random() < 0.5:
        text = ".".join(
            str(rng.choice([0, 1, 10, 255, 256, rng.randint(0, 255)])) for _ in range(4)
        )
    else:
        groups = [f"{rng.randint(0, 0xFFFF):x}" for _ in range(8)]
        cut = rng.randint(0, 7)
        text = ":".join(groups[:cut]) + "::" + ":".join(groups[cut + rng.randint(1, 8 - cut) :])
    label = text.replace(".", "-").replace(":", "-")
    twist = rng.random()
    if twist < 0.2:
        label += "%" + rng.choice(["eth0", "1", "a", "", "%"])
    elif twist < 0.3:
        label = label.upper()
    elif twist < 0.4:
        label += rng.choice(TOKENS)
    return label[:63] or "0"


def valid_query(rng: random.Random, names: Sequence[str]) -> Query:
    """A well-formed query (one question, perhaps EDNS with options), as kdns should accept."""
    flags = 0
    if rng.random() < 0.8:
        flags |= 0x0100  # RD
    if rng.random() < 0.2:
        flags |= 0x0010  # CD
    if rng.random() < 0.2:
        flags |= 0x0020  # AD
    opt = None
    if rng.random() < 0.5:
        options = [
            (rng.choice(OPTION_CODES), rng.randbytes(rng.choice([0, 2, 8, 16, 40])))
            for _ in range(rng.choice([0, 0, 1, 2, 3]))
        ]
        payload = rng.choice([0, 512, 1232, 1400, 4096, 65535, rng.randint(0, 65535)])
        opt = opt_record(payload, rng.random() < 0.3, options)
    qtype = rng.choice(QTYPES[:-2]) if rng.random() < 0.9 else rng.randint(0, 65535)
    if qtype == 41:
        qtype = 1
    return Query(
        id=rng.randint(0, 0xFFFF),
        flags=flags,
        name=name_wire(random_labels(rng, names)),
        qtype=qtype,
        qclass=rng.choice(QCLASSES),
        opt=opt,
    )


def random_packet(rng: random.Random) -> bytes:
    """Random bytes, often with a plausible header so that the rest gets read."""
    body = rng.randbytes(rng.choice([0, 1, 5, 11, 12, 13, 17, 30, 64, 200, rng.randint(0, 600)]))
    if len(body) >= 12 and rng.random() < 0.5:
        head = HEADER.pack(
            rng.randint(0, 0xFFFF), rng.randint(0, 0xFFFF) & 0x7FFF, 1, 0, 0, rng.choice([0, 1])
        )
        body = head + body[12:]
    return body


def _bitflip(rng: random.Random, q: Query) -> bytes:
    data = bytearray(q.wire())
    for _ in range(rng.randint(1, 8)):
        pos = rng.randrange(len(data))
        data[pos] ^= 1 << rng.randrange(8)
    return bytes(data)


def _bytes(rng: random.Random, q: Query) -> bytes:
    data = bytearray(q.wire())
    for _ in range(rng.randint(1, 4)):
        data[rng.randrange(len(data))] = rng.choice(
            [0, 0x3F, 0x40, 0x7F, 0xC0, 0xFF, rng.randint(0, 255)]
        )
    return bytes(data)


def _truncate(rng: random.Random, q: Query) -> bytes:
    data = q.wire()
    return data[: rng.randrange(len(data))]


def _extend(rng: random.Random, q: Query) -> bytes:
    return q.wire() + rng.randbytes(rng.randint(1, 64))


def _counts(rng: random.Random, q: Query) -> bytes:
    values = [0, 1, 2, 3, 255, 0xFFFF, rng.randint(0, 0xFFFF)]
    field_ = rng.choice(["qd", "an", "ns", "ar"])
    setattr(q, field_, rng.choice(values))
    return q.wire()


def _qr(rng: random.Random, q: Query) -> bytes:
    q.flags |= 0x8000
    return q.wire()


def _opcode(rng: random.Random, q: Query) -> bytes:
    q.flags = (q.flags & ~0x7800) | (rng.randint(1, 15) << 11)
    return q.wire()


def _header_bits(rng: random.Random, q: Query) -> bytes:
    q.flags ^= rng.choice([0x0400, 0x0200, 0x0080, 0x0040, 0x000F, rng.randint(0, 0x7FFF)])
    return q.wire()


def _class_type(rng: random.Random, q: Query) -> bytes:
    q.qtype = rng.choice([rng.randint(0, 0xFFFF), 0, 41, 252, 251, 255, 0xFF00])
    q.qclass = rng.choice([rng.randint(0, 0xFFFF), 0, 2, 3, 254, 255])
    return q.wire()


def _label_length(rng: random.Random, q: Query) -> bytes:
    name = bytearray(q.name)
    offsets = []
    i = 0
    while i < len(name) and name[i]:
        offsets.append(i)
        i += 1 + name[i]
    pos = rng.choice(offsets or [0])
    name[pos] = rng.choice([64, 65, 127, 128, 0x80, 0xBF, rng.randint(64, 255), len(name) + 5])
    q.name = bytes(name)
    return q.wire()


def _pointer(rng: random.Random, q: Query) -> bytes:
    """A compression pointer in the question: into the header, at itself, forward, a loop."""
    labels = text_labels("web.default.svc.cluster.local")
    keep = b"".join(bytes([len(label)]) + label for label in labels[: rng.randint(0, 3)])
    here = 12 + len(keep)
    target = rng.choice([0, 2, 4, 5, 11, here, here + 2, 12, rng.randint(0, 0x3FFF)])
    q.name = keep + struct.pack("!H", 0xC000 | target)
    if rng.random() < 0.3:  # a second pointer pointing back at the first: a loop
        q.name += struct.pack("!H", 0xC000 | here)
    return q.wire()


def _long_name(rng: random.Random, q: Query) -> bytes:
    count = rng.choice([4, 5, 8, 120])
    size = rng.choice([63, 62, 1])
    q.name = (bytes([size]) + b"a" * size) * count + b"\x00"
    return q.wire()


def _two_questions(rng: random.Random, q: Query) -> bytes:
    if rng.random() < 0.5:
        question = q.name + struct.pack("!HH", q.qtype, q.qclass)
        q.qd = 2
        data = bytearray(q.wire())
        at = 12 + len(question)
        return bytes(data[:at]) + question + bytes(data[at:])
    q.qd = 0
    if rng.random() < 0.5:
        return HEADER.pack(q.id, q.flags, 0, 0, 0, 0)
    return q.wire()


def _edns_bad_option(rng: random.Random, q: Query) -> bytes:
    data = rng.randbytes(rng.randint(0, 20))
    claimed = len(data) + rng.choice([1, 5, 100, -1, 0xFFFF])
    rdata = struct.pack("!HH", rng.choice(OPTION_CODES), claimed & 0xFFFF) + data
    if rng.random() < 0.5:
        rdata += b"\x00"  # a byte that is not a whole option header
    q.opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, len(rdata)) + rdata
    return q.wire()


def _edns_repeated(rng: random.Random, q: Query) -> bytes:
    code = rng.choice(OPTION_CODES)
    data = rng.randbytes(rng.choice([0, 4, 8]))
    q.opt = opt_record(4096, rng.random() < 0.5, [(code, data)] * rng.randint(2, 60))
    return q.wire()


def _opt_not_root(rng: random.Random, q: Query) -> bytes:
    owner = rng.choice([b"\x01a\x00", b"\xc0\x0c", b"\xc0\x00", b"\x03com\x00"])
    q.opt = opt_record(1232, owner=owner)
    return q.wire()


def _two_opt(rng: random.Random, q: Query) -> bytes:
    q.opt = opt_record(1232) + opt_record(rng.choice([512, 4096]), rng.random() < 0.5)
    q.ar = 2
    return q.wire()


def _opt_version(rng: random.Random, q: Query) -> bytes:
    q.opt = opt_record(1232, version=rng.randint(1, 255), ext_rcode=rng.choice([0, 1, 255]))
    return q.wire()


def _opt_rdlen(rng: random.Random, q: Query) -> bytes:
    options = [(10, rng.randbytes(8))]
    true = 12
    q.opt = opt_record(
        1232, options=options, rdlen=rng.choice([0, 1, 3, true - 1, true + 1, 0xFFFF])
    )
    return q.wire()


def _opt_qtype(rng: random.Random, q: Query) -> bytes:
    q.qtype = 41
    return q.wire()


def _extra_record(rng: random.Random, q: Query) -> bytes:
    """A further record in the additional section: plain, with a looping owner, or cut short."""
    owner = rng.choice([b"\x00", b"\xc0\x0c", b"\xc0\x00", b"\x01x\x00"])
    rr = owner + struct.pack("!HHIH", 16, 1, 0, 2) + b"\x01x"
    if rng.random() < 0.3:
        rr = rr[: rng.randrange(len(rr))]
    q.extra = rr
    q.ar = (1 if q.opt is not None else 0) + 1
    return q.wire()


MUTATIONS: dict[str, Callable[[random.Random, Query], bytes]] = {
    "bitflip": _bitflip,
    "bytes": _bytes,
    "truncate": _truncate,
    "extend": _extend,
    "counts": _counts,
    "qr": _qr,
    "opcode": _opcode,
    "header-bits": _header_bits,
    "class-type": _class_type,
    "label-length": _label_length,
    "pointer": _pointer,
    "long-name": _long_name,
    "qdcount": _two_questions,
    "edns-bad-option": _edns_bad_option,
    "edns-repeated": _edns_repeated,
    "opt-not-root": _opt_not_root,
    "two-opt": _two_opt,
    "opt-version": _opt_version,
    "opt-rdlen": _opt_rdlen,
    "opt-qtype": _opt_qtype,
    "extra-record": _extra_record,
}


def mutate(rng: random.Random, q: Query, family: str | None = None) -> tuple[str, bytes]:
    """One mutation of `q` (changed in place): (the family's name, the packet)."""
    family = family or rng.choice(list(MUTATIONS))
    return family, MUTATIONS[family](rng, q)


def packet(rng: random.Random, names: Sequence[str]) -> tuple[str, bytes]:
    """The next packet to send: (family, bytes)."""
    roll = rng.random()
    if roll < 0.2:
        return "valid", valid_query(rng, names).wire()
    if roll < 0.28:
        return "random", random_packet(rng)
    return mutate(rng, valid_query(rng, names))


def should_drop(data: bytes) -> bool:
    """What RFC 1035 leaves unanswerable: no whole header, or a response rather than a query."""
    return len(data) < 12 or bool(data[2] & 0x80)


# -- replies ---------------------------------------------------------------------------------


RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP"}
RCODE_NAMES.update({5: "REFUSED", 9: "NOTAUTH", 16: "BADVERS"})


def _question_span(data: bytes) -> int:
    """Offset past an uncompressed first question; 0 when there is none or it is compressed."""
    if len(data) < 12 or data[4:6] == b"\x00\x00":
        return 0
    i = 12
    while i < len(data) and data[i]:
        if data[i] > 63:
            return 0
        i += 1 + data[i]
    return i + 5 if i + 5 <= len(data) else 0


#: The UDP payload kdns advertises and sends at most (its default --max-udp).
MAX_UDP = 1232


def udp_limit(query: dns.message.Message, max_udp: int = MAX_UDP) -> int:
    """The largest UDP reply `query` may get (RFC 6891 6.2.3 and 6.2.5; 512 without EDNS)."""
    return min(max(512, query.payload), max_udp) if query.edns >= 0 else 512


def reference_reply(
    query: dns.message.Message,
    answer: Sequence[dns.rrset.RRset],
    additional: Sequence[dns.rrset.RRset] = (),
    *,
    udp: bool,
    max_udp: int = MAX_UDP,
) -> tuple[dns.message.Message, bool]:
    """The reply `query` must get when its answer is these records, built by dnspython alone
    (none of kdns's encoder): (the full reply, whether it must go out truncated instead)."""
    reply = dns.message.make_response(query)
    reply.flags |= dns.flags.AA
    if query.edns >= 0:
        reply.use_edns(0, query.ednsflags & dns.flags.DO, max_udp)
    reply.answer = [*answer]
    reply.additional = [*additional]
    size = len(reference_wire(reply))
    return reply, udp and size > udp_limit(query, max_udp)


def reference_wire(reply: dns.message.Message) -> bytes:
    """`reply.to_wire()`, except that no name points into the question but owners equal to it,
    and glue named like an SRV target points to that target (the target itself is written
    whole, RFC 2782): so targets and glue keep their own spelling whatever case the question
    was asked in. dnspython's own `to_wire` would point them into the question instead."""
    out = dns.renderer.Renderer(reply.id, reply.flags, 65535)
    question = reply.question[0]
    out.add_question(question.name, question.rdtype, question.rdclass)
    # Only owners equal to the question point to it; every other name is written in its own
    # spelling (kdns/dns/wire.py), so the question's suffixes are not offered for compression.
    for name in [n for n in out.compress if n != question.name]:
        del out.compress[name]
    for rrset in reply.answer:
        for rd in rrset:
            out.add_rrset(dns.renderer.ANSWER, dns.rrset.from_rdata(rrset.name, rrset.ttl, rd))
            if rd.rdtype == dns.rdatatype.SRV:
                at = out.output.tell() - len(rd.target.to_wire())
                if at < 0x4000:
                    out.compress.setdefault(rd.target, at)
    for rrset in reply.authority:
        out.add_rrset(dns.renderer.AUTHORITY, rrset)
    for rrset in reply.additional:
        out.add_rrset(dns.renderer.ADDITIONAL, rrset)
    if reply.edns >= 0:
        out.add_edns(reply.edns, reply.ednsflags, reply.payload, reply.options)
    out.write_header()
    return out.get_wire()


def _alone(rrset: dns.rrset.RRset, rd: dns.rdata.Rdata) -> dns.rrset.RRset:
    """An RRset of `rrset`'s owner and type holding only `rd`."""
    one = dns.rrset.RRset(rrset.name, rrset.rdclass, rrset.rdtype)
    one.add(rd, rrset.ttl)
    return one


def judge_reply(
    query: dns.message.Message,
    wire: bytes,
    answer: Sequence[dns.rrset.RRset],
    additional: Sequence[dns.rrset.RRset] = (),
    *,
    udp: bool,
    max_udp: int = MAX_UDP,
) -> list[str]:
    """What is wrong with `wire` as the reply to `query` whose answer is `answer` (+ additional):
    TC exactly when the reference reply does not fit the client's limit, and then records of the
    reference only, the answer's first, as many as fit (no room left for another of them, as
    CoreDNS's DNS library truncates); otherwise every expected record, and the same size as the
    reference (same compression)."""
    full, must_truncate = reference_reply(query, answer, additional, udp=udp, max_udp=max_udp)
    try:
        got = dns.message.from_wire(wire)
    except dns.exception.DNSException as exc:
        return [f"unreadable reply: {exc!r}"]
    problems = []
    if got.id != query.id or not got.flags & dns.flags.QR or got.rcode() != dns.rcode.NOERROR:
        problems.append(f"header: id {got.id}, flags {got.flags:#x}, rcode {got.rcode()}")
    if udp and len(wire) > udp_limit(query, max_udp):
        problems.append(f"{len(wire)} bytes over UDP, limit {udp_limit(query, max_udp)}")
    if (got.edns >= 0) != (query.edns >= 0):
        problems.append(f"EDNS {got.edns} in the reply to a query with EDNS {query.edns}")
    truncated = bool(got.flags & dns.flags.TC)

    def content(sections: Sequence[dns.rrset.RRset]) -> set[tuple[str, int, str]]:
        return {
            (rrset.name.to_text().lower(), rrset.rdtype, rd.to_text())
            for rrset in sections
            for rd in rrset
        }

    if truncated != must_truncate:
        size = len(reference_wire(full))
        problems.append(f"TC={int(truncated)}, reference {size} bytes, limit {udp_limit(query)}")
    elif truncated:
        kept, whole = content(got.answer), content(full.answer)
        if not kept <= whole or not content(got.additional) <= content(full.additional):
            problems.append("a truncated reply with records the full one does not have")
        if got.authority or (got.additional and kept != whole):
            problems.append("a truncated reply with records after an answer cut short")
        # No room left: had the largest record of the answer it left out been added at its
        # size without compression (more than kdns gives it), the reply would not have fit.
        left_out = [
            (rrset, rd)
            for rrset in full.answer
            for rd in rrset
            if content([_alone(rrset, rd)]) - kept
        ]
        if left_out:
            largest = max(
                len(rrset.name.to_wire() or b"") + 10 + len(rd.to_wire() or b"")
                for rrset, rd in left_out
            )
            if len(wire) + largest <= udp_limit(query, max_udp):
                problems.append(f"a truncated reply of {len(wire)} bytes, room for a record")
    else:
        if content(got.answer) != content(full.answer):
            problems.append(f"answer {got.answer} instead of {full.answer}")
        if content(got.additional) != content(full.additional):
            problems.append(f"additional {got.additional} instead of {full.additional}")
        targets = {
            rd.target.to_text() for rrset in got.answer if rrset.rdtype == 33 for rd in rrset
        }
        misspelled = [
            rrset.name.to_text()
            for rrset in got.additional
            if rrset.name in {dns.name.from_text(t) for t in targets}
            and rrset.name.to_text() not in targets
        ]
        if misspelled:
            problems.append(f"glue {misspelled} not spelled as its SRV target")
        size = len(reference_wire(full))
        if len(wire) != size:
            problems.append(f"{len(wire)} bytes, reference {size}")
    return problems


def check_reply(query: bytes, reply: bytes, udp: bool) -> tuple[str, list[str]]:
    """(outcome, problems) for one reply to `query`."""
    problems: list[str] = []
    if len(reply) < 12:
        return "malformed", [f"reply shorter than a header: {reply.hex()}"]
    if reply[:2] != query[:2]:
        problems.append("reply ID differs from the query's")
    if not reply[2] & 0x80:
        problems.append("QR not set in a reply")
    try:
        msg = dns.message.from_wire(reply)
    except Exception as exc:
        return "malformed", [f"dnspython cannot parse the reply ({exc!r}): {reply.hex()}"]
    outcome = RCODE_NAMES.get(msg.rcode(), f"RCODE{msg.rcode()}")
    if udp:
        limit = 512
        if msg.edns >= 0:
            limit = 1232
            with contextlib.suppress(Exception):
                asked = dns.message.from_wire(query)
                limit = min(1232, max(512, asked.payload)) if asked.edns >= 0 else 1232
        if len(reply) > limit:
            problems.append(f"UDP reply of {len(reply)} bytes over the client's limit {limit}")
    span = _question_span(query)
    if span and msg.question and reply[12:span] != query[12:span]:
        problems.append("question not echoed as asked")
    if msg.rcode() == 0 and msg.question and not msg.flags & dns.flags.TC:
        asked_type = msg.question[0].rdtype
        if asked_type not in (dns.rdatatype.ANY, dns.rdatatype.AXFR, dns.rdatatype.IXFR):
            for rrset in msg.answer:
                if rrset.rdtype not in (asked_type, dns.rdatatype.CNAME):
                    problems.append(
                        f"{dns.rdatatype.to_text(asked_type)} question for"
                        f" {msg.question[0].name} answered with"
                        f" {dns.rdatatype.to_text(rrset.rdtype)}"
                    )
                    break
    if msg.flags & dns.flags.TC:
        outcome += "+TC"
    return outcome, problems


# -- the server ------------------------------------------------------------------------------


@dataclass
class Kdns:
    proc: subprocess.Popen[str]
    port: int = 0
    lines: int = 0
    tracebacks: int = 0
    errors: list[str] = field(default_factory=list)
    tail: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, zones: Path, extra: Sequence[str], timeout: float = 20.0) -> Kdns:
        cmd = [sys.executable, "-m", "kdns", "serve", "--zones", str(zones)]
        cmd += ["--listen", "127.0.0.1:0", "--lameduck", "0", *extra]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
            errors="replace",
        )
        kdns = cls(proc)
        ready = threading.Event()

        def reader() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                kdns.lines += 1
                if "kdns.query" not in line:
                    kdns.tail = [*kdns.tail[-40:], line.rstrip("\n")]
                if line.startswith("Traceback"):
                    kdns.tracebacks += 1
                elif " ERROR " in line and len(kdns.errors) < 20:
                    kdns.errors.append(line.strip()[:300])
                m = SERVING.search(line)
                if m and not kdns.port:
                    kdns.port = int(m.group(2))
                    ready.set()
            ready.set()

        threading.Thread(target=reader, daemon=True).start()
        if not ready.wait(timeout) or not kdns.port:
            kdns.stop()
            raise RuntimeError("kdns did not start:\n" + "\n".join(kdns.tail))
        return kdns

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_kb(self) -> int:
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return 0
        m = re.search(r"VmRSS:\s+(\d+)", status)
        return int(m.group(1)) if m else 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # stop at once
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# -- expectations ----------------------------------------------------------------------------

Expected = dict[tuple[str, str], set[str]]


#: The headless service `prepare_zones` adds: its port is 8080, its endpoints listen on 8081.
BIG_PORT, BIG_TARGET_PORT = 8080, 8081


def big_address(i: int) -> str:
    return f"10.77.{i // 250}.{i % 250 + 1}"


def prepare_zones(source: Path, into: Path, headless: int) -> Path:
    zones = into / "zones"
    shutil.copytree(source, zones)
    if headless:
        addresses = "\n".join(f"      - ip: {big_address(i)}" for i in range(headless))
        (zones / "zz-fuzz-big.yaml").write_text(
            "apiVersion: v1\nkind: Service\nmetadata: {name: big, namespace: fuzz}\n"
            f"spec:\n  clusterIP: None\n  ports: [{{name: http, port: {BIG_PORT},"
            f" targetPort: {BIG_TARGET_PORT}, protocol: TCP}}]\n"
            "---\napiVersion: v1\nkind: Endpoints\nmetadata: {name: big, namespace: fuzz}\n"
            f"subsets:\n  - addresses:\n{addresses}\n"
            f"    ports: [{{name: http, port: {BIG_TARGET_PORT}, protocol: TCP}}]\n"
        )
    return zones


def big_records(headless: int) -> Expected:
    """The records of `big.fuzz`, written out from the spec and the data `prepare_zones` wrote,
    with no help from kdns (whose `kdns records` uses the engine being tested)."""
    base = "big.fuzz.svc.cluster.local."
    expected: Expected = {}
    for i in range(headless):
        address = big_address(i)
        label = address.replace(".", "-")
        expected[(f"{label}.{base}", "A")] = {address}
        srv = f"0 {max(1, 100 // headless)} {BIG_TARGET_PORT} {label}.{base}"
        for owner in (base, f"_http._tcp.{base}"):
            expected.setdefault((owner, "SRV"), set()).add(srv)
        expected.setdefault((base, "A"), set()).add(address)
    return expected


def _normal(rdtype: str, text: str) -> str:
    rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), text)
    return rdata.to_text()


def expected_records(zones: Path) -> Expected:
    """Every record `kdns records` prints (but the SOA, whose serial moves), by name and type."""
    out = subprocess.run(
        [sys.executable, "-m", "kdns", "records", "--zones", str(zones)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=True,
    ).stdout
    expected: Expected = {}
    for line in out.splitlines():
        if not line.strip() or line.startswith(";"):
            continue
        name, _ttl, _cls, rdtype, rdata = line.split(None, 4)
        if rdtype == "SOA":
            continue
        expected.setdefault((name.lower(), rdtype), set()).add(_normal(rdtype, rdata))
    return expected


def _sections(
    expected: Expected, name: str, rdtype: str, ttl: int
) -> tuple[list[dns.rrset.RRset], list[dns.rrset.RRset]]:
    """The answer and additional sections a reply must carry, from `expected` alone: the
    records, plus the addresses of SRV targets, or the glue of the NS (the address kdns listens
    on here) (dns-behaviour.md)."""
    answer = [dns.rrset.from_text_list(name, ttl, "IN", rdtype, sorted(expected[(name, rdtype)]))]
    additional = []
    if rdtype == "NS":
        for target in sorted(expected[(name, rdtype)]):
            additional.append(dns.rrset.from_text(target, ttl, "IN", "A", "127.0.0.1"))
    if rdtype == "SRV":
        for target in sorted({text.split()[-1].lower() for text in expected[(name, rdtype)]}):
            for family in ("A", "AAAA"):
                if (target, family) in expected:
                    rdatas = sorted(expected[(target, family)])
                    additional.append(dns.rrset.from_text_list(target, ttl, "IN", family, rdatas))
    return answer, additional


def ask(port: int, q: dns.message.Message, tcp: bool) -> bytes:
    """The reply to `q` over UDP or TCP, as bytes (a lost datagram is retried, not counted)."""
    last: Exception | None = None
    for _ in range(3):
        try:
            if tcp:
                return _ask_tcp(port, q.to_wire())
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(2)
                sock.sendto(q.to_wire(), ("127.0.0.1", port))
                while True:
                    data, _ = sock.recvfrom(65535)
                    if data[:2] == q.to_wire()[:2]:
                        return data
        except (TimeoutError, dns.exception.Timeout) as exc:
            last = exc
    raise RuntimeError(f"no answer for {q.question[0]}: {last!r}")


def _ask_tcp(port: int, query: bytes) -> bytes:
    """The reply's own bytes over TCP (dns.query.tcp would hand back dnspython's re-encoding
    of it, whose size and compression are dnspython's, not kdns's)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(struct.pack("!H", len(query)) + query)
        data = b""
        while len(data) < 2 or len(data) < 2 + struct.unpack_from("!H", data)[0]:
            chunk = sock.recv(65537)
            if not chunk:
                raise RuntimeError(f"TCP connection closed after {len(data)} bytes")
            data += chunk
        return data[2 : 2 + struct.unpack_from("!H", data)[0]]


@dataclass
class Amplification:
    ratio: float = 0.0
    query: str = ""
    sizes: tuple[int, int] = (0, 0)


def check_known(
    port: int, expected: Expected, amp: dict[str, Amplification] | None = None, ttl: int = 5
) -> list[str]:
    """Every known name answers as expected: over UDP, TC=1 exactly when the reply built by
    dnspython from the expected records does not fit the client's limit, and then the whole
    answer over TCP. Measures amplification when `amp` is given."""
    problems = []
    for (name, rdtype), _want in sorted(expected.items()):
        answer, additional = _sections(expected, name, rdtype, ttl)
        for edns in (False, True) if amp is not None else (True,):
            q = dns.message.make_query(name, rdtype, use_edns=0 if edns else False, payload=1232)
            try:
                wire = ask(port, q, tcp=False)
                found = judge_reply(q, wire, answer, additional, udp=True)
                if dns.message.from_wire(wire).flags & dns.flags.TC:
                    found += judge_reply(q, ask(port, q, tcp=True), answer, additional, udp=False)
            except (RuntimeError, dns.exception.DNSException) as exc:
                problems.append(f"{name} {rdtype}: {exc!r}")
                continue
            problems += [f"{name} {rdtype} (EDNS {edns}): {p}" for p in found]
            if amp is not None:
                key = "edns" if edns else "plain"
                qsize, rsize = len(q.to_wire()), len(wire)
                if rsize / qsize > amp[key].ratio:
                    amp[key] = Amplification(rsize / qsize, f"{name} {rdtype}", (qsize, rsize))
    if amp is not None:  # ANY for every name, too
        for name in sorted({n for n, _ in expected}):
            for edns in (False, True):
                q = dns.message.make_query(name, "ANY", use_edns=0 if edns else False, payload=1232)
                try:
                    wire = ask(port, q, tcp=False)
                except RuntimeError as exc:
                    problems.append(str(exc))
                    continue
                key = "edns" if edns else "plain"
                qsize, rsize = len(q.to_wire()), len(wire)
                if rsize / qsize > amp[key].ratio:
                    amp[key] = Amplification(rsize / qsize, f"{name} ANY", (qsize, rsize))
    return problems


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Run:
    kdns: Kdns
    rng: random.Random
    names: list[str]
    outcomes: Counter[str] = field(default_factory=Counter)
    families: Counter[str] = field(default_factory=Counter)
    problems: dict[str, list[str]] = field(default_factory=dict)  # kind -> a few examples
    problem_kinds: Counter[str] = field(default_factory=Counter)
    udp_sent: int = 0
    tcp_sent: int = 0
    tcp_sessions: Counter[str] = field(default_factory=Counter)
    missing: int = 0
    late: int = 0
    next_id: int = 0
    pending: dict[bytes, tuple[str, bytes, float]] = field(default_factory=dict)
    silent: dict[bytes, tuple[str, bytes, float]] = field(default_factory=dict)
    #: kdns reads UDP in batches (not with --log-queries): it drops datagrams of `SLOT` bytes or
    #: more unanswered, as documented (kdns.serve.batch); long-name packets reach that size.
    batched: bool = True

    def problem(self, kind: str, text: str) -> None:
        self.problem_kinds[kind] += 1
        examples = self.problems.setdefault(kind, [])
        if len(examples) < 3:
            examples.append(text)

    def fresh_id(self, data: bytes) -> bytes:
        self.next_id = (self.next_id + 1) & 0xFFFF
        if len(data) < 2:
            return data
        return struct.pack("!H", self.next_id) + data[2:]

    # -- UDP ---------------------------------------------------------------------------------

    def udp_window(self, sock: socket.socket, count: int) -> int:
        """Send `count` datagrams, then read replies until this window's are in or 50 ms pass
        in silence. A reply may come late (kdns paused, say for a garbage collection): it is
        matched in a later window; one that has not come within `UDP_PATIENCE` is missing."""
        now = time.monotonic()
        window = set()
        for _ in range(count):
            family, data = packet(self.rng, self.names)
            data = self.fresh_id(data)
            self.families[family] += 1
            if should_drop(data) or (self.batched and len(data) >= SLOT):
                self.outcomes["dropped"] += 1
                if len(data) >= 2:
                    self.silent[data[:2]] = (family, data, now)
            else:
                self.pending[data[:2]] = (family, data, now)
                window.add(data[:2])
            sock.sendto(data, ("127.0.0.1", self.kdns.port))
        self.udp_sent += count
        self.receive(sock, window, quiet=0.05, patience=2.0)
        self.expire(time.monotonic() - UDP_PATIENCE)
        return count

    def receive(
        self, sock: socket.socket, wanted: set[bytes], quiet: float, patience: float
    ) -> None:
        """Read replies until every ID in `wanted` is answered, `quiet` s pass without one, or
        `patience` s pass."""
        deadline = time.monotonic() + patience
        last = time.monotonic()
        while wanted & self.pending.keys() and time.monotonic() < deadline:
            ready, _, _ = select.select([sock], [], [], quiet)
            if not ready:
                if time.monotonic() - last >= quiet:
                    break
                continue
            reply = sock.recv(65535)
            last = time.monotonic()
            key = reply[:2]
            if key in self.silent:
                family, data, _ = self.silent.pop(key)
                self.problem(
                    "udp reply to a packet that must be dropped",
                    f"udp: a reply to a packet that must be dropped ({family}) {data.hex()}",
                )
                continue
            if key not in self.pending:
                self.problem(
                    "udp reply with an unknown ID",
                    f"udp: a reply with an unknown ID: {reply[:40].hex()}",
                )
                continue
            family, data, _ = self.pending.pop(key)
            if key not in wanted:
                self.late += 1
            outcome, problems = check_reply(data, reply, udp=True)
            self.outcomes[outcome] += 1
            for p in problems:
                self.problem(_kind(p), f"udp {family} {data.hex()}: {p}")

    def expire(self, before: float) -> None:
        """Count as unanswered the queries sent before `before` that got no reply."""
        for key, (family, data, sent_at) in list(self.pending.items()):
            if sent_at < before:
                del self.pending[key]
                self.missing += 1
                self.outcomes["unanswered"] += 1
                self.problem(
                    "udp query unanswered", f"udp: no reply to a query ({family}) {data.hex()}"
                )
        for key, (_, _, sent_at) in list(self.silent.items()):
            if sent_at < before:
                del self.silent[key]

    # -- TCP ---------------------------------------------------------------------------------

    def tcp_session(self, limit: int) -> int:
        scenario = self.rng.choice(
            ["pipeline"] * 6 + ["huge-prefix", "partial-prefix", "mid-message", "zero-length"]
            + ["abandon", "oversized-claim"]
        )  # fmt: skip
        self.tcp_sessions[scenario] += 1
        try:
            sock = socket.create_connection(("127.0.0.1", self.kdns.port), timeout=2)
        except OSError as exc:
            self.problem("tcp connect failed", f"tcp: cannot connect: {exc}")
            return 1
        try:
            return self._session(sock, scenario, limit)
        except OSError as exc:
            if scenario in ("pipeline", "zero-length"):
                self.problem("tcp socket error", f"tcp {scenario}: {exc!r}")
            return 1
        finally:
            sock.close()

    def _session(self, sock: socket.socket, scenario: str, limit: int) -> int:
        rng = self.rng
        if scenario == "huge-prefix":
            sock.sendall(b"\xff\xff" + rng.randbytes(rng.randint(0, 200)))
            self.outcomes["dropped"] += 1
            return 1
        if scenario == "partial-prefix":
            sock.sendall(rng.randbytes(1))
            self.outcomes["dropped"] += 1
            return 1
        if scenario in ("mid-message", "oversized-claim"):
            data = valid_query(rng, self.names).wire()
            claim = len(data) if scenario == "mid-message" else len(data) + rng.randint(1, 60000)
            framed = struct.pack("!H", min(claim, 0xFFFF)) + data
            sock.sendall(
                framed[: rng.randint(2, len(framed) - 1)] if claim == len(data) else framed
            )
            self.outcomes["dropped"] += 1
            return 1
        if scenario == "abandon":
            count = rng.randint(1, max(1, min(10, limit)))
            msgs = [valid_query(rng, self.names).wire() for _ in range(count)]
            sock.sendall(b"".join(struct.pack("!H", len(m)) + m for m in msgs))
            self.outcomes["abandoned"] += len(msgs)
            return len(msgs)
        msgs = []
        if scenario == "zero-length":
            msgs.append(b"")
        # Never more messages than `limit`, the packets left: the run sends exactly --packets.
        room = min(30, limit - len(msgs))
        for _ in range(rng.randint(1, room) if room >= 1 else 0):
            family, data = packet(rng, self.names)
            self.families[family] += 1
            msgs.append(self.fresh_id(data))
        # kdns answers every message up to the first undecodable one, then closes.
        answerable: list[bytes] = []
        for m in msgs:
            if should_drop(m):
                break
            answerable.append(m)
        self.tcp_sent += len(msgs)
        self.outcomes["dropped"] += len(msgs) - len(answerable)
        stream = b"".join(struct.pack("!H", len(m)) + m for m in answerable)
        rest = b"".join(struct.pack("!H", len(m)) + m for m in msgs[len(answerable) :])
        # Split the stream at random points: a length prefix or a message may arrive in pieces.
        cuts = sorted(
            rng.sample(range(1, len(stream)), min(max(0, len(stream) - 1), rng.randint(0, 6)))
        )
        for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            sock.sendall(stream[a:b])
        reader = _Frames(sock)
        for m in answerable:
            reply = reader.next(2.0)
            if reply is None:
                self.missing += 1
                self.outcomes["unanswered"] += 1
                self.problem("tcp query unanswered", f"tcp {scenario}: no reply to {m.hex()}")
                return len(msgs)
            outcome, problems = check_reply(m, reply, udp=False)
            self.outcomes[outcome] += 1
            for p in problems:
                self.problem(_kind(p), f"tcp {m.hex()}: {p}")
        if rest:
            with contextlib.suppress(OSError):  # kdns may close before it has read it all
                sock.sendall(rest)
        if rest and not reader.closed(2.0):
            self.problem(
                "tcp not closed",
                f"tcp {scenario}: connection not closed after an undecodable message",
            )
        return len(msgs)


def _kind(problem: str) -> str:
    """The kind of a problem `check_reply` found, for the counts."""
    for word, kind in (
        ("answered with", "answer of another type"),
        ("limit", "UDP reply too large"),
        ("echoed", "question not echoed"),
        ("ID", "reply ID differs"),
        ("QR", "QR not set"),
    ):
        if word in problem:
            return kind
    return "malformed reply"


class _Frames:
    """Length-prefixed messages from a socket, each read with a deadline."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self, deadline: float) -> bool:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            return False
        if not chunk:
            return False
        self.buf += chunk
        return True

    def next(self, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        while len(self.buf) < 2 or len(self.buf) < 2 + struct.unpack_from("!H", self.buf)[0]:
            if not self._fill(deadline):
                return None
        (size,) = struct.unpack_from("!H", self.buf)
        message, self.buf = self.buf[2 : 2 + size], self.buf[2 + size :]
        return message

    def closed(self, timeout: float) -> bool:
        """True when the peer closes (or resets) within `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                if not self.sock.recv(65536):
                    return True
            except ConnectionResetError:
                return True
            except TimeoutError:
                return False
        return False


def _stalled(port: int) -> list[socket.socket]:
    """Connections that never complete a message: kdns must close them at its idle timeout."""
    out = []
    for opening in (b"", b"\x00", b"\xff\xff\x00\x01\x02", b"\x00\x20\x12\x34"):
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
        if opening:
            s.sendall(opening)
        out.append(s)
    return out


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.settimeout(0.2)
    try:
        return sock.recv(16) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--packets", type=int, default=100_000, help="packets to send (100,000)")
    ap.add_argument("--seed", type=int, default=None, help="RNG seed (random when left out)")
    ap.add_argument("--zones", type=Path, default=ROOT / "zones", help="zones to serve")
    ap.add_argument("--headless", type=int, default=100, help="endpoints of the added service")
    ap.add_argument("--tcp-share", type=float, default=0.2, help="share of packets sent over TCP")
    ap.add_argument(
        "--warmup", type=float, default=0.25, help="share of packets before the RSS baseline"
    )
    ap.add_argument(
        "--rss-bound-mb", type=float, default=20.0, help="RSS growth allowed after warm-up"
    )
    ap.add_argument("--idle-timeout", type=float, default=2.0, help="kdns --tcp-idle-timeout")
    ap.add_argument("--time-limit", type=float, default=900.0, help="seconds for the whole run")
    ap.add_argument("--log-queries", action="store_true", help="run kdns with --log-queries")
    args = ap.parse_args(argv)

    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    print(f"fuzz: seed {seed}, {args.packets} packets", flush=True)
    rng = random.Random(seed)
    began = time.monotonic()
    deadline = began + args.time_limit
    failures: list[str] = []
    summary: dict[str, Any] = {"seed": seed, "packets_requested": args.packets}
    with tempfile.TemporaryDirectory(prefix="kdns-fuzz-") as tmp:
        zones = prepare_zones(args.zones, Path(tmp), args.headless)
        expected = expected_records(zones)
        # big.fuzz is judged by what this script wrote, not by `kdns records` (the engine).
        independent = big_records(args.headless)
        failures += [
            f"kdns records: {key} {sorted(expected.get(key, set()))} instead of {sorted(want)}"
            for key, want in sorted(independent.items())
            if expected.get(key) != want
        ]
        expected.update(independent)
        names = sorted({n for n, _ in expected} | set(FIXED_NAMES))
        extra = ["--tcp-idle-timeout", str(args.idle_timeout)]
        if args.log_queries:
            extra.append("--log-queries")
        kdns = Kdns.start(zones, extra)
        run = Run(kdns, rng, names, batched=not args.log_queries)
        amp = {"plain": Amplification(), "edns": Amplification()}
        sent = checks = rss_warm = rss_end = 0
        growth = 0.0
        alive = False
        rss_start = rss_max = kdns.rss_kb()
        try:
            failures += [f"before fuzzing: {p}" for p in check_known(kdns.port, expected, amp)]
            rss_start = rss_max = kdns.rss_kb()
            stalled = _stalled(kdns.port)
            stalled_at = time.monotonic()
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            warmup_at = int(args.packets * args.warmup)
            every = max(500, args.packets // 10)
            next_check = every
            while sent < args.packets:
                if time.monotonic() > deadline:
                    failures.append(
                        f"time limit of {args.time_limit}s reached after {sent} packets"
                    )
                    break
                left = args.packets - sent
                if run.tcp_sent + sum(run.tcp_sessions.values()) < args.tcp_share * sent:
                    sent += run.tcp_session(left)
                else:
                    sent += run.udp_window(udp, min(64, left))
                if not rss_warm and sent >= warmup_at:
                    rss_warm = kdns.rss_kb()
                if sent >= next_check or sent >= args.packets:
                    next_check += every
                    checks += 1
                    rss_max = max(rss_max, kdns.rss_kb())
                    if not kdns.alive():
                        failures.append(f"kdns died (exit {kdns.proc.returncode}) after {sent}")
                        break
                    failures += [
                        f"after {sent} packets: {p}" for p in check_known(kdns.port, expected)
                    ]
            run.receive(udp, set(run.pending), quiet=UDP_PATIENCE, patience=UDP_PATIENCE)
            run.expire(float("inf"))
            udp.close()
            # The stalled connections: closed by kdns at its idle timeout.
            wait = stalled_at + args.idle_timeout + 1.5 - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            still_open = sum(not _closed_by_peer(s) for s in stalled)
            for s in stalled:
                s.close()
            if still_open:
                failures.append(f"{still_open} stalled TCP connections outlived the idle timeout")
            alive = kdns.alive()
            if not alive:
                failures.append(f"kdns is not running at the end (exit {kdns.proc.returncode})")
            else:
                failures += [f"at the end: {p}" for p in check_known(kdns.port, expected)]
            rss_end = kdns.rss_kb()
            rss_max = max(rss_max, rss_end)
            growth = (rss_end - rss_warm) / 1024 if rss_warm and rss_end else 0.0
            if growth > args.rss_bound_mb:
                failures.append(
                    f"RSS grew {growth:.1f} MB after warm-up (bound {args.rss_bound_mb} MB)"
                )
            for kind, n in sorted(run.problem_kinds.items()):
                failures.append(f"{kind}: {n}")
            time.sleep(0.2)  # let the log reader catch up
            if kdns.tracebacks:
                failures.append(f"{kdns.tracebacks} tracebacks in the kdns log")
        finally:
            kdns.stop()
    elapsed = time.monotonic() - began
    summary.update(
        {
            "packets": sent,
            "udp_packets": run.udp_sent,
            "tcp_messages": run.tcp_sent,
            "tcp_sessions": dict(run.tcp_sessions),
            "udp_late_replies": run.late,
            "seconds": round(elapsed, 1),
            "alive": alive,
            "crashes": 0 if alive else 1,
            "checks": checks,
            "known_records": sum(len(v) for v in expected.values()),
            "outcomes": dict(sorted(run.outcomes.items())),
            "families": dict(sorted(run.families.items())),
            "rss_kb": {
                "start": rss_start,
                "after_warmup": rss_warm,
                "end": rss_end,
                "max": rss_max,
            },
            "rss_growth_mb": round(growth, 2),
            "rss_bound_mb": args.rss_bound_mb,
            "amplification": {
                k: {"ratio": round(v.ratio, 2), "query": v.query, "sizes": list(v.sizes)}
                for k, v in amp.items()
            },
            "tracebacks": kdns.tracebacks,
            "log_errors": kdns.errors[:5],
            "problem_counts": dict(sorted(run.problem_kinds.items())),
            "problems": run.problems,
            "failures": failures[:20],
            "ok": not failures,
        }
    )
    _report(summary)
    return 0 if not failures else 1


def _report(s: dict[str, Any]) -> None:
    print(f"fuzz: {s['packets']} packets in {s['seconds']} s (seed {s['seed']})")
    print(f"  udp datagrams {s['udp_packets']}, tcp messages {s['tcp_messages']}")
    print(f"  tcp sessions  {s['tcp_sessions']}")
    print(f"  udp replies matched in a later window (after 50 ms quiet): {s['udp_late_replies']}")
    print("  outcomes:")
    for name, n in s["outcomes"].items():
        print(f"    {name:<14} {n}")
    rss = s["rss_kb"]
    print(
        f"  RSS: start {rss['start'] / 1024:.1f} MB, after warm-up {rss['after_warmup'] / 1024:.1f}"
        f" MB, end {rss['end'] / 1024:.1f} MB, max {rss['max'] / 1024:.1f} MB;"
        f" growth after warm-up {s['rss_growth_mb']} MB (bound {s['rss_bound_mb']} MB)"
    )
    for key, a in s["amplification"].items():
        print(f"  amplification ({key}): {a['ratio']}x for {a['query']} {a['sizes']}")
    print(f"  alive: {s['alive']}, crashes: {s['crashes']}, tracebacks: {s['tracebacks']}")
    for kind, examples in s["problems"].items():
        print(f"  problem {kind} ({s['problem_counts'][kind]}), e.g.:")
        for p in examples:
            print(f"    {p[:400]}")
    for line in s["log_errors"]:
        print(f"  kdns log: {line}")
    for f in s["failures"]:
        print(f"  FAILURE: {f}")
    print("fuzz: OK" if s["ok"] else "fuzz: FAILED")
    print("FUZZ-SUMMARY " + json.dumps(s, sort_keys=True), flush=True)


if __name__ == "__main__":
    sys.exit(main())
