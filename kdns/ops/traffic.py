"""The figures of the operator's page (`/`), worked out from counters the server keeps anyway.

- **The query rate** over the last ten minutes: `QueryRate` reads the total of requests (the
  one the metrics export) every `INTERVAL` seconds from a timer on the loop and keeps the
  differences in a ring. Nothing is added to the query path: a query already counts itself.
- **Latency percentiles** from the request duration histogram the metrics export: the bucket
  bound a percentile falls under (the histogram keeps nothing finer).
- **Search-path expansions**: a pod's resolver with `ndots:5` tries `api.example.com` as
  `api.example.com.<ns>.svc.<zone>`, `api.example.com.svc.<zone>` and `api.example.com.<zone>`
  before the name itself. `expansion()` recognises such a name among those answered NXDOMAIN:
  it ends in `.<ns>.svc.<zone>` (`<ns>` a namespace kdns knows), `.svc.<zone>` or `.<zone>`, and
  the part in front holds a dot. A name that answered is not counted as one: a name like
  `db-0.db.shop.svc.<zone>` is a real endpoint's, asked directly as often as through a search
  path, and the two cannot be told apart. `expansions()` then gathers, for each name being
  tried, every form of it kdns saw (the failed expansions, the form that answered, the name
  itself when it was forwarded) into "asked N times for M answers".
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass, field

#: Seconds per point of the query rate.
INTERVAL = 10.0
#: Points kept: ten minutes.
POINTS = 60
NXDOMAIN = 3
NOERROR = 0


class QueryRate:
    """Queries per `INTERVAL`, for the last `POINTS` intervals, from a running total."""

    def __init__(
        self,
        total: Callable[[], int],
        *,
        interval: float = INTERVAL,
        points: int = POINTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.interval = interval
        self.clock = clock
        self.counts: deque[int] = deque(maxlen=points)
        self._last = total()
        self._since = clock()
        self._timer: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Sample every `interval` seconds on `loop` until `stop()`."""
        self._timer = loop.call_later(self.interval, self._tick, loop)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self.sample()
        self._timer = loop.call_later(self.interval, self._tick, loop)

    def sample(self) -> None:
        """Close the current interval."""
        now = self.total()
        self.counts.append(max(0, now - self._last))
        self._last, self._since = now, self.clock()

    def per_second(self) -> list[float]:
        """Queries a second in each closed interval, oldest first, then in the current one
        (over the part of it that has passed)."""
        out = [n / self.interval for n in self.counts]
        elapsed = self.clock() - self._since
        if elapsed > 0:
            # At least a second: a burst just after a sample is not a rate.
            out.append(max(0, self.total() - self._last) / max(elapsed, 1.0))
        return out


def percentile(bounds: Sequence[float], cumulative: Sequence[int], count: int, q: float) -> float:
    """The bound of the first bucket holding the `q` quantile (inf: above every bound; nan: no
    observations)."""
    if count <= 0:
        return float("nan")
    need = q * count
    for bound, n in zip(bounds, cumulative, strict=True):
        if n >= need:
            return bound
    return float("inf")


def expansion(name: str, zone: str, namespaces: Container[str]) -> tuple[str, str] | None:
    """(the name tried, the search suffix added) when `name` (lower case, no final dot) in `zone`
    is shaped like a search-path expansion of a name with dots; None otherwise."""
    svc = ".svc." + zone
    if name.endswith(svc):
        rest = name[: -len(svc)]
        front, dot, ns = rest.rpartition(".")
        if dot and ns in namespaces:
            return (front, f"{ns}{svc}") if "." in front else None
        return (rest, svc[1:]) if "." in rest else None
    if name.endswith("." + zone):
        rest = name[: -len(zone) - 1]
        # <a-b-c-d>.<ns>.pod.<zone> is a name of its own, not a search suffix.
        if "." in rest and not rest.endswith(".pod"):
            return rest, zone
    return None


@dataclass
class Tried:
    """One name clients tried through their search paths, and what came of it."""

    name: str
    #: Queries for any of its forms: the failed expansions, the one that answered, the name.
    asked: int = 0
    #: Those answered NOERROR.
    answered: int = 0
    #: The expansions that failed (NXDOMAIN), by suffix.
    suffixes: dict[str, int] = field(default_factory=dict)


@dataclass
class Expansions:
    """What search paths cost: failed expansions among all queries, and per name tried."""

    #: Queries answered NXDOMAIN for an expansion.
    failed: int
    tried: list[Tried]


def expansions(
    rows: Mapping[tuple[str, int], int],
    zones: Mapping[str, Container[str]],
    limit: int = 20,
) -> Expansions:
    """The search-path expansions among `rows` ((name, rcode) -> answers), for `zones` (zone ->
    its namespaces): the `limit` names tried with the most failed expansions."""
    by_name: dict[str, dict[int, int]] = {}
    for (name, rcode), n in rows.items():
        counts = by_name.setdefault(name.lower(), {})
        counts[rcode] = counts.get(rcode, 0) + n
    tried: dict[str, Tried] = {}
    failed = 0
    for name, counts in by_name.items():
        nx = counts.get(NXDOMAIN, 0)
        if not nx:
            continue
        for zone, namespaces in zones.items():
            found = expansion(name, zone, namespaces)
            if found is not None:
                real, suffix = found
                entry = tried.setdefault(real, Tried(real))
                entry.suffixes[suffix] = entry.suffixes.get(suffix, 0) + nx
                failed += nx
                break
    for real, entry in tried.items():
        forms = {real, *(f"{real}.{suffix}" for suffix in entry.suffixes)}
        for zone in zones:
            forms.update((f"{real}.svc.{zone}", f"{real}.{zone}"))
        for form in forms:
            counts = by_name.get(form, {})
            entry.asked += sum(counts.values())
            entry.answered += counts.get(NOERROR, 0)
    ranked = sorted(tried.values(), key=lambda t: (-sum(t.suffixes.values()), t.name))
    return Expansions(failed, ranked[:limit])
