"""What one EndpointSlice watch event costs kdns, stage by stage, in process, with `--workers`.

    python bench/event_cost.py [--services 200] [--endpoints 100] [--changes 400] [--rounds 5]
        [--no-journal]

The path of one MODIFIED event of a `--endpoints`-endpoint slice of a headless service, as
`bench/scale.py`'s churn makes them (one endpoint moves to a new address), through the functions
kdns runs on it:

- main (watching) process: the watch line decoded (`json.loads`, as `Reflector._event`), trimmed
  (`trim`, ready endpoints' targetRefs dropped as by default), applied to the main store through
  the `Publisher` (the store's write, its listeners, the frame pickled for the serving
  processes), and the change journal's share (it is kept with `--http`; `Journal.flush` runs
  what the loop would run in slices);
- serving process: the frame read (`FrameReader`, the unpickling) and applied to its replica
  store (`Replica.handle`).

The answers a serving process rebuilds after a change are `bench/churn_cost.py`'s. Printed: the
median CPU time per event of each stage, in µs, the best of `--rounds`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kdns.ops.journal import Journal
from kdns.serve.frames import FrameReader
from kdns.serve.publish import Publisher
from kdns.serve.replica import Replica
from kdns.sources.trim import trim
from kdns.state.model import Namespace, Service, ServicePort
from kdns.state.store import Store

ZONE = "cluster.local"


class Frames:
    """The pool of serving processes, as the publisher sees it: frames collected here."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send(self, frame: bytes, records: int = 0) -> None:
        self.frames.append(frame)

    def __bool__(self) -> bool:
        return True


def slice_json(svc: int, endpoints: int, moved: int) -> dict[str, Any]:
    """An EndpointSlice as the apiserver sends it (the fields a controller-written slice has)."""
    eps = []
    for i in range(endpoints):
        last = moved % 250 + 1 if i == 0 else i % 250 + 1
        ip = f"10.{svc >> 8 & 255}.{svc & 255}.{last}" if i else f"10.200.{svc & 255}.{last}"
        eps.append(
            {
                "addresses": [ip],
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "nodeName": f"node-{i % 10}",
                "targetRef": {
                    "kind": "Pod",
                    "namespace": "ns",
                    "name": f"db-{svc}-{i}",
                    "uid": f"7c1f0a52-0000-4000-8000-{svc:06d}{i:06d}",
                },
            }
        )
    return {
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {
            "name": f"db-{svc}-abcde",
            "namespace": "ns",
            "resourceVersion": str(1000 + moved),
            "uid": f"slice-{svc}",
            "labels": {
                "kubernetes.io/service-name": f"db-{svc}",
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
            "creationTimestamp": "2026-12-01T00:00:00Z",
        },
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }


def one_round(args: argparse.Namespace) -> dict[str, float]:
    main_store, replica_store = Store(), Store()
    frames = Frames()
    publisher = Publisher(main_store, 0, frames)
    journal = Journal()
    if not args.no_journal:
        journal.follow(ZONE, main_store)
    replica = Replica([replica_store], lambda: None)
    reader = FrameReader()
    for store in (main_store, replica_store):
        store.add_layer("cluster")
    objects: list[Any] = [Namespace("ns")]
    for s in range(args.services):
        objects.append(Service("ns", f"db-{s}", headless=True, ports=(ServicePort("http", 8080),)))
        record = trim("EndpointSlice", slice_json(s, args.endpoints, 0), targets=False)
        objects.append(record)
    publisher.apply("cluster", objects)
    publisher.set_synced("cluster")
    journal.open()
    for frame in frames.frames:
        reader.feed(frame)
        while (message := reader.next()) is not None:
            replica.handle(message)
    frames.frames.clear()

    lines = [
        json.dumps(
            {"type": "MODIFIED", "object": slice_json(n % args.services, args.endpoints, n)}
        ).encode()
        for n in range(1, args.changes + 1)
    ]
    stages = ["decode", "trim", "store+publish", "frame read", "replica apply"]
    times: dict[str, list[float]] = {s: [] for s in stages}
    clock = time.process_time
    for line in lines:
        t0 = clock()
        event = json.loads(line)
        t1 = clock()
        record = trim("EndpointSlice", event["object"], targets=False)
        t2 = clock()
        publisher.apply("cluster", [record], [])
        t3 = clock()
        (frame,) = frames.frames
        frames.frames.clear()
        reader.feed(frame)
        message = reader.next()
        t4 = clock()
        replica.handle(message)
        t5 = clock()
        for stage, took in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            times[stage].append(took)
    if replica_store.serial != main_store.serial:
        raise SystemExit("the replica did not follow the main store")
    return {s: statistics.median(v) * 1e6 for s, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument("--endpoints", type=int, default=100)
    parser.add_argument("--changes", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-journal", action="store_true", help="no change journal (no --http)")
    args = parser.parse_args()
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for stage, us in one_round(args).items():
            best[stage] = min(best.get(stage, us), us)
    main_total = sum(best[s] for s in ("decode", "trim", "store+publish"))
    serving_total = best["frame read"] + best["replica apply"]
    for stage, us in best.items():
        print(f"{stage:16} {us:8.1f} µs")
    print(f"{'main, all':16} {main_total:8.1f} µs")
    print(f"{'serving, all':16} {serving_total:8.1f} µs")


if __name__ == "__main__":
    main()
