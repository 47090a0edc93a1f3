"""What `--allow-query` costs per UDP query: kdns's Python, no sockets.

    .venv/bin/python bench/acl.py [--services 1000] [--passes 10] [--rounds 5] [--queries 5000]

As bench/profile.py times kdns's Python: the objects `kdns serve` builds from bench/dataset.py's
manifests, a `UdpProtocol` whose transport sends nothing, fed the query mix's packets over and
over; the best pass of `--passes`, µs per query, on CPU 0. Cases:

- no ACL (the default: the transport's path has no check at all);
- an ACL the client is in, with 1 and with 50 networks (after the first query from a source the
  verdict is a dict lookup, so the number of networks should not show);
- an ACL the client is not in (REFUSED is built and "sent");
- the same with a new source address for every query (the memo misses every time: a flood of
  spoofed sources), the worst case.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from dataset import Shape, query_lines, write_manifests  # noqa: E402


def measure(zones: Path, wires: list[bytes], passes: int, rounds: int) -> list[tuple[str, float]]:
    import kdns.serve.acl
    from kdns.config import Config
    from kdns.serve.server import DnsServer
    from kdns.serve.transport import UdpProtocol

    class Discard(asyncio.DatagramTransport):
        def sendto(self, data: Any, addr: Any = None) -> None:
            pass

    def best(
        step: Callable[[bytes, tuple[str, int]], object], addrs: list[tuple[str, int]]
    ) -> float:
        pairs = list(zip(wires, addrs, strict=True))
        for wire, addr in pairs:  # the first pass fills the caches
            step(wire, addr)
        out = float("inf")
        for _ in range(passes):
            t0 = time.perf_counter()
            for wire, addr in pairs:
                step(wire, addr)
            out = min(out, (time.perf_counter() - t0) / len(pairs))
        return out * 1e6

    same = [("10.1.2.3", 40000)] * len(wires)
    # More distinct sources than the memo holds, so every query misses it.
    many = [(f"11.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 40000) for i in range(len(wires))]
    wide = ["10.0.0.0/8"] + [f"172.{16 + i // 256}.{i % 256}.0/24" for i in range(49)]
    cases = [
        ("no --allow-query", [], same),
        ("allowed, 1 network", ["10.0.0.0/8"], same),
        ("allowed, 50 networks (the match is the first)", wide, same),
        ("allowed, 50 networks (the match is the last)", wide[1:] + wide[:1], same),
        ("refused (REFUSED built and sent)", ["192.168.0.0/16"], same),
        ("refused, a new source every query (memo misses)", ["192.168.0.0/16"], many),
    ]

    async def run() -> list[tuple[str, float]]:
        servers, protos = [], []
        for _, allow, _ in cases:
            config = Config(zones=[zones], listen=[("127.0.0.1", 0)], allow_query=allow)
            server = DnsServer(config)
            await server.startup()
            servers.append(server)
            proto = UdpProtocol(server.transports)
            proto.connection_made(Discard())
            protos.append(proto)
        try:
            # Rounds over every case, the best of each kept: a machine busy for a while
            # (other work on it) slows one round, not one case.
            results = [float("inf")] * len(cases)
            empty = float("inf")
            for _ in range(rounds):
                empty = min(empty, best(lambda w, a: None, same))
                for i, ((_, _, addrs), proto) in enumerate(zip(cases, protos, strict=True)):
                    memo_size = kdns.serve.acl.MEMO_SIZE
                    if addrs is many:
                        # Fewer than the sources: the memo empties itself as it goes.
                        kdns.serve.acl.MEMO_SIZE = len(addrs) // 4
                    try:
                        results[i] = min(results[i], best(proto.datagram_received, addrs))
                    finally:
                        kdns.serve.acl.MEMO_SIZE = memo_size
        finally:
            for server in servers:
                await server.shutdown()
        return [(label, us - empty) for (label, _, _), us in zip(cases, results, strict=True)]

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--passes", type=int, default=10)
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import dns.message

    shape = Shape(services=args.services)
    lines = query_lines(shape, count=args.queries)
    wires = [dns.message.make_query(*line.split()).to_wire() for line in lines]
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            zones = Path(tmp) / "zones"
            write_manifests(zones, shape)
            results = measure(zones, wires, args.passes, args.rounds)
    finally:
        os.sched_setaffinity(0, cpus)
    print(
        f"{len(wires)} queries of the bench mix, best of {args.passes} passes"
        f" in each of {args.rounds} rounds, CPU 0"
    )
    base = results[0][1]
    print("| case | µs/query | vs no ACL |")
    print("|---|---|---|")
    for label, us in results:
        print(f"| {label} | {us:.3f} | {us - base:+.3f} |")


if __name__ == "__main__":
    main()
