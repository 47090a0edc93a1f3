"""How long a change takes from the API to the store: churn through the API double, time it.

A `ClusterSource` (real kubernetes client, real reflectors) feeds a real `Store` owned by an
asyncio loop through `LoopSink`, exactly as `kdns serve` runs it. The API server double then
changes objects at a steady rate (half of them Service ClusterIPs, half EndpointSlice addresses
of headless services), and a store listener, on the loop, notes when each change becomes
visible. Two times are reported per change:

- written -> visible: from the double writing the event to the watch stream to the store showing
  it (the cost of kdns: reading, parsing, trimming, the hop to the loop, the store update);
- applied -> visible: from the write to the double's state, which adds the double's own latency.

Everything runs in one process, so the double's threads compete with kdns for the GIL: the
numbers are an upper bound on kdns's share. Run: `.venv/bin/python bench/propagation.py`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kdns.sources.cluster import ClusterSource, load_api_client
from kdns.sources.reflector import WatchSettings
from kdns.state.store import Store
from testkit.apiserver import (
    FakeApiServer,
    LoopStore,
    endpoint_slice,
    namespace,
    service,
    write_kubeconfig,
)


def ip(n: int, base: int = 10) -> str:
    return f"{base}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


class Tracker:
    """Pending changes, checked against the store after every store change (on the loop)."""

    def __init__(self, api: FakeApiServer, store: Store) -> None:
        self.api = api
        self.store = store
        self.lock = threading.Lock()
        # (namespace, service) -> (kind, expected address, resourceVersion, applied at)
        self.pending: dict[tuple[str, str], tuple[str, str, int, float]] = {}
        self.written: list[float] = []
        self.applied: list[float] = []

    def expect(self, key: tuple[str, str], kind: str, address: str, rv: int, at: float) -> None:
        with self.lock:
            self.pending[key] = (kind, address, rv, at)

    def on_change(self, generation: int, received_at: float | None) -> None:
        now = time.monotonic()
        with self.lock:
            items = list(self.pending.items())
        for key, (kind, address, rv, at) in items:
            view = self.store.service(*key)
            if view is None:
                continue
            have = view.service.cluster_ips if kind == "svc" else tuple(view.addresses())
            if address not in have:
                continue
            with self.lock:
                current = self.pending.get(key)
                if current is None or current[2] != rv:
                    continue
                del self.pending[key]
            self.applied.append(now - at)
            written = self.api.written.get(rv)
            if written is not None:
                self.written.append(now - written)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(name: str, values: list[float]) -> None:
    if not values:
        print(f"  {name:22} no samples")
        return
    ms = [v * 1000 for v in values]
    print(
        f"  {name:22} p50 {statistics.median(ms):7.2f} ms   p99 {pct(ms, 0.99):7.2f} ms   "
        f"max {max(ms):7.2f} ms   (n={len(ms)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=100.0, help="changes per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to churn")
    parser.add_argument("--services", type=int, default=2000, help="services (half headless)")
    args = parser.parse_args()

    with FakeApiServer(record_writes=True) as api, tempfile.TemporaryDirectory() as tmp:
        api.apply(namespace("bench"))
        half = args.services // 2
        for i in range(args.services):
            headless = i >= half
            api.apply(service(f"svc-{i}", "bench", cluster_ip="None" if headless else ip(i)))
            if headless:
                api.apply(endpoint_slice(f"svc-{i}-a", f"svc-{i}", "bench", endpoints=[ip(i, 11)]))

        loop_store = LoopStore("cluster", record=False)
        tracker = Tracker(api, loop_store.store)
        loop_store.store.subscribe(tracker.on_change)
        client = load_api_client(str(write_kubeconfig(Path(tmp) / "kubeconfig", api.url)))
        source = ClusterSource(loop_store.sink, "cluster", client, settings=WatchSettings())
        began = time.monotonic()
        source.start()
        if not source.wait_synced(60):
            sys.exit("the cluster source did not sync within 60 s")
        sync = time.monotonic() - began
        objects = args.services + (args.services - half) + 1
        print(f"initial sync: {objects} objects in {sync * 1000:.0f} ms")

        total = int(args.rate * args.seconds)
        start = time.monotonic()
        for n in range(total):
            due = start + n / args.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            i = (n * 7919) % args.services  # spread over the services
            key = ("bench", f"svc-{i}")
            version = n + 1000
            if i < half:
                obj = service(key[1], "bench", cluster_ip=ip(version, 12))
                kind, address = "svc", ip(version, 12)
            else:
                obj = endpoint_slice(f"{key[1]}-a", key[1], "bench", endpoints=[ip(version, 13)])
                kind, address = "eps", ip(version, 13)
            at = time.monotonic()
            stored = api.apply(obj)
            tracker.expect(key, kind, address, int(stored["metadata"]["resourceVersion"]), at)
        churn = time.monotonic() - start

        deadline = time.monotonic() + 10
        while tracker.pending and time.monotonic() < deadline:
            time.sleep(0.05)
        source.stop()
        loop_store.close()

        print(
            f"churn: {total} changes in {churn:.1f} s ({total / churn:.0f}/s) over "
            f"{args.services} services; {len(tracker.pending)} never seen"
        )
        report("written -> visible", tracker.written)
        report("applied -> visible", tracker.applied)
        stats = {s.kind: s for s in source.stats()}
        print(
            "  events: "
            + ", ".join(f"{k} {sum(s.events.values())}" for k, s in stats.items())
            + f"; relists {sum(s.relists for s in stats.values())}"
            + f"; errors {sum(s.errors for s in stats.values())}"
        )


if __name__ == "__main__":
    main()
