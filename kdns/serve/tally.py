"""What the operator's page (`/`) counts beyond the metrics: answers by name, and NXDOMAIN
answers by client.

Both are kept on the query path, so they cost it as little as the request counters do:

- **By name, in the cache entries.** Every cached response (`responder._Entry`) counts the
  queries it answered in a field of its own (`entry.asked += 1`: no key built, no dict looked
  up, and the entry is in the CPU's cache already, as the query path has just read it). When an
  entry goes (a change drops it, the cache evicts it), its count is added to this table, keyed
  by question and rcode, so the counts outlive the cache; a digest adds the live entries' counts
  to the table's. (A counter object of its own per question, shared by the entries, cost twice
  as much: one more object to fetch from memory per query; bench/RESULTS.md.)
- **Bounded.** The table holds at most `MAX_NAMES` questions: one more prunes it to the busier
  half (a flood of random names fills it with ones, which go first).
- **Clients only when asked for** (`--http-show-clients`): otherwise no client address is kept
  at all, not even in memory. When asked for, the transports count an NXDOMAIN response per
  source address, at most `MAX_CLIENTS` of them.

`digest()` turns the cells into plain rows, `(name, rcode) -> answers`, summed over query types
and EDNS states: what the page reads, and what a serving process reports with `--workers`.

With `--workers`, a serving process sums its tables only while someone looks at the page
(`PageClock`): a digest of full tables is 25-47 ms of Python and a burst of short-lived objects
(young-generation collections on the query path), for rows nobody reads otherwise. The counts
themselves are kept all the time, so nothing is lost between two looks.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import mmap
import re
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Protocol, TypeVar

_K = TypeVar("_K")

#: Questions kept at most, with their rcode (about 300 bytes each with the key and the name).
MAX_NAMES = 10_000
#: Client addresses kept at most (--http-show-clients).
MAX_CLIENTS = 10_000
#: Rows of a digest at most: the busiest ones.
DIGEST_ROWS = 2_000

#: Cache entries summed between two turns of the event loop (see `NameTally.digest`).
SLICE = 1000

#: A serving process sends digests for this long after the page last asked for them (the page
#: asks every 5 s while it is open).
WANTED_FOR = 15.0
#: ...and at most once in this many seconds, however many pages ask.
DIGEST_GAP = 5.0

#: (name, rcode) -> answers: a digest of `NameTally`, or several summed.
Rows = dict[tuple[str, int], int]
_second = itemgetter(1)


class Counted(Protocol):
    """A cached answer as a digest reads it (`responder._Entry`)."""

    rcode: int
    asked: int


#: A label dig prints as it is: printable ASCII but for the dot and the backslash.
_PLAIN = re.compile(rb"[!-\-/-\[\]-~]*")


def wire_name(wire: bytes) -> str:
    """The text of a name in wire format (labels, ending with the root label), as dig spells
    it: bytes that are not printable, and dots and backslashes inside a label, as \\DDD."""
    out: list[str] = []
    i = 0
    while i < len(wire) and wire[i]:
        n = wire[i]
        label = wire[i + 1 : i + 1 + n]
        if _PLAIN.fullmatch(label):
            out.append(label.decode("ascii"))
        else:
            out.append("".join(_char(b) for b in label))
        i += 1 + n
    return ".".join(out)


def _char(byte: int) -> str:
    return chr(byte) if _PLAIN.fullmatch(bytes((byte,))) else f"\\{byte:03d}"


class NameTally:
    """Answers by question and rcode, of the cache entries that are gone (and forwarded ones)."""

    def __init__(self, limit: int = MAX_NAMES) -> None:
        self.limit = limit
        #: (cache key: lower-cased wire name, type, class, EDNS state; rcode) -> answers
        self.counts: dict[tuple[bytes, int], int] = {}
        #: wire name -> its text, decoded once (for `digest`, which runs at every page view)
        self._text: dict[bytes, str] = {}

    def add(self, key: bytes, rcode: int, n: int) -> None:
        """Count `n` answers with `rcode` to question `key` (a `wire.Query.key`)."""
        if not n:
            return
        counts = self.counts
        old = counts.get((key, rcode))
        if old is not None:
            counts[(key, rcode)] = old + n
            return
        if len(counts) >= self.limit:
            self._prune()
        self.counts[(key, rcode)] = n

    def _prune(self) -> None:
        self.counts = dict(heapq.nlargest(self.limit // 2, self.counts.items(), _second))
        kept = {key[:-5] for key, _ in self.counts}
        self._text = {wire: text for wire, text in self._text.items() if wire in kept}

    async def digest(
        self, live: Sequence[tuple[bytes, Counted]] = (), limit: int = DIGEST_ROWS
    ) -> Rows:
        """The `limit` busiest (name, rcode) rows, summed over types and EDNS states, of this
        table and of `live` ((key, entry) of the answers still cached, taken at the same moment
        as the call: an entry is in one or the other).

        Full tables hold 30,000 entries, 40-90 ms of Python on this project's loaded 2-core
        machine: they are summed and ranked `SLICE` (or 4 `SLICE`) at a time, and the loop
        answers queries between two slices (the longest took 1-8 ms there, besides the young-
        generation collections the allocations bring forward).
        """
        counted = list(self.counts.items())
        sums: dict[tuple[bytes, int], int] = {}
        get = sums.get
        for start in range(0, len(counted), SLICE):
            for (key, rcode), n in counted[start : start + SLICE]:
                row = (key[:-5], rcode)
                sums[row] = get(row, 0) + n
            await asyncio.sleep(0)
        for start in range(0, len(live), SLICE):
            for key, entry in live[start : start + SLICE]:
                if entry.asked:
                    row = (key[:-5], entry.rcode)
                    sums[row] = get(row, 0) + entry.asked
            await asyncio.sleep(0)
        # The busiest rows, chosen a slice at a time too: the best so far and the next slice.
        best: list[tuple[tuple[bytes, int], int]] = []
        summed = list(sums.items())
        for start in range(0, len(summed), 4 * SLICE):
            best = heapq.nlargest(limit, [*best, *summed[start : start + 4 * SLICE]], _second)
            await asyncio.sleep(0)
        rows: Rows = {}
        text = self._text
        # Names are decoded only for the rows kept (and each once: dig's spelling is slow).
        for i, ((wire, rcode), n) in enumerate(best):
            name = text.get(wire)
            if name is None:
                name = text[wire] = wire_name(wire)
            rows[(name, rcode)] = rows.get((name, rcode), 0) + n
            if i % SLICE == SLICE - 1:
                await asyncio.sleep(0)
        return rows


class ClientTally:
    """NXDOMAIN responses by client address (--http-show-clients)."""

    def __init__(self, limit: int = MAX_CLIENTS) -> None:
        self.limit = limit
        self.counts: dict[str, int] = {}

    def nxdomain(self, client: str) -> None:
        """Count one NXDOMAIN response sent to `client`."""
        counts = self.counts
        n = counts.get(client)
        if n is None:
            if len(counts) >= self.limit:
                self.counts = counts = dict(
                    heapq.nlargest(self.limit // 2, counts.items(), _second)
                )
            counts[client] = 1
        else:
            counts[client] = n + 1

    def digest(self, limit: int = DIGEST_ROWS) -> dict[str, int]:
        """The `limit` clients sent the most NXDOMAIN responses."""
        return top(dict(self.counts), limit)


def top(counts: Mapping[_K, int], limit: int) -> dict[_K, int]:
    """The `limit` largest of `counts`, largest first (ties in the order met)."""
    return dict(heapq.nlargest(limit, counts.items(), _second))


def merged(digests: Iterable[Mapping[_K, int]], limit: int = DIGEST_ROWS) -> dict[_K, int]:
    """Several digests summed (the serving processes'), the `limit` largest kept."""
    total: dict[_K, int] = {}
    for digest in digests:
        for key, n in digest.items():
            total[key] = total.get(key, 0) + n
    return top(total, limit)


_WHEN = struct.Struct("d")


class PageClock:
    """When the page last asked for the serving processes' digests (`time.monotonic()`, which
    every process of the machine reads alike), in one anonymous shared page: the main process
    writes it, the serving processes it forks read it, with no message between them."""

    def __init__(self) -> None:
        self._page = mmap.mmap(-1, _WHEN.size)  # MAP_SHARED: survives the fork, shared
        _WHEN.pack_into(self._page, 0, -math.inf)

    def ask(self) -> float:
        """Note that the page wants digests now; return the time noted."""
        now = time.monotonic()
        _WHEN.pack_into(self._page, 0, now)
        return now

    def asked(self) -> float:
        """When the page last asked (-inf: never)."""
        value: float = _WHEN.unpack_from(self._page, 0)[0]
        return value


def digest_due(now: float, asked: float, sent: float) -> bool:
    """Whether a serving process sends its digests in the report it makes at `now`: the page
    asked within WANTED_FOR seconds, after the last digest (sent at `sent`), and that one is
    DIGEST_GAP seconds old at least."""
    return now - asked < WANTED_FOR and asked > sent and now - sent >= DIGEST_GAP
