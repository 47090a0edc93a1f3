"""Response-rate limiting per client prefix (`--rrl`), against reflection and floods over UDP.

UDP sources can be spoofed, so a DNS server can be made to send its answers at a victim. Like
BIND's RRL, kdns counts responses per client prefix (/24 for IPv4, /56 for IPv6) in a token
bucket; past the rate, every second answer "slips" (goes out truncated, header and question
only, so a real client retries over TCP, where spoofing does not work) and the rest are dropped.
The table is bounded: when it fills, it starts afresh, which only ever errs towards answering.
"""

from __future__ import annotations

import ipaddress
import time

#: Returned by `RateLimiter.allow` when the answer should go out truncated.
SLIP = "slip"


class RateLimiter:
    """A token bucket of `rate` responses a second (burst `rate`) per client prefix."""

    def __init__(self, rate: float, *, slip: int = 2, max_prefixes: int = 100_000) -> None:
        if rate <= 0:
            raise ValueError("the rate must be positive")
        self.rate = rate
        self.slip = slip
        self.max_prefixes = max_prefixes
        self._buckets: dict[str, list[float]] = {}  # prefix -> [tokens, last time, over count]

    @staticmethod
    def prefix(address: str) -> str:
        if ":" not in address:
            return address.rsplit(".", 1)[0]
        try:
            net = ipaddress.IPv6Network(f"{address.split('%', 1)[0]}/56", strict=False)
        except ValueError:
            return address
        return str(net.network_address)

    def allow(self, address: str, now: float | None = None) -> bool | str:
        """True to answer, SLIP to answer truncated, False to drop."""
        now = time.monotonic() if now is None else now
        key = self.prefix(address)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_prefixes:
                self._buckets.clear()
            self._buckets[key] = [self.rate - 1, now, 0]
            return True
        tokens = min(self.rate, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens >= 1:
            bucket[0] = tokens - 1
            return True
        bucket[0] = tokens
        bucket[2] += 1
        if self.slip and int(bucket[2]) % self.slip == 0:
            return SLIP
        return False
