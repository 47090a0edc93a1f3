"""CPython's cyclic garbage collector, kept from stalling the server once the data is in.

After the sync. What is loaded then lives as long as the server: `after_sync` moves it out of
the collector's view (`gc.freeze()`), so a full collection (100-300 ms at 100,000 endpoints,
freeing nothing) walks only what came later. And the young generation is collected far less
often (`YOUNG_THRESHOLD`): kdns makes almost no reference cycles, while a relist allocates
millions of short-lived containers whose collections stalled queries (scale bench: relist stall
405 -> 291 ms, change propagation p99 away from it 91 -> 17 ms).

Under churn. The collector starts a young collection when the objects allocated outnumber
those freed by the threshold, counting every object freed, however old. A change replaces old
(frozen) records with new ones, one for one, so the count stays near zero while the young
generation keeps every new record: after 30 s of 200 endpoint changes a second it held over a
million objects. The next burst of short-lived objects (the names digest for the page,
a relist) then set off a young collection that walked them all: 100-140 ms, growing with the
churn's length, in the main process and in every serving process (`bench/scale.py --workers 1
--load 0`, 2026-12-04: propagation p99 71-105 ms, probe answers stalled 76-134 ms every 5 s).

So after every store change `settle` collects the young generation (the few objects made since
the last change: ~40 µs a change at 200 changes a second, measured in the same bench) and then
freezes what survived: a young collection never again walks more than one change's objects.

What freezing costs. A frozen object is still freed when its last reference goes (reference
counting); only a reference cycle among frozen objects is never collected. Cycles that are
garbage already are collected by `settle` before it freezes. One still alive at a change and
dropped later (an in-flight connection's protocol and transport, say) would stay. kdns's data
makes none, and in the churn runs above every young collection found 0 unreachable objects.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable

from kdns.state.store import Store

#: Objects allocated (net) before a young collection starts (CPython's default is 700).
YOUNG_THRESHOLD = 50_000


def settle() -> None:
    """Collect the young generation, then move what survived out of the collector's view."""
    gc.collect(0)
    gc.freeze()


def after_sync(stores: Iterable[Store]) -> None:
    """Freeze what the sync loaded, collect young objects less often, and `settle` after every
    change of `stores` from now on."""
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, 1000, 1000)
    for store in stores:
        store.subscribe(_settle_after_change)


def _settle_after_change(_generation: int, _received_at: float | None) -> None:
    settle()
