"""`--rotate`: multi-record A, AAAA and SRV answers in a different order for each query.

Most clients take the first address of an answer, so a headless service answered in one fixed
order sends all their load to one pod; and the answer cache would make that order permanent.
CoreDNS's default Corefile rotates answers (`loadbalance`). kdns rotates the encoded bytes: a
cached response is cut once into its answer records, and each query gets them starting at the
next one (round-robin) or at a random one. No record is encoded again, so the rotation costs a
join of byte strings per query, not an encoding.

Compression makes one thing delicate: a glue record in the additional section names an SRV
target by a pointer into the answer section, and that target moves with its record. Such
pointers are re-aimed for each order. With `--prefer-zone` an answer is two groups, the
records for the preferred zone first: each group turns by itself, and the preferred one stays in
front (`order`). A message whose bytes cannot be reordered safely (one SRV
target pointing at another, a CNAME before the addresses, a pointer that would need more than
14 bits) has its orders encoded again instead, once each, when first served, if it has at most
`KEEP_BUILT` records; a larger one keeps its one order.
"""

from __future__ import annotations

import math
import random
import struct
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass

from dnslib import RR

from kdns.config import RotateMode

_A, _AAAA, _SRV, _OPT = 1, 28, 33, 41
_FIXED = struct.Struct("!HHIH")  # type, class, TTL, rdata length
_POINTER = struct.Struct("!H")
#: Orders kept once built, per answer; past this many records each order is built per query,
#: so that one large answer does not keep hundreds of copies of itself.
KEEP_BUILT = 32


class Rotation:
    """The orders of one answer, served in turn (or at random), each body built once.

    `build(k)` gives what follows the question when the answer's records start at the k-th:
    cut from the encoded bytes (`plan`), or encoded again (the responder's fallback). Up to
    `KEEP_BUILT` orders are kept once built; past that each is built when served.
    """

    __slots__ = ("build", "built", "count", "head", "mode", "turn")

    def __init__(
        self, build: Callable[[int], bytes], head: bytes, count: int, mode: RotateMode
    ) -> None:
        self.build = build
        #: Header and question: the same in every order (the counts do not change).
        self.head = head
        self.count = count
        self.mode = mode
        self.turn = 0
        self.built: list[bytes | None] = [None] * count if count <= KEEP_BUILT else []

    def next(self) -> bytes:
        """The response in the next order (round-robin) or a random one."""
        return self.head + self.next_body()

    def next_body(self) -> bytes:
        """What follows the question in the next order's response (what the memo serves)."""
        # Runs on every memo hit of a rotating answer: kept inline, no helper call.
        if self.mode == "random":
            k = random.randrange(self.count)
        else:
            k = self.turn
            self.turn = k + 1 if k + 1 < self.count else 0
        built = self.built
        if built:
            body = built[k]
            if body is None:
                body = built[k] = self.build(k)
            return body
        return self.build(k)


@dataclass(slots=True)
class _Cut:
    """An encoded response cut into its answer records."""

    head: bytes  # header and question
    records: list[bytes]
    tail: bytes  # the additional section (glue, OPT)
    #: Pointers in `tail` that aim into an answer record: (offset in tail, record, offset in it).
    patches: list[tuple[int, int, int]]
    #: The preferred group's size (0: one group).
    lead: int = 0

    def body(self, k: int) -> bytes:
        """What follows the question in the k-th order (`order`)."""
        records = self.records
        n = len(records)
        if self.lead:
            indexes = order(n, self.lead, k)
            moved = [records[i] for i in indexes]
        else:
            indexes = [(k + j) % n for j in range(n)] if self.patches else []
            moved = records if k == 0 else records[k:] + records[:k]
        tail = self.tail
        if self.patches:
            # Where each record starts in this order: the glue's pointers follow their record.
            starts = [0] * n
            at = len(self.head)
            for i in indexes:
                starts[i] = at
                at += len(records[i])
            patched = bytearray(tail)
            for offset, i, within in self.patches:
                _POINTER.pack_into(patched, offset, 0xC000 | (starts[i] + within))
            tail = bytes(patched)
        return b"".join(moved) + tail


def order(n: int, lead: int, k: int) -> list[int]:
    """The k-th order of `n` records whose first `lead` form the preferred group: each group
    starts at its own k-th record (modulo its size), the preferred one in front."""
    if not 0 < lead < n:
        return [(k + j) % n for j in range(n)]
    rest = n - lead
    a, b = k % lead, k % rest
    return [(a + j) % lead for j in range(lead)] + [lead + (b + j) % rest for j in range(rest)]


def orders(n: int, lead: int = 0) -> int:
    """How many orders `n` records have: n, or with a preferred group the least common multiple
    of the two groups' sizes, so that in a full round every record of a group leads it equally
    often."""
    if not 0 < lead < n:
        return n
    return math.lcm(lead, n - lead)


def turned(records: list[RR], qtype: int, k: int, lead: int = 0) -> list[RR]:
    """`records` with those of type `qtype` in their k-th order (`order`); the others (a CNAME
    chain before them) keep their places in front."""
    front = [rr for rr in records if rr.rtype != qtype]
    mine = [rr for rr in records if rr.rtype == qtype]
    return front + [mine[i] for i in order(len(mine), lead, k)]


def turnable(records: list[RR], qtype: int) -> int:
    """How many records an answer of `records` turns under rotation (0 or 1: none)."""
    if qtype not in (_A, _AAAA, _SRV):
        return 0
    return sum(1 for rr in records if rr.rtype == qtype)


def plan(
    response: bytes, qend: int, qtype: int, mode: RotateMode, lead: int = 0
) -> Rotation | None:
    """A `Rotation` of `response` (the answer to a question of type `qtype` that ends at
    `qend`, whose first `lead` answer records are the preferred group), or None when it has
    fewer than two answer records, `mode` is off, or the message is not one whose records can
    be reordered safely."""
    if mode == "off" or qtype not in (_A, _AAAA, _SRV) or len(response) < 12:
        return None
    ancount, nscount, arcount = struct.unpack_from("!HHH", response, 6)
    if ancount < 2 or nscount:
        return None
    try:
        records: list[bytes] = []
        #: where each answer record starts (ascending): a glue pointer's record by bisection,
        #: not a scan, which made this quadratic (1 ms for 100 SRV records and their glue)
        starts: list[int] = []
        at = qend
        for _ in range(ancount):
            start = at
            if response[at : at + 2] != b"\xc0\x0c":  # owner: the question, by pointer
                return None
            rtype, _cls, _ttl, rdlen = _FIXED.unpack_from(response, at + 2)
            rdata = at + 12
            end = rdata + rdlen
            if rtype != qtype or end > len(response):
                return None
            if rtype == _SRV:
                # The target must not point into another answer record: that pointer could
                # not survive the order changing (it might come to point forward).
                for target in _pointers(response, rdata + 6, end):
                    if target >= qend:
                        return None
            records.append(response[start:end])
            starts.append(start)
            at = end
        answers_end = at
        patches: list[tuple[int, int, int]] = []
        for _ in range(arcount):
            name_end = _name_end(response, at)
            for where, target in _pointer_sites(response, at):
                if qend <= target < answers_end:
                    # The records tile [qend, answers_end), so the last start at or before
                    # the target is the target's record.
                    i = bisect_right(starts, target) - 1
                    patches.append((where - answers_end, i, target - starts[i]))
            rtype, _cls, _ttl, rdlen = _FIXED.unpack_from(response, name_end)
            if rtype not in (_A, _AAAA, _OPT):
                return None  # a name in its data could point into the answer
            at = name_end + 10 + rdlen
        if at != len(response):
            return None
        if patches and answers_end > 0x3FFF:
            return None  # a re-aimed pointer could need more than its 14 bits
    except (IndexError, struct.error, ValueError):
        return None
    if not 0 < lead < len(records):
        lead = 0
    cut = _Cut(response[:qend], records, response[answers_end:], patches, lead)
    rotation = Rotation(cut.body, cut.head, orders(len(records), lead), mode)
    if rotation.built:
        rotation.built[0] = response[qend:]
    return rotation


def _name_end(message: bytes, at: int) -> int:
    """The offset just past the name written at `at`."""
    while True:
        length = message[at]
        if length >= 0xC0:
            return at + 2
        if length > 63:
            raise ValueError("bad label")
        if length == 0:
            return at + 1
        at += length + 1


def _pointer_sites(message: bytes, at: int) -> list[tuple[int, int]]:
    """(where, target) of the pointer ending the name written at `at`, if it has one."""
    while True:
        length = message[at]
        if length >= 0xC0:
            return [(at, (length & 0x3F) << 8 | message[at + 1])]
        if length > 63:
            raise ValueError("bad label")
        if length == 0:
            return []
        at += length + 1


def _pointers(message: bytes, at: int, end: int) -> list[int]:
    """The targets of the pointers in the name written at `at` (which must end by `end`)."""
    sites = _pointer_sites(message, at)
    if _name_end(message, at) > end:
        raise ValueError("name past its record")
    return [target for _, target in sites]
