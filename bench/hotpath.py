"""Python CPU per query on the UDP path, in process: `UdpProtocol.datagram_received` over
bench/run.py's query mix, with a transport that sends nothing; with `--batch`, the batch path
(`BatchUdp._answer`, what serves UDP by default) over its receive buffers filled by hand,
`--per-batch` datagrams at a time, with a sendmmsg that sends nothing. That is `_answer` alone: the
reader callback and the two ctypes calls a batch costs the server are left out, so the figure is
a lower bound of the server's Python per query (bench/profile.py measures all of it, by perf).

    python bench/hotpath.py [--rounds 8] [--checkout DIR] [--batch [--per-batch 20]]

dnsperf's figures (bench/run.py) carry the kernel's receive and send and move by 1-2 µs between
runs on a shared machine; this isolates kdns's own Python, so an A/B of two commits (run it
with PYTHONPATH=<checkout> and --checkout <checkout> for each) shows differences of 0.1 µs.
Best pass of --rounds over the 20,000 queries, after one pass that fills the caches. It imports
either layout (kdns/serve/... or the older flat kdns/...), so it can measure old commits too.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dns.message

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--checkout", type=Path, default=HERE.parent)
    parser.add_argument("--batch", action="store_true", help="the recvmmsg/sendmmsg path")
    parser.add_argument(
        "--per-batch",
        type=int,
        default=20,
        help="datagrams per batch with --batch (about 20 under dnsperf at the maximum rate: "
        "bench/profile.py counts 0.05 recvmmsg calls a query)",
    )
    args = parser.parse_args()
    if not 1 <= args.per_batch <= 64:
        parser.error("--per-batch: 1 to 64 (BatchUdp takes at most 64 datagrams a call)")
    sys.path.insert(0, str(args.checkout / "bench"))
    from dataset import Shape, query_lines, write_manifests

    try:
        from kdns.serve.server import DnsServer
        from kdns.serve.transport import UdpProtocol
    except ImportError:  # before the data-path layout
        from kdns.server import DnsServer  # type: ignore[import-not-found,no-redef]
        from kdns.transport import UdpProtocol  # type: ignore[import-not-found,no-redef]
    from kdns.config import Config

    class Discard(asyncio.DatagramTransport):
        def sendto(self, data: Any, addr: Any = None) -> None:
            pass

        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return default

    shape = Shape()
    zones = Path(tempfile.mkdtemp())
    write_manifests(zones, shape)
    rng = random.Random(3)
    wires = []
    for line in query_lines(shape, 20000):
        name, qtype = line.split()
        query = dns.message.make_query(name, qtype)
        query.id = rng.randrange(1 << 16)
        wires.append(query.to_wire())
    addr = ("10.1.2.3", 40000)

    async def run() -> float:
        server = DnsServer(Config(zones=[zones], listen=[("127.0.0.1", 0)]))
        await server.startup()
        if args.batch:
            best = batched(server)
        else:
            proto = UdpProtocol(getattr(server, "transports", server))
            proto.connection_made(Discard())
            step = proto.datagram_received
            for wire in wires:
                step(wire, addr)
            best = float("inf")
            for _ in range(args.rounds):
                began = time.perf_counter()
                for wire in wires:
                    step(wire, addr)
                best = min(best, (time.perf_counter() - began) / len(wires))
        await server.shutdown()
        return best * 1e6

    def batched(server: Any) -> float:
        import ctypes
        import socket

        from kdns.serve.batch import BATCH, SLOT, BatchUdp

        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        batch = BatchUdp(sock, server.transports)
        sender = socket.inet_pton(socket.AF_INET, addr[0])
        # Each batch's datagrams, as recvmmsg leaves them: the bytes in the slots, the lengths
        # in msg_len, the senders in msg_name (sockaddr_in: family, port, address).
        size = min(args.per_batch, BATCH)
        groups = [wires[i : i + size] for i in range(0, len(wires) - size + 1, size)]

        def fill(group: list[bytes]) -> None:
            for i, wire in enumerate(group):
                ctypes.memmove(ctypes.addressof(batch.recv.slots[i]), wire, len(wire))
                batch.recv.words[i * 16 + 14] = len(wire)
                at = i * 128
                batch.recv.name_bytes[at : at + 8] = (
                    socket.AF_INET.to_bytes(2, "little") + addr[1].to_bytes(2, "big") + sender
                )
            assert len(group) * SLOT <= len(batch.recv.data)

        sent = [0]

        def sendmmsg(fd: int, hdrs: int, count: int, flags: int) -> int:
            sent[0] += count
            return count  # sent, as far as the loop can tell

        filled = []
        for group in groups:  # the buffers filled once per group, outside the timing
            fill(group)
            filled.append(
                (
                    len(group),
                    ctypes.string_at(ctypes.addressof(batch.recv.data), len(group) * SLOT),
                    [batch.recv.words[i * 16 + 14] for i in range(len(group))],
                )
            )
        best = float("inf")
        for round_ in range(args.rounds + 1):
            spent = 0.0
            for n, data, sizes in filled:
                ctypes.memmove(ctypes.addressof(batch.recv.data), data, len(data))
                for i, length in enumerate(sizes):
                    batch.recv.words[i * 16 + 14] = length
                began = time.perf_counter()
                batch._answer(n, sendmmsg)
                spent += time.perf_counter() - began
            if round_:  # the first pass fills the caches
                best = min(best, spent / (len(filled) * size))
        # Every query answered, from the bytes laid out as recvmmsg would.
        assert sent[0] == (args.rounds + 1) * len(filled) * size, sent
        sock.close()
        return best

    print(f"{args.checkout}: {asyncio.run(run()):.3f} µs/query (Python, in process)")


if __name__ == "__main__":
    main()
