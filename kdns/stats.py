"""Query counters kept on the hot path as plain ints, read by the metrics at scrape time."""

from __future__ import annotations

import time
from bisect import bisect_left

#: Upper bounds (seconds) of the request duration histogram, as CoreDNS's.
DURATION_BOUNDS = (
    0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032,
    0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192,
)  # fmt: skip


class QueryCounters:
    """Requests by (protocol, address family, type) and a histogram of answering times."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int, int], int] = {}
        self._buckets = [0] * (len(DURATION_BOUNDS) + 1)
        self.duration_sum = 0.0
        self.duration_count = 0

    def record(self, proto: str, family: int, qtype: int, started: float) -> None:
        """Count one answered request (family 4 or 6) that started at `started` (perf_counter)."""
        elapsed = time.perf_counter() - started
        key = (proto, family, qtype)
        self.requests[key] = self.requests.get(key, 0) + 1
        self._buckets[bisect_left(DURATION_BOUNDS, elapsed)] += 1
        self.duration_sum += elapsed
        self.duration_count += 1

    @property
    def duration_buckets(self) -> list[int]:
        """Cumulative counts for each bound of DURATION_BOUNDS (the +Inf bucket is the count)."""
        out, total = [], 0
        for count in self._buckets[:-1]:
            total += count
            out.append(total)
        return out

    def snapshot(self) -> tuple[dict[tuple[str, int, int], int], list[int], float, int]:
        """Everything counted so far, as plain data (a serving process reports it upstream)."""
        return dict(self.requests), list(self._buckets), self.duration_sum, self.duration_count

    def add(self, snap: tuple[dict[tuple[str, int, int], int], list[int], float, int]) -> None:
        """Count what another process's `snapshot()` counted, too."""
        requests, buckets, dsum, dcount = snap
        for key, n in requests.items():
            self.requests[key] = self.requests.get(key, 0) + n
        for i, n in enumerate(buckets):
            self._buckets[i] += n
        self.duration_sum += dsum
        self.duration_count += dcount
