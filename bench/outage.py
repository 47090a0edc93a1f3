"""Outage benchmark: how soon after the API returns is every kind watching again, with the
changes made during the outage in the store?

    .venv/bin/python bench/outage.py [--runs 50 --min 1 --max 10 --seed 1] [--append [FILE]]

A `ClusterSource` with the production `WatchSettings` (backoff 0.8 s doubling to 30 s, probes
every 0.5-1 s) watches the API double (`testkit/apiserver.py`, in this process) into a real store
(`LoopStore`: its own event loop, written through `LoopSink`, as the server runs it). Each run
takes the API away for a random 1-10 s, alternately refusing connections (`go_down`, as a
restarting apiserver) and answering 503 to everything with the open watches cut (as an
apiserver behind a load balancer with no healthy backend), changes one EndpointSlice while it
is away, brings the API back at T and polls every 2 ms for:

- "watching": every reflector has opened a new watch since the outage began (`stats.watches`);
- "applied": the store answers the slice's new address.

Both are reported as p50 / p99 / max of the time after T. The target (issue 15): both under 2 s
after an outage of up to 10 s. About 5 minutes for 50 runs; every wait has a deadline.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from kdns.sources.cluster import ClusterSource, load_api_client  # noqa: E402
from testkit.apiserver import (  # noqa: E402
    FakeApiServer,
    Fault,
    LoopStore,
    endpoint_slice,
    namespace,
    service,
    write_kubeconfig,
)

RESULTS = HERE / "RESULTS.md"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def wait(predicate: object, deadline: float) -> float | None:
    """Poll until `predicate()` holds; the time it did, or None at the deadline."""
    assert callable(predicate)
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(0.002)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--min", type=float, default=1.0, help="shortest outage, seconds")
    parser.add_argument("--max", type=float, default=10.0, help="longest outage, seconds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--append", nargs="?", const=str(RESULTS), help="append to FILE")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    logging.getLogger("kdns").setLevel(logging.ERROR)  # a warning per kind per outage otherwise

    api = FakeApiServer(bookmark_interval=60.0).start()
    for n in range(5):
        api.apply(namespace(f"ns-{n}"))
        api.apply(service(f"web-{n}", f"ns-{n}", cluster_ip=f"10.96.0.{n + 10}"))
        api.apply(service(f"db-{n}", f"ns-{n}", cluster_ip="None"))
        api.apply(endpoint_slice(f"db-{n}-a", f"db-{n}", f"ns-{n}", endpoints=["10.1.0.1"]))
    store = LoopStore(record=False)
    with tempfile.TemporaryDirectory(prefix="kdns-outage-") as tmp:
        client = load_api_client(str(write_kubeconfig(Path(tmp) / "kubeconfig", api.url)))
    source = ClusterSource(store.sink, store.layer, client)
    source.start()
    watching: list[float] = []
    applied: list[float] = []
    failed = 0
    try:
        if not source.wait_synced(30):
            sys.exit("outage: the cluster source did not sync")
        for run in range(args.runs):
            length = rng.uniform(args.min, args.max)
            refused = run % 2 == 0
            before = [r.stats.watches for r in source.reflectors]
            fault: Fault | None = None
            if refused:
                api.go_down()
            else:
                fault = api.inject(Fault(503, times=None))
                api.cut_watches()
            ip = f"10.2.{run // 250}.{run % 250 + 1}"
            n = run % 5
            api.apply(endpoint_slice(f"db-{n}-a", f"db-{n}", f"ns-{n}", endpoints=[ip]))
            time.sleep(length)
            if refused:
                api.come_up()
            else:
                assert fault is not None
                api.remove(fault)
            back = time.monotonic()
            deadline = back + 60

            def all_watching(before: list[int] = before) -> bool:
                now = [r.stats.watches for r in source.reflectors]
                return all(w > b for w, b in zip(now, before, strict=True))

            def in_store(n: int = n, ip: str = ip) -> bool:
                return store.endpoint_addresses(f"db-{n}", f"ns-{n}") == [ip]

            w = wait(all_watching, deadline)
            a = wait(in_store, deadline)
            if w is None or a is None:
                failed += 1
                print(f"run {run}: not back within 60 s", flush=True)
                continue
            watching.append(w - back)
            applied.append(a - back)
            kind = "refused" if refused else "503"
            print(
                f"run {run + 1}/{args.runs}: {kind} {length:.1f} s, watching after "
                f"{watching[-1] * 1000:.0f} ms, change in the store after "
                f"{applied[-1] * 1000:.0f} ms",
                flush=True,
            )
            time.sleep(rng.uniform(0.5, 1.5))  # let the watches settle before the next one
    finally:
        source.stop(5)
        api.stop()
        store.close()
        client.close()  # type: ignore[no-untyped-call]

    def row(name: str, values: list[float]) -> str:
        if not values:
            return f"| {name} | n/a | < 2 s | **no** |"
        p50, p99, top = pct(values, 0.5), pct(values, 0.99), max(values)
        ok = "yes" if top < 2.0 and not failed else "**no**"
        times = f"{p50 * 1000:.0f} / {p99 * 1000:.0f} / {top * 1000:.0f} ms"
        return f"| {name} | {times} | < 2 s | {ok} |"

    command = "python bench/outage.py " + " ".join(
        f"--{k} {v}" for k, v in (("runs", args.runs), ("min", args.min), ("max", args.max))
    )
    command += f" --seed {args.seed}"
    stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H:%M:%S")
    report = "\n".join(
        [
            f"## {stamp} — outage — {cpu_name()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}",
            "",
            f"Command: `{command}`",
            "",
            f"{args.runs} outages of {args.min:g}-{args.max:g} s (uniform), alternately connection "
            "refused and 503 with the watches cut; one EndpointSlice changed during each. "
            "Production watch settings, 4 kinds sharing one `Recovery`. Times after the API's "
            "return:",
            "",
            "| measure | p50 / p99 / max | target | met |",
            "|---|---|---|---|",
            row("every kind watching again", watching),
            row("the change made during the outage in the store", applied),
            f"| runs not back within 60 s | {failed} | 0 | {'yes' if not failed else '**no**'} |",
            "",
        ]
    )
    print(report)
    if args.append:
        with open(args.append, "a") as out:
            out.write("\n" + report)


if __name__ == "__main__":
    main()
