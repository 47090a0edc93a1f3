"""How long the change journal holds the event loop when 1,000 headless services (100 endpoints
each) all change at once, as after a relist or an API outage.

    PYTHONPATH=CHECKOUT .venv/bin/python bench/journal_stall.py

Prints how long `store.apply` took with the journal following (its listeners run inside it),
the longest turn of the loop while the journal worked out its diffs afterwards, how long that
took, and the entries written (equal for every version that journals the same changes).
"""

from __future__ import annotations

import asyncio
import time

# The checkout measured comes first on PYTHONPATH.
from kdns.ops.journal import Journal
from kdns.state.model import Endpoint, EndpointPort, EndpointSet, Service, Subset
from kdns.state.store import Store

SERVICES = 1000
ENDPOINTS = 100


def slice_of(i: int, moved: bool) -> EndpointSet:
    """Service i's slice; `moved`: its first endpoint has another address."""
    base = f"10.{i // 250}.{i % 250}"
    addresses = [f"{base}.{j + 200 if moved and j == 0 else j}" for j in range(ENDPOINTS)]
    endpoints = tuple(Endpoint((a,)) for a in addresses)
    subset = Subset(endpoints, (EndpointPort("http", 80),))
    return EndpointSet("EndpointSlice", "ns", f"s{i}-a", f"s{i}", (subset,))


async def measure(store: Store, journal: Journal) -> tuple[float, float, float]:
    started = time.perf_counter()
    store.apply("c", [slice_of(i, True) for i in range(SERVICES)])
    held = time.perf_counter() - started
    longest, last = 0.0, time.perf_counter()
    begun = last
    while getattr(journal, "_pending", None):  # older versions journal inside apply
        await asyncio.sleep(0)
        now = time.perf_counter()
        longest, last = max(longest, now - last), now
    return held, longest, time.perf_counter() - begun


def main() -> None:
    store = Store()
    store.add_layer("c")
    journal = Journal()
    journal.follow("cluster.local", store)
    journal.open()
    store.apply("c", [Service("ns", f"s{i}", headless=True) for i in range(SERVICES)])
    store.apply("c", [slice_of(i, False) for i in range(SERVICES)])
    store.set_synced("c")
    held, longest, total = asyncio.run(measure(store, journal))
    print(
        f"apply (listeners included): {held * 1000:.0f} ms; longest loop turn after it: "
        f"{longest * 1000:.1f} ms; diffs worked out in {total * 1000:.0f} ms; "
        f"entries {len(journal.latest(100_000))}"
    )


if __name__ == "__main__":
    main()
