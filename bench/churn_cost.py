"""What one endpoint change costs a serving process, in process: the write and the misses after it.

    python bench/churn_cost.py [--endpoints 100] [--changes 300] [--rounds 5]

A store with one headless service of `--endpoints` ready endpoints (one EndpointSlice, one named
port, as bench/scale.py's cluster) behind a `Responder` with the default rotation. Each change
moves one endpoint to a new address (`Store.apply`, as a serving process applies a published
write); then the questions a service's clients ask are asked once each, over UDP as the memo
sees them: the service's A and the port's SRV without EDNS (truncated: bench/scale.py's mix),
with EDNS 1232 (the A answer fits; the SRV answer is truncated) and 65535 (it all fits), the SRV
at the service's own name, a second spelling of each name, and one endpoint's name. Each is a
miss (the change dropped it) or, for the spellings, a hit of the entry the miss made. Printed:
the median per change of the write and of each question, in µs; best of `--rounds`.

bench/scale.py measures the same thing end to end but its figures move with everything else on
a shared 2-core machine; this isolates the serving process's Python.
"""

from __future__ import annotations

import argparse
import statistics
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kdns.dns.resolution import Cluster, Engine
from kdns.serve.responder import Responder
from kdns.state.model import (
    Endpoint,
    EndpointPort,
    EndpointSet,
    Namespace,
    Service,
    ServicePort,
    Subset,
)
from kdns.state.store import Store

ZONE = "cluster.local"


def wire(name: str, qtype: int, payload: int | None = None) -> bytes:
    """A query packet; `payload`: with an OPT record of that UDP size."""
    head = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0 if payload is None else 1)
    body = b"".join(bytes((len(p),)) + p.encode() for p in name.split(".")) + b"\x00"
    body += struct.pack("!HH", qtype, 1)
    if payload is not None:
        body += b"\x00" + struct.pack("!HHIH", 41, payload, 0, 0)
    return head + body


def slice_of(endpoints: int, moved: int) -> EndpointSet:
    eps = tuple(
        Endpoint((f"10.{(i >> 8) & 255}.{i & 255}.{(moved if i == 0 else 0) % 250 + 1}",))
        for i in range(endpoints)
    )
    return EndpointSet(
        "EndpointSlice", "ns", "db-abc", "db", (Subset(eps, (EndpointPort("http", 8080),)),)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--endpoints", type=int, default=100)
    parser.add_argument("--changes", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    svc = f"db.ns.svc.{ZONE}"
    port = f"_http._tcp.{svc}"
    questions = {
        "A": wire(svc, 1),
        "A spelled again": wire(svc.upper(), 1),
        "SRV port": wire(port, 33),
        "SRV port spelled again": wire(port.upper(), 33),
        "A edns 1232": wire(svc, 1, 1232),
        "SRV port edns 1232": wire(port, 33, 1232),
        "SRV port edns 65535": wire(port, 33, 65535),
        "SRV at service": wire(svc, 33),
        "endpoint A": wire(f"10-0-50-1.{svc}", 1),
    }
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        store = Store()
        store.add_layer("t")
        store.apply(
            "t",
            [
                Namespace("ns"),
                Service("ns", "db", headless=True, ports=(ServicePort("http", 8080),)),
                slice_of(args.endpoints, 0),
            ],
        )
        store.set_synced("t")
        responder = Responder(Engine([Cluster(ZONE, store)]))
        times: dict[str, list[float]] = {"apply": [], **{q: [] for q in questions}}
        clock = time.process_time  # CPU time: what another process takes meanwhile does not count
        for change in range(1, args.changes + 1):
            obj = slice_of(args.endpoints, change)
            began = clock()
            store.apply("t", [obj])
            times["apply"].append(clock() - began)
            for label, data in questions.items():
                began = clock()
                out = responder.respond(data, True)
                times[label].append(clock() - began)
                assert isinstance(out, bytes)
        for label, samples in times.items():
            us = statistics.median(samples) * 1e6
            best[label] = min(best.get(label, us), us)
    total = 0.0
    for label, us in best.items():
        total += us
        print(f"{label:28} {us:8.1f} µs")
    print(f"{'per change, all of it':28} {total:8.1f} µs")


if __name__ == "__main__":
    main()
