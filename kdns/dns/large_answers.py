"""Direct encoding of the large positive answers: a service's addresses and its SRV records.

Why this exists: an answer is encoded once per cache miss, and a miss follows every change to a
service's endpoints. For a headless service of 100 endpoints the engine plus dnslib spend about
1.1 ms on an A answer and 2.7 ms on an SRV answer (building one `RR` object per record, then
packing each); at 200 endpoint changes a second that is most of a core. This module writes the
same bytes straight from the store's `ServiceView`: about 20 µs for that A answer and 170 µs for
that SRV answer.

What it covers, and only this (everything else returns None and takes the engine's path):

    A, AAAA, ANY at <svc>.<ns>.svc.<zone>             the service's addresses
    A, AAAA, ANY at <endpoint>.<svc>.<ns>.svc.<zone>  that endpoint's addresses
    SRV at <svc>.<ns>.svc.<zone>                      every port (the compat form)
    SRV, ANY at _<port>._<proto>.<svc>.<ns>.svc.<zone>  one named port
    A, AAAA at _<port>._<proto>.<svc>.<ns>.svc.<zone>   the addresses its SRV records lead to

for headless and ClusterIP services that have at least one record to give, in class IN. Negative
answers, ExternalName services, SRV at an endpoint's name, other types and names that would make
dnslib raise (odd address spellings, over-long targets) are all left to the engine.

How equality is guaranteed: the engine (`answers.Engine`) and `wire.encode` stay the definition of
the answer. This module dispatches on nothing of its own: it encodes the engine's decision
(`Engine.decide`: rule SERVICE, PORT or ENDPOINT, with the service's view and, for a port, the
SRV targets the engine found; for an endpoint, its addresses), and mirrors only how
`Engine._records`, `_srv` and `_address_records` turn that decision into records (record order,
deduplication, `srv_weight`, glue) and the way dnslib packs the message: the header of `encode`,
the lower-cased question, owners equal to the question as pointers to offset 12, SRV targets
uncompressed, glue pointing to its target, other names compressed through dnslib's
case-sensitive table of every name suffix it wrote (including its 14-bit pointer masking), the
OPT record appended, the question in the spelling it was asked in. The test `tests/test_bulk.py`
generates many services and questions and asserts that every response this module gives equals
`encode(query, engine.resolve(...))` byte for byte; a change to either side that is not made to
the other fails it.

Once per change, not once per question. What follows the question (the records and glue) is a
function of the service's view, the question's lower-cased name and the TTL only: not of the
name's spelling, the EDNS state, the ID or the flags. A `Bodies` memo, kept by the responder,
holds those sections for the views answered last, so the same service asked with and without
EDNS, with DO, or for A then ANY, is encoded once per change of it (a view is immutable, and a
change makes a new one; the memo holds a view while it keeps its bodies, so its identity is
never reused meanwhile).
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Sequence
from functools import lru_cache

from dnslib import AAAA, A

from kdns.dns.resolution import Engine, Resolution, Rule, srv_targets, srv_weight
from kdns.dns.wire import CD, DEFAULT_MAX_UDP, HEADER, RD, Query, opt_record
from kdns.state.model import ip_family
from kdns.state.store import ServiceView, ViewMemo

_A, _AAAA, _SRV, _ANY = 1, 28, 33, 255
#: Address family each question type asks for (None: both).
_FAMILY: dict[int, int | None] = {_A: 4, _AAAA: 6, _ANY: None}
_TYPES = frozenset((_A, _AAAA, _SRV, _ANY))
_RULES = (Rule.SERVICE, Rule.PORT, Rule.ENDPOINT)
#: QR and AA: every answer given here is authoritative NOERROR.
_FLAGS = 0x8000 | 0x0400
_OWNER = b"\xc0\x0c"  # the question, at offset 12
_LENGTH = struct.Struct("!H")
_SRV_RDATA = struct.Struct("!HHHH")  # rdlength, priority, weight, port
_TTL = struct.Struct("!I")
_MAX_MESSAGE = 65535
_AF = ((4, socket.AF_INET), (6, socket.AF_INET6))


#: (records and glue, answer count, additional count), or None: not an answer given here
_Body = tuple[bytes, int, int] | None


class Bodies(ViewMemo[dict[tuple[object, ...], _Body]]):
    """The encoded sections of the last `views` service views answered (see the module's
    docstring), by what else each depends on; empty for a view new here."""

    __slots__ = ()

    def __init__(self, views: int = 64) -> None:
        super().__init__(lambda _view: {}, views)


def encode_bulk(
    engine: Engine,
    query: Query,
    max_udp: int = DEFAULT_MAX_UDP,
    resolution: Resolution | None = None,
    bodies: Bodies | None = None,
) -> bytes | None:
    """`encode(query, engine.resolve(...), max_udp=max_udp)` for the answers this module covers.

    `resolution` is the engine's decision for the query's name (`Engine.decide`), made here
    when not given; `bodies`, the sections already encoded for the same view. None for every
    other question, and for answers over 65535 bytes (the caller trims those).
    """
    qtype = query.qtype
    if query.qclass != 1 or qtype not in _TYPES:
        return None
    raw = query.labels
    res = resolution if resolution is not None else engine.decide(engine.parse(raw))
    rule = res.rule
    view = res.view
    cluster = res.request.zone
    if rule not in _RULES or view is None or cluster is None:
        return None
    ttl = engine.ttl
    if not 0 <= ttl <= 0xFFFFFFFF:
        return None
    ttl_bytes = _TTL.pack(ttl)
    # What the sections depend on besides the view: the lower-cased name (it decides the rule
    # and the port; its length, where the glue's pointers point), the type, the TTL.
    key = (tuple(raw), cluster.domain, qtype, ttl_bytes)
    kept = bodies.of(view) if bodies is not None else None
    if kept is not None and key in kept:
        found_body = kept[key]
    else:
        found_body = _body(rule, qtype, view, res, cluster.domain, raw, len(query.name), ttl_bytes)
        if kept is not None:
            kept[key] = found_body
    if found_body is None:
        return None
    body, an, ar = found_body
    flags = _FLAGS | (query.flags & RD) | (query.flags & CD)
    edns = 1 if query.edns else 0
    out = b"".join(
        (
            HEADER.pack(query.id, flags, 1, an, 0, ar + edns),
            query.name,
            struct.pack("!HH", qtype, query.qclass),
            body,
            opt_record(max_udp, query.do) if edns else b"",
        )
    )
    return out if len(out) <= _MAX_MESSAGE else None


def _body(
    rule: Rule,
    qtype: int,
    view: ServiceView,
    res: Resolution,
    domain: str,
    raw: Sequence[bytes],
    qlen: int,
    ttl_bytes: bytes,
) -> _Body:
    """The answer and additional sections of `encode_bulk`'s answer; None: not given here."""
    if rule is Rule.SERVICE and qtype != _SRV:
        svc = view.service
        addresses = view.addresses() if svc.headless else svc.cluster_ips
        records = _address_records(addresses, _FAMILY[qtype], ttl_bytes)
        if not records:
            return None
        return b"".join(records), len(records), 0
    if rule is Rule.ENDPOINT:
        # One endpoint's addresses (`Engine._addresses`, as for the service). An endpoint's
        # answers are dropped with every change of its service, so after a change each name
        # asked is answered again; through the engine and dnslib that cost ~0.4 ms.
        if qtype == _SRV:
            return None  # SRV at an endpoint's own name: the engine's
        records = _address_records(res.values, _FAMILY[qtype], ttl_bytes)
        if not records:
            return None
        return b"".join(records), len(records), 0
    if rule is Rule.PORT and qtype in (_A, _AAAA):
        # The addresses the port's SRV records lead to, as `Engine._records` gives them.
        assert res.srv is not None
        addresses = list(dict.fromkeys(a for targets in res.srv.values() for a in targets))
        records = _address_records(addresses, _FAMILY[qtype], ttl_bytes)
        if not records:
            return None
        return b"".join(records), len(records), 0
    if qtype in (_SRV, _ANY):  # SRV at the service, SRV or ANY at a port
        found = res.srv if res.srv is not None else srv_targets(view, None, None)
        return _srv(view, domain, raw, qlen, ttl_bytes, found)
    return None


@lru_cache(maxsize=32768)
def _rdata(address: str) -> tuple[int, bytes | None]:
    """(family as `ip_family` says, the rdata dnslib packs or None when dnslib would raise)."""
    # The store holds canonical addresses, whose rdata is what inet_pton gives, ten times
    # faster than ipaddress and dnslib's parser (under endpoint churn most addresses are new to
    # this cache). Anything inet_pton refuses takes the old way; so do IPv6 addresses written
    # with a dotted quad, which dnslib refuses and inet_pton takes.
    if "." not in address or ":" not in address:
        for family, af in _AF:
            with contextlib.suppress(OSError):
                return family, socket.inet_pton(af, address)
    family = ip_family(address)
    try:
        if family == 4:
            return 4, bytes(A(address).data)
        if family == 6:
            return 6, bytes(AAAA(address).data)
    except Exception:  # dnslib refuses it, so the engine raises: leave that to the engine
        return family, None
    return family, None


def _address_records(addresses: Sequence[str], family: int | None, ttl: bytes) -> list[bytes]:
    """`Engine._address_records` with the owner the question: one packed record each.

    An empty list also when an address is one dnslib cannot pack (the engine raises there).
    """
    a_head = _OWNER + b"\x00\x01\x00\x01" + ttl + b"\x00\x04"
    aaaa_head = _OWNER + b"\x00\x1c\x00\x01" + ttl + b"\x00\x10"
    out = []
    for address in addresses:
        fam, rdata = _rdata(address)
        if fam == 4 and family in (4, None):
            head = a_head
        elif fam == 6 and family in (6, None):
            head = aaaa_head
        else:
            continue
        if rdata is None:
            return []
        out.append(head + rdata)
    return out


def _name_labels(name: str) -> tuple[bytes, ...] | None:
    """The labels `DNSLabel(name)` gives for an absolute name (trailing dot) dnslib can write.

    None when dnslib would read it differently from a plain split (non-ASCII, `\\ddd` escapes)
    or raise on it (empty or over-long labels, over 253 characters).
    """
    if not name.isascii() or "\\" in name or not name.endswith(".") or len(name) > 254:
        return None
    parts = name[:-1].split(".")
    if not all(0 < len(part) < 64 for part in parts):
        return None
    return tuple(part.encode("ascii") for part in parts)


def _wire(labels: tuple[bytes, ...]) -> bytes:
    return b"".join(bytes((len(label),)) + label for label in labels) + b"\x00"


def _srv(
    view: ServiceView,
    domain: str,
    qlabels: Sequence[bytes],
    qlen: int,
    ttl: bytes,
    found: dict[tuple[str | None, int], list[str]],
) -> tuple[bytes, int, int] | None:
    """`Engine._srv`, packed: (answer and additional sections, their record counts).

    None when no port matches (NODATA: the engine's business) or a name or address is one
    dnslib would refuse.
    """
    svc = view.service
    fqdn = f"{svc.name}.{svc.namespace}.svc.{domain}."
    # The engine keys on (target, port) with target `<endpoint name>.<fqdn>`, or `<fqdn>` for a
    # ClusterIP service; both come from the same `srv_targets`, in the same order.
    if not found:
        return None
    weight = srv_weight(len(found))
    fq_labels = _name_labels(fqdn)
    if fq_labels is None:
        return None
    fq_wire = _wire(fq_labels)
    # endpoint name -> (its one label, or None), the target's labels, its uncompressed form
    targets: dict[str | None, _Target] = {None: (None, fq_labels, fq_wire)}
    head = _OWNER + b"\x00\x21\x00\x01" + ttl
    # Where each target is written whole: glue named like it points there
    # (`wire._Buffer.encode_name_nocompress`).
    written: dict[tuple[bytes, ...], int] = {}
    offset = 12 + qlen + 4
    answers = []
    for name, port in found:
        target = targets.get(name)
        if target is None:
            assert name is not None
            target = _target(name, fqdn, fq_labels, fq_wire)
            if target is None:
                return None
            targets[name] = target
        if not 0 <= port <= 0xFFFF:
            return None
        wire = target[2]
        record = head + _SRV_RDATA.pack(6 + len(wire), 0, weight, port) + wire
        start = offset + 18  # owner 2, type, class 4, ttl 4, rdlength 2, priority, weight, port 6
        if start < 0x4000:
            written.setdefault(target[1], start)
        answers.append(record)
        offset += len(record)
    # dnslib's compression table as `wire.pack` leaves it after the question: the whole
    # lower-cased question name only, at offset 12 (no other name points into it). Answer
    # owners are the question itself (a pointer, nothing new); SRV targets are written
    # uncompressed and never enter the table (glue named like a target points to it, above).
    table: dict[tuple[bytes, ...], int] = {tuple(qlabels): 12}
    offset = 12 + qlen + 4 + sum(map(len, answers))
    a_tail = b"\x00\x01\x00\x01" + ttl + b"\x00\x04"
    aaaa_tail = b"\x00\x1c\x00\x01" + ttl + b"\x00\x10"
    glue = []
    glued: set[str | None] = set()
    for (name, _port), addresses in found.items():
        if name in glued:
            continue
        glued.add(name)
        first, labels, _ = targets[name]
        for address in addresses:
            fam, rdata = _rdata(address)
            if fam == 4:
                tail = a_tail
            elif fam == 6:
                tail = aaaa_tail
            else:
                continue
            if rdata is None:
                return None
            at = written.get(labels, table.get(labels))
            if at is not None:
                owner = _LENGTH.pack(0xC000 | at)
            elif first is not None:
                # `_compressed` unrolled for the usual one-label endpoint name.
                if offset < 0x4000:  # a pointer has 14 bits (see wire._Buffer)
                    table[labels] = offset
                owner = bytes((len(first),)) + first
                at = table.get(fq_labels)
                if at is not None:
                    owner += _LENGTH.pack(0xC000 | at)
                else:
                    owner += _compressed(fq_labels, table, offset + len(owner))
            else:
                owner = _compressed(labels, table, offset)
            record = owner + tail + rdata
            glue.append(record)
            offset += len(record)
    return b"".join(answers) + b"".join(glue), len(answers), len(glue)


#: (the endpoint name's one label, or None when it is several or none), labels, wire form
_Target = tuple[bytes | None, tuple[bytes, ...], bytes]


def _target(name: str, fqdn: str, fq_labels: tuple[bytes, ...], fq_wire: bytes) -> _Target | None:
    """The SRV target `<name>.<fqdn>` as dnslib reads it; None when dnslib would refuse it."""
    if (
        0 < len(name) < 64
        and name.isascii()
        and "." not in name
        and "\\" not in name
        and len(name) + 1 + len(fqdn) <= 254
    ):
        label = name.encode("ascii")
        return label, (label, *fq_labels), bytes((len(label),)) + label + fq_wire
    labels = _name_labels(f"{name}.{fqdn}")
    if labels is None:
        return None
    return None, labels, _wire(labels)


def _compressed(labels: tuple[bytes, ...], table: dict[tuple[bytes, ...], int], at: int) -> bytes:
    """`DNSBuffer.encode_name` at offset `at`: a pointer to the longest suffix already written
    (compared case-sensitively, as dnslib does), registering every suffix it writes out."""
    out = bytearray()
    for i in range(len(labels)):
        suffix = labels[i:]
        pointer = table.get(suffix)
        if pointer is not None:
            out += _LENGTH.pack(0xC000 | pointer)
            return bytes(out)
        if at + len(out) < 0x4000:  # a pointer has 14 bits (see wire._Buffer)
            table[suffix] = at + len(out)
        out.append(len(labels[i]))
        out += labels[i]
    out.append(0)
    return bytes(out)
