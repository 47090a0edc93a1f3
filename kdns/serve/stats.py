"""Query counters kept on the hot path as plain ints, read by the metrics at scrape time.

`record` runs once per query, so it does as little as it can (bench/RESULTS.md: 0.33 -> 0.19 µs):
each transport counts into its own per-type dict (no key tuple to build), and an answer in the
first duration bucket (nearly all of them) skips the bisection. The mappings the metrics read are
put together when they are read.
"""

from __future__ import annotations

from bisect import bisect_left
from time import perf_counter

#: Upper bounds (seconds) of the request duration histogram, as CoreDNS's.
DURATION_BOUNDS = (
    0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032,
    0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192,
)  # fmt: skip
_FIRST = DURATION_BOUNDS[0]

#: What `QueryCounters.snapshot` gives: requests by (proto, family, type), the per-bucket (not
#: cumulative) counts, the sum of durations.
Snapshot = tuple[dict[tuple[str, int, int], int], list[int], float]


class QueryCounters:
    """Requests by (protocol, address family, type) and a histogram of answering times."""

    def __init__(self) -> None:
        #: (proto, family) -> type -> requests
        self._by_transport: dict[tuple[str, int], dict[int, int]] = {}
        self._first = 0  # answers within DURATION_BOUNDS[0]
        self._buckets = [0] * (len(DURATION_BOUNDS) + 1)  # the others, by bucket
        self.duration_sum = 0.0

    def counter(self, proto: str, family: int) -> dict[int, int]:
        """The per-type counts of one transport ("udp"/"tcp", family 4 or 6), for `record`."""
        return self._by_transport.setdefault((proto, family), {})

    def record(self, counts: dict[int, int], qtype: int, started: float) -> None:
        """Count one answered request of type `qtype` that started at `started` (perf_counter),
        into `counts` (from `counter`)."""
        elapsed = perf_counter() - started
        counts[qtype] = counts.get(qtype, 0) + 1
        if elapsed < _FIRST:
            self._first += 1
        else:
            self._buckets[bisect_left(DURATION_BOUNDS, elapsed)] += 1
        self.duration_sum += elapsed

    def record_many(self, count: int, started: float) -> None:
        """The histogram's part of `record` for `count` requests answered together, all of
        which started at `started` (a batch; the caller counts their types)."""
        elapsed = perf_counter() - started
        if elapsed < _FIRST:
            self._first += count
        else:
            self._buckets[bisect_left(DURATION_BOUNDS, elapsed)] += count
        self.duration_sum += elapsed * count

    @property
    def requests(self) -> dict[tuple[str, int, int], int]:
        """Requests by (protocol, family, type)."""
        return {
            (proto, family, qtype): n
            for (proto, family), counts in list(self._by_transport.items())
            for qtype, n in list(counts.items())
        }

    def _per_bucket(self) -> list[int]:
        out = list(self._buckets)
        out[0] += self._first
        return out

    @property
    def duration_count(self) -> int:
        return sum(self._per_bucket())

    @property
    def duration_buckets(self) -> list[int]:
        """Cumulative counts for each bound of DURATION_BOUNDS (the +Inf bucket is the count)."""
        out, total = [], 0
        for count in self._per_bucket()[:-1]:
            total += count
            out.append(total)
        return out

    def snapshot(self) -> Snapshot:
        """Everything counted so far, as plain data (a serving process reports it upstream)."""
        return self.requests, self._per_bucket(), self.duration_sum

    def add(self, snap: Snapshot) -> None:
        """Count what another process's `snapshot()` counted, too."""
        requests, buckets, dsum = snap
        for (proto, family, qtype), n in requests.items():
            counts = self.counter(proto, family)
            counts[qtype] = counts.get(qtype, 0) + n
        for i, n in enumerate(buckets):
            self._buckets[i] += n
        self.duration_sum += dsum
