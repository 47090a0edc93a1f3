"""The collector's young generation under churn (kdns/serve/heap.py).

Each case runs in a fresh interpreter: freezing the collector's objects is process-wide, and
would otherwise reach into every test that runs after it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

# A synced store of 200 headless services of 100 endpoints; then 400 changes, each moving one
# endpoint of one slice (as a watch event replaces the whole slice). Prints how many objects
# the collector's generations hold at the end, whether a reference cycle dropped before the
# changes was collected, and whether the store still answers the last change.
SCENARIO = textwrap.dedent(
    """
    import gc, json, sys, weakref
    from kdns.serve import heap
    from kdns.state.store import Store
    from tests.builders import endpoint_slice, ep, eport, headless, namespaces, port

    settle = sys.argv[1] == "settle"
    store = Store()
    store.add_layer("cluster")
    objects = [*namespaces("a")]
    for s in range(200):
        objects.append(headless("a", f"db{s}", ports=[port("http", 80)]))
        eps = [ep(f"10.{s >> 8}.{s & 255}.{i}") for i in range(1, 101)]
        objects.append(endpoint_slice("a", f"db{s}-x", f"db{s}", eps, [eport("http", 80)]))
    store.apply("cluster", objects)
    store.set_synced("cluster")
    if settle:
        heap.after_sync([store])
    else:
        gc.freeze()
        gc.set_threshold(heap.YOUNG_THRESHOLD, 1000, 1000)

    class Node:
        pass

    cycle = Node()
    cycle.me = cycle
    alive = weakref.ref(cycle)
    del cycle
    for n in range(400):
        s = n % 200
        eps = [ep(f"10.{s >> 8}.{s & 255}.{i}") for i in range(1, 101)]
        eps[n % 100] = ep(f"10.200.{n >> 8}.{n & 255}")
        changed = endpoint_slice("a", f"db{s}-x", f"db{s}", eps, [eport("http", 80)])
        store.apply("cluster", [changed])
    young = sum(len(gc.get_objects(generation)) for generation in range(3))
    view = store.service("a", "db199")
    print(json.dumps({
        "young": young,
        "cycle_collected": alive() is None,
        "moved": "10.200.1.143" in view.addresses(),
    }))
    """
)


def run(mode: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", SCENARIO, mode],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_changes_leave_the_young_generation_small_and_cycles_collected() -> None:
    out = run("settle")
    # 400 changes made ~400 * 300 objects that live on; settled, none waits to be walked.
    assert out["young"] < 2_000, out
    assert out["cycle_collected"] is True
    assert out["moved"] is True


def test_without_settling_the_young_generation_keeps_every_changed_record() -> None:
    # The failure heap.py is for: changes that free as many (frozen) objects as they make never
    # reach the young threshold, so the young generation keeps every new record, and the next
    # collection walks them all at once.
    out = run("freeze-only")
    # More than the threshold (50,000), and still not collected.
    assert out["young"] > 50_000, out
    assert out["cycle_collected"] is False
